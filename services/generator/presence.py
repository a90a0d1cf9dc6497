"""A generator's presence: every DARKROOM_PRESENCE_INTERVAL seconds it publishes
`worker.presence` (transient) with where it runs, on what, its warm models, how busy its
pipeline thread was and how many jobs it finished; the ingress lists them (GET /v1/workers).

`TalliedRender` wraps the render callable to count: it runs in the pipeline thread, and only
adds to two numbers that the event loop reads.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.events import WorkerPresence


@dataclass
class Tally:
    """Seconds spent rendering and jobs rendered, since the worker started."""

    busy_seconds: float = 0.0
    jobs_done: int = 0
    running_since: float | None = None

    def busy_until(self, now: float) -> float:
        return self.busy_seconds + (now - self.running_since if self.running_since is not None else 0.0)


@dataclass
class TalliedRender:
    """The worker's render path (`worker.Render`), its pipeline calls counted and timed."""

    inner: Callable[..., Any]
    tally: Tally = field(default_factory=Tally)

    def __call__(self, model, commands, watch):
        self.tally.running_since = started = time.perf_counter()
        try:
            rendered = self.inner(model, commands, watch)
            self.tally.jobs_done += len(commands) - len(rendered.dropped)
            return rendered
        finally:
            self.tally.running_since = None
            self.tally.busy_seconds += time.perf_counter() - started

    def finish(self, commands, rendered, skip):
        return self.inner.finish(commands, rendered, skip)


@dataclass
class Presence:
    """What one worker says about itself; `event()` measures busy since the last one."""

    worker_id: str
    tally: Tally
    # () -> (device, dtype, warm model ids); read from the model cache.
    describe: Callable[[], tuple[str, str, list[str]]]
    max_batch: int
    interval: float
    host: str = field(default_factory=socket.gethostname)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _last: tuple[float, float] | None = None

    def event(self, *, leaving: bool = False, now: float | None = None) -> WorkerPresence:
        now = time.perf_counter() if now is None else now
        busy_total = self.tally.busy_until(now)
        busy = 0.0
        if self._last is not None and now > self._last[0]:
            busy = min(1.0, max(0.0, (busy_total - self._last[1]) / (now - self._last[0])))
        self._last = (now, busy_total)
        device, dtype, models = self.describe()
        return WorkerPresence(
            worker=self.worker_id, host=self.host, device=device, dtype=dtype, models=tuple(models),
            max_batch=self.max_batch, busy=round(busy, 3), jobs_done=self.tally.jobs_done,
            started_at=self.started_at, interval=self.interval, leaving=leaving,
        )

    async def announce(self, publish_soon: Callable[[WorkerPresence], None]) -> None:
        """Publish presence now and every `interval` seconds until cancelled."""
        while True:
            publish_soon(self.event())
            await asyncio.sleep(self.interval)
