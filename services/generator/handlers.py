"""The generator's effects: generate a job's images, follow cancellations."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import msgspec
import structlog

from pipelines.generate import ImageTask, Interrupted, InvalidRequest, txt2img
from pipelines.loader import LoadedModel, ModelCache, ModelLoadError
from pipelines.png import a1111_parameters, encode_png
from schemas.catalog import Catalog, ModelEntry
from schemas.events import (
    Event,
    GenerateImages,
    ImageGenerated,
    JobCancelled,
    JobCancelRequested,
    JobFailed,
    JobStarted,
    ModelEvicted,
    ModelLoaded,
    ModelLoading,
)
from schemas.jobs import ImageMetadata, JobSpec
from schemas.layout import image_id
from services.generator.progress import ProgressReporter

log = structlog.get_logger("generator")

REMEMBERED_CANCELLATIONS = 10_000


class Publisher(Protocol):
    async def publish(self, event: Event) -> None: ...
    def publish_soon(self, event: Event) -> None: ...


@dataclass(frozen=True)
class RenderedImage:
    png: bytes
    width: int
    height: int
    seed: int


class Worker:
    """One generator process: its warm models, its pipeline thread, the jobs it was told to cancel."""

    def __init__(self, *, bus: Publisher, catalog: Catalog, cache: ModelCache, worker_id: str, progress_rate: float):
        self.bus = bus
        self.catalog = catalog
        self.cache = cache
        self.id = worker_id
        self.progress_rate = progress_rate
        # One pipeline call at a time: a diffusers pipeline object is not thread-safe.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
        self.cancelled: OrderedDict[str, None] = OrderedDict()

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self.cancelled

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def model_for(self, entry: ModelEntry, job_id: str) -> LoadedModel:
        """The warm model, or load it now (announcing the load, and any evictions it causes)."""
        model = self.cache.get(entry)
        if model is not None:
            return model
        await self.bus.publish(ModelLoading(job_id=job_id, model=entry.id, worker=self.id))
        model, evicted = await self.run(self.cache.load, entry)
        for old in evicted:
            await self.bus.publish(ModelEvicted(job_id=job_id, model=old.entry.id, worker=self.id, bytes=old.bytes))
        await self.bus.publish(ModelLoaded(
            job_id=job_id, model=entry.id, worker=self.id, seconds=round(model.load_seconds, 3), bytes=model.bytes
        ))
        return model


async def remember_cancellation(event: Event, *, worker: Worker) -> None:
    """Note a cancellation: a queued job is skipped, a running one stops at its next step."""
    if isinstance(event, JobCancelRequested):
        worker.cancelled[event.job_id] = None
        while len(worker.cancelled) > REMEMBERED_CANCELLATIONS:
            worker.cancelled.popitem(last=False)


def render(model: LoadedModel, spec: JobSpec, reporter: ProgressReporter) -> list[RenderedImage]:
    """Run the pipeline for every image of the job and encode each as a PNG (pipeline thread)."""
    settings = spec.settings
    seeds = [settings.seed + n for n in range(settings.num_images)]
    tasks = [ImageTask(prompt=spec.prompt, negative_prompt=spec.negative_prompt, seed=seed) for seed in seeds]
    images = txt2img(
        model, tasks, width=settings.width, height=settings.height,
        steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale, on_step=reporter,
    )
    rendered = []
    for number, (image, seed) in enumerate(zip(images, seeds, strict=True), start=1):
        parameters = a1111_parameters(
            prompt=spec.prompt, negative_prompt=spec.negative_prompt, steps=settings.num_inference_steps,
            sampler=settings.sampler, cfg_scale=settings.guidance_scale, seed=seed,
            width=settings.width, height=settings.height, model=spec.model,
        )
        # Only what produced the pixels goes into the PNG, so the same request gives the same bytes.
        request = {
            "model": spec.model, "prompt": spec.prompt, "negative_prompt": spec.negative_prompt,
            "settings": msgspec.to_builtins(settings), "seed": seed,
            "image_number": number, "total_images": settings.num_images,
        }
        rendered.append(RenderedImage(encode_png(image, parameters, request), image.width, image.height, seed))
    return rendered


async def generate_images(command: GenerateImages, *, worker: Worker) -> None:
    """Generate the job's images and publish each one; the command is acked once all are confirmed."""
    job_id, attempt = command.job_id, command.attempt
    bus = worker.bus
    if worker.is_cancelled(job_id):
        await bus.publish(JobCancelled(job_id=job_id, reason="cancelled while queued"))
        return
    # job.started is confirmed while the work begins; it is awaited before any outcome is sent.
    started = asyncio.ensure_future(bus.publish(JobStarted(job_id=job_id, worker=worker.id, attempt=attempt)))
    try:
        outcome = await _generate(command, worker)
    finally:
        await started
    # Written to the broker in order (image 1 first); the confirms are awaited together.
    await asyncio.gather(*(bus.publish(event) for event in outcome))


async def _generate(command: GenerateImages, worker: Worker) -> list[Event]:
    """The events that end this attempt: its images, or why there are none."""
    job_id, spec, attempt = command.job_id, command.spec, command.attempt
    try:
        entry = worker.catalog.model(spec.model)
        model = await worker.model_for(entry, job_id)
    except (KeyError, ModelLoadError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        return [JobFailed(job_id=job_id, reason=reason, attempt=attempt)]
    reporter = ProgressReporter(
        loop=asyncio.get_running_loop(), publish=worker.bus.publish_soon, job_id=job_id, attempt=attempt,
        total_images=spec.settings.num_images, rate=worker.progress_rate,
        cancelled=lambda: worker.is_cancelled(job_id),
    )
    started = time.perf_counter()
    try:
        rendered = await worker.run(render, model, spec, reporter)
    except Interrupted:
        return [JobCancelled(job_id=job_id, reason="cancelled while generating")]
    except InvalidRequest as exc:
        return [JobFailed(job_id=job_id, reason=str(exc), attempt=attempt)]
    seconds = round(time.perf_counter() - started, 4)
    return [
        ImageGenerated(
            job_id=job_id,
            image_id=image_id(job_id, number),
            image_number=number,
            total_images=len(rendered),
            job_created_at=command.created_at,
            attempt=attempt,
            worker=worker.id,
            width=image.width,
            height=image.height,
            png=image.png,
            metadata=ImageMetadata(
                job_id=job_id, model_id=spec.model, prompt=spec.prompt, negative_prompt=spec.negative_prompt,
                settings=spec.settings, seed=image.seed, image_number=number, total_images=len(rendered),
                generation_time=seconds,
            ),
        )
        for number, image in enumerate(rendered, start=1)
    ]


async def fail_job(command: GenerateImages, error: Exception, *, worker: Worker) -> None:
    """A job whose generation raised ends failed with the error, never silently dropped."""
    await worker.bus.publish(JobFailed(
        job_id=command.job_id, reason=f"generation failed: {type(error).__name__}: {error}", attempt=command.attempt
    ))
