"""The saver's effects."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Protocol

import msgspec
import structlog

from schemas.events import Event, ImageGenerated, ImageSaved, JobCompleted, JobFailed
from schemas.jobs import TERMINAL_STATUSES, ImageRecord, JobDocument
from schemas.layout import DataLayout, image_id
from services.files import write_atomic_many

log = structlog.get_logger("saver")
_encoder = msgspec.json.Encoder()
_doc_decoder = msgspec.json.Decoder(JobDocument)
_record_decoder = msgspec.json.Decoder(ImageRecord)


class Publisher(Protocol):
    async def publish(self, event: Event) -> None: ...


def _job_document(layout: DataLayout, job_id: str) -> JobDocument | None:
    try:
        return _doc_decoder.decode(layout.job(job_id).read_bytes())
    except (FileNotFoundError, msgspec.MsgspecError):
        return None


def stale_reason(doc: JobDocument | None, event: ImageGenerated) -> str | None:
    """Why this image must not be saved: its job already ended, or a newer attempt owns it."""
    if doc is None:
        return None
    if doc.status in TERMINAL_STATUSES and doc.status != "completed":
        return f"job is {doc.status}"
    if doc.status == "completed" and any(image.id == event.image_id for image in doc.images):
        return "image already saved"
    if event.attempt < doc.attempts:
        return f"attempt {event.attempt} was superseded by attempt {doc.attempts}"
    return None


def write_image(layout: DataLayout, event: ImageGenerated) -> ImageRecord:
    """PNG first, then the sidecar: a sidecar on disk means its image is complete."""
    file_path = layout.image_file_path(event.job_created_at, event.image_id)
    record = ImageRecord(
        id=event.image_id,
        file_path=file_path,
        created_at=datetime.now(UTC),
        width=event.width,
        height=event.height,
        size_bytes=len(event.png),
        metadata=event.metadata,
    )
    write_atomic_many([(layout.image(file_path), event.png), (layout.sidecar(file_path), _encoder.encode(record))])
    return record


def all_images_saved(layout: DataLayout, event: ImageGenerated, saved: ImageRecord) -> list[ImageRecord] | None:
    """Every image record of the job when all sidecars are on disk, else None.

    With several saver processes, two may both find the set complete: job.completed is idempotent.
    """
    records = []
    for number in range(1, event.total_images + 1):
        if number == event.image_number:
            records.append(saved)
            continue
        sidecar = layout.sidecar(layout.image_file_path(event.job_created_at, image_id(event.job_id, number)))
        try:
            records.append(_record_decoder.decode(sidecar.read_bytes()))
        except FileNotFoundError:
            return None
    return records


def store_image(layout: DataLayout, event: ImageGenerated) -> tuple[str | None, ImageRecord | None, list[ImageRecord] | None]:
    """In one trip to a worker thread: (why not saved, the record, every record if the job is complete)."""
    reason = stale_reason(_job_document(layout, event.job_id), event)
    if reason is not None:
        return reason, None, None
    record = write_image(layout, event)
    return None, record, all_images_saved(layout, event, record)


class JobLocks:
    """One lock per job being saved: a job's images are saved one after another (jobs still run
    side by side), so that job.completed always follows the last image.saved."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, job_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        self._users[job_id] = self._users.get(job_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[job_id] -= 1
            if not self._users[job_id]:
                del self._users[job_id], self._locks[job_id]


class SavedImages:
    """The images this saver wrote lately, with the attempt and event that wrote each.

    Two copies of one attempt can both be generated (a redelivered command racing the requeued
    one); the job document may not show the first as saved yet when the second arrives, so the
    saver remembers. A redelivery of the same event (the saver died before announcing it) is
    announced again.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._saved: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._size = size

    def duplicate_reason(self, event: ImageGenerated) -> str | None:
        attempt, event_id = self._saved.get(event.image_id, (0, event.event_id))
        if event.attempt <= attempt and event_id != event.event_id:
            return f"image already saved from attempt {attempt}"
        return None

    def add(self, event: ImageGenerated) -> None:
        self._saved[event.image_id] = (event.attempt, event.event_id)
        self._saved.move_to_end(event.image_id)
        while len(self._saved) > self._size:
            self._saved.popitem(last=False)


async def save_image(event: ImageGenerated, *, bus: Publisher, layout: DataLayout, locks: JobLocks,
                     saved: SavedImages) -> None:
    """Write the image durably, announce it, and complete the job when its last image is in."""
    async with locks.hold(event.job_id):
        reason = saved.duplicate_reason(event)
        if reason is None:
            reason, record, records = await asyncio.to_thread(store_image, layout, event)
        if reason is not None:
            log.info("image discarded", job_id=event.job_id, image_id=event.image_id, reason=reason)
            return
        saved.add(event)
        announced = ImageSaved(job_id=event.job_id, image=record)
        if records is None:
            await bus.publish(announced)
            return
        completed = JobCompleted(job_id=event.job_id, image_ids=[r.id for r in records], images=records, attempt=event.attempt)
        # image.saved is written to the broker before job.completed; both confirms awaited together.
        await asyncio.gather(bus.publish(announced), bus.publish(completed))


async def fail_job(event: ImageGenerated, error: Exception, *, bus: Publisher) -> None:
    """An image that cannot be written (disk full, unwritable folder) fails its job with the reason."""
    await bus.publish(JobFailed(job_id=event.job_id, reason=f"saving image {event.image_number} failed: {error}", attempt=event.attempt))
