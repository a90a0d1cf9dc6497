"""The weights.gg and Chutes dialects' mapping tables cover every value of our enums, and their
pure translations (no I/O)."""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from schemas.catalog import TINY_MODEL_ID, Catalog, ModelLimits, tiny_model_entry
from schemas.jobs import GenerationSettings, JobDocument, JobStatus, Progress
from schemas.settings import DIALECTS, Settings, SettingsError
from services.ingress.auth import Principal
from services.ingress.dialects import DIALECT_ROUTES, chutes, enabled_routes, weights
from services.ingress.dialects.common import AnonymousCaller
from services.ingress.domain import errors
from services.ingress.domain.errors import DomainError, Invalid, Unauthenticated
from services.ingress.limits import UNLIMITED

SMALL = msgspec.structs.replace(tiny_model_entry(Path("/nowhere")), id="small",
                                limits=ModelLimits(max_width=64, max_height=64, max_steps=4))
CATALOG = Catalog(models={TINY_MODEL_ID: tiny_model_entry(Path("/nowhere")), "small": SMALL}, default="small",
                  styles={})
DOMAIN_ERRORS = [kind for kind in vars(errors).values()
                 if isinstance(kind, type) and issubclass(kind, DomainError) and kind is not DomainError]
PHASE_FLAGS = [name for name in msgspec.structs.fields(Progress) if name.type is bool]
NOW = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _doc(status: JobStatus = "pending", **changes) -> JobDocument:
    settings = GenerationSettings(num_images=1, num_inference_steps=2, guidance_scale=7.5, width=64, height=64, seed=1)
    doc = JobDocument(id="00000000-0000-4000-8000-000000000001", status=status, model="small", prompt="a fox, enhanced",
                      original_prompt="a fox", settings=settings, created_at=NOW, updated_at=NOW + timedelta(seconds=2))
    return msgspec.structs.replace(doc, **changes)


@pytest.mark.parametrize("kind", DOMAIN_ERRORS)
def test_every_domain_error_has_a_status_in_both_dialects(kind):
    assert any(issubclass(kind, mapped) for mapped in weights.ERRORS), kind
    assert any(issubclass(kind, mapped) for mapped in chutes.ERRORS), kind
    assert all(400 <= status < 600 for status, *_ in weights.ERRORS.values())
    assert all(400 <= status < 600 for status in chutes.ERRORS.values())


@pytest.mark.parametrize("status", typing.get_args(JobStatus))
def test_every_job_status_is_mapped_and_what_never_completes_reads_failed(status):
    assert weights.STATUSES[status] in {"QUEUED", "STARTING", "PENDING", "PROCESSING", "COMPLETED", "FAILED"}
    assert chutes.STATUSES[status] in {"pending", "processing", "completed", "failed"}
    if status in ("failed", "cancelled"):
        assert weights.STATUSES[status] == "FAILED" and chutes.STATUSES[status] == "failed"
    assert any(status in covered for covered in chutes.FILTERS.values())


@pytest.mark.parametrize("flag", [f.name for f in PHASE_FLAGS if f.name not in ("completed", "failed")])
def test_every_running_phase_has_a_weights_status(flag):
    doc = _doc("processing", progress=Progress(**{flag: True}))
    assert weights.status_of(doc, True) == weights.PHASES[flag]


def test_weights_status_fields():
    answer = weights.image_status(_doc("cancelled", message="Cancelled: by you"), True)
    assert answer.status == "FAILED" and answer.error == "Cancelled: by you" and answer.prompt == "a fox"
    assert answer.startTime == int(NOW.timestamp() * 1000) and answer.lastModifiedDate == answer.startTime + 2000
    assert weights.status_of(_doc("completed"), False) == weights.GONE
    assert weights.status_of(_doc("completed"), True) == "COMPLETED"
    assert weights.image_status(_doc("failed", error="out of memory"), True).error == "out of memory"


@pytest.mark.parametrize("prompt", [None, "", "too short", "         x"])
def test_prompts_under_ten_characters_are_too_short(prompt):
    with pytest.raises(Invalid, match="Prompt is too short"):
        weights.check_prompt(prompt)


def test_quota_names_are_weights_names():
    quota = SimpleNamespace(is_premium=False, usage={"queued_jobs": 1, "daily_images": 2, "hourly_requests": 3},
                            limits={"queued_jobs": 20, "daily_images": UNLIMITED, "hourly_requests": 300},
                            remaining={"queued_jobs": 19, "daily_images": UNLIMITED, "hourly_requests": 297})
    answer = weights.quota_answer(quota)
    assert set(answer.usage) == set(weights.QUOTA_NAMES.values())
    assert answer.usage["QUEUED_IMAGE_JOBS"] == 1 and answer.limits["DAILY_IMAGE_CREATIONS"] == "Infinity"


def test_a_lora_puts_its_trigger_word_first_as_the_seed_did():
    request = weights.job_request("a castle on a hill", ("fox", "foxstyle"), "space-1")
    assert request.prompt == "foxstyle, a castle on a hill" and request.loras[0].name == "fox"
    assert request.session == "space-1"


class _Keys:
    def verify(self, token: str):
        raise Unauthenticated("invalid API key")


def _request(key: str | None, host: str) -> SimpleNamespace:
    return SimpleNamespace(headers={"x-api-key": key} if key is not None else {}, client=SimpleNamespace(host=host))


@pytest.mark.parametrize("key", [None, "None", "null", "undefined", ""])
def test_weights_no_key_is_anonymous_from_loopback_only(key):
    settings = Settings()
    assert isinstance(weights.weights_caller(_request(key, "127.0.0.1"), settings, _Keys()), AnonymousCaller)
    with pytest.raises(Unauthenticated):
        weights.weights_caller(_request(key, "203.0.113.5"), settings, _Keys())
    with pytest.raises(Unauthenticated):
        weights.weights_caller(_request(key, "127.0.0.1"), Settings(dialect_anonymous="off"), _Keys())


def test_weights_a_bad_key_is_refused_even_from_loopback():
    with pytest.raises(Unauthenticated):
        weights.weights_caller(_request("drk_x_y", "127.0.0.1"), Settings(), _Keys())
    assert isinstance(weights.weights_caller(_request(None, "1.2.3.4"), Settings(auth="off"), _Keys()), Principal)


@pytest.mark.parametrize("model", [None, *chutes.CHUTES_MODELS, "anything-else"])
def test_chutes_model_names_map_to_the_default_model(model):
    assert chutes.model_for(model, CATALOG) == "small"
    assert chutes.model_for(TINY_MODEL_ID, CATALOG) == TINY_MODEL_ID


def test_chutes_sizes_and_steps_are_clamped_to_the_model():
    body = chutes.GenerateBody(prompt="A detailed infographic of a coffee machine", model="qwen-image",
                               guidance_scale=7.5, width=1024, height=512, num_inference_steps=20)
    request = chutes.job_request(body, CATALOG)
    assert request.model == "small"
    assert (request.settings.width, request.settings.height, request.settings.num_inference_steps) == (64, 32, 4)
    assert request.settings.guidance_scale == 7.5
    roomy = chutes.job_request(msgspec.structs.replace(body, model=TINY_MODEL_ID, width=100, height=1000), CATALOG)
    assert (roomy.settings.width, roomy.settings.height, roomy.settings.num_inference_steps) == (96, 1000, 20)


@pytest.mark.parametrize(("body", "message"), [
    ({}, "Prompt is required"), ({"prompt": "  "}, "Prompt is required"),
    ({"prompt": "x", "width": 4}, "width must be at least 8"), ({"prompt": "x", "num_inference_steps": 0}, "at least 1"),
    ({"prompt": "x", "guidance_scale": 99.0}, "guidance_scale"), ({"prompt": "x", "seed": -5}, "seed"),
])
def test_chutes_bad_bodies_name_the_field(body, message):
    with pytest.raises(Invalid, match=message):
        chutes.job_request(chutes.GenerateBody(**body), CATALOG)


def test_chutes_task_rows():
    task = chutes.task_of(_doc("completed"), "/srv/var/images/x.png")
    assert task.status == "completed" and task.file_path == "/srv/var/images/x.png" and task.error is None
    assert task.created_at == "2025-01-02 03:04:05" and task.updated_at == "2025-01-02 03:04:07"
    assert task.prompt == "a fox"
    assert chutes.task_of(_doc("cancelled", message="Cancelled: stuck"), None).error == "Cancelled: stuck"
    assert chutes.FILTERS["failed"] == ("failed", "cancelled")


def test_dialects_can_be_switched_off():
    assert [r.tags[0] for r in enabled_routes(Settings())] == [r.tags[0] for r in DIALECT_ROUTES]
    assert [r.tags[0] for r in enabled_routes(Settings(dialects="openai,chutes"))] == ["openai", "chutes"]
    assert enabled_routes(Settings(dialects="none")) == []
    assert {r.tags[0] for r in DIALECT_ROUTES} <= set(DIALECTS)
    assert Settings.from_env({"DARKROOM_DIALECTS": "weights"}).dialect_on("weights")
    with pytest.raises(SettingsError, match="DARKROOM_DIALECTS"):
        Settings.from_env({"DARKROOM_DIALECTS": "weights,nope"})
