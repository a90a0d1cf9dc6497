"""One generator process's async side: warm models, the pipeline thread, the batcher, fencing,
hand-back, and each batch's outcomes. The pipeline work itself is the `render` object passed in
(`services.generator.render.Renderer`); this module never loads torch.

A batch runs in two parts: its pipeline calls (the pipeline thread), then its rest: VAE decode
where the call left it, PNG encoding (a second thread) and publishing (the loop). With `overlap`
the batcher starts the next batch's pipeline calls while the rest of this one runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from pipelines.errors import Interrupted, InvalidRequest, LoraError, ModelLoadError
from schemas.catalog import Catalog, ModelEntry
from schemas.events import (
    Event,
    GenerateImages,
    ImageGenerated,
    JobRequeued,
    JobStarted,
    ModelEvicted,
    ModelLoaded,
    ModelLoading,
    WorkerHeartbeat,
)
from services.bus import BrokerUnavailable
from services.generator import outcomes
from services.generator.batcher import Batcher, Waiting
from services.generator.cancellation import Cancellations
from services.generator.outcomes import Outcome
from services.generator.progress import StepWatch

if TYPE_CHECKING:
    from pipelines.loader import LoadedModel, ModelCache
    from services.generator.render import Rendered, RenderedImage


class Render(Protocol):
    """What the worker needs of the render path (`services.generator.render.Renderer`)."""

    def __call__(self, model: LoadedModel, commands: list[GenerateImages], watch: StepWatch) -> Rendered:
        """The batch's pipeline calls, in the pipeline thread."""

    def finish(self, commands: list[GenerateImages], rendered: Rendered,
               skip: Callable[[str], bool]) -> list[list[RenderedImage]]:
        """Each job's images as PNGs (decoding what is still latents), none for the jobs `skip`
        names, in any one thread."""

log = structlog.get_logger("generator")

# After the grace, how long one step plus handing the jobs back may take (the supervisor kills at 20 s).
STOP_AFTER_INTERRUPT = 8.0


class Publisher(Protocol):
    async def publish(self, event: Event) -> None: ...
    def publish_soon(self, event: Event) -> None: ...
    async def send(self, command: GenerateImages) -> None: ...


@dataclass(frozen=True)
class Options:
    """How this worker runs its jobs (from settings)."""

    max_batch: int = 4
    max_attempts: int = 3
    heartbeat_interval: float = 5.0
    # Decode, encode and publish a batch while the next one denoises (False: one batch at a
    # time, start to end, all of it in the pipeline thread).
    overlap: bool = True
    # Seconds the batcher may wait for compatible jobs to fill a call while jobs are arriving.
    batch_wait: float = 0.0


class Worker:
    """One generator process: warm models, its pipeline thread, its batcher, cancellations."""

    def __init__(self, *, bus: Publisher, catalog: Catalog, cache: ModelCache, render: Render, worker_id: str,
                 options: Options):
        self.bus = bus
        self.catalog = catalog
        self.cache = cache
        self.render = render
        self.id = worker_id
        self.options = options
        # One pipeline call at a time: a diffusers pipeline object is not thread-safe.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
        # The rest of a batch (decode, PNGs) runs here while the pipeline thread goes on.
        self.finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finish")
        self.cancellations = Cancellations()
        # Jobs of the batches being generated or finished, with their attempt: what heartbeats speak for.
        self.held: dict[str, int] = {}
        self.stopping = False
        self.interrupt = False
        self.batcher = Batcher(self.run_batch, options.max_batch, overlap=options.overlap,
                               fill_wait=options.batch_wait)
        # Told the models warm now after each load (affinity routing follows them at once).
        self.on_models_changed: Callable[[], Awaitable[None]] | None = None

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
        if self.on_models_changed is not None:
            await self.on_models_changed()
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

    async def run_batch(self, batch: list[Waiting]) -> Awaitable[None] | None:
        """Run a batch's pipeline calls; return the rest of its work (PNGs, then each job's
        outcome published), which the batcher runs while the next batch generates."""
        if batch[0].suspect:
            # A job back from a crash may be what crashed it: it runs alone (the batcher let the
            # batch finishing end first), and what else this worker holds goes back to the queue
            # first, so that if it kills this process again the broker charges it alone, not the
            # innocent jobs that were waiting behind it.
            await self.hand_back(self.batcher.take_others())
        commands = []
        for waiting in batch:
            command = waiting.command
            if self.cancellations.is_stale(command):
                log.info("zombie attempt dropped", job_id=command.job_id, attempt=command.attempt)
            elif self.cancellations.is_cancelled(command.job_id):
                # The cancel already ended the job (job.cancelled comes from whoever cancelled it).
                log.info("cancelled job skipped", job_id=command.job_id, attempt=command.attempt)
            else:
                commands.append(command)
        if not commands:
            return None
        for c in commands:
            self.held[c.job_id] = c.attempt
            self.cancellations.starting(c)
        self.interrupt = False
        # job.started is confirmed while the work begins; it is awaited before any outcome is sent.
        started = asyncio.gather(*(
            self.bus.publish(JobStarted(job_id=c.job_id, worker=self.id, attempt=c.attempt, batch_jobs=len(commands)))
            for c in commands
        ))
        try:
            generated = await self._generate(commands)
        except Exception as exc:  # noqa: BLE001 - an unexpected pipeline error: try again, alone, or give up
            generated = self._retry_or_raise(batch, commands, exc)
        return self._finish(batch, commands, started, generated)

    async def _finish(self, batch: list[Waiting], commands: list[GenerateImages], started: Awaitable,
                      generated: list[Outcome] | Callable[[], list[Outcome]]) -> None:
        """The rest of a batch: its PNGs (off the loop), then each job's outcome published."""
        try:
            try:
                ends = generated if isinstance(generated, list) else await self._off_loop(generated)
            except Exception as exc:  # noqa: BLE001 - decoding or encoding failed: as a pipeline error
                ends = self._retry_or_raise(batch, commands, exc)
            finally:
                await started
            # A job cancelled since its calls ended (while its images were decoded, encoded or
            # waiting here) publishes nothing: the cancel announced its end.
            ends = [self._unless_cancelled(c, end) for c, end in zip(commands, ends, strict=True)]
            # Events first, written to the broker in order (image 1 first), confirms awaited
            # together; then any command to run a job again, so that its job.requeued is recorded
            # before the next attempt can start.
            published = [event for end in ends for event in end.events if not self.cancellations.is_from_zombie(event)]
            await asyncio.gather(*(self.bus.publish(event) for event in published))
            for event in published:
                if isinstance(event, ImageGenerated):
                    self.cancellations.generated(event.job_id)
            for end in ends:
                for command in end.requeue:
                    await self.bus.send(command)
        finally:
            for c in commands:
                if self.held.get(c.job_id) == c.attempt:
                    del self.held[c.job_id]

    def _unless_cancelled(self, command: GenerateImages, end: Outcome) -> Outcome:
        if end is not outcomes.NOTHING and self.cancellations.is_cancelled(command.job_id):
            log.info("cancelled job's outcome dropped", job_id=command.job_id, attempt=command.attempt)
            return outcomes.NOTHING
        return end

    async def _off_loop(self, fn: Callable[[], list[Outcome]]) -> list[Outcome]:
        if not self.options.overlap:  # the pipeline thread does it all, as one step after another
            return await self.run(fn)
        return await asyncio.get_running_loop().run_in_executor(self.finisher, fn)

    def _retry_or_raise(self, batch: list[Waiting], commands: list[GenerateImages], exc: Exception) -> list[Outcome]:
        """Requeue each job as attempt + 1 (it then runs alone, so a poison job cannot drag its
        batch-mates down with it); a job out of attempts fails: its consumer parks the message."""
        log.exception("generation raised", jobs=[c.job_id for c in commands])
        reason = f"generation failed: {type(exc).__name__}: {exc}"
        ends = []
        for command in commands:
            if command.attempt >= self.options.max_attempts:
                waiting = next(w for w in batch if w.command is command)
                waiting.done.set_exception(exc)
                ends.append(outcomes.NOTHING)
            else:
                ends.append(outcomes.requeued(command, command.attempt + 1, reason))
        return ends

    async def _generate(self, commands: list[GenerateImages]) -> list[Outcome] | Callable[[], list[Outcome]]:
        """Per job, how this attempt ends: why it has no images, or (once the pipeline calls are
        done) a function that makes its images and returns the outcomes."""
        first = commands[0]
        try:
            entry = self.catalog.model(first.spec.model)
            model = await self.model_for(entry, [c.job_id for c in commands])
        except (KeyError, ModelLoadError) as exc:
            reason = exc.args[0] if isinstance(exc, KeyError) else str(exc)
            return [outcomes.failed(c, reason) for c in commands]
        started = time.perf_counter()
        watch = StepWatch(loop=asyncio.get_running_loop(), publish=self.bus.publish_soon,
                          cancelled=self.cancellations.is_cancelled, interrupted=lambda: self.interrupt)
        try:
            rendered = await self.run(self.render, model, commands, watch)
        except Interrupted:
            if self.stopping:  # the worker is shutting down: the same attempt goes back to the queue
                return [outcomes.requeued(c, c.attempt, "its worker shut down mid-generation") for c in commands]
            return [outcomes.NOTHING for _ in commands]  # cancelled: the cancel announced it, images discarded
        except (InvalidRequest, LoraError) as exc:
            return [outcomes.failed(c, str(exc)) for c in commands]
        pipeline_seconds = time.perf_counter() - started

        def finish() -> list[Outcome]:
            begun = time.perf_counter()
            images = self.render.finish(commands, rendered, skip=self.cancellations.is_cancelled)
            # The job's generation time counts its decode and PNGs, not the wait for this thread.
            seconds = round(pipeline_seconds + time.perf_counter() - begun, 4)
            return [
                outcomes.NOTHING if command.job_id in rendered.dropped or not job_images
                else outcomes.generated(command, job_images, self.id, seconds)
                for command, job_images in zip(commands, images, strict=True)
            ]

        return finish
