"""Test helpers for the users' library: real LoRA files with kohya-style metadata, and a small real
OpenAI-compatible chat server on loopback standing in for an LLM."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def kohya_metadata(base: str = "sd_v1", dataset: str = "10_foxstyle",
                   tags: dict[str, int] | None = None) -> dict[str, str]:
    """Metadata as kohya's sd-scripts writes it (strings only, JSON inside some)."""
    tags = tags or {"foxstyle": 40, "red fur": 22, "forest": 9}
    return {
        "ss_base_model_version": base,
        "ss_network_module": "networks.lora",
        "ss_network_dim": "4",
        "ss_output_name": dataset.split("_", 1)[-1],
        "ss_tag_frequency": json.dumps({dataset: tags}),
        "ss_dataset_dirs": json.dumps({dataset: {"n_repeats": 10, "img_count": 12}}),
    }


def write_lora(path: Path, metadata: dict[str, str], weights_from: Path | None = None) -> Path:
    """A real safetensors LoRA: the tensors of `weights_from` (a LoRA for the tiny model) or one
    small tensor, with `metadata` in its header."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(weights_from)) if weights_from else {
        "lora_unet_down_blocks_0.lora_down.weight": np.zeros((4, 8), dtype=np.float32)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


class FakeLlm:
    """`POST /v1/chat/completions` answering `answer` (after `delay` seconds); records requests."""

    def __init__(self, answer: str = "a fox, rewritten by the LLM, cel shaded"):
        self.answer = answer
        self.delay = 0.0
        self.status = 200
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                time.sleep(fake.delay)
                reply = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": fake.answer}, "finish_reason": "stop"}]})
                try:
                    self.send_response(fake.status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(reply.encode())
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeLlm:
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.server.shutdown()
        self.server.server_close()
