"""Enricher process: job.accepted in, job.enriched + GenerateImages out."""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial

import httpx
import structlog

from schemas.settings import Settings
from services import runtime
from services.bus import event_decoder
from services.enricher.handlers import enrich_job, fail_job
from services.enricher.llm import LlmRewriter, llm_config
from services.jobfiles import JobFiles

STAGE = "enricher"


async def main(settings: Settings, stop: asyncio.Event) -> None:
    catalog = runtime.catalog(settings)
    config = llm_config(settings, catalog.enrichment.llm)
    async with contextlib.AsyncExitStack() as stack:
        llm = None
        if config is not None:  # off by default: no request leaves the machine unless configured
            client = await stack.enter_async_context(httpx.AsyncClient(timeout=config.timeout_s))
            llm = LlmRewriter(config, client)
            structlog.get_logger(STAGE).info("LLM enrichment on", url=llm.url, model=config.model)
        bus = await stack.enter_async_context(runtime.connected(settings, STAGE))
        await bus.consume(
            STAGE,
            partial(enrich_job, bus=bus, styles=catalog.styles, files=JobFiles(runtime.layout(settings)), llm=llm),
            decoder=event_decoder,
            on_failure=partial(fail_job, bus=bus),
            prefetch=32,
        )
        await stop.wait()


def run() -> None:
    runtime.run_service(STAGE, main)
