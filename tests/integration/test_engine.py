"""The generation engine on the real tiny model through the real broker: every mode, samplers,
LoRAs, progress with previews, cancellation, the warm model cache, dynamic batching."""

from __future__ import annotations

import io
import shutil
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
from PIL import Image

from schemas.events import (
    GenerateImages,
    ImageGenerated,
    JobCancelled,
    JobCancelRequested,
    JobFailed,
    JobProgressed,
    JobStarted,
    ModelEvicted,
    ModelLoaded,
    ModelLoading,
)
from schemas.jobs import GenerationSettings, HiresSettings, JobSpec, LoraRef
from services.generator.main import main as generator_main
from tests.support import running

CREATED = datetime(2026, 3, 20, 10, 30, tzinfo=UTC)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=int)


def job(job_id: str, *, seed: int = 7, images: int = 1, steps: int = 4, size: int = 64, model: str = "tiny-sd",
        prompt: str = "a red fox", init: bytes | None = None, mask: bytes | None = None, **fields) -> GenerateImages:
    settings = GenerationSettings(
        num_images=images, num_inference_steps=steps, guidance_scale=7.5, width=size, height=size, seed=seed,
        batch_size=images, sampler=fields.pop("sampler", "Euler"), strength=fields.pop("strength", None),
        hires=fields.pop("hires", None),
    )
    mode = "inpaint" if mask else "img2img" if init else "txt2img"
    spec = JobSpec(prompt=prompt, model=model, settings=settings, mode=mode, **fields)
    return GenerateImages(job_id=job_id, spec=spec, created_at=CREATED, init_image=init, mask_image=mask)


def configured(settings, **changes):
    return msgspec.structs.replace(settings, **changes)


async def test_img2img_starts_from_the_init_image_and_runs_strength_of_the_steps(with_tiny_model, bus, tap):
    init = png_bytes(Image.new("RGB", (64, 64), (200, 40, 40)))
    async with running(generator_main, with_tiny_model, "generator", bus):
        await bus.send(job("i2i", init=init, steps=10, strength=0.5))
        [image] = await tap.wait(ImageGenerated, "i2i")
    assert pixels(image.png).shape == (64, 64, 3)
    assert [e.total_steps for e in tap.of(JobProgressed, "i2i")][-1] == 5, "strength 0.5 of 10 steps"


async def test_inpaint_repaints_only_inside_the_mask(with_tiny_model, bus, tap):
    init_image = Image.new("RGB", (64, 64), (30, 160, 90))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    async with running(generator_main, with_tiny_model, "generator", bus):
        await bus.send(job("inpaint", init=png_bytes(init_image), mask=png_bytes(mask), strength=1.0))
        [image] = await tap.wait(ImageGenerated, "inpaint")
    out, before = pixels(image.png), np.asarray(init_image, dtype=int)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], before[outside]), "unmasked pixels kept exactly"
    assert np.abs(out[20:44, 20:44] - before[20:44, 20:44]).max() > 20, "masked area repainted"


async def test_hires_fix_upscales_then_runs_a_second_pass(with_tiny_model, bus, tap):
    hires = HiresSettings(scale=2.0, denoising_strength=0.5, steps=4, width=128, height=128)
    async with running(generator_main, with_tiny_model, "generator", bus):
        await bus.send(job("hires", hires=hires))
        [image] = await tap.wait(ImageGenerated, "hires")
    assert (image.width, image.height) == (128, 128) and pixels(image.png).shape == (128, 128, 3)
    phases = [(e.phase, e.step) for e in tap.of(JobProgressed, "hires")]
    assert phases == [("generating", 1), ("generating", 2), ("generating", 3), ("generating", 4), ("hires", 1), ("hires", 2)]
    assert "Hires upscale: 2, Hires steps: 4" in Image.open(io.BytesIO(image.png)).text["parameters"]


async def test_samplers_change_the_image_and_multi_call_samplers_report_their_real_steps(with_tiny_model, bus, tap):
    async with running(generator_main, with_tiny_model, "generator", bus):
        for job_id, sampler in (("euler", "Euler"), ("karras", "DPM++ 2M Karras"), ("heun", "Heun"), ("euler-again", "Euler")):
            await bus.send(job(job_id, sampler=sampler))
            await tap.wait(ImageGenerated, job_id)
    euler, karras, heun, again = (tap.of(ImageGenerated, j)[0].png for j in ("euler", "karras", "heun", "euler-again"))
    assert euler != karras and euler != heun
    assert euler == again, "the model's own scheduler is back after another sampler ran"
    assert tap.of(JobProgressed, "heun")[-1].total_steps == 7, "Heun calls the model 2n-1 times"
    assert "Sampler: DPM++ 2M Karras" in Image.open(io.BytesIO(karras)).text["parameters"]


async def test_a_lora_changes_the_output_and_the_next_job_sees_the_base_model_exactly(
        with_tiny_model, tiny_lora, bus, tap):
    loras = Path(with_tiny_model.data_dir) / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_lora, loras / "fox.safetensors")
    async with running(generator_main, with_tiny_model, "generator", bus):
        for job_id, refs in (("base", ()), ("lora", (LoraRef("fox", 1.0),)), ("half", (LoraRef("fox", 0.5),)), ("after", ())):
            await bus.send(job(job_id, loras=refs))
            await tap.wait(ImageGenerated, job_id)
        await bus.send(job("missing", loras=(LoraRef("gone", 1.0),)))
        [failed] = await tap.wait(JobFailed, "missing")
    base, lora, half, after = (pixels(tap.of(ImageGenerated, j)[0].png) for j in ("base", "lora", "half", "after"))
    assert np.abs(lora - base).max() > 5 and np.abs(half - base).max() > 0
    assert np.abs(half - base).mean() < np.abs(lora - base).mean(), "weight scales the effect"
    assert np.array_equal(after, base), "the LoRA was switched off after its job"
    assert "<lora:fox:1>" in Image.open(io.BytesIO(tap.of(ImageGenerated, "lora")[0].png)).text["parameters"]
    assert failed.reason.startswith("LoRA 'gone' is not in the library")


async def test_progress_comes_every_step_with_previews_every_n(with_tiny_model, bus, tap):
    async with running(generator_main, configured(with_tiny_model, preview_every=3), "generator", bus):
        await bus.send(job("watch", steps=10))
        await tap.wait(ImageGenerated, "watch")
    progress = tap.of(JobProgressed, "watch")
    assert [e.step for e in progress] == list(range(1, 11)) and {e.total_steps for e in progress} == {10}
    with_previews = [e.step for e in progress if e.preview]
    assert with_previews == [3, 6, 9, 10]
    for event in progress:
        if event.preview:
            assert Image.open(io.BytesIO(event.preview)).format == "PNG"
    assert tap.events.index(progress[-1]) < tap.events.index(tap.of(ImageGenerated, "watch")[0])


async def test_a_running_job_is_cancelled_within_a_step_and_its_images_discarded(with_tiny_model, bus, tap):
    async with running(generator_main, with_tiny_model, "generator", bus):
        await bus.send(job("long", steps=50, size=256))
        await tap.wait(JobProgressed, "long")
        await bus.publish(JobCancelRequested(job_id="long"))
        await bus.send(job("next"))
        await tap.wait(ImageGenerated, "next")
    assert not tap.of(JobCancelled, "long"), "whoever cancels a job announces it, not the generator"
    last_step = max(e.step for e in tap.of(JobProgressed, "long"))
    assert last_step < 50, "stopped early"
    assert not tap.of(ImageGenerated, "long"), "partial images are never published"


async def test_models_load_once_and_are_evicted_to_stay_in_budget(with_tiny_model, second_model, bus, tap):
    data_dir = Path(with_tiny_model.data_dir)
    shutil.copytree(second_model, data_dir / "models" / "tiny-b")
    Path(with_tiny_model.config_path).write_text(f'[models.tiny-b]\nsource = "{data_dir / "models" / "tiny-b"}"\n')
    # Room for one tiny model (8.2 MB) but not two.
    async with running(generator_main, configured(with_tiny_model, memory_budget=12_000_000), "generator", bus):
        for job_id, model in (("a1", "tiny-sd"), ("b1", "tiny-b"), ("b2", "tiny-b"), ("a2", "tiny-sd")):
            await bus.send(job(job_id, model=model))
            await tap.wait(ImageGenerated, job_id)
    assert [(e.job_id, e.model) for e in tap.of(ModelLoading)] == [("b1", "tiny-b"), ("a2", "tiny-sd")]
    assert [(e.job_id, e.model) for e in tap.of(ModelEvicted)] == [("b1", "tiny-sd"), ("a2", "tiny-b")]
    loaded = tap.of(ModelLoaded, "b1")[0]
    assert loaded.seconds > 0 and 8_000_000 < loaded.bytes < 9_000_000
    assert not tap.of(ModelLoading, "b2"), "no reload between two jobs that share a model"
    different = pixels(tap.of(ImageGenerated, "a1")[0].png) - pixels(tap.of(ImageGenerated, "b1")[0].png)
    assert np.abs(different).max() > 0, "the two models really are different"


async def test_compatible_queued_jobs_share_a_call_and_match_unbatched_images(with_tiny_model, bus, tap):
    prompts = ["a red fox", "a blue bird", "a green frog", "a grey wolf"]
    batched_settings = configured(with_tiny_model, max_batch=4)
    async with running(generator_main, batched_settings, "generator", bus):
        await bus.send(job("blocker", size=128, steps=30))  # keeps the worker busy while the others queue
        await tap.wait(JobStarted, "blocker")
        for n, prompt in enumerate(prompts):
            await bus.send(job(f"batched-{n}", seed=100 + n, prompt=prompt))
        for n in range(4):
            await tap.wait(ImageGenerated, f"batched-{n}")
    assert {tap.of(JobStarted, f"batched-{n}")[0].batch_jobs for n in range(4)} == {4}, "one call for four jobs"
    async with running(generator_main, configured(with_tiny_model, max_batch=1), "generator", bus):
        for n, prompt in enumerate(prompts):
            await bus.send(job(f"alone-{n}", seed=100 + n, prompt=prompt))
        for n in range(4):
            await tap.wait(ImageGenerated, f"alone-{n}")
    assert {tap.of(JobStarted, f"alone-{n}")[0].batch_jobs for n in range(4)} == {1}
    for n in range(4):
        batched, alone = (pixels(tap.of(ImageGenerated, f"{kind}-{n}")[0].png) for kind in ("batched", "alone"))
        assert np.abs(batched - alone).max() <= 1, f"job {n}: batching changed pixels by more than one level"
        assert tap.of(ImageGenerated, f"batched-{n}")[0].metadata.seed == 100 + n
