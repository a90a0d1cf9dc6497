"""What a generator knows of jobs it must not run or finish: cancelled jobs, ended jobs, and
attempts superseded or already started (by any worker, this one included).

Filled from the events every generator follows (`follow_job`); read by the worker before a batch
(skip), during it (a cancelled job stops at the next step) and after it (a zombie's events are
dropped). Each record keeps the newest REMEMBERED jobs.
"""

from __future__ import annotations

from collections import OrderedDict

from schemas.events import (
    Event,
    GenerateImages,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobFailed,
    JobRequeued,
    JobStarted,
)

REMEMBERED = 10_000


class Cancellations:
    """One worker's record of cancellations, ended jobs and newer attempts."""

    def __init__(self) -> None:
        self.cancelled: OrderedDict[str, None] = OrderedDict()
        # The newest attempt of each job we heard of: older attempts are zombies and are dropped.
        self.superseded: OrderedDict[str, int] = OrderedDict()
        # The newest attempt started by any worker, this one included: a second copy of it is a
        # duplicate (an enricher that died after sending but before acking, or a redelivery from
        # a lost worker numbered like the attempt the reaper already requeued).
        self.started: OrderedDict[str, int] = OrderedDict()
        # Jobs that ended (completed, failed, cancelled): any copy of their command left is stale.
        self.ended: OrderedDict[str, None] = OrderedDict()

    def is_cancelled(self, job_id: str) -> bool:
        """Called from the pipeline thread too (a dict lookup)."""
        return job_id in self.cancelled

    def is_stale(self, command: GenerateImages) -> bool:
        """An older attempt (a zombie), or an attempt some worker already started (a duplicate)."""
        job = command.job_id
        return (job in self.ended or self.superseded.get(job, 0) > command.attempt
                or self.started.get(job, 0) >= command.attempt)

    def is_from_zombie(self, event: Event) -> bool:
        """An event of an attempt that a newer one superseded while it ran."""
        attempt = getattr(event, "attempt", None)
        return attempt is not None and self.superseded.get(event.job_id, 0) > attempt

    def starting(self, command: GenerateImages) -> None:
        """This worker starts the command's attempt."""
        _remember_max(self.started, command.job_id, command.attempt)

    def holding(self, command: GenerateImages) -> None:
        """This worker took the command: an older attempt of its job that it also holds (waiting,
        generating or finishing) is a zombie. Both come back together when the broker returns a
        lost worker's messages: its first attempt and the attempt the reaper requeued into it."""
        _remember_max(self.superseded, command.job_id, command.attempt)

    def generated(self, job_id: str) -> None:
        """This worker published the job's images: any copy of its command still around (a
        redelivery from a worker lost meanwhile) is stale, before job.completed says so too."""
        _remember(self.ended, job_id)

    def follow(self, event: Event) -> None:
        """Note cancellations (a queued job is skipped, a running one stops at its next step) and
        newer attempts (an older attempt of the job is a zombie whose work is dropped)."""
        if isinstance(event, (JobCancelRequested, JobCancelled)):
            _remember(self.cancelled, event.job_id)
        if isinstance(event, (JobCompleted, JobFailed, JobCancelled)):
            _remember(self.ended, event.job_id)
        elif isinstance(event, JobRequeued) and event.replay:
            self.ended.pop(event.job_id, None)  # an operator brought it back
            self.started.pop(event.job_id, None)
            _remember_max(self.superseded, event.job_id, event.attempt)
        elif isinstance(event, (JobRequeued, JobStarted)):
            _remember_max(self.superseded, event.job_id, event.attempt)
            if isinstance(event, JobStarted):
                _remember_max(self.started, event.job_id, event.attempt)


def _remember(seen: OrderedDict[str, None], job_id: str) -> None:
    seen[job_id] = None
    while len(seen) > REMEMBERED:
        seen.popitem(last=False)


def _remember_max(seen: OrderedDict[str, int], job_id: str, attempt: int) -> None:
    if attempt > seen.get(job_id, 0):
        seen[job_id] = attempt
        seen.move_to_end(job_id)
        while len(seen) > REMEMBERED:
            seen.popitem(last=False)
