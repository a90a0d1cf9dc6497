"""OpenAI's Images API under /openai/v1: generations, edits, variations and models, answered in
OpenAI's shapes (errors as `{"error": {"message", "type", "param", "code"}}`).

A translation layer only: each request becomes the native `JobRequest`, goes through
`jobs.submit_job` and the same durable queue, and is held until the job ends (OpenAI's calls are
synchronous), at most DARKROOM_DIALECT_WAIT seconds; the job goes on after that. Mapping tables
are the constants below; docs/dialects/openai.md says what is not supported.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import structlog
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import Provide
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body, JSONBody
from PIL import Image

from schemas.api import JobRequest
from schemas.catalog import Catalog, ModelEntry
from schemas.jobs import JobDocument, JobStatus
from schemas.layout import DataLayout
from schemas.settings import Settings
from services.bus import BrokerUnavailable
from services.ingress.auth import Principal
from services.ingress.dialects.common import DialectCaller, b64, provide_caller
from services.ingress.domain import jobs
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
from services.ingress.domain.pnginfo import read_png_info
from services.ingress.domain.waiting import StillRunning, image_bytes, wait_for_job
from services.ingress.idempotency import IdempotencyStore
from services.ingress.images import load_image
from services.ingress.limits import Limits
from services.ingress.routes.common import (
    BusDep,
    CatalogDep,
    ConfigDep,
    FilesDep,
    IdempotencyDep,
    LayoutDep,
    LimitsDep,
)

log = structlog.get_logger("ingress")

# -- mapping tables ------------------------------------------------------------------------------------

ALIASES = ("dall-e-2", "dall-e-3", "gpt-image-1")
# The sizes each alias accepts (OpenAI refuses others); a catalog model's id accepts any WxH.
SIZES: dict[str, tuple[str, ...]] = {
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "gpt-image-1": ("auto", "1024x1024", "1536x1024", "1024x1536"),
}
DEFAULT_SIZE = "1024x1024"  # OpenAI's default for every alias; "auto" is the model's own size
MAX_N = {"dall-e-3": 1}  # OpenAI allows only n=1 there; elsewhere our limit of 8 applies
MAX_IMAGES = 8
# quality -> a factor on the model's default steps (capped at its limit)
QUALITY_STEPS: dict[str, float] = {"standard": 1.0, "hd": 1.5, "low": 0.5, "medium": 1.0, "high": 1.5, "auto": 1.0}
# style -> a Darkroom style template (None: the prompt as written)
STYLES: dict[str, str | None] = {"vivid": "enhance", "natural": None}
RESPONSE_FORMATS = ("b64_json", "url")
_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})", re.ASCII)
# Variations have no prompt: the image's own embedded prompt if it has one, else this.
VARIATION_PROMPT = "a variation of this image"
# Our domain errors -> (HTTP status, OpenAI error type, code)
ERRORS: dict[type[DomainError], tuple[int, str, str | None]] = {
    Invalid: (400, "invalid_request_error", None),
    TooLarge: (400, "invalid_request_error", "image_too_large"),
    Unauthenticated: (401, "invalid_request_error", "invalid_api_key"),
    Forbidden: (403, "invalid_request_error", "forbidden"),
    NotFound: (404, "invalid_request_error", "not_found"),
    Conflict: (409, "invalid_request_error", "conflict"),
    LimitReached: (429, "requests", "rate_limit_exceeded"),
    Unavailable: (503, "server_error", "service_unavailable"),
    StillRunning: (408, "timeout", "job_still_running"),
}
# How an ended job answers: None for success, else (status, type, code).
OUTCOMES: dict[JobStatus, tuple[int, str, str] | None] = {
    "completed": None,
    "failed": (500, "server_error", "generation_failed"),
    "cancelled": (409, "invalid_request_error", "job_cancelled"),
    # Not ended: only seen if a wait returned early, which it does not; answered as a timeout.
    "pending": (408, "timeout", "job_still_running"),
    "processing": (408, "timeout", "job_still_running"),
}
# Our field names (as domain errors name them) -> OpenAI's parameter names.
PARAMS = {"settings.num_images": "n", "settings.width": "size", "settings.height": "size",
          "settings.num_inference_steps": "quality", "init_image": "image", "mask_image": "mask", "model": "model",
          "prompt": "prompt", "style": "style", "loras": "prompt", "image": "image", "mask": "mask"}


# -- wire types ----------------------------------------------------------------------------------------

class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every OpenAI error answer."""

    error: ErrorDetail


class GenerateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /openai/v1/images/generations (OpenAI refuses arguments it does not know, and so do we)."""

    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    style: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    user: str | None = None
    # gpt-image-1's output options: only what Darkroom does (PNG, opaque, no streaming) is accepted.
    background: str | None = None
    moderation: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    partial_images: int | None = None
    stream: bool | None = None


@dataclass
class EditForm:
    """POST /openai/v1/images/edits (multipart): one image; transparent pixels of `mask` (or of
    the image, without a mask) are repainted."""

    image: UploadFile
    prompt: str
    mask: UploadFile | None = None
    model: str | None = None
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None
    user: str | None = None


@dataclass
class VariationForm:
    """POST /openai/v1/images/variations (multipart)."""

    image: UploadFile
    model: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: str | None = None
    user: str | None = None


class ImageData(msgspec.Struct, kw_only=True, omit_defaults=True):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(msgspec.Struct, kw_only=True):
    created: int
    data: list[ImageData]
    size: str
    output_format: str = "png"


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "darkroom"


class ModelList(msgspec.Struct, kw_only=True):
    data: list[Model]
    object: str = "list"


# -- translation -------------------------------------------------------------------------------------

class _Refused(Invalid):
    """An OpenAI argument Darkroom cannot honour; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def alias_table(settings: Settings, catalog: Catalog) -> dict[str, str]:
    """OpenAI model name -> catalog model id: DARKROOM_OPENAI_MODELS, else the default model."""
    table = dict.fromkeys(ALIASES, catalog.default)
    for pair in filter(None, (p.strip() for p in settings.openai_models.split(","))):
        alias, _, model = pair.partition("=")
        if model.strip() in catalog.models:
            table[alias.strip()] = model.strip()
    return table


def _model(name: str | None, settings: Settings, catalog: Catalog) -> tuple[str, ModelEntry]:
    aliases = alias_table(settings, catalog)
    alias = name or "dall-e-2"
    if alias in catalog.models:
        return alias, catalog.models[alias]
    if alias not in aliases:
        raise _Refused("model", f"The model `{alias}` does not exist; use one of: "
                                f"{', '.join([*aliases, *sorted(catalog.models)])}")
    return alias, catalog.models[aliases[alias]]


def _size(size: str | None, alias: str, entry: ModelEntry) -> tuple[int, int] | None:
    """(width, height) within the model's limits (scaled down, aspect kept, multiples of 8); None:
    the model's own (or the input image's) size."""
    allowed = SIZES.get(alias)
    size = size or (DEFAULT_SIZE if allowed else None)
    if size is None or size == "auto":
        if allowed is not None and size not in allowed:
            raise _Refused("size", f"'{size}' is not one of {list(allowed)} - 'size'")
        return None
    if allowed is not None and size not in allowed:
        raise _Refused("size", f"'{size}' is not one of {list(allowed)} - 'size'")
    match = _SIZE.fullmatch(size)
    if match is None or int(match.group(1)) < 8 or int(match.group(2)) < 8:
        raise _Refused("size", f"size must look like 1024x1024, got {size!r}")
    w, h = int(match.group(1)), int(match.group(2))
    scale = min(1.0, entry.limits.max_width / w, entry.limits.max_height / h)
    return max(8, int(w * scale) // 8 * 8), max(8, int(h * scale) // 8 * 8)


def _common(alias: str, entry: ModelEntry, n: int | None, size: str | None, quality: str | None,
            response_format: str | None) -> dict[str, Any]:
    if response_format is not None and response_format not in RESPONSE_FORMATS:
        raise _Refused("response_format", f"response_format must be one of {list(RESPONSE_FORMATS)}")
    count = 1 if n is None else n
    if not 1 <= count <= MAX_N.get(alias, MAX_IMAGES):
        raise _Refused("n", f"n must be between 1 and {MAX_N.get(alias, MAX_IMAGES)} for {alias}, got {count}")
    settings: dict[str, Any] = {"num_images": count}
    dims = _size(size, alias, entry)
    if dims is not None:
        settings["width"], settings["height"] = dims
    if quality is not None:
        if quality not in QUALITY_STEPS:
            raise _Refused("quality", f"quality must be one of {list(QUALITY_STEPS)}, got {quality!r}")
        steps = round(entry.defaults.num_inference_steps * QUALITY_STEPS[quality])
        settings["num_inference_steps"] = max(1, min(entry.limits.max_steps, steps))
    return settings


def generation_request(body: GenerateRequest, settings: Settings, catalog: Catalog) -> JobRequest:
    alias, entry = _model(body.model, settings, catalog)
    for param, value, allowed in (("background", body.background, (None, "auto", "opaque")),
                                  ("output_format", body.output_format, (None, "png")),
                                  ("stream", body.stream, (None, False)),
                                  ("partial_images", body.partial_images, (None, 0)),
                                  ("output_compression", body.output_compression, (None, 100))):
        if value not in allowed:
            raise _Refused(param, f"{param}={value!r} is not supported by Darkroom (PNG, opaque, not streamed)")
    if body.style is not None and body.style not in STYLES:
        raise _Refused("style", f"style must be one of {list(STYLES)}, got {body.style!r}")
    request = {"prompt": body.prompt, "model": entry.id, "style": STYLES.get(body.style or "natural"),
               "settings": _common(alias, entry, body.n, body.size, body.quality, body.response_format)}
    return _convert(request)


def _convert(request: dict[str, Any]) -> JobRequest:
    try:
        return msgspec.convert(request, JobRequest)
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc).replace("$.", "")) from None


async def _upload(upload: UploadFile, param: str, settings: Settings) -> bytes:
    data = await upload.read()
    if not data:
        raise _Refused(param, f"{param} is empty")
    if len(data) > settings.max_body_bytes:
        raise _Refused(param, f"{param} is larger than the limit")
    return data


def _alpha_mask(data: bytes, param: str, entry: ModelEntry) -> bytes | None:
    """Our mask (white = repaint) from OpenAI's (transparent = repaint); None if nothing is transparent."""
    rgba = load_image(param, data, mode="RGBA", max_width=entry.limits.max_width, max_height=entry.limits.max_height)
    with Image.open(io.BytesIO(rgba.png)) as image:
        alpha = image.getchannel("A")
        if alpha.getextrema()[0] >= 128:
            return None
        mask = alpha.point(lambda a: 255 if a < 128 else 0)
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        return buffer.getvalue()


async def edit_request(form: EditForm, settings: Settings, catalog: Catalog) -> JobRequest:
    alias, entry = _model(form.model, settings, catalog)
    image = await _upload(form.image, "image", settings)
    mask = _alpha_mask(await _upload(form.mask, "mask", settings), "mask", entry) if form.mask else \
        _alpha_mask(image, "image", entry)
    if form.mask is not None and mask is None:
        raise _Refused("mask", "mask has no transparent pixels: transparent areas mark what to edit")
    request = {"prompt": form.prompt, "model": entry.id, "init_image": b64(image),
               "settings": _common(alias, entry, form.n, form.size, form.quality, form.response_format)}
    if mask is not None:
        request["mask_image"] = b64(mask)
    return _convert(request)


async def variation_request(form: VariationForm, settings: Settings, catalog: Catalog) -> JobRequest:
    alias, entry = _model(form.model, settings, catalog)
    image = await _upload(form.image, "image", settings)
    prompt = read_png_info(image).parsed.get("Prompt") or VARIATION_PROMPT
    return _convert({"prompt": prompt[:settings.max_prompt_length], "model": entry.id, "init_image": b64(image),
                     "settings": _common(alias, entry, form.n, form.size, None, form.response_format)})


def images_response(doc: JobDocument, found: list[tuple[str, bytes]], response_format: str | None,
                    base_url: str) -> ImagesResponse:
    if response_format == "url":
        data = [ImageData(url=f"{base_url}/v1/images/{image_id}", revised_prompt=doc.prompt) for image_id, _ in found]
    else:
        data = [ImageData(b64_json=b64(png), revised_prompt=doc.prompt) for _, png in found]
    return ImagesResponse(created=int(doc.created_at.timestamp()), data=data,
                          size=f"{doc.settings.width}x{doc.settings.height}")


# -- errors in OpenAI's shape ---------------------------------------------------------------------------

def _param(exc: DomainError) -> str | None:
    if isinstance(exc, _Refused):
        return exc.param
    message = exc.message
    return next((param for field, param in PARAMS.items() if message.startswith(field)), None)


def error_response(status: int, kind: str, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = ErrorBody(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return Response(body, status_code=status, headers=headers or {})


def domain_error(_: Request, exc: DomainError) -> Response:
    status, kind, code = next((v for k, v in ERRORS.items() if isinstance(exc, k)), (500, "server_error", None))
    headers = {}
    if isinstance(exc, LimitReached | Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, StillRunning):
        headers["x-should-retry"] = "false"  # a retry would queue the same work again
    return error_response(status, kind, exc.message, param=_param(exc), code=code, headers=headers)


def validation_error(_: Request, exc: ValidationException) -> Response:
    problems, param = [], None
    for item in exc.extra or []:
        if isinstance(item, dict):
            key, message = item.get("key"), item.get("message", "")
            param = param or (key if key and key != "data" else None)
            problems.append(f"{key}: {message}" if key and key != "data" else message)
    message = "; ".join(problems) or str(exc.detail)
    if "unknown field" in message:
        message = f"Unrecognized request argument supplied: {message.split('`')[1]}" if "`" in message else message
    return error_response(400, "invalid_request_error", message, param=param)


def http_error(request: Request, exc: HTTPException) -> Response:
    message = str(exc.detail)
    if exc.status_code == 413:
        message = f"the request body is over the limit of {request.app.state.config.max_body_bytes} bytes"
    return error_response(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error",
                          message, headers=dict(exc.headers or {}))


def broker_error(_: Request, __: BrokerUnavailable) -> Response:
    return error_response(503, "server_error", "the message broker is unreachable; nothing was accepted",
                          code="service_unavailable", headers={"Retry-After": "5"})


def storage_error(_: Request, exc: OSError) -> Response:
    return error_response(503, "server_error", f"cannot write to the data directory ({exc.strerror or exc})",
                          code="service_unavailable", headers={"Retry-After": "30"})


def undecodable_form(_: Request, __: UnicodeDecodeError) -> Response:
    """Litestar's multipart parser raises this for a text field that is not UTF-8."""
    return error_response(400, "invalid_request_error", "a form field that should be text is not UTF-8")


def internal_error(request: Request, _: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return error_response(500, "server_error", "internal error; it has been logged")


EXCEPTION_HANDLERS = {DomainError: domain_error, ValidationException: validation_error, HTTPException: http_error,
                      BrokerUnavailable: broker_error, OSError: storage_error, UnicodeDecodeError: undecodable_form,
                      Exception: internal_error}
WHY = {400: "A parameter is wrong or not supported; `param` names it", 401: "No or an invalid key",
       404: "No such model", 408: "The job did not end within DARKROOM_DIALECT_WAIT; it goes on",
       409: "The job was cancelled", 413: "The request body is too large",
       429: "A rate limit or quota was reached", 503: "The broker or the data directory is unavailable"}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    return {code: ResponseSpec(data_container=ErrorBody, description=WHY[code]) for code in (401, *codes)}


# -- routes ---------------------------------------------------------------------------------------------

class OpenAIRoutes(Controller):
    """OpenAI's Images API: point the `openai` SDK's `base_url` at `<darkroom>/openai/v1`."""

    path = "/openai/v1"
    tags = ["openai"]
    dependencies = {"principal": Provide(provide_caller)}
    exception_handlers = EXCEPTION_HANDLERS
    security = [{"bearer": []}]

    @staticmethod
    async def _run(request: Request, body: JobRequest, response_format: str | None, principal: Principal, *,
                   bus: BusLink, files: JobFiles, limits: Limits, idempotency: IdempotencyStore, catalog: Catalog,
                   config: Settings, layout: DataLayout) -> ImagesResponse:
        """Submit through the durable queue, hold until the job ends, answer with its images."""
        doc, _ = await jobs.submit_job(body, principal, bus=bus, files=files, limits=limits, idempotency=idempotency,
                                       catalog=catalog, settings=config, layout=layout)
        ended = await wait_for_job(doc.id, principal, files=files, timeout=config.dialect_wait)
        outcome = OUTCOMES[ended.status]
        if outcome is not None:
            status, kind, code = outcome
            raise _JobEnded(status, kind, code, ended.error or ended.message or f"job {ended.id} {ended.status}")
        found = await asyncio.to_thread(image_bytes, ended, files)
        return images_response(ended, found, response_format, str(request.base_url).rstrip("/"))

    @post("/images/generations", status_code=200, summary="Create images (OpenAI)",
          responses=errors(400, 408, 409, 413, 429, 503))
    async def generations(self, request: Request, principal: DialectCaller, bus: BusDep, files: FilesDep,
                          limits: LimitsDep, idempotency: IdempotencyDep, catalog: CatalogDep, config: ConfigDep,
                          layout: LayoutDep, data: JSONBody[GenerateRequest]) -> ImagesResponse:
        job = generation_request(data, config, catalog)
        return await self._run(request, job, data.response_format, principal, bus=bus, files=files, limits=limits,
                               idempotency=idempotency, catalog=catalog, config=config, layout=layout)

    @post("/images/edits", status_code=200, summary="Edit an image: inpaint or img2img (OpenAI)",
          responses=errors(400, 408, 409, 413, 429, 503))
    async def edits(self, request: Request, principal: DialectCaller, bus: BusDep, files: FilesDep, limits: LimitsDep,
                    idempotency: IdempotencyDep, catalog: CatalogDep, config: ConfigDep, layout: LayoutDep,
                    data: Annotated[EditForm, Body(media_type=RequestEncodingType.MULTI_PART)]) -> ImagesResponse:
        job = await edit_request(data, config, catalog)
        return await self._run(request, job, data.response_format, principal, bus=bus, files=files, limits=limits,
                               idempotency=idempotency, catalog=catalog, config=config, layout=layout)

    @post("/images/variations", status_code=200, summary="Variations of an image (OpenAI)",
          responses=errors(400, 408, 409, 413, 429, 503))
    async def variations(self, request: Request, principal: DialectCaller, bus: BusDep, files: FilesDep,
                         limits: LimitsDep, idempotency: IdempotencyDep, catalog: CatalogDep, config: ConfigDep,
                         layout: LayoutDep,
                         data: Annotated[VariationForm, Body(media_type=RequestEncodingType.MULTI_PART)]
                         ) -> ImagesResponse:
        job = await variation_request(data, config, catalog)
        return await self._run(request, job, data.response_format, principal, bus=bus, files=files, limits=limits,
                               idempotency=idempotency, catalog=catalog, config=config, layout=layout)

    @get("/models", summary="Model names this API accepts (OpenAI)", responses=errors())
    async def models(self, principal: DialectCaller, catalog: CatalogDep, config: ConfigDep) -> ModelList:
        now = int(time.time())
        names = [*alias_table(config, catalog), *sorted(catalog.models)]
        return ModelList(data=[Model(id=name, created=now) for name in names])


class _JobEnded(DomainError):
    """The job ended without images (failed or cancelled): answered with the OUTCOMES entry."""

    def __init__(self, status: int, kind: str, code: str, message: str):
        super().__init__(message)
        self.answer = (status, kind, code)


def _ended(_: Request, exc: _JobEnded) -> Response:
    status, kind, code = exc.answer
    return error_response(status, kind, exc.message, code=code, headers={"x-should-retry": "false"})


EXCEPTION_HANDLERS[_JobEnded] = _ended
