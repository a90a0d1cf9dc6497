"""Model-affinity routing, the worker's side: which models' queues this worker consumes.

Under affinity routing every model's jobs wait in their own queue (`schemas/topology.py`). A
worker consumes the queues of the models it has warm, and stops consuming a model's queue as soon
as the model is evicted (jobs it already holds it still finishes, or hands back). When it holds
nothing, its queues are empty: it then looks at the other models' queues and takes the one with
the most jobs waiting per consumer (one that others serve only for a full batch at least), so it
switches models only when its own have no work. A busy
worker takes a queue whose jobs have waited `patience` seconds with no consumer at all (nobody
starves). The shared generator queue is consumed always (main.py), whatever the routing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from schemas.topology import Topology

if TYPE_CHECKING:
    from aio_pika.abc import AbstractQueue

    from services.generator.worker import Worker

log = structlog.get_logger("generator")

# How often a worker looks at the other models' queues (seconds, with jitter of +-50%).
POLL_SECONDS = 0.5
# Before taking a queue a worker waits a random part of this, then looks again: idle workers that
# saw the same queues do not all take the same one.
TAKE_JITTER = 0.2
# An idle remote worker asks the control node for its models at least this often (seconds).
CATALOG_REFRESH_SECONDS = 15.0


@dataclass(frozen=True)
class ModelQueue:
    """A model's queue as a passive declare saw it."""

    model: str
    waiting: int
    consumers: int

    @property
    def share(self) -> float:
        """Jobs waiting per consumer, counting the worker that would join."""
        return self.waiting / (self.consumers + 1)


def choose(queues: Iterable[ModelQueue], *, idle: bool, unserved_since: dict[str, float], now: float,
           patience: float, rng: random.Random, batch: int = 1) -> str | None:
    """Which other model's queue to take, or None: idle, the one with the most jobs waiting per
    consumer (ties at random), a queue others serve only if that is a full `batch` at least (a
    load costs more than it saves for fewer); busy, only one whose jobs waited `patience` seconds
    with no consumer (the longest-waiting first)."""
    waiting = [q for q in queues if q.waiting > 0]
    if idle:
        worth = [q for q in waiting if not q.consumers or q.share >= batch]
        if not worth:
            return None
        best = max(q.share for q in worth)
        return rng.choice([q.model for q in worth if q.share == best])
    starved = [q for q in waiting if q.consumers == 0 and now - unserved_since.get(q.model, now) >= patience]
    if not starved:
        return None
    return min(starved, key=lambda q: unserved_since[q.model]).model


class Depths(Protocol):
    topology: Topology

    async def queue_depths(self, queues: Iterable[str]) -> dict[str, tuple[int, int]]: ...
    async def stop_consuming(self, queue: AbstractQueue) -> None: ...


class Affinity:
    """One worker's model queues: consumed while warm, taken when idle or when one starves."""

    def __init__(self, *, bus: Depths, worker: Worker, consume: Callable[[str], Awaitable[AbstractQueue]],
                 patience: float, rng: random.Random | None = None, look_around: bool = True):
        self.bus = bus
        # Under shared routing no job waits in a model's queue (the ones there were sent before a
        # switch, and the warm models' queues are still consumed): no looking at the others.
        self.look_around = look_around
        self.worker = worker
        self.consume = consume
        self.patience = patience
        self.rng = rng or random.Random()
        self.consuming: dict[str, AbstractQueue] = {}
        # Models taken but not loaded yet (when), and the warm ones given up for them (their queues
        # are no longer consumed: loading the taken model will evict them).
        self.taken: dict[str, float] = {}
        self.yielded: set[str] = set()
        # Since when each other model's queue has had jobs waiting and no consumer.
        self.unserved_since: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def follow_cache(self) -> None:
        """Consume the queues of the models warm now (and of those taken); stop the rest."""
        async with self._lock:
            warm = {model.entry.id for model in self.worker.cache.warm()}
            for model in list(self.taken):
                if model in warm:
                    del self.taken[model]
            if not self.taken:
                self.yielded.clear()
            wanted = (warm - self.yielded) | set(self.taken)
            for model in sorted(wanted - set(self.consuming)):
                self.consuming[model] = await self.consume(model)
                log.info("consuming model queue", model=model)
            for model in sorted(set(self.consuming) - wanted):
                await self.bus.stop_consuming(self.consuming.pop(model))
                log.info("stopped consuming model queue", model=model)

    async def models_changed(self) -> None:
        """After a load (in the batch that needed it): follow the cache at once, never failing the batch."""
        try:
            await self.follow_cache()
        except Exception as exc:  # noqa: BLE001 - the next step follows it again
            log.warning("could not follow the warm models yet", error=str(exc))

    async def run(self) -> None:
        """Forever: follow the cache, and look at the other models' queues."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed look is tried again next time
                log.warning("affinity step failed; trying again", error=str(exc))
            await asyncio.sleep(POLL_SECONDS * (0.5 + self.rng.random()))

    async def step(self) -> None:
        await self.follow_cache()
        idle, now = self.worker.batcher.empty, time.monotonic()
        if idle and any(now - since > POLL_SECONDS for since in self.taken.values()):
            # Taken, and no job came: others emptied that queue first. Back to the warm models.
            self.taken.clear()
            await self.follow_cache()
        if self.taken or not self.look_around:
            return  # one switch at a time: wait for the taken model's first job
        refresh = getattr(self.worker.catalog, "refresh_if_older", None)  # a remote worker's catalog
        if idle and refresh is not None:
            await asyncio.to_thread(refresh, CATALOG_REFRESH_SECONDS)
        model = await self._pick(idle)
        if model is None:
            return
        await asyncio.sleep(self.rng.uniform(0, TAKE_JITTER))
        model = await self._pick(self.worker.batcher.empty)  # look again: another worker may have taken it
        if model is not None:
            await self.take(model)

    async def _pick(self, idle: bool) -> str | None:
        queues = await self.look(m for m in self.worker.catalog.models if m not in self.consuming)
        now = time.monotonic()
        unserved = {q.model for q in queues if q.waiting and not q.consumers}
        self.unserved_since = {m: self.unserved_since.get(m, now) for m in unserved}
        return choose(queues, idle=idle, unserved_since=self.unserved_since, now=now, patience=self.patience,
                      rng=self.rng, batch=self.worker.options.max_batch)

    async def look(self, models: Iterable[str]) -> list[ModelQueue]:
        """The queues of `models` that exist, with their waiting jobs and consumers."""
        names = {self.bus.topology.model_queue(model): model for model in models}
        depths = await self.bus.queue_depths(names)
        return [ModelQueue(names[name], waiting, consumers) for name, (waiting, consumers) in depths.items()]

    async def take(self, model: str) -> None:
        """Consume `model`'s queue; the first job loads it. The warm models it will evict stop
        being consumed now, so that none of their jobs arrives behind it and loads them again."""
        try:
            entry = self.worker.catalog.model(model)
        except KeyError:
            return  # gone from the catalog since the look
        log.info("taking model queue", model=model, idle=self.worker.batcher.empty)
        self.yielded |= set(self.worker.cache.would_evict(entry))
        self.taken[model] = time.monotonic()
        await self.follow_cache()
