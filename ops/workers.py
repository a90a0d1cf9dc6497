"""`darkroom workers add|revoke|list` and `darkroom worker`: credentials for generator workers on
other hosts, and running one.

A worker credential is an API key with the worker role (it may only fetch files by hash from
the ingress) and, when the broker is the private one `darkroom run` started, a RabbitMQ user of
its own whose configure/write/read permissions cover only this installation's names
(`<namespace>.*`), never the broker's other users or namespaces. Both are revoked together.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

import msgspec

from ops import keys as api_keys
from ops.broker import BrokerError, private_broker_port, rabbitmqctl
from schemas.settings import Settings, broker_urls
from schemas.workers import WorkerCredential
from services.files import write_atomic

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
VHOST = "/"


def broker_user(name: str) -> str:
    return f"darkroom-worker-{name}"


def permissions(namespace: str) -> tuple[str, str, str]:
    """configure, write, read regexes: this namespace's exchanges and queues only.

    A generator declares the whole topology on connect (so it needs configure on every name), and
    queues with a dead-letter exchange need read on the queue and write on that exchange, so
    read cannot be narrowed further than the namespace without breaking the declarations."""
    names = f"^{re.escape(namespace)}\\."
    return names, names, names


def _records(state_dir: Path) -> Path:
    return state_dir / "workers"


def _write(state_dir: Path, record: WorkerCredential) -> None:
    write_atomic(_records(state_dir) / f"{record.name}.json", msgspec.json.encode(record), mode=0o600)


def load_all(state_dir: Path) -> list[WorkerCredential]:
    folder = _records(state_dir)
    if not folder.is_dir():
        return []
    return sorted((msgspec.json.decode(p.read_bytes(), type=WorkerCredential) for p in folder.glob("*.json")),
                  key=lambda r: r.created_at)


def private_broker_dir(settings: Settings, given: str | None) -> Path | None:
    """The private broker's folder when the broker this installation uses is that one."""
    base = Path(given) if given else settings.data_path / "rabbitmq"
    port = private_broker_port(base)
    if port is None:
        return None
    ours = (port, private_broker_port(base, tls=True), None)
    if settings.amqp_url and all(urlsplit(url).port not in ours for url in broker_urls(settings.amqp_url)):
        return None  # DARKROOM_AMQP_URL names another broker
    return base


def add(settings: Settings, name: str, *, rabbitmq_dir: str | None = None, ingress_url: str | None = None,
        broker_host: str | None = None) -> tuple[WorkerCredential, str]:
    """Make the credential; returns its record and the command to run on the worker host."""
    if not NAME.match(name):
        raise SystemExit(f"worker name must be 1-32 lowercase letters, digits and dashes, got {name!r}")
    state = settings.data_path / "state"
    existing = {r.name: r for r in load_all(state)}
    if name in existing and existing[name].revoked_at is None:
        raise SystemExit(f"worker {name!r} already has a credential; `darkroom workers revoke {name}` first")
    key, token = api_keys.create(state, f"worker:{name}", worker=True)
    base = private_broker_dir(settings, rabbitmq_dir)
    user = None
    if base is not None:
        user, password = broker_user(name), secrets.token_hex(24)  # never a leading "-" (rabbitmqctl takes it for an option)
        try:
            rabbitmqctl(base, "delete_user", user)
        except BrokerError:
            pass  # there was none
        try:
            rabbitmqctl(base, "add_user", user, password)
            rabbitmqctl(base, "set_permissions", "-p", VHOST, user, *permissions(settings.namespace))
        except BrokerError as exc:
            api_keys.revoke(state, key.id)
            raise SystemExit(f"could not create the worker's RabbitMQ user: {exc}") from None
        # Over TLS when the private broker has a TLS listener (DARKROOM_BROKER_TLS_CERT/KEY).
        tls_port = private_broker_port(base, tls=True)
        scheme, port = ("amqps", tls_port) if tls_port else ("amqp", private_broker_port(base))
        host = broker_host or _public_host(settings.broker_host)
        broker = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
    else:  # the operator's own broker: the same address, with the user they make there
        addresses = []  # every node of a cluster, so that the worker fails over too
        for url in broker_urls(settings.amqp_url or "amqp://BROKER-HOST:5672/"):
            given = urlsplit(url)
            where = f"{broker_host or given.hostname}" + (f":{given.port}" if given.port else "")
            addresses.append(f"{given.scheme}://USER:PASSWORD@{where}{given.path or '/'}")
        broker = ",".join(dict.fromkeys(addresses))
    record = WorkerCredential(name=name, key_id=key.id, broker_user=user, created_at=datetime.now(UTC))
    _write(state, record)
    ingress = ingress_url or f"http://{_public_host(settings.host)}:{settings.port}"
    command = f"darkroom worker --broker {broker} --ingress {ingress} --token {token} --models ./darkroom-worker"
    if broker.startswith("amqps://") and settings.broker_ca:
        command += f" --broker-ca {Path(settings.broker_ca).name}"  # a copy of this CA file on the worker host
    if settings.namespace != "darkroom":
        command += f" --namespace {settings.namespace}"
    return record, command


def revoke(settings: Settings, name: str, *, rabbitmq_dir: str | None = None) -> WorkerCredential:
    state = settings.data_path / "state"
    found = {r.name: r for r in load_all(state)}.get(name)
    if found is None:
        raise SystemExit(f"no worker {name!r} (see `darkroom workers credentials`)")
    api_keys.revoke(state, found.key_id)
    if found.broker_user is not None:
        base = private_broker_dir(settings, rabbitmq_dir)
        if base is None:
            raise SystemExit(f"revoked the key; the RabbitMQ user {found.broker_user!r} is on a broker this "
                             f"machine cannot reach: delete it there (`rabbitmqctl delete_user {found.broker_user}`)")
        try:
            rabbitmqctl(base, "delete_user", found.broker_user)  # closes its connections too
        except BrokerError as exc:
            if "no_such_user" not in str(exc) and "does not exist" not in str(exc):
                raise SystemExit(f"revoked the key, but the RabbitMQ user was not deleted: {exc}") from None
    if found.revoked_at is None:
        found.revoked_at = datetime.now(UTC)
        _write(state, found)
    return found


def _public_host(host: str) -> str:
    return socket.getfqdn() if host in ("0.0.0.0", "::", "") else host


def run_worker(broker: str | None, ingress: str | None, token: str | None, models: str | None,
               namespace: str | None, broker_ca: str | None = None) -> None:
    """Run one generator as a remote worker: the flags become its DARKROOM_* settings."""
    for variable, value in (("DARKROOM_AMQP_URL", broker), ("DARKROOM_INGRESS_URL", ingress),
                            ("DARKROOM_WORKER_TOKEN", token), ("DARKROOM_DATA_DIR", models),
                            ("DARKROOM_NAMESPACE", namespace),
                            ("DARKROOM_BROKER_CA", str(Path(broker_ca).resolve()) if broker_ca else None)):
        if value:
            os.environ[variable] = value
    missing = [v for v in ("DARKROOM_AMQP_URL", "DARKROOM_INGRESS_URL", "DARKROOM_WORKER_TOKEN")
               if not os.environ.get(v)]
    if missing:
        raise SystemExit(f"darkroom worker needs --broker, --ingress and --token (or {', '.join(missing)})")
    os.environ.setdefault("DARKROOM_CONFIG_PATH", str(Path(os.environ.get("DARKROOM_DATA_DIR", "./var")) / "darkroom.toml"))
    from services.generator.main import run

    run()


def print_live(url: str | None, api_key: str | None, *, as_json: bool = False) -> int:
    """`darkroom workers`: GET /v1/workers as a table (or JSON)."""
    import httpx

    from darkroom_client.config import resolve

    connection = resolve(url, api_key)
    headers = {"Authorization": f"Bearer {connection.api_key}"} if connection.api_key else {}
    try:
        answer = httpx.get(f"{connection.url.rstrip('/')}/v1/workers", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"darkroom workers: cannot reach {connection.url}: {exc}", file=sys.stderr)
        return 1
    if answer.status_code != 200:
        try:
            message = answer.json().get("message", answer.text)
        except ValueError:
            message = answer.text
        print(f"darkroom workers: {message} (HTTP {answer.status_code})", file=sys.stderr)
        return 1
    if as_json:
        print(answer.text)
        return 0
    found = answer.json()["workers"]
    if not found:
        print("no generator workers heard from")
    for w in found:
        print(f"{w['id']:28} {w['status']:4}  {w['host']:20} {w['device']:6} {w['dtype'] or '-':8} "
              f"batch {w['max_batch']:<2} busy {w['busy']:4.0%}  jobs {w['jobs_done']:<6} "
              f"models {','.join(w['models']) or '-'}")
    return 0
