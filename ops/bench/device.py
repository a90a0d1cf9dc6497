"""Device-aware bench: the model and device the generation cases use, and `throughput`, which
runs Darkroom and bare diffusers side by side at batch sizes 1, 4 and 8.

    darkroom bench throughput                                  # tiny model, CPU, 64 px, 4 steps
    darkroom bench throughput overhead --device cuda --model sd15-random   # 512 px, 25 steps

On a GPU it also reports how busy the GPU was (NVML through `nvidia-smi`, when present) while
each side ran: the fraction Darkroom leaves idle is what overlapping decode, encode and publish
with the next batch wins back.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess

from ops.bench.follow import Follower
from ops.bench.harness import Context, Measurement
from ops.bench.jobs import run_job, submit
from schemas import topology

SD15_JOB = {"width": 512, "height": 512, "num_inference_steps": 25, "guidance_scale": 7.5}
BATCH_SIZES = (1, 4, 8)


def choose(ctx: Context, device: str, model: str) -> None:
    """Point the bench's generation cases at `model` on `device` (builds sd15-random once, in the
    bench's scratch folder; ~1.7 GB)."""
    from pipelines.sd15 import build_sd15_random, catalog_toml

    ctx.device = device
    if model == "sd15-random":
        folder = build_sd15_random(ctx.work / "sd15-random")
        ctx.bare_model = folder
        ctx.catalog_text = catalog_toml(folder)
        ctx.job = dict(SD15_JOB)


class GpuBusy:
    """Samples `nvidia-smi`'s GPU utilisation every 100 ms while in a `with` block; `fraction` is
    the mean (None without nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._process: subprocess.Popen | None = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> GpuBusy:
        if shutil.which("nvidia-smi"):
            self._process = await asyncio.to_thread(
                subprocess.Popen,
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100", "-i", "0"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            self._reader = asyncio.create_task(asyncio.to_thread(self._read))
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append(float(line.strip()) / 100)

    async def __aexit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(5)
            await self._reader

    @property
    def fraction(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 3) if self.samples else None


async def throughput(ctx: Context) -> list[Measurement]:
    """At MAX_BATCH 1, 4 and 8: N compatible jobs at once through the stack vs the bare loop
    making the same N images at the same batch size (images/s, ratio, GPU busy fraction), and
    at batch 1 the latency of sequential jobs vs bare calls."""
    measurements = []
    size, steps = ctx.job.get("width", 64), ctx.job.get("num_inference_steps", 4)
    bare = await ctx.bare()
    for batch in BATCH_SIZES:
        jobs = batch * (2 if ctx.quick else 4)
        stack = await ctx.generation_stack(batch)
        follower = await Follower(ctx.amqp_url, stack.namespace).start((topology.EVERY_JOB_EVENT,))
        try:
            async with GpuBusy() as ours_busy:
                elapsed = await _burst(ctx, stack, follower, jobs, 9000 + 100 * batch)
        finally:
            await follower.close()
        await bare.call(1, size=size, steps=steps, batch=batch)  # warm-up at this shape, not measured
        async with GpuBusy() as bare_busy:
            bare_seconds = sum([await bare.call(9000 + n, size=size, steps=steps, batch=batch)
                                for n in range(0, jobs, batch)])
        measurements.append(Measurement(
            case="throughput", metric=f"{jobs} jobs at once, {size} px {steps} steps, MAX_BATCH {batch}",
            unit="images/s", darkroom=jobs / elapsed, baseline=jobs / bare_seconds, better="higher",
            details={"device": ctx.device, "elapsed_s": round(elapsed, 3), "gpu_busy": ours_busy.fraction,
                     "bare_gpu_busy": bare_busy.fraction},
        ))
    stack = await ctx.generation_stack(1)
    follower = await Follower(ctx.amqp_url, stack.namespace).start((topology.EVERY_JOB_EVENT,))
    ours, theirs = [], []
    try:
        import httpx

        async with httpx.AsyncClient(base_url=stack.url, timeout=600, headers=stack.headers) as client:
            for n in range(3 if ctx.quick else 8):
                ours.append(await run_job(client, follower, 9900 + n, **ctx.job))
                theirs.append(await bare.call(9900 + n, size=size, steps=steps))
    finally:
        await follower.close()
    measurements.append(Measurement(
        case="throughput", metric=f"sequential jobs, {size} px {steps} steps, total time", unit="s",
        darkroom=sum(ours), baseline=sum(theirs), details={"device": ctx.device, "jobs": len(ours)},
    ))
    return measurements


async def overlap(ctx: Context) -> list[Measurement]:
    """The generator's worker on its own (ops/bench/overlap.py), DARKROOM_OVERLAP on vs off, and
    on with the VAE decode in the second thread too: modes take turns, round after round."""
    import json
    import sys

    size, steps = ctx.job.get("width", 64), ctx.job.get("num_inference_steps", 4)
    jobs, rounds = (16, 3) if ctx.quick else (32, 8)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.bench.overlap", str(ctx.bare_model), "--device", ctx.device,
        "--jobs", str(jobs), "--rounds", str(rounds), "--size", str(size), "--steps", str(steps),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"ops.bench.overlap exited with {process.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    medians = result["median_images_per_s"]
    return [
        Measurement(
            case="overlap", metric=f"generator alone, {jobs} jobs x {rounds} rounds, overlap {mode} vs off",
            unit="images/s", darkroom=medians[mode], baseline=medians["off"], better="higher",
            ratio=result["paired_ratio_to_off"][mode],
            details={"device": ctx.device, "size": size, "steps": steps, "rounds": result["images_per_s"]},
        )
        for mode in ("on", "on-split-decode")
    ]


async def _burst(ctx: Context, stack, follower: Follower, jobs: int, first_seed: int) -> float:
    import time

    import httpx

    async with httpx.AsyncClient(base_url=stack.url, timeout=600, limits=httpx.Limits(max_connections=32),
                                 headers=stack.headers) as client:
        started = time.monotonic()
        ids = await asyncio.gather(*(submit(client, first_seed + n, **ctx.job) for n in range(jobs)))
        ends = await asyncio.gather(*(follower.end_of(job_id, timeout=1800) for job_id in ids))
    failed = [kind for kind, _ in ends if kind != topology.JOB_COMPLETED]
    if failed:
        raise RuntimeError(f"{len(failed)} of {jobs} jobs did not complete: {failed[:3]}")
    return max(at for _, at in ends) - started
