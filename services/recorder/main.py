"""Recorder process: every event from the broker, recorded in batches, acked once durable."""

from __future__ import annotations

import asyncio

import msgspec
import structlog
from aio_pika.abc import AbstractIncomingMessage

from schemas.settings import Settings
from services import runtime
from services.bus import Bus, event_decoder, settle
from services.recorder.handlers import Recorder

STAGE = "recorder"
BATCH = 500
log = structlog.get_logger(STAGE)


async def record_batches(inbox: asyncio.Queue[AbstractIncomingMessage], recorder: Recorder, bus: Bus) -> None:
    """Take whatever has arrived (up to BATCH), record it in one fsync, then ack it all at once."""
    queue_name = bus.topology.queue(STAGE)
    while True:
        batch = [await inbox.get()]
        while len(batch) < BATCH and not inbox.empty():
            batch.append(inbox.get_nowait())
        events, good = [], []
        for message in batch:
            try:
                events.append(event_decoder.decode(message.body))
                good.append(message)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("undecodable event dead-lettered", error=str(exc))
                await bus.dead_letter(message, f"undecodable: {exc}", queue_name)
        if events:
            await record_until_done(recorder, events)
            await settle(good[-1].ack(multiple=True))


async def record_until_done(recorder: Recorder, events: list) -> None:
    """Retry a batch the disk refused (full, read-only) until it goes through; the messages stay
    unacked meanwhile, so nothing is lost and the recorder never crash-loops."""
    delay = 0.5
    while True:
        try:
            await asyncio.to_thread(recorder.record_events, events)
            return
        except OSError as exc:
            log.error("cannot write the data directory; retrying", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    recorder = Recorder(runtime.layout(settings))
    await asyncio.to_thread(recorder.recover)
    async with runtime.connected(settings, STAGE) as bus:
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await bus.consume_raw(STAGE, inbox.put, prefetch=BATCH * 2)
        writer = asyncio.create_task(record_batches(inbox, recorder, bus))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({writer, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if writer in done:
            writer.result()  # a failure of the writer is fatal: raise it
        writer.cancel()


def run() -> None:
    runtime.run_service(STAGE, main)
