"""PNG encoding with the generation parameters embedded, readable by A1111 and other tools."""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

PARAMETERS_KEY = "parameters"  # A1111's text chunk, read by most image tools
DARKROOM_KEY = "darkroom"  # the full request as JSON


def a1111_parameters(
    *, prompt: str, negative_prompt: str | None, steps: int, sampler: str | None, cfg_scale: float,
    seed: int, width: int, height: int, model: str, denoising_strength: float | None = None,
    hires_scale: float | None = None, hires_steps: int | None = None,
    loras: tuple[tuple[str, float], ...] = (),
) -> str:
    """The `parameters` text A1111 writes: prompt (LoRAs as <lora:name:weight>), the negative
    prompt line, then `key: value` pairs."""
    lines = [" ".join([prompt, *(f"<lora:{name}:{weight:g}>" for name, weight in loras)])]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = [
        ("Steps", steps),
        ("Sampler", sampler or "Default"),
        ("CFG scale", f"{cfg_scale:g}"),
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
        ("Model", model),
    ]
    if denoising_strength is not None:
        pairs.append(("Denoising strength", f"{denoising_strength:g}"))
    if hires_scale is not None:
        pairs += [("Hires upscale", f"{hires_scale:g}"), ("Hires steps", hires_steps), ("Hires upscaler", "Lanczos")]
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
