"""Webhooks: what a job asks for (`webhook: {url, events}`, Cog's shape with routing keys for
events) and what its document says about the deliveries made for it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from schemas import topology as t

# A job that names no events is told when it ends.
DEFAULT_EVENTS: tuple[str, ...] = (t.JOB_COMPLETED, t.JOB_FAILED, t.JOB_CANCELLED)
MAX_EVENTS = 16

WebhookStatus = Literal["delivered", "failed"]


class WebhookInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/jobs `webhook`: where to POST the job document, and for which events.

    `events` are routing keys or topic patterns (`job.completed`, `job.failed`, `job.*`); each
    request is signed per the Standard Webhooks spec with the key's `whsec_` secret."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048, description="http(s) URL to POST to")]
    events: Annotated[list[str], msgspec.Meta(max_length=MAX_EVENTS, description=(
        "routing keys or patterns; default job.completed, job.failed, job.cancelled"))] = msgspec.field(
        default_factory=lambda: list(DEFAULT_EVENTS))


class WebhookTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A job's validated webhook: the URL (checked against private addresses) and event patterns."""

    url: str
    events: tuple[str, ...] = DEFAULT_EVENTS

    def wants(self, routing_key: str) -> bool:
        return any(t.key_matches(pattern, routing_key) for pattern in self.events)


class WebhookState(msgspec.Struct, kw_only=True):
    """A job's webhook as its document shows it: the target and how the last delivery went."""

    url: str
    events: tuple[str, ...] = DEFAULT_EVENTS
    # The last delivery's outcome (null before any), for which event, after how many tries.
    status: WebhookStatus | None = None
    last_event: str | None = None
    tries: int = 0
    status_code: int | None = None
    error: str | None = None
    updated_at: datetime | None = None
    delivered: int = 0
    failed: int = 0

    @property
    def target(self) -> WebhookTarget:
        return WebhookTarget(url=self.url, events=self.events)


class WebhooksSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """darkroom.toml `[webhooks]`: hosts or CIDRs webhooks may reach although private (`allow`)."""

    allow: list[str] = []
