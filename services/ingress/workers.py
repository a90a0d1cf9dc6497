"""The generator workers this ingress hears from: the live set kept from `worker.presence`
events (GET /v1/workers). In memory only: it fills again within one presence interval of a
restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from schemas import topology
from schemas.events import Event, WorkerPresence
from schemas.workers import WorkerInfo, WorkerList

log = structlog.get_logger("ingress")

# A worker silent for this many of its intervals is listed as gone; after DROP_AFTER, not at all.
GONE_AFTER = 3
DROP_AFTER = 10


class WorkerBoard:
    """Each worker's latest presence and when it came (by this process's monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._seen: dict[str, tuple[WorkerPresence, float]] = {}

    async def observe(self, event: Event) -> None:
        if not isinstance(event, WorkerPresence):
            return
        if event.leaving:  # it said goodbye: no need to wait three intervals
            self._seen.pop(event.worker, None)
            return
        self._seen[event.worker] = (event, self.clock())

    def listing(self) -> WorkerList:
        now, wall = self.clock(), datetime.now(UTC)
        workers = []
        for worker_id, (presence, heard) in list(self._seen.items()):
            silent = now - heard
            interval = max(presence.interval, 0.1)
            if silent > DROP_AFTER * interval:
                del self._seen[worker_id]
                continue
            workers.append(WorkerInfo(
                id=presence.worker, host=presence.host, device=presence.device, dtype=presence.dtype,
                models=list(presence.models), max_batch=presence.max_batch, busy=presence.busy,
                jobs_done=presence.jobs_done, started_at=presence.started_at,
                last_seen_at=wall - timedelta(seconds=silent),
                status="gone" if silent > GONE_AFTER * interval else "up",
            ))
        return WorkerList(workers=sorted(workers, key=lambda w: w.id))

    async def follow_bus(self, get_bus: Callable[[], Any]) -> None:
        """Subscribe once the bus is connected (the robust channel keeps it across reconnects)."""
        while (bus := get_bus()) is None:  # noqa: ASYNC110 - the link is a plain attribute, set once
            await asyncio.sleep(0.1)
        await bus.subscribe([topology.WORKER_PRESENCE], self.observe, name="ingress.workers")
        log.info("following worker presence")
        await asyncio.Event().wait()
