"""The A1111 Discord bot dialect's mapping tables and translations (routes: `a1111`): its
requests to the native `JobRequest`, our jobs to its status and result, our errors to FastAPI's
`{"detail": ...}` (422 with a list for validation)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.datastructures import UploadFile
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from schemas.api import JobRequest
from schemas.catalog import SAMPLERS, Catalog
from schemas.jobs import JobDocument, JobStatus
from schemas.library import Session
from services.bus import BrokerUnavailable
from services.ingress.dialects import a1111_library as library
from services.ingress.dialects.a1111_types import (
    ErrorBody,
    GenerationBody,
    Img2ImgBody,
    JobStatusAnswer,
    ValidationItem,
)
from services.ingress.dialects.sdapi import split_loras
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
from services.ingress.requests import MAX_IMAGES

log = structlog.get_logger("ingress")

# -- mapping tables ------------------------------------------------------------------------------------

# Our job status -> the bot's (it has no "cancelled": a cancelled job failed, with its reason).
STATUSES: dict[JobStatus, str] = {"pending": "queued", "processing": "processing", "completed": "completed",
                                  "failed": "failed", "cancelled": "failed"}
# Our domain errors -> HTTP status; the body is {"detail": "..."}, for Invalid FastAPI's list.
ERRORS: dict[type[DomainError], int] = {
    Invalid: 422, TooLarge: 413, Unauthenticated: 401, Forbidden: 403, NotFound: 404, Conflict: 409,
    LimitReached: 429, Unavailable: 503,
}
VAES = ("Automatic", "None")  # Darkroom uses each model's own VAE
UPSCALERS = ("None", "Lanczos")  # hires fix upscales with Lanczos, then an img2img pass
DEFAULT_SAMPLER = "DPM++ 2M Karras"  # the bot's default; a request that leaves it out gets the session's
LORA_STRENGTH_RANGE = [0.6, 1.0]  # what the bot suggests for every LoRA
NOT_IMPLEMENTED = {
    "controlnet": "ControlNet is not supported by Darkroom (no ControlNet models or preprocessors); "
                  "use /a1111/generate/img2img",
    "regional": "Regional prompting is not supported by Darkroom; use /a1111/generate/txt2img",
}
RESULT_NOT_READY = "Job result not available"


# -- translation -------------------------------------------------------------------------------------

def _side(value: int, limit: int) -> int:
    return max(8, min(value, limit) // 8 * 8)


def job_request(body: GenerationBody, session: Session, catalog: Catalog) -> JobRequest:
    """The native request for a bot generation body; what it leaves out comes from the session."""
    model = library.checkpoint_model(body.checkpoint, catalog)  # unknown: the session's, else the default
    entry = catalog.models[model or session.model or catalog.default]
    prompt, found = split_loras(body.prompt)
    settings: dict[str, Any] = {}
    if body.sampler_name is not None:
        if body.sampler_name not in SAMPLERS:
            raise Invalid(f"sampler_name: {body.sampler_name!r} is not supported; see GET /a1111/models")
        settings["sampler"] = body.sampler_name
    if body.steps is not None:
        settings["num_inference_steps"] = min(body.steps, entry.limits.max_steps)
    if body.width is not None and body.height is not None:  # keep the aspect when scaling down
        scale = min(1.0, entry.limits.max_width / body.width, entry.limits.max_height / body.height)
        settings["width"], settings["height"] = _side(int(body.width * scale), 8192), _side(int(body.height * scale), 8192)
    elif body.width is not None or body.height is not None:
        name, value, limit = (("width", body.width, entry.limits.max_width) if body.width is not None
                              else ("height", body.height, entry.limits.max_height))
        settings[name] = _side(value, limit)
    if body.batch_count is not None or body.batch_size is not None:
        count, size = body.batch_count or 1, body.batch_size or 1
        if count * size > MAX_IMAGES:
            raise Invalid(f"batch_count: batch_count x batch_size is at most {MAX_IMAGES} in Darkroom, "
                          f"got {count} x {size}")
        settings["batch_count"], settings["batch_size"] = count, size
    for ours, value in (("guidance_scale", body.cfg_scale), ("seed", body.seed)):
        if value is not None:
            settings[ours] = value
    if body.enable_hr and (body.hr_scale or 2.0) > 1.0:
        settings |= {"enable_hr": True, "hr_scale": body.hr_scale or 2.0,
                     "hr_second_pass_steps": body.hr_second_pass_steps or None,
                     "hr_denoising_strength": body.denoising_strength}
    if isinstance(body, Img2ImgBody) and body.denoising_strength is not None:
        settings["strength"] = body.denoising_strength
    request = {"prompt": prompt, "negative_prompt": body.negative_prompt or None, "model": model,
               "loras": found, "settings": settings, "session": session.id}
    try:
        return msgspec.convert(request, JobRequest)
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc).replace("$.", "")) from None


def full_prompt(doc: JobDocument) -> str:
    """The prompt as the bot sends it to A1111: the user's, then every LoRA as <lora:name:weight>."""
    tags = " ".join(f"<lora:{lora.name}:{lora.weight:g}>" for lora in doc.loras)
    return f"{doc.original_prompt or doc.prompt} {tags}".strip()


def progress_of(doc: JobDocument) -> float:
    if doc.status == "completed":
        return 1.0
    step, total = doc.progress.step or 0, doc.progress.total_steps or doc.settings.num_inference_steps
    return min(1.0, step / total) if doc.status == "processing" and total else 0.0


def job_status(doc: JobDocument) -> JobStatusAnswer:
    progress = progress_of(doc)
    eta = doc.eta_seconds
    if doc.status == "processing" and progress > 0 and doc.started_at is not None:
        elapsed = (datetime.now(UTC) - doc.started_at).total_seconds()
        eta = max(0.0, elapsed / progress - elapsed)
    message = doc.error if STATUSES[doc.status] == "failed" and doc.error else doc.message
    return JobStatusAnswer(job_id=doc.id, status=STATUSES[doc.status], progress=progress, eta_relative=eta,
                           message=message, created_at=doc.created_at, completed_at=doc.completed_at)


def parameters(doc: JobDocument) -> dict[str, Any]:
    """The A1111 payload the bot would have sent, as Darkroom ran it."""
    s = doc.settings
    return {"prompt": full_prompt(doc), "negative_prompt": doc.negative_prompt or "", "sampler_name": s.sampler,
            "steps": s.num_inference_steps, "cfg_scale": s.guidance_scale, "width": s.width, "height": s.height,
            "batch_size": s.batch_size, "n_iter": s.num_images // max(1, s.batch_size), "seed": s.seed,
            "denoising_strength": s.strength, "enable_hr": s.hires is not None,
            "override_settings": {"sd_model_checkpoint": doc.model}}


def info(doc: JobDocument, infotexts: list[str]) -> dict[str, Any]:
    """A1111's `info`, decoded (the bot stores json.loads(info))."""
    s = doc.settings
    seeds = [s.image_seed(n) for n in range(1, s.num_images + 1)]
    prompt = full_prompt(doc)
    return {"prompt": prompt, "all_prompts": [prompt] * len(seeds), "negative_prompt": doc.negative_prompt or "",
            "seed": s.seed, "all_seeds": seeds, "width": s.width, "height": s.height, "sampler_name": s.sampler,
            "cfg_scale": s.guidance_scale, "steps": s.num_inference_steps, "batch_size": s.batch_size,
            "sd_model_name": doc.model, "denoising_strength": s.strength, "infotexts": infotexts,
            "job_timestamp": f"{doc.created_at:%Y%m%d%H%M%S}", "job_id": doc.id,
            "loras": {lora.name: lora.weight for lora in doc.loras}, "notices": list(doc.notices)}


# -- errors in FastAPI's shape --------------------------------------------------------------------------

def detail(status: int, message: str | list[ValidationItem], headers: dict[str, str] | None = None) -> Response:
    return Response(ErrorBody(detail=message), status_code=status, headers=headers or {})


def _invalid_items(message: str, where: str = "body") -> list[ValidationItem]:
    field, sep, _ = message.partition(":")
    loc: list[str | int] = [where, *field.strip().split(".")] if sep and " " not in field.strip() else [where]
    return [ValidationItem(loc=loc, msg=message, type="value_error")]


def domain_error(_: Request, exc: DomainError) -> Response:
    status = next((v for k, v in ERRORS.items() if isinstance(exc, k)), 500)
    headers = {}
    if isinstance(exc, LimitReached | Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    return detail(status, _invalid_items(exc.message) if status == 422 else exc.message, headers)


def validation_error(_: Request, exc: ValidationException) -> Response:
    items = []
    for item in exc.extra or []:
        if isinstance(item, dict):
            key, source = item.get("key"), item.get("source") or "body"
            loc: list[str | int] = [source, *(str(key).split(".") if key and key != "data" else [])]
            items.append(ValidationItem(loc=loc, msg=item.get("message", ""), type="value_error"))
    return detail(422, items or _invalid_items(str(exc.detail)))


def http_error(_: Request, exc: HTTPException) -> Response:
    if exc.status_code == 400:  # a body that does not parse: FastAPI answers 422
        return detail(422, _invalid_items(str(exc.detail)))
    return detail(exc.status_code, str(exc.detail), dict(exc.headers or {}))


def internal_error(request: Request, _: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return detail(500, "internal error; it has been logged")


EXCEPTION_HANDLERS = {
    DomainError: domain_error, ValidationException: validation_error, HTTPException: http_error,
    BrokerUnavailable: lambda _, __: detail(503, "the message broker is unreachable; nothing was accepted",
                                            {"Retry-After": "5"}),
    OSError: lambda _, e: detail(503, f"cannot write to the data directory ({e.strerror or e})", {"Retry-After": "30"}),
    UnicodeDecodeError: lambda _, __: detail(422, _invalid_items("a form field that should be text is not UTF-8")),
    Exception: internal_error,
}
WHY = {401: "No or an invalid key (loopback needs none)", 403: "Needs an admin key",
       404: "No such job, LoRA or preset (every route: the dialect is switched off)",
       409: "At most 100 sessions and 200 presets per key", 413: "The request body is too large",
       422: "A field is wrong; `detail` lists which", 429: "A rate limit or quota was reached",
       501: "Not supported by Darkroom", 503: "The broker or the data directory is unavailable"}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    return {code: ResponseSpec(data_container=ErrorBody, description=WHY[code]) for code in (401, 404, 422, *codes)}


# -- multipart img2img ------------------------------------------------------------------------------------

@dataclass
class Img2ImgForm:
    """POST /a1111/generate/img2img: the `image` file, and the request as a JSON form field
    `request` or as flat form fields (both: the flat fields win)."""

    image: UploadFile
    request: str | None = None
    user_id: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    checkpoint: str | None = None
    vae: str | None = None
    sampler_name: str | None = None
    steps: str | None = None
    cfg_scale: str | None = None
    width: str | None = None
    height: str | None = None
    batch_count: str | None = None
    batch_size: str | None = None
    seed: str | None = None
    denoising_strength: str | None = None
    resize_mode: str | None = None
    inpaint_full_res: str | None = None
    inpaint_full_res_padding: str | None = None
    inpainting_mask_invert: str | None = None


def img2img_body(form: Img2ImgForm) -> Img2ImgBody:
    fields: dict[str, Any] = {}
    if form.request:
        try:
            fields = json.loads(form.request)
        except ValueError as exc:
            raise Invalid(f"request: not JSON ({exc})") from None
        if not isinstance(fields, dict):
            raise Invalid("request: expected a JSON object")
    flat = {name: getattr(form, name) for name in Img2ImgForm.__dataclass_fields__ if name not in ("image", "request")}
    fields |= {name: value for name, value in flat.items() if value not in (None, "")}
    try:  # form fields are text: "20" -> 20, "true" -> True
        return msgspec.convert(fields, Img2ImgBody, strict=False)
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc).replace("$.", "")) from None
