"""Retention: images older than DARKROOM_IMAGE_TTL are deleted, files first, then `image.expired`
(the recorder edits the job, the projection marks the row)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from schemas.events import ImageExpired
from schemas.layout import DataLayout
from services.bus import Bus
from services.readside.queries import expired_images

if TYPE_CHECKING:
    from services.readside.host import ReadSide

log = structlog.get_logger("ingress")
REMEMBERED = 100_000  # image ids expired lately, kept so none is expired twice


class Janitor:
    """Finds expired images with the read side's query and removes them."""

    def __init__(self, readside: ReadSide, layout: DataLayout, ttl: float):
        self.readside = readside
        self.layout = layout
        self.ttl = ttl
        # Images expired lately: not expired twice while the projection catches up.
        self._expired: OrderedDict[str, None] = OrderedDict()

    async def run(self, bus_of: Callable[[], Bus | None]) -> None:
        """Every so often (a tenth of the TTL, 1 to 60 s), expire what is due; until cancelled."""
        every = min(60.0, max(1.0, self.ttl / 10))
        while True:
            await asyncio.sleep(every)
            bus = bus_of()
            if bus is None or not bus.connected:
                continue
            try:
                await self.expire(bus, datetime.now(UTC) - timedelta(seconds=self.ttl))
            except Exception as exc:  # noqa: BLE001 - the janitor keeps going; the next round retries
                log.error("retention janitor failed", error=str(exc))

    async def expire(self, bus: Bus, cutoff: datetime) -> int:
        """Expire every image created before `cutoff`; returns how many."""
        expired = 0
        while True:
            rows = [row for row in await self.readside.query(expired_images, cutoff, limit=500)
                    if row[0] not in self._expired]
            if not rows:
                return expired
            for image_id, job_id, file_path in rows:
                # The files first: if this process dies before the event, the row is still there
                # and the next round sends it (an event first could leave files nobody removes).
                await asyncio.to_thread(self.remove_files, file_path)
                await bus.publish(ImageExpired(job_id=job_id, image_id=image_id))
                self._expired[image_id] = None
                while len(self._expired) > REMEMBERED:
                    self._expired.popitem(last=False)
                expired += 1
            log.info("images expired", count=len(rows), older_than=cutoff.isoformat())

    def remove_files(self, file_path: str) -> None:
        """The PNG and its sidecar (sidecar first: a sidecar on disk means its image is complete)."""
        self.layout.sidecar(file_path).unlink(missing_ok=True)
        self.layout.image(file_path).unlink(missing_ok=True)
