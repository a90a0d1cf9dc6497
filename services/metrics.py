"""Prometheus metrics: Darkroom's metric families in one registry, and the fold that turns the
events a process already follows into stage latencies, job counts, generator load and model cache
numbers.

Why a fold of events and not a /metrics port per service: every stage already announces what it
did, with a timestamp, on the bus (job.accepted -> job.enriched -> job.started -> job.progressed
-> image.generated -> image.saved -> job.completed). The ingress follows those events for live
streams anyway, so it folds them here and is the one scrape target, wherever the generators run
(other machines included) and however many copies of a service there are. What no event says
(the broker's queue depths, the projection's lag) is read when /metrics is scraped.

Stages and how each is measured (seconds; clocks of different machines can differ, so a negative
difference counts as 0):

- queue_wait:    job.accepted -> the job's first job.started
- enrich:        job.accepted -> job.enriched
- load:          model.loaded's own `seconds` (the loader's stopwatch)
- step:          one denoising step: between two job.progressed of the same phase, time / steps
- decode_encode: the last step's job.progressed -> image.generated (VAE decode + PNG encode;
                 the generator does not announce the two apart)
- save:          image.generated -> image.saved (the saver's write, fsync and rename)
- total:         job.accepted -> job.completed

A registry per `Meter` (not the process-wide default one), so that several applications in one
process (tests) never register a name twice.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from schemas.events import (
    Event,
    ImageGenerated,
    ImageSaved,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobEnriched,
    JobFailed,
    JobProgressed,
    JobRequeued,
    JobStarted,
    ModelEvicted,
    ModelLoaded,
    ModelLoading,
)

CONTENT_TYPE = "text/plain; version=0.0.4"  # Litestar adds the charset
STAGES = ("queue_wait", "enrich", "load", "step", "decode_encode", "save", "total")
# From a few milliseconds (a tiny model's step) to ten minutes (a long queue).
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BATCH = (1, 2, 3, 4, 6, 8, 12, 16)
JOBS_FOLLOWED = 20_000  # jobs whose timestamps are kept; the oldest are forgotten first


@dataclass
class _Job:
    accepted_at: datetime | None = None
    model: str = "unknown"
    started: bool = False
    loading: bool = False  # a model.loading came for it after it started: a cache miss
    cache_counted: bool = False
    worker: str | None = None
    step_at: tuple[str, int, datetime] | None = None  # (phase, step, when) of its last job.progressed
    last_step_at: datetime | None = None  # when its final step was reported
    generated_at: dict[str, datetime] = field(default_factory=dict)  # image id -> image.generated


def _seconds(start: datetime | None, end: datetime) -> float | None:
    return None if start is None else max(0.0, (end - start).total_seconds())


class Meter:
    """The metric families, and the fold of events into them (`observe`, one event at a time)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "darkroom_stage_seconds", "Latency of each stage of a job (see services/metrics.py for how each is "
            "measured).", ["stage"], buckets=SECONDS, registry=registry)
        self.jobs_total = Counter("darkroom_jobs_by_model_total", "Jobs accepted, and how they ended, by model.",
                                  ["status", "model"], registry=registry)
        self.images_total = Counter("darkroom_images_saved_total", "Images saved, by model.", ["model"],
                                    registry=registry)
        self.busy_seconds = Counter(
            "darkroom_generator_busy_seconds_total", "Seconds a generator worker held at least one job (its busy "
            "ratio is the rate of this).", ["worker"], registry=registry)
        self.batch_jobs = Histogram("darkroom_generator_batch_jobs", "How many jobs shared each pipeline call.",
                                    buckets=BATCH, registry=registry)
        self.model_loads = Counter("darkroom_model_loads_total", "Models loaded, by model.", ["model"],
                                   registry=registry)
        self.model_cache = Counter("darkroom_model_cache_total", "Jobs that found their model warm (hit) or "
                                   "waited for a load (miss).", ["result"], registry=registry)
        self.model_bytes = Gauge("darkroom_model_memory_bytes", "Weights of the warm models a worker holds (on "
                                 "its device: GPU memory on CUDA).", ["worker"], registry=registry)
        self.events_total = Counter("darkroom_events_total", "Events seen, by type.", ["type"], registry=registry)
        # Read when scraped (see `services.ingress.domain.ops.metrics`).
        self.jobs = Gauge("darkroom_jobs", "Jobs by status now (the projection).", ["status"], registry=registry)
        self.queue_messages = Gauge("darkroom_queue_messages", "Messages waiting in each stage's queue.", ["stage"],
                                    registry=registry)
        self.queue_consumers = Gauge("darkroom_queue_consumers", "Consumers of each stage's queue.", ["stage"],
                                     registry=registry)
        self.dead_letters = Gauge("darkroom_dead_letters", "Messages parked in the dead-letter queue.",
                                  registry=registry)
        self.projection_lag = Gauge("darkroom_projection_lag_seconds", "How long the oldest unapplied part of the "
                                    "event log has waited.", registry=registry)
        self.projection_pending = Gauge("darkroom_projection_pending_bytes", "Bytes of the event log not applied "
                                        "yet.", registry=registry)
        self.projection_events = Gauge("darkroom_projection_events_applied", "Events applied to the projection "
                                       "since it was built.", registry=registry)
        self.http_requests = Counter("darkroom_http_requests_total", "HTTP requests, by route and status code.",
                                     ["method", "route", "code"], registry=registry)
        self.http_seconds = Histogram("darkroom_http_request_seconds", "Time to the response's headers, by route.",
                                      ["method", "route"], buckets=SECONDS, registry=registry)
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._held: dict[str, set[str]] = {}  # worker -> the jobs it holds now
        self._busy_since: dict[str, float] = {}  # worker -> monotonic time it became busy
        self._model_memory: dict[str, dict[str, int]] = {}  # worker -> model -> bytes

    def exposition(self) -> bytes:
        """The Prometheus text format of everything in the registry."""
        self._flush_busy()
        return generate_latest(self.registry)

    # -- the fold ----------------------------------------------------------------------------------

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            job = self._jobs[job_id] = _Job()
            if len(self._jobs) > JOBS_FOLLOWED:
                self._jobs.popitem(last=False)
        return job

    def _stage(self, stage: str, seconds: float | None) -> None:
        if seconds is not None:
            self.stage_seconds.labels(stage).observe(seconds)

    def observe(self, event: Event) -> None:
        """Fold one event into the metrics (events may come twice or out of order; the fold keeps the
        first timestamp it saw and ignores what it cannot place)."""
        self.events_total.labels(type(event).__struct_config__.tag).inc()
        at = event.occurred_at
        if isinstance(event, (ModelLoaded, ModelEvicted, ModelLoading)):
            self._model_event(event)
            return
        if event.job_id is None:
            return
        job = self._job(event.job_id)
        if isinstance(event, JobAccepted):
            job.accepted_at, job.model = at, event.spec.model
            self.jobs_total.labels("accepted", job.model).inc()
        elif isinstance(event, JobEnriched):
            self._stage("enrich", _seconds(job.accepted_at, at))
        elif isinstance(event, JobStarted):
            if not job.started:
                self._stage("queue_wait", _seconds(job.accepted_at, at))
            job.started, job.loading, job.cache_counted, job.step_at = True, False, False, None
            self.batch_jobs.observe(event.batch_jobs)
            self._hold(event.worker, event.job_id)
            job.worker = event.worker
        elif isinstance(event, JobProgressed):
            self._count_cache(job)
            previous = job.step_at
            if previous is not None and previous[0] == event.phase and event.step > previous[1]:
                self._stage("step", _seconds(previous[2], at) / (event.step - previous[1]))
            job.step_at = (event.phase, event.step, at)
            if event.step == event.total_steps:
                job.last_step_at = at
        elif isinstance(event, ImageGenerated):
            self._count_cache(job)
            if event.image_number == 1:
                self._stage("decode_encode", _seconds(job.last_step_at, at))
            job.generated_at.setdefault(event.image_id, at)
            if event.image_number == event.total_images:
                self._release(event.worker, event.job_id)
        elif isinstance(event, ImageSaved):
            self._stage("save", _seconds(job.generated_at.pop(event.image.id, None), at))
            self.images_total.labels(event.image.metadata.model_id).inc()
        elif isinstance(event, JobCompleted):
            self._stage("total", _seconds(job.accepted_at, at))
            self._end(event.job_id, job, "completed")
        elif isinstance(event, JobFailed):
            self._end(event.job_id, job, "failed")
        elif isinstance(event, JobCancelled):
            self._end(event.job_id, job, "cancelled")
        elif isinstance(event, JobRequeued) and job.worker is not None:
            self._release(job.worker, event.job_id)

    def _model_event(self, event: ModelLoaded | ModelEvicted | ModelLoading) -> None:
        if isinstance(event, ModelLoading):
            if event.job_id is not None and event.job_id in self._jobs:
                self._jobs[event.job_id].loading = True
            return
        held = self._model_memory.setdefault(event.worker, {})
        if isinstance(event, ModelLoaded):
            # The generator announces one load to each job waiting for it: count the load once.
            if held.get(event.model) != event.bytes:
                self.model_loads.labels(event.model).inc()
                self._stage("load", event.seconds)
            held[event.model] = event.bytes
        else:
            held.pop(event.model, None)
        self.model_bytes.labels(event.worker).set(sum(held.values()))

    def _count_cache(self, job: _Job) -> None:
        """A job's first sign of work after it started says whether it waited for its model."""
        if job.started and not job.cache_counted:
            job.cache_counted = True
            self.model_cache.labels("miss" if job.loading else "hit").inc()

    def _end(self, job_id: str, job: _Job, status: str) -> None:
        self.jobs_total.labels(status, job.model).inc()
        if job.worker is not None:
            self._release(job.worker, job_id)
        self._jobs.pop(job_id, None)

    def _hold(self, worker: str, job_id: str) -> None:
        held = self._held.setdefault(worker, set())
        if not held:
            self._busy_since[worker] = time.monotonic()
        held.add(job_id)

    def _release(self, worker: str, job_id: str) -> None:
        held = self._held.get(worker)
        if held is None or job_id not in held:
            return
        held.discard(job_id)
        if not held:
            self.busy_seconds.labels(worker).inc(time.monotonic() - self._busy_since.pop(worker))

    def _flush_busy(self) -> None:
        """Count the time busy workers have been busy so far (a long call shows while it runs)."""
        now = time.monotonic()
        for worker, since in self._busy_since.items():
            self.busy_seconds.labels(worker).inc(now - since)
            self._busy_since[worker] = now

