"""Provisioning models while running: ask the models stage for a pull, and read how it goes."""

from __future__ import annotations

import msgspec

from schemas.api import PullRequest, PullStatus
from schemas.catalog import model_name_from_source
from schemas.events import PullModel, utcnow
from schemas.layout import DataLayout
from services.ingress.auth import Principal
from services.ingress.domain.errors import NotFound
from services.ingress.domain.links import BusLink


class _PullFile(msgspec.Struct):
    """The part of the models stage's pull record (state/pulls/<id>.json) the API shows."""

    status: PullStatus


_pull_decoder = msgspec.json.Decoder(_PullFile)


async def request_pull(request: PullRequest, principal: Principal, *, bus: BusLink) -> PullStatus:
    """Send PullModel to the models stage (admins only); the answer is the queued pull, whose id
    `GET /v1/models/pulls/{id}` and the `model.pull.*` events carry."""
    principal.require_admin()
    command = PullModel(source=request.source, name=request.name, kind=request.kind, revision=request.revision,
                        sha256=request.sha256, allow_pickle=request.allow_pickle, config=request.config,
                        requested_by=principal.owner)
    await bus.require().send(command)
    return PullStatus(id=command.command_id, source=request.source, kind=request.kind, revision=request.revision,
                      name=request.name or model_name_from_source(request.source), created_at=command.issued_at,
                      updated_at=utcnow())


def read_pull(pull_id: str, principal: Principal, *, layout: DataLayout) -> PullStatus:
    principal.require_admin()
    path = layout.pulls_dir / f"{pull_id}.json"
    if not (len(pull_id) == 36 and all(c in "0123456789abcdef-" for c in pull_id)) or not path.is_file():
        raise NotFound(f"no pull {pull_id!r}")
    try:
        return _pull_decoder.decode(path.read_bytes()).status
    except msgspec.DecodeError:
        raise NotFound(f"no pull {pull_id!r}") from None
