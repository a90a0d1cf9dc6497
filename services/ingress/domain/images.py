"""Commands and queries on saved images: find one, read how it was made, delete it, page the gallery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import structlog

from schemas.api import Gallery
from schemas.events import ImageDeleted
from schemas.jobs import ImageMetadata
from schemas.layout import split_image_id
from services.ingress.auth import Principal
from services.ingress.domain.errors import Conflict, Invalid, NotFound
from services.ingress.domain.files import JobFiles
from services.ingress.domain.jobs import read_job, scope_of
from services.ingress.domain.links import BusLink
from services.readside import BadCursor, ReadSide, queries

log = structlog.get_logger("ingress")


def image_paths(image_id: str, principal: Principal, *, files: JobFiles) -> tuple[Path, Path]:
    """(PNG, sidecar) of an image, or NotFound. Ids are checked before any path is built."""
    parts = split_image_id(image_id)
    if parts is None:
        raise NotFound.of("image", image_id)
    job_id, number = parts
    try:
        doc = read_job(files, job_id, principal)
    except NotFound:
        raise NotFound.of("image", image_id) from None
    if number > doc.settings.num_images:
        raise NotFound.of("image", image_id)
    found = files.image_files(doc, image_id)
    if found is None:
        raise NotFound.of("image", image_id)
    return found


async def image_png(image_id: str, principal: Principal, *, files: JobFiles) -> Path:
    png, _ = await asyncio.to_thread(image_paths, image_id, principal, files=files)
    return png


async def image_metadata(image_id: str, principal: Principal, *, files: JobFiles) -> ImageMetadata:
    def read() -> ImageMetadata:
        _, sidecar = image_paths(image_id, principal, files=files)
        try:
            return files.image_record(sidecar).metadata
        except FileNotFoundError:
            raise NotFound.of("image", image_id) from None

    return await asyncio.to_thread(read)


async def delete_image(image_id: str, principal: Principal, *, bus: BusLink, files: JobFiles) -> None:
    """Announce the deletion (the recorder edits the job, the projection drops the row), then
    remove the files. If this dies in between, deleting again finishes it."""
    png, sidecar = await asyncio.to_thread(image_paths, image_id, principal, files=files)
    connected = bus.require()
    job_id, _ = split_image_id(image_id)
    # Until the saver claimed the job's completion it may still write (or rewrite) its images, and
    # a deleted sidecar would keep the job from completing: wait for it (nothing is deleted now).
    # (Jobs that completed before outcomes were claimed read "completed" in their document.)
    def saving() -> bool:
        outcome = files.outcome(job_id)
        return outcome != "completed" and not (outcome is None and read_job(files, job_id, principal).status == "completed")

    if await asyncio.to_thread(saving):
        raise Conflict(f"image {image_id!r} belongs to a job that is still saving its images; delete it once the "
                       "job has completed", retry_after=2)
    await connected.publish(ImageDeleted(job_id=job_id, image_id=image_id))
    await asyncio.to_thread(files.remove, sidecar, png)
    log.info("image deleted", image_id=image_id, by=principal.owner)


async def gallery(principal: Principal, *, readside: ReadSide, page: int = 1, limit: int = 20,
                  search: str | None = None, model: str | None = None, cursor: str | None = None) -> Gallery:
    """Images the caller may see, newest first, by page number or by cursor."""
    try:
        found = await readside.current_query(queries.gallery, scope_of(principal), page=page, limit=limit,
                                             search=search, model=model, cursor=cursor)
    except BadCursor as exc:
        raise Invalid(str(exc)) from None
    return msgspec.convert(found, Gallery)
