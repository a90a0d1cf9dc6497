"""The Chutes image-generation proxy's API under /chutes, for its Bruno collection and scripts.

A translation layer only: POST /generate becomes the native `JobRequest` (any model name that is
not a catalog id, such as the seed's `qwen-image`, means the default model; sizes and steps past
the model's limits are clamped, as the Chutes backend clamped them), goes through
`jobs.submit_job` and the durable queue, and answers 202 with the job id as the task id. Tasks are
read back from the job documents (/status/{id}) and the read model (/status, newest first).
`file_path` is where the PNG lies on the server, as the seed's SQLite row said. No auth, as the
seed: anonymous callers are let in from loopback (the anonymous tenant, limited per address by
DARKROOM_ANONYMOUS_RATE); a Darkroom key works too. Mapping tables are the constants below;
docs/dialects/chutes.md has them as a table.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter

from schemas.api import JobRequest, JobSummary
from schemas.catalog import Catalog
from schemas.jobs import JobDocument, JobStatus
from services.bus import BrokerUnavailable
from services.ingress.dialects.common import DialectCaller, provide_caller
from services.ingress.domain import jobs, shared
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
from services.ingress.domain.waiting import cancel_idle
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

# Our job status -> the task status the proxy reports (it has no "cancelled": a cancelled task failed).
STATUSES: dict[JobStatus, str] = {"pending": "pending", "processing": "processing", "completed": "completed",
                                  "failed": "failed", "cancelled": "failed"}
# A task status asked for in GET /status?status= -> the job statuses it covers.
FILTERS: dict[str, tuple[JobStatus, ...]] = {
    task: tuple(ours for ours, theirs in STATUSES.items() if theirs == task) for task in dict.fromkeys(STATUSES.values())
}
# Model names the seed's Chutes backends served; these, and any other name that is not a catalog
# model id, mean the catalog's default model.
CHUTES_MODELS = ("qwen-image", "flux-1", "flux-dev", "flux-schnell", "hidream", "stable-diffusion-xl")
# Request field -> our setting (the rest of the proxy's body is passed through by name or ignored).
FIELDS: dict[str, str] = {"prompt": "prompt", "negative_prompt": "negative_prompt", "model": "model",
                          "width": "settings.width", "height": "settings.height",
                          "num_inference_steps": "settings.num_inference_steps",
                          "guidance_scale": "settings.guidance_scale", "seed": "settings.seed"}
# Our domain errors -> HTTP status (the body is always {"error": message}).
ERRORS: dict[type[DomainError], int] = {Invalid: 400, TooLarge: 413, Unauthenticated: 401, Forbidden: 403,
                                        NotFound: 404, Conflict: 409, LimitReached: 429, Unavailable: 503}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # SQLite's CURRENT_TIMESTAMP, UTC
LIST_MAX = 500  # rows GET /status answers at most (newest first)
CLEANUP_MINUTES = 30.0
NOT_BUILT = {"/edit": "image editing", "/generate-video": "video generation", "/analyze-image": "image analysis"}

# -- wire types ----------------------------------------------------------------------------------------


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error answer of the proxy."""

    error: str


class GenerateBody(msgspec.Struct, kw_only=True):
    """POST /generate. Only `prompt` is required; unknown fields are ignored, as the proxy did."""

    prompt: str | None = None
    model: str | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    seed: int | None = None


class Queued(msgspec.Struct, kw_only=True):
    id: str
    status: str
    message: str


class Task(msgspec.Struct, kw_only=True):
    """A task row: `file_path` is the PNG's absolute path on the server once completed (else null);
    times are UTC, `YYYY-MM-DD HH:MM:SS`."""

    id: str
    prompt: str
    status: str
    file_path: str | None
    error: str | None
    created_at: str
    updated_at: str


class CleanupBody(msgspec.Struct, kw_only=True):
    """POST /cleanup: fail (cancel) the caller's tasks unchanged for this many minutes."""

    timeoutMinutes: Annotated[float, msgspec.Meta(ge=0)] = CLEANUP_MINUTES


class Cleaned(msgspec.Struct, kw_only=True):
    message: str
    cleanedCount: int
    cleanedIds: list[str]


# -- translation -------------------------------------------------------------------------------------

def model_for(name: str | None, catalog: Catalog) -> str:
    return name if name in catalog.models else catalog.default


def _clamp_side(value: int, field: str) -> int:
    if value < 8:
        raise Invalid(f"{field} must be at least 8, got {value}")
    return value


def job_request(body: GenerateBody, catalog: Catalog) -> JobRequest:
    """The native request for the proxy's body, clamped to the model's limits (aspect kept)."""
    if body.prompt is None or not body.prompt.strip():
        raise Invalid("Prompt is required")
    model = model_for(body.model, catalog)
    entry = catalog.models[model]
    settings: dict[str, Any] = {}
    if body.width is not None or body.height is not None:
        w = _clamp_side(body.width if body.width is not None else entry.defaults.width, "width")
        h = _clamp_side(body.height if body.height is not None else entry.defaults.height, "height")
        scale = min(1.0, entry.limits.max_width / w, entry.limits.max_height / h)
        settings["width"], settings["height"] = max(8, int(w * scale) // 8 * 8), max(8, int(h * scale) // 8 * 8)
    if body.num_inference_steps is not None:
        if body.num_inference_steps < 1:
            raise Invalid(f"num_inference_steps must be at least 1, got {body.num_inference_steps}")
        settings["num_inference_steps"] = min(body.num_inference_steps, entry.limits.max_steps)
    for name in ("guidance_scale", "seed"):
        if getattr(body, name) is not None:
            settings[name] = getattr(body, name)
    request = {"prompt": body.prompt, "negative_prompt": body.negative_prompt or None, "model": model,
               "settings": settings}
    try:
        return msgspec.convert(request, JobRequest)
    except msgspec.ValidationError as exc:
        message = str(exc).replace("$.", "")
        ours = next((f for f, o in FIELDS.items() if o != f and o in message), None)
        raise Invalid(message.replace(FIELDS[ours], ours) if ours else message) from None


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def _error(status: str, error: str | None, message: str) -> str | None:
    if status == "failed":
        return error or message or "failed"
    if status == "cancelled":
        return message or "cancelled"
    return None


def task_of(doc: JobDocument, png: str | None) -> Task:
    return Task(id=doc.id, prompt=doc.original_prompt or doc.prompt, status=STATUSES[doc.status], file_path=png,
                error=_error(doc.status, doc.error, doc.message), created_at=stamp(doc.created_at),
                updated_at=stamp(doc.updated_at))


def _png(doc: JobDocument, files) -> str | None:
    if doc.status != "completed":
        return None
    path = shared.image_path(doc, files)
    return str(path.resolve()) if path is not None else None


def read_task(files, job_id: str, principal) -> Task:
    doc = jobs.read_job(files, job_id, principal)
    return task_of(doc, _png(doc, files))


def summary_task(row: JobSummary, files, principal) -> Task:
    """A listed job as a task; a completed one's document is read for its image's path."""
    if row.status == "completed":
        try:
            return read_task(files, row.id, principal)
        except NotFound:
            pass
    return Task(id=row.id, prompt=row.prompt, status=STATUSES.get(row.status, row.status), file_path=None,  # type: ignore[arg-type]
                error=_error(row.status, row.error, ""), created_at=stamp(row.created_at),
                updated_at=stamp(row.updated_at))


# -- errors in the proxy's shape -----------------------------------------------------------------------

def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(ErrorBody(error=message), status_code=status, headers=headers or {})


def domain_error(_: Request, exc: DomainError) -> Response:
    status = next((v for k, v in ERRORS.items() if isinstance(exc, k)), 500)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, LimitReached | Unavailable) else {}
    return error_response(status, "Task not found" if isinstance(exc, NotFound) else exc.message, headers)


def validation_error(_: Request, exc: ValidationException) -> Response:
    problems = [f"{item.get('key')}: {item.get('message', '')}" if item.get("key") not in (None, "data")
                else item.get("message", "") for item in exc.extra or [] if isinstance(item, dict)]
    return error_response(400, "; ".join(problems) or str(exc.detail))


def http_error(_: Request, exc: HTTPException) -> Response:
    message = "Not found" if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, message, dict(exc.headers or {}))


def broker_error(_: Request, __: BrokerUnavailable) -> Response:
    return error_response(503, "the message broker is unreachable; nothing was accepted", {"Retry-After": "5"})


def storage_error(_: Request, exc: OSError) -> Response:
    return error_response(503, f"cannot write to the data directory ({exc.strerror or exc})", {"Retry-After": "30"})


def internal_error(request: Request, _: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return error_response(500, "internal error; it has been logged")


EXCEPTION_HANDLERS = {DomainError: domain_error, ValidationException: validation_error, HTTPException: http_error,
                      BrokerUnavailable: broker_error, OSError: storage_error, Exception: internal_error}
WHY = {400: "A field is wrong (`Prompt is required`, a size below 8...); the message names it",
       401: "The Darkroom key sent is not valid (or none was sent from outside loopback)",
       404: "No such task for this caller", 413: "The request body is too large",
       429: "A rate limit or quota was reached; see Retry-After",
       501: "Not built in Darkroom: the proxy forwarded this to Chutes",
       503: "The broker or the data directory is unavailable; nothing was accepted"}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    return {code: ResponseSpec(data_container=ErrorBody, description=WHY[code]) for code in (401, *codes)}


# -- routes ---------------------------------------------------------------------------------------------


class ChutesRoutes(Controller):
    """The Chutes proxy's API: point its Bruno collection's `baseUrl` at `<darkroom>/chutes`."""

    path = "/chutes"
    tags = ["chutes"]
    dependencies = {"principal": Provide(provide_caller)}
    exception_handlers = EXCEPTION_HANDLERS
    # No credentials are needed from loopback (anonymous); elsewhere, and to act as a key, these.
    security = [{"bearer": []}, {"apiKey": []}]

    @post("/generate", status_code=202, summary="Queue an image (Chutes proxy)", responses=errors(400, 413, 429, 503))
    async def generate(self, principal: DialectCaller, bus: BusDep, files: FilesDep, limits: LimitsDep,
                       idempotency: IdempotencyDep, catalog: CatalogDep, config: ConfigDep, layout: LayoutDep,
                       data: JSONBody[GenerateBody | None] = None) -> Queued:
        doc, _ = await jobs.submit_job(job_request(data or GenerateBody(), catalog), principal, bus=bus, files=files, limits=limits,
                                       idempotency=idempotency, catalog=catalog, settings=config, layout=layout)
        return Queued(id=doc.id, status=STATUSES[doc.status], message="Task queued successfully")

    @get("/status/{task_id:str}", summary="One task (Chutes proxy)", responses=errors(404))
    async def task(self, principal: DialectCaller, files: FilesDep, task_id: FromPath[str]) -> Task:
        return await asyncio.to_thread(read_task, files, task_id, principal)

    @get("/status", summary="The caller's tasks, newest first, optionally of one status (Chutes proxy)",
         responses=errors(400, 503))
    async def tasks(self, principal: DialectCaller, files: FilesDep, readside: ReadSideDep,
                    status: Annotated[str | None, QueryParameter(required=False)] = None) -> list[Task]:
        if status is not None and status not in FILTERS:
            raise Invalid(f"status must be one of {', '.join(FILTERS)}, got {status!r}")
        rows: list[JobSummary] = []
        for ours in FILTERS[status] if status else (None,):
            rows += (await jobs.list_jobs(principal, readside=readside, status=ours, limit=LIST_MAX)).jobs
        rows = sorted(rows, key=lambda row: (row.created_at, row.id), reverse=True)[:LIST_MAX]
        return await asyncio.to_thread(lambda: [summary_task(row, files, principal) for row in rows])

    @post("/cleanup", status_code=200, summary="Fail the caller's tasks stuck longer than timeoutMinutes",
          responses=errors(400, 503))
    async def cleanup(self, principal: DialectCaller, bus: BusDep, files: FilesDep,
                      data: JSONBody[CleanupBody | None] = None) -> Cleaned:
        minutes = (data or CleanupBody()).timeoutMinutes
        ids = await cancel_idle(principal, minutes * 60, bus=bus, files=files)
        return Cleaned(message=f"Cleaned up {len(ids)} task(s) stuck for more than {minutes:g} minutes",
                       cleanedCount=len(ids), cleanedIds=ids)

    # One handler per path: a handler with several paths lists them in the OpenAPI schema in an
    # order that changes from process to process, and generated clients must not churn.
    @post("/edit", status_code=501, summary="Not built: image editing (Chutes proxy)", responses=errors(501))
    async def edit_not_built(self, principal: DialectCaller) -> Response[ErrorBody]:
        return not_built("/edit")

    @post("/generate-video", status_code=501, summary="Not built: video generation (Chutes proxy)",
          responses=errors(501))
    async def generate_video_not_built(self, principal: DialectCaller) -> Response[ErrorBody]:
        return not_built("/generate-video")

    @post("/analyze-image", status_code=501, summary="Not built: image analysis (Chutes proxy)",
          responses=errors(501))
    async def analyze_image_not_built(self, principal: DialectCaller) -> Response[ErrorBody]:
        return not_built("/analyze-image")


def not_built(path: str) -> Response[ErrorBody]:
    return error_response(501, f"{NOT_BUILT[path]} is not available in Darkroom's Chutes dialect: Darkroom generates "
                               f"images only (use POST /chutes/generate, or /v1/jobs with init_image for edits)")
