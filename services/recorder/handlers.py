"""The recorder's one effect: record a batch of events (log, documents, queue.txt)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import structlog

from schemas.events import Event, JobProgressed, WorkerPresence
from schemas.jobs import TERMINAL_STATUSES, JobDocument
from schemas.layout import DataLayout
from schemas.lifecycle import apply_event
from services.files import sweep_temp_files
from services.jobfiles import JobFiles
from services.recorder.store import EventLog, JobStore, log_line

log = structlog.get_logger("recorder")

RECENT_IDS = 50_000


class Recorder:
    """Owns the event log, the job documents and queue.txt. Not thread-safe: one batch at a time."""

    def __init__(self, layout: DataLayout):
        self.layout = layout
        self.files = JobFiles(layout)
        self.log = EventLog(layout)
        self.jobs = JobStore(self.files)
        self._recent: deque[str] = deque(maxlen=RECENT_IDS)
        self._recent_set: set[str] = set()
        self._unapplied: list[Event] = []

    def recover(self) -> None:
        """After a (re)start: clear what killed writers left, find active jobs, rewrite queue.txt,
        remember the last logged events."""
        sweep_temp_files([self.layout.base, self.layout.jobs_dir, self.layout.previews_dir])
        active = self.jobs.load_active()
        self.jobs.write_queue_file()
        for event_id in self.log.recent_event_ids(RECENT_IDS):
            self._remember(event_id)
        log.info("recovered", active_jobs=active, recent_events=len(self._recent))

    def _remember(self, event_id: str) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(event_id)
        self._recent_set.add(event_id)

    def record_events(self, events: Sequence[Event]) -> None:
        """Log the events (fsynced), then update job documents and queue.txt.

        Duplicates (redeliveries) are skipped. An OSError (disk full, unwritable folder) propagates
        and the caller retries the same batch: events already logged are not logged twice, and
        documents catch up from `_unapplied`.
        """
        # Workers' presence is a live signal about no job (every few seconds from every worker):
        # the ingress keeps the current set; the log would only fill with it.
        fresh = [event for event in events
                 if event.event_id not in self._recent_set and not isinstance(event, WorkerPresence)]
        self.log.append(log_line(event) for event in fresh)
        for event in fresh:
            self._remember(event.event_id)
        self._unapplied.extend(fresh)

        changed: dict[str, JobDocument] = {}
        active_before = list(self.jobs.active)
        for event in self._unapplied:
            try:
                doc = apply_event(changed.get(event.job_id) or self.jobs.read(event.job_id), event)
                # Only a running job's preview: a late one (a superseded attempt, an ended job) is dropped.
                if doc is not None and isinstance(event, JobProgressed) and event.preview:
                    self.files.write_preview(event.job_id, event.preview)
            except OSError:
                raise
            except Exception:  # a bad event must not stop the log; it is logged and can be replayed
                log.exception("event could not be applied to its job document", event_id=event.event_id)
                continue
            if doc is not None:
                changed[doc.id] = doc
        for doc in changed.values():
            self.jobs.write(doc)
            if doc.status in TERMINAL_STATUSES:  # what only a running job needs goes with it
                self.files.remove_preview(doc.id)
                self.files.remove_inputs(doc.id)
        if list(self.jobs.active) != active_before:
            self.jobs.write_queue_file()
        self._unapplied.clear()
