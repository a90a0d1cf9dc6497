"""`affinity` (only when named): model-affinity routing against random dispatch. Three models (the
tiny model under the ids m1, m2, m3), three generator processes each holding one model at a time
(memory budget), the same mixed workload (models in a seeded random order, submitted at once),
run with DARKROOM_ROUTING=shared (the baseline: one queue, whichever worker is free takes the
next job) and with affinity (each model's own queue). Reports the model loads (model.loaded
events, one per load) and images/s both ways. Target (issue 21): at least 80% fewer loads."""

from __future__ import annotations

import asyncio
import os
import random
import time

import httpx

from ops.bench.harness import Context, Measurement
from ops.bench.jobs import SMALL_JOB
from schemas import topology
from schemas.events import Event, JobCompleted, JobFailed, ModelLoaded
from schemas.topology import Topology
from services.bus import Bus

MODELS = ("m1", "m2", "m3")
WORKERS = 3
CATALOG = "".join(f'[models.{m}]\nsource = "./var/models/tiny-sd"\ndtype = "float32"\n' for m in MODELS)


def model_loads(events: list[Event]) -> int:
    """Loads of a model for jobs (not the default's warm-up at start). A load announces itself
    once per job of the batch that needed it, all with the same worker, model and load time."""
    return len({(e.worker, e.model, e.seconds, e.bytes) for e in events if isinstance(e, ModelLoaded) and e.job_id})


async def affinity(ctx: Context) -> list[Measurement]:
    jobs = 24 if ctx.quick else 60
    rng = random.Random(2101)
    order = [rng.choice(MODELS) for _ in range(jobs)]
    results = {routing: await mixed_run(ctx, routing, order) for routing in ("shared", "affinity")}
    (shared_loads, shared_rate), (loads, rate) = results["shared"], results["affinity"]
    # Every worker starts with tiny-sd warm, which no job uses: WORKERS loads happen either way.
    details = {"jobs": jobs, "models": len(MODELS), "workers": WORKERS, "cores": os.cpu_count() or 1,
               "unavoidable_loads": WORKERS}
    return [
        Measurement(case="affinity", metric=f"model loads, {jobs} mixed jobs, {WORKERS} workers x 1 warm model",
                    unit="loads", darkroom=loads, baseline=shared_loads, better="lower",
                    target="<= 0.2x random dispatch", met=loads <= 0.2 * shared_loads, details=details),
        Measurement(case="affinity", metric=f"throughput, {jobs} mixed jobs at once, affinity vs random dispatch",
                    unit="images/s", darkroom=rate, baseline=shared_rate, better="higher", details=details),
    ]


async def mixed_run(ctx: Context, routing: str, order: list[str]) -> tuple[int, float]:
    """One stack with `routing`; every job of `order` submitted at once: (model loads, images/s)."""
    name = f"affinity-{routing}"
    (ctx.work / name).mkdir(parents=True, exist_ok=True)
    (ctx.work / name / "darkroom.toml").write_text(CATALOG)
    stack = await ctx.stack(name, env={
        "DARKROOM_ROUTING": routing, "DARKROOM_GENERATORS": str(WORKERS), "DARKROOM_MEMORY_BUDGET": "1",
        "DARKROOM_TORCH_THREADS": "1", "DARKROOM_MAX_BATCH": "4", "DARKROOM_WARMUP": "off"})
    bus = await Bus.connect(ctx.amqp_url, Topology(stack.namespace), name="bench-affinity")
    events: list[Event] = []

    async def collect(event: Event) -> None:
        events.append(event)

    try:
        await bus.subscribe([topology.MODEL_LOADED, topology.JOB_COMPLETED, topology.JOB_FAILED], collect,
                            name="bench-affinity")
        deadline = time.monotonic() + 120
        while await bus.consumer_count("generator") < WORKERS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{WORKERS} generators never consumed; see {stack.root / 'stack.log'}")
            await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=stack.url, timeout=120, headers=stack.headers) as client:
            started = time.monotonic()
            for seed, model in enumerate(order):
                answer = await client.post("/v1/jobs", json={"prompt": "a red fox", "model": model,
                                                             "settings": {**SMALL_JOB, "seed": seed}})
                answer.raise_for_status()
            while len(ends := [e for e in events if isinstance(e, JobCompleted | JobFailed)]) < len(order):
                if time.monotonic() - started > 600:
                    raise RuntimeError(f"{len(ends)} of {len(order)} jobs ended in 10 minutes ({routing})")
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
        failed = [e for e in ends if isinstance(e, JobFailed)]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(order)} jobs failed ({routing}): {failed[0].reason}")
        return model_loads(events), len(order) / elapsed
    finally:
        await bus.close()
