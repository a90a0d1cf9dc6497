"""Model-affinity routing on the real broker with real generator workers and the real tiny model,
registered under three ids (m1, m2, m3), each worker's memory budget holding one model at a time."""

from __future__ import annotations

import contextlib
import random
import sys
from pathlib import Path

import msgspec

from ops.bench.affinity import model_loads
from ops.netns import clean_env, stop_all
from schemas.events import ImageGenerated
from schemas.settings import Settings
from tests.integration.test_generator import command
from tests.integration.test_remote_workers import spawn
from tests.support import eventually

MODELS = ("m1", "m2", "m3")


def three_models(settings: Settings, *, default: str | None = None, **changes) -> Settings:
    """The tiny model under three more ids; one model warm at a time; torch on one thread each."""
    source = Path(settings.data_dir) / "models" / "tiny-sd"
    lines = [f'default = "{default}"'] if default else []
    for model in MODELS:
        lines += [f"[models.{model}]", f'source = "{source}"', 'dtype = "float32"']
    Path(settings.config_path).write_text("\n".join(lines) + "\n")
    return msgspec.structs.replace(settings, **{"memory_budget": 1, "torch_threads": 1, "warmup": "off",
                                                "max_batch": 2, **changes})


def environment(settings: Settings) -> dict[str, str]:
    """The DARKROOM_* variables that give a process these settings."""
    defaults = Settings()
    return clean_env(**{f"DARKROOM_{name.upper()}": str(getattr(settings, name)) for name in settings.__struct_fields__
                        if getattr(settings, name) != getattr(defaults, name)})


@contextlib.asynccontextmanager
async def workers(settings: Settings, bus, count: int):
    """`count` generator processes (`python -m services.generator`: one diffusers per process), all
    consuming before the block starts; their model queues are deleted after it."""
    async def all_consuming() -> bool:
        for process in processes:
            assert process.poll() is None, f"a generator exited; see {Path(settings.data_dir).parent}"
        return await bus.consumer_count("generator") >= count

    env = environment(settings)
    logs = Path(settings.data_dir).parent
    processes = [spawn([sys.executable, "-m", "services.generator"], env, logs / f"generator-{n}.log")
                 for n in range(count)]
    try:
        await eventually(all_consuming, timeout=180, interval=0.2, what=f"{count} generators consuming")
        yield
    finally:
        await stop_all(processes)
        channel = await bus.connection.channel()
        for model in (*MODELS, "tiny-sd"):
            with contextlib.suppress(Exception):
                await channel.queue_delete(bus.topology.model_queue(model))
        with contextlib.suppress(Exception):
            await channel.close()


def mixed_jobs(count: int, seed: int = 21) -> list:
    rng = random.Random(seed)
    return [command(f"job-{n}", seed=n, model=rng.choice(MODELS), steps=2) for n in range(count)]


async def run_mixed(settings: Settings, bus, tap, jobs: int) -> int:
    """Send `jobs` mixed jobs to three workers; every one yields its image; returns the model loads."""
    async with workers(settings, bus, 3):
        for job in mixed_jobs(jobs):
            await bus.send(job)
        await tap.wait(ImageGenerated, count=jobs, timeout=240)
    assert {event.job_id for event in tap.of(ImageGenerated)} == {f"job-{n}" for n in range(jobs)}
    return model_loads(tap.events)


async def test_with_affinity_three_workers_serve_three_models_with_few_loads(with_tiny_model, bus, tap):
    # Random dispatch of 30 jobs over 3 models to workers holding one model each loads a model for
    # most batches (15 or more here); affinity loads each model about once.
    loads = await run_mixed(three_models(with_tiny_model), bus, tap, 30)
    assert loads <= len(MODELS) + 3, f"{loads} model loads for 30 jobs over 3 models and 3 workers"


async def test_shared_routing_still_serves_every_job(with_tiny_model, bus, tap):
    bus.routing = "shared"  # how the enricher and the reaper send under DARKROOM_ROUTING=shared
    settings = three_models(with_tiny_model, routing="shared")
    jobs = mixed_jobs(12)
    for job in jobs:
        await bus.send(job)
    shared = bus.topology.queue("generator")
    waiting = await bus.queue_depths([shared, *(bus.topology.model_queue(model) for model in MODELS)])
    assert waiting == {shared: (12, 0)}, "every job waits in the one generator queue; no model queue exists"
    async with workers(settings, bus, 3):
        await tap.wait(ImageGenerated, count=12, timeout=240)
    assert {event.job_id for event in tap.of(ImageGenerated)} == {job.job_id for job in jobs}


async def test_an_idle_worker_takes_the_queue_of_a_model_nobody_serves(with_tiny_model, bus, tap):
    settings = three_models(with_tiny_model)  # warm: tiny-sd, the default; no m2 anywhere
    async with workers(settings, bus, 1):
        for n in range(3):
            await bus.send(command(f"job-{n}", seed=n, model="m2", steps=2))
        await tap.wait(ImageGenerated, count=3, timeout=60)
        depths = await bus.queue_depths([bus.topology.model_queue("m2"), bus.topology.model_queue("tiny-sd")])
    assert depths[bus.topology.model_queue("m2")] == (0, 1), "the worker now consumes m2's queue"
    assert depths[bus.topology.model_queue("tiny-sd")][1] == 0, "and no longer tiny-sd's (evicted)"


async def test_a_busy_worker_takes_a_starving_queue_after_the_patience(with_tiny_model, bus, tap):
    settings = three_models(with_tiny_model, default="m1", affinity_patience=1.0, max_batch=1)
    async with workers(settings, bus, 1):
        for n in range(12):  # ~12 s of m1's work; patience 1 s, a look every ~0.5 s
            await bus.send(command(f"busy-{n}", seed=n, model="m1", steps=20))
        await bus.send(command("starving", model="m2", steps=2))
        await tap.wait(ImageGenerated, count=13, timeout=240)
    order = [event.job_id for event in tap.of(ImageGenerated)]
    assert order.index("starving") < order.index("busy-11"), \
        f"m2's job waited for all of m1's: it ran at position {order.index('starving') + 1} of 13"
