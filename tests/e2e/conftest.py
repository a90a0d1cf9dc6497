"""The whole stack started the way `just run` starts it: `darkroom run`, with its own private broker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ops.broker import free_port, port_open
from tests.support import wait_for_sync


@dataclass
class Stack:
    url: str
    data_dir: Path
    process: subprocess.Popen
    log: Path
    token: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, headers=self.auth)


def created_token(output: str) -> str:
    """The API token in what `darkroom keys create` printed (it prints the webhook secret too)."""
    found = re.search(r"\bdrk_[0-9a-f]+_[A-Za-z0-9_-]+", output)
    assert found, f"no token in {output!r}"
    return found.group(0)


def darkroom_command() -> list[str]:
    script = Path(sys.executable).with_name("darkroom")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ops.cli"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("stack") / "var"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env |= {
        "DARKROOM_DATA_DIR": str(data_dir),
        "DARKROOM_PORT": str(port),
        "DARKROOM_LOG_FORMAT": "json",
        "DARKROOM_CONFIG_PATH": str(data_dir / "darkroom.toml"),
        # Webhook tests post to receivers on loopback, and should not wait minutes for retries.
        "DARKROOM_WEBHOOK_ALLOW": "127.0.0.1",
        "DARKROOM_WEBHOOK_BACKOFF": "0.3",
        "DARKROOM_WEBHOOK_TIMEOUT": "3",
        "DARKROOM_WEBHOOK_ATTEMPTS": "3",
        "DARKROOM_STREAM_KEEPALIVE": "1",
        "DARKROOM_OPS_QUERY_SECONDS": "8",  # test_f14's runaway queries: stopped sooner than the default 30
    }
    log = data_dir.parent / "stack.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*darkroom_command(), "run"], env=env, stdout=out, stderr=subprocess.STDOUT)
    # As a newcomer would: the first start makes an admin key and says where it is.
    first_key = data_dir / "state" / "first-admin-key"
    wait_for_sync(lambda: first_key.exists() and first_key.read_text().strip(), timeout=60, what="the first admin key")
    stack = Stack(url=f"http://127.0.0.1:{port}", data_dir=data_dir, process=process, log=log,
                  token=first_key.read_text().strip())

    def ready() -> bool:
        assert process.poll() is None, f"darkroom run exited early:\n{log.read_text()[-3000:]}"
        try:
            return httpx.get(f"{stack.url}/health", timeout=1).json().get("status") == "ok"
        except (httpx.HTTPError, ValueError):
            return False

    try:
        wait_for_sync(ready, timeout=180, interval=0.25, what="the stack to report healthy")
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def broker_port(stack: Stack) -> int | None:
    for line in stack.log.read_text().splitlines():
        if '"broker started"' in line:
            import json

            return int(json.loads(line)["url"].rsplit(":", 1)[1].strip("/"))
    return None


__all__ = ["Stack", "broker_port", "port_open"]
