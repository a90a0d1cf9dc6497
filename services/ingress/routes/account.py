"""/v1/quota: the caller's usage and limits."""

from __future__ import annotations

from litestar import Controller, get

from schemas.api import Quota
from services.ingress.domain import queue
from services.ingress.routes.common import Caller, LimitsDep, errors


class QuotaRoutes(Controller):
    path = "/v1/quota"
    tags = ["account"]

    @get("/", summary="This key's usage, limits and what remains", responses=errors())
    async def quota(self, principal: Caller, limits: LimitsDep) -> Quota:
        """The weights.gg quota shape (`isPremium`, `usage`, `limits`, `remaining`) with Darkroom's
        quota names; an unlimited quota reads "Infinity"."""
        return await queue.quota(principal, limits=limits)
