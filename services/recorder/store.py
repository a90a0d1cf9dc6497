"""The recorder's files: the event log, job documents and queue.txt."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime

import msgspec

from schemas.events import Event, ImageGenerated, JobProgressed
from schemas.jobs import ACTIVE_STATUSES, JobDocument
from schemas.layout import DataLayout
from services.files import write_atomic
from services.jobfiles import JobFiles

_encoder = msgspec.json.Encoder()


def log_line(event: Event) -> bytes:
    """The event as one line of the log. Image and preview bytes stay out: the files hold them."""
    if isinstance(event, ImageGenerated):
        event = msgspec.structs.replace(event, png=b"")
    elif isinstance(event, JobProgressed) and event.preview is not None:
        event = msgspec.structs.replace(event, preview=None)
    return _encoder.encode(event) + b"\n"


class EventLog:
    """Append-only JSON lines, one file per UTC day of recording (`DataLayout.event_log`)."""

    def __init__(self, layout: DataLayout):
        self.layout = layout
        self.folder = layout.events_dir
        self.folder.mkdir(parents=True, exist_ok=True)

    def append(self, lines: Iterable[bytes], now: datetime | None = None) -> None:
        day = (now or datetime.now(UTC)).date()
        data = b"".join(lines)
        if not data:
            return
        fd = os.open(self.layout.event_log(day), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def recent_event_ids(self, limit: int) -> list[str]:
        """Ids of the last `limit` events logged (to skip redelivered duplicates after a restart)."""
        files = sorted(self.folder.glob("*.jsonl"))
        ids: list[str] = []
        for path in reversed(files):
            with path.open("rb") as handle:
                handle.seek(max(0, path.stat().st_size - limit * 400))
                for line in handle.read().splitlines():
                    try:
                        ids.append(msgspec.json.decode(line, type=_EventId).event_id)
                    except msgspec.MsgspecError:
                        continue  # a partial first line, or a line torn by a crash
            if len(ids) >= limit:
                break
        return ids[-limit:]


class _EventId(msgspec.Struct):
    event_id: str


class JobStore:
    """Job documents on disk, with the active ones (pending/processing) cached in memory."""

    def __init__(self, files: JobFiles):
        self.files = files
        self.layout = files.layout
        self.active: OrderedDict[str, JobDocument] = OrderedDict()

    def read(self, job_id: str | None) -> JobDocument | None:
        if job_id in self.active:
            return self.active[job_id]
        return self.files.read(job_id)

    def write(self, doc: JobDocument) -> None:
        # Not fsynced: the fsynced event log is the source of truth and rebuilds any document.
        self.files.write(doc)
        if doc.status in ACTIVE_STATUSES:
            self.active.setdefault(doc.id, doc)
            self.active[doc.id] = doc
        else:
            self.active.pop(doc.id, None)

    def load_active(self) -> int:
        """Find the pending and processing jobs on disk, oldest first (for queue.txt after a restart)."""
        found = [head for head in self.files.heads() if head.status in ACTIVE_STATUSES]
        self.active.clear()
        for head in sorted(found, key=lambda h: h.created_at):
            doc = self.read(head.id)
            if doc is not None:
                self.active[doc.id] = doc
        return len(self.active)

    def write_queue_file(self) -> None:
        """queue.txt: the ids of pending and processing jobs, oldest first, one a line."""
        body = "".join(f"{job_id}\n" for job_id in self.active)
        write_atomic(self.layout.queue_file, body.encode(), durable=False)
