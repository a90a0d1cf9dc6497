"""`capacity` (only when named): how many jobs per second the control plane sustains, and which
stage gives out first.

The real stack (ingress with its read model projection, enricher, saver, recorder, reaper) runs
with the no-op generator (`ops/bench/noop_generator.py`: no diffusion, answers at once). An
open-loop client offers one-image jobs through POST /v1/jobs at fixed rates, one step after
another (STEPS jobs/s for SECONDS each); a job is sent at its due time whether or not earlier ones
were answered, so a slow stack shows as latency and a falling completed rate, never as a politely
slower client. Each step records what it achieved and what each process spent; the sustained
capacity is the highest offered rate whose completions kept up (KEEP_UP) with its end-to-end p99
within P99_SLACK times the first step's. The busiest stage process at the first step that missed
(the busiest Python one, if RabbitMQ was busiest) is profiled with py-spy at that rate
(`ops/bench/profile.py`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import aio_pika
import httpx

from ops.bench.follow import Follower
from ops.bench.harness import Context, Measurement, percentile
from ops.bench.jobs import SMALL_JOB
from ops.bench.profile import profile
from ops.bench.rawhttp import RawClient
from ops.bench.stack import Stack, cpu_seconds, helper_process, listener_pid, machine_cpu
from schemas import topology
from schemas.topology import Topology

STEPS, QUICK_STEPS = (25, 50, 100, 200, 400), (10, 40)
SECONDS, QUICK_SECONDS = 10.0, 2.0
SERVICES = ("ingress", "enricher", "saver", "recorder", "reaper")
# The stage queues whose depth each step reads (the ingress consumes none: its backlog is HTTP).
QUEUES = ("enricher", "generator", "saver", "recorder", "reaper")
KEEP_UP = 0.95
P99_SLACK = 2.0
CONNECTIONS = 64
# Processes that are not the control plane: their CPU is reported, never blamed.
NOT_STAGES = ("generator (no-op)", "load client")
FULL_CORE, FULL_MACHINE = 0.85, 0.90


@dataclass
class Step:
    """One offered rate: what the client achieved, what the stack completed, and at what cost."""

    offered: float
    jobs: int
    accepted: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    submit_rate: float = 0.0
    completed: int = 0
    completed_rate: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    submit_p50_ms: float = 0.0
    submit_p99_ms: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0
    load_average: float = 0.0
    queue_depths: dict[str, int] = field(default_factory=dict)
    projection_lag: int = 0
    drain_s: float = 0.0
    kept_up: bool = False


def _rate(times: list[float]) -> float:
    """Events per second over their own span: (n - 1) / (last - first), blind to a constant delay."""
    if len(times) < 2:
        return 0.0
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else 0.0


async def _offer(client: RawClient, rate: float, count: int, first_seed: int) -> list[tuple[str | None, float, float, str | None]]:
    """Send `count` jobs at `rate`, each at its due time; (job id or None, due, answered, error) per job.
    Submit latency counts from the due time, so a backlog in the client's pool is counted too."""
    started = time.monotonic()

    async def one(n: int) -> tuple[str | None, float, float, str | None]:
        due = started + n / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        body = {"prompt": f"a red fox {first_seed + n}", "settings": {**SMALL_JOB, "seed": first_seed + n}}
        try:
            status, answer = await client.post_json("/v1/jobs", body)
            job_id, error = (answer["id"], None) if status == 202 else (None, f"HTTP {status}")
        except (OSError, ValueError, KeyError, asyncio.IncompleteReadError) as exc:
            job_id, error = None, type(exc).__name__
        return job_id, due, time.monotonic(), error

    return await asyncio.gather(*(one(n) for n in range(count)))


async def _queue_depths(url: str, namespace: str) -> dict[str, int]:
    """Messages ready in each stage queue, read with passive declares on one connection."""
    topo = Topology(namespace)
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        return {stage: (await channel.declare_queue(topo.queue(stage), passive=True)).declaration_result.message_count
                for stage in QUEUES}
    finally:
        await connection.close()


async def _projected(client: httpx.AsyncClient) -> int:
    """Completed jobs as the read model (GET /v1/queue) shows them."""
    answer = await client.get("/v1/queue")
    answer.raise_for_status()
    return answer.json()["completed"]


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


async def _step(ctx: Context, stack: Stack, client: RawClient, api: httpx.AsyncClient, follower: Follower,
                pids: dict[str, int], rate: float, seconds: float, first_seed: int) -> Step:
    step = Step(offered=rate, jobs=round(rate * seconds))
    before, machine_before, started = _cpu(pids), machine_cpu(), time.monotonic()
    sent = await _offer(client, rate, step.jobs, first_seed)
    elapsed = time.monotonic() - started
    after, machine_after = _cpu(pids), machine_cpu()
    step.cpu = {name: round((after[name] - before[name]) / elapsed, 3) for name in pids}
    step.cpu_ms_per_job = {name: round((after[name] - before[name]) * 1000 / step.jobs, 2) for name in pids}
    step.machine_busy = round((machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1]), 3)
    step.load_average = os.getloadavg()[0]
    step.queue_depths = await _queue_depths(ctx.amqp_url, stack.namespace)
    accepted = [(job_id, due, answered) for job_id, due, answered, _ in sent if job_id]
    step.accepted, step.errors = len(accepted), step.jobs - len(accepted)
    step.error_kinds = dict(Counter(error for *_, error in sent if error))
    step.submit_rate = round(_rate([answered for _, _, answered in accepted]), 1)
    submit_ms = [(answered - due) * 1000 for _, due, answered, _ in sent]
    step.submit_p50_ms, step.submit_p99_ms = round(percentile(submit_ms, 50), 1), round(percentile(submit_ms, 99), 1)
    # Drain: wait for this step's jobs (bounded), so the next step starts on an empty stack.
    drain_started = time.monotonic()
    ends = await asyncio.gather(*(_end(follower, job_id, timeout=max(10.0, seconds)) for job_id, _, _ in accepted))
    step.drain_s = round(time.monotonic() - drain_started, 2)
    # End to end from the client's view: from the moment the job was due to be sent (its POST
    # may be answered after the job already completed: the 202 waits for the broker's confirm,
    # the no-op generator does not) to its job.completed event.
    done = [(end[1], due) for end, (_, due, _) in zip(ends, accepted, strict=True)
            if end and end[0] == topology.JOB_COMPLETED]
    step.completed = len(done)
    step.completed_rate = round(_rate([at for at, _ in done]), 1)
    latency_ms = [(at - due) * 1000 for at, due in done]
    step.latency_p50_ms, step.latency_p99_ms = round(percentile(latency_ms, 50), 1), round(percentile(latency_ms, 99), 1)
    step.projection_lag = sum(kind == topology.JOB_COMPLETED for kind, _ in follower.ended.values()) - await _projected(api)
    return step


async def _end(follower: Follower, job_id: str, timeout: float) -> tuple[str, float] | None:
    try:
        return await follower.end_of(job_id, timeout=timeout)
    except TimeoutError:
        return None


def _judge(steps: list[Step]) -> None:
    """Kept up: every job accepted and completed, completions at the offered rate, p99 in bounds."""
    bound = P99_SLACK * steps[0].latency_p99_ms if steps[0].completed else 0.0
    for step in steps:
        step.kept_up = (step.errors == 0 and step.completed == step.jobs
                        and step.completed_rate >= KEEP_UP * step.offered and step.latency_p99_ms <= bound)


def saturating_stage(step: Step, python_only: bool = False) -> str:
    """The control-plane process that spent the most CPU at a step (rabbitmq included, unless
    `python_only`: py-spy profiles Python processes): each stage is one asyncio loop, so the
    first to reach a whole core is the first that cannot go faster."""
    stages = {name: cpu for name, cpu in step.cpu.items()
              if name not in NOT_STAGES and not (python_only and name == "rabbitmq")}
    return max(stages, key=stages.get)


def verdict(step: Step) -> str:
    """What limited a step: one stage at a full core, the machine's cores, or neither."""
    stage = saturating_stage(step)
    busiest = f"{stage} the busiest at {step.cpu[stage]:.2f} of a core"
    if step.cpu[stage] >= FULL_CORE:
        return f"{stage}: a full core"
    if step.machine_busy >= FULL_MACHINE:
        return (f"the machine's cores ({step.machine_busy:.0%} busy, load average {step.load_average:.1f}): "
                f"no process at a full core, {busiest}")
    return f"no core full, {busiest}: the wait is elsewhere (see the profile)"


async def capacity(ctx: Context) -> list[Measurement]:
    rates, seconds = (QUICK_STEPS, QUICK_SECONDS) if ctx.quick else (STEPS, SECONDS)
    stack = await ctx.stack("capacity", SERVICES)
    steps: list[Step] = []
    try:
        with helper_process("ops.bench.noop_generator", "--amqp", ctx.amqp_url, "--namespace", stack.namespace,
                            log=ctx.work / "capacity_noop_generator.log") as noop:
            await stack.wait_consuming(("generator",))
            pids = {**stack.service_pids(), "generator (no-op)": noop.pid, "load client": os.getpid()}
            broker = listener_pid(urlsplit(ctx.amqp_url).port or 5672)
            if broker:
                pids["rabbitmq"] = broker
            follower = await Follower(ctx.amqp_url, stack.namespace).start((topology.EVERY_JOB_EVENT,))
            client = RawClient(stack.url, stack.headers, CONNECTIONS)
            try:
                async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers, timeout=60) as api:
                    await _step(ctx, stack, client, api, follower, pids, rates[0], 1.0, 0)  # warm-up, not counted
                    seed = 100_000
                    for rate in rates:
                        steps.append(await _step(ctx, stack, client, api, follower, pids, rate, seconds, seed))
                        seed += steps[-1].jobs
                        _judge(steps)
                        if not steps[-1].kept_up:
                            break
                    missed = next((step for step in steps if not step.kept_up), steps[-1])
                    stage, profiled_stage = saturating_stage(missed), saturating_stage(missed, python_only=True)
                    profiled = await profile(pids[profiled_stage], seconds, _step(
                        ctx, stack, client, api, follower, pids, missed.offered, seconds, seed))
                    profiled["stage"] = profiled_stage
            finally:
                await client.close()
                await follower.close()
    finally:
        await asyncio.to_thread(stack.stop)
    return _measurements(steps, stage, missed, profiled)


def _measurements(steps: list[Step], stage: str, missed: Step, profiled: dict) -> list[Measurement]:
    kept = [step.offered for step in steps if step.kept_up]
    sustained = max(kept, default=0.0)
    criterion = (f"completed rate >= {KEEP_UP:.0%} of offered, every job accepted and completed, "
                 f"end-to-end p99 <= {P99_SLACK}x the first step's")
    measurements = [Measurement(
        case="capacity", metric="sustained jobs/s (no-op generator)", unit="jobs/s", darkroom=sustained,
        better="higher",
        details={"criterion": criterion, "cores": os.cpu_count(), "saturating_stage": stage, "limit": verdict(missed),
                 "saturating_at": missed.offered, "all_kept_up": all(step.kept_up for step in steps),
                 "steps": [asdict(step) for step in steps], "profile": profiled},
    )]
    for step in steps:
        measurements.append(Measurement(
            case="capacity", metric=f"completed at {step.offered:g} jobs/s offered (e2e p99 in details)",
            unit="jobs/s", darkroom=step.completed_rate, better="higher",
            details={"latency_p99_ms": step.latency_p99_ms, "submit_p99_ms": step.submit_p99_ms,
                     "kept_up": step.kept_up, "busiest": saturating_stage(step)},
        ))
    return measurements
