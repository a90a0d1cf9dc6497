"""Sampling a running stage process with py-spy while a load runs, and naming its top frames."""

from __future__ import annotations

import asyncio
import math
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable
from dataclasses import asdict, is_dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = 12


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: `pip install py-spy` (it is in the test extras)")
    return found


async def profile(pid: int, seconds: float, load: Awaitable) -> dict:
    """Record `pid` with py-spy (100 Hz, without pausing it) for `seconds` while `load` runs;
    the top frames by own time and, among Darkroom's own functions, by time inside them."""
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "profile.txt"
        recorder = await asyncio.create_subprocess_exec(
            py_spy(), "record", "--pid", str(pid), "--duration", str(math.ceil(seconds)), "--rate", "100",
            "--nonblocking", "--full-filenames", "--format", "raw", "--output", str(output),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        during = await load
        _, error = await recorder.communicate()
        if recorder.returncode != 0 or not output.exists():
            raise RuntimeError(f"py-spy record -p {pid} failed: {error.decode(errors='replace')[-500:]}")
        stacks = output.read_text()
    own, inside, samples = top_frames(stacks)
    return {"pid": pid, "samples": samples, "seconds": math.ceil(seconds),
            "during": asdict(during) if is_dataclass(during) else during,
            "top_own_time": own, "top_darkroom_inclusive": inside}


def top_frames(collapsed: str) -> tuple[list[dict], list[dict], int]:
    """From py-spy's raw (collapsed) stacks, `frame;frame;... count` a line: the leaf frames with the
    most samples, and the Darkroom functions (services/, schemas/, ops/) most often on the stack."""
    own: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(frame) for frame in stack.split(";")]
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            if frame.split(" (", 1)[-1].startswith(("services/", "schemas/", "ops/")):
                inside[frame] += int(count)

    def share(counter: Counter[str]) -> list[dict]:
        return [{"frame": frame, "samples": count, "share": round(count / samples, 3)}
                for frame, count in counter.most_common(TOP)] if samples else []

    return share(own), share(inside), samples


def _frame(frame: str) -> str:
    """`handle (/abs/path/services/saver/handlers.py:42)` -> `handle (services/saver/handlers.py)`;
    installed packages from their folder under site-packages, the standard library by file name."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if path.startswith(str(ROOT)):
        path = path[len(str(ROOT)) + 1:]
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/" in path:
        path = path.rsplit("/", 1)[1]
    return f"{name} ({path})" if path else name
