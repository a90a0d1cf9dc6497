"""`scaleout` (only when named): images/s of one burst of jobs with 1, 2 and 4 generator
processes on one stack (`DARKROOM_GENERATORS`), each with torch on one thread, against one
generator in the same run. The broker spreads the jobs; the processes share this host's cores,
so the ideal is min(N, cores) times one generator (`details` says how many cores there were).
The same scale-out across hosts, with nothing shared but the broker, is the `remote` case
(ops/bench/remote.py), with the setup of tests/integration/test_remote_workers.py."""

from __future__ import annotations

import os

from ops.bench.cases import burst
from ops.bench.harness import Context, Measurement
from ops.bench.jobs import warm_up

COUNTS = (1, 2, 4)


async def scaleout(ctx: Context) -> list[Measurement]:
    jobs = 16 if ctx.quick else 64
    cores = os.cpu_count() or 1
    rates: dict[int, float] = {}
    for count in COUNTS:
        stack = await ctx.stack(f"scaleout-{count}", env={
            "DARKROOM_GENERATORS": str(count), "DARKROOM_TORCH_THREADS": "1", "DARKROOM_MAX_BATCH": "4"})
        await warm_up(ctx, stack)
        rates[count] = jobs / await burst(ctx, stack, jobs, 9000)
    return [
        Measurement(case="scaleout", metric=f"{jobs} jobs at once, {count} generator(s), torch 1 thread each",
                    unit="images/s", darkroom=rates[count], baseline=rates[1] if count > 1 else None, better="higher",
                    target=f">= {0.9 * min(count, cores):.1f}x one generator ({cores} cores)" if count > 1 else None,
                    met=rates[count] >= 0.9 * min(count, cores) * rates[1] if count > 1 else None,
                    details={"cores": cores})
        for count in COUNTS
    ]
