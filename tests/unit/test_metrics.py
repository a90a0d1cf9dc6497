"""The metrics fold: one job's events, in order, move each stage's histogram by what their
timestamps say; the model cache, loads, batch sizes and busy time count what happened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from schemas.events import (
    ImageGenerated,
    ImageSaved,
    JobAccepted,
    JobCompleted,
    JobEnriched,
    JobProgressed,
    JobStarted,
    ModelLoaded,
    ModelLoading,
)
from schemas.jobs import GenerationSettings, ImageMetadata, ImageRecord, JobSpec
from services.metrics import Meter

T0 = datetime(2026, 3, 20, 10, 0, tzinfo=UTC)
SETTINGS = GenerationSettings(num_images=1, num_inference_steps=4, guidance_scale=7.5, width=64, height=64, seed=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def samples(meter: Meter) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(meter.exposition().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def job_events(job: str, *, load: bool) -> list:
    meta = ImageMetadata(job_id=job, model_id="tiny-sd", prompt="a fox", settings=SETTINGS, seed=1, image_number=1,
                         total_images=1)
    record = ImageRecord(id=f"{job}_1", file_path="x.png", created_at=at(9), width=64, height=64, size_bytes=1,
                         metadata=meta)
    events = [
        JobAccepted(job_id=job, spec=JobSpec(prompt="a fox", model="tiny-sd", settings=SETTINGS), occurred_at=at(0)),
        JobEnriched(job_id=job, prompt="a fox", original_prompt="a fox", occurred_at=at(0.5)),
        JobStarted(job_id=job, worker="w1", batch_jobs=2, occurred_at=at(2)),
    ]
    if load:
        events += [ModelLoading(job_id=job, model="tiny-sd", worker="w1", occurred_at=at(2.1)),
                   ModelLoaded(job_id=job, model="tiny-sd", worker="w1", seconds=1.5, bytes=1000, occurred_at=at(3.6))]
    events += [
        JobProgressed(job_id=job, step=1, total_steps=4, occurred_at=at(4)),
        JobProgressed(job_id=job, step=4, total_steps=4, occurred_at=at(4.6)),  # 3 steps in 0.6 s
        ImageGenerated(job_id=job, image_id=f"{job}_1", image_number=1, total_images=1, job_created_at=at(0),
                       worker="w1", width=64, height=64, png=b"", metadata=meta, occurred_at=at(4.9)),
        ImageSaved(job_id=job, image=record, occurred_at=at(5.2)),
        JobCompleted(job_id=job, image_ids=[f"{job}_1"], occurred_at=at(5.5)),
    ]
    return events


def test_a_jobs_events_move_each_stage_by_what_their_timestamps_say():
    meter = Meter()
    for event in job_events("j1", load=True) + job_events("j2", load=False):
        meter.observe(event)
    found = samples(meter)

    def stage(name: str, field: str = "sum") -> float:
        return found[(f"darkroom_stage_seconds_{field}", (("stage", name),))]

    assert stage("queue_wait", "count") == 2 and abs(stage("queue_wait") - 4.0) < 1e-9
    assert abs(stage("enrich") - 1.0) < 1e-9
    assert stage("load", "count") == 1 and stage("load") == 1.5
    assert stage("step", "count") == 2 and abs(stage("step") - 0.4) < 1e-9  # 0.2 s a step, twice
    assert abs(stage("decode_encode") - 0.6) < 1e-9
    assert abs(stage("save") - 0.6) < 1e-9
    assert abs(stage("total") - 11.0) < 1e-9
    assert found[("darkroom_model_cache_total", (("result", "miss"),))] == 1
    assert found[("darkroom_model_cache_total", (("result", "hit"),))] == 1
    assert found[("darkroom_model_loads_total", (("model", "tiny-sd"),))] == 1
    assert found[("darkroom_model_memory_bytes", (("worker", "w1"),))] == 1000
    assert found[("darkroom_generator_batch_jobs_count", ())] == 2
    assert found[("darkroom_jobs_by_model_total", (("model", "tiny-sd"), ("status", "completed")))] == 2
    assert found[("darkroom_generator_busy_seconds_total", (("worker", "w1"),))] > 0


def test_events_out_of_order_or_twice_never_break_the_fold():
    meter = Meter()
    events = job_events("j3", load=False)
    for event in [*reversed(events), *events, *events]:
        meter.observe(event)
    found = samples(meter)
    assert all(value >= 0 for (name, _), value in found.items() if name.startswith("darkroom_stage_seconds_sum"))


def test_the_grafana_dashboard_names_only_metrics_that_exist():
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[2] / "ops" / "grafana" / "darkroom.json").read_text())
    named = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"darkroom_\w+", target["expr"])}
    # Labelled series appear only once observed: compare family names (a counter's lacks `_total`).
    families = {metric.name for metric in Meter().registry.collect()}
    missing = {n for n in named if n not in families and re.sub(r"_(bucket|sum|count|total)$", "", n) not in families}
    assert named and not missing, missing
