"""Helpers shared by the integration and e2e tiers: waiting on conditions, tapping events,
running a service in-process. No mocks: these talk to the real broker and real files."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from schemas.events import Event
from schemas.settings import Settings
from schemas.topology import Topology
from services.bus import Bus

T = TypeVar("T")


async def wait_for(condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(interval)


async def eventually(probe: Callable[[], Awaitable[T]], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> T:
    """Await `probe()` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}")
        await asyncio.sleep(interval)


def wait_for_sync(condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


class EventTap:
    """Every event published in a namespace, collected in order (a private queue bound to #)."""

    def __init__(self, bus: Bus):
        self.bus = bus
        self.events: list[Event] = []

    async def _collect(self, event: Event) -> None:
        self.events.append(event)

    async def start(self) -> EventTap:
        await self.bus.subscribe(["#"], self._collect, name="test-tap")
        return self

    def of(self, kind: type[T], job_id: str | None = None) -> list[T]:
        return [e for e in self.events if isinstance(e, kind) and (job_id is None or e.job_id == job_id)]

    async def wait(self, kind: type[T], job_id: str | None = None, count: int = 1, timeout: float = 20.0) -> list[T]:
        return await wait_for(
            lambda: (found := self.of(kind, job_id)) and len(found) >= count and found,
            timeout, what=f"{count} {kind.__name__} event(s) for {job_id or 'any job'}",
        )


@contextlib.asynccontextmanager
async def running(
    main: Callable[[Settings, asyncio.Event], Awaitable[None]], settings: Settings, stage: str, bus: Bus,
    timeout: float = 60.0,
) -> AsyncIterator[asyncio.Task]:
    """Run a service's `main` as a task until the block ends; ready once it consumes its queue."""
    stop = asyncio.Event()
    task = asyncio.create_task(main(settings, stop))

    async def consuming() -> bool:
        return await bus.consumer_count(stage) > 0

    deadline = time.monotonic() + timeout
    while not await consuming():
        if task.done():
            task.result()  # raise what killed it
        if time.monotonic() > deadline:
            raise AssertionError(f"{stage} did not start consuming within {timeout}s")
        await asyncio.sleep(0.05)
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def generator_queue(bus: Bus, channel, model: str = "tiny-sd"):
    """The queue a GenerateImages for `model` waits in under affinity routing (the default): the
    model's own, declared here as its first sender would (idempotent)."""
    return await channel.declare_queue(bus.topology.model_queue(model), durable=True,
                                       arguments=bus.topology.model_queue_arguments(model))


async def made_model_queue(bus: Bus, model: str = "tiny-sd") -> None:
    """Make `model`'s queue before a stage under test races to make it: RabbitMQ 3.10 can answer a
    basic.get on a quorum queue that a concurrent declare is still starting with a connection
    error ("noproc"), where the stages' own robust connections just reconnect."""
    channel = await bus.connection.channel()
    try:
        await generator_queue(bus, channel, model)
    finally:
        await channel.close()


async def connect(settings: Settings, name: str = "test") -> Bus:
    return await Bus.connect(settings.amqp_url, Topology(settings.namespace), name=name)


async def drop_namespace(bus: Bus) -> None:
    """Delete a test namespace's queues and exchanges so the session broker stays small."""
    from schemas.topology import STAGE_BINDINGS

    topo = bus.topology
    channel = await bus.connection.channel()
    for name in [topo.queue(stage) for stage in STAGE_BINDINGS] + [topo.dead_letters, topo.reaper_dead_letters]:
        with contextlib.suppress(Exception):
            await channel.queue_delete(name)
    for name in (topo.events, topo.commands, topo.dead_letter):
        with contextlib.suppress(Exception):
            await channel.exchange_delete(name)
    with contextlib.suppress(Exception):
        await channel.close()
