"""`darkroom events tail [--type 'job.*'] [--job ID]`: print events as they are published, from a
private queue bound to the events exchange (how any AMQP client subscribes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import TextIO

import aio_pika

from schemas.topology import Topology
from services.bus import connect_robust

ENVELOPE = ("type", "event_id", "job_id", "occurred_at")
BYTES_FIELDS = ("png", "preview")


def line(body: bytes, *, as_json: bool) -> str:
    """One event as a line: `time type job summary`, or its JSON (image bytes left out)."""
    event = json.loads(body)
    for name in BYTES_FIELDS:
        if event.get(name):
            event[name] = f"<{len(event[name]) * 3 // 4} bytes>"
    if as_json:
        return json.dumps(event, separators=(",", ":"))
    rest = {k: v for k, v in event.items() if k not in ENVELOPE}
    summary = json.dumps(rest, separators=(",", ":"))
    summary = summary if len(summary) <= 160 else summary[:157] + "..."
    when = str(event.get("occurred_at", ""))[11:23]
    return f"{when}  {event.get('type', '?'):22} {event.get('job_id') or '-':36}  {summary}"


async def tail(url: str, topology: Topology, *, pattern: str, job: str | None, as_json: bool,
               count: int | None = None, out: TextIO = sys.stdout) -> int:
    """Print matching events until interrupted (or `count` printed); returns how many were printed."""
    connection = await connect_robust(url, name="darkroom-events", timeout=10)
    printed, done = 0, asyncio.Event()
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=256)
        exchange = await channel.get_exchange(topology.events, ensure=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=pattern)

        async def show(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal printed
            if done.is_set():
                return
            if job is not None and f'"job_id":"{job}"'.encode() not in message.body:
                return
            print(line(message.body, as_json=as_json), file=out, flush=True)
            printed += 1
            if count is not None and printed >= count:
                done.set()

        await queue.consume(show, no_ack=True)
        print(f"following {topology.events} ({pattern}{', job ' + job if job else ''}); Ctrl-C stops",
              file=sys.stderr, flush=True)
        await done.wait()
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    return printed
