"""Generator workers as the admin API lists them (GET /v1/workers), and the record `darkroom
workers add` keeps of each worker credential (state/workers/<name>.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

WorkerStatus = Literal["up", "gone"]


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One generator worker, from its latest worker.presence event."""

    id: str
    host: str
    device: str
    dtype: str
    models: list[str]
    max_batch: int
    # Share of its last presence interval spent generating (0 to 1).
    busy: float
    jobs_done: int
    started_at: datetime
    last_seen_at: datetime
    # `gone`: not heard from for 3 of its intervals (it is dropped from the list after 10).
    status: WorkerStatus


class WorkerList(msgspec.Struct, frozen=True, kw_only=True):
    """The generator workers the ingress has heard from, by id."""

    workers: list[WorkerInfo]


class WorkerCredential(msgspec.Struct, kw_only=True):
    """What `darkroom workers add NAME` made for a worker host: its ingress key, and its own
    RabbitMQ user when the broker is the local private one."""

    name: str
    key_id: str
    broker_user: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None
