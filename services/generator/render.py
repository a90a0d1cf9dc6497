"""The synchronous render path: a batch of commands -> pipeline calls (with their step
callbacks), in the pipeline thread (`Renderer.__call__`) -> each job's images decoded where the
call left latents and encoded as PNGs (`Renderer.finish`, in the worker's second thread while
the next batch generates; or right after, in the pipeline thread, with DARKROOM_OVERLAP=off).

Nothing here touches the bus or the event loop; progress goes through the `StepWatch` the worker
passes in.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from PIL import Image

from pipelines.generate import Denoised, Hires, ImageTask, Recipe, denoise
from pipelines.loader import LoadedModel
from pipelines.png import a1111_parameters, encode_png
from pipelines.previews import preview_png
from schemas.events import GenerateImages
from schemas.jobs import JobSpec
from services.generator.faults import FaultHook, no_faults
from services.generator.progress import (
    ProgressReporter,
    ProgressSettings,
    Slot,
    StepWatch,
)


@dataclass(frozen=True)
class RenderedImage:
    png: bytes
    width: int
    height: int
    seed: int


@dataclass(frozen=True)
class Rendered:
    """A batch after its pipeline calls: each call's result (maybe still latents) and which
    (job index, image count) it holds, in order, plus the jobs cancelled while sharing a call."""

    calls: list[tuple[Denoised, list[tuple[int, int]]]]
    dropped: set[str]


@dataclass(frozen=True)
class Renderer:
    """How this worker renders (from settings); called with a batch in the pipeline thread."""

    lora_folder: Path
    # Images per pipeline call (DARKROOM_MAX_BATCH).
    capacity: int
    progress: ProgressSettings = field(default_factory=ProgressSettings)
    fault: FaultHook = no_faults

    # Leave the VAE decode of calls that allow it to `finish` (run off the pipeline thread).
    split_decode: bool = False

    def __call__(self, model: LoadedModel, commands: list[GenerateImages], watch: StepWatch) -> Rendered:
        """Run the pipeline calls for a batch (the pipeline thread's part). `finish` makes the PNGs."""
        for command in commands:
            self.fault(command.spec)
        recipe = recipe_of(commands[0].spec)
        all_tasks = [tasks_of(command) for command in commands]
        calls = []
        dropped: set[str] = set()
        for call in calls_for(commands, self.capacity):
            tasks, slots, offset = [], [], 0
            for index, start, count in call:
                command = commands[index]
                slots.append(Slot(job_id=command.job_id, attempt=command.attempt, offset=offset,
                                  first_image=start + 1, total_images=command.spec.settings.num_images))
                tasks += all_tasks[index][start : start + count]
                offset += count
            reporter = ProgressReporter.for_call(slots, watch=watch, settings=self.progress,
                                                 family=model.entry.family, preview=preview_png)
            result = denoise(model, recipe, tasks, lora_folder=self.lora_folder, on_step=reporter,
                             split_decode=self.split_decode)
            dropped |= reporter.dropped
            calls.append((result, [(index, count) for index, _start, count in call]))
        return Rendered(calls, dropped)

    def finish(self, commands: list[GenerateImages], rendered: Rendered,
               skip: Callable[[str], bool] = lambda job_id: False) -> list[list[RenderedImage]]:
        """Decode what is still latents and encode each job's images as PNGs (any thread: PIL's
        zlib releases the GIL). A job dropped during its calls, or that `skip` names now (it was
        cancelled since), gets none: its images are neither decoded apart nor encoded."""
        gone = {command.job_id for command in commands if command.job_id in rendered.dropped or skip(command.job_id)}
        images: list[list[Image.Image]] = [[] for _ in commands]
        for result, parts in rendered.calls:
            if all(commands[index].job_id in gone for index, _ in parts):
                continue
            produced, offset = result.decode(), 0
            for index, count in parts:
                images[index] += produced[offset : offset + count]
                offset += count
        return [
            [] if command.job_id in gone else encode_job(command, job_images)
            for command, job_images in zip(commands, images, strict=True)
        ]


def recipe_of(spec: JobSpec) -> Recipe:
    settings = spec.settings
    hires = settings.hires
    return Recipe(
        mode=spec.mode, width=settings.width, height=settings.height, steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale, sampler=settings.sampler, strength=settings.strength,
        hires=Hires(hires.scale, hires.denoising_strength, hires.steps, hires.width, hires.height) if hires else None,
        loras=tuple((lora.name, lora.weight) for lora in spec.loras),
    )


def _decode(data: bytes | None, mode: str) -> Image.Image | None:
    if data is None:
        return None
    with Image.open(io.BytesIO(data)) as image:
        return image.convert(mode)


def tasks_of(command: GenerateImages) -> list[ImageTask]:
    spec = command.spec
    init, mask = _decode(command.init_image, "RGB"), _decode(command.mask_image, "L")
    return [
        ImageTask(prompt=spec.prompt, negative_prompt=spec.negative_prompt, seed=spec.settings.image_seed(n + 1),
                  init_image=init, mask_image=mask)
        for n in range(spec.settings.num_images)
    ]


def calls_for(commands: list[GenerateImages], capacity: int) -> list[list[tuple[int, int, int]]]:
    """Pipeline calls for a batch: each a list of (job index, first image, image count).

    Several jobs share one call; a single job with more images than it may put in one call
    (A1111's batch_size, or the worker's capacity) runs in several.
    """
    if len(commands) > 1:
        return [[(i, 0, c.spec.settings.num_images) for i, c in enumerate(commands)]]
    settings = commands[0].spec.settings
    size = max(1, min(settings.batch_size, capacity))
    return [[(0, start, min(size, settings.num_images - start))] for start in range(0, settings.num_images, size)]


def encode_job(command: GenerateImages, images: list[Image.Image]) -> list[RenderedImage]:
    spec, settings = command.spec, command.spec.settings
    rendered = []
    for number, image in enumerate(images, start=1):
        seed = settings.image_seed(number)
        parameters = a1111_parameters(spec, seed=seed, width=image.width, height=image.height)
        # Only what produced the pixels goes into the PNG, so the same request gives the same bytes.
        request = {
            "model": spec.model, "mode": spec.mode, "prompt": spec.prompt, "negative_prompt": spec.negative_prompt,
            "settings": msgspec.to_builtins(settings), "seed": seed, "loras": msgspec.to_builtins(spec.loras),
            "init_image": spec.init_image, "mask_image": spec.mask_image,
            "image_number": number, "total_images": settings.num_images,
        }
        rendered.append(RenderedImage(encode_png(image, parameters, request), image.width, image.height, seed))
    return rendered
