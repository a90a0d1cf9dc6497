"""The read side as one object the ingress hosts. DuckDB lets one process open the projection for
writing and no other process open it at all, so the ingress owns it: it follows the event log
(watchfiles wakes it, a periodic check backs that up), answers queries in worker threads, and runs
the retention janitor. DuckDB's errors are translated here (`services.readside.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from typing import TypeVar

import duckdb
import structlog
from watchfiles import awatch

from schemas.layout import DataLayout
from schemas.settings import Settings
from services.bus import Bus
from services.readside.errors import Busy, ProjectionFailed, QueryFailed, ReadSideError
from services.readside.janitor import Janitor
from services.readside.projection import Projection

log = structlog.get_logger("ingress")
T = TypeVar("T")
RECHECK_MS = 1000  # watchfiles may miss an append (e.g. on some network filesystems): look anyway
# After a catch-up that applied events, rest PACE times as long as it took (at most MAX_REST s)
# before the next: each is a DuckDB transaction with a fixed cost of ~10 ms of CPU, so under a
# stream of events the projection takes at most 1/(1 + PACE) of a core and its batches grow with
# the load, while a lone event is still applied within ~20 ms (`darkroom bench capacity`).
PACE, MAX_REST = 3.0, 0.5
# Lists (jobs, gallery, exports, operators' SQL) first apply what the log holds when they are asked,
# waiting at most this long; past it they answer from what is applied (see `settled`).
SETTLE_S = 2.0


class ReadSide:
    """The projection, kept current, and the queries over it."""

    def __init__(self, settings: Settings, layout: DataLayout):
        self.settings = settings
        self.layout = layout
        layout.events_dir.mkdir(parents=True, exist_ok=True)
        self.projection = Projection(layout.analytics_db, layout.events_dir, memory_limit=settings.duckdb_memory)
        self.janitor = Janitor(self, layout, settings.image_ttl)
        self._applying = threading.Lock()  # one catch-up (or rebuild) at a time
        self._operators = ThreadPoolExecutor(max_workers=settings.ops_query_slots, thread_name_prefix="ops-sql")
        self._operator_slots = asyncio.Semaphore(settings.ops_query_slots)
        self._settling: asyncio.Future | None = None  # a readers' catch-up in flight, shared

    def close(self) -> None:
        self._operators.shutdown(cancel_futures=True)
        with self._applying:
            self.projection.close()

    async def query(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run `fn(cursor, ...)` in a worker thread on a cursor of its own. DuckDB's errors come
        out as `QueryFailed`; the queries' own errors (`BadCursor`, `NotReadOnly`) as they are."""
        return await asyncio.to_thread(self._run, fn, *args, **kwargs)

    async def current_query(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Like `query`, after `settled`: for lists a person reads right after acting."""
        await self.settled()
        return await self.query(fn, *args, **kwargs)

    async def operator_query(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Like `current_query`, for operators' ad-hoc SQL: on threads of its own, a few at a time
        (beyond that `Busy`), so that health checks, image reads and the API's queries never wait
        behind it."""
        if self._operator_slots.locked():
            raise Busy(f"{self.settings.ops_query_slots} operator queries are running; try again when one ends")
        async with self._operator_slots:
            await self.settled()
            return await asyncio.get_running_loop().run_in_executor(
                self._operators, functools.partial(self._run, fn, *args, **kwargs))

    def _run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        try:
            with self.projection.cursor() as cur:
                return fn(cur, *args, **kwargs)
        except duckdb.Error as exc:
            raise QueryFailed(str(exc)) from exc

    async def settled(self) -> None:
        """Read your own writes: apply what the event log holds now before answering, so a job a
        client saw accepted is in its list. The follower paces itself under load (it may rest up to
        MAX_REST s after a catch-up); a reader does not wait for it but runs a catch-up of its own,
        one shared by the readers asking at once. It waits at most SETTLE_S (a long replay after a
        restart), then answers from what is applied. Nothing to apply costs a few stat calls."""
        if self.projection.pending_bytes() == 0:
            return
        if self._settling is None or self._settling.done():
            self._settling = asyncio.ensure_future(self._catch_up_logged())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._settling), SETTLE_S)

    async def catch_up(self) -> int:
        return await asyncio.to_thread(self._locked, self.projection.catch_up)

    async def rebuild(self) -> int:
        return await asyncio.to_thread(self._locked, self.projection.rebuild)

    def _locked(self, apply: Callable[[], int]) -> int:
        with self._applying:
            try:
                return apply()
            except duckdb.Error as exc:
                raise ProjectionFailed(str(exc)) from exc

    def status(self) -> dict:
        position = self.projection.position
        return {
            "events_applied": position.events,
            "pending_bytes": self.projection.pending_bytes(),
            "lag_seconds": self.projection.lag_seconds(),
            "last_event_at": position.last_event_at.replace(tzinfo=UTC) if position.last_event_at else None,
        }

    async def follow(self) -> None:
        """Apply the log as it grows, for as long as the ingress runs."""
        started = time.monotonic()
        applied = await self._catch_up_logged()
        log.info("projection caught up", events=applied, seconds=round(time.monotonic() - started, 2),
                 position=self.projection.position.events)
        async for _ in awatch(self.layout.events_dir, debounce=20, step=20, rust_timeout=RECHECK_MS,
                              yield_on_timeout=True):
            started = time.monotonic()
            if await self._catch_up_logged():
                await asyncio.sleep(min(MAX_REST, PACE * (time.monotonic() - started)))

    async def _catch_up_logged(self) -> int:
        try:
            return await self.catch_up()
        except (ReadSideError, OSError) as exc:  # e.g. disk full: try again on the next wake-up
            log.error("projection catch-up failed", error=str(exc))
            await asyncio.sleep(1)
            return 0

    async def run_janitor(self, bus_of: Callable[[], Bus | None]) -> None:
        """Delete images older than DARKROOM_IMAGE_TTL: `image.expired`, then the files."""
        await self.janitor.run(bus_of)
