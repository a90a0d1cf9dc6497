"""PNG text chunks other tools read: A1111's `parameters`, and our JSON."""

from __future__ import annotations

import json

from PIL import Image

from pipelines.png import a1111_parameters, encode_png, read_png_text
from schemas.jobs import GenerationSettings, HiresSettings, JobSpec, LoraRef


def test_parameters_in_a1111_layout():
    settings = GenerationSettings(num_images=1, num_inference_steps=20, sampler="DPM++ 2M Karras", guidance_scale=7.0,
                                  seed=42, width=512, height=768)
    spec = JobSpec(prompt="a red fox", negative_prompt="blurry", model="sd15", settings=settings)
    text = a1111_parameters(spec, seed=42, width=512, height=768)
    assert text == (
        "a red fox\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x768, Model: sd15"
    )


def test_loras_denoising_and_hires_follow_a1111():
    hires = HiresSettings(scale=2, denoising_strength=0.6, steps=4, width=128, height=128)
    settings = GenerationSettings(num_images=1, num_inference_steps=4, guidance_scale=7.5, seed=1, width=64, height=64,
                                  hires=hires)
    spec = JobSpec(prompt="a fox", model="tiny-sd", settings=settings, loras=(LoraRef("detail", 0.8),))
    text = a1111_parameters(spec, seed=1, width=128, height=128)
    assert text.splitlines()[0] == "a fox <lora:detail:0.8>"
    assert text.splitlines()[1].endswith("Denoising strength: 0.6, Hires upscale: 2, Hires steps: 4, Hires upscaler: Lanczos")


def test_chunks_survive_encoding_and_encoding_is_deterministic():
    image = Image.new("RGB", (16, 8), (200, 30, 30))
    first = encode_png(image, "params", {"seed": 1, "prompt": "p"})
    assert first == encode_png(image, "params", {"prompt": "p", "seed": 1})
    chunks = read_png_text(first)
    assert chunks["parameters"] == "params"
    assert json.loads(chunks["darkroom"]) == {"seed": 1, "prompt": "p"}
