"""The generator on the real tiny diffusers model, through the real broker."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import aio_pika
import msgspec
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
            attempt: int = 1, prompt: str = "a red fox") -> GenerateImages:
    settings = GenerationSettings(num_images=images, num_inference_steps=steps, guidance_scale=7.5, width=width, height=64,
                                  seed=seed, batch_size=images)
    return GenerateImages(job_id=job_id, created_at=CREATED, attempt=attempt,
                          spec=JobSpec(prompt=prompt, negative_prompt="blur", model=model, settings=settings))


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
    # Through the shared queue: under affinity routing a job for a model no worker knows waits in
    # that model's queue for a worker that has it (the ingress refuses unknown models up front).
    bus.routing = "shared"
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


async def test_overlapped_batches_give_the_same_png_bytes_as_one_batch_at_a_time(with_tiny_model, bus, tap):
    """DARKROOM_OVERLAP=on decodes and encodes off the pipeline thread while the next batch runs;
    the same jobs in the same batch shape must give the very same files as with it off."""
    jobs = [("a red fox", 100, 1), ("a blue bird", 200, 2), ("a green frog", 300, 1)]
    pngs: dict[str, list[bytes]] = {}
    for overlap in ("on", "off"):
        settings = msgspec.structs.replace(with_tiny_model, overlap=overlap, max_batch=4)
        async with running(generator_main, settings, "generator", bus):
            await bus.send(command(f"blocker-{overlap}", width=128, steps=30))  # the others queue behind it
            await tap.wait(JobStarted, f"blocker-{overlap}")
            for n, (prompt, seed, images) in enumerate(jobs):
                await bus.send(command(f"{overlap}-{n}", seed=seed, images=images, prompt=prompt))
            for n, (_, _, images) in enumerate(jobs):
                await tap.wait(ImageGenerated, f"{overlap}-{n}", count=images)
        assert {tap.of(JobStarted, f"{overlap}-{n}")[0].batch_jobs for n in range(3)} == {3}, "one call for all"
        pngs[overlap] = [event.png for n in range(3) for event in tap.of(ImageGenerated, f"{overlap}-{n}")]
    assert len(pngs["on"]) == 4
    assert pngs["on"] == pngs["off"]


async def test_a_job_cancelled_mid_batch_is_dropped_while_its_batch_mate_is_published(with_tiny_model, bus, tap):
    settings = msgspec.structs.replace(with_tiny_model, max_batch=4)
    async with running(generator_main, settings, "generator", bus):
        await bus.send(command("blocker", width=128, steps=30))
        await tap.wait(JobStarted, "blocker")
        for job in ("keep", "drop"):
            await bus.send(command(job, width=128, steps=40))
        await tap.wait(JobProgressed, "drop")
        await bus.publish(JobCancelRequested(job_id="drop"))
        await tap.wait(ImageGenerated, "keep")
        await bus.send(command("after"))  # the worker carries on
        await tap.wait(ImageGenerated, "after")
    assert tap.of(JobStarted, "keep")[0].batch_jobs == 2
    assert not tap.of(JobCancelled, "drop"), "whoever cancels a job announces it, not the generator"
    assert max(e.step for e in tap.of(JobProgressed, "drop")) < 40, "its progress stops within a step, not at the end"
    assert not tap.of(ImageGenerated, "drop"), "a cancelled job's images are never published"


class _NoLoop:
    """Where step reports would go: nowhere (this test reads only the images)."""

    def call_soon_threadsafe(self, *args) -> None:
        pass


def test_decoding_apart_gives_the_same_png_bytes_as_decoding_in_the_call(tiny_model):
    """On CUDA the VAE decode leaves the pipeline call, to run beside the next batch's UNet: its
    images must be the very ones the call would have decoded (checked here on the CPU)."""
    from pipelines.loader import load
    from schemas.catalog import ModelEntry
    from services.generator.progress import ProgressSettings, StepWatch
    from services.generator.render import Renderer

    model = load(ModelEntry(id="tiny-sd", source=str(tiny_model)), "cpu")
    jobs = [command("a", seed=1, images=2), command("b", seed=2, prompt="a blue bird")]
    watch = StepWatch(loop=_NoLoop(), publish=lambda event: None, cancelled=lambda job: False, interrupted=lambda: False)
    pngs = {}
    for split in (False, True):
        render = Renderer(lora_folder=tiny_model / "loras", capacity=4, split_decode=split,
                          progress=ProgressSettings(rate=0, preview_every=0))
        rendered = render(model, jobs, watch)
        assert all((result.latents is not None) == split for result, _ in rendered.calls)
        pngs[split] = [image.png for job in render.finish(jobs, rendered) for image in job]
    assert len(pngs[True]) == 3 and pngs[True] == pngs[False]
