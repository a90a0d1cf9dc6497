"""One function per effect: `queue_delivery` (an event a job's webhook asked for becomes a
DeliverWebhook command) and `deliver_webhook` (one try: delivered, retried later, or failed)."""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
import msgspec
import structlog

from schemas.events import DeliverWebhook, Event, JobAccepted, WebhookDelivered, WebhookFailed
from schemas.jobs import JobDocument
from schemas.lifecycle import apply_event
from schemas.settings import Settings
from schemas.webhooks import WebhookTarget
from services import webhooks
from services.bus import Bus, Retry, routing_key
from services.jobfiles import JobFiles

log = structlog.get_logger("notifier")
_encoder = msgspec.json.Encoder()
TARGETS_KEPT = 100_000
MAX_DELAY = 3600.0


class Undeliverable(Exception):
    """Every try failed (or the URL may no longer be used): the delivery is parked."""


@dataclass
class Targets:
    """Each job's webhook (or None), learned once: a job's webhook never changes."""

    files: JobFiles
    known: OrderedDict[str, WebhookTarget | None] = field(default_factory=OrderedDict)

    def of(self, event: Event) -> WebhookTarget | None:
        if isinstance(event, JobAccepted):
            return self._keep(event.job_id, event.spec.webhook)
        if event.job_id in self.known:
            return self.known[event.job_id]
        doc = self.files.read(event.job_id)
        if doc is None:
            raise Retry(f"job {event.job_id} has no document yet")
        return self._keep(event.job_id, doc.webhook.target if doc.webhook else None)

    def _keep(self, job_id: str, target: WebhookTarget | None) -> WebhookTarget | None:
        self.known[job_id] = target
        while len(self.known) > TARGETS_KEPT:
            self.known.popitem(last=False)
        return target


def document_at(files: JobFiles, event: Event) -> JobDocument:
    """The job's document as of `event` (the recorder may not have folded it in yet)."""
    if isinstance(event, JobAccepted):
        return JobDocument.new(event.job_id, event.spec, event.occurred_at)
    doc = files.read(event.job_id)
    if doc is None:
        raise Retry(f"job {event.job_id} has no document yet")
    return apply_event(doc, event) or doc


async def queue_delivery(event: Event, *, bus: Bus, files: JobFiles, targets: Targets) -> None:
    """An event the job's webhook asked for: queue its delivery (the same id on every try)."""
    if event.job_id is None:
        return
    target = await asyncio.to_thread(targets.of, event)
    key = routing_key(event)
    if target is None or not target.wants(key):
        return
    document = await asyncio.to_thread(document_at, files, event)
    await bus.send(DeliverWebhook(job_id=event.job_id, webhook_id=event.event_id, for_event=key, target=target,
                                  owner=document.owner, document=document))


def backoff(settings: Settings, tries: int) -> float:
    """Seconds before try `tries + 1`: exponential from `webhook_backoff`, with jitter (50-100 %)."""
    delay = min(MAX_DELAY, settings.webhook_backoff * 2 ** (tries - 1))
    return delay * (0.5 + random.random() / 2)


async def deliver_webhook(command: DeliverWebhook, *, bus: Bus, settings: Settings, state_dir: Path,
                          client: httpx.AsyncClient, allow: webhooks.AllowList) -> None:
    """One try. 2xx: webhook.delivered. Otherwise a later try through the retry queue, or after
    the last one webhook.failed and the delivery parked in the dead-letter queue."""
    tries = command.tries + 1
    url = command.target.url
    try:
        destination = await webhooks.check(url, allow)
        secret = await asyncio.to_thread(webhooks.owner_secret, state_dir, command.owner)
    except webhooks.Refused as exc:  # no try will do better
        await _failed(bus, command, tries, f"refused: {exc}", None)
    body = _encoder.encode(command.document)
    answer = await webhooks.post(client, destination, body, webhooks.headers(secret, command.webhook_id, body),
                                 timeout=settings.webhook_timeout, max_bytes=settings.webhook_max_response_bytes)
    if answer.ok:
        log.info("webhook delivered", job_id=command.job_id, for_event=command.for_event, tries=tries)
        await bus.publish(WebhookDelivered(job_id=command.job_id, webhook_id=command.webhook_id,
                                           for_event=command.for_event, url=url, tries=tries,
                                           status_code=answer.status_code or 0))
        return
    if tries >= settings.webhook_attempts:
        await _failed(bus, command, tries, answer.error or "failed", answer.status_code)
    delay = backoff(settings, tries)
    log.info("webhook try failed; retrying", job_id=command.job_id, for_event=command.for_event, tries=tries,
             error=answer.error, retry_in=round(delay, 2))
    topology = bus.topology
    await bus.send_later(msgspec.structs.replace(command, tries=tries), topology.webhook_retry_queue(tries), delay,
                         topology.webhook_retry_arguments())


async def _failed(bus: Bus, command: DeliverWebhook, tries: int, error: str, status_code: int | None) -> NoReturn:
    await bus.publish(WebhookFailed(job_id=command.job_id, webhook_id=command.webhook_id, for_event=command.for_event,
                                    url=command.target.url, tries=tries, error=error, status_code=status_code))
    raise Undeliverable(f"webhook for {command.for_event} undeliverable after {tries} tries: {error}")
