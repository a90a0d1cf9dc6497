"""PNG encoding with the generation parameters embedded, readable by A1111 and other tools."""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

from schemas.jobs import JobSpec

PARAMETERS_KEY = "parameters"  # A1111's text chunk, read by most image tools
DARKROOM_KEY = "darkroom"  # the full request as JSON


def a1111_parameters(spec: JobSpec, *, seed: int, width: int, height: int) -> str:
    """The `parameters` text A1111 writes for one image of the job: prompt (LoRAs as
    <lora:name:weight>), the negative prompt line, then `key: value` pairs.

    `seed`, `width` and `height` are the image's own (its seed in the job, its size after hires).
    """
    settings, hires = spec.settings, spec.settings.hires
    lines = [" ".join([spec.prompt, *(f"<lora:{lora.name}:{lora.weight:g}>" for lora in spec.loras)])]
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    pairs = [
        ("Steps", settings.num_inference_steps),
        ("Sampler", settings.sampler or "Default"),
        ("CFG scale", f"{settings.guidance_scale:g}"),
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
        ("Model", spec.model),
    ]
    # img2img and inpaint denoise by `strength`; a txt2img job only in its hires pass.
    denoising_strength = settings.strength if spec.mode != "txt2img" else (hires.denoising_strength if hires else None)
    if denoising_strength is not None:
        pairs.append(("Denoising strength", f"{denoising_strength:g}"))
    if hires is not None:
        pairs += [("Hires upscale", f"{hires.scale:g}"), ("Hires steps", hires.steps), ("Hires upscaler", "Lanczos")]
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs))
    return "\n".join(lines)


def encode_png(image: Image.Image, parameters: str, request: dict) -> bytes:
    """PNG bytes of `image` with A1111 `parameters` and a `darkroom` JSON chunk. Deterministic."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    info.add_text(DARKROOM_KEY, json.dumps(request, sort_keys=True, separators=(",", ":")))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=6)
    return buffer.getvalue()


def read_png_text(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG."""
    with Image.open(io.BytesIO(data)) as image:
        return dict(image.text)  # type: ignore[attr-defined]
