"""How each event changes a job's document: the one state machine of a job, shared by the recorder
(job documents) and the projection (DuckDB). Pure: no I/O, tested with plain values."""

from __future__ import annotations

from datetime import timedelta

from schemas.events import (
    Event,
    ImageDeleted,
    ImageExpired,
    ImageGenerated,
    ImageSaved,
    JobAccepted,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobEnriched,
    JobFailed,
    JobProgressed,
    JobRequeued,
    JobStalled,
    JobStarted,
    ModelLoaded,
    ModelLoading,
    WebhookDelivered,
    WebhookFailed,
)
from schemas.jobs import TERMINAL_STATUSES, ImageRecord, JobDocument, Progress
from schemas.webhooks import WebhookState


def apply_event(doc: JobDocument | None, event: Event) -> JobDocument | None:
    """The job's document after `event` (changed in place), or None when the event changes nothing.

    A finished job (completed, failed, cancelled) stays finished: late progress or results from a
    worker that lost the job are ignored. Only image deletion still edits it.
    """
    if isinstance(event, JobAccepted):
        # The ingress usually wrote the document already; returning it puts the job in queue.txt.
        return JobDocument.new(event.job_id, event.spec, event.occurred_at) if doc is None else doc
    if doc is None:
        return None
    if isinstance(event, (ImageDeleted, ImageExpired)):
        before = len(doc.images)
        doc.images = [image for image in doc.images if image.id != event.image_id]
        return _touched(doc, event) if len(doc.images) != before else None
    if isinstance(event, (WebhookDelivered, WebhookFailed)):
        return _touched(_webhook(doc, event), event)  # deliveries are reported after the job ended too
    if isinstance(event, JobRequeued) and event.replay and doc.status == "failed":
        doc.status, doc.error, doc.completed_at = "pending", None, None
    if doc.status in TERMINAL_STATUSES:
        return None
    attempt = getattr(event, "attempt", None)
    if attempt is not None and attempt < doc.attempts:
        return None  # from an attempt that was superseded

    progress = doc.progress
    match event:
        case JobEnriched():
            doc.prompt = event.prompt
            doc.negative_prompt = event.negative_prompt
            doc.original_prompt = event.original_prompt
            doc.style = event.style
            doc.enrichment = event.enrichment
            doc.message = "Prompt ready" + (f" (style {event.style})" if event.style else "")
        case JobStarted():
            doc.status = "processing"
            doc.started_at = doc.started_at or event.occurred_at
            doc.attempts = max(doc.attempts, event.attempt)
            doc.progress = Progress(preparing=True, total_steps=doc.settings.num_inference_steps)
            doc.message = "Preparing"
        case ModelLoading():
            progress.preparing = False
            progress.loading_model = True
            doc.message = f"Loading model {event.model}"
        case ModelLoaded():
            progress.loading_model = False
            progress.preparing = True
            doc.message = f"Model {event.model} loaded in {event.seconds:.1f}s"
        case JobProgressed():
            doc.status = "processing"
            progress.preparing = progress.loading_model = False
            progress.generating = event.phase in ("generating", "hires")
            progress.step, progress.total_steps = event.step, event.total_steps
            progress.image_index = event.image_index
            images = f"image {event.image_index} of {event.total_images}" if event.total_images > 1 else "image"
            phase = " (hires pass)" if event.phase == "hires" else ""
            doc.message = f"Generating {images}{phase}... Step {event.step}/{event.total_steps}"
        case ImageGenerated():
            progress.generating = False
            progress.saving = True
            progress.step = progress.total_steps
            doc.message = f"Saving image {event.image_number} of {event.total_images}"
        case ImageSaved():
            _add_images(doc, [event.image])
            doc.message = f"Saved image {len(doc.images)} of {doc.settings.num_images}"
        case JobCompleted():
            _add_images(doc, event.images)
            doc.status = "completed"
            doc.completed_at = event.occurred_at
            doc.progress = Progress(
                completed=True, step=progress.total_steps, total_steps=progress.total_steps
            )
            doc.message = " ".join((f"Generated {len(event.image_ids)} image(s)", *(f"({n})" for n in doc.notices)))
        case JobFailed():
            doc.status = "failed"
            doc.error = event.reason
            doc.completed_at = event.occurred_at
            doc.progress = Progress(failed=True, step=progress.step, total_steps=progress.total_steps)
            doc.message = f"Failed: {event.reason}"
        case JobCancelled():
            doc.status = "cancelled"
            doc.images = []  # a cancelled job keeps no image (the saver removes any it wrote)
            doc.completed_at = event.occurred_at
            doc.progress = Progress(step=progress.step, total_steps=progress.total_steps)
            doc.message = f"Cancelled: {event.reason}"
        case JobCancelRequested():
            doc.message = "Cancellation requested"
        case JobStalled():
            doc.message = f"Worker silent for {event.silent_seconds:.0f}s on attempt {event.attempt}"
        case JobRequeued():
            doc.status = "pending"
            doc.attempts = max(doc.attempts, event.attempt)
            doc.progress = Progress(preparing=True, total_steps=doc.settings.num_inference_steps)
            doc.message = f"Requeued for attempt {event.attempt}: {event.reason}"
        case _:
            return None
    return _touched(doc, event)


def _webhook(doc: JobDocument, event: WebhookDelivered | WebhookFailed) -> JobDocument:
    state = doc.webhook or WebhookState(url=event.url)
    state.last_event, state.tries, state.status_code = event.for_event, event.tries, event.status_code
    state.updated_at = event.occurred_at
    if isinstance(event, WebhookDelivered):
        state.status, state.error = "delivered", None
        state.delivered += 1
    else:
        state.status, state.error = "failed", event.error
        state.failed += 1
    doc.webhook = state
    return doc


def _add_images(doc: JobDocument, images: list[ImageRecord]) -> None:
    if not doc.images:
        doc.images = sorted(images, key=lambda image: image.metadata.image_number)
        return
    known = {image.id for image in doc.images}
    fresh = [image for image in images if image.id not in known]
    if fresh:
        doc.images = sorted([*doc.images, *fresh], key=lambda image: image.metadata.image_number)


# The smallest step `updated_at` moves by: clients compare it at millisecond precision (weights.gg's
# `lastModifiedDate`, JavaScript dates).
TICK = timedelta(milliseconds=1)


def _touched(doc: JobDocument, event: Event) -> JobDocument:
    """Every change moves `updated_at` on, by at least a millisecond: two events stamped in the same
    millisecond (the saver's `image.saved` and `job.completed`) must not leave a client that polls
    between them seeing a new status under the old time. Derived from the events alone, so the
    recorder and the projection (and a rebuild) agree."""
    doc.updated_at = max(doc.updated_at + TICK, event.occurred_at)
    return doc
