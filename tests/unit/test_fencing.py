"""Two copies of one attempt: only one set of images is generated and saved."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from schemas.events import GenerateImages, ImageGenerated, JobRequeued, JobStarted
from schemas.jobs import GenerationSettings, ImageMetadata, JobSpec
from schemas.layout import DataLayout
from services.generator.handlers import follow_job
from services.generator.worker import Options, Worker
from services.jobfiles import JobFiles
from services.saver.handlers import JobLocks, SavedImages, save_image

JOB = "0c907066-985e-467b-8d11-07419060ef91"
T0 = datetime(2026, 3, 20, 10, 30, tzinfo=UTC)
SETTINGS = GenerationSettings(num_images=1, num_inference_steps=4, guidance_scale=7.5, width=64, height=64, seed=7)


class Collect:
    def __init__(self) -> None:
        self.events: list = []

    async def publish(self, event) -> None:
        self.events.append(event)


def command(attempt: int) -> GenerateImages:
    return GenerateImages(job_id=JOB, spec=JobSpec(prompt="a fox", model="tiny-sd", settings=SETTINGS),
                          attempt=attempt, created_at=T0)


def generated(attempt: int) -> ImageGenerated:
    return ImageGenerated(
        job_id=JOB, image_id=f"{JOB}_1", image_number=1, total_images=1, job_created_at=T0, attempt=attempt,
        worker="generator-1", width=64, height=64, png=b"\x89PNG fake",
        metadata=ImageMetadata(job_id=JOB, model_id="tiny-sd", prompt="a fox", settings=SETTINGS, seed=7,
                               image_number=1, total_images=1),
    )


def worker() -> Worker:
    return Worker(bus=Collect(), catalog=None, cache=None, render=None, worker_id="generator-1", options=Options())


def test_an_attempt_started_here_is_not_run_again_when_a_redelivery_is_numbered_like_it():
    w = worker()
    # The reaper requeued attempt 2 and this worker started it ...
    asyncio.run(follow_job(JobStarted(job_id=JOB, worker=w.id, attempt=2, batch_jobs=1), worker=w))
    # ... then the lost worker's copy of attempt 1 comes back redelivered, counted as attempt 2.
    assert w.cancellations.is_stale(command(2))
    assert not w.cancellations.is_stale(command(3))


def test_an_operator_replay_may_run_an_attempt_number_again():
    w = worker()
    asyncio.run(follow_job(JobStarted(job_id=JOB, worker="generator-2", attempt=3, batch_jobs=1), worker=w))
    asyncio.run(follow_job(JobRequeued(job_id=JOB, attempt=2, reason="replayed by an operator", replay=True), worker=w))
    assert not w.cancellations.is_stale(command(3))


def test_the_saver_saves_one_copy_of_an_attempt_and_reannounces_a_redelivery(tmp_path: Path):
    layout = DataLayout(tmp_path)
    bus, locks, saved = Collect(), JobLocks(), SavedImages()
    first, twin = generated(2), generated(2)

    async def save(event: ImageGenerated) -> None:
        await save_image(event, bus=bus, files=JobFiles(layout), locks=locks, saved=saved)

    asyncio.run(save(first))
    assert [type(e).__name__ for e in bus.events] == ["ImageSaved", "JobCompleted"]
    asyncio.run(save(twin))  # another copy of attempt 2, before the job document says completed
    assert len(bus.events) == 2
    asyncio.run(save(first))  # the same message again: the saver died before its ack
    assert [type(e).__name__ for e in bus.events] == ["ImageSaved", "JobCompleted"] * 2
    # With the same event ids, so the recorder logs each once (the first copy may have gone out).
    assert [e.event_id for e in bus.events[2:]] == [e.event_id for e in bus.events[:2]]
    asyncio.run(save(generated(3)))  # a newer attempt still saves
    assert len(bus.events) == 6


def test_a_job_completed_again_by_another_of_its_images_keeps_its_event_id(tmp_path: Path):
    """A two-image job: image 2 completes it; image 1 comes back redelivered (the saver lost its
    broker node before its ack) and announces the completion again, with the same id."""
    layout = DataLayout(tmp_path)
    bus, locks, saved = Collect(), JobLocks(), SavedImages()

    def image(number: int) -> ImageGenerated:
        one = generated(1)
        return msgspec.structs.replace(
            one, image_id=f"{JOB}_{number}", image_number=number, total_images=2,
            metadata=msgspec.structs.replace(one.metadata, image_number=number, total_images=2))

    async def save(event: ImageGenerated) -> None:
        await save_image(event, bus=bus, files=JobFiles(layout), locks=locks, saved=saved)

    first, second = image(1), image(2)
    asyncio.run(save(first))
    asyncio.run(save(second))
    asyncio.run(save(first))
    completions = [e for e in bus.events if type(e).__name__ == "JobCompleted"]
    assert len(completions) == 2 and completions[0].event_id == completions[1].event_id
    assert completions[0].image_ids == [f"{JOB}_1", f"{JOB}_2"]
