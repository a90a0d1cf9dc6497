"""PNG text chunks other tools read: A1111's `parameters`, and our JSON."""

from __future__ import annotations

import json

from PIL import Image

from pipelines.png import a1111_parameters, encode_png, read_png_text


def test_parameters_in_a1111_layout():
    text = a1111_parameters(prompt="a red fox", negative_prompt="blurry", steps=20, sampler="DPM++ 2M Karras",
                            cfg_scale=7.0, seed=42, width=512, height=768, model="sd15")
    assert text == (
        "a red fox\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x768, Model: sd15"
    )


def test_loras_denoising_and_hires_follow_a1111():
    text = a1111_parameters(prompt="a fox", negative_prompt=None, steps=4, sampler=None, cfg_scale=7.5, seed=1,
                            width=128, height=128, model="tiny-sd", denoising_strength=0.6, hires_scale=2,
                            hires_steps=4, loras=(("detail", 0.8),))
    assert text.splitlines()[0] == "a fox <lora:detail:0.8>"
    assert text.splitlines()[1].endswith("Denoising strength: 0.6, Hires upscale: 2, Hires steps: 4, Hires upscaler: Lanczos")


def test_chunks_survive_encoding_and_encoding_is_deterministic():
    image = Image.new("RGB", (16, 8), (200, 30, 30))
    first = encode_png(image, "params", {"seed": 1, "prompt": "p"})
    assert first == encode_png(image, "params", {"prompt": "p", "seed": 1})
    chunks = read_png_text(first)
    assert chunks["parameters"] == "params"
    assert json.loads(chunks["darkroom"]) == {"seed": 1, "prompt": "p"}
