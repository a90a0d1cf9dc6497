"""The generator's effects, one per consumed message: generate a job's images (batched when
compatible), follow other workers' news of jobs, fail a job whose generation raised."""

from __future__ import annotations

import structlog

from schemas.events import Event, GenerateImages, JobFailed, ModelRemoved
from services.bus import Retry
from services.generator.outcomes import next_attempt
from services.generator.worker import Worker

log = structlog.get_logger("generator")


async def generate_images(command: GenerateImages, *, deliveries: int, worker: Worker) -> None:
    """Queue the job for the next pipeline call it fits in; returns once its outcome is published.

    `deliveries` is how many times the broker delivered this message before. A redelivered
    command was held by a worker that died or lost its connection (which may still be running
    it): each redelivery is a new attempt, so the old holder's results are ignored.
    """
    if deliveries:
        command = next_attempt(command, command.attempt + deliveries)
    if worker.stopping:
        raise Retry("worker shutting down")
    worker.cancellations.holding(command)
    await worker.batcher.submit(command, deliveries=deliveries)


async def follow_job(event: Event, *, worker: Worker) -> None:
    """Note cancellations (a queued job is skipped, a running one stops at its next step) and
    newer attempts (an older attempt of the job is a zombie whose work is dropped)."""
    worker.cancellations.follow(event)


async def fail_job(command: GenerateImages, error: Exception, *, worker: Worker) -> None:
    """A job whose generation raised ends failed with the error, never silently dropped."""
    await worker.bus.publish(JobFailed(
        job_id=command.job_id, reason=f"generation failed: {type(error).__name__}: {error}", attempt=command.attempt
    ))


async def follow_catalog(event: Event, *, worker: Worker) -> None:
    """A model came (the catalog is read again, so the next job naming it finds it) or went (its
    warm pipeline is dropped, after the call under way: the pipeline thread does it)."""
    worker.catalog.current(force=True)
    if isinstance(event, ModelRemoved):
        dropped = await worker.run(worker.cache.drop, event.model)
        if dropped is not None:
            log.info("removed model dropped from the warm cache", model=event.model)
