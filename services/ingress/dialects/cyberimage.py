"""CyberImage's API under /api, for its clients and test scripts (its MCP endpoint: `cyberimage_mcp`).

A translation layer only: POST /api/generate becomes the native `JobRequest` and goes through
`jobs.submit_job` and the durable queue (asynchronous, as CyberImage is: the client polls
/api/status); reads go through the same domain queries as /v1. Errors are CyberImage's
`{"status": "error", "message": ...}` (`/api/enrich`'s: `{"error": ...}`). Mapping tables are
the constants below; docs/dialects/cyberimage.md is the page.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import File

from schemas.api import EnrichRequest, ErrorBody, JobRequest
from schemas.catalog import Catalog, ModelEntry
from schemas.jobs import ImageMetadata, JobDocument, JobStatus
from schemas.layout import DataLayout
from schemas.settings import Settings
from services.bus import BrokerUnavailable
from services.ingress.auth import Principal
from services.ingress.dialects.common import DialectCaller, provide_caller
from services.ingress.dialects.cyberimage_types import (
    Counts,
    EnrichAnswer,
    EnrichBody,
    EnrichError,
    GalleryAnswer,
    GalleryItem,
    GenerateAnswer,
    GenerateBody,
    GenerateSettings,
    ImageMeta,
    ImageSettings,
    ModelsAnswer,
    ModelSummary,
    QueueAnswer,
    ResetAnswer,
    StatusAnswer,
    StatusImage,
    StatusMessage,
    StatusProgress,
)
from services.ingress.domain import catalog as offers
from services.ingress.domain import images, jobs
from services.ingress.domain import queue as queue_domain
from services.ingress.domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    LimitReached,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from services.ingress.domain.files import JobFiles
from services.ingress.domain.links import BusLink
from services.ingress.idempotency import IdempotencyStore
from services.ingress.limits import Limits
from services.ingress.requests import MAX_IMAGES
from services.ingress.routes.common import (
    BusDep,
    CatalogDep,
    ConfigDep,
    FilesDep,
    IdempotencyDep,
    LayoutDep,
    LimitsDep,
    ReadSideDep,
)

log = structlog.get_logger("ingress")

# -- mapping tables ------------------------------------------------------------------------------------

# CyberImage's model names -> the default model (a catalog id is taken as is; any other name too
# maps to the default model, as these do).
ALIASES = ("flux-1", "flux-2", "sd-3.5", "flux-abliterated")
# Our job status -> CyberImage's (it has no "cancelled": a cancelled job failed, with its reason).
STATUSES: dict[JobStatus, str] = {"pending": "pending", "processing": "processing", "completed": "completed",
                                  "failed": "failed", "cancelled": "failed"}
# Our domain errors -> HTTP status (the body is always {"status": "error", "message": ...}).
ERRORS: dict[type[DomainError], int] = {
    Invalid: 400, TooLarge: 400, Unauthenticated: 401, Forbidden: 403, NotFound: 404, Conflict: 409,
    LimitReached: 429, Unavailable: 503,
}
DEFAULT_STYLE = "cyberpunk"  # CyberImage's /enrich default
MAX_GALLERY_LIMIT = 50


# -- translation -------------------------------------------------------------------------------------

def model_entry(name: str | None, catalog: Catalog) -> ModelEntry:
    """A catalog model for a CyberImage model name: a catalog id as is, anything else the default."""
    return catalog.models.get(name or "", catalog.models[catalog.default])


def _clamped_size(width: int | None, height: int | None, entry: ModelEntry, notes: list[str]) -> tuple[int, int]:
    """(width, height) within the model's limits: scaled down keeping the aspect, multiples of 8."""
    w, h = width or entry.defaults.width, height or entry.defaults.height
    if w < 8 or h < 8:
        raise Invalid(f"settings.{'width' if w < 8 else 'height'} must be at least 8, got {min(w, h)}")
    scale = min(1.0, entry.limits.max_width / w, entry.limits.max_height / h)
    fitted = max(8, int(w * scale) // 8 * 8), max(8, int(h * scale) // 8 * 8)
    if fitted != (w, h):
        notes.append(f"size {w}x{h} became {fitted[0]}x{fitted[1]} (model {entry.id!r} limits)")
    return fitted


def job_request(body: GenerateBody, catalog: Catalog) -> tuple[JobRequest, list[str]]:
    """The native request for a CyberImage generate body, and notes on what was clamped."""
    entry = model_entry(body.model_id, catalog)
    given = body.settings or GenerateSettings()
    notes: list[str] = []
    settings: dict[str, Any] = {}
    if given.num_images is not None:
        if given.num_images < 1:
            raise Invalid(f"settings.num_images must be 1-{MAX_IMAGES}, got {given.num_images}")
        settings["num_images"] = min(given.num_images, MAX_IMAGES)  # CyberImage caps at 8, as we do
    if given.num_inference_steps is not None:
        if given.num_inference_steps < 1:
            raise Invalid(f"settings.num_inference_steps must be at least 1, got {given.num_inference_steps}")
        settings["num_inference_steps"] = min(given.num_inference_steps, entry.limits.max_steps)
        if given.num_inference_steps > entry.limits.max_steps:
            notes.append(f"steps {given.num_inference_steps} became {entry.limits.max_steps} (model limit)")
    if given.width is not None or given.height is not None:
        settings["width"], settings["height"] = _clamped_size(given.width, given.height, entry, notes)
    for ours, value in (("guidance_scale", given.guidance_scale), ("seed", given.seed)):
        if value is not None:
            settings[ours] = value
    request = {"prompt": body.prompt, "negative_prompt": body.negative_prompt or None, "model": entry.id,
               "settings": settings}
    try:
        return msgspec.convert(request, JobRequest), notes
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc).replace("$.", "")) from None


def image_settings(meta: ImageMetadata) -> ImageSettings:
    s = meta.settings
    return ImageSettings(num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                         height=s.height, width=s.width, seed=meta.seed)


def image_meta(meta: ImageMetadata) -> ImageMeta:
    return ImageMeta(model_id=meta.model_id, prompt=meta.prompt, negative_prompt=meta.negative_prompt,
                     settings=image_settings(meta), generation_time=meta.generation_time,
                     image_number=meta.image_number, total_images=meta.total_images, seed=meta.seed)


def image_url(base_url: str, image_id: str) -> str:
    return f"{base_url}/api/get_image/{image_id}"


def status_answer(doc: JobDocument, base_url: str) -> StatusAnswer:
    """GET /api/status in CyberImage's shape: its four statuses, progress flags, absolute image URLs."""
    status = STATUSES[doc.status]
    p = doc.progress
    progress = StatusProgress(preparing=p.preparing, loading_model=p.loading_model, generating=p.generating,
                              saving=p.saving, completed=doc.status == "completed",
                              failed=status == "failed", step=p.step, total_steps=p.total_steps)
    s = doc.settings
    error = None
    if status == "failed":
        error = doc.error or (f"the job was cancelled: {doc.message}" if doc.status == "cancelled" else doc.message)
    found = [StatusImage(id=record.id, file_path=record.file_path, created_at=record.created_at,
                         metadata=image_meta(record.metadata), url=image_url(base_url, record.id))
             for record in sorted(doc.images, key=lambda r: r.metadata.image_number)]
    return StatusAnswer(
        id=doc.id, status=status, model_id=doc.model, prompt=doc.original_prompt or doc.prompt,
        negative_prompt=doc.negative_prompt,
        settings=ImageSettings(num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                               height=s.height, width=s.width, seed=s.seed),
        created_at=doc.created_at, started_at=doc.started_at, completed_at=doc.completed_at,
        message=doc.message or status, progress=progress, images=found, error=error, num_images=s.num_images)


def models_answer(catalog: Catalog) -> ModelsAnswer:
    """Every catalog model, and CyberImage's model names as aliases of the default model."""
    found = {name: ModelSummary(id=entry.id, description=entry.description) for name, entry in catalog.models.items()}
    for alias in ALIASES:
        found.setdefault(alias, ModelSummary(id=catalog.default, description=f"CyberImage's {alias}: Darkroom's "
                                             f"default model {catalog.default!r}"))
    return ModelsAnswer(models=found, default=catalog.default)


def counts(found: Any) -> Counts:
    """Our counts with cancelled folded into failed (CyberImage has four statuses)."""
    return Counts(pending=found.pending, processing=found.processing, completed=found.completed,
                  failed=found.failed + found.cancelled, total=found.total)


async def submit(body: GenerateBody, principal: Principal, *, bus: BusLink, files: JobFiles, limits: Limits,
                 idempotency: IdempotencyStore, catalog: Catalog, config: Settings,
                 layout: DataLayout) -> tuple[JobDocument, list[str]]:
    request, notes = job_request(body, catalog)
    doc, _ = await jobs.submit_job(request, principal, bus=bus, files=files, limits=limits, idempotency=idempotency,
                                   catalog=catalog, settings=config, layout=layout)
    return doc, notes


def submitted_message(count: int, notes: list[str]) -> str:
    message = f"Image generation job submitted successfully for {count} image(s)"
    return message + "".join(f" ({note})" for note in notes)


# -- errors in CyberImage's shape ----------------------------------------------------------------------

def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(ErrorBody(message=message), status_code=status, headers=headers or {})


def domain_error(_: Request, exc: DomainError) -> Response:
    status = next((v for k, v in ERRORS.items() if isinstance(exc, k)), 500)
    headers = {}
    if isinstance(exc, LimitReached | Unavailable) or (isinstance(exc, Conflict) and exc.retry_after):
        headers["Retry-After"] = str(exc.retry_after)
    return error_response(status, exc.message, headers)


def validation_message(exc: ValidationException) -> str:
    problems = []
    for item in exc.extra or []:
        if isinstance(item, dict):
            key, message = item.get("key"), item.get("message", "")
            problems.append(f"{key}: {message}" if key and key != "data" else message)
    return "; ".join(problems) or str(exc.detail)


def validation_error(_: Request, exc: ValidationException) -> Response:
    return error_response(400, validation_message(exc))


def http_error(_: Request, exc: HTTPException) -> Response:
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


def broker_error(_: Request, __: BrokerUnavailable) -> Response:
    return error_response(503, "the message broker is unreachable; nothing was accepted", {"Retry-After": "5"})


def storage_error(_: Request, exc: OSError) -> Response:
    return error_response(503, f"cannot write to the data directory ({exc.strerror or exc})", {"Retry-After": "30"})


def internal_error(request: Request, _: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return error_response(500, "internal error; it has been logged")


EXCEPTION_HANDLERS = {DomainError: domain_error, ValidationException: validation_error, HTTPException: http_error,
                      BrokerUnavailable: broker_error, OSError: storage_error, Exception: internal_error}


def _enrich_error(status: int, message: str) -> Response:
    return Response(EnrichError(error=message), status_code=status)


# /api/enrich answers its errors as {"error": ...}
ENRICH_HANDLERS = {
    DomainError: lambda r, e: _enrich_error(domain_error(r, e).status_code, e.message),
    ValidationException: lambda _, e: _enrich_error(400, validation_message(e)),
    HTTPException: lambda _, e: _enrich_error(e.status_code, str(e.detail)),
}
WHY = {400: "A parameter is wrong; the message names it", 401: "No or an invalid key (loopback needs none)",
       403: "Needs an admin key",
       404: "No such job or image (every route: the dialect is switched off)", 409: "The image's job is still saving",
       413: "The request body is too large", 429: "A rate limit or quota was reached", 503: "The broker, read side or data directory is unavailable"}


def errors(*codes: int, body: type = ErrorBody) -> dict[int, ResponseSpec]:
    # Every route: 401 without credentials from afar, 404 when the dialect is switched off.
    return {code: ResponseSpec(data_container=body, description=WHY[code]) for code in (401, 404, *codes)}


# -- routes ---------------------------------------------------------------------------------------------

class CyberImageRoutes(Controller):
    """CyberImage's REST API: point its clients' API_BASE at `<darkroom>/api`."""

    path = "/api"
    tags = ["cyberimage"]
    dependencies = {"principal": Provide(provide_caller)}
    exception_handlers = EXCEPTION_HANDLERS
    security = [{"bearer": []}]

    @get("/models", summary="Models (CyberImage)", responses=errors())
    async def models(self, principal: DialectCaller, catalog: CatalogDep) -> ModelsAnswer:
        return models_answer(catalog)

    @post("/generate", status_code=200, summary="Queue a generation (CyberImage)",
          responses=errors(400, 413, 429, 503))
    async def generate(self, principal: DialectCaller, bus: BusDep, files: FilesDep, limits: LimitsDep,
                       idempotency: IdempotencyDep, catalog: CatalogDep, config: ConfigDep, layout: LayoutDep,
                       data: JSONBody[GenerateBody]) -> GenerateAnswer:
        doc, notes = await submit(data, principal, bus=bus, files=files, limits=limits, idempotency=idempotency,
                                  catalog=catalog, config=config, layout=layout)
        count = doc.settings.num_images
        return GenerateAnswer(job_id=doc.id, status="pending", num_images=count,
                              message=submitted_message(count, notes))

    @get("/status/{job_id:str}", summary="A job's status (CyberImage)", responses=errors())
    async def status(self, request: Request, principal: DialectCaller, files: FilesDep,
                     job_id: FromPath[str]) -> StatusAnswer:
        doc = await asyncio.to_thread(jobs.read_job, files, job_id, principal)
        return status_answer(doc, str(request.base_url).rstrip("/"))

    @get("/get_image/{image_id:str}", summary="Download an image (CyberImage)", media_type="image/png",
         responses=errors())
    async def get_image(self, principal: DialectCaller, files: FilesDep, image_id: FromPath[str]) -> File:
        png = await images.image_png(image_id, principal, files=files)
        return File(path=png, media_type="image/png", filename=f"{image_id}.png", content_disposition_type="inline")

    @get("/image/{image_id:str}/metadata", summary="How an image was made (CyberImage)", responses=errors())
    async def metadata(self, principal: DialectCaller, files: FilesDep, image_id: FromPath[str]) -> ImageMeta:
        return image_meta(await images.image_metadata(image_id, principal, files=files))

    @delete("/image/{image_id:str}", status_code=200, summary="Delete an image (CyberImage)",
            responses=errors(404, 409, 503))
    async def delete_image(self, principal: DialectCaller, bus: BusDep, files: FilesDep,
                           image_id: FromPath[str]) -> StatusMessage:
        await images.delete_image(image_id, principal, bus=bus, files=files)
        return StatusMessage(status="success", message="Image deleted successfully")

    @get("/queue", summary="Queue statistics (CyberImage)", responses=errors(503))
    async def queue(self, principal: DialectCaller, readside: ReadSideDep,
                    detailed: Annotated[str | None, QueryParameter(description='"true" adds the last 24 h, '
                                                                   'per-model counts and timings')] = None
                    ) -> QueueAnswer:
        wanted = (detailed or "").strip().lower() in ("true", "1", "yes")
        stats = await queue_domain.queue_stats(principal, readside=readside, detailed=wanted)
        base = counts(stats)
        return QueueAnswer(
            pending=base.pending, processing=base.processing, completed=base.completed, failed=base.failed,
            total=base.total, queue_size=stats.queue_size,
            recent_24h=counts(stats.recent_24h) if stats.recent_24h is not None else None,
            avg_processing_time_seconds=stats.avg_processing_time_seconds,
            models={name: counts(c) for name, c in stats.models.items()} if stats.models is not None else None,
            failure_rate=stats.failure_rate)

    @post("/reset_queue", status_code=200, summary="Requeue stalled jobs (CyberImage; admin key)",
          responses=errors(403, 503))
    async def reset_queue(self, principal: DialectCaller, bus: BusDep) -> ResetAnswer:
        """Only jobs that really stalled are requeued (the reaper decides); needs an admin key."""
        result = await queue_domain.reset_stalled(None, principal, bus=bus)
        return ResetAnswer(status="success", reset_count=result.reset_count,
                           message=f"Reset {result.reset_count} stalled jobs to pending status")

    @get("/gallery", summary="Images, newest first (CyberImage)", responses=errors(400, 503))
    async def gallery(self, request: Request, principal: DialectCaller, readside: ReadSideDep,
                      page: Annotated[int, QueryParameter(ge=-(2**31), le=2**31)] = 1,
                      limit: Annotated[int, QueryParameter(ge=-(2**31), le=2**31)] = 20,
                      search: str | None = None, model: str | None = None) -> GalleryAnswer:
        """`limit` is capped at 50, as CyberImage caps it; `page` starts at 1."""
        page, limit = max(1, page), max(1, min(limit, MAX_GALLERY_LIMIT))
        found = await images.gallery(principal, readside=readside, page=page, limit=limit, search=search or None,
                                     model=model or None)
        base = str(request.base_url).rstrip("/")
        items = [GalleryItem(id=i.id, model_id=i.model_id, prompt=i.prompt, created_at=i.created_at,
                             settings=i.settings, url=image_url(base, i.id)) for i in found.images]
        return GalleryAnswer(images=items, page=page, limit=limit, has_more=found.has_more, total=found.total)

    @post("/enrich", status_code=200, summary="Apply a style to a prompt (CyberImage)",
          exception_handlers=ENRICH_HANDLERS, responses=errors(400, 413, body=EnrichError))
    async def enrich(self, principal: DialectCaller, catalog: CatalogDep, config: ConfigDep,
                     data: JSONBody[EnrichBody]) -> EnrichAnswer:
        if not data.prompt:
            raise Invalid("No prompt provided")
        style = data.style or DEFAULT_STYLE
        found = offers.enrich(EnrichRequest(prompt=data.prompt, style=style), catalog=catalog, settings=config)
        return EnrichAnswer(original_prompt=found.original_prompt, enriched_prompt=found.enriched_prompt, style=style)
