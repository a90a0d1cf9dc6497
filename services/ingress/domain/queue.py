"""Queries and commands on the queue as a whole: statistics, the caller's quota, stalled jobs."""

from __future__ import annotations

import asyncio

import msgspec

from schemas.api import QueueStats, Quota
from schemas.events import SweepResult, SweepStalled
from services.ingress.auth import Principal
from services.ingress.domain.errors import Unavailable
from services.ingress.domain.jobs import scope_of
from services.ingress.domain.links import BusLink
from services.ingress.limits import UNLIMITED, Limits
from services.readside import ReadSide, queries

SWEEP_TIMEOUT = 10  # seconds the reaper has to answer a sweep


async def queue_stats(principal: Principal, *, readside: ReadSide, detailed: bool = False) -> QueueStats:
    """Counts by status over the jobs the caller can see; `detailed` adds the last 24 h, per-model
    counts, timings and the failure rate."""
    stats = await readside.query(queries.detailed_stats if detailed else queries.queue_stats, scope_of(principal))
    return msgspec.convert(stats, QueueStats)


async def reset_stalled(silent_seconds: float | None, principal: Principal, *, bus: BusLink) -> SweepResult:
    """Have the reaper sweep now (admins only); it resets only jobs that really are stalled."""
    principal.require_admin()
    connected = bus.require()
    try:
        answer = await connected.request(SweepStalled(silent_seconds=silent_seconds), timeout=SWEEP_TIMEOUT)
    except TimeoutError:
        raise Unavailable(f"the reaper did not answer within {SWEEP_TIMEOUT} s; is it running?", SWEEP_TIMEOUT) from None
    return msgspec.json.decode(answer, type=SweepResult)


async def quota(principal: Principal, *, limits: Limits) -> Quota:
    """The caller's usage, limits and what remains (unlimited reads "Infinity")."""
    caps = limits.caps(principal)
    limit_of = {
        "queued_jobs": caps.queued_jobs,
        "daily_images": caps.daily_images,
        "hourly_requests": caps.rate.amount if caps.rate is not None else None,
    }
    usage = await asyncio.to_thread(limits.usage, principal)
    key = principal.key
    premium = key is not None and (key.admin or any(v is not None for v in (key.rate, key.daily_images, key.queued_jobs)))
    return Quota(
        is_premium=premium,
        usage=usage,
        limits={k: UNLIMITED if v is None else v for k, v in limit_of.items()},
        remaining={k: UNLIMITED if v is None else max(0, v - usage[k]) for k, v in limit_of.items()},
    )
