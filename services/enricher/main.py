"""Enricher process: job.accepted in, job.enriched + GenerateImages out."""

from __future__ import annotations

import asyncio
from functools import partial

from schemas.settings import Settings
from services import runtime
from services.bus import event_decoder
from services.enricher.handlers import enrich_job, fail_job
from services.jobfiles import JobFiles

STAGE = "enricher"


async def main(settings: Settings, stop: asyncio.Event) -> None:
    styles = runtime.catalog(settings).styles
    async with runtime.connected(settings, STAGE) as bus:
        await bus.consume(
            STAGE,
            partial(enrich_job, bus=bus, styles=styles, files=JobFiles(runtime.layout(settings))),
            decoder=event_decoder,
            on_failure=partial(fail_job, bus=bus),
            prefetch=32,
        )
        await stop.wait()


def run() -> None:
    runtime.run_service(STAGE, main)
