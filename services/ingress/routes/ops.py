"""/v1/ops: what `darkroom ops` calls while the stack runs (the ingress owns the DuckDB file)."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.params import JSONBody

from schemas.api import ExportAnswer, OpsQuery, OpsQueryResult, OpsStats, RebuildAnswer
from services.ingress.domain import ops
from services.ingress.routes.common import Caller, LayoutDep, ReadSideDep, errors


class OpsRoutes(Controller):
    """What `darkroom ops` calls while the stack runs (the ingress owns the DuckDB file). Admin only."""

    path = "/v1/ops"
    tags = ["ops"]

    @get("/stats", summary="Detailed statistics of every tenant, and the projection's state", responses=errors(403, 503))
    async def stats(self, principal: Caller, readside: ReadSideDep) -> OpsStats:
        return await ops.ops_stats(principal, readside=readside)

    @post("/query", status_code=200, summary="Run read-only SQL on the projection", responses=errors(400, 403, 413, 503))
    async def query(self, principal: Caller, readside: ReadSideDep, data: JSONBody[OpsQuery]) -> OpsQueryResult:
        """SELECT statements only (parsed, not pattern-matched), in a read-only transaction,
        stopped after 30 s; at most `max_rows` rows (`truncated` says when there were more)."""
        return await ops.run_sql(data.sql, data.max_rows, principal, readside=readside)

    @post("/rebuild", status_code=200, summary="Rebuild the projection from the event log", responses=errors(403, 503))
    async def rebuild(self, principal: Caller, readside: ReadSideDep) -> RebuildAnswer:
        return await ops.rebuild(principal, readside=readside)

    @post("/export", status_code=200, summary="Export the projection as Parquet files", responses=errors(403, 503))
    async def export(self, principal: Caller, readside: ReadSideDep, layout: LayoutDep) -> ExportAnswer:
        """Writes jobs.parquet and images.parquet into a new folder under the data directory's
        `exports/` (a consistent snapshot)."""
        return await ops.export(principal, readside=readside, layout=layout)
