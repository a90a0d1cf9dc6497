"""/v1/presets: a key's named sets of model, settings, LoRAs, style and negative prompt."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath

from schemas.library import Preset, PresetBody, PresetList
from services.ingress.domain import presets
from services.ingress.routes.common import Caller, CatalogDep, LayoutDep, errors
from services.ingress.routes.library import LAYER_EXAMPLE, json_body

PRESET_EXAMPLE = {"id": "anime-fox", "name": "Anime fox", "description": "Foxes, cel-shaded", **LAYER_EXAMPLE}


class PresetRoutes(Controller):
    path = "/v1/presets"
    tags = ["presets"]

    @get("/", summary="Your presets")
    async def list(self, principal: Caller, layout: LayoutDep) -> PresetList:
        return await presets.list_presets(principal, layout=layout)

    @post("/", status_code=201, summary="Create a preset", responses=errors(400, 409, 413))
    async def create(self, principal: Caller, layout: LayoutDep, catalog: CatalogDep,
                     data: Annotated[PresetBody, json_body("a preset", PRESET_EXAMPLE)]) -> Preset:
        """A job names it with `"preset": "<id>"`; its values fill what the job and its session
        leave out. Without an `id`, one is made from the name."""
        return await presets.create_preset(data, principal, layout=layout, catalog=catalog)

    @get("/{preset_id:str}", summary="A preset", responses=errors(404))
    async def read(self, principal: Caller, layout: LayoutDep, preset_id: FromPath[str]) -> Preset:
        """Another key's preset is a 404, like a missing one."""
        return await presets.get_preset(preset_id, principal, layout=layout)

    @put("/{preset_id:str}", summary="Create or replace a preset",
         responses={201: ResponseSpec(data_container=Preset, description="Created")} | errors(400, 409, 413))
    async def put(self, principal: Caller, layout: LayoutDep, catalog: CatalogDep, preset_id: FromPath[str],
                  data: Annotated[PresetBody, json_body("a preset", PRESET_EXAMPLE)]) -> Response[Preset]:
        preset, created = await presets.put_preset(preset_id, data, principal, layout=layout, catalog=catalog)
        return Response(preset, status_code=201 if created else 200)

    @delete("/{preset_id:str}", status_code=204, summary="Delete a preset", responses=errors(404))
    async def remove(self, principal: Caller, layout: LayoutDep, preset_id: FromPath[str]) -> None:
        await presets.delete_preset(preset_id, principal, layout=layout)
