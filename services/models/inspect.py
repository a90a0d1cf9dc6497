"""What a pulled model is, read from its files without loading it: the family (which pipeline),
the native size, and the catalog defaults that follow from them."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from schemas.catalog import Family, ModelDefaults, ModelLimits

PIPELINE_FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": "sd1.x",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}
NATIVE_SIZE: dict[str, int] = {"sd1.x": 512, "sd2.x": 768, "sdxl": 1024, "sd3": 1024, "flux": 1024}
# Steps and guidance each family's model cards recommend.
STEPS_GUIDANCE: dict[str, tuple[int, float]] = {
    "sd1.x": (30, 7.5), "sd2.x": (30, 7.5), "sdxl": (30, 7.0), "sd3": (28, 7.0), "flux": (28, 3.5),
}


class NotAModel(ValueError):
    """The files are not a model Darkroom can load; the message says why."""


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NotAModel(f"{path.name}: {exc}") from None


def folder_family(folder: Path) -> tuple[Family, int]:
    """Family and native size (pixels) of a diffusers folder, from model_index.json and the configs."""
    index = _json(folder / "model_index.json")
    family = PIPELINE_FAMILIES.get(index.get("_class_name", ""))
    if family is None:
        raise NotAModel(f"pipeline {index.get('_class_name')!r} is not one Darkroom runs "
                        f"({', '.join(PIPELINE_FAMILIES)})")
    size = NATIVE_SIZE[family]
    unet = folder / "unet" / "config.json"
    vae = folder / "vae" / "config.json"
    if family == "sd1.x" and unet.exists():
        config = _json(unet)
        if config.get("cross_attention_dim") == 1024:
            family = "sd2.x"
        if isinstance(config.get("sample_size"), int) and vae.exists():
            channels = _json(vae).get("block_out_channels") or [0]
            size = config["sample_size"] * 2 ** (len(channels) - 1)
        else:
            size = NATIVE_SIZE[family]
    return family, size


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names from a safetensors header (8-byte length + JSON), no tensor read."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100 * 1024**2:
                raise NotAModel(f"{path.name}: safetensors header of {length} bytes")
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise NotAModel(f"{path.name} is not a safetensors file: {exc}") from None
    return [key for key in header if key != "__metadata__"]


def checkpoint_family(path: Path) -> Family:
    """Family of a single-file checkpoint, from its tensor names (original LDM layouts)."""
    if path.suffix != ".safetensors":
        return "sd1.x"  # a pickle is not opened to look inside; the operator may correct the entry
    keys = safetensors_keys(path)
    if any(k.startswith("conditioner.embedders.1") for k in keys):
        return "sdxl"
    if any("double_blocks." in k for k in keys):
        return "flux"
    if any("joint_blocks." in k for k in keys):
        return "sd3"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2.x"
    return "sd1.x"


def defaults_for(family: str, native: int) -> tuple[ModelDefaults, ModelLimits]:
    steps, guidance = STEPS_GUIDANCE.get(family, (30, 7.5))
    size = max(64, native - native % 8)
    return (ModelDefaults(num_inference_steps=steps, guidance_scale=guidance, width=size, height=size),
            ModelLimits(max_width=max(1024, 2 * size), max_height=max(1024, 2 * size)))
