"""The ingress's read side. DuckDB lets one process open the projection for writing and no other
process open it at all, so the ingress owns it: it follows the event log (watchfiles wakes it, a
periodic check backs that up), answers queries in worker threads, and runs the retention janitor.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import duckdb
import structlog
from watchfiles import awatch

from ops.projection import Projection
from ops.queries import expired_images
from schemas.events import ImageExpired
from schemas.layout import DataLayout
from schemas.settings import Settings
from services.bus import Bus

log = structlog.get_logger("ingress")
T = TypeVar("T")
RECHECK_MS = 1000  # watchfiles may miss an append (e.g. on some network filesystems): look anyway


class ReadSide:
    """The projection, kept current, and the queries over it."""

    def __init__(self, settings: Settings, layout: DataLayout):
        self.settings = settings
        self.layout = layout
        layout.events_dir.mkdir(parents=True, exist_ok=True)
        self.projection = Projection(layout.analytics_db, layout.events_dir)
        self._applying = threading.Lock()  # one catch-up (or rebuild) at a time
        # Images the janitor expired lately: not expired twice while the projection catches up.
        self._expired: OrderedDict[str, None] = OrderedDict()

    def close(self) -> None:
        with self._applying:
            self.projection.close()

    async def query(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run `fn(cursor, ...)` in a worker thread on a cursor of its own."""
        def run() -> T:
            with self.projection.cursor() as cur:
                return fn(cur, *args, **kwargs)

        return await asyncio.to_thread(run)

    async def catch_up(self) -> int:
        return await asyncio.to_thread(self._locked, self.projection.catch_up)

    async def rebuild(self) -> int:
        return await asyncio.to_thread(self._locked, self.projection.rebuild)

    def _locked(self, apply: Callable[[], int]) -> int:
        with self._applying:
            return apply()

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
            await self._catch_up_logged()

    async def _catch_up_logged(self) -> int:
        try:
            return await self.catch_up()
        except (duckdb.Error, OSError) as exc:  # e.g. disk full: try again on the next wake-up
            log.error("projection catch-up failed", error=str(exc))
            await asyncio.sleep(1)
            return 0

    # -- retention ----------------------------------------------------------------------------

    async def janitor(self, bus_of: Callable[[], Bus | None]) -> None:
        """Delete images older than DARKROOM_IMAGE_TTL: `image.expired`, then the files."""
        ttl = self.settings.image_ttl
        every = min(60.0, max(1.0, ttl / 10))
        while True:
            await asyncio.sleep(every)
            bus = bus_of()
            if bus is None or not bus.connected:
                continue
            try:
                await self.expire(bus, datetime.now(UTC) - timedelta(seconds=ttl))
            except Exception as exc:  # noqa: BLE001 - the janitor keeps going; the next round retries
                log.error("retention janitor failed", error=str(exc))

    async def expire(self, bus: Bus, cutoff: datetime) -> int:
        """Expire every image created before `cutoff`; returns how many."""
        expired = 0
        while True:
            rows = [row for row in await self.query(expired_images, cutoff, limit=500) if row[0] not in self._expired]
            if not rows:
                return expired
            for image_id, job_id, file_path in rows:
                # The files first: if this process dies before the event, the row is still there
                # and the next round sends it (an event first could leave files nobody removes).
                await asyncio.to_thread(self.remove_files, file_path)
                await bus.publish(ImageExpired(job_id=job_id, image_id=image_id))
                self._expired[image_id] = None
                while len(self._expired) > 100_000:
                    self._expired.popitem(last=False)
                expired += 1
            log.info("images expired", count=len(rows), older_than=cutoff.isoformat())

    def remove_files(self, file_path: str) -> None:
        """The PNG and its sidecar (sidecar first: a sidecar on disk means its image is complete)."""
        self.layout.sidecar(file_path).unlink(missing_ok=True)
        self.layout.image(file_path).unlink(missing_ok=True)
