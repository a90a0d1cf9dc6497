"""Bench case `sustained`: the ingress's memory under sustained load (attack report F4).

A stack of ingress, enricher, saver and recorder with a no-op generator (no diffusion: the
control plane is what holds memory) takes 10,000 one-image jobs through POST /v1/jobs, 16 at a
time; the ingress's RSS is read at its idle start (the baseline) and after 1,000, 5,000 and 10,000
jobs, once each batch has completed and the projection caught up. Flat means the read model's
memory is bounded (DuckDB memory limit, WAL checkpoints)."""

from __future__ import annotations

import asyncio

import httpx

from ops.bench.harness import Context, Measurement
from ops.bench.jobs import SMALL_JOB
from ops.bench.stack import helper_process, rss

MB = 1024 * 1024
CONCURRENCY = 16


async def _submit(client: httpx.AsyncClient, count: int, first: int) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(first, first + count):
        queue.put_nowait(n)

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            answer = await client.post("/v1/jobs", json={"prompt": f"fox {n}", "settings": {**SMALL_JOB, "seed": n}})
            answer.raise_for_status()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _drained(client: httpx.AsyncClient, total: int, timeout: float = 600) -> None:
    """Until every job submitted so far completed and the projection shows it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        stats = (await client.get("/v1/queue")).json()
        if stats["completed"] >= total and stats["pending"] == stats["processing"] == 0:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"sustained: {stats} after {timeout:.0f} s, expected {total} completed")
        await asyncio.sleep(0.5)


async def sustained(ctx: Context) -> list[Measurement]:
    marks = (50, 150, 300) if ctx.quick else (1_000, 5_000, 10_000)
    stack = await ctx.stack("sustained", ("ingress", "enricher", "saver", "recorder"))
    measurements = []
    try:
        with helper_process("ops.bench.noop_generator", "--amqp", ctx.amqp_url, "--namespace", stack.namespace,
                            log=ctx.work / "sustained_noop_generator.log"):
            await stack.wait_consuming(("generator",))
            ingress = stack.service_pids()["ingress"]
            async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers, timeout=60,
                                         limits=httpx.Limits(max_connections=CONCURRENCY)) as client:
                await _drained(client, 0)
                idle = rss(ingress)[0]
                done = 0
                for mark in marks:
                    await _submit(client, mark - done, done)
                    done = mark
                    await _drained(client, done)
                    current, peak = rss(ingress)
                    measurements.append(Measurement(
                        case="sustained", metric=f"ingress RSS after {mark:,} jobs", unit="MB",
                        darkroom=current / MB, baseline=idle / MB,
                        target="<= 1.5x idle" if mark == marks[-1] else None,
                        met=(current <= 1.5 * idle) if mark == marks[-1] else None,
                        details={"peak_mb": round(peak / MB, 1), "baseline": "the same ingress at idle before the load"},
                    ))
    finally:
        await asyncio.to_thread(stack.stop)
    return measurements
