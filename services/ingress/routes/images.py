"""/v1/images: download, metadata, delete."""

from __future__ import annotations

from litestar import Controller, delete, get
from litestar.params import FromPath
from litestar.response import File

from schemas.api import ImageDeleteAnswer
from schemas.jobs import ImageMetadata
from services.ingress.domain import images
from services.ingress.routes.common import BusDep, Caller, FilesDep, errors


class ImageRoutes(Controller):
    path = "/v1/images"
    tags = ["images"]

    @get("/{image_id:str}", summary="Download an image (PNG)", media_type="image/png", responses=errors(404))
    async def read(self, principal: Caller, files: FilesDep, image_id: FromPath[str]) -> File:
        png = await images.image_png(image_id, principal, files=files)
        return File(path=png, media_type="image/png", filename=f"{image_id}.png", content_disposition_type="inline")

    @get("/{image_id:str}/metadata", summary="How an image was made", responses=errors(404))
    async def metadata(self, principal: Caller, files: FilesDep, image_id: FromPath[str]) -> ImageMetadata:
        return await images.image_metadata(image_id, principal, files=files)

    @delete("/{image_id:str}", status_code=200, summary="Delete an image (its owner or an admin)",
            responses=errors(404, 503))
    async def remove(self, principal: Caller, bus: BusDep, files: FilesDep, image_id: FromPath[str]) -> ImageDeleteAnswer:
        """Removes the PNG and its sidecar, takes it out of its job and the gallery (`image.deleted`)."""
        await images.delete_image(image_id, principal, bus=bus, files=files)
        return ImageDeleteAnswer(status="success", id=image_id, message=f"Image {image_id} deleted")
