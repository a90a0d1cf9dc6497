"""The `live` case: many SSE subscribers following running jobs through one ingress.

500 clients (10 per job, 50 jobs) follow `GET /v1/jobs/{id}/events`; the bench publishes each
job's `job.progressed` at 4 Hz straight to the events exchange, as a generator would, and times
each event from just before its publish to the moment a client has read its `id:` line (wall clock, one machine). The
clients are raw asyncio sockets in two processes of their own (no SSE library on the measured
path, and their reading does not delay the publisher), so the figure is an upper bound of broker
publish -> SSE write. The ingress's CPU and RSS are read
from /proc over the same window."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from urllib.parse import urlsplit

import aio_pika
import httpx

from ops.bench.harness import Context, Measurement, percentile
from ops.bench.jobs import submit
from ops.bench.stack import cpu_seconds, rss
from schemas import topology
from schemas.events import JobProgressed
from schemas.topology import Topology
from services.bus import connect_robust, encoder

SUBSCRIBER_PROCESSES = 2


async def _subscriber(url: str, path: str, auth: str, arrivals: list[tuple[str, float]]) -> None:
    """One SSE client: the wall-clock time each event's `id:` line was read."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=1 << 20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: {auth}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"SSE answered {head[:100]!r}")
    try:
        while chunk := await reader.read(1 << 16):
            now = time.time()
            position = chunk.find(b"id: ")
            while position != -1:
                end = chunk.find(b"\r\n", position)
                arrivals.append((chunk[position + 4:end].decode(), now))
                position = chunk.find(b"id: ", end)
    finally:
        writer.close()


async def _subscribe_until_stdin_closes(url: str, auth: str, paths: list[str]) -> None:
    arrivals: list[tuple[str, float]] = []
    clients = [asyncio.create_task(_subscriber(url, path, auth, arrivals)) for path in paths]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for task in clients:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    print(json.dumps(arrivals), flush=True)


def main() -> None:
    """`python -m ops.bench.live URL AUTH PATH...`: subscribers in a process of their own, so that
    their reading does not slow the publisher's clock; prints `ready`, then, when stdin closes,
    the arrivals as JSON."""
    url, auth, *paths = sys.argv[1:]
    asyncio.run(_subscribe_until_stdin_closes(url, auth, paths))


async def live(ctx: Context) -> list[Measurement]:
    jobs_count, per_job, seconds, rate = (4, 5, 3.0, 4.0) if ctx.quick else (50, 10, 10.0, 4.0)
    subscribers = jobs_count * per_job
    stack = await ctx.stack("live", ("ingress",))
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers, timeout=30) as client:
        job_ids = [await submit(client, seed) for seed in range(jobs_count)]
    connection = await connect_robust(ctx.amqp_url, name="bench-live")
    channel = await connection.channel(publisher_confirms=False)
    exchange = await channel.get_exchange(Topology(stack.namespace).events, ensure=True)
    auth = stack.headers["Authorization"]
    published: dict[str, float] = {}
    paths = [f"/v1/jobs/{job_ids[n % jobs_count]}/events" for n in range(subscribers)]
    helpers = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.bench.live", stack.url, auth, *paths[n::SUBSCRIBER_PROCESSES],
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE) for n in range(SUBSCRIBER_PROCESSES)]
    arrivals: list[tuple[str, float]] = []
    try:
        for helper in helpers:
            ready = await asyncio.wait_for(helper.stdout.readline(), 120)
            if ready.strip() != b"ready":
                raise RuntimeError(f"a subscriber process did not start: {ready!r}")
        await asyncio.sleep(1.0)  # every stream past its history, following live
        pid = stack.service_pids()["ingress"]
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        # Jobs run independently: their steps are spread over each period, not published in bursts.
        interval, sent = 1 / (rate * jobs_count), 0
        while time.monotonic() - started < seconds:
            job_id = job_ids[sent % jobs_count]
            event = JobProgressed(job_id=job_id, step=sent // jobs_count + 1, total_steps=1000)
            published[event.event_id] = time.time()
            await exchange.publish(aio_pika.Message(encoder.encode(event), content_type="application/json",
                                                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                                   routing_key=topology.JOB_PROGRESSED)
            sent += 1
            await asyncio.sleep(max(0.0, started + sent * interval - time.monotonic()))
        await asyncio.sleep(1.0)  # the last events reach everyone
        wall = time.monotonic() - started
        cpu = (cpu_seconds(pid) - cpu_before) / wall
        current_rss, peak_rss = rss(pid)
        for helper in helpers:
            helper.stdin.close()
            arrivals += json.loads((await asyncio.wait_for(helper.stdout.read(), 120)).decode())
    finally:
        for helper in helpers:
            if helper.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    helper.kill()
            await helper.wait()
        await connection.close()
        await asyncio.to_thread(stack.stop)
    latencies = [(arrived - published[event_id]) * 1000 for event_id, arrived in arrivals if event_id in published]
    expected = len(published) * per_job
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    details = {"subscribers": subscribers, "jobs": jobs_count, "events_published": len(published),
               "deliveries_expected": expected, "deliveries_seen": len(latencies), "seconds": round(wall, 1),
               "progress_hz_per_job": rate, "max_ms": round(max(latencies), 2) if latencies else None}
    return [
        Measurement(case="live", metric="SSE fan-out latency p50 (publish -> client read)", unit="ms",
                    darkroom=round(p50, 2), details=details),
        Measurement(case="live", metric="SSE fan-out latency p99 (publish -> client read)", unit="ms",
                    darkroom=round(p99, 2), target="<= 50 ms", met=p99 <= 50 and len(latencies) == expected,
                    details=details),
        Measurement(case="live", metric=f"ingress CPU with {subscribers} SSE subscribers", unit="cores",
                    darkroom=round(cpu, 3), details=details),
        Measurement(case="live", metric=f"ingress RSS with {subscribers} SSE subscribers", unit="MB",
                    darkroom=round(current_rss / 1e6, 1), details={**details, "peak_mb": round(peak_rss / 1e6, 1)}),
    ]


if __name__ == "__main__":
    main()
