"""The Litestar application: routes, error shapes, OpenAPI, and the broker connection's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from schemas.settings import Settings
from schemas.topology import Topology
from services import runtime
from services.bus import BrokerUnavailable, Bus
from services.files import sweep_temp_files
from services.ingress.auth import KeyStore
from services.ingress.dialects import enabled_routes
from services.ingress.domain.files import JobFiles
from services.ingress.domain.links import BusLink
from services.ingress.errors import EXCEPTION_HANDLERS
from services.ingress.http import DarkroomRequest
from services.ingress.idempotency import IdempotencyStore
from services.ingress.limits import Limits
from services.ingress.live import Live
from services.ingress.mcp import HttpMount
from services.ingress.metering import request_recorder, timing_middleware
from services.ingress.routes import DEPENDENCIES, ROUTES
from services.ingress.web import WEB_ROUTES, docs_plugin
from services.ingress.workers import WorkerBoard
from services.library import LoraLibrary
from services.metrics import Meter
from services.readside import ReadSide

log = structlog.get_logger("ingress")


async def keep_connected(link: BusLink, settings: Settings) -> None:
    """Connect to the broker in the background; until then requests that need it get 503."""
    url = runtime.broker_url(settings)
    while True:
        try:
            link.bus = await Bus.connect(url, Topology(settings.namespace), name="ingress", timeout=10)
            log.info("connected to broker")
            return
        except BrokerUnavailable as exc:
            log.warning("broker not reachable yet", error=str(exc))
            await asyncio.sleep(1)


def asyncapi_json() -> bytes:
    import json

    from schemas.asyncapi import asyncapi_document

    return json.dumps(asyncapi_document()).encode()


def create_app(settings: Settings) -> Litestar:
    """The application; its state holds what routes depend on (see `routes.common.DEPENDENCIES`)."""
    layout = runtime.layout(settings)
    link = BusLink()
    keys = KeyStore(layout.state_dir)
    files = JobFiles(layout)
    meter = Meter()
    state = State({
        "config": settings,
        "catalog": runtime.LiveCatalog(settings),  # routes get its current Catalog (routes.common)
        "layout": layout,
        "files": files,
        "keys": keys,
        "limits": Limits(settings, layout.state_dir, job_ended=files.job_ended),
        "idempotency": IdempotencyStore(layout.state_dir / "idempotency"),
        "bus": link,
        "readside": None,  # opened in the lifespan
        "library": LoraLibrary(layout.loras_dir, layout.state_dir / "loras" / "index.json"),
        "live": None,  # live events for SSE and WebSocket, once the lifespan started following them
        "asyncapi": asyncapi_json(),
        "meter": meter,
        "workers": WorkerBoard(),  # generator workers heard from (GET /v1/workers)
    })
    # Documents staged by an ingress that was killed mid-request: their jobs were never accepted.
    sweep_temp_files([layout.staging_dir])
    if settings.auth == "off":
        log.warning(
            "AUTH IS OFF: anyone who can reach this API can use it, see every job and image, and act as "
            "an admin. Use DARKROOM_AUTH=off only for a local sandbox.", host=settings.host,
            anonymous_rate=settings.anonymous_rate,
        )
    elif keys.count() == 0:
        log.warning("no API keys yet: create one with `darkroom keys create --name ... [--admin]`")
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    mcp = HttpMount(settings)  # MCP for AI assistants at /mcp

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        connecting = asyncio.create_task(keep_connected(link, settings))
        readside = app.state.readside = ReadSide(settings, layout)
        live = app.state.live = Live(layout, observe=meter.observe)
        background = [connecting, asyncio.create_task(readside.follow()),
                      asyncio.create_task(app.state.library.follow()),
                      asyncio.create_task(live.follow_bus(lambda: link.bus)),
                      asyncio.create_task(app.state.workers.follow_bus(lambda: link.bus))]
        if settings.image_ttl > 0:
            log.info("retention janitor on", image_ttl_seconds=settings.image_ttl)
            background.append(asyncio.create_task(readside.run_janitor(lambda: link.bus)))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if link.bus is not None:
                await link.bus.close()
            app.state.readside = None
            await asyncio.to_thread(readside.close)

    return Litestar(
        route_handlers=[*ROUTES, *enabled_routes(settings), mcp.route, *WEB_ROUTES],
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=DarkroomRequest,
        middleware=[timing_middleware],
        before_send=[request_recorder(meter)],
        lifespan=[lifespan, mcp.lifespan],
        state=state,
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,  # services.logs already routes everything through structlog
        cors_config=CORSConfig(allow_origins=origins, allow_headers=["Authorization", "X-API-Key", "Content-Type",
                                                                     "Idempotency-Key"]) if origins else None,
        openapi_config=OpenAPIConfig(
            title="Darkroom",
            version="1",
            description=(
                "Self-hosted image generation. Send an API key as `Authorization: Bearer <token>` or "
                "`X-API-Key: <token>` (`darkroom keys create`). Errors are always "
                "`{\"status\": \"error\", \"message\": ...}`; the message names what was wrong."
            ),
            path="/schema",
            render_plugins=[docs_plugin()],
            components=Components(security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer", description="drk_<id>_<secret>"),
                "apiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
                "basic": SecurityScheme(type="http", scheme="basic", description="sdapi: DARKROOM_SDAPI_AUTH users"),
            }),
            security=[{"bearer": []}, {"apiKey": []}],
        ),
    )
