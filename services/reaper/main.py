"""Reaper process: follows job liveness, sweeps for stalls, fails parked jobs, answers sweeps."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import structlog
from aio_pika.abc import AbstractIncomingMessage

from schemas.settings import Settings
from schemas.topology import Topology
from services import runtime
from services.bus import command_decoder, event_decoder, settle
from services.jobfiles import JobFiles
from services.reaper.handlers import Reaper, answer_sweep, observe
from services.reaper.liveness import Liveness

STAGE = "reaper"
log = structlog.get_logger(STAGE)


async def sweep_forever(reaper: Reaper, bus, every: float) -> None:
    deaf = False
    while True:
        await asyncio.sleep(every)
        # Silence proves nothing while we hear nothing (broker away), or while no generator is
        # there to run a job (all restarting): requeueing then would only make copies.
        try:
            listening = bus.connected and await bus.consumer_count("generator") > 0
        except Exception:  # noqa: BLE001 - a failed probe counts as not listening
            listening = False
        if not listening:
            deaf = True
            continue
        if deaf:
            reaper.liveness.grant_grace(time.monotonic())
            deaf = False
        try:
            result = await reaper.sweep()
        except Exception:
            log.exception("sweep failed")
            continue
        if result.job_ids:
            log.info("sweep", reset=result.reset_count, failed=result.failed_count)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    layout = runtime.layout(settings)
    async with runtime.connected(settings, STAGE) as bus:
        reaper = Reaper(
            bus=bus, files=JobFiles(layout), topology=Topology(settings.namespace),
            liveness=Liveness(stall_timeout=settings.stall_timeout), max_attempts=settings.max_attempts,
        )
        found = await asyncio.to_thread(reaper.reconcile)
        log.info("reconciled", processing_jobs=found)
        await bus.consume(STAGE, partial(observe, reaper=reaper), decoder=event_decoder, prefetch=500)
        await bus.consume("reaper.commands", partial(answer_sweep, reaper=reaper), decoder=command_decoder, prefetch=1)

        async def on_parked(message: AbstractIncomingMessage) -> None:
            try:
                await reaper.fail_parked(message)
            except Exception:
                log.exception("could not fail a parked job; leaving the message")
                await settle(message.nack(requeue=True))
                await asyncio.sleep(1)
                return
            await settle(message.ack())

        await bus.consume_raw("reaper.dead-letters", on_parked, prefetch=16)
        sweeping = asyncio.create_task(sweep_forever(reaper, bus, min(1.0, settings.stall_timeout / 4)))
        await stop.wait()
        sweeping.cancel()


def run() -> None:
    runtime.run_service(STAGE, main)
