"""From a JobRequest to a JobSpec: every check against the catalog, the LoRA library and the
limits, every default filled in, the seed chosen. Errors are `Invalid`, naming the field."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from schemas.api import JobRequest
from schemas.catalog import SAMPLERS, Catalog, ModelDefaults, ModelEntry
from schemas.jobs import (
    GenerationSettings,
    HiresSettings,
    JobDocument,
    JobSpec,
    LoraRef,
)
from schemas.layout import DataLayout, lora_file, lora_names, split_image_id
from schemas.library import FAMILY_BASE
from schemas.settings import Settings
from services.ingress.auth import Principal
from services.ingress.domain.errors import Invalid
from services.ingress.images import InputImage, decode_base64, load_image
from services.library.hashes import lora_hashes
from services.library.metadata import file_base

MAX_IMAGES = 8
MAX_LORAS = 8


@dataclass
class Inputs:
    """A request's input images, checked, and what the user should be told about the request."""

    init_image: InputImage | None = None
    mask_image: InputImage | None = None
    # An existing Darkroom image used as init image: its path inside the data directory.
    init_image_path: str | None = None
    notices: list[str] = field(default_factory=list)


@dataclass
class Resolved:
    """A job ready to accept: its spec, and the input images to store with it."""

    spec: JobSpec
    inputs: Inputs


def _bad(message: str) -> Invalid:
    return Invalid(message)


def resolve_job(request: JobRequest, catalog: Catalog, settings: Settings, layout: DataLayout,
                principal: Principal | None = None) -> Resolved:
    prompt = request.prompt.strip()
    if not prompt:
        raise _bad("prompt must not be empty")
    for name, text in (("prompt", prompt), ("negative_prompt", request.negative_prompt or "")):
        if len(text) > settings.max_prompt_length:
            raise _bad(f"{name} is {len(text)} characters; the limit is {settings.max_prompt_length}")
    if request.model is not None and not request.model.strip():
        raise _bad("model must not be empty: name a model (GET /v1/models), or leave it out for the default")
    try:
        entry = catalog.model(request.model)
    except KeyError as exc:
        raise _bad(f"model: {exc.args[0]}") from None
    if request.style is not None and request.style not in catalog.styles:
        raise _bad(f"style: unknown style {request.style!r}; valid styles: {', '.join(sorted(catalog.styles))}")

    inputs = Inputs()
    mode = _inputs(request, entry, layout, inputs, principal)
    given, defaults = request.settings, entry.defaults
    width, height = _size(given.width, given.height, inputs, defaults)
    num_images, batch_size = _counts(given.num_images, given.batch_size, given.batch_count)
    steps = given.num_inference_steps or defaults.num_inference_steps
    error = entry.settings_error(width, height, steps)
    if error:
        raise _bad(error)
    sampler = given.sampler or defaults.sampler
    if sampler is not None and sampler not in SAMPLERS:
        raise _bad(f"settings.sampler: unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    strength = None
    if mode != "txt2img":
        strength = defaults.strength if given.strength is None else given.strength
        if int(steps * strength) < 1:  # diffusers would run no step at all and fail deep inside
            raise _bad(f"settings.strength {strength:g} with {steps} steps runs no denoising step "
                       f"(int(steps x strength) must be at least 1): raise settings.strength or "
                       f"settings.num_inference_steps")
    elif given.strength is not None:
        inputs.notices.append("strength ignored: it applies to img2img and inpaint")
    negative = (request.negative_prompt or "").strip() or None
    if negative and not entry.supports_negative_prompt:
        inputs.notices.append(f"negative prompt ignored: model {entry.id!r} does not use one")
        negative = None
    generation = GenerationSettings(
        num_images=num_images,
        num_inference_steps=steps,
        guidance_scale=defaults.guidance_scale if given.guidance_scale is None else given.guidance_scale,
        width=width,
        height=height,
        seed=given.seed if given.seed not in (None, -1) else secrets.randbelow(2**32 - 16),
        sampler=sampler,
        batch_size=batch_size,
        strength=strength,
        hires=_hires(request, entry, mode, width, height, steps, inputs),
    )
    spec = JobSpec(
        prompt=prompt,
        negative_prompt=negative,
        model=entry.id,
        style=request.style,
        settings=generation,
        owner=principal.owner if principal else None,
        mode=mode,
        loras=_loras(request, layout.loras_dir, entry),
        notices=tuple(inputs.notices),
    )
    return Resolved(spec=spec, inputs=inputs)


def _inputs(request: JobRequest, entry: ModelEntry, layout: DataLayout, inputs: Inputs,
            principal: Principal | None) -> str:
    """Check and load the input images; the mode follows from which were given."""
    if request.init_image is not None and request.init_image_id is not None:
        raise _bad("give init_image or init_image_id, not both")
    if request.mask_image is not None and request.init_image is None and request.init_image_id is None:
        raise _bad("mask_image needs an init_image (or init_image_id) to paint into")
    mode = "inpaint" if request.mask_image is not None else "img2img" if (request.init_image or request.init_image_id) else "txt2img"
    if mode not in entry.capabilities:
        raise _bad(f"model {entry.id!r} cannot do {mode}; it can do {', '.join(entry.capabilities)}")
    bounds = {"max_width": entry.limits.max_width, "max_height": entry.limits.max_height}
    if request.init_image is not None:
        inputs.init_image = load_image("init_image", decode_base64("init_image", request.init_image), mode="RGB", **bounds)
    elif request.init_image_id is not None:
        path = _existing_image(layout, request.init_image_id, principal)
        inputs.init_image = load_image("init_image_id", path.read_bytes(), mode="RGB", **bounds)
        inputs.init_image_path = str(path.relative_to(layout.base))
    if request.mask_image is not None:
        mask = load_image("mask_image", decode_base64("mask_image", request.mask_image), mode="L", **bounds)
        init = inputs.init_image
        if (mask.width, mask.height) != (init.width, init.height):
            raise _bad(f"mask_image is {mask.width}x{mask.height}; it must be the init image's size, {init.width}x{init.height}")
        inputs.mask_image = mask
    return mode


def _existing_image(layout: DataLayout, image_id: str, principal: Principal | None) -> Path:
    """The PNG of an image the caller may see, found from its id (never from a path the client sent)."""
    parts = split_image_id(image_id)
    missing = _bad(f"init_image_id: no image {image_id!r}")
    if parts is None:
        raise missing
    job_id, _ = parts
    try:
        doc = msgspec.json.decode(layout.job(job_id).read_bytes(), type=JobDocument)
    except FileNotFoundError:
        raise missing from None
    if principal is not None and not principal.may_see(doc.owner):
        raise missing
    path = layout.image(layout.image_file_path(doc.created_at, image_id))
    if not path.is_file():
        raise missing
    return path


def _size(width: int | None, height: int | None, inputs: Inputs, defaults: ModelDefaults) -> tuple[int, int]:
    """Width and height: as given, else the init image's (rounded down to a multiple of 8), else the model's."""
    init = inputs.init_image
    if init is not None:
        fallback_w, fallback_h = init.width // 8 * 8, init.height // 8 * 8
        if not (fallback_w and fallback_h) and not (width and height):
            raise _bad(f"init image is {init.width}x{init.height}; it must be at least 8x8")
    else:
        fallback_w, fallback_h = defaults.width, defaults.height
    return width or fallback_w, height or fallback_h


def _counts(num_images: int | None, batch_size: int | None, batch_count: int | None) -> tuple[int, int]:
    """(num_images, images per pipeline call); A1111's batch_size x batch_count is the same total."""
    if batch_size is None and batch_count is None:
        total = num_images or 1
        return total, total
    total = (batch_size or 1) * (batch_count or 1)
    if total > MAX_IMAGES:
        raise _bad(f"settings.batch_size x settings.batch_count must be at most {MAX_IMAGES}, got {total}")
    if num_images is not None and num_images != total:
        raise _bad(f"settings.num_images ({num_images}) disagrees with batch_size x batch_count ({total})")
    return total, batch_size or total


def _hires(request: JobRequest, entry: ModelEntry, mode: str, width: int, height: int, steps: int,
           inputs: Inputs) -> HiresSettings | None:
    given = request.settings
    if not given.enable_hr:
        if given.hr_scale is not None or given.hr_denoising_strength is not None or given.hr_second_pass_steps is not None:
            inputs.notices.append("hires settings ignored: set settings.enable_hr to use them")
        return None
    if mode != "txt2img":
        raise _bad("settings.enable_hr works with txt2img only (img2img and inpaint already start from an image)")
    scale = given.hr_scale or 2.0
    hr_width, hr_height = round(width * scale / 8) * 8, round(height * scale / 8) * 8
    hr_steps = given.hr_second_pass_steps or steps
    error = entry.settings_error(hr_width, hr_height, hr_steps)
    if error:
        raise _bad(f"settings.hr_scale {scale:g} gives {hr_width}x{hr_height}: " + error.replace("settings.", "hires "))
    strength = entry.defaults.hr_denoising_strength if given.hr_denoising_strength is None else given.hr_denoising_strength
    if int(hr_steps * strength) < 1:
        raise _bad(f"settings.hr_denoising_strength {strength:g} with {hr_steps} hires steps runs no denoising step "
                   f"(int(steps x strength) must be at least 1)")
    return HiresSettings(scale=scale, denoising_strength=strength, steps=hr_steps, width=hr_width, height=hr_height)


def _loras(request: JobRequest, folder: Path, entry: ModelEntry) -> tuple[LoraRef, ...]:
    if len(request.loras) > MAX_LORAS:
        raise _bad(f"loras: at most {MAX_LORAS} per job, got {len(request.loras)}")
    refs, seen = [], set()
    for index, lora in enumerate(request.loras):
        path = lora_file(folder, lora.name)
        if path is None:
            available = lora_names(folder)
            listing = ", ".join(available[:20]) + (f" and {len(available) - 20} more" if len(available) > 20 else "")
            raise _bad(f"loras[{index}].name: unknown LoRA {lora.name!r}; available: {listing or 'none (the library is empty)'}")
        if path.stem in seen:
            raise _bad(f"loras[{index}].name: LoRA {path.stem!r} is listed twice")
        seen.add(path.stem)
        # A LoRA trained for another family cannot load into this model (its layers differ); a
        # file that declares nothing is given the benefit of the doubt.
        base, wanted = file_base(path), FAMILY_BASE.get(entry.family)
        if base != "unknown" and wanted is not None and base != wanted:
            raise _bad(f"loras[{index}].name: LoRA {path.stem!r} is for {base} models; model {entry.id!r} "
                       f"is {entry.family} ({wanted})")
        # Its content hash goes with the job: a worker on another host fetches exactly this file.
        try:
            digest = lora_hashes.sha256(path)
        except OSError:
            raise _bad(f"loras[{index}].name: LoRA {path.stem!r} could not be read") from None
        refs.append(LoraRef(name=path.stem, weight=lora.weight, sha256=digest))
    return tuple(refs)
