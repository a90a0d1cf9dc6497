"""Queries for callers that wait: a job until it ends (synchronous APIs hold the request while the
job goes through the same durable queue), and the caller's own jobs that are queued or running
(what "the current job" means to an API with one job at a time)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from schemas.jobs import TERMINAL_STATUSES, JobDocument
from schemas.layout import is_job_id
from services.ingress.auth import Principal
from services.ingress.domain.errors import DomainError
from services.ingress.domain.files import JobFiles
from services.ingress.domain.jobs import cancel_job, read_job
from services.ingress.domain.links import BusLink

POLL_SECONDS = (0.05, 0.1, 0.2, 0.25)  # the first checks come quickly; then a steady beat


class StillRunning(DomainError):
    """The job did not end within the wait; it goes on and stays retrievable by its id."""

    def __init__(self, job_id: str, seconds: float):
        super().__init__(f"job {job_id} did not end within {seconds:g} s; it is still queued or running "
                         f"and its result will be at /v1/jobs/{job_id}")
        self.job_id = job_id


async def wait_for_job(job_id: str, principal: Principal, *, files: JobFiles, timeout: float) -> JobDocument:
    """The job's document once it has ended (completed, failed or cancelled); StillRunning after
    `timeout` seconds. The recorder writes the document from the event log, so an ended document
    already lists every saved image."""
    deadline = time.monotonic() + timeout
    beat = 0
    while True:
        doc = await asyncio.to_thread(read_job, files, job_id, principal)
        if doc.status in TERMINAL_STATUSES:
            return doc
        left = deadline - time.monotonic()
        if left <= 0:
            raise StillRunning(job_id, timeout)
        await asyncio.sleep(min(left, POLL_SECONDS[min(beat, len(POLL_SECONDS) - 1)]))
        beat += 1


def image_bytes(doc: JobDocument, files: JobFiles) -> list[tuple[str, bytes]]:
    """(image id, PNG bytes) of an ended job's images, in order; an image deleted since is left out."""
    found = []
    for record in sorted(doc.images, key=lambda r: r.metadata.image_number):
        try:
            found.append((record.id, files.layout.image(record.file_path).read_bytes()))
        except FileNotFoundError:
            continue
    return found


@dataclass(frozen=True)
class ActiveJob:
    """One of the caller's jobs that has not ended, and its latest preview (a PNG path) if any."""

    doc: JobDocument
    preview: Path | None


def active_jobs(principal: Principal, *, files: JobFiles) -> list[ActiveJob]:
    """The caller's pending and processing jobs, oldest first (from queue.txt, kept by the recorder)."""
    try:
        ids = files.layout.queue_file.read_text().split()
    except FileNotFoundError:
        return []
    found = []
    for job_id in ids:
        if not is_job_id(job_id):
            continue
        try:
            data = files.document_bytes(job_id)
        except FileNotFoundError:
            continue
        try:
            if files.head(data).owner != principal.owner:
                continue
            doc = files.decode(data)
        except msgspec.MsgspecError:
            continue
        if doc.status not in TERMINAL_STATUSES:
            found.append(ActiveJob(doc=doc, preview=files.preview(job_id)))
    return sorted(found, key=lambda job: job.doc.created_at)


async def cancel_running(principal: Principal, *, bus: BusLink, files: JobFiles) -> list[str]:
    """Cancel the caller's running jobs (not the queued ones); the ids of those cancelled."""
    running = [job.doc.id for job in await asyncio.to_thread(active_jobs, principal, files=files)
               if job.doc.status == "processing"]
    for job_id in running:
        try:
            await cancel_job(job_id, principal, bus=bus, files=files)
        except DomainError:  # it ended meanwhile
            continue
    return running


async def cancel_idle(principal: Principal, idle_seconds: float, *, bus: BusLink, files: JobFiles) -> list[str]:
    """Cancel the caller's queued or running jobs that have not changed for `idle_seconds` (stuck:
    no step, no heartbeat-driven update, still waiting); the ids of those cancelled."""
    now = time.time()
    idle = [job.doc.id for job in await asyncio.to_thread(active_jobs, principal, files=files)
            if now - job.doc.updated_at.timestamp() >= idle_seconds]
    cancelled = []
    for job_id in idle:
        try:
            await cancel_job(job_id, principal, bus=bus, files=files)
        except DomainError:  # it ended meanwhile
            continue
        cancelled.append(job_id)
    return cancelled
