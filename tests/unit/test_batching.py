"""Which queued jobs share a pipeline call, and how a job's images are split into calls."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import torch

from pipelines.previews import preview_png
from schemas.events import GenerateImages, JobCancelled, JobProgressed
from schemas.jobs import GenerationSettings, JobSpec, LoraRef
from services.generator.batcher import Batcher, Waiting, batch_key
from services.generator.progress import ProgressReporter, Slot
from services.generator.render import calls_for

SETTINGS = GenerationSettings(num_images=1, num_inference_steps=4, guidance_scale=7.5, width=64, height=64, seed=1, batch_size=1)


def command(job: str, images: int = 1, batch_size: int | None = None, **changes) -> GenerateImages:
    settings = msgspec.structs.replace(SETTINGS, num_images=images, batch_size=batch_size or images,
                                       **{k: v for k, v in changes.items() if k in ("width", "sampler", "guidance_scale")})
    spec = JobSpec(prompt=job, model=changes.get("model", "tiny-sd"), settings=settings, loras=changes.get("loras", ()))
    return GenerateImages(job_id=job, spec=spec, created_at=datetime(2026, 1, 1, tzinfo=UTC))


def waiting(*commands: GenerateImages) -> Batcher:
    async def nothing(batch):
        return None

    async def build():
        batcher = Batcher(nothing, capacity=4)
        batcher._waiting = [Waiting(c) for c in commands]
        return batcher

    return asyncio.run(build())


def taken(batcher: Batcher) -> list[list[str]]:
    batches = []
    while batcher._waiting:
        batches.append([w.command.job_id for w in batcher.take_batch()])
    return batches


def test_compatible_jobs_share_a_call_up_to_its_capacity():
    batcher = waiting(*(command(f"j{n}") for n in range(6)))
    assert taken(batcher) == [["j0", "j1", "j2", "j3"], ["j4", "j5"]]


def test_images_count_against_capacity_and_order_is_kept():
    batcher = waiting(command("a", images=3), command("b", images=2), command("c", images=1))
    assert taken(batcher) == [["a", "c"], ["b"]]


def test_anything_that_changes_the_call_keeps_jobs_apart():
    batcher = waiting(command("a"), command("b", width=128), command("c", sampler="DDIM"),
                      command("d", loras=(LoraRef("x"),)), command("e", model="other"), command("f", guidance_scale=3.0),
                      command("g"))
    assert taken(batcher) == [["a", "g"], ["b"], ["c"], ["d"], ["e"], ["f"]]
    assert batch_key(command("a")) == batch_key(command("g"))


def test_a_job_asking_for_smaller_calls_runs_alone_and_is_split():
    batcher = waiting(command("a", images=4, batch_size=1), command("b"))
    assert taken(batcher) == [["a"], ["b"]]
    assert calls_for([command("a", images=4, batch_size=1)], capacity=4) == [[(0, 0, 1)], [(0, 1, 1)], [(0, 2, 1)], [(0, 3, 1)]]
    assert calls_for([command("a", images=8)], capacity=4) == [[(0, 0, 4)], [(0, 4, 4)]]
    assert calls_for([command("a", images=2), command("b")], capacity=4) == [[(0, 0, 2), (1, 0, 1)]]


def test_a_cancelled_job_in_a_shared_call_is_dropped_the_rest_go_on():
    published, cancelled = [], {"b"}

    class Loop:
        def call_soon_threadsafe(self, fn, event):
            fn(event)

    reporter = ProgressReporter(
        loop=Loop(), publish=published.append, rate=0, preview_every=2, family="sd1.x",  # rate 0: every step
        preview=preview_png,
        cancelled=lambda job: job in cancelled,
        slots=[Slot("a", 1, 0, 1, 1), Slot("b", 1, 1, 1, 2)],
    )
    latents = torch.zeros(3, 4, 8, 8)
    assert reporter(1, 4, latents, "generating") is False
    assert reporter(2, 4, latents, "generating") is False
    assert not [e for e in published if isinstance(e, JobCancelled)], "the cancel announces it, not the worker"
    progress = [e for e in published if isinstance(e, JobProgressed)]
    assert {e.job_id for e in progress} == {"a"} and [e.step for e in progress] == [1, 2]
    assert progress[0].preview is None and progress[1].preview.startswith(b"\x89PNG"), "a preview every 2 steps"
    assert reporter.dropped == {"b"}
    cancelled.add("a")
    assert reporter(3, 4, latents, "generating") is True, "the call stops once every job in it is cancelled"


def test_a_preview_due_between_two_throttled_reports_rides_on_the_next():
    published = []

    class Loop:
        def call_soon_threadsafe(self, fn, event):
            fn(event)

    seconds = iter(range(100))  # one second a step
    reporter = ProgressReporter(
        loop=Loop(), publish=published.append, rate=1 / 3, preview_every=5, family="sd1.x",  # a report per 3 s
        preview=preview_png, cancelled=lambda job: False, slots=[Slot("a", 1, 0, 1, 1)],
        clock=lambda: next(seconds),
    )
    latents = torch.zeros(1, 4, 8, 8)
    for step in range(1, 21):
        reporter(step, 20, latents, "generating")
    reported = [(e.step, e.preview is not None) for e in published]
    # Reports at steps 1, 4, 7, ... (throttled); the previews due at 5, 10 and 15 arrive at 7, 10 and 16.
    assert reported == [(1, False), (4, False), (7, True), (10, True), (13, False), (16, True), (19, False), (20, True)]
