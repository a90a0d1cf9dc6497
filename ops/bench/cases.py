"""The bench cases. Each measures Darkroom and its baseline in the same run."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aio_pika
import httpx
import msgspec

from ops.bench.follow import Follower
from ops.bench.harness import Context, Measurement, percentile
from ops.bench.jobs import SMALL_JOB, run_job, submit
from ops.bench.load import load
from ops.bench.stack import Stack, cpu_seconds, helper_process, rss
from ops.broker import free_port
from schemas import topology
from schemas.events import JobAccepted
from schemas.jobs import GenerationSettings, JobSpec
from schemas.topology import Topology
from services.bus import connect_robust

MB = 1024 * 1024


async def overhead(ctx: Context) -> list[Measurement]:
    """N sequential 64 px 4-step jobs through the stack vs the same N images from a bare loop.

    Each Darkroom job is followed by the same image from the bare process, so that the noise of
    a shared machine lands on both alike; added latency is the difference within each pair.
    """
    jobs = 6 if ctx.quick else 50
    stack = await ctx.generation_stack()
    bare = await ctx.bare()
    follower = await Follower(ctx.amqp_url, stack.namespace).start((topology.EVERY_JOB_EVENT,))
    ours, theirs, large, bare_large = [], [], [], []
    try:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60, headers=stack.headers) as client:
            for seed in range(1 if ctx.quick else 3):  # warm-up, not measured
                await run_job(client, follower, seed)
                await bare.call(seed)
            for n in range(jobs):
                ours.append(await run_job(client, follower, 1000 + n))
                theirs.append(await bare.call(1000 + n))
            if not ctx.quick:  # the same where generation dominates: 256 px, 20 steps
                big = {"width": 256, "height": 256, "num_inference_steps": 20}
                await run_job(client, follower, 1, **big)
                await bare.call(1, size=256, steps=20)
                for n in range(10):
                    large.append(await run_job(client, follower, 2000 + n, **big))
                    bare_large.append(await bare.call(2000 + n, size=256, steps=20))
    finally:
        await follower.close()
    added_ms = [(a - b) * 1000 for a, b in zip(ours, theirs, strict=False)]
    total, bare_total = sum(ours), sum(theirs)
    p50_added = percentile(added_ms, 50)
    measurements = [
        Measurement(case="overhead", metric=f"total time, {jobs} sequential jobs", unit="s", darkroom=total,
                    baseline=bare_total, target="ratio <= 1.10", met=total / bare_total <= 1.10),
        Measurement(case="overhead", metric="job latency p50", unit="ms", darkroom=percentile(ours, 50) * 1000,
                    baseline=percentile(theirs, 50) * 1000),
        Measurement(case="overhead", metric="job latency p95", unit="ms", darkroom=percentile(ours, 95) * 1000,
                    baseline=percentile(theirs, 95) * 1000),
        Measurement(case="overhead", metric="added latency p50", unit="ms", darkroom=p50_added,
                    target="<= 30 ms", met=p50_added <= 30),
        Measurement(case="overhead", metric="added latency p99", unit="ms", darkroom=percentile(added_ms, 99)),
    ]
    if large:
        measurements.append(Measurement(
            case="overhead", metric="total time, 10 sequential 256 px 20-step jobs", unit="s",
            darkroom=sum(large), baseline=sum(bare_large),
            details={"added_ms_p50": round(percentile([(a - b) * 1000 for a, b in zip(large, bare_large, strict=False)], 50), 1)},
        ))
    return measurements


async def burst(ctx: Context, stack: Stack, jobs: int, first_seed: int) -> float:
    """Submit `jobs` at once; seconds from the first submit to the last job.completed."""
    follower = await Follower(ctx.amqp_url, stack.namespace).start((topology.EVERY_JOB_EVENT,))
    try:
        async with httpx.AsyncClient(base_url=stack.url, timeout=120, limits=httpx.Limits(max_connections=32),
                                     headers=stack.headers) as client:
            started = time.monotonic()
            ids = await asyncio.gather(*(submit(client, first_seed + n) for n in range(jobs)))
            ends = await asyncio.gather(*(follower.end_of(job_id, timeout=600) for job_id in ids))
    finally:
        await follower.close()
    failed = [kind for kind, _ in ends if kind != topology.JOB_COMPLETED]
    if failed:
        raise RuntimeError(f"{len(failed)} of {jobs} jobs did not complete: {failed[:3]}")
    return max(at for _, at in ends) - started


async def saturation(ctx: Context) -> list[Measurement]:
    """N jobs submitted at once, with and without batching: images per second vs the bare loop
    making the same N images one after another."""
    jobs = 10 if ctx.quick else 100
    batched = await burst(ctx, await ctx.generation_stack(4), jobs, 5000)
    bare_loop = await ctx.bare()
    bare = sum([await bare_loop.call(5000 + n) for n in range(jobs)])
    measurements = [
        Measurement(case="saturation", metric=f"throughput, {jobs} jobs at once, batching (4)", unit="images/s",
                    darkroom=jobs / batched, baseline=jobs / bare, better="higher", details={"elapsed_s": round(batched, 3)}),
    ]
    if not ctx.quick:  # a second stack costs ~6 s; the unbatched path is covered by the engine tests
        unbatched = await burst(ctx, await ctx.generation_stack(1), jobs, 5000)
        measurements.append(Measurement(
            case="saturation", metric=f"throughput, {jobs} jobs at once, no batching", unit="images/s",
            darkroom=jobs / unbatched, baseline=jobs / bare, better="higher", details={"elapsed_s": round(unbatched, 3)},
        ))
    return measurements


async def batching(ctx: Context) -> list[Measurement]:
    """16 compatible 64 px jobs at once through the stack with batching vs the bare sequential
    diffusers loop over the same 16 images (and, for reference, the bare loop batching by 4)."""
    jobs = 8 if ctx.quick else 16
    elapsed = await burst(ctx, await ctx.generation_stack(4), jobs, 7000)
    bare_loop = await ctx.bare()
    sequential = sum([await bare_loop.call(7000 + n) for n in range(jobs)])
    by_four = sum([await bare_loop.call(7000 + n, batch=4) for n in range(0, jobs, 4)])
    return [
        Measurement(case="batching", metric=f"{jobs} compatible jobs at once, batching (4)", unit="images/s",
                    darkroom=jobs / elapsed, baseline=jobs / sequential, better="higher",
                    details={"elapsed_s": round(elapsed, 3), "bare_batched_by_4_images_per_s": round(jobs / by_four, 2)}),
    ]


async def memory(ctx: Context) -> list[Measurement]:
    """RSS of each service at idle (after warm-up) and at peak (after the load cases ran)."""
    stack = await ctx.generation_stack()
    pids = stack.service_pids()
    peak = {name: rss(pid)[1] for name, pid in pids.items()}
    idle = ctx.idle_rss
    bare = await ctx.bare()
    if not bare.peak_rss:
        await bare.call(1)
    bare_peak = bare.peak_rss
    control = [name for name in idle if name != "generator"]
    control_idle = sum(idle[name] for name in control)
    measurements = [
        Measurement(case="memory", metric="control plane RSS at idle (all but generator)", unit="MB",
                    darkroom=control_idle / MB, target="<= 400 MB", met=control_idle <= 400 * MB,
                    details={name: round(idle[name] / MB, 1) for name in control}),
        Measurement(case="memory", metric="generator peak RSS", unit="MB", darkroom=peak.get("generator", 0) / MB,
                    baseline=bare_peak / MB, details={"idle_mb": round(idle.get("generator", 0) / MB, 1)}),
    ]
    for name in control:
        measurements.append(Measurement(case="memory", metric=f"{name} RSS at idle (peak in details)", unit="MB",
                                        darkroom=idle[name] / MB, details={"peak_mb": round(peak.get(name, 0) / MB, 1)}))
    return measurements


async def ingress(ctx: Context) -> list[Measurement]:
    """POST /v1/jobs accepted per second vs a bare Litestar endpoint that only publishes with a
    confirm; GET /v1/jobs/{id} per second vs the same bare endpoint serving the same bytes."""
    seconds, connections = (1.0, 8) if ctx.quick else (10.0, 32)
    prefer_wrk = not ctx.quick
    body = json.dumps({"prompt": "a red fox", "settings": SMALL_JOB}).encode()
    stack = await ctx.stack("ingress", ("ingress",))
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers) as client:
        job_id = await submit(client, 1)
    auth = stack.headers
    # Warm-up: the same load, not measured. A fresh folder on a new VM disk creates its first
    # ~8,000 files at 0.3-1 ms each (cold inode tables), then at ~30 µs; measure the steady state.
    await load(f"{stack.url}/v1/jobs", method="POST", body=body, seconds=seconds, connections=connections,
               prefer_wrk=prefer_wrk, headers=auth)
    ours_post = await load(f"{stack.url}/v1/jobs", method="POST", body=body, seconds=seconds,
                           connections=connections, prefer_wrk=prefer_wrk, headers=auth)
    ours_get = await load(f"{stack.url}/v1/jobs/{job_id}", seconds=seconds, connections=connections,
                          prefer_wrk=prefer_wrk, headers=auth)
    await asyncio.to_thread(stack.stop)

    port = free_port()
    doc_dir = stack.data_dir / "jobs"
    with helper_process("ops.bench.bare_ingress", "--port", str(port), "--amqp", ctx.amqp_url,
                        "--exchange", f"bench.bare.{uuid.uuid4().hex[:6]}", "--jobs-dir", str(doc_dir),
                        log=ctx.work / "bare_ingress.log"):
        await _wait_port(port)
        bare_url = f"http://127.0.0.1:{port}"
        await load(f"{bare_url}/v1/jobs", method="POST", body=body, seconds=seconds, connections=connections,
                   prefer_wrk=prefer_wrk)
        bare_post = await load(f"{bare_url}/v1/jobs", method="POST", body=body, seconds=seconds,
                               connections=connections, prefer_wrk=prefer_wrk)
        bare_get = await load(f"{bare_url}/v1/jobs/{job_id}", seconds=seconds, connections=connections,
                              prefer_wrk=prefer_wrk)
    post_ratio = ours_post.requests_per_second / bare_post.requests_per_second
    return [
        Measurement(case="ingress", metric="POST /v1/jobs accepted", unit="req/s", better="higher",
                    darkroom=ours_post.requests_per_second, baseline=bare_post.requests_per_second,
                    target=">= 70% of bare", met=post_ratio >= 0.70,
                    details={"tool": ours_post.tool, "connections": connections, "seconds": seconds,
                             "errors": ours_post.errors, "bare_errors": bare_post.errors}),
        Measurement(case="ingress", metric="GET /v1/jobs/{id}", unit="req/s", better="higher",
                    darkroom=ours_get.requests_per_second, baseline=bare_get.requests_per_second,
                    details={"tool": ours_get.tool, "errors": ours_get.errors}),
    ]


async def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            try:
                await client.get(f"http://127.0.0.1:{port}/")
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def broker(ctx: Context) -> list[Measurement]:
    """Events per second through enricher -> (no-op) generator -> saver -> recorder, vs raw
    RabbitMQ relaying the same number of jobs through the same number of confirmed hops."""
    jobs = 60 if ctx.quick else 2000
    stack = await ctx.stack("broker", ("recorder", "saver", "enricher"))
    follower = await Follower(ctx.amqp_url, stack.namespace).start()
    try:
        with helper_process("ops.bench.noop_generator", "--amqp", ctx.amqp_url, "--namespace", stack.namespace,
                            log=ctx.work / "noop_generator.log") as noop:
            await stack.wait_consuming(("generator",))
            pids = {**stack.service_pids(), "noop-generator": noop.pid}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            elapsed, _ids = await _publish_accepted(ctx.amqp_url, stack.namespace, jobs, follower)
            cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
        events = sum(follower.counts.values())
    finally:
        await follower.close()
        await asyncio.to_thread(stack.stop)
    relay_elapsed = await _relay_chain(ctx, jobs, hops=3)
    return [
        Measurement(case="broker", metric=f"jobs through the stage chain ({jobs}, no-op generator)", unit="jobs/s",
                    darkroom=jobs / elapsed, baseline=jobs / relay_elapsed, better="higher",
                    details={"events_per_second": round(events / elapsed), "events": events,
                             "cpu_seconds": cpu, "elapsed_s": round(elapsed, 2),
                             "baseline": "3 raw relay processes, confirm per hop"}),
        Measurement(case="broker", metric="events through the stage chain", unit="events/s",
                    darkroom=events / elapsed, better="higher"),
    ]


def _spec(seed: int) -> JobSpec:
    settings = GenerationSettings(num_images=1, num_inference_steps=1, guidance_scale=1.0, width=64, height=64, seed=seed)
    return JobSpec(prompt="bench", model="tiny-sd", settings=settings)


async def _publish_accepted(url: str, namespace: str, jobs: int, follower: Follower) -> tuple[float, list[str]]:
    """Publish job.accepted like the ingress would (confirmed, a window in flight); time to the last completion."""
    encoder = msgspec.json.Encoder()
    connection = await connect_robust(url, name="bench")
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(Topology(namespace).events, ensure=True)
    ids = [str(uuid.uuid4()) for _ in range(jobs)]
    started = time.monotonic()
    for chunk in range(0, jobs, 100):
        await asyncio.gather(*(
            exchange.publish(aio_pika.Message(encoder.encode(JobAccepted(job_id=job_id, spec=_spec(n))),
                                              delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=topology.JOB_ACCEPTED)
            for n, job_id in enumerate(ids[chunk:chunk + 100])
        ))
    ends = await asyncio.gather(*(follower.end_of(job_id, timeout=600) for job_id in ids))
    await connection.close()
    return max(at for _, at in ends) - started, ids


async def _relay_chain(ctx: Context, jobs: int, hops: int) -> float:
    prefix = f"bench.relay.{uuid.uuid4().hex[:6]}"
    queues = [f"{prefix}.{n}" for n in range(hops + 1)]
    helpers = [helper_process("ops.bench.relay", "--amqp", ctx.amqp_url, "--source", queues[n], "--target", queues[n + 1],
                              log=ctx.work / "relay.log") for n in range(hops)]
    for helper in helpers:
        helper.__enter__()
    connection = await connect_robust(ctx.amqp_url, name="bench")
    try:
        channel = await connection.channel(publisher_confirms=True)
        for name in queues:
            await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        consumers = 0
        while consumers < hops:
            consumers = 0
            for name in queues[:-1]:
                probe = await connection.channel()
                consumers += (await probe.declare_queue(name, passive=True)).declaration_result.consumer_count > 0
                await probe.close()
            await asyncio.sleep(0.1)
        sink = await channel.declare_queue(queues[-1], durable=True, arguments={"x-queue-type": "quorum"})
        arrived = asyncio.Event()
        count = 0

        async def on_arrival(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            await message.ack()
            count += 1
            if count >= jobs:
                arrived.set()

        await sink.consume(on_arrival)
        body = msgspec.json.encode(JobAccepted(job_id=str(uuid.uuid4()), spec=_spec(0)))
        started = time.monotonic()
        for chunk in range(0, jobs, 100):
            await asyncio.gather(*(
                channel.default_exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                                 routing_key=queues[0])
                for _ in range(min(100, jobs - chunk))
            ))
        await asyncio.wait_for(arrived.wait(), 600)
        elapsed = time.monotonic() - started
        for name in queues:
            await channel.queue_delete(name)
        return elapsed
    finally:
        await connection.close()
        for helper in helpers:
            helper.__exit__(None, None, None)
