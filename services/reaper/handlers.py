"""The reaper's effects: act on stalls, fail parked jobs, answer sweeps."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

import msgspec
import structlog
from aio_pika.abc import AbstractIncomingMessage

from schemas.events import (
    AnyCommand,
    AnyEvent,
    Command,
    Event,
    JobFailed,
    JobRequeued,
    JobStalled,
    SweepResult,
    SweepStalled,
    command_for_attempt,
)
from schemas.jobs import ACTIVE_STATUSES, TERMINAL_STATUSES
from schemas.topology import Topology, parked_origin
from services.jobfiles import JobFiles, MissingInput
from services.reaper.liveness import Liveness, Stall, work_units

log = structlog.get_logger("reaper")
_any = msgspec.json.Decoder(AnyEvent | AnyCommand)

# Parked messages of these stages belong to a job that can no longer move on: fail it.
JOB_STAGES = ("generator", "enricher", "saver")


class Publisher(Protocol):
    async def publish(self, event: Event) -> None: ...
    async def send(self, command: Command) -> None: ...


@dataclass
class Reaper:
    bus: Publisher
    files: JobFiles
    topology: Topology
    liveness: Liveness
    max_attempts: int

    def reconcile(self) -> int:
        """After a (re)start: every job the files say is processing gets a full timeout to show
        that a worker still holds it; silent ones are then requeued like any stall."""
        now = time.monotonic()
        found = 0
        queue_file = self.files.layout.queue_file
        for job_id in queue_file.read_text().split() if queue_file.exists() else []:
            doc = self.files.read(job_id)
            if doc is None or doc.status not in ACTIVE_STATUSES:
                continue
            units = work_units(doc.settings)
            if doc.status == "processing":
                self.liveness.track(job_id, max(doc.attempts, 1), now, doc.model, units)
                found += 1
            else:
                self.liveness.queued[job_id] = (doc.model, units)
        return found

    async def sweep(self, silent_seconds: float | None = None) -> SweepResult:
        """Requeue (or, after the last attempt, fail) every stalled job."""
        reset, failed = [], []
        for stall in self.liveness.stalled(time.monotonic(), silent_seconds):
            outcome = await self.act_on(stall)  # raises while the broker is away: kept for later
            if self.liveness.running.get(stall.job.job_id) is stall.job:
                del self.liveness.running[stall.job.job_id]
            if outcome == "requeued":
                reset.append(stall.job.job_id)
            elif outcome == "failed":
                failed.append(stall.job.job_id)
        return SweepResult(reset_count=len(reset), failed_count=len(failed), job_ids=reset + failed)

    async def act_on(self, stall: Stall) -> str:
        """`requeued`, `failed` (no attempts left), or `ended` (it had ended already: nothing done)."""
        job = stall.job
        doc = await asyncio.to_thread(self.files.read, job.job_id)
        if doc is None or doc.status in TERMINAL_STATUSES:
            self.liveness.forget(job.job_id)
            return "ended"
        await self.bus.publish(JobStalled(job_id=job.job_id, attempt=job.attempt, silent_seconds=round(stall.silent_seconds, 1)))
        if job.attempt >= self.max_attempts:
            log.warning("job failed after its last attempt stalled", job_id=job.job_id, attempt=job.attempt)
            await self.bus.publish(JobFailed(
                job_id=job.job_id, attempt=job.attempt,
                reason=f"stalled on all {self.max_attempts} attempts; last time {stall.reason}",
            ))
            return "failed"
        try:
            init, mask = await asyncio.to_thread(self.files.read_inputs, doc)
        except MissingInput as exc:
            await self.bus.publish(JobFailed(job_id=job.job_id, attempt=job.attempt, reason=f"cannot requeue: {exc}"))
            return "failed"
        attempt = job.attempt + 1
        log.warning("stalled job requeued", job_id=job.job_id, attempt=attempt, reason=stall.reason)
        # Recorded first, then queued: the next attempt's job.started always comes after.
        await self.bus.publish(JobRequeued(job_id=job.job_id, attempt=attempt, reason=f"stalled: {stall.reason}"))
        await self.bus.send(command_for_attempt(doc, attempt, init_image=init, mask_image=mask))
        return "requeued"

    async def fail_parked(self, message: AbstractIncomingMessage) -> None:
        """A message the broker parked (it kept killing its consumer): end its job with the reason.

        Messages a service parked itself carry our reason header; that service already failed
        the job, so they need nothing more.
        """
        origin = parked_origin(message.headers)
        if origin.parked_by_stage:
            return
        stage = self.topology.stage(origin.queue or "")
        if stage not in JOB_STAGES:
            return
        try:
            item = _any.decode(message.body)
        except msgspec.MsgspecError:
            return
        doc = await asyncio.to_thread(self.files.read, item.job_id)
        if doc is None or doc.status in TERMINAL_STATUSES:
            return
        why = origin.broker_reason or "rejected"
        reason = (f"its {stage} message was parked in the dead-letter queue ({why}): it crashed or "
                  f"stopped its worker on every delivery")
        attempt = max(doc.attempts, getattr(item, "attempt", 1))
        log.error("parked message fails its job", job_id=item.job_id, stage=stage, why=why)
        await self.bus.publish(JobFailed(job_id=item.job_id, attempt=attempt, reason=reason))


async def answer_sweep(command: SweepStalled, *, reaper: Reaper) -> SweepResult:
    return await reaper.sweep(command.silent_seconds)


async def observe(event: Event, *, reaper: Reaper) -> None:
    reaper.liveness.observe(event, time.monotonic())
