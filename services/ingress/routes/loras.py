"""/v1/loras: search the LoRA library, one LoRA with its metadata and preview, rescan (admin)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.openapi.spec import Example
from litestar.params import FromPath, QueryParameter
from litestar.response import File

from schemas.library import Base, LoraInfo, LoraPage, ScanAnswer
from services.ingress.domain import loras
from services.ingress.routes.common import Caller, errors
from services.ingress.routes.library import LIBRARY, LibraryDep


class LoraRoutes(Controller):
    path = "/v1/loras"
    tags = ["loras"]
    dependencies = LIBRARY

    @get("/", summary="Search the LoRA library", responses=errors(400, 503))
    async def search(
        self,
        principal: Caller,
        library: LibraryDep,
        search: Annotated[str | None, QueryParameter(
            required=False, max_length=200, description="Fuzzy match on name, tags and trigger words (typos ok)",
            examples=[Example(summary="while typing", value="fox sty")])] = None,
        base: Annotated[Base | None, QueryParameter(required=False, description="Only LoRAs for this base family",
                                                     examples=[Example(value="sd1")])] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, QueryParameter(required=False, max_length=20,
                                                      description="next_cursor of the previous page")] = None,
    ) -> LoraPage:
        """Every `.safetensors` file under `models/loras`, indexed as it appears (no restart):
        best match first when `search` is given (score 0-100), else by name. Fast enough for
        autocomplete."""
        return loras.search_loras(library, search=search, base=base, limit=limit, cursor=cursor)

    @get("/{name:str}", summary="One LoRA with its metadata", responses=errors(404, 503))
    async def read(self, principal: Caller, library: LibraryDep, name: FromPath[str]) -> LoraInfo:
        """Size, sha256, base family, trigger words, tags (kohya `ss_tag_frequency`) and the
        safetensors header's metadata."""
        return loras.lora_info(library, name)

    @get("/{name:str}/preview", summary="A LoRA's preview image", media_type="image/png", responses=errors(404, 503))
    async def preview(self, principal: Caller, library: LibraryDep, name: FromPath[str]) -> File:
        """The image beside the LoRA file (`<name>.png`, `.preview.png`, `.jpg`, `.jpeg`, `.webp`)."""
        path = loras.preview_path(library, name)
        media = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}.get(path.suffix[1:], "image/png")
        return File(path=path, media_type=media, filename=path.name, content_disposition_type="inline")

    @post("/scan", status_code=200, summary="Rescan the LoRA folder now (admin)", responses=errors(403, 503))
    async def scan(self, principal: Caller, library: LibraryDep) -> ScanAnswer:
        """The folder is watched, so this is rarely needed; answers what changed."""
        return await loras.rescan(library, principal)
