"""Generation recipes over a loaded pipeline. One call generates a batch of images, each with its own
prompt and seed, so that one job's images and several compatible jobs' images run the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from pipelines.loader import LoadedModel

# Called after every denoising step with (step, total_steps, latents); returning True stops the call.
StepCallback = Callable[[int, int, torch.Tensor], bool]


class Interrupted(Exception):
    """The step callback stopped the call; whatever the pipeline returned is discarded."""


class InvalidRequest(ValueError):
    """A parameter the model cannot take; the message names it (checked before any GPU work)."""


@dataclass(frozen=True)
class ImageTask:
    """One image to generate."""

    prompt: str
    negative_prompt: str | None
    seed: int


def check_inputs(model: LoadedModel, width: int, height: int, steps: int) -> None:
    """Refuse what the model cannot do, naming the parameter, before any GPU work."""
    error = model.entry.settings_error(width, height, steps)
    if error:
        raise InvalidRequest(error)


def txt2img(
    model: LoadedModel,
    tasks: Sequence[ImageTask],
    *,
    width: int,
    height: int,
    steps: int,
    guidance_scale: float,
    on_step: StepCallback | None = None,
) -> list[Image.Image]:
    """Generate one image per task in a single pipeline call."""
    check_inputs(model, width, height, steps)
    pipe = model.pipe
    # CPU generators make a seed give the same image on every device.
    generators = [torch.Generator("cpu").manual_seed(task.seed) for task in tasks]
    stopped = False

    def step_end(pipeline, step_index: int, _timestep, kwargs: dict) -> dict:
        nonlocal stopped
        if on_step is not None and on_step(step_index + 1, steps, kwargs["latents"]):
            stopped = True
            pipeline._interrupt = True
        return kwargs

    options: dict = {}
    if model.entry.supports_negative_prompt:
        options["negative_prompt"] = [task.negative_prompt or "" for task in tasks]
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
            output_type="pil",
            **options,
        )
    if stopped:
        raise Interrupted
    return list(result.images)
