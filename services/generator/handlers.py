"""The generator's effects: generate jobs' images (batched when compatible), follow cancellations."""

from __future__ import annotations

import asyncio
import io
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec
import structlog
from PIL import Image

from pipelines.generate import Hires, ImageTask, Interrupted, InvalidRequest, Recipe, generate
from pipelines.loader import LoadedModel, ModelCache, ModelLoadError
from pipelines.loras import LoraError
from pipelines.png import a1111_parameters, encode_png
from schemas.catalog import Catalog, ModelEntry
from schemas.events import (
    Event,
    GenerateImages,
    ImageGenerated,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobFailed,
    JobRequeued,
    JobStarted,
    ModelEvicted,
    ModelLoaded,
    ModelLoading,
    WorkerHeartbeat,
    command_for_attempt,
)
from schemas.jobs import ImageMetadata, JobSpec
from schemas.layout import image_id
from services.bus import BrokerUnavailable, Retry, delivery_count
from services.generator import faults
from services.generator.batcher import Batcher, Waiting
from services.generator.progress import ProgressReporter, Slot

log = structlog.get_logger("generator")

REMEMBERED_CANCELLATIONS = 10_000
# After the grace, how long one step plus handing the jobs back may take (the supervisor kills at 20 s).
STOP_AFTER_INTERRUPT = 8.0


class Publisher(Protocol):
    async def publish(self, event: Event) -> None: ...
    def publish_soon(self, event: Event) -> None: ...
    async def send(self, command: GenerateImages) -> None: ...


@dataclass(frozen=True)
class RenderedImage:
    png: bytes
    width: int
    height: int
    seed: int


@dataclass
class Options:
    """How this worker generates (from settings)."""

    progress_rate: float = 4.0
    preview_every: int = 5
    max_batch: int = 4
    lora_folder: Path = Path("var/models/loras")
    max_attempts: int = 3
    heartbeat_interval: float = 5.0


class Worker:
    """One generator process: warm models, its pipeline thread, its batcher, cancellations."""

    def __init__(self, *, bus: Publisher, catalog: Catalog, cache: ModelCache, worker_id: str, options: Options):
        self.bus = bus
        self.catalog = catalog
        self.cache = cache
        self.id = worker_id
        self.options = options
        # One pipeline call at a time: a diffusers pipeline object is not thread-safe.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
        self.cancelled: OrderedDict[str, None] = OrderedDict()
        # The newest attempt of each job we heard of: older attempts are zombies and are dropped.
        self.superseded: OrderedDict[str, int] = OrderedDict()
        # The newest attempt started by any worker, this one included: a second copy of it is a
        # duplicate (an enricher that died after sending but before acking, or a redelivery from
        # a lost worker numbered like the attempt the reaper already requeued).
        self.started: OrderedDict[str, int] = OrderedDict()
        # Jobs that ended (completed, failed, cancelled): any copy of their command left is stale.
        self.ended: OrderedDict[str, None] = OrderedDict()
        # Jobs in the call being prepared or run, with their attempt: what heartbeats speak for.
        self.held: dict[str, int] = {}
        self.stopping = False
        self.interrupt = False
        self.batcher = Batcher(self.run_batch, options.max_batch)

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self.cancelled

    def is_stale(self, command: GenerateImages) -> bool:
        """An older attempt (a zombie), or an attempt some worker already started (a duplicate)."""
        job = command.job_id
        return (job in self.ended or self.superseded.get(job, 0) > command.attempt
                or self.started.get(job, 0) >= command.attempt)

    async def heartbeats(self) -> None:
        """Say, for every job held, that this worker is alive and on it (the reaper listens)."""
        while True:
            await asyncio.sleep(self.options.heartbeat_interval)
            for job_id, attempt in list(self.held.items()):
                self.bus.publish_soon(WorkerHeartbeat(job_id=job_id, worker=self.id, attempt=attempt))

    async def stop(self, grace: float) -> None:
        """SIGTERM: queued jobs go back to the queue now; the running call gets `grace` seconds,
        then stops at its next step and its jobs go back too, with the same attempt."""
        self.stopping = True
        waiting = self.batcher.drain()
        for item in waiting:
            await self.bus.publish(JobRequeued(job_id=item.command.job_id, attempt=item.command.attempt,
                                               reason="its worker shut down before starting it"))
        # Recorded first, then queued: the next holder's job.started always comes after.
        await self.hand_back(waiting)
        await self.batcher.idle(grace)
        if self.batcher.busy:
            self.interrupt = True  # the step under way finishes; then the call stops
            await self.batcher.idle(STOP_AFTER_INTERRUPT)

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def model_for(self, entry: ModelEntry, job_ids: list[str]) -> LoadedModel:
        """The warm model, or load it now (announcing the load to each waiting job, and any evictions)."""
        model = self.cache.get(entry)
        if model is not None:
            return model
        await asyncio.gather(*(self.bus.publish(ModelLoading(job_id=j, model=entry.id, worker=self.id)) for j in job_ids))
        model, evicted = await self.run(self.cache.load, entry)
        for old in evicted:
            await self.bus.publish(ModelEvicted(job_id=job_ids[0], model=old.entry.id, worker=self.id, bytes=old.bytes))
        await asyncio.gather(*(self.bus.publish(ModelLoaded(
            job_id=j, model=entry.id, worker=self.id, seconds=round(model.load_seconds, 3), bytes=model.bytes,
        )) for j in job_ids))
        return model

    async def hand_back(self, waiting: list[Waiting]) -> None:
        """Put jobs back in the queue as fresh messages (their delivery count starts again).

        If the broker cannot take one, it and the rest are handed back the old way: their
        consumers fail, the messages stay unacked, and the broker redelivers them.
        """
        for index, item in enumerate(waiting):
            try:
                await self.bus.send(item.command)
            except BrokerUnavailable as exc:
                for rest in waiting[index:]:
                    rest.done.set_exception(exc)
                return
            item.done.set_result(None)

    async def run_batch(self, batch: list[Waiting]) -> None:
        """Generate a batch of compatible jobs and publish each job's outcome."""
        if batch[0].command.attempt > 1:
            # A job back from a crash may be what crashed it: it runs alone, and what else this
            # worker holds goes back to the queue first, so that if it kills this process again
            # the broker charges it alone, not the innocent jobs that were waiting behind it.
            await self.hand_back(self.batcher.take_others())
        commands = []
        for waiting in batch:
            command = waiting.command
            if self.is_stale(command):
                log.info("zombie attempt dropped", job_id=command.job_id, attempt=command.attempt)
            elif self.is_cancelled(command.job_id):
                await self.bus.publish(JobCancelled(job_id=command.job_id, reason="cancelled while queued"))
            else:
                commands.append(command)
        if not commands:
            return
        self.held = {c.job_id: c.attempt for c in commands}
        for c in commands:
            _remember_max(self.started, c.job_id, c.attempt)
        self.interrupt = False
        # job.started is confirmed while the work begins; it is awaited before any outcome is sent.
        started = asyncio.gather(*(
            self.bus.publish(JobStarted(job_id=c.job_id, worker=self.id, attempt=c.attempt, batch_jobs=len(commands)))
            for c in commands
        ))
        try:
            try:
                outcomes = await self._generate(commands)
            except Exception as exc:  # an unexpected pipeline error: try again, alone, or give up
                outcomes = await self._retry_or_raise(batch, commands, exc)
            finally:
                await started
            # Events first, written to the broker in order (image 1 first), confirms awaited
            # together; then any command to run a job again, so that its job.requeued is recorded
            # before the next attempt can start.
            await asyncio.gather(*(
                self.bus.publish(message) for outcome in outcomes for message in outcome
                if not isinstance(message, GenerateImages) and not self._from_zombie(message)
            ))
            for outcome in outcomes:
                for message in outcome:
                    if isinstance(message, GenerateImages):
                        await self.bus.send(message)
        finally:
            self.held = {}

    def _from_zombie(self, event: Event) -> bool:
        attempt = getattr(event, "attempt", None)
        return attempt is not None and self.superseded.get(event.job_id, 0) > attempt

    async def _retry_or_raise(self, batch: list[Waiting], commands: list[GenerateImages], exc: Exception) -> list[list]:
        """Requeue each job as attempt + 1 (it then runs alone, so a poison job cannot drag its
        batch-mates down with it); a job out of attempts fails: its consumer parks the message."""
        log.exception("generation raised", jobs=[c.job_id for c in commands])
        reason = f"generation failed: {type(exc).__name__}: {exc}"
        outcomes = []
        for command in commands:
            if command.attempt >= self.options.max_attempts:
                waiting = next(w for w in batch if w.command is command)
                waiting.done.set_exception(exc)
                outcomes.append([])
                continue
            retry = command_for_attempt(command, command.attempt + 1)
            outcomes.append([JobRequeued(job_id=command.job_id, attempt=retry.attempt, reason=reason), retry])
        return outcomes

    async def _generate(self, commands: list[GenerateImages]) -> list[list[Event | GenerateImages]]:
        """Per job, the events that end this attempt: its images, or why there are none."""
        first = commands[0]
        try:
            entry = self.catalog.model(first.spec.model)
            model = await self.model_for(entry, [c.job_id for c in commands])
        except (KeyError, ModelLoadError) as exc:
            reason = exc.args[0] if isinstance(exc, KeyError) else str(exc)
            return [[JobFailed(job_id=c.job_id, reason=reason, attempt=c.attempt)] for c in commands]
        started = time.perf_counter()
        reporter_args = {
            "loop": asyncio.get_running_loop(), "publish": self.bus.publish_soon, "rate": self.options.progress_rate,
            "preview_every": self.options.preview_every, "family": entry.family, "cancelled": self.is_cancelled,
            "interrupted": lambda: self.interrupt,
        }
        try:
            rendered, dropped = await self.run(render, model, commands, reporter_args, self.options)
        except Interrupted:
            if self.stopping:  # the worker is shutting down: the same attempt goes back to the queue
                return [[JobRequeued(job_id=c.job_id, attempt=c.attempt, reason="its worker shut down mid-generation"), c]
                        for c in commands]
            return [[JobCancelled(job_id=c.job_id, reason="cancelled while generating")] for c in commands]
        except (InvalidRequest, LoraError) as exc:
            return [[JobFailed(job_id=c.job_id, reason=str(exc), attempt=c.attempt)] for c in commands]
        seconds = round(time.perf_counter() - started, 4)
        return [
            [] if command.job_id in dropped else image_events(command, images, self.id, seconds)
            for command, images in zip(commands, rendered, strict=True)
        ]


def image_events(command: GenerateImages, images: list[RenderedImage], worker: str, seconds: float) -> list[Event]:
    job_id, spec = command.job_id, command.spec
    return [
        ImageGenerated(
            job_id=job_id,
            image_id=image_id(job_id, number),
            image_number=number,
            total_images=len(images),
            job_created_at=command.created_at,
            attempt=command.attempt,
            worker=worker,
            width=image.width,
            height=image.height,
            png=image.png,
            metadata=ImageMetadata(
                job_id=job_id, model_id=spec.model, prompt=spec.prompt, negative_prompt=spec.negative_prompt,
                settings=spec.settings, seed=image.seed, image_number=number, total_images=len(images),
                generation_time=seconds,
            ),
        )
        for number, image in enumerate(images, start=1)
    ]


def recipe_of(spec: JobSpec) -> Recipe:
    settings = spec.settings
    hires = settings.hires
    return Recipe(
        mode=spec.mode, width=settings.width, height=settings.height, steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale, sampler=settings.sampler, strength=settings.strength,
        hires=Hires(hires.scale, hires.denoising_strength, hires.steps, hires.width, hires.height) if hires else None,
        loras=tuple((lora.name, lora.weight) for lora in spec.loras),
    )


def _decode(data: bytes | None, mode: str) -> Image.Image | None:
    if data is None:
        return None
    with Image.open(io.BytesIO(data)) as image:
        return image.convert(mode)


def tasks_of(command: GenerateImages) -> list[ImageTask]:
    spec = command.spec
    init, mask = _decode(command.init_image, "RGB"), _decode(command.mask_image, "L")
    return [
        ImageTask(prompt=spec.prompt, negative_prompt=spec.negative_prompt, seed=spec.settings.seed + n,
                  init_image=init, mask_image=mask)
        for n in range(spec.settings.num_images)
    ]


def calls_for(commands: list[GenerateImages], capacity: int) -> list[list[tuple[int, int, int]]]:
    """Pipeline calls for a batch: each a list of (job index, first image, image count).

    Several jobs share one call; a single job with more images than it may put in one call
    (A1111's batch_size, or the worker's capacity) runs in several.
    """
    if len(commands) > 1:
        return [[(i, 0, c.spec.settings.num_images) for i, c in enumerate(commands)]]
    settings = commands[0].spec.settings
    size = max(1, min(settings.batch_size, capacity))
    return [[(0, start, min(size, settings.num_images - start))] for start in range(0, settings.num_images, size)]


def render(model: LoadedModel, commands: list[GenerateImages], reporter_args: dict,
           options: Options) -> tuple[list[list[RenderedImage]], set[str]]:
    """Run the pipeline for a batch and encode every image as a PNG (in the pipeline thread).

    Returns each job's images, and the jobs cancelled while sharing a call (their images dropped).
    """
    for command in commands:
        faults.inject(command.spec)
    recipe = recipe_of(commands[0].spec)
    all_tasks = [tasks_of(command) for command in commands]
    images: list[list[Image.Image]] = [[] for _ in commands]
    dropped: set[str] = set()
    for call in calls_for(commands, options.max_batch):
        tasks, slots, offset = [], [], 0
        for index, start, count in call:
            command = commands[index]
            slots.append(Slot(job_id=command.job_id, attempt=command.attempt, offset=offset,
                              first_image=start + 1, total_images=command.spec.settings.num_images))
            tasks += all_tasks[index][start : start + count]
            offset += count
        reporter = ProgressReporter(slots=slots, **reporter_args)
        produced = generate(model, recipe, tasks, lora_folder=options.lora_folder, on_step=reporter)
        dropped |= reporter.dropped
        offset = 0
        for index, _start, count in call:
            images[index] += produced[offset : offset + count]
            offset += count
    return [encode_job(command, job_images) for command, job_images in zip(commands, images, strict=True)], dropped


def encode_job(command: GenerateImages, images: list[Image.Image]) -> list[RenderedImage]:
    spec, settings = command.spec, command.spec.settings
    loras = tuple((lora.name, lora.weight) for lora in spec.loras)
    rendered = []
    for number, image in enumerate(images, start=1):
        seed = settings.seed + number - 1
        parameters = a1111_parameters(
            prompt=spec.prompt, negative_prompt=spec.negative_prompt, steps=settings.num_inference_steps,
            sampler=settings.sampler, cfg_scale=settings.guidance_scale, seed=seed,
            width=image.width, height=image.height, model=spec.model, loras=loras,
            denoising_strength=settings.strength if spec.mode != "txt2img" else (settings.hires.denoising_strength if settings.hires else None),
            hires_scale=settings.hires.scale if settings.hires else None,
            hires_steps=settings.hires.steps if settings.hires else None,
        )
        # Only what produced the pixels goes into the PNG, so the same request gives the same bytes.
        request = {
            "model": spec.model, "mode": spec.mode, "prompt": spec.prompt, "negative_prompt": spec.negative_prompt,
            "settings": msgspec.to_builtins(settings), "seed": seed, "loras": msgspec.to_builtins(spec.loras),
            "init_image": spec.init_image, "mask_image": spec.mask_image,
            "image_number": number, "total_images": settings.num_images,
        }
        rendered.append(RenderedImage(encode_png(image, parameters, request), image.width, image.height, seed))
    return rendered


async def generate_images(command: GenerateImages, *, worker: Worker) -> None:
    """Queue the job for the next pipeline call it fits in; returns once its outcome is published.

    A redelivered command was held by a worker that died or lost its connection (which may still
    be running it): each redelivery is a new attempt, so the old holder's results are ignored.
    """
    redelivered = delivery_count.get()
    if redelivered:
        command = command_for_attempt(command, command.attempt + redelivered)
    if worker.stopping:
        raise Retry("worker shutting down")
    await worker.batcher.submit(command)


async def follow_job(event: Event, *, worker: Worker) -> None:
    """Note cancellations (a queued job is skipped, a running one stops at its next step) and
    newer attempts (an older attempt of the job is a zombie whose work is dropped)."""
    if isinstance(event, JobCancelRequested):
        worker.cancelled[event.job_id] = None
        while len(worker.cancelled) > REMEMBERED_CANCELLATIONS:
            worker.cancelled.popitem(last=False)
    elif isinstance(event, (JobCompleted, JobFailed, JobCancelled)):
        worker.ended[event.job_id] = None
        while len(worker.ended) > REMEMBERED_CANCELLATIONS:
            worker.ended.popitem(last=False)
    elif isinstance(event, JobRequeued) and event.replay:
        worker.ended.pop(event.job_id, None)  # an operator brought it back
        worker.started.pop(event.job_id, None)
        _remember_max(worker.superseded, event.job_id, event.attempt)
    elif isinstance(event, (JobRequeued, JobStarted)):
        _remember_max(worker.superseded, event.job_id, event.attempt)
        if isinstance(event, JobStarted):
            _remember_max(worker.started, event.job_id, event.attempt)


def _remember_max(seen: OrderedDict[str, int], job_id: str, attempt: int) -> None:
    if attempt > seen.get(job_id, 0):
        seen[job_id] = attempt
        seen.move_to_end(job_id)
        while len(seen) > REMEMBERED_CANCELLATIONS:
            seen.popitem(last=False)


async def fail_job(command: GenerateImages, error: Exception, *, worker: Worker) -> None:
    """A job whose generation raised ends failed with the error, never silently dropped."""
    await worker.bus.publish(JobFailed(
        job_id=command.job_id, reason=f"generation failed: {type(error).__name__}: {error}", attempt=command.attempt
    ))
