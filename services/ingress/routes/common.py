"""What every controller shares: the documented error answers, and the dependencies a route may
ask for by name (each read from the application's state, which `app.create_app` fills)."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec

from schemas.api import ErrorBody
from schemas.catalog import Catalog
from schemas.layout import DataLayout
from schemas.settings import Settings
from services.ingress.auth import KeyStore, Principal, authenticate, token_from
from services.ingress.domain.errors import Forbidden, Unauthenticated, Unavailable
from services.ingress.domain.files import JobFiles
from services.ingress.domain.links import BusLink
from services.ingress.idempotency import IdempotencyStore
from services.ingress.limits import Limits
from services.metrics import Meter
from services.readside import ReadSide

JSON = "application/json"
WHY = {
    400: "A field is wrong; the message names it",
    401: "No API key, or an invalid or revoked one",
    403: "The route needs an admin key",
    404: "No such id for this key (another tenant's ids are 404 too)",
    409: "Conflicts with the current state (an ended job, a reused Idempotency-Key)",
    413: "The request body is too large",
    429: "A rate limit or quota was reached; see Retry-After",
    503: "The broker or the data directory is unavailable; nothing was changed; see Retry-After",
}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """Documented error answers of a route: always {"status": "error", "message": ...}."""
    return {code: ResponseSpec(data_container=ErrorBody, description=WHY[code]) for code in (401, *codes)}


# -- dependencies ------------------------------------------------------------------------------------
# A dependency's name must not be the name of any request field: Litestar takes a validation error
# whose key is a dependency's name for a server error (a 500). Hence `config`, not `settings`
# (JobRequest has a `settings` field).


def _from_state(name: str) -> Provide:
    def provide(state: State) -> Any:
        return state[name]

    return Provide(provide, sync_to_thread=False)


def provide_catalog(state: State) -> Catalog:
    """The catalog as it is now: darkroom.toml plus the models pulled while running."""
    return state["catalog"].current()


def provide_readside(state: State) -> ReadSide:
    """The read side; 503 while it is not open (before the lifespan opened it, after it closed it)."""
    readside = state.get("readside")
    if readside is None:
        raise Unavailable("the read side is not open yet", retry_after=1)
    return readside


def provide_readside_if_open(state: State) -> ReadSide | None:
    return state.get("readside")


async def provide_principal(request: Request, config: NamedDependency[Settings],
                            keys: NamedDependency[KeyStore]) -> Principal:
    """The caller, from `Authorization: Bearer <token>` or `X-API-Key: <token>`."""
    ip = request.client.host if request.client else "unknown"
    return authenticate(config, keys, token_from(request.headers), ip)


async def provide_file_reader(request: Request, config: NamedDependency[Settings],
                              keys: NamedDependency[KeyStore]) -> Principal:
    """The caller of a route for generator workers: a worker key or an admin key (403 otherwise)."""
    ip = request.client.host if request.client else "unknown"
    principal = authenticate(config, keys, token_from(request.headers), ip, allow_worker=True)
    principal.require_worker_or_admin()
    return principal


async def provide_viewer(request: Request, config: NamedDependency[Settings],
                         keys: NamedDependency[KeyStore]) -> Principal | None:
    """The caller if it sent a valid key (or auth is off), else None: for public routes that show
    more to admins."""
    try:
        return await provide_principal(request, config, keys)
    except (Unauthenticated, Forbidden):  # no key, a bad one, or a worker's: shown the public view
        return None


DEPENDENCIES = {
    **{name: _from_state(name) for name in ("config", "layout", "files", "keys", "limits", "idempotency", "bus",
                                            "meter")},
    "catalog": Provide(provide_catalog, sync_to_thread=False),
    "readside": Provide(provide_readside, sync_to_thread=False),
    "readside_if_open": Provide(provide_readside_if_open, sync_to_thread=False),
    "principal": Provide(provide_principal),
    "viewer": Provide(provide_viewer),
    "file_reader": Provide(provide_file_reader),
}

Caller = NamedDependency[Principal]
Viewer = NamedDependency[Principal | None]
FileReader = NamedDependency[Principal]
BusDep = NamedDependency[BusLink]
FilesDep = NamedDependency[JobFiles]
ReadSideDep = NamedDependency[ReadSide]
ReadSideIfOpenDep = NamedDependency[ReadSide | None]
ConfigDep = NamedDependency[Settings]
CatalogDep = NamedDependency[Catalog]
LayoutDep = NamedDependency[DataLayout]
LimitsDep = NamedDependency[Limits]
IdempotencyDep = NamedDependency[IdempotencyStore]
MeterDep = NamedDependency[Meter]
