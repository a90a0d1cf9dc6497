"""How one job's attempt ends on this worker: the events to publish, then the commands to queue.

The worker publishes every job's events first (in order, image 1 first), then sends the commands,
so that a job's `job.requeued` is recorded before its next attempt can start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas.events import (
    Event,
    GenerateImages,
    ImageGenerated,
    JobFailed,
    JobRequeued,
    command_for_attempt,
)
from schemas.jobs import ImageMetadata
from schemas.layout import image_id

if TYPE_CHECKING:
    from services.generator.render import RenderedImage


def next_attempt(command: GenerateImages, attempt: int) -> GenerateImages:
    """The command that runs `command`'s job again as `attempt` (schemas' one builder)."""
    return command_for_attempt(command, attempt)


@dataclass(frozen=True)
class Outcome:
    """One job's end of an attempt: events to publish, then commands to queue again."""

    events: tuple[Event, ...] = ()
    requeue: tuple[GenerateImages, ...] = ()


NOTHING = Outcome()


def failed(command: GenerateImages, reason: str) -> Outcome:
    return Outcome(events=(JobFailed(job_id=command.job_id, reason=reason, attempt=command.attempt),))


def requeued(command: GenerateImages, attempt: int, reason: str) -> Outcome:
    """The job runs again as `attempt` (the same one when this worker stops, the next after an error)."""
    retry = command if attempt == command.attempt else next_attempt(command, attempt)
    return Outcome(events=(JobRequeued(job_id=command.job_id, attempt=attempt, reason=reason),), requeue=(retry,))


def generated(command: GenerateImages, images: list[RenderedImage], worker: str, seconds: float) -> Outcome:
    """The job's images, each as an `image.generated` event for the saver."""
    job_id, spec = command.job_id, command.spec
    return Outcome(events=tuple(
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
    ))
