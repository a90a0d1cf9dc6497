"""`darkroom run`: start the broker (unless DARKROOM_AMQP_URL names one), every service, and the API.

Each service is its own process. A service that exits unexpectedly is restarted with backoff
(it never crash-loops hot). Ctrl-C or SIGTERM stops everything: services first (they finish or
hand back their current message), then the broker.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ops.broker import BrokerError, BrokerTls, PrivateBroker, port_open
from schemas.settings import Settings

STOP_GRACE = 25.0  # > a generator's shutdown grace (10 s) + one step and hand-back (8 s)
log = structlog.get_logger("darkroom")


def _die_with_parent() -> None:
    # Children get SIGTERM if the supervisor dies without cleaning up (Linux only; best effort).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    name: str
    module: str
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)


class Supervisor:
    def __init__(self, settings: Settings, env: dict[str, str]):
        self.settings = settings
        self.env = env
        self.children = []
        for name in settings.service_list:
            copies = max(1, settings.generators) if name == "generator" else 1
            for n in range(1, copies + 1):
                self.children.append(Child(f"{name}-{n}" if copies > 1 else name, f"services.{name}"))
        self.stopping = False
        self.stop_signal = 0  # the first stop signal received (logged by the main loop, not the handler)

    def start_child(self, child: Child) -> None:
        child.process = subprocess.Popen(
            [sys.executable, "-m", child.module], env=self.env, preexec_fn=_die_with_parent
        )
        child.started_at = time.monotonic()
        log.info("service started", service=child.name, pid=child.process.pid)

    def watch(self) -> None:
        """Restart services that exit, with backoff (1 s doubling to 30 s; reset after a minute up)."""
        now = time.monotonic()
        for child in self.children:
            proc = child.process
            if proc is not None and proc.poll() is None:
                if child.restarts and now - child.started_at > 60:
                    child.restarts = 0
                continue
            if proc is not None:
                delay = min(30.0, 2.0 ** child.restarts)
                log.error("service exited; restarting", service=child.name, code=proc.returncode, restart_in=delay)
                child.process = None
                child.restarts += 1
                child.next_start = now + delay
            if now >= child.next_start:
                self.start_child(child)

    def stop(self) -> None:
        for child in self.children:
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service did not stop in time; killing", service=child.name)
                child.process.kill()
                child.process.wait()


class BrokerWatch:
    """Brings the private broker back when it dies (services reconnect by themselves), with backoff:
    1 s doubling to 30 s, reset once it has stayed up for a minute."""

    def __init__(self, broker: PrivateBroker):
        self.broker = broker
        self.restarts = 0
        self.next_start = 0.0
        self.started_at = time.monotonic()
        self.down_since: float | None = None

    def check(self) -> None:
        now = time.monotonic()
        if self.broker.alive:
            if self.down_since is not None and port_open(self.broker.port, self.broker.local_host):
                log.info("broker is back", seconds_down=round(now - self.down_since, 1), restarts=self.restarts)
                self.down_since = None
            if self.restarts and self.down_since is None and now - self.started_at > 60:
                self.restarts = 0
            return
        if self.down_since is None:
            code = self.broker.server.returncode if self.broker.server else None
            self.down_since = now
            self.next_start = now + min(30.0, 2.0 ** self.restarts) - 1.0
            log.error("broker exited; restarting it", code=code, restart_in=round(self.next_start - now, 1))
        if now >= self.next_start:
            self.restarts += 1
            self.started_at = now
            try:
                self.broker.relaunch()
            except BrokerError as exc:
                log.error("broker restart failed", error=str(exc))
            self.next_start = now + min(30.0, 2.0 ** self.restarts)


def wait_healthy(url: str, timeout: float, supervisor: Supervisor, need_generator: bool,
                 tick: Callable[[], None]) -> bool:
    """Until the API answers healthy: `ok`, or `degraded` when generators run on other machines."""
    accepted = {"ok"} if need_generator else {"ok", "degraded"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not supervisor.stopping:
        tick()
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200 and json.loads(answer.read()).get("status") in accepted:
                    return True
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    return False


def run(settings: Settings) -> int:
    data = settings.data_path
    data.mkdir(parents=True, exist_ok=True)
    lock = open(data / ".darkroom-run.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error("another `darkroom run` is already using this data directory", data_dir=str(data))
        return 1

    first_key = _first_admin_key(settings, data)
    started = time.monotonic()
    env = {**os.environ, "DARKROOM_DATA_DIR": str(data)}
    tls = BrokerTls(Path(settings.broker_tls_cert), Path(settings.broker_tls_key),
                    Path(settings.broker_ca) if settings.broker_ca else None,
                    settings.broker_tls_port) if settings.broker_tls_cert else None
    broker = (PrivateBroker(data / "rabbitmq", settings.broker_port, host=settings.broker_host, tls=tls)
              if not settings.amqp_url else None)
    if broker is not None:
        env["DARKROOM_AMQP_URL"] = broker.url
    supervisor = Supervisor(settings, env)
    broker_watch = BrokerWatch(broker) if broker is not None else None

    def tick() -> None:
        """One round of supervision: restart what died (services, and the private broker)."""
        supervisor.watch()
        if broker_watch is not None:
            broker_watch.check()

    def request_stop(signum: int, _frame: object) -> None:
        # Only set flags: a handler that logs can interrupt the logger holding its lock, and a
        # second signal (the group's and `just`'s) would then wait for that lock forever.
        supervisor.stop_signal = supervisor.stop_signal or signum
        supervisor.stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        if broker is not None:
            broker.launch()
        # Services start while the broker boots: their imports and model loading overlap its
        # ~8 s start, and they retry their connection until it answers.
        supervisor.watch()
        if broker is not None:
            broker.wait_ready()
            # For `darkroom ops` and subscribers on this machine: where the private broker is.
            (data / "rabbitmq" / "url").write_text(broker.url + "\n")
            log.info("broker started", url=broker.url, seconds=round(time.monotonic() - started, 1))
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        health = f"http://{host}:{settings.port}/health"
        if "ingress" not in settings.service_list:
            log.info("services started", services=list(settings.service_list))
        elif wait_healthy(health, 180, supervisor, need_generator="generator" in settings.service_list, tick=tick):
            log.info(
                "Darkroom is ready",
                api=f"http://{host}:{settings.port}",
                docs=f"http://{host}:{settings.port}/docs",
                seconds=round(time.monotonic() - started, 1),
            )
            if first_key is not None:
                # Shown once, on the terminal only (not a log record that may be shipped elsewhere).
                print(f"\nYour admin API key (also in {first_key[1]}; delete that file once you have it):\n"
                      f"  export DARKROOM_KEY={first_key[0]}\n"
                      f"  curl -s -X POST http://{host}:{settings.port}/v1/jobs -H \"Authorization: Bearer $DARKROOM_KEY\" "
                      f"-d '{{\"prompt\":\"a red fox\"}}'\n", file=sys.stderr, flush=True)
        elif not supervisor.stopping:
            log.error("the API did not become healthy within 180 s; check the service logs above")
        while not supervisor.stopping:
            tick()
            time.sleep(0.2)
    except BrokerError as exc:
        log.error("cannot start RabbitMQ", error=str(exc))
        return 1
    finally:
        if supervisor.stop_signal:
            log.info("stopping", signal=signal.Signals(supervisor.stop_signal).name)
        supervisor.stop()
        if broker is not None:
            broker.stop()
        log.info("stopped")
    return 0


def _first_admin_key(settings: Settings, data) -> tuple[str, object] | None:
    """On the first start with auth on and no keys, make an admin key so the API is usable."""
    from ops import keys

    if settings.auth != "on" or keys.load_all(data / "state"):
        return None
    key, token = keys.create(data / "state", "first admin (made by darkroom run)", admin=True)
    path = data / "state" / "first-admin-key"
    # Whole or absent (someone may be waiting for it to appear), and never readable by others.
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    os.replace(temp, path)
    log.info("created the first admin API key", key_id=key.id, file=str(path))
    return token, path

