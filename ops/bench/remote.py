"""`remote` (only when named): images/s of one burst of tiny-model jobs with 1, 2 and 4 generator
workers, each in its own network namespace with its own empty folder and its own credential
(`darkroom workers add`), sharing nothing with the control node but the broker: the setup of
tests/integration/test_remote_workers.py (`ops/netns.py`). Each worker runs torch on one thread;
the ratio is against one worker in the same run.

The namespaces are on this host, so the workers share its cores with each other and with the
control node (and with the forwarders that carry their TCP to it): the ideal is min(N, cores)
times one worker, less what the control plane takes; `details` says how many cores there were.
Needs root, `ip` and `unshare`, and the bench's own broker (not DARKROOM_BENCH_AMQP_URL): the
workers' RabbitMQ users are made on it with rabbitmqctl.
"""

from __future__ import annotations

import os
import subprocess

from ops.bench.cases import burst
from ops.bench.harness import Context, Measurement
from ops.bench.jobs import warm_up
from ops.bench.stack import Stack, wait_for_consumers
from ops.broker import private_broker_port
from ops.netns import Forwarder, add_worker, clean_env, namespaces, spawn_worker, stop_all
from schemas.topology import Topology

COUNTS = (1, 2, 4)
CONTROL = ("recorder", "saver", "enricher", "reaper", "ingress")


async def remote(ctx: Context) -> list[Measurement]:
    # Each worker prefetches 2 batches of 4: fewer jobs than 8 per worker would leave some idle.
    jobs = 32 if ctx.quick else 96
    cores = os.cpu_count() or 1
    rabbitmq = ctx.work / "rabbitmq"
    if private_broker_port(rabbitmq) is None:
        raise RuntimeError("the remote case makes RabbitMQ users with rabbitmqctl: run it on the bench's own broker "
                           "(unset DARKROOM_BENCH_AMQP_URL)")
    stack = await ctx.stack("remote", services=CONTROL)
    seconds: dict[int, float] = {}
    for count in COUNTS:
        seconds[count] = await _round(ctx, stack, count, jobs)
    rates = {count: jobs / elapsed for count, elapsed in seconds.items()}
    return [
        Measurement(case="remote", metric=f"{jobs} jobs at once, {count} worker(s) in network namespaces, "
                                          "torch 1 thread each", unit="images/s", darkroom=rates[count],
                    baseline=rates[1] if count > 1 else None, better="higher",
                    target=f">= {0.9 * min(count, cores):.1f}x one worker ({cores} cores)" if count > 1 else None,
                    met=rates[count] >= 0.9 * min(count, cores) * rates[1] if count > 1 else None,
                    details={"cores": cores, "elapsed_s": round(seconds[count], 3)})
        for count in COUNTS
    ]


async def _round(ctx: Context, stack: Stack, count: int, jobs: int) -> float:
    """`count` workers up (warm), one warm-up job, then the burst: its seconds."""
    control_env = clean_env(DARKROOM_DATA_DIR=str(stack.data_dir), DARKROOM_AMQP_URL=ctx.amqp_url,
                            DARKROOM_NAMESPACE=stack.namespace, DARKROOM_PORT=str(stack.port))
    broker_port = private_broker_port(ctx.work / "rabbitmq")
    forwarder = Forwarder()
    workers: list[subprocess.Popen] = []
    try:
        with namespaces(count) as spaces:
            for index, ns in enumerate(spaces):
                await forwarder.add(ns.host_ip, broker_port, broker_port)
                await forwarder.add(ns.host_ip, stack.port, stack.port)
                name = f"r{count}-{index}"
                args, _ = await add_worker(name, ns, control_env, rabbitmq_dir=ctx.work / "rabbitmq",
                                           api_port=stack.port)
                home = ctx.work / "remote" / name
                home.mkdir(parents=True)
                workers.append(spawn_worker(ns, f"worker-{name}", args, clean_env(
                    DARKROOM_TORCH_THREADS="1", DARKROOM_MAX_BATCH="4", DARKROOM_LOG_LEVEL="warning"),
                    home / "worker.log", cwd=home))
            # Each worker consumes once it loaded and warmed its model.
            await wait_for_consumers(
                ctx.amqp_url, Topology(stack.namespace).queue("generator"), count, timeout=180,
                why=f"{count} remote workers did not all consume within 180 s",
                gone=lambda: next(("a remote worker exited while starting; see its worker.log in the bench folder"
                                   for w in workers if w.poll() is not None), None))
            await warm_up(ctx, stack)
            return await burst(ctx, stack, jobs, 11000 + 1000 * count)
    finally:
        await stop_all(workers)
        await forwarder.close()
