"""/v1/models and /v1/samplers: what this installation can generate with."""

from __future__ import annotations

from litestar import Controller, get

from schemas.api import ModelList, SamplerInfo
from services.ingress.domain import catalog as domain
from services.ingress.routes.common import Caller, CatalogDep, errors


class ModelRoutes(Controller):
    path = "/v1"
    tags = ["models"]

    @get("/models", summary="Models this installation offers", responses=errors())
    async def list_models(self, principal: Caller, catalog: CatalogDep) -> ModelList:
        return domain.list_models(catalog)

    @get("/samplers", summary="Samplers by their A1111 names", responses=errors())
    async def list_samplers(self, principal: Caller) -> list[SamplerInfo]:
        return domain.list_samplers()
