"""The service itself: /health, /metrics, and /docs."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Redirect

from schemas.api import Health
from services.ingress.domain import ops
from services.ingress.routes.common import (
    BusDep,
    Caller,
    CatalogDep,
    LayoutDep,
    MeterDep,
    ReadSideDep,
    ReadSideIfOpenDep,
    Viewer,
    errors,
)
from services.metrics import CONTENT_TYPE


class ServiceRoutes(Controller):
    path = "/"
    tags = ["ops"]

    @get("/health", summary="Broker, data directory and worker health (503 when jobs cannot be accepted)",
         security=[], responses={503: ResponseSpec(data_container=Health, description="Jobs cannot be accepted now")})
    async def health(self, bus: BusDep, layout: LayoutDep, readside_if_open: ReadSideIfOpenDep,
                     viewer: Viewer) -> Response[Health]:
        """`status` for anyone; with an admin key also the broker, the data directory, the
        generators and the projection."""
        body = await ops.health(bus=bus, layout=layout, readside=readside_if_open,
                                detailed=viewer is not None and viewer.admin)
        return Response(body, status_code=503 if body.status == "unavailable" else 200)

    @get("/metrics", summary="Prometheus metrics (admin)", media_type=CONTENT_TYPE, responses=errors(403, 503))
    async def metrics(self, principal: Caller, readside: ReadSideDep, bus: BusDep, meter: MeterDep,
                      catalog: CatalogDep) -> Response[bytes]:
        """Stage latencies, jobs by status and model, queue depths and dead letters, generator busy
        time and batch sizes, model loads and cache hits, projection lag, HTTP requests by route
        and code, in the Prometheus text format (see docs/metrics.md)."""
        return Response(await ops.metrics(principal, meter=meter, readside=readside, bus=bus, models=catalog.models),
                        media_type=CONTENT_TYPE)

    @get("/docs", include_in_schema=False)
    async def docs(self) -> Redirect:
        """The interactive API docs live next to the OpenAPI schema."""
        return Redirect(path="/schema/docs")
