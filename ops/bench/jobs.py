"""Submitting and following bench jobs through a running stack (shared by the cases and the harness)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx

from ops.bench.follow import Follower
from schemas import topology

if TYPE_CHECKING:
    from ops.bench.harness import Context
    from ops.bench.stack import Stack

SMALL_JOB = {"width": 64, "height": 64, "num_inference_steps": 4, "guidance_scale": 7.5}


async def submit(client: httpx.AsyncClient, seed: int, **settings) -> str:
    answer = await client.post("/v1/jobs", json={"prompt": "a red fox", "settings": {**SMALL_JOB, "seed": seed, **settings}})
    answer.raise_for_status()
    return answer.json()["id"]


async def run_job(client: httpx.AsyncClient, follower: Follower, seed: int, **settings) -> float:
    """Seconds from submitting one job to its job.completed event."""
    started = time.monotonic()
    job_id = await submit(client, seed, **settings)
    kind, ended = await follower.end_of(job_id)
    if kind != topology.JOB_COMPLETED:
        raise RuntimeError(f"bench job {job_id} ended {kind}")
    return ended - started


async def warm_up(ctx: Context, stack: Stack, jobs: int | None = None) -> None:
    jobs = jobs or (1 if ctx.quick else 3)
    follower = await Follower(ctx.amqp_url, stack.namespace).start((topology.EVERY_JOB_EVENT,))
    try:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60, headers=stack.headers) as client:
            for seed in range(jobs):
                await run_job(client, follower, seed)
    finally:
        await follower.close()
