"""Processes a bench case starts and stops: a `darkroom run` stack, or a single helper process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from ops.broker import free_port
from schemas.settings import SERVICES
from schemas.topology import Topology
from services.bus import connect_robust


def rss(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in bytes, from /proc."""
    values = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


def listener_pid(port: int) -> int | None:
    """The process listening on a local TCP port (the bench's broker, to read its CPU), from
    /proc/net/tcp{,6} and each process's open sockets; None if none can be seen."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
    return None


def children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


@dataclass
class Stack:
    """`darkroom run` against the bench's broker, in its own namespace and data directory."""

    root: Path
    amqp_url: str
    tiny_model: Path
    services: tuple[str, ...] = SERVICES
    env: dict[str, str] = field(default_factory=dict)
    namespace: str = field(default_factory=lambda: f"bench-{secrets.token_hex(3)}")
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        """What every request to this stack sends: an admin key (auth stays on, no rate limits)."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "var"

    def start(self, timeout: float = 120.0) -> Stack:
        from ops import keys

        models = self.data_dir / "models" / "tiny-sd"
        if not models.exists():
            shutil.copytree(self.tiny_model, models)
        _, self.token = keys.create(self.data_dir / "state", "bench", admin=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
        env |= {
            "DARKROOM_AMQP_URL": self.amqp_url,
            "DARKROOM_NAMESPACE": self.namespace,
            "DARKROOM_DATA_DIR": str(self.data_dir),
            "DARKROOM_CONFIG_PATH": str(self.root / "darkroom.toml"),
            "DARKROOM_PORT": str(self.port),
            "DARKROOM_LOG_FORMAT": "json",
            "DARKROOM_LOG_LEVEL": "warning",
            "DARKROOM_SERVICES": ",".join(self.services),
            **self.env,
        }
        log = open(self.root / "stack.log", "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "ops.cli", "run"], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench stack did not start; see {self.root / 'stack.log'}")
            time.sleep(0.2)
        return self

    async def wait_consuming(self, stages: tuple[str, ...] | None = None, timeout: float = 120.0) -> None:
        """Until each stage's queue has a consumer (the ingress has none: its health says ready)."""
        stages = stages if stages is not None else tuple(s for s in self.services if s != "ingress")
        topo = Topology(self.namespace)
        deadline = time.monotonic() + timeout
        for stage in stages:
            await wait_for_consumers(self.amqp_url, topo.queue(stage), 1, timeout=deadline - time.monotonic(),
                                     why=f"{stage} never started consuming; see {self.root / 'stack.log'}")

    def _ready(self) -> bool:
        if "ingress" not in self.services:
            return len(self.service_pids()) == len(self.services)
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                status = json.loads(answer.read())["status"]
                return status == "ok" or ("generator" not in self.services and status == "degraded")
        except (OSError, ValueError, KeyError):
            return False

    def service_pids(self) -> dict[str, int]:
        """Each running service's pid, by name."""
        pids = {}
        for pid in children(self.process.pid) if self.process else []:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                for name in self.services:
                    if f"services.{name}".encode() in cmdline:
                        pids[name] = pid
        return pids

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def drop_queues(self) -> None:
        """Delete the namespace's queues and exchanges (cases may leave thousands of messages)."""
        await drop_namespace(self.amqp_url, self.namespace)


async def wait_for_consumers(amqp_url: str, queue_name: str, count: int, *, timeout: float, why: str,
                             gone: Callable[[], str | None] = lambda: None) -> None:
    """Until `queue_name` has `count` consumers; raises `why` after `timeout`, or what `gone` says
    as soon as it says something (a process that should consume exited)."""
    connection = await connect_robust(amqp_url, name="bench-wait")
    deadline = time.monotonic() + timeout
    try:
        while await consumer_count(connection, queue_name) < count:
            if (exited := gone()) is not None:
                raise RuntimeError(exited)
            if time.monotonic() > deadline:
                raise RuntimeError(why)
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


async def consumer_count(connection: aio_pika.abc.AbstractConnection, queue_name: str) -> int:
    """Consumers of a queue now; 0 while it is not declared (the broker closes the channel on that)."""
    channel = await connection.channel()
    try:
        return (await channel.declare_queue(queue_name, passive=True)).declaration_result.consumer_count
    except aio_pika.exceptions.ChannelClosed:
        return 0
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def drop_namespace(amqp_url: str, namespace: str) -> None:
    topo = Topology(namespace)
    connection = await connect_robust(amqp_url, name="bench-stack")
    try:
        stages = [s for s in SERVICES if s != "ingress"] + ["reaper.commands", "notifier.deliveries"]
        for name in [topo.queue(s) for s in stages] + [topo.dead_letters, topo.reaper_dead_letters]:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()
        for name in (topo.events, topo.commands, topo.dead_letter):
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()
    finally:
        await connection.close()


@contextlib.contextmanager
def helper_process(*args: str, log: Path, env: dict[str, str] | None = None):
    """A helper (bare endpoint, no-op generator) for the duration of a `with` block."""
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=out, env={**os.environ, **(env or {})})
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
