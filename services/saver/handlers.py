"""The saver's effects."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Protocol

import structlog

from schemas.events import Event, ImageGenerated, ImageSaved, JobCompleted, JobFailed, WorkerHeartbeat, derived_id
from schemas.jobs import TERMINAL_STATUSES, ImageRecord, JobDocument
from schemas.layout import image_id
from schemas.topology import IMAGE_SAVED, JOB_COMPLETED
from services.jobfiles import JobFiles

log = structlog.get_logger("saver")
# A full disk (or quota): waited out, never a reason to fail a job whose images exist only here.
STORAGE_FULL = {errno.ENOSPC, errno.EDQUOT}


class Publisher(Protocol):
    async def publish(self, event: Event) -> None: ...


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


def write_image(files: JobFiles, event: ImageGenerated) -> ImageRecord:
    """PNG first, then the sidecar: a sidecar on disk means its image is complete."""
    paths = files.image_paths(event.image_id, event.job_created_at)
    record = ImageRecord(
        id=event.image_id,
        file_path=paths.file_path,
        created_at=datetime.now(UTC),
        width=event.width,
        height=event.height,
        size_bytes=len(event.png),
        metadata=event.metadata,
    )
    files.write_image(paths, event.png, record)
    return record


def all_images_saved(files: JobFiles, event: ImageGenerated, saved: ImageRecord) -> list[ImageRecord] | None:
    """Every image record of the job when all sidecars are on disk, else None.

    With several saver processes, two may both find the set complete: job.completed is idempotent.
    """
    records = []
    for number in range(1, event.total_images + 1):
        if number == event.image_number:
            records.append(saved)
            continue
        record = files.read_image_record(image_id(event.job_id, number), event.job_created_at)
        if record is None:
            return None
        records.append(record)
    return records


def store_image(files: JobFiles, event: ImageGenerated) -> tuple[str | None, ImageRecord | None, list[ImageRecord] | None]:
    """In one trip to a worker thread: (why not saved, the record, every record if the job is complete).

    A job ends once: the saver claims "completed" when its last image is in, a cancel claims
    "cancelled" (services/jobfiles.py); whichever is first holds. A cancelled job's images are
    removed wherever the saver meets them; a completed job's image that is no longer on disk was
    deleted by its owner and is never written again.
    """
    job, created, total = event.job_id, event.job_created_at, event.total_images
    outcome = files.outcome(job)
    if outcome == "cancelled":
        removed = files.remove_images(job, created, total)
        return "job was cancelled" + (f" (removed {len(removed)} saved image(s))" if removed else ""), None, None
    if outcome == "completed":
        doc = files.read(job)
        if doc is not None and doc.status == "completed":  # announced already: a late or zombie copy
            return stale_reason(doc, event) or "image already saved", None, None
        record = files.read_image_record(event.image_id, created)
        if record is None:
            return "its job completed and the image was deleted since", None, None
        # Claimed but not announced yet (this saver died in between): announce again.
        return None, record, all_images_saved(files, event, record)
    reason = stale_reason(files.read(job), event)
    if reason is not None:
        return reason, None, None
    record = write_image(files, event)
    records = all_images_saved(files, event, record)
    if records is not None and not files.claim_outcome(job, "completed") and files.outcome(job) == "cancelled":
        files.remove_images(job, created, total)
        return "job was cancelled while its images were saved", None, None
    return None, record, records


async def _store_when_possible(files: JobFiles, event: ImageGenerated, bus: Publisher
                               ) -> tuple[str | None, ImageRecord | None, list[ImageRecord] | None]:
    """store_image, waiting out a full disk: the images are the only copy, so a transient full
    disk must not fail the job. Meanwhile the job is reported alive (the reaper must not requeue
    it) and the message stays unacked (nothing is lost if the saver stops)."""
    delay = 1.0
    while True:
        try:
            return await asyncio.to_thread(store_image, files, event)
        except OSError as exc:
            if exc.errno not in STORAGE_FULL:
                raise
            log.error("data directory full; retrying the save", job_id=event.job_id, image_id=event.image_id,
                      error=str(exc), retry_in=delay)
            await bus.publish(WorkerHeartbeat(job_id=event.job_id, worker="saver", attempt=event.attempt))
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)


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


async def save_image(event: ImageGenerated, *, bus: Publisher, files: JobFiles, locks: JobLocks,
                     saved: SavedImages) -> None:
    """Write the image durably, announce it, and complete the job when its last image is in."""
    async with locks.hold(event.job_id):
        reason = saved.duplicate_reason(event)
        if reason is None:
            reason, record, records = await _store_when_possible(files, event, bus)
        if reason is not None:
            log.info("image discarded", job_id=event.job_id, image_id=event.image_id, reason=reason)
            return
        saved.add(event)
        # Ids derived from what they announce, so that announcing again logs nothing twice (the
        # saver lost its broker node after publishing, before its ack, and the image came back):
        # image.saved from the image's event; job.completed from the job's attempt, since the
        # redelivered image may not be the one that completed the job the first time.
        announced = ImageSaved(job_id=event.job_id, image=record, event_id=derived_id(event.event_id, IMAGE_SAVED))
        if records is None:
            await bus.publish(announced)
            return
        completed = JobCompleted(job_id=event.job_id, image_ids=[r.id for r in records], images=records,
                                 attempt=event.attempt,
                                 event_id=derived_id(f"{event.job_id}/{event.attempt}", JOB_COMPLETED))
        # image.saved is written to the broker before job.completed; both confirms awaited together.
        await asyncio.gather(bus.publish(announced), bus.publish(completed))


async def fail_job(event: ImageGenerated, error: Exception, *, bus: Publisher) -> None:
    """An image that cannot be written (an unwritable folder, say: a full disk is waited out) fails
    its job with the reason."""
    await bus.publish(JobFailed(job_id=event.job_id, reason=f"saving image {event.image_number} failed: {error}", attempt=event.attempt))
