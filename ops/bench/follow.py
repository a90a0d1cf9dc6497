"""The bench's view of a stack: it submits over HTTP and learns of completions the way any
subscriber does, from the event topics on RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import time

import aio_pika

from schemas import topology
from schemas.topology import Topology
from services.bus import connect_robust


class Follower:
    """Arrival time (monotonic) of each job's end (`job.completed`, `job.failed`, `job.cancelled`)."""

    def __init__(self, amqp_url: str, namespace: str):
        self.amqp_url = amqp_url
        self.topology = Topology(namespace)
        self.ended: dict[str, tuple[str, float]] = {}
        self.counts: dict[str, int] = {}
        self._waiters: dict[str, asyncio.Future] = {}
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self, keys: tuple[str, ...] = (topology.EVERY_EVENT,)) -> Follower:
        self._connection = await connect_robust(self.amqp_url, name="bench-follower")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=1000)
        exchange = await channel.get_exchange(self.topology.events, ensure=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in keys:
            await queue.bind(exchange, routing_key=key)
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        kind = message.routing_key or ""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind in (topology.JOB_COMPLETED, topology.JOB_FAILED, topology.JOB_CANCELLED):
            job_id = json.loads(message.body)["job_id"]
            self.ended[job_id] = (kind, time.monotonic())
            waiter = self._waiters.pop(job_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(self.ended[job_id])

    async def end_of(self, job_id: str, timeout: float = 120.0) -> tuple[str, float]:
        if job_id in self.ended:
            return self.ended[job_id]
        waiter = self._waiters.setdefault(job_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(waiter, timeout)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
