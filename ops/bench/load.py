"""HTTP load for the ingress case: wrk when installed (as FIELD-NOTES measured), else a bounded
asyncio client. Both run for a fixed time with a fixed number of connections."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class LoadResult:
    requests_per_second: float
    requests: int
    errors: int
    tool: str


def _wrk_script(method: str, body: bytes | None, headers: dict[str, str]) -> str:
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines += [f"wrk.body = [[{body.decode()}]]", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    return "\n".join(lines) + "\n"


def run_wrk(url: str, *, method: str, body: bytes | None, seconds: float, connections: int,
            headers: dict[str, str]) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_wrk_script(method, body, headers))
        script.flush()
        output = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script.name, url],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors:.*?timeout (\d+)", output)
    count = (int(errors.group(1)) if errors else 0) + (int(socket_errors.group(1)) if socket_errors else 0)
    return LoadResult(rate, total, count, "wrk")


async def run_python(url: str, *, method: str, body: bytes | None, seconds: float, connections: int,
                     headers: dict[str, str]) -> LoadResult:
    done = errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                answer = await client.request(method, url, content=body, headers={"content-type": "application/json", **headers})
                done += 1
                errors += answer.status_code >= 300

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - started
    return LoadResult(done / elapsed, done, errors, "python-httpx")


async def load(url: str, *, method: str = "GET", body: bytes | None = None, seconds: float, connections: int,
               prefer_wrk: bool = True, headers: dict[str, str] | None = None) -> LoadResult:
    headers = headers or {}
    if prefer_wrk and shutil.which("wrk"):
        return await asyncio.to_thread(run_wrk, url, method=method, body=body, seconds=seconds,
                                       connections=connections, headers=headers)
    return await run_python(url, method=method, body=body, seconds=seconds, connections=connections, headers=headers)
