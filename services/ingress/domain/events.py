"""Following events live: one job's from its start (or from where a client left off), or all of a
caller's, filtered. Async generators of `StreamEvent`s (None: nothing happened for a while, time
for a keep-alive), free of HTTP; the SSE and WebSocket routes only frame them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from schemas.layout import DataLayout, is_job_id
from services.ingress.auth import Principal
from services.ingress.domain.errors import Invalid, NotFound, Unavailable
from services.ingress.domain.files import JobFiles
from services.ingress.domain.jobs import read_job
from services.ingress.live import Follower, Live, StreamEvent, Subscription, merge, read_job_log

_PATTERN = re.compile(r"^(\*|#|[a-z_]+)(\.(\*|#|[a-z_]+))*$")


def check_pattern(pattern: str | None, field: str = "type") -> str | None:
    """A routing-key pattern (`job.completed`, `job.*`, `#`), or Invalid naming `field`."""
    if pattern is None or pattern == "":
        return None
    if len(pattern) > 100 or not _PATTERN.match(pattern):
        raise Invalid(f"{field}: {pattern!r} is not a routing key or pattern (like job.completed, job.*, #)")
    return pattern


def job_subscription(job_id: str, principal: Principal, files: JobFiles) -> Subscription:
    """A subscription to one job the caller may see (NotFound otherwise, as for any read)."""
    if not is_job_id(job_id):
        raise NotFound.of("job", job_id)
    read_job(files, job_id, principal)
    return Subscription(job=job_id)


def _require(live: Live | None) -> Live:
    if live is None:
        raise Unavailable("live events are not available yet", retry_after=1)
    return live


async def follow_job(job_id: str, principal: Principal, *, live: Live | None, files: JobFiles, layout: DataLayout,
                     last_event_id: str | None, keepalive: float) -> AsyncIterator[StreamEvent | None]:
    """The job's events from job.accepted (or after `last_event_id`) to its end: first from the
    event log (and what arrived here but is not logged yet), then live, each exactly once."""
    live = _require(live)
    doc = read_job(files, job_id, principal)
    follower = Follower(owner=principal.owner, admin=principal.admin, subscriptions={Subscription(job=job_id)})
    return _job_stream(live, follower, job_id, doc.created_at.date(), layout, last_event_id, keepalive)


async def _job_stream(live: Live, follower: Follower, job_id: str, since, layout: DataLayout,
                      last_event_id: str | None, keepalive: float) -> AsyncIterator[StreamEvent | None]:
    # Following before reading the log: whatever happens from now on is either in the log, in
    # memory, or arrives on the follower's queue.
    live.add(follower)
    try:
        history = merge(await asyncio.to_thread(read_job_log, layout, job_id, since), live.recent_of(job_id))
        seen = {item.event_id for item in history}
        start = 0
        if last_event_id is not None:
            ids = [item.event_id for item in history]
            start = ids.index(last_event_id) + 1 if last_event_id in ids else 0
        for item in history[start:]:
            yield item
            if item.terminal:
                return
        async for item in _live(follower, keepalive):
            if item is not None:
                if item.event_id in seen:
                    continue
                seen.add(item.event_id)
            yield item
            if item is not None and item.terminal:
                return
    finally:
        live.remove(follower)


async def follow_events(principal: Principal, *, live: Live | None, files: JobFiles, pattern: str | None,
                        job_id: str | None, last_event_id: str | None,
                        keepalive: float) -> AsyncIterator[StreamEvent | None]:
    """Every event the caller may see (an admin: all), of one type pattern and/or one job, live.
    With `last_event_id` still in memory, what came after it first."""
    live = _require(live)
    pattern = check_pattern(pattern)
    if job_id is not None:
        job_subscription(job_id, principal, files)
    follower = Follower(owner=principal.owner, admin=principal.admin,
                        subscriptions={Subscription(job=job_id, pattern=pattern)})
    return _broad_stream(live, follower, last_event_id, keepalive, principal)


async def _broad_stream(live: Live, follower: Follower, last_event_id: str | None, keepalive: float,
                        principal: Principal) -> AsyncIterator[StreamEvent | None]:
    live.add(follower)
    missed = (live.recent_after(last_event_id) if last_event_id else None) or []
    try:
        seen = set()
        for item in missed:
            if any(s.matches(item) for s in follower.subscriptions) and (
                    principal.admin or follower.may_see(live.owner_of(item.job_id))):
                seen.add(item.event_id)
                yield item
        async for item in _live(follower, keepalive):
            if item is not None and item.event_id in seen:
                continue
            yield item
    finally:
        live.remove(follower)


async def _live(follower: Follower, keepalive: float) -> AsyncIterator[StreamEvent | None]:
    """The follower's events as they come; None after `keepalive` seconds of silence. Ends when the
    follower fell too far behind (the client reconnects with Last-Event-ID)."""
    queue = follower.queue
    while not follower.lost or not queue.empty():
        if not queue.empty():
            yield queue.get_nowait()
            continue
        try:
            # asyncio.timeout, not wait_for: no task per wait (hundreds of followers wait at once).
            async with asyncio.timeout(keepalive):
                item = await queue.get()
        except TimeoutError:
            if follower.lost:
                return
            yield None
            continue
        yield item
