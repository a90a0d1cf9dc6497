"""/v1/gallery: images newest first, with search."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import QueryParameter

from schemas.api import Gallery
from services.ingress.domain import images
from services.ingress.routes.common import Caller, ReadSideDep, errors
from services.readside.queries import MAX_PAGE


class GalleryRoutes(Controller):
    path = "/v1/gallery"
    tags = ["images"]

    @get("/", summary="Images, newest first, with search", responses=errors(400, 503))
    async def gallery(
        self,
        principal: Caller,
        readside: ReadSideDep,
        page: Annotated[int, QueryParameter(ge=1, le=100_000)] = 1,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 20,
        search: Annotated[str | None, QueryParameter(required=False, max_length=200,
                                                     description="Matches prompt or model, case-insensitive")] = None,
        model: Annotated[str | None, QueryParameter(required=False, max_length=200)] = None,
        cursor: Annotated[str | None, QueryParameter(required=False, max_length=500,
                                                     description="next_cursor of the previous page (deep pages)")] = None,
    ) -> Gallery:
        """CyberImage's gallery: `images`, `page`, `limit` (at most 50), `has_more`, `total`. Deep pages
        are cheaper by `cursor` (keyset) than by `page` (offset)."""
        return await images.gallery(principal, readside=readside, page=page, limit=limit, search=search, model=model,
                                    cursor=cursor)
