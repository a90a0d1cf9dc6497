"""A private RabbitMQ node under a folder of our own: for `darkroom run` and for the test session.

Debian's `rabbitmq-server` package does not start a node by itself here, and its /usr/sbin wrapper
switches user and writes to /var/log. We run the node directly with its own mnesia, logs, config,
Erlang cookie, node name, distribution port and epmd port, listening on 127.0.0.1 unless told
otherwise (DARKROOM_BROKER_HOST, for generator workers on other hosts).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
INSTALL_HINT = (
    "RabbitMQ is not installed. Install it with `sudo apt-get install -y rabbitmq-server` "
    "(Debian/Ubuntu), or point DARKROOM_AMQP_URL at a broker you already run."
)


class BrokerError(RuntimeError):
    """The private broker could not be installed, started or stopped; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def ensure_installed() -> None:
    """Install rabbitmq-server through apt when it is missing and we are root; otherwise explain."""
    if SERVER.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BrokerError(INSTALL_HINT)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "rabbitmq-server"]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(f"`{' '.join(cmd)}` failed: {result.stderr.strip()[-500:]}\n{INSTALL_HINT}")
    if not SERVER.exists():
        raise BrokerError(INSTALL_HINT)


def start_epmd(port: int, env: dict[str, str], log) -> subprocess.Popen:
    """Erlang's port mapper on loopback `port`: how nodes (and rabbitmqctl) find each other."""
    return subprocess.Popen([_epmd_binary(), "-port", str(port), "-address", "127.0.0.1"],
                            env=env, stdout=log, stderr=log, start_new_session=True)


def _epmd_binary() -> str:
    found = shutil.which("epmd")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd")):
        return str(candidate)
    raise BrokerError("epmd (part of Erlang) was not found next to RabbitMQ")


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener for the private node: its certificate and key (PEM), and the CA that client
    certificates are checked against when a client sends one (none: clients are not asked)."""

    cert: Path
    key: Path
    ca: Path | None = None
    port: int = 0


class PrivateBroker:
    """One RabbitMQ node living entirely inside `base`, reachable at `url` (and, with `tls`, for
    amqps on `tls_port`)."""

    def __init__(self, base: Path, port: int = 0, name: str | None = None, host: str = "127.0.0.1",
                 tls: BrokerTls | None = None, *, epmd_port: int | None = None, cookie: str | None = None):
        self.base = base.resolve()
        # A cluster's nodes share one epmd (so they find each other) and one Erlang cookie.
        self.owns_epmd = epmd_port is None
        self.cookie = cookie
        # Where it listens besides 127.0.0.1 (an interface address, or 0.0.0.0 for all): services
        # on this machine always connect over loopback, where `guest` is allowed.
        self.host = host or "127.0.0.1"
        self.local_host = "127.0.0.1"
        self.port = port or free_port()
        self.tls = tls
        self.tls_port = (tls.port or free_port()) if tls else None
        self.dist_port = free_port()
        self.epmd_port = epmd_port or free_port()
        self.node = self._node_name(name or "darkroom")
        self.server: subprocess.Popen | None = None
        self.epmd: subprocess.Popen | None = None

    def _node_name(self, name: str) -> str:
        # Queued messages live in mnesia under the node's name: keep the name stable per folder so
        # a restarted broker finds them again.
        stored = self.base / "nodename"
        if stored.exists():
            return stored.read_text().strip()
        self.base.mkdir(parents=True, exist_ok=True)
        node = f"{name}-{secrets.token_hex(3)}@localhost"
        stored.write_text(node)
        return node

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.local_host}:{self.port}/"

    def _env(self) -> dict[str, str]:
        home = self.base / "home"
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            # Only in the default case: these variables would override the listeners of the config.
            **({"RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port)}
               if self.host == "127.0.0.1" else {}),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.base / "rabbitmq.pid"),
        }

    def _write_files(self) -> None:
        home = self.base / "home"
        for folder in (home, self.base / "mnesia", self.base / "log"):
            folder.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if self.cookie is not None and cookie.exists() and cookie.read_text() != self.cookie:
            cookie.unlink()
        if not cookie.exists():
            cookie.write_text(self.cookie or secrets.token_hex(16))
        cookie.chmod(0o400)
        (self.base / "rabbitmq.conf").write_text(
            self._listeners() +
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = warning\n"
            "disk_free_limit.absolute = 50MB\n"
            # Image events carry PNG bytes; leave room for large batches of large images.
            "max_message_size = 536870912\n"
        )
        (self.base / "advanced.config").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")

    def _listeners(self) -> str:
        return self._listen("tcp", self.port) + (self._listen("ssl", self.tls_port) + self._tls_options()
                                                  if self.tls else "")

    def _listen(self, kind: str, port: int) -> str:
        if self.host in ("127.0.0.1", "0.0.0.0"):
            return f"listeners.{kind}.default = {self.host}:{port}\n"
        # An interface address for remote workers, and loopback for this machine's services.
        return f"listeners.{kind}.default = 127.0.0.1:{port}\nlisteners.{kind}.workers = {self.host}:{port}\n"

    def _tls_options(self) -> str:
        tls = self.tls
        options = f"ssl_options.certfile = {tls.cert.resolve()}\nssl_options.keyfile = {tls.key.resolve()}\n"
        if tls.ca is not None:
            options += (f"ssl_options.cacertfile = {tls.ca.resolve()}\nssl_options.verify = verify_peer\n"
                        "ssl_options.fail_if_no_peer_cert = false\n")
        return options

    def _kill_stale(self) -> None:
        """A previous run killed without cleanup may have left its node (and epmd) running here.

        The pid file outlives its processes (a SIGKILLed supervisor, a power cut): after a reboot
        its numbers may belong to anyone, so only a process whose environment names this broker's
        folder is killed."""
        pids = self.base / "pids"
        if not pids.exists():
            return
        for pid in pids.read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                if self.owns(int(pid)):
                    os.killpg(int(pid), signal.SIGKILL)
        pids.unlink(missing_ok=True)
        time.sleep(0.5)

    def owns(self, pid: int) -> bool:
        """Whether process `pid` was started by this broker (its environment names our folder)."""
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        return f"RABBITMQ_MNESIA_BASE={self.base / 'mnesia'}".encode() in environ.split(b"\0")

    @property
    def alive(self) -> bool:
        """Whether the node launched by this object is still running."""
        return self.server is not None and self.server.poll() is None

    def start(self, timeout: float = 60.0) -> PrivateBroker:
        """Start the node and return once it accepts AMQP connections."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> None:
        """Start the node without waiting for it (so that other work can overlap its ~8 s boot)."""
        ensure_installed()
        self._kill_stale()
        if port_open(self.port, self.local_host):
            raise BrokerError(f"port {self.port} is already in use; choose another with DARKROOM_BROKER_PORT")
        self._write_files()
        env = self._env()
        log = open(self.base / "log" / "server.out", "ab")
        if self.owns_epmd:
            self.epmd = start_epmd(self.epmd_port, env, log)
        self._launch_node(env, log)

    def _launch_node(self, env: dict[str, str], log) -> None:
        self.server = subprocess.Popen(
            [str(SERVER)], env=env, stdout=log, stderr=log, start_new_session=True, cwd=self.base
        )
        (self.base / "pids").write_text(f"{self.server.pid} {self.epmd.pid if self.epmd else ''}\n")
        # How `rabbitmqctl` reaches this node from another process (`darkroom workers add`).
        (self.base / "ctl.json").write_text(json.dumps({"node": self.node, "port": self.port,
                                                        "epmd_port": self.epmd_port, "tls_port": self.tls_port}))

    def relaunch(self) -> None:
        """Start the node again after it died (same port, name and data: queued messages survive),
        without waiting for it; epmd, if it still runs, is kept."""
        if self.alive:
            return
        if self.owns_epmd and (self.epmd is None or self.epmd.poll() is not None):
            self.launch()
            return
        self._launch_node(self._env(), open(self.base / "log" / "server.out", "ab"))

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the launched node accepts AMQP connections; stop it and raise if it cannot."""
        assert self.server is not None, "launch() first"
        env = self._env()
        deadline = time.monotonic() + timeout
        while not port_open(self.port, self.local_host):
            if self.server.poll() is not None:
                self.stop()
                raise BrokerError(f"RabbitMQ exited with code {self.server.returncode}; see {self.base / 'log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"RabbitMQ did not open port {self.port} within {timeout:.0f}s; see {self.base / 'log'}")
            time.sleep(0.1)
        remaining = max(5.0, deadline - time.monotonic())
        result = subprocess.run(
            [str(CTL), "-n", self.node, "await_startup", "--timeout", str(int(remaining))],
            env=env, capture_output=True, text=True, timeout=remaining + 5,
        )
        if result.returncode != 0:
            self.stop()
            raise BrokerError(f"RabbitMQ did not finish starting: {result.stderr.strip()[-500:]}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the node (it stops cleanly), then epmd."""
        for proc in (self.server, self.epmd):
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.server = self.epmd = None
        (self.base / "pids").unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the node (a crash), leaving epmd so that `start_again` works."""
        if self.server and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait(5)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop the node and start it again on the same port with the same data (messages survive)."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rabbitmqctl(base: Path, *args: str, timeout: float = 60.0) -> str:
    """Run `rabbitmqctl` against the private node living in `base` (started by `darkroom run` or
    the test session); its output, or BrokerError naming what failed."""
    base = base.resolve()
    try:
        ctl = json.loads((base / "ctl.json").read_text())
    except (OSError, ValueError) as exc:
        raise BrokerError(f"no private broker in {base} (start Darkroom with `darkroom run` first): {exc}") from None
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
        "HOME": str(base / "home"),
        "ERL_EPMD_PORT": str(ctl["epmd_port"]),
        "RABBITMQ_NODENAME": ctl["node"],
    }
    result = subprocess.run([str(CTL), "-n", ctl["node"], "-q", *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise BrokerError(f"rabbitmqctl {args[0]} failed: {(result.stderr or result.stdout).strip()[-500:]}")
    return result.stdout


def private_broker_port(base: Path, *, tls: bool = False) -> int | None:
    """The AMQP port (or with `tls`, the amqps port) of the private node in `base`, if one was
    started there (with a TLS listener)."""
    try:
        port = json.loads((base / "ctl.json").read_text()).get("tls_port" if tls else "port")
        return int(port) if port else None
    except (OSError, ValueError, AttributeError):
        return None
