"""/v1/models and /v1/samplers: what this installation can generate with; /v1/models/pulls:
provisioning models while running (admin)."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody

from schemas.api import ModelList, PullRequest, PullStatus, SamplerInfo
from services.ingress.domain import catalog as domain
from services.ingress.domain import models as pulls
from services.ingress.routes.common import BusDep, Caller, CatalogDep, LayoutDep, errors


class ModelRoutes(Controller):
    path = "/v1"
    tags = ["models"]

    @get("/models", summary="Models this installation offers", responses=errors())
    async def list_models(self, principal: Caller, catalog: CatalogDep) -> ModelList:
        return domain.list_models(catalog)

    @post("/models/pulls", summary="Pull a model or LoRA while running (admin)", status_code=202,
          responses=errors(400, 403, 503))
    async def pull_model(self, principal: Caller, bus: BusDep, data: JSONBody[PullRequest]) -> PullStatus:
        """The models stage downloads (Hugging Face repo id, http(s) URL or server path), verifies
        and places the files, then the model appears in GET /v1/models (or the LoRA in /v1/loras).
        Follow it at GET /v1/models/pulls/{id} or on the `model.pull.*` and `model.available` events."""
        return await pulls.request_pull(data, principal, bus=bus)

    @get("/models/pulls/{pull_id:str}", summary="How a pull is going (admin)", responses=errors(403, 404))
    async def get_pull(self, principal: Caller, layout: LayoutDep, pull_id: FromPath[str]) -> PullStatus:
        return pulls.read_pull(pull_id, principal, layout=layout)

    @get("/samplers", summary="Samplers by their A1111 names", responses=errors())
    async def list_samplers(self, principal: Caller) -> list[SamplerInfo]:
        return domain.list_samplers()
