"""The bench's case registry and runner: `darkroom bench [CASE ...] [--quick]`."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from ops.bench import affinity, capacity, cases, device, library, live, readside, remote, scaleout, sustained
from ops.bench.harness import Case, Context, Measurement, Report, commit_id, machine_info, table
from ops.broker import PrivateBroker

# Every case, in the order of the results table; `darkroom bench` runs DEFAULT_CASES.
CASES: dict[str, Case] = {
    "overhead": cases.overhead,
    "saturation": cases.saturation,
    "batching": cases.batching,
    "memory": cases.memory,
    "ingress": cases.ingress,
    "broker": cases.broker,
    "readside": readside.readside,
    "sustained": sustained.sustained,
    "library": library.library,
    "live": live.live,
    "throughput": device.throughput,
    "overlap": device.overlap,
    "scaleout": scaleout.scaleout,
    "remote": remote.remote,
    "capacity": capacity.capacity,
    "affinity": affinity.affinity,
}
# `throughput` compares batch sizes 1, 4 and 8 on the chosen model and device (`--device cuda
# --model sd15-random` on a GPU) and `overlap` the generator alone with DARKROOM_OVERLAP on and
# off; both run on the tiny model on the CPU by default, and only when named, like `scaleout`
# (1, 2 and 4 generator processes on one stack), `remote` (1, 2 and 4 workers in network
# namespaces of their own, sharing only the broker; needs root), `capacity` (the control plane's
# sustained jobs/s with a no-op generator, and a profile of the stage that saturates first) and
# `affinity` (model loads and images/s of a mixed workload over three models, affinity routing vs
# random dispatch).
DEFAULT_CASES = tuple(name for name in CASES
                      if name not in ("throughput", "overlap", "scaleout", "remote", "capacity", "affinity"))


async def run_cases(names: list[str], *, quick: bool, results_dir: Path, amqp_url: str | None = None,
                    device_name: str = "cpu", model: str = "tiny") -> Path:
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise SystemExit(f"unknown bench case(s) {unknown}; valid: {', '.join(CASES)}")
    started_at, started = datetime.now(UTC), time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="darkroom-bench-"))
    broker = None
    if amqp_url is None:
        broker = PrivateBroker(work / "rabbitmq", name="darkroom-bench")
        await asyncio.to_thread(broker.start)
        amqp_url = broker.url
    from pipelines.tiny import build_tiny_model

    tiny = await asyncio.to_thread(build_tiny_model, work / "tiny-sd")
    ctx = Context(work, amqp_url, tiny, quick)
    if model != "tiny" or device_name != "cpu":
        await asyncio.to_thread(device.choose, ctx, device_name, model)
    measurements: list[Measurement] = []
    failures: dict[str, str] = {}
    try:
        for name in names:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            case_started = time.monotonic()
            try:
                measurements += await CASES[name](ctx)
            except Exception as exc:  # noqa: BLE001 - one broken case must not lose the others' figures
                failures[name] = f"{type(exc).__name__}: {exc}"
                print(f"bench: {name} FAILED: {failures[name]}", file=sys.stderr, flush=True)
            print(f"bench: {name} took {time.monotonic() - case_started:.1f}s", file=sys.stderr, flush=True)
    finally:
        await ctx.close()
        if broker is not None:
            await asyncio.to_thread(broker.stop)
        shutil.rmtree(work, ignore_errors=True)
    report = Report(
        started_at=started_at, seconds=round(time.monotonic() - started, 1), quick=quick,
        machine=machine_info(), commit=commit_id(), measurements=measurements, failures=failures,
    )
    path = results_dir / f"{started_at:%Y%m%dT%H%M%SZ}{'-quick' if quick else ''}.json"
    await asyncio.to_thread(_write_report, path, report)
    print(table(measurements))
    if failures:
        print(f"\nfailed cases: {failures}")
    print(f"\nresults: {path}")
    return path


def _write_report(path: Path, report: Report) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2))
