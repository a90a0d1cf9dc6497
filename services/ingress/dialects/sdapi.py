"""AUTOMATIC1111's API under /sdapi/v1, for webuiapi and the many tools written against it.

A translation layer only: txt2img/img2img become the native `JobRequest` (`<lora:name:weight>`
in the prompt become its `loras`), go through `jobs.submit_job` and the durable queue, and are
held until the job ends (A1111 answers when the images exist), at most DARKROOM_DIALECT_WAIT
seconds. Unlike A1111, concurrent calls are queued and batched, not serialized or dropped.
`options.sd_model_checkpoint` is the caller's default model (per caller, in the data directory).
Mapping tables are the constants below; docs/dialects/sdapi.md says what is not supported.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, QueryParameter
from PIL import Image, ImageFilter, ImageOps

from schemas.api import JobRequest
from schemas.catalog import SAMPLERS, Catalog
from schemas.jobs import JobDocument, JobStatus
from schemas.layout import DataLayout
from schemas.settings import Settings
from services.bus import BrokerUnavailable
from services.ingress.dialects.common import DialectCaller, b64, provide_basic_caller
from services.ingress.dialects.sdapi_types import (
    ErrorBody,
    GenerationAnswer,
    GenerationBody,
    Img2ImgBody,
    Lora,
    PngInfoAnswer,
    PngInfoBody,
    ProgressAnswer,
    ProgressState,
    Sampler,
    Scheduler,
    SdModel,
    Txt2ImgBody,
    Upscaler,
)
from services.ingress.domain import jobs, preferences
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
from services.ingress.domain.lora_files import lora_files
from services.ingress.domain.pnginfo import read_png_info
from services.ingress.domain.waiting import StillRunning, active_jobs, cancel_running, image_bytes, wait_for_job
from services.ingress.images import decode_base64, load_image
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

# A1111 >= 1.9 names the noise schedule apart from the sampler; Darkroom's samplers carry it in
# their name ("DPM++ 2M Karras"), as A1111 < 1.9 did. scheduler -> suffix of the sampler name.
SCHEDULERS: dict[str, str] = {"automatic": "", "karras": " Karras"}
SCHEDULER_LABELS: dict[str, str] = {"automatic": "Automatic", "karras": "Karras"}
# The only hires upscaler Darkroom has (pipelines: Lanczos, then an img2img pass).
UPSCALERS = ("None", "Lanczos")
# Fields Darkroom does not do, and the values that mean "not used" (anything else is refused).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "restore_faces": (None, False), "tiling": (None, False), "subseed_strength": (0, 0.0),
    "seed_resize_from_h": (-1, 0), "seed_resize_from_w": (-1, 0), "eta": (None, 1.0),
    "s_min_uncond": (None, 0, 0.0), "s_churn": (None, 0, 0.0), "s_tmax": (None, 0, 0.0), "s_tmin": (None, 0, 0.0),
    "s_noise": (None, 1, 1.0), "refiner_checkpoint": (None, ""), "infotext": (None, ""), "script_name": (None, ""),
    "script_args": ([],), "alwayson_scripts": ({},), "firstphase_width": (0,), "firstphase_height": (0,),
    "hr_resize_x": (0,), "hr_resize_y": (0,), "firstpass_image": (None, ""), "hr_checkpoint_name": (None, "", "Use same checkpoint"),
    "hr_sampler_name": (None, "", "Use same sampler"), "hr_scheduler": (None, "", "Use same scheduler"),
    "resize_mode": (0,), "latent_mask": (None, ""), "initial_noise_multiplier": (None, 1, 1.0),
    "include_init_images": (False,),
}
# Options a caller may set (POST /options) and the one override_settings key a request may carry.
OPTIONS = ("sd_model_checkpoint",)
# Our domain errors -> (HTTP status, A1111's error name)
ERRORS: dict[type[DomainError], tuple[int, str]] = {
    Invalid: (422, "ValidationError"),
    TooLarge: (413, "PayloadTooLarge"),
    Unauthenticated: (401, "Unauthorized"),
    Forbidden: (403, "Forbidden"),
    NotFound: (404, "NotFound"),
    Conflict: (409, "Conflict"),
    LimitReached: (429, "TooManyRequests"),
    Unavailable: (503, "ServiceUnavailable"),
    StillRunning: (408, "StillRunning"),
}
# Job status -> the status code of a generation answer, and what /progress's textinfo says.
OUTCOMES: dict[JobStatus, int] = {"completed": 200, "cancelled": 200, "failed": 500, "pending": 408, "processing": 408}
TEXTINFO: dict[JobStatus, str] = {"pending": "Waiting in the queue", "processing": "Generating",
                                  "completed": "Done", "failed": "Failed", "cancelled": "Interrupted"}
LORA = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")
A1111_VERSION = "darkroom"


class _Refused(Invalid):
    pass


# -- translation -------------------------------------------------------------------------------------

def model_id(name: str, catalog: Catalog) -> str:
    """A catalog id from an A1111 checkpoint title ("name.safetensors [hash]", "name", ...)."""
    if name in catalog.models:
        return name
    base = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", name).strip()
    base = re.sub(r"\.(safetensors|ckpt|pt|bin)$", "", base)
    if base in catalog.models:
        return base
    raise _Refused(f"sd_model_checkpoint: unknown model {name!r}; valid models: {', '.join(sorted(catalog.models))}")


def split_loras(prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """A1111's extra-network syntax: `<lora:name:weight>` out of the prompt, into a LoRA list."""
    loras = []
    for name, weight in LORA.findall(prompt):
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise _Refused(f"prompt: <lora:{name}:{weight}> has a weight that is not a number") from None
        loras.append({"name": name.strip(), "weight": value})
    return " ".join(LORA.sub(" ", prompt).split()), loras


def sampler_name(body: GenerationBody) -> str | None:
    name = body.sampler_name or body.sampler_index
    scheduler = (body.scheduler or "automatic").lower()
    if scheduler not in SCHEDULERS:
        raise _Refused(f"scheduler: {body.scheduler!r} is not supported; supported: {', '.join(SCHEDULERS)}")
    if name is None:
        return None
    full = name if name.endswith(SCHEDULERS[scheduler]) else name + SCHEDULERS[scheduler]
    if full not in SAMPLERS:
        raise _Refused(f"sampler_name: {full!r} is not supported; supported: {', '.join(SAMPLERS)}")
    return full


def _refuse_unsupported(body: GenerationBody) -> None:
    for name, neutral in NEUTRAL.items():
        if hasattr(body, name) and getattr(body, name) not in neutral:
            raise _Refused(f"{name}: {getattr(body, name)!r} is not supported by Darkroom; leave it at {neutral[0]!r} "
                           f"(see docs/dialects/sdapi.md)")


def job_request(body: GenerationBody, default_model: str, catalog: Catalog) -> tuple[JobRequest, list[str]]:
    """The native request for an A1111 txt2img/img2img body, and notices about approximations."""
    _refuse_unsupported(body)
    notices: list[str] = []
    overrides = dict(body.override_settings or {})
    unknown = sorted(set(overrides) - set(OPTIONS))
    if unknown:
        raise _Refused(f"override_settings: {', '.join(unknown)} not supported; supported: {', '.join(OPTIONS)}")
    model = model_id(str(overrides["sd_model_checkpoint"]), catalog) if "sd_model_checkpoint" in overrides \
        else default_model
    styles = body.styles or []
    if len(styles) > 1 or any(style not in catalog.styles for style in styles):
        raise _Refused(f"styles: at most one of {', '.join(sorted(catalog.styles))}")
    prompt, loras = (body.prompt, []) if body.disable_extra_networks else split_loras(body.prompt)
    settings: dict[str, Any] = {"batch_size": body.batch_size, "batch_count": body.n_iter, "seed": body.seed}
    for ours, value in (("num_inference_steps", body.steps), ("guidance_scale", body.cfg_scale),
                        ("sampler", sampler_name(body))):
        if value is not None:
            settings[ours] = value
    for ours, value in (("width", body.width), ("height", body.height)):
        if value is not None:
            settings[ours] = value // 8 * 8  # A1111 generates at the multiple of 8 below
    request: dict[str, Any] = {"prompt": prompt, "negative_prompt": body.negative_prompt or None, "model": model,
                               "style": styles[0] if styles else None, "loras": loras, "settings": settings}
    if isinstance(body, Txt2ImgBody) and body.enable_hr:
        if (body.hr_upscaler or "Lanczos") not in UPSCALERS:
            raise _Refused(f"hr_upscaler: {body.hr_upscaler!r} is not supported; supported: Lanczos")
        if body.hr_prompt not in ("", body.prompt) or body.hr_negative_prompt not in ("", body.negative_prompt):
            raise _Refused("hr_prompt: a second-pass prompt of its own is not supported")
        settings |= {"enable_hr": True, "hr_scale": body.hr_scale,
                     "hr_second_pass_steps": body.hr_second_pass_steps or None,
                     "hr_denoising_strength": body.denoising_strength}
    if isinstance(body, Img2ImgBody):
        _img2img(body, request, notices)
    try:
        return msgspec.convert(request, JobRequest), notices
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc).replace("$.", "")) from None


def _img2img(body: Img2ImgBody, request: dict[str, Any], notices: list[str]) -> None:
    if not body.init_images:
        raise _Refused("init_images: img2img needs one image (base64)")
    if len(body.init_images) > 1:
        raise _Refused("init_images: only one init image is supported")
    request["init_image"] = body.init_images[0]
    if body.denoising_strength is not None:
        request["settings"]["strength"] = body.denoising_strength
    if body.mask:
        request["mask_image"] = b64(_mask(body))
        if body.inpaint_full_res:
            notices.append("inpaint_full_res: the whole picture is inpainted")
        if body.inpainting_fill != 1:
            notices.append("inpainting_fill: masked content starts from the original image")


def _mask(body: Img2ImgBody) -> bytes:
    """A1111's mask options applied to the mask image: invert, then blur."""
    mask = load_image("mask", decode_base64("mask", body.mask or ""), mode="L", max_width=16384, max_height=16384)
    blur = body.mask_blur if body.mask_blur is not None else max(body.mask_blur_x, body.mask_blur_y)
    if not body.inpainting_mask_invert and not blur:
        return mask.png
    with Image.open(io.BytesIO(mask.png)) as image:
        image = ImageOps.invert(image) if body.inpainting_mask_invert else image
        image = image.filter(ImageFilter.GaussianBlur(blur)) if blur else image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()


def info_json(doc: JobDocument, infotexts: list[str], notices: list[str], body: GenerationBody) -> str:
    """A1111's `info`: a JSON string describing the run."""
    settings = doc.settings
    seeds = [settings.image_seed(n) for n in range(1, settings.num_images + 1)]
    return json.dumps({
        "prompt": body.prompt, "all_prompts": [body.prompt] * len(seeds),
        "negative_prompt": body.negative_prompt, "all_negative_prompts": [body.negative_prompt] * len(seeds),
        "seed": settings.seed, "all_seeds": seeds, "subseed": settings.seed, "all_subseeds": seeds,
        "subseed_strength": 0, "width": settings.width, "height": settings.height,
        "sampler_name": settings.sampler, "cfg_scale": settings.guidance_scale, "steps": settings.num_inference_steps,
        "batch_size": settings.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": doc.model, "sd_model_hash": None, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": settings.strength,
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": infotexts,
        "styles": body.styles or [], "job_timestamp": f"{doc.created_at:%Y%m%d%H%M%S}", "clip_skip": 1,
        "is_using_inpainting_conditioning": doc.mode == "inpaint", "version": A1111_VERSION,
        "job_id": doc.id, "status": doc.status, "notices": [*doc.notices, *notices],
        "interrupted": doc.status == "cancelled",
    })


def progress_answer(active: list, skip_current_image: bool) -> ProgressAnswer:
    """/progress for the caller's jobs: the running one (else the next queued) and how many there are."""
    if not active:
        return ProgressAnswer(progress=0.0, eta_relative=0.0, state=ProgressState(), textinfo=None)
    current = next((job for job in active if job.doc.status == "processing"), active[0])
    doc = current.doc
    step, total = doc.progress.step or 0, doc.progress.total_steps or doc.settings.num_inference_steps
    progress = min(1.0, step / total) if doc.status == "processing" and total else 0.0
    eta = 0.0
    if progress > 0 and doc.started_at is not None:
        elapsed = (datetime.now(UTC) - doc.started_at).total_seconds()
        eta = max(0.0, elapsed / progress - elapsed)
    image = None
    if not skip_current_image and current.preview is not None:
        try:
            image = b64(current.preview.read_bytes())
        except FileNotFoundError:
            pass
    started = doc.started_at or doc.created_at
    state = ProgressState(job=doc.id, job_count=len(active), job_timestamp=f"{started:%Y%m%d%H%M%S}",
                          sampling_step=step, sampling_steps=total)
    return ProgressAnswer(progress=progress, eta_relative=eta, state=state, current_image=image,
                          textinfo=TEXTINFO[doc.status])


# -- errors in A1111's shape ----------------------------------------------------------------------------

def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(ErrorBody(error=kind, detail=message, errors=message), status_code=status, headers=headers or {})


def domain_error(_: Request, exc: DomainError) -> Response:
    status, kind = next((v for k, v in ERRORS.items() if isinstance(exc, k)), (500, "InternalError"))
    headers = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Basic"
    if isinstance(exc, LimitReached | Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    return error_response(status, kind, exc.message, headers)


def validation_error(_: Request, exc: ValidationException) -> Response:
    problems = []
    for item in exc.extra or []:
        if isinstance(item, dict):
            key, message = item.get("key"), item.get("message", "")
            problems.append(f"{key}: {message}" if key and key != "data" else message)
    return error_response(422, "ValidationError", "; ".join(problems) or str(exc.detail))


def http_error(_: Request, exc: HTTPException) -> Response:
    if exc.status_code == 400:  # a body that does not parse: FastAPI (and so A1111) answers 422
        return error_response(422, "ValidationError", str(exc.detail))
    return error_response(exc.status_code, type(exc).__name__, str(exc.detail), dict(exc.headers or {}))


def broker_error(_: Request, __: BrokerUnavailable) -> Response:
    return error_response(503, "ServiceUnavailable", "the message broker is unreachable; nothing was accepted",
                          {"Retry-After": "5"})


def storage_error(_: Request, exc: OSError) -> Response:
    return error_response(503, "ServiceUnavailable", f"cannot write to the data directory ({exc.strerror or exc})",
                          {"Retry-After": "30"})


def internal_error(request: Request, _: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return error_response(500, "InternalError", "internal error; it has been logged")


EXCEPTION_HANDLERS = {DomainError: domain_error, ValidationException: validation_error, HTTPException: http_error,
                      BrokerUnavailable: broker_error, OSError: storage_error, Exception: internal_error}
WHY = {401: "No or wrong credentials (Darkroom key or --api-auth user)", 408: "The job did not end within "
       "DARKROOM_DIALECT_WAIT; it goes on", 413: "The request body is too large", 422: "A field is wrong or not "
       "supported; the message names it", 429: "A rate limit or quota was reached",
       503: "The broker or the data directory is unavailable"}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    return {code: ResponseSpec(data_container=ErrorBody, description=WHY[code]) for code in (401, *codes)}


GENERATION_ERRORS = errors(408, 413, 422, 429, 503)

# -- routes ---------------------------------------------------------------------------------------------


class SdapiRoutes(Controller):
    """AUTOMATIC1111's API: point webuiapi (or any A1111 client) at `<darkroom>/sdapi/v1`."""

    path = "/sdapi/v1"
    tags = ["sdapi"]
    dependencies = {"principal": Provide(provide_basic_caller)}
    exception_handlers = EXCEPTION_HANDLERS
    security = [{"basic": []}, {"bearer": []}]

    @staticmethod
    async def _generate(body: GenerationBody, principal, *, bus, files, limits, idempotency, catalog: Catalog,
                        config: Settings, layout: DataLayout) -> Response[GenerationAnswer]:
        default = preferences.default_model(principal, catalog=catalog, state_dir=layout.state_dir)
        request, notices = job_request(body, default, catalog)
        doc, _ = await jobs.submit_job(request, principal, bus=bus, files=files, limits=limits, idempotency=idempotency,
                                       catalog=catalog, settings=config, layout=layout)
        ended = await wait_for_job(doc.id, principal, files=files, timeout=config.dialect_wait)
        status = OUTCOMES[ended.status]
        if status != 200:
            return error_response(status, "JobFailed", ended.error or ended.message or f"job {ended.id} {ended.status}")
        found = await asyncio.to_thread(image_bytes, ended, files)
        infotexts = [read_png_info(png).parameters or "" for _, png in found]
        answer = GenerationAnswer(images=[b64(png) for _, png in found] if body.send_images else [],
                                  parameters=msgspec.to_builtins(body), info=info_json(ended, infotexts, notices, body))
        return Response(answer, status_code=200)

    @post("/txt2img", status_code=200, summary="Text to image (A1111)", responses=GENERATION_ERRORS)
    async def txt2img(self, principal: DialectCaller, bus: BusDep, files: FilesDep, limits: LimitsDep,
                      idempotency: IdempotencyDep, catalog: CatalogDep, config: ConfigDep, layout: LayoutDep,
                      data: JSONBody[Txt2ImgBody]) -> Response[GenerationAnswer]:
        return await self._generate(data, principal, bus=bus, files=files, limits=limits, idempotency=idempotency,
                                    catalog=catalog, config=config, layout=layout)

    @post("/img2img", status_code=200, summary="Image to image and inpainting (A1111)", responses=GENERATION_ERRORS)
    async def img2img(self, principal: DialectCaller, bus: BusDep, files: FilesDep, limits: LimitsDep,
                      idempotency: IdempotencyDep, catalog: CatalogDep, config: ConfigDep, layout: LayoutDep,
                      data: JSONBody[Img2ImgBody]) -> Response[GenerationAnswer]:
        return await self._generate(data, principal, bus=bus, files=files, limits=limits, idempotency=idempotency,
                                    catalog=catalog, config=config, layout=layout)

    @get("/progress", summary="Progress of the caller's running job (A1111)", responses=errors(422))
    async def progress(self, principal: DialectCaller, files: FilesDep,
                       skip_current_image: Annotated[bool, QueryParameter(required=False)] = False) -> ProgressAnswer:
        active = await asyncio.to_thread(active_jobs, principal, files=files)
        return await asyncio.to_thread(progress_answer, active, skip_current_image)

    @post("/interrupt", status_code=200, summary="Stop the caller's running job (A1111)", responses=errors(503))
    async def interrupt(self, principal: DialectCaller, bus: BusDep, files: FilesDep) -> dict[str, Any]:
        await cancel_running(principal, bus=bus, files=files)
        return {}

    @post("/skip", status_code=200, summary="Stop the caller's running job (A1111: skip)", responses=errors(503))
    async def skip(self, principal: DialectCaller, bus: BusDep, files: FilesDep) -> dict[str, Any]:
        await cancel_running(principal, bus=bus, files=files)
        return {}

    @get("/options", summary="The caller's options (A1111)", responses=errors())
    async def get_options(self, principal: DialectCaller, catalog: CatalogDep, layout: LayoutDep) -> dict[str, Any]:
        model = preferences.default_model(principal, catalog=catalog, state_dir=layout.state_dir)
        return {"sd_model_checkpoint": model, "sd_checkpoint_hash": None, "samples_format": "png",
                "CLIP_stop_at_last_layers": 1}

    @post("/options", status_code=200, summary="Set the caller's default model (A1111)", responses=errors(422))
    async def set_options(self, principal: DialectCaller, catalog: CatalogDep, layout: LayoutDep,
                          data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
        unknown = sorted(set(data) - set(OPTIONS))
        if unknown:
            raise _Refused(f"options: {', '.join(unknown)} cannot be set; settable: {', '.join(OPTIONS)}")
        if "sd_model_checkpoint" in data:
            model = model_id(str(data["sd_model_checkpoint"]), catalog)
            await asyncio.to_thread(preferences.set_default_model, model, principal, catalog=catalog,
                                    state_dir=layout.state_dir)
        return {}

    @get("/sd-models", summary="Models (A1111 checkpoints)", responses=errors())
    async def sd_models(self, principal: DialectCaller, catalog: CatalogDep) -> list[SdModel]:
        return [SdModel(title=entry.id, model_name=entry.id, filename=entry.source) for entry in catalog.models.values()]

    @post("/refresh-checkpoints", status_code=200, summary="Nothing to do: the catalog is read at start",
          responses=errors())
    async def refresh_checkpoints(self, principal: DialectCaller) -> dict[str, Any]:
        return {}

    @get("/samplers", summary="Samplers (A1111 names)", responses=errors())
    async def samplers(self, principal: DialectCaller) -> list[Sampler]:
        return [Sampler(name=name, aliases=[], options={k: str(v) for k, v in options.items()})
                for name, (_, options) in SAMPLERS.items()]

    @get("/schedulers", summary="Noise schedules (A1111 >= 1.9)", responses=errors())
    async def schedulers(self, principal: DialectCaller) -> list[Scheduler]:
        return [Scheduler(name=name, label=SCHEDULER_LABELS[name]) for name in SCHEDULERS]

    @get("/loras", summary="LoRAs in models/loras (A1111)", responses=errors())
    async def loras(self, principal: DialectCaller, layout: LayoutDep) -> list[Lora]:
        found = await asyncio.to_thread(lora_files, layout)
        return [Lora(name=name, alias=name, path=str(path)) for name, path in found]

    @post("/refresh-loras", status_code=200, summary="Nothing to do: the folder is read on every request",
          responses=errors())
    async def refresh_loras(self, principal: DialectCaller) -> dict[str, Any]:
        return {}

    @get("/upscalers", summary="Upscalers for hires fix (A1111)", responses=errors())
    async def upscalers(self, principal: DialectCaller) -> list[Upscaler]:
        return [Upscaler(name=name) for name in UPSCALERS]

    @get("/scripts", summary="Scripts: none (A1111)", responses=errors())
    async def scripts(self, principal: DialectCaller) -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    @get("/prompt-styles", summary="Prompt styles (Darkroom's style templates)", responses=errors())
    async def prompt_styles(self, principal: DialectCaller, catalog: CatalogDep) -> list[dict[str, Any]]:
        return [{"name": name, "prompt": style.template, "negative_prompt": style.negative_prompt or ""}
                for name, style in catalog.styles.items()]

    @post("/png-info", status_code=200, summary="Generation parameters embedded in an image (A1111)",
          responses=errors(413, 422))
    async def png_info(self, principal: DialectCaller, data: JSONBody[PngInfoBody]) -> PngInfoAnswer:
        found = await asyncio.to_thread(read_png_info, decode_base64("image", data.image))
        return PngInfoAnswer(info=found.parameters or "", items=dict(found.items), parameters=dict(found.parsed))

    @get("/memory", summary="Memory of the ingress's machine (A1111)", responses=errors())
    async def memory(self, principal: DialectCaller) -> dict[str, Any]:
        page, pages, free = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_AVPHYS_PAGES")
        total, available = page * pages, page * free
        return {"ram": {"free": available, "used": total - available, "total": total},
                "cuda": {"error": "the GPU belongs to the generator processes, not the API; see their logs"},
                "time": time.time()}
