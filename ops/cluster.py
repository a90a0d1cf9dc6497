"""A RabbitMQ cluster on this machine: several private nodes (ops/broker.py) joined into one.

For the failover test and for a person trying the clustered setup without Docker
(`darkroom broker cluster`). Each node has its own name, AMQP port, distribution port and data
folder; they share one Erlang cookie and one epmd, on loopback. Nodes 2..n join node 1 with
`rabbitmqctl join_cluster` before anything declares a queue, so that every quorum queue declared
afterwards gets a member on every node (3.10's default initial group size is the cluster's size).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

from ops.broker import BrokerError, PrivateBroker, ensure_installed, free_port, rabbitmqctl, start_epmd


class Cluster:
    """`size` nodes living under `base`; `url` names them all (DARKROOM_AMQP_URL's list form)."""

    def __init__(self, base: Path, size: int = 3, first_port: int = 0):
        if size < 1:
            raise BrokerError(f"a cluster needs at least 1 node, got {size}")
        self.base = base.resolve()
        self.base.mkdir(parents=True, exist_ok=True)
        self.epmd_port = free_port()
        cookie = self.base / "cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
        self.nodes = [
            PrivateBroker(self.base / f"node{n}", first_port + n - 1 if first_port else 0, name=f"darkroom-{n}",
                          epmd_port=self.epmd_port, cookie=cookie.read_text().strip())
            for n in range(1, size + 1)
        ]
        self.epmd: subprocess.Popen | None = None

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def start(self, timeout: float = 90.0) -> Cluster:
        """Boot every node at once, then join the newcomers to node 1; returns once all run clustered."""
        ensure_installed()
        self._kill_stale()
        log = open(self.base / "epmd.out", "ab")
        self.epmd = start_epmd(self.epmd_port, self.nodes[0]._env(), log)
        (self.base / "pids").write_text(f"{self.epmd.pid}\n")
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_ready(timeout)
            first, clustered = self.nodes[0], set(self.running_nodes())
            for node in self.nodes[1:]:
                if node.node not in clustered:
                    for step in (("stop_app",), ("reset",), ("join_cluster", first.node), ("start_app",)):
                        rabbitmqctl(node.base, *step)
            missing = {node.node for node in self.nodes} - set(self.running_nodes())
            if missing:
                raise BrokerError(f"nodes {sorted(missing)} did not join the cluster; see {self.base}/node*/log")
        except BaseException:
            self.stop()
            raise
        (self.base / "url").write_text(self.url + "\n")
        return self

    def running_nodes(self, via: PrivateBroker | None = None) -> list[str]:
        """The cluster's running nodes, as node `via` (default: the first one alive) sees them."""
        via = via or next(node for node in self.nodes if node.alive)
        status = json.loads(rabbitmqctl(via.base, "cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def queue_leaders(self, via: PrivateBroker | None = None) -> dict[str, tuple[str, list[str]]]:
        """Each quorum queue's leader node and members: {name: (leader, members)}."""
        via = via or next(node for node in self.nodes if node.alive)
        rows = json.loads(rabbitmqctl(via.base, "list_queues", "name", "type", "leader", "members",
                                      "--formatter", "json"))
        return {row["name"]: (row["leader"], list(row["members"])) for row in rows if row.get("type") == "quorum"}

    def consumers(self) -> dict[str, int]:
        """Each queue's consumer count, as the first node alive sees them (queues of a dead node
        that are gone with it are not listed)."""
        via = next(node for node in self.nodes if node.alive)
        rows = json.loads(rabbitmqctl(via.base, "list_queues", "name", "consumers", "--formatter", "json"))
        return {row["name"]: int(row["consumers"]) for row in rows}

    def connections(self) -> dict[str, str]:
        """Which node each client connection (by its connection_name) is on: {name: node}."""
        via = next(node for node in self.nodes if node.alive)
        by_port = {node.port: node.node for node in self.nodes}
        found: dict[str, str] = {}
        # The whole cluster's connections; `port` is the node's AMQP port each one came in on.
        rows = json.loads(rabbitmqctl(via.base, "list_connections", "client_properties", "port", "--formatter", "json"))
        for row in rows:
            # rabbitmqctl's JSON gives an AMQP table as [name, type, value] triples.
            for item in row.get("client_properties") or []:
                if isinstance(item, list) and len(item) == 3 and item[0] == "connection_name":
                    found[str(item[2])] = by_port.get(row["port"], "?")
        return found

    def node_named(self, node: str) -> PrivateBroker:
        return next(candidate for candidate in self.nodes if candidate.node == node)

    def _kill_stale(self) -> None:
        """An epmd left by a run killed without cleanup (nodes clean up after themselves on launch)."""
        pids = self.base / "pids"
        if not pids.exists():
            return
        for pid in pids.read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                if self.nodes[0].owns(int(pid)):
                    os.killpg(int(pid), signal.SIGKILL)
        pids.unlink(missing_ok=True)
        time.sleep(0.2)

    def stop(self) -> None:
        """Stop every node (SIGTERM, in parallel), then epmd."""
        for node in self.nodes:
            if node.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.server.pid, signal.SIGTERM)
        for node in self.nodes:
            node.stop()
        if self.epmd is not None and self.epmd.poll() is None:
            os.killpg(self.epmd.pid, signal.SIGTERM)
            self.epmd.wait(10)
        self.epmd = None
        (self.base / "pids").unlink(missing_ok=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(base: Path, size: int, first_port: int) -> int:
    """`darkroom broker cluster`: start the cluster, say how to use it, run until SIGINT or SIGTERM."""
    stop = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    started = time.monotonic()
    try:
        cluster = Cluster(base, size, first_port).start()
    except BrokerError as exc:
        print(f"darkroom broker cluster: {exc}", flush=True)
        return 1
    print(f"{size} RabbitMQ nodes clustered in {time.monotonic() - started:.0f} s under {cluster.base}:\n"
          + "".join(f"  {node.node}  amqp port {node.port}\n" for node in cluster.nodes)
          + f"\nPoint Darkroom at all of them (Ctrl-C here stops the cluster):\n"
          f"  export DARKROOM_AMQP_URL={cluster.url}\n  darkroom run\n", flush=True)
    try:
        while not stop:
            dead = [node.node for node in cluster.nodes if not node.alive]
            if dead:
                print(f"node(s) {', '.join(dead)} stopped; the others carry on", flush=True)
                for node in cluster.nodes:
                    if not node.alive:
                        node.relaunch()
            time.sleep(1)
    finally:
        cluster.stop()
    return 0
