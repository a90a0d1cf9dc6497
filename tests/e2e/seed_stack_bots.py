"""The stack the seed dialects' e2e tests drive (CyberImage under /api, the A1111 bot under
/a1111): `darkroom run` with a LoRA in the library, an admin key, and the anonymous tenant
limited to `anonymous_rate` generation requests per hour (the seed clients send no credentials)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx

from ops.broker import free_port
from tests.e2e.conftest import Stack, created_token, darkroom_command
from tests.support import wait_for_sync


def start_stack(root: Path, tiny_lora: Path, anonymous_rate: str) -> Iterator[Stack]:
    data_dir = root / "var"
    (data_dir / "models" / "loras").mkdir(parents=True)
    shutil.copy(tiny_lora, data_dir / "models" / "loras" / "fox.safetensors")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env |= {"DARKROOM_DATA_DIR": str(data_dir), "DARKROOM_PORT": str(port), "DARKROOM_LOG_FORMAT": "json",
            "DARKROOM_CONFIG_PATH": str(root / "darkroom.toml"), "DARKROOM_ANONYMOUS_RATE": anonymous_rate,
            "DARKROOM_PREVIEW_EVERY": "0"}
    key = created_token(subprocess.run([*darkroom_command(), "keys", "create", "--name", "ops", "--admin"], env=env,
                         capture_output=True, text=True, check=True).stdout)
    log = root / "stack.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*darkroom_command(), "run"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    stack = Stack(url=f"http://127.0.0.1:{port}", data_dir=data_dir, process=process, log=log, token=key)

    def healthy() -> bool:
        assert process.poll() is None, f"darkroom run exited:\n{log.read_text()[-3000:]}"
        try:
            return httpx.get(f"{stack.url}/health", timeout=1).json().get("status") == "ok"
        except (httpx.HTTPError, ValueError):
            return False

    try:
        wait_for_sync(healthy, timeout=180, interval=0.25, what="the stack to report healthy")
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
