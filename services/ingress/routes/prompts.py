"""/v1/enrich: a prompt with a style template applied."""

from __future__ import annotations

from litestar import Controller, post
from litestar.params import JSONBody

from schemas.api import EnrichRequest, EnrichResponse
from services.ingress.domain import catalog as domain
from services.ingress.routes.common import Caller, CatalogDep, ConfigDep, errors


class EnrichRoutes(Controller):
    path = "/v1/enrich"
    tags = ["prompts"]

    @post("/", summary="Apply a style template to a prompt", status_code=200, responses=errors(400, 413))
    async def enrich(self, principal: Caller, catalog: CatalogDep, config: ConfigDep,
                     data: JSONBody[EnrichRequest]) -> EnrichResponse:
        return domain.enrich(data, catalog=catalog, settings=config)
