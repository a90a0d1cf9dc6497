"""Generation recipes over a loaded pipeline: txt2img, img2img, inpaint, and A1111's hires fix.

One call generates a batch of images, each with its own prompt, negative prompt, seed and (for
img2img/inpaint) input images, so that one job's images and several compatible jobs' images run
the same way. Everything the batch shares is in a `Recipe`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from pipelines import loras as lora_adapters
from pipelines.errors import Interrupted, InvalidRequest
from pipelines.loader import LoadedModel
from pipelines.samplers import scheduler_for

# Called after every denoising step with (step, total_steps, latents, phase); True stops the call.
StepCallback = Callable[[int, int, torch.Tensor, str], bool]


@dataclass(frozen=True)
class ImageTask:
    """One image to generate."""

    prompt: str
    negative_prompt: str | None
    seed: int
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None


@dataclass(frozen=True)
class Hires:
    scale: float
    denoising_strength: float
    steps: int
    width: int
    height: int


@dataclass(frozen=True)
class Recipe:
    """What every image of one pipeline call shares. Jobs with equal recipes can share a call."""

    mode: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    sampler: str | None = None
    strength: float | None = None
    hires: Hires | None = None
    loras: tuple[tuple[str, float], ...] = ()


def check_inputs(model: LoadedModel, recipe: Recipe, tasks: Sequence[ImageTask]) -> None:
    """Refuse what the model cannot do, naming the parameter, before any GPU work."""
    error = model.entry.settings_error(recipe.width, recipe.height, recipe.steps)
    if error:
        raise InvalidRequest(error)
    if recipe.mode not in model.entry.capabilities:
        raise InvalidRequest(f"model {model.entry.id!r} cannot do {recipe.mode}")
    if recipe.mode != "txt2img" and any(task.init_image is None for task in tasks):
        raise InvalidRequest(f"{recipe.mode} needs init_image")
    if recipe.mode == "inpaint" and any(task.mask_image is None for task in tasks):
        raise InvalidRequest("inpaint needs mask_image")


@contextlib.contextmanager
def _sampler(pipe, name: str | None) -> Iterator[None]:
    """Use sampler `name` for one call, then give the pipeline its own scheduler back."""
    if name is None:
        yield
        return
    original = pipe.scheduler
    pipe.scheduler = scheduler_for(original.config, name)
    try:
        yield
    finally:
        pipe.scheduler = original


# Families whose pipelines decode with a plain `vae.decode` + `postprocess` (no upcasting, no
# latent unpacking), so that decoding outside the pipeline call gives the very same pixels.
SPLIT_DECODE_FAMILIES = ("sd1.x", "sd2.x")


@dataclass(frozen=True)
class Denoised:
    """One pipeline call's result: its images, or its latents still to be decoded by `decode`.

    Decoding apart lets the pipeline thread start the next call while another thread runs the
    VAE. On CUDA both threads queue their kernels on the same default stream, so the decode
    follows the latents in order with no event or side stream, and the GPU never waits for the
    Python that launches the next UNet.
    """

    images: list[Image.Image] | None = None
    latents: torch.Tensor | None = None
    vae: object = None
    image_processor: object = None

    def decode(self) -> list[Image.Image]:
        """The call's images (decoded now when the call left it to us). One caller at a time."""
        if self.images is not None:
            return self.images
        with torch.inference_mode():
            # Exactly what StableDiffusionPipeline does after its last step (no safety checker).
            image = self.vae.decode(self.latents / self.vae.config.scaling_factor, return_dict=False)[0]
            images = self.image_processor.postprocess(image, output_type="pil", do_denormalize=[True] * image.shape[0])
        return list(images)


def can_split_decode(model: LoadedModel, recipe: Recipe) -> bool:
    """Whether this call's VAE decode can run outside the pipeline call, pixel for pixel the same."""
    return (model.entry.family in SPLIT_DECODE_FAMILIES and recipe.mode in ("txt2img", "img2img")
            and recipe.hires is None)


def generate(
    model: LoadedModel,
    recipe: Recipe,
    tasks: Sequence[ImageTask],
    *,
    lora_folder: Path,
    on_step: StepCallback | None = None,
) -> list[Image.Image]:
    """Generate one image per task: the first pass, then the hires pass when asked."""
    return denoise(model, recipe, tasks, lora_folder=lora_folder, on_step=on_step).decode()


def denoise(
    model: LoadedModel,
    recipe: Recipe,
    tasks: Sequence[ImageTask],
    *,
    lora_folder: Path,
    on_step: StepCallback | None = None,
    split_decode: bool = False,
) -> Denoised:
    """Run the pipeline for one image per task. With `split_decode`, and when the recipe allows
    it (`can_split_decode`), the VAE decode is left to `Denoised.decode`; otherwise the images are
    decoded here as in `generate`."""
    check_inputs(model, recipe, tasks)
    split = split_decode and can_split_decode(model, recipe)
    with lora_adapters.applied(model.pipe, model.loras, lora_folder, recipe.loras):
        pipe = model.for_mode(recipe.mode)
        with _sampler(pipe, recipe.sampler):
            images = _call(
                pipe, model, recipe.mode, tasks, on_step, "generating",
                width=recipe.width, height=recipe.height, steps=recipe.steps,
                guidance_scale=recipe.guidance_scale, strength=recipe.strength,
                images=[task.init_image for task in tasks] if recipe.mode != "txt2img" else None,
                output_type="latent" if split else "pil",
            )
        if split:
            return Denoised(latents=images, vae=pipe.vae, image_processor=pipe.image_processor)
        if recipe.mode == "inpaint":
            images = [_overlay(image, task) for image, task in zip(images, tasks, strict=True)]
        if recipe.hires is not None:
            images = _hires(model, recipe, tasks, images, on_step)
    return Denoised(images=images)


def _call(pipe, model: LoadedModel, mode: str, tasks: Sequence[ImageTask], on_step: StepCallback | None,
          phase: str, *, width: int, height: int, steps: int, guidance_scale: float,
          strength: float | None = None, images: list[Image.Image] | None = None,
          output_type: str = "pil"):
    # CPU generators make a seed give the same image on every device.
    generators = [torch.Generator("cpu").manual_seed(task.seed) for task in tasks]
    stopped = False

    def step_end(pipeline, step_index: int, _timestep, kwargs: dict) -> dict:
        nonlocal stopped
        # Samplers like Heun call the model more often than there are steps, and img2img runs
        # only `strength` of them: report the real count.
        total = getattr(pipeline, "num_timesteps", None) or steps
        if on_step is not None and on_step(step_index + 1, total, kwargs["latents"], phase):
            stopped = True
            pipeline._interrupt = True
        return kwargs

    options: dict = {}
    if model.entry.supports_negative_prompt:
        options["negative_prompt"] = [task.negative_prompt or "" for task in tasks]
    if mode != "txt2img":
        options["image"] = images
        options["strength"] = strength
    if mode == "inpaint":
        options["mask_image"] = [task.mask_image for task in tasks]
    with torch.inference_mode():
        result = pipe(
            prompt=[task.prompt for task in tasks],
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            width=width,
            height=height,
            generator=generators,
            callback_on_step_end=step_end,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type=output_type,
            **options,
        )
    if stopped:
        raise Interrupted
    # "latent": a tensor of the batch's latents (the VAE decode is the caller's).
    return result.images if output_type == "latent" else list(result.images)


def _overlay(generated: Image.Image, task: ImageTask) -> Image.Image:
    """Keep the init image outside the mask exactly, as A1111 does (the VAE round trip would
    otherwise change pixels the user did not ask to repaint)."""
    init = task.init_image.convert("RGB").resize(generated.size)
    mask = task.mask_image.convert("L").resize(generated.size)
    return Image.composite(generated, init, mask)


def _hires(model: LoadedModel, recipe: Recipe, tasks: Sequence[ImageTask], images: list[Image.Image],
           on_step: StepCallback | None) -> list[Image.Image]:
    """Upscale (Lanczos) to the hires size, then an img2img pass there with the hires strength."""
    hires = recipe.hires
    upscaled = [image.resize((hires.width, hires.height), Image.Resampling.LANCZOS) for image in images]
    pipe = model.for_mode("img2img")
    with _sampler(pipe, recipe.sampler):
        return _call(
            pipe, model, "img2img", tasks, on_step, "hires", images=upscaled,
            width=hires.width, height=hires.height, steps=hires.steps,
            guidance_scale=recipe.guidance_scale, strength=hires.denoising_strength,
        )
