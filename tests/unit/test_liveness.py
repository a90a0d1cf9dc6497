"""The reaper's view of running jobs: who is silent, who overran, what a newer attempt hides."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.events import (
    ImageGenerated,
    JobAccepted,
    JobCompleted,
    JobFailed,
    JobProgressed,
    JobRequeued,
    JobStarted,
    WorkerHeartbeat,
)
from schemas.jobs import GenerationSettings, HiresSettings, ImageMetadata, JobSpec
from services.reaper.liveness import Liveness, work_units

SETTINGS = GenerationSettings(num_images=1, num_inference_steps=20, guidance_scale=7.5, width=500, height=400, seed=1)
SPEC = JobSpec(prompt="p", model="m", settings=SETTINGS)


def started(live: Liveness, job: str, at: float, attempt: int = 1) -> None:
    live.observe(JobAccepted(job_id=job, spec=SPEC), at)
    live.observe(JobStarted(job_id=job, worker="w1", attempt=attempt), at)


def test_work_scales_with_steps_pixels_images_and_the_hires_pass():
    assert work_units(SETTINGS) == 20 * 0.2
    hires = GenerationSettings(num_images=2, num_inference_steps=10, guidance_scale=7.5, width=500, height=400, seed=1,
                               hires=HiresSettings(scale=2, denoising_strength=0.5, steps=5, width=1000, height=800))
    assert work_units(hires) == 2 * (10 * 0.2 + 5 * 0.8)


def test_a_job_is_stalled_only_after_the_timeout_of_silence():
    live = Liveness(stall_timeout=30)
    started(live, "a", at=0)
    live.observe(JobProgressed(job_id="a", step=1, total_steps=20), 20)
    live.observe(WorkerHeartbeat(job_id="a", worker="w1"), 45)
    assert live.stalled(70) == []
    [stall] = live.stalled(80)
    assert stall.job.job_id == "a" and stall.silent_seconds == 35 and "silent for 35s" in stall.reason


def test_signs_of_life_from_an_older_attempt_do_not_count():
    live = Liveness(stall_timeout=30)
    started(live, "a", at=0, attempt=2)
    live.observe(JobProgressed(job_id="a", step=5, total_steps=20, attempt=1), 25)
    live.observe(WorkerHeartbeat(job_id="a", worker="zombie", attempt=1), 29)
    assert [s.job.job_id for s in live.stalled(31)] == ["a"]


def test_a_manual_sweep_may_use_a_shorter_silence_but_not_below_a_second():
    live = Liveness(stall_timeout=30)
    started(live, "a", at=0)
    assert live.stalled(5, silent_seconds=10) == []
    assert len(live.stalled(11, silent_seconds=10)) == 1
    assert live.stalled(0.5, silent_seconds=0.01) == []


def test_a_job_running_far_past_its_models_speed_is_stalled_even_with_heartbeats():
    live = Liveness(stall_timeout=10)
    started(live, "first", at=0)
    live.observe(JobCompleted(job_id="first", image_ids=[]), 4)  # 4 s for 4 work units: 1 s each
    assert live.rates == {"m": 1.0}
    started(live, "hung", at=100)
    for t in range(101, 130, 5):
        live.observe(WorkerHeartbeat(job_id="hung", worker="w1"), t)
    assert live.stalled(121) == [], "3 x 4 s expected + the timeout: not yet"
    [stall] = live.stalled(123)
    assert "expected about 4s" in stall.reason


def test_ended_and_requeued_jobs_are_not_watched():
    live = Liveness(stall_timeout=1)
    for job in ("done", "failed", "requeued"):
        started(live, job, at=0)
    live.observe(JobCompleted(job_id="done", image_ids=[]), 1)
    live.observe(JobFailed(job_id="failed", reason="x"), 1)
    live.observe(JobRequeued(job_id="requeued", attempt=2, reason="stalled"), 1)
    assert live.stalled(100) == []
    assert "requeued" in live.queued and "done" not in live.queued


def test_grace_after_the_reaper_itself_was_deaf():
    live = Liveness(stall_timeout=10)
    started(live, "a", at=0)
    live.grant_grace(now=50)
    assert live.stalled(55) == [] and len(live.stalled(61)) == 1


def test_images_also_count_as_life():
    live = Liveness(stall_timeout=10)
    started(live, "a", at=0)
    meta = ImageMetadata(job_id="a", model_id="m", prompt="p", settings=SETTINGS, seed=1, image_number=1, total_images=1)
    live.observe(ImageGenerated(job_id="a", image_id="a_1", image_number=1, total_images=1, worker="w1",
                                job_created_at=datetime(2026, 1, 1, tzinfo=UTC), width=8, height=8, png=b"", metadata=meta), 9)
    assert live.stalled(15) == []


def test_a_late_start_from_a_worker_that_lost_the_job_does_not_bring_it_back():
    live = Liveness(stall_timeout=1)
    started(live, "a", at=0)
    live.observe(JobFailed(job_id="a", reason="parked"), 1)
    live.observe(JobStarted(job_id="a", worker="dying", attempt=4), 2)
    assert live.stalled(100) == []
    live.observe(JobRequeued(job_id="a", attempt=5, reason="replayed", replay=True), 101)
    live.observe(JobStarted(job_id="a", worker="w2", attempt=5), 101)
    assert [s.job.attempt for s in live.stalled(103)] == [5]
