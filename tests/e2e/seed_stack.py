"""A stack for the seed dialects (weights.gg, Chutes): `darkroom run` as `just run` starts it, with
a LoRA in the library (kohya metadata, a preview image) and a small default model whose limits
(64x64, 4 steps) are what a seed's 1024x1024, 20-step request is clamped to on a CPU. `tiny-sd`
stays in the catalog for jobs that must run long enough to be watched."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

from ops.broker import free_port
from tests.e2e.conftest import Stack, created_token, darkroom_command
from tests.library_support import kohya_metadata, write_lora
from tests.support import wait_for_sync

CATALOG = """default = "small"
[models.small]
source = "{source}"
dtype = "float32"
[models.small.defaults]
num_inference_steps = 2
width = 64
height = 64
[models.small.limits]
max_width = 64
max_height = 64
max_steps = 4
"""


@contextmanager
def seed_stack(root: Path, tiny_model: Path, tiny_lora: Path, **env_extra: str) -> Iterator[Stack]:
    data_dir = root / "var"
    loras = data_dir / "models" / "loras"
    write_lora(loras / "fox.safetensors", kohya_metadata(dataset="10_foxstyle"), weights_from=tiny_lora)
    Image.new("RGB", (32, 32), (200, 90, 20)).save(loras / "fox.png")
    (root / "darkroom.toml").write_text(CATALOG.format(source=tiny_model))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env |= {"DARKROOM_DATA_DIR": str(data_dir), "DARKROOM_PORT": str(port), "DARKROOM_LOG_FORMAT": "json",
            "DARKROOM_CONFIG_PATH": str(root / "darkroom.toml"), "DARKROOM_PREVIEW_EVERY": "1", **env_extra}
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
