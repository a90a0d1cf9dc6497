"""Case registry, shared context, results file and the printed table."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Literal

import msgspec

from ops.bench.stack import Stack
from schemas.settings import SERVICES


class Measurement(msgspec.Struct, kw_only=True):
    """One line of the table: Darkroom's figure, the baseline's from the same run, their ratio."""

    case: str
    metric: str
    unit: str
    darkroom: float
    baseline: float | None = None
    better: Literal["lower", "higher"] = "lower"
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    details: dict = {}

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline not in (None, 0):
            self.ratio = round(self.darkroom / self.baseline, 4)


Case = Callable[["Context"], Awaitable[list["Measurement"]]]


class Report(msgspec.Struct, kw_only=True):
    """bench/results/<timestamp>.json"""

    started_at: datetime
    seconds: float
    quick: bool
    machine: dict
    commit: str | None
    measurements: list[Measurement]
    failures: dict[str, str] = {}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# Generator settings a bench run passes on to its stacks (to compare `DARKROOM_OVERLAP=off`, say).
PASSED_THROUGH = ("DARKROOM_OVERLAP", "DARKROOM_BATCH_WAIT_MS", "DARKROOM_COMPILE", "DARKROOM_WARMUP", "DARKROOM_DTYPE")


class Context:
    """What cases share in one bench run: a broker, the tiny model, a scratch folder, stacks."""

    def __init__(self, work: Path, amqp_url: str, tiny_model: Path, quick: bool):
        self.work = work
        self.amqp_url = amqp_url
        self.tiny_model = tiny_model
        self.quick = quick
        self._generation_stacks: dict[int, Stack] = {}
        self.idle_rss: dict[str, int] = {}
        self._stacks: list[Stack] = []
        self._bare: BareLoop | None = None
        # The model and device the generation cases run on (`device.choose`): by default the tiny
        # model on the CPU at 64 px and 4 steps (jobs.SMALL_JOB).
        self.device = "cpu"
        self.bare_model = tiny_model
        self.catalog_text = ""
        self.job: dict = {}

    async def stack(self, name: str, services: tuple[str, ...] = SERVICES, env: dict[str, str] | None = None) -> Stack:
        """Start a `darkroom run` stack and return once every one of its services consumes."""
        root = self.work / name
        root.mkdir(parents=True, exist_ok=True)
        if self.catalog_text:
            (root / "darkroom.toml").write_text(self.catalog_text)
        passed = {name: os.environ[name] for name in PASSED_THROUGH if os.environ.get(name)}
        env = {"DARKROOM_DEVICE": self.device, **passed, **(env or {})}
        stack = Stack(root=root, amqp_url=self.amqp_url, tiny_model=self.tiny_model, services=services, env=env)
        self._stacks.append(stack)
        # A GPU generator warms up (and may compile) every batch size before it consumes.
        timeout = 120.0 if self.device == "cpu" else 1800.0
        await asyncio.to_thread(stack.start, timeout)
        await stack.wait_consuming(timeout=timeout)
        return stack

    async def generation_stack(self, max_batch: int = 4) -> Stack:
        """The full stack the generation cases share (one per batch setting); the default one's
        idle RSS is read once, after warm-up."""
        if max_batch not in self._generation_stacks:
            from ops.bench.jobs import warm_up
            from ops.bench.stack import rss

            stack = await self.stack(f"generation-{max_batch}", env={"DARKROOM_MAX_BATCH": str(max_batch)})
            await warm_up(self, stack)
            self._generation_stacks[max_batch] = stack
            if max_batch == 4:
                await asyncio.sleep(1.0)
                self.idle_rss = {name: rss(pid)[0] for name, pid in stack.service_pids().items()}
        return self._generation_stacks[max_batch]

    async def bare(self) -> BareLoop:
        """A long-lived bare diffusers process, for interleaving its calls with Darkroom jobs."""
        if self._bare is None:
            self._bare = await BareLoop.start(self.bare_model, self.threads, self.device)
        return self._bare

    @property
    def threads(self) -> int:
        # The same CPU thread policy as the generator (all cores but one): the strongest setting
        # here, and a like-for-like comparison.
        return max(1, (os.cpu_count() or 2) - 1)

    async def close(self) -> None:
        if self._bare is not None:
            await self._bare.close()
        for stack in self._stacks:
            await asyncio.to_thread(stack.stop)
            try:
                await stack.drop_queues()
            except Exception:  # noqa: BLE001 - cleanup of a scratch namespace must not hide results
                pass


class BareLoop:
    """`python -m ops.bench.baseline --serve`: one bare call per request, timed inside the process."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.peak_rss = 0

    @classmethod
    async def start(cls, model: Path, threads: int, device: str = "cpu") -> BareLoop:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ops.bench.baseline", str(model), "--serve", "--threads", str(threads),
            "--device", device,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        ready = await process.stdout.readline()
        if not ready:
            raise RuntimeError("the bare diffusers process did not start")
        return cls(process)

    async def call(self, seed: int, size: int = 64, steps: int = 4, batch: int = 1) -> float:
        request = {"seed": seed, "size": size, "steps": steps, "batch": batch}
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        await self.process.stdin.drain()
        answer = json.loads(await self.process.stdout.readline())
        self.peak_rss = answer["peak_rss_bytes"]
        return answer["seconds"]

    async def close(self) -> None:
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = str(torch.__version__)
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    return info


def commit_id() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def table(measurements: list[Measurement]) -> str:
    rows = [("case", "metric", "darkroom", "baseline", "ratio", "target")]
    for m in measurements:
        target = "" if m.target is None else f"{m.target} {'ok' if m.met else 'MISSED' if m.met is False else ''}".strip()
        ratio = m.ratio
        rows.append((m.case, f"{m.metric} [{m.unit}]", _fmt(m.darkroom), _fmt(m.baseline),
                     "-" if ratio is None else f"{ratio:.2f}x", target))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
