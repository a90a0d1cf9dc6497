"""The event contract: the committed JSON Schema is current, every event round-trips, and events
evolve safely (old readers ignore new fields)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from schemas import topology
from schemas.events import (
    EVENT_TYPES,
    AnyEvent,
    GenerateImages,
    ImageGenerated,
    JobAccepted,
    JobFailed,
    event_schema,
)
from schemas.jobs import GenerationSettings, ImageMetadata, JobSpec

SCHEMA_FILE = Path(__file__).parents[2] / "schemas" / "events.schema.json"

SETTINGS = GenerationSettings(num_images=2, num_inference_steps=4, guidance_scale=7.5, width=64, height=64, seed=7)
SPEC = JobSpec(prompt="a red fox", model="tiny-sd", settings=SETTINGS)


def test_committed_schema_is_current():
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == json.loads(json.dumps(event_schema())), (
        "schemas/events.schema.json is stale: regenerate it with `darkroom schema > schemas/events.schema.json`"
    )


def test_every_event_tag_is_a_routing_key_constant():
    keys = {value for name, value in vars(topology).items() if name.isupper() and isinstance(value, str)}
    for kind in EVENT_TYPES:
        assert kind.__struct_config__.tag in keys, kind.__name__
    assert len({kind.__struct_config__.tag for kind in EVENT_TYPES}) == len(EVENT_TYPES)


def test_every_event_class_has_a_docstring():
    for kind in EVENT_TYPES:
        assert kind.__doc__ and kind.__doc__.strip(), kind.__name__


def test_events_round_trip_through_json():
    samples = [
        JobAccepted(job_id="j1", spec=SPEC),
        JobFailed(job_id="j1", reason="boom", attempt=2),
        ImageGenerated(
            job_id="j1", image_id="j1_1", image_number=1, total_images=2, worker="w",
            job_created_at=datetime(2026, 1, 2, tzinfo=UTC), width=64, height=64, png=b"\x89PNG...",
            metadata=ImageMetadata(job_id="j1", model_id="tiny-sd", prompt="p", settings=SETTINGS, seed=7,
                                   image_number=1, total_images=2),
        ),
    ]
    decoder = msgspec.json.Decoder(AnyEvent)
    for event in samples:
        wire = msgspec.json.encode(event)
        assert json.loads(wire)["type"] == type(event).__struct_config__.tag
        assert decoder.decode(wire) == event


def test_readers_ignore_fields_added_later():
    wire = msgspec.json.encode(JobFailed(job_id="j1", reason="boom"))
    newer = json.loads(wire) | {"retryable": True, "details": {"code": 3}}
    assert msgspec.json.decode(json.dumps(newer), type=AnyEvent) == msgspec.json.decode(wire, type=AnyEvent)


def test_events_are_frozen():
    event = JobFailed(job_id="j1", reason="boom")
    with pytest.raises(AttributeError):
        event.reason = "other"  # type: ignore[misc]


def test_a_missing_required_field_is_named():
    with pytest.raises(msgspec.ValidationError, match="reason"):
        msgspec.json.decode(b'{"type":"job.failed","job_id":"j"}', type=AnyEvent)


def test_generate_images_is_a_command_not_an_event():
    assert GenerateImages not in EVENT_TYPES
