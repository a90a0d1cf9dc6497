"""The unofficial weights.gg API under /weights, for the bots and libraries written against it.

A translation layer only: /generateImage and /generateImageJob become the native `JobRequest`
(`loraName` becomes one of its `loras`, its first trigger word put before the prompt, as the seed
did; `spaceId` becomes its `session`), go through `jobs.submit_job` and the durable queue, and
answer at once; clients then poll /status/{imageId} (every 100 ms) and fetch `imageUrl` without a
key (a chat embeds it), which serves the latest preview while the job runs and the image as JPEG
once it completed. The imageId is the job id, a random UUID: unguessable, so it is the only
credential the image needs. "Spaces" are Darkroom sessions. Mapping tables are the constants below;
docs/dialects/weights.md has them as a table.
"""

from __future__ import annotations

import asyncio
import io
import secrets
from datetime import datetime
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, QueryParameter
from PIL import Image

from schemas.api import JobRequest
from schemas.catalog import Catalog
from schemas.jobs import JobDocument, JobStatus
from schemas.library import SessionBody, SessionLora
from schemas.settings import Settings
from services.bus import BrokerUnavailable
from services.ingress.auth import KeyStore, Principal, authenticate, token_from
from services.ingress.dialects.common import AnonymousCaller, DialectCaller, is_loopback
from services.ingress.domain import jobs, loras, queue, sessions, shared
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
from services.ingress.routes.common import (
    BusDep,
    CatalogDep,
    ConfigDep,
    FilesDep,
    IdempotencyDep,
    LayoutDep,
    LimitsDep,
)
from services.ingress.routes.library import LIBRARY, LibraryDep

log = structlog.get_logger("ingress")

# -- mapping tables ------------------------------------------------------------------------------------

# Our job status -> the status weights.gg reports. A cancelled job reads FAILED: its clients poll
# until COMPLETED or FAILED and nothing else, so anything that will never complete must be FAILED.
STATUSES: dict[JobStatus, str] = {"pending": "QUEUED", "processing": "PROCESSING", "completed": "COMPLETED",
                                  "failed": "FAILED", "cancelled": "FAILED"}
# A processing job's phase (our `progress` flags) -> a finer weights.gg status: STARTING until it
# draws, PENDING while it draws (weights.gg's state while previews come), PROCESSING while saving.
PHASES: dict[str, str] = {"preparing": "STARTING", "loading_model": "STARTING", "generating": "PENDING",
                          "saving": "PROCESSING"}
# A completed job whose image is gone (deleted, or expired by DARKROOM_IMAGE_TTL).
GONE = "NOT_FOUND"
# Our quota names -> weights.gg's.
QUOTA_NAMES: dict[str, str] = {"queued_jobs": "QUEUED_IMAGE_JOBS", "daily_images": "DAILY_IMAGE_CREATIONS",
                               "hourly_requests": "HOURLY_IMAGE_REQUESTS"}
# Our domain errors -> (HTTP status, weights.gg's error text, whether our message goes in `details`).
ERRORS: dict[type[DomainError], tuple[int, str, bool]] = {
    Invalid: (400, "Validation error", True),
    TooLarge: (413, "Validation error", True),
    Unauthenticated: (401, "Invalid or missing API key.", False),
    Forbidden: (403, "Forbidden", True),
    NotFound: (404, "Image not found", False),
    Conflict: (409, "Conflict", True),
    LimitReached: (429, "Server is busy. Please try again later.", False),
    Unavailable: (503, "Service unavailable", True),
}
# What weights.gg clients send as x-api-key when the user set none (str(None), JSON's null, JS's undefined).
NO_KEY = frozenset({"", "None", "null", "undefined"})
MIN_PROMPT = 10  # weights.gg refuses shorter prompts
SEARCH_LIMIT = 20
JPEG_QUALITY = 92

# -- wire types ----------------------------------------------------------------------------------------


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every weights.gg error answer."""

    error: str
    details: list[str] | None = None


class Health(msgspec.Struct, kw_only=True):
    status: str = "OK"


class Generated(msgspec.Struct, kw_only=True, omit_defaults=True):
    """/generateImage and /generateImageJob: the job was queued; poll `statusUrl`, fetch `imageUrl`."""

    success: bool
    imageId: str
    imageUrl: str
    statusUrl: str
    spaceId: str | None = None


class ImageStatus(msgspec.Struct, kw_only=True):
    """/status/{imageId}. Times are epoch milliseconds; `lastModifiedDate` changes with each update."""

    status: str
    prompt: str
    startTime: int
    lastModifiedDate: int
    error: str | None = None
    spaceId: str | None = None


class LoraHit(msgspec.Struct, kw_only=True):
    """One /search-loras result. `image` is its preview (GET it with a key), null without one."""

    name: str
    image: str | None
    tags: list[str]


class Space(msgspec.Struct, kw_only=True):
    success: bool
    spaceId: str


class Success(msgspec.Struct, kw_only=True):
    success: bool


class QuotaAnswer(msgspec.Struct, kw_only=True):
    """/quota: usage, limits and what remains, by weights.gg's names; unlimited reads "Infinity"."""

    isPremium: bool
    usage: dict[str, int]
    limits: dict[str, int | str]
    remaining: dict[str, int | str]


# -- translation -------------------------------------------------------------------------------------

def check_prompt(prompt: str | None) -> str:
    if prompt is None or len(prompt.strip()) < MIN_PROMPT:
        raise Invalid("Prompt is too short")
    return prompt


def status_of(doc: JobDocument, image_there: bool) -> str:
    if doc.status == "completed" and not image_there:
        return GONE
    if doc.status != "processing":
        return STATUSES[doc.status]
    phase = next((name for name in PHASES if getattr(doc.progress, name)), None)
    return PHASES[phase] if phase else STATUSES["processing"]


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def image_status(doc: JobDocument, image_there: bool) -> ImageStatus:
    error = None
    if doc.status == "failed":
        error = doc.error or doc.message
    elif doc.status == "cancelled":
        error = doc.message or "cancelled"
    return ImageStatus(status=status_of(doc, image_there), prompt=doc.original_prompt or doc.prompt,
                       startTime=_ms(doc.started_at or doc.created_at), lastModifiedDate=_ms(doc.updated_at),
                       error=error, spaceId=doc.applied.session if doc.applied else None)


def quota_answer(quota: Any) -> QuotaAnswer:
    def rename(values: dict[str, Any]) -> dict[str, Any]:
        return {QUOTA_NAMES.get(name, name.upper()): value for name, value in values.items()}

    return QuotaAnswer(isPremium=quota.is_premium, usage=rename(quota.usage), limits=rename(quota.limits),
                       remaining=rename(quota.remaining))


def lora_for(library, name: str) -> tuple[str, str | None]:
    """(library name, first trigger word) of `loraName`: the LoRA of that name, else the best match
    of a search, as the seed searched weights.gg; Invalid if nothing matches."""
    try:
        info = loras.lora_info(library, name)
        return info.name, (info.trigger_words or [None])[0]
    except NotFound:
        pass
    page = loras.search_loras(library, search=name, limit=1)
    if not page.loras:
        raise Invalid(f"loraName: no LoRA matches {name!r}")
    best = page.loras[0]
    return best.name, (best.trigger_words or [None])[0]


def job_request(prompt: str, lora: tuple[str, str | None] | None, space: str | None) -> JobRequest:
    loras_in, text = [], prompt
    if lora is not None:
        name, trigger = lora
        loras_in = [{"name": name}]
        text = f"{trigger}, {prompt}" if trigger else prompt
    try:
        return msgspec.convert({"prompt": text, "loras": loras_in, "session": space}, JobRequest)
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc).replace("$.", "")) from None


def to_jpeg(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()


# -- who is calling ------------------------------------------------------------------------------------

def weights_caller(request: Request, settings: Settings, keys: KeyStore) -> Principal:
    """A Darkroom key in x-api-key (or Bearer); without one (or with weights.gg's `None`/`null`),
    anonymous from loopback unless DARKROOM_DIALECT_ANONYMOUS=off."""
    ip = request.client.host if request.client else "unknown"
    token = token_from(request.headers)
    if token is not None and token.strip() in NO_KEY:
        token = None
    if token or settings.auth == "off":
        return authenticate(settings, keys, token, ip)
    if settings.dialect_anonymous == "loopback" and is_loopback(ip):
        return AnonymousCaller(key=None, ip=ip)
    raise Unauthenticated("missing API key")


async def provide_weights_caller(request: Request, config: NamedDependency[Settings],
                                 keys: NamedDependency[KeyStore]) -> Principal:
    return weights_caller(request, config, keys)


# -- errors in weights.gg's shape ----------------------------------------------------------------------

def error_response(status: int, error: str, details: list[str] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    return Response(ErrorBody(error=error, details=details), status_code=status, headers=headers or {})


def domain_error(_: Request, exc: DomainError) -> Response:
    status, error, with_details = next((v for k, v in ERRORS.items() if isinstance(exc, k)),
                                       (500, "Internal error", False))
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, LimitReached | Unavailable) else {}
    return error_response(status, error, [exc.message] if with_details else None, headers)


def validation_error(_: Request, exc: ValidationException) -> Response:
    problems = [f"{item.get('key')}: {item.get('message', '')}" if item.get("key") else item.get("message", "")
                for item in exc.extra or [] if isinstance(item, dict)]
    return error_response(400, "Validation error", problems or [str(exc.detail)])


def http_error(_: Request, exc: HTTPException) -> Response:
    error = "Not found" if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, error, headers=dict(exc.headers or {}))


def broker_error(_: Request, __: BrokerUnavailable) -> Response:
    return error_response(503, "Service unavailable", ["the message broker is unreachable; nothing was accepted"],
                          {"Retry-After": "5"})


def storage_error(_: Request, exc: OSError) -> Response:
    return error_response(503, "Service unavailable", [f"cannot write to the data directory ({exc.strerror or exc})"],
                          {"Retry-After": "30"})


def internal_error(request: Request, _: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return error_response(500, "Internal error")


EXCEPTION_HANDLERS = {DomainError: domain_error, ValidationException: validation_error, HTTPException: http_error,
                      BrokerUnavailable: broker_error, OSError: storage_error, Exception: internal_error}
WHY = {400: "Validation error: `details` says what (a prompt under 10 characters, an unknown LoRA...)",
       401: "x-api-key is not a valid Darkroom key (or it is missing and the caller is not on loopback)",
       404: "No such image (or space) for this caller", 409: "The caller holds as many spaces as it may",
       413: "The request is too large",
       429: "Server is busy: the queue or rate limit is full; see Retry-After",
       503: "The broker or the data directory is unavailable; nothing was accepted"}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    return {code: ResponseSpec(data_container=ErrorBody, description=WHY[code]) for code in (401, *codes)}


SUBMIT_ERRORS = errors(400, 404, 413, 429, 503)

# -- routes ---------------------------------------------------------------------------------------------


class WeightsRoutes(Controller):
    """The unofficial weights.gg API: point its clients' endpoint at `<darkroom>/weights`."""

    path = "/weights"
    tags = ["weights"]
    dependencies = {"principal": Provide(provide_weights_caller), **LIBRARY}
    exception_handlers = EXCEPTION_HANDLERS
    security = [{"apiKey": []}]

    @staticmethod
    def _generated(request: Request, doc: JobDocument, space: str | None) -> Generated:
        base = f"{str(request.base_url).rstrip('/')}/weights"
        return Generated(success=True, imageId=doc.id, imageUrl=f"{base}/{doc.id}.jpg",
                         statusUrl=f"{base}/status/{doc.id}", spaceId=space)

    @staticmethod
    async def _submit(body: JobRequest, principal, *, bus, files, limits, idempotency, catalog: Catalog,
                      config: Settings, layout) -> JobDocument:
        doc, _ = await jobs.submit_job(body, principal, bus=bus, files=files, limits=limits, idempotency=idempotency,
                                       catalog=catalog, settings=config, layout=layout)
        return doc

    @get("/health", summary="Is the server up (weights.gg): {\"status\": \"OK\"}; needs no key")
    async def health(self) -> Health:
        return Health()

    @get("/generateImage", summary="Queue an image (weights.gg)", responses=SUBMIT_ERRORS)
    async def generate_image(self, request: Request, principal: DialectCaller, bus: BusDep, files: FilesDep,
                             limits: LimitsDep, idempotency: IdempotencyDep, catalog: CatalogDep, config: ConfigDep,
                             layout: LayoutDep, library: LibraryDep,
                             prompt: Annotated[str | None, QueryParameter(required=False)] = None,
                             loraName: Annotated[str | None, QueryParameter(required=False)] = None) -> Generated:
        text = check_prompt(prompt)
        lora = await asyncio.to_thread(lora_for, library, loraName) if loraName else None
        doc = await self._submit(job_request(text, lora, None), principal, bus=bus, files=files, limits=limits,
                                 idempotency=idempotency, catalog=catalog, config=config, layout=layout)
        return self._generated(request, doc, None)

    @get("/generateImageJob", summary="Queue an image in a space (weights.gg, older API)", responses=SUBMIT_ERRORS)
    async def generate_image_job(self, request: Request, principal: DialectCaller, bus: BusDep, files: FilesDep,
                                 limits: LimitsDep, idempotency: IdempotencyDep, catalog: CatalogDep,
                                 config: ConfigDep, layout: LayoutDep,
                                 prompt: Annotated[str | None, QueryParameter(required=False)] = None,
                                 spaceId: Annotated[str | None, QueryParameter(required=False)] = None,
                                 ) -> Generated:
        text = check_prompt(prompt)
        space = await self._space(spaceId, principal, layout)
        doc = await self._submit(job_request(text, None, space), principal, bus=bus, files=files, limits=limits,
                                 idempotency=idempotency, catalog=catalog, config=config, layout=layout)
        return self._generated(request, doc, space)

    @staticmethod
    async def _space(space_id: str | None, principal, layout) -> str:
        if not space_id:
            raise Invalid("spaceId is required")
        try:
            return (await sessions.get_session(space_id, principal, layout=layout)).id
        except (NotFound, Invalid):
            raise _SpaceNotFound(f"space {space_id!r} not found") from None

    @get("/status/{image_id:str}", summary="Status of an image (weights.gg)", responses=errors(404))
    async def status(self, principal: DialectCaller, files: FilesDep, image_id: FromPath[str]) -> ImageStatus:
        doc = await asyncio.to_thread(jobs.read_job, files, image_id, principal)
        there = doc.status != "completed" or bool(await asyncio.to_thread(shared.image_path, doc, files))
        return image_status(doc, there)

    @get("/search-loras", summary="Search the LoRA library (weights.gg)", responses=errors(400, 503))
    async def search_loras(self, request: Request, principal: DialectCaller, library: LibraryDep,
                           search: Annotated[str | None, QueryParameter(query="query", required=False)] = None,
                           ) -> list[LoraHit]:
        if not search:
            raise Invalid("query: the query parameter is required")
        page = await asyncio.to_thread(loras.search_loras, library, search=search, limit=SEARCH_LIMIT)
        base = str(request.base_url).rstrip("/")
        return [LoraHit(name=hit.name, image=f"{base}{hit.preview_url}" if hit.preview_url else None, tags=hit.tags)
                for hit in page.loras]

    @get("/quota", summary="The caller's quota (weights.gg)", responses=errors())
    async def quota(self, principal: DialectCaller, limits: LimitsDep) -> QuotaAnswer:
        return quota_answer(await queue.quota(principal, limits=limits))

    @get("/allocateSpace", summary="Allocate a space: a new session (weights.gg, older API)", responses=errors(400, 409))
    async def allocate_space(self, principal: DialectCaller, layout: LayoutDep, catalog: CatalogDep) -> Space:
        space_id = f"space-{secrets.token_hex(8)}"
        await sessions.put_session(space_id, SessionBody(), principal, layout=layout, catalog=catalog)
        return Space(success=True, spaceId=space_id)

    @get("/addLora", summary="Add a LoRA to a space (weights.gg, older API)", responses=errors(400, 404))
    async def add_lora(self, principal: DialectCaller, layout: LayoutDep, library: LibraryDep,
                       loraName: Annotated[str | None, QueryParameter(required=False)] = None,
                       spaceId: Annotated[str | None, QueryParameter(required=False)] = None,
                       ) -> Success:
        if not loraName:
            raise Invalid("loraName is required")
        space = await self._space(spaceId, principal, layout)
        name, _ = await asyncio.to_thread(lora_for, library, loraName)
        await sessions.add_lora(space, SessionLora(name=name), principal, layout=layout)
        return Success(success=True)

    @get("/removeLora", summary="Remove the LoRAs of a space (weights.gg, older API)", responses=errors(400, 404))
    async def remove_lora(self, principal: DialectCaller, layout: LayoutDep,
                          spaceId: Annotated[str | None, QueryParameter(required=False)] = None,
                          ) -> Success:
        space = await self._space(spaceId, principal, layout)
        await sessions.clear_loras(space, principal, layout=layout)
        return Success(success=True)

    @get("/{image_file:str}", summary="The image (JPEG): the latest preview while it runs; no key needed",
         media_type="image/jpeg",
         responses={200: ResponseSpec(data_container=bytes, media_type="image/jpeg", description="The image as JPEG"),
                    404: ResponseSpec(data_container=ErrorBody, description="No such image, or none yet")})
    async def image(self, files: FilesDep, image_file: FromPath[str]) -> Response[bytes]:
        job_id = image_file.removesuffix(".jpg")
        png = await asyncio.to_thread(shared.image_or_preview, job_id, files=files)
        return Response(await asyncio.to_thread(to_jpeg, png), media_type="image/jpeg",
                        headers={"Cache-Control": "no-store"})


class _SpaceNotFound(NotFound):
    pass


def _space_missing(_: Request, exc: _SpaceNotFound) -> Response:
    return error_response(404, "Space not found", [exc.message])


EXCEPTION_HANDLERS[_SpaceNotFound] = _space_missing
