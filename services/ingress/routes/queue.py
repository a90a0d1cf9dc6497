"""/v1/queue: statistics, and requeueing stalled jobs."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import QueryParameter

from schemas.api import QueueStats, ResetAnswer
from services.ingress.domain import queue as domain
from services.ingress.routes.common import BusDep, Caller, ReadSideDep, errors


class QueueRoutes(Controller):
    path = "/v1/queue"
    tags = ["queue"]

    @get("/", summary="Queue statistics", responses=errors(400, 503))
    async def queue(
        self,
        principal: Caller,
        readside: ReadSideDep,
        detailed: Annotated[bool, QueryParameter(description="Add the last 24 h, per-model counts, timings")] = False,
    ) -> QueueStats:
        """CyberImage's queue statistics over the jobs you can see (an admin: every tenant's)."""
        return await domain.queue_stats(principal, readside=readside, detailed=detailed)

    @post("/reset-stalled", summary="Requeue stalled jobs now (admin)", status_code=200, responses=errors(400, 403, 503))
    async def reset_stalled(
        self,
        principal: Caller,
        bus: BusDep,
        silent_seconds: Annotated[float | None, QueryParameter(name="silent_seconds", gt=0, le=86400,
                                                               required=False)] = None,
    ) -> ResetAnswer:
        """The reaper sweeps at once: jobs silent past the stall timeout (or `silent_seconds`) are
        requeued for another attempt, or failed after their last. Jobs still making progress are not
        touched (CyberImage's /reset_queue, but safe). Admin keys only."""
        result = await domain.reset_stalled(silent_seconds, principal, bus=bus)
        return ResetAnswer(
            status="success", reset_count=result.reset_count, failed_count=result.failed_count, job_ids=result.job_ids,
            message=f"Reset {result.reset_count} stalled job(s) to pending status"
            + (f"; {result.failed_count} had no attempts left and failed" if result.failed_count else ""),
        )
