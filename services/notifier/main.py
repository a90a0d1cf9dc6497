"""Notifier process: job events in, DeliverWebhook commands out; deliveries in, signed POSTs out."""

from __future__ import annotations

import asyncio
from functools import partial

import httpx

from schemas.settings import Settings
from services import runtime, webhooks
from services.bus import command_decoder, event_decoder
from services.jobfiles import JobFiles
from services.notifier.handlers import Targets, deliver_webhook, queue_delivery

STAGE = "notifier"
DELIVERIES = "notifier.deliveries"


async def main(settings: Settings, stop: asyncio.Event) -> None:
    layout = runtime.layout(settings)
    files = JobFiles(layout)
    # trust_env off: a proxy from the environment would connect to the name, not the checked address.
    client = httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=settings.webhook_timeout,
                               limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))
    async with runtime.connected(settings, STAGE) as bus, client:
        await bus.consume(STAGE, partial(queue_delivery, bus=bus, files=files, targets=Targets(files)),
                          decoder=event_decoder, prefetch=64)
        await bus.consume(DELIVERIES, partial(deliver_webhook, bus=bus, settings=settings, state_dir=layout.state_dir,
                                              client=client, allow=webhooks.allow_list(settings)),
                          decoder=command_decoder, prefetch=32)
        await stop.wait()


def run() -> None:
    runtime.run_service(STAGE, main)
