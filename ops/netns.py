"""Generator workers on "other hosts" of this one, for the remote-workers test and `darkroom bench
remote`: each in its own network namespace (and UTS namespace: its own host name) with its own
empty folder, sharing nothing with the control node but the broker.

Each namespace is joined to this host by a veth pair on its own /30 of 10.213.<x>.0/24 (x drawn
at random; never any other address), made here and removed again whatever happens. The control
node listens on loopback; `Forwarder` carries TCP from each veth host address to it, which is all
a namespace can reach. Needs root, `ip` (iproute2) and `unshare` (util-linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.213"


class NetnsError(RuntimeError):
    """Namespaces could not be made (or a worker credential not created); the message says why."""


@dataclass(frozen=True)
class Namespace:
    name: str
    # This host's end of the veth pair and its address; the namespace's address.
    host_if: str
    host_ip: str
    ns_ip: str


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def require_tools() -> None:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        raise NetnsError("network namespaces need root, `ip` (iproute2) and `unshare` (util-linux)")


@contextlib.contextmanager
def namespaces(count: int) -> Iterator[list[Namespace]]:
    """`count` network namespaces, each with a veth pair on its own /30 of 10.213.<x>.0/24."""
    require_tools()
    if not 1 <= count <= 63:
        raise NetnsError(f"1-63 namespaces fit in one /24 of /30s, asked for {count}")
    tag, third = secrets.token_hex(3), 1 + secrets.randbelow(254)
    made: list[Namespace] = []
    try:
        for i in range(count):
            ns = Namespace(name=f"drk{tag}{i}", host_if=f"drk{tag}h{i}", host_ip=f"{SUBNET}.{third}.{4 * i + 1}",
                           ns_ip=f"{SUBNET}.{third}.{4 * i + 2}")
            peer = f"drk{tag}n{i}"
            _ip("netns", "add", ns.name)
            made.append(ns)
            _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns.name)
            _ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
            _ip("link", "set", ns.host_if, "up")
            _ip("-n", ns.name, "addr", "add", f"{ns.ns_ip}/30", "dev", peer)
            _ip("-n", ns.name, "link", "set", peer, "up")
            _ip("-n", ns.name, "link", "set", "lo", "up")
        yield made
    finally:
        for ns in made:
            subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)


class Forwarder:
    """TCP from `listen_host:port` to 127.0.0.1:`target` (the broker and the API listen on
    loopback), on the running event loop."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.writers: set[asyncio.StreamWriter] = set()

    async def add(self, listen_host: str, port: int, target: int) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                writer.close()
                return
            self.writers |= {writer, up_writer}
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            self.writers -= {writer, up_writer}

        self.servers.append(await asyncio.start_server(handle, listen_host, port))

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for writer in list(self.writers):
            writer.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)


def darkroom_command() -> list[str]:
    """How to run `darkroom` with this interpreter (the console script, else the module)."""
    script = Path(sys.executable).with_name("darkroom")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ops.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any DARKROOM_* variable (a worker host has none of ours), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    return env | {"DARKROOM_LOG_FORMAT": "json"} | extra


async def add_worker(name: str, ns: Namespace, control_env: dict[str, str], *, rabbitmq_dir: Path,
                     api_port: int) -> tuple[list[str], str]:
    """`darkroom workers add NAME` as an operator runs it, with the addresses the namespace reaches:
    the worker command it prints (the words after `darkroom`) and everything it printed."""
    made = await asyncio.to_thread(
        subprocess.run, [*darkroom_command(), "workers", "add", name, "--rabbitmq-dir", str(rabbitmq_dir),
                         "--ingress", f"http://{ns.host_ip}:{api_port}", "--broker-host", ns.host_ip],
        env=control_env, capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        raise NetnsError(f"darkroom workers add {name} failed: {made.stderr.strip()}")
    lines = [x for x in made.stdout.splitlines() if x.startswith("darkroom worker ")]
    if len(lines) != 1:
        raise NetnsError(f"darkroom workers add {name} printed no worker command: {made.stdout}")
    return shlex.split(lines[0])[1:], made.stdout


def spawn_worker(ns: Namespace, hostname: str, args: list[str], env: dict[str, str], log: Path,
                 cwd: Path) -> subprocess.Popen:
    """Run `darkroom <args>` inside the namespace, in a UTS namespace of its own named `hostname`."""
    inner = shlex.join([*darkroom_command(), *args])
    with log.open("wb") as out:
        return subprocess.Popen(["ip", "netns", "exec", ns.name, "unshare", "--uts", "sh", "-c",
                                 f"hostname {shlex.quote(hostname)} && exec {inner}"],
                                env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


async def stop_all(processes: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM, then wait without blocking the event loop (the forwarders run on it); SIGKILL late ones."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            await asyncio.to_thread(process.wait, max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
