"""Generator workers as the admin API lists them (GET /v1/workers), the record `darkroom
workers add` keeps of each worker credential (state/workers/<name>.json), and the manifest of
models they fetch (GET /v1/files/models)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from schemas.catalog import ModelEntry, ModelFile

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


class RemoteModel(msgspec.Struct, frozen=True, kw_only=True):
    """A model of the control node's catalog as a remote worker fetches it: the catalog entry with
    `source` and `config` relative to the model's own folder, and every file of that folder."""

    id: str
    entry: ModelEntry
    files: list[ModelFile]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


class ModelManifest(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/files/models: the control node's models whose files it holds (hub ids it would
    download itself are left out), for generator workers that share no disk with it."""

    models: list[RemoteModel]
