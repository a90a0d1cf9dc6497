"""The generator on the real tiny diffusers model, through the real broker."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import aio_pika
from PIL import Image

from pipelines.png import read_png_text
from schemas.events import (
    GenerateImages,
    ImageGenerated,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobFailed,
    JobProgressed,
    JobStarted,
    ModelLoaded,
    ModelLoading,
)
from schemas.jobs import GenerationSettings, JobSpec
from services.generator.main import main as generator_main
from tests.integration.test_bus import dead_letters
from tests.support import running

CREATED = datetime(2026, 3, 20, 10, 30, tzinfo=UTC)


def command(job_id: str, *, seed: int = 7, images: int = 1, model: str = "tiny-sd", width: int = 64, steps: int = 4,
            attempt: int = 1) -> GenerateImages:
    settings = GenerationSettings(num_images=images, num_inference_steps=steps, guidance_scale=7.5, width=width, height=64,
                                  seed=seed, batch_size=images)
    return GenerateImages(job_id=job_id, created_at=CREATED, attempt=attempt,
                          spec=JobSpec(prompt="a red fox", negative_prompt="blur", model=model, settings=settings))


async def test_a_job_runs_with_progress_and_yields_decodable_pngs(with_tiny_model, bus, tap):
    async with running(generator_main, with_tiny_model, "generator", bus):
        await bus.send(command("job-a", images=2, width=96))
        images = await tap.wait(ImageGenerated, "job-a", count=2)
    started = tap.of(JobStarted, "job-a")
    steps = [event.step for event in tap.of(JobProgressed, "job-a")]
    assert len(started) == 1 and started[0].attempt == 1
    assert steps == [1, 2, 3, 4], "every step reported (DARKROOM_PROGRESS_RATE=0 in tests)"
    assert tap.events.index(started[0]) < tap.events.index(images[0])
    for number, event in enumerate(images, start=1):
        assert (event.image_number, event.total_images, event.image_id) == (number, 2, f"job-a_{number}")
        with Image.open(io.BytesIO(event.png)) as image:
            image.load()
            assert image.size == (96, 64) and image.mode == "RGB"
        text = read_png_text(event.png)
        assert text["parameters"].startswith("a red fox\nNegative prompt: blur\nSteps: 4,")
        assert f"Seed: {6 + number}, Size: 96x64, Model: tiny-sd" in text["parameters"]
        assert json.loads(text["darkroom"])["seed"] == 6 + number
        assert event.metadata.seed == 6 + number and event.metadata.generation_time > 0


async def test_same_seed_and_settings_give_the_same_png_bytes(with_tiny_model, bus, tap):
    """One after another, so each runs alone: the same batch shape gives identical bytes."""
    pngs = []
    async with running(generator_main, with_tiny_model, "generator", bus):
        for job, seed in (("same-1", 99), ("same-2", 99), ("other-seed", 100)):
            await bus.send(command(job, seed=seed))
            pngs.append((await tap.wait(ImageGenerated, job))[0].png)
    first, second, other = pngs
    assert first == second
    assert first != other


async def test_the_model_is_loaded_once_and_kept_warm(with_tiny_model, bus, tap):
    async with running(generator_main, with_tiny_model, "generator", bus):
        for job in ("warm-1", "warm-2", "warm-3"):
            await bus.send(command(job))
        await tap.wait(ImageGenerated, "warm-3")
    loads = tap.of(ModelLoaded)
    assert len(loads) == 1 and loads[0].job_id is None and loads[0].bytes > 0, "loaded once, at start"
    assert not tap.of(ModelLoading, "warm-1") and not tap.of(ModelLoading, "warm-3")


async def test_an_unknown_model_fails_the_job_with_the_valid_ids(with_tiny_model, bus, tap):
    async with running(generator_main, with_tiny_model, "generator", bus):
        await bus.send(command("bad-model", model="vanished"))
        [failed] = await tap.wait(JobFailed, "bad-model")
    assert failed.reason == "unknown model 'vanished'; valid models: tiny-sd"


async def test_invalid_settings_fail_before_any_gpu_work(with_tiny_model, bus, tap):
    async with running(generator_main, with_tiny_model, "generator", bus):
        await bus.send(command("bad-size", width=100))
        [failed] = await tap.wait(JobFailed, "bad-size")
    assert failed.reason == "settings.width must be a multiple of 8, got 100"
    assert not tap.of(JobProgressed, "bad-size")


async def test_a_job_cancelled_while_queued_never_runs(with_tiny_model, bus, tap):
    async with running(generator_main, with_tiny_model, "generator", bus):
        await bus.publish(JobCancelRequested(job_id="cancel-me"))
        await tap.wait(JobCancelRequested, "cancel-me")
        await bus.send(command("cancel-me"))
        await bus.send(command("after"))
        await tap.wait(ImageGenerated, "after")  # commands run in order: cancel-me was skipped
    assert not tap.of(JobStarted, "cancel-me") and not tap.of(ImageGenerated, "cancel-me")
    assert not tap.of(JobCancelled, "cancel-me"), "whoever cancels a job announces it, not the generator"


async def test_a_command_of_an_ended_job_never_runs(with_tiny_model, bus, tap):
    """A redelivered or woken command of a job that ended elsewhere (F10) is dropped."""
    async with running(generator_main, with_tiny_model, "generator", bus):
        await bus.publish(JobCompleted(job_id="done-elsewhere", image_ids=[], images=[], attempt=2))
        await tap.wait(JobCompleted, "done-elsewhere")
        await bus.send(command("done-elsewhere", attempt=2))
        await bus.send(command("after"))
        await tap.wait(ImageGenerated, "after")
    assert not tap.of(JobStarted, "done-elsewhere") and not tap.of(ImageGenerated, "done-elsewhere")


async def test_garbage_commands_are_dead_lettered_and_the_generator_keeps_working(with_tiny_model, bus, tap):
    async with running(generator_main, with_tiny_model, "generator", bus) as task:
        channel = await bus.connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(bus.topology.commands, ensure=False)
        await exchange.publish(aio_pika.Message(b'{"type":"generate_images"}'), routing_key="generate_images")
        await bus.send(command("after-garbage"))
        await tap.wait(ImageGenerated, "after-garbage")
        assert not task.done()
    [letter] = await dead_letters(bus, 1)
    assert "undecodable" in letter.headers["x-darkroom-reason"]
