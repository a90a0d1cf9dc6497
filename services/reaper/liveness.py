"""What the reaper knows about running jobs, and which are stalled. Pure: no I/O, a clock passed in."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from schemas.events import (
    Event,
    ImageGenerated,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobProgressed,
    JobRequeued,
    JobStarted,
    ModelLoaded,
    ModelLoading,
    WorkerHeartbeat,
)
from schemas.jobs import GenerationSettings

RATE_SMOOTHING = 0.3  # weight of the newest job in the moving average of a model's speed
REMEMBERED_ENDS = 10_000


def work_units(settings: GenerationSettings) -> float:
    """Steps x megapixels x images: what a job's duration scales with."""
    units = settings.num_inference_steps * settings.width * settings.height / 1e6 * settings.num_images
    if settings.hires is not None:
        units += settings.hires.steps * settings.hires.width * settings.hires.height / 1e6 * settings.num_images
    return max(units, 1e-6)


@dataclass
class Running:
    job_id: str
    attempt: int
    worker: str
    started: float
    last_seen: float
    model: str | None = None
    units: float | None = None


@dataclass
class Stall:
    job: Running
    silent_seconds: float
    reason: str


@dataclass
class Liveness:
    """Running jobs and when each was last heard of; each model's seconds per work unit."""

    stall_timeout: float
    overrun_factor: float = 3.0
    running: dict[str, Running] = field(default_factory=dict)
    # Pending jobs' model and size, so a job's expected duration is known when it starts.
    queued: dict[str, tuple[str, float]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    # Jobs that ended: a late word from a worker that lost one must not bring it back.
    ended: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def observe(self, event: Event, now: float) -> None:
        job = self.running.get(event.job_id)
        attempt = getattr(event, "attempt", None)
        match event:
            case JobAccepted():
                self.queued[event.job_id] = (event.spec.model, work_units(event.spec.settings))
            case JobStarted():
                if event.job_id in self.ended:
                    return
                if job is None or event.attempt >= job.attempt:
                    model, units = self.queued.get(event.job_id, (None, None))
                    self.running[event.job_id] = Running(
                        job_id=event.job_id, attempt=event.attempt, worker=event.worker,
                        started=now, last_seen=now, model=model, units=units,
                    )
            case JobProgressed() | WorkerHeartbeat() | ImageGenerated() | ModelLoading() | ModelLoaded():
                if job is not None and (attempt is None or attempt >= job.attempt):
                    job.last_seen = now
            case JobCompleted():
                if job is not None and job.model and job.units:
                    seconds_per_unit = (now - job.started) / job.units
                    old = self.rates.get(job.model)
                    self.rates[job.model] = seconds_per_unit if old is None else (
                        RATE_SMOOTHING * seconds_per_unit + (1 - RATE_SMOOTHING) * old
                    )
                self.forget(event.job_id)
            case JobFailed() | JobCancelled():
                self.forget(event.job_id)
            case JobRequeued():
                self.running.pop(event.job_id, None)  # pending again; queued info kept
                if event.replay:
                    self.ended.pop(event.job_id, None)

    def forget(self, job_id: str) -> None:
        self.running.pop(job_id, None)
        self.queued.pop(job_id, None)
        self.ended[job_id] = None
        while len(self.ended) > REMEMBERED_ENDS:
            self.ended.popitem(last=False)

    def track(self, job_id: str, attempt: int, now: float, model: str, units: float) -> None:
        """A job found processing at start-up: it gets a full timeout from now to show life."""
        self.queued[job_id] = (model, units)
        self.running[job_id] = Running(job_id=job_id, attempt=attempt, worker="?", started=now, last_seen=now,
                                       model=model, units=units)

    def grant_grace(self, now: float) -> None:
        """Every running job gets a full timeout from now (after the reaper itself heard nothing,
        e.g. while the broker was away: silence then says nothing about the workers)."""
        for job in self.running.values():
            job.last_seen = max(job.last_seen, now)
            job.started = max(job.started, now)

    def expected_seconds(self, job: Running) -> float | None:
        rate = self.rates.get(job.model or "")
        return rate * job.units if rate is not None and job.units else None

    def stalled(self, now: float, silent_seconds: float | None = None) -> list[Stall]:
        """Jobs silent past the timeout, or running far past what their model's speed predicts
        (a worker whose process still answers but whose pipeline hangs)."""
        limit = max(1.0, silent_seconds) if silent_seconds is not None else self.stall_timeout
        found = []
        for job in self.running.values():
            silent = now - job.last_seen
            if silent > limit:
                found.append(Stall(job, silent, f"worker {job.worker} was silent for {silent:.0f}s"))
                continue
            expected = self.expected_seconds(job)
            took = now - job.started
            if expected is not None and took > self.overrun_factor * expected + self.stall_timeout:
                found.append(Stall(job, silent, f"running {took:.0f}s, expected about {expected:.0f}s"))
        return found
