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
    LayoutDep,
    ReadSideDep,
    ReadSideIfOpenDep,
    Viewer,
    errors,
)
from services.readside.queries import COUNTED


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

    @get("/metrics", summary="Prometheus metrics (admin)", media_type="text/plain; version=0.0.4",
         responses=errors(403, 503))
    async def metrics(self, principal: Caller, readside: ReadSideDep) -> str:
        """Projection lag and position, and jobs by status, in the Prometheus text format."""
        return prometheus(await ops.metrics(principal, readside=readside))

    @get("/docs", include_in_schema=False)
    async def docs(self) -> Redirect:
        """The interactive API docs live next to the OpenAPI schema."""
        return Redirect(path="/schema/docs")


def prometheus(found: ops.Metrics) -> str:
    """The Prometheus text format of the metrics."""
    projection = found.projection
    lines = [
        "# HELP darkroom_projection_lag_seconds How long the oldest unapplied part of the event log has waited.",
        "# TYPE darkroom_projection_lag_seconds gauge",
        f"darkroom_projection_lag_seconds {projection.lag_seconds}",
        "# HELP darkroom_projection_pending_bytes Bytes of the event log not applied yet.",
        "# TYPE darkroom_projection_pending_bytes gauge",
        f"darkroom_projection_pending_bytes {projection.pending_bytes}",
        "# HELP darkroom_projection_events_total Events applied to the projection.",
        "# TYPE darkroom_projection_events_total counter",
        f"darkroom_projection_events_total {projection.events_applied}",
        "# HELP darkroom_jobs Jobs by status.",
        "# TYPE darkroom_jobs gauge",
        *(f'darkroom_jobs{{status="{name}"}} {found.jobs[name]}' for name in COUNTED),
    ]
    return "\n".join(lines) + "\n"
