"""The users' library against the running stack (`darkroom run`, as `just run` starts it), with an
LLM configured for the enricher: a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from ops import keys
from ops.broker import free_port
from tests.e2e.conftest import Stack, darkroom_command
from tests.library_support import FakeLlm, kohya_metadata, write_lora
from tests.support import wait_for_sync


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLlm]:
    with FakeLlm(answer="a fox drawn by the LLM, anime key visual") as fake:
        yield fake


@pytest.fixture(scope="module")
def library_stack(tmp_path_factory: pytest.TempPathFactory, llm: FakeLlm) -> Iterator[Stack]:
    """`darkroom run` with DARKROOM_ENRICH_LLM_URL/_MODEL pointing at the fake LLM."""
    data_dir = tmp_path_factory.mktemp("library-stack") / "var"
    data_dir.mkdir(parents=True)
    (data_dir / "darkroom.toml").write_text("[enrichment.llm]\ntimeout_s = 1.0\nretries = 1\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")} | {
        "DARKROOM_DATA_DIR": str(data_dir), "DARKROOM_PORT": str(port), "DARKROOM_LOG_FORMAT": "json",
        "DARKROOM_CONFIG_PATH": str(data_dir / "darkroom.toml"),
        "DARKROOM_ENRICH_LLM_URL": llm.url, "DARKROOM_ENRICH_LLM_MODEL": "fake-7b",
    }
    log = data_dir.parent / "stack.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*darkroom_command(), "run"], env=env, stdout=out, stderr=subprocess.STDOUT)
    first_key = data_dir / "state" / "first-admin-key"
    try:
        wait_for_sync(lambda: first_key.exists() and first_key.read_text().strip(), timeout=90, what="the admin key")
        stack = Stack(url=f"http://127.0.0.1:{port}", data_dir=data_dir, process=process, log=log,
                      token=first_key.read_text().strip())

        def ready() -> bool:
            assert process.poll() is None, f"darkroom run exited early:\n{log.read_text()[-3000:]}"
            try:
                return httpx.get(f"{stack.url}/health", timeout=1).json().get("status") == "ok"
            except (httpx.HTTPError, ValueError):
                return False

        wait_for_sync(ready, timeout=240, interval=0.25, what="the stack to report healthy")
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def _user(stack: Stack, name: str) -> Iterator[httpx.Client]:
    _, token = keys.create(stack.data_dir / "state", name)
    client = httpx.Client(base_url=stack.url, timeout=30, headers={"Authorization": f"Bearer {token}"})
    # The ingress reloads its keys at most once a second.
    with client:
        wait_for_sync(lambda: client.get("/v1/quota").status_code == 200, timeout=10, what=f"key {name} known")
        yield client


def _finished(client: httpx.Client, job: dict) -> dict:
    assert job.get("status") == "pending", job

    def done():
        doc = client.get(f"/v1/jobs/{job['id']}").json()
        return doc if doc["status"] in ("completed", "failed", "cancelled") else None

    doc = wait_for_sync(done, timeout=180, interval=0.2, what=f"job {job['id']}")
    assert doc["status"] == "completed", doc
    return doc


def _pixels(client: httpx.Client, doc: dict) -> np.ndarray:
    png = client.get(f"/v1/images/{doc['images'][0]['id']}").content
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _names(client: httpx.Client, query: str) -> list[str]:
    return [lora["name"] for lora in client.get("/v1/loras", params={"search": query}).json()["loras"]]


def test_a_lora_written_into_the_folder_is_found_misspelt_and_gone_when_removed(library_stack, tiny_lora):
    with _user(library_stack, "searcher") as client:
        path = write_lora(library_stack.data_dir / "models" / "loras" / "kitsune_ink.safetensors",
                          kohya_metadata(dataset="10_kitsune ink", tags={"kitsune": 12, "ink wash": 8}),
                          weights_from=tiny_lora)
        wait_for_sync(lambda: _names(client, "kitsune_ink") == ["kitsune_ink"], timeout=20, what="indexed live")
        assert _names(client, "kitsnue ikn") == ["kitsune_ink"], "misspelt"
        assert _names(client, "ink wa") == ["kitsune_ink"], "a tag, half typed"
        info = client.get("/v1/loras/kitsune_ink").json()
        assert info["base"] == "sd1" and info["trigger_words"] == ["kitsune ink"] and len(info["sha256"]) == 64
        path.unlink()
        wait_for_sync(lambda: _names(client, "kitsune_ink") == [], timeout=20, what="the removal seen live")
        assert client.get("/v1/loras/kitsune_ink").status_code == 404


def test_a_job_in_a_session_uses_its_loras_and_equals_the_explicit_job(library_stack, tiny_lora):
    shutil.copy(tiny_lora, library_stack.data_dir / "models" / "loras" / "fox.safetensors")
    job = {"prompt": "a fox", "settings": {"width": 64, "height": 64, "num_inference_steps": 4, "seed": 11}}
    with _user(library_stack, "painter") as client, _user(library_stack, "other") as other:
        wait_for_sync(lambda: client.get("/v1/loras/fox").status_code == 200, timeout=20, what="fox indexed")
        assert client.put("/v1/sessions/space1", json={"settings": {"guidance_scale": 5.0}}).status_code == 201
        assert client.post("/v1/sessions/space1/loras", json={"name": "fox", "weight": 1.0}).status_code == 200
        in_session = _finished(client, client.post("/v1/jobs", json={**job, "session": "space1"}).json())
        explicit = _finished(client, client.post("/v1/jobs", json={
            **job, "settings": {**job["settings"], "guidance_scale": 5.0},
            "loras": [{"name": "fox", "weight": 1.0}]}).json())
        base = _finished(client, client.post("/v1/jobs", json={
            **job, "settings": {**job["settings"], "guidance_scale": 5.0}}).json())
        # The job names the LoRA's content too (remote workers fetch it by this hash).
        fox_sha256 = hashlib.sha256(tiny_lora.read_bytes()).hexdigest()
        assert in_session["loras"] == [{"name": "fox", "weight": 1.0, "sha256": fox_sha256}]
        assert in_session["applied"] == {"session": "space1",
                                         "fields": {"settings.guidance_scale": "session", "loras.fox": "session"}}
        session_px, explicit_px, base_px = (_pixels(client, d) for d in (in_session, explicit, base))
        assert np.array_equal(session_px, explicit_px), "the session's LoRAs, exactly as if given"
        assert np.abs(session_px - base_px).max() > 5, "and they change the image"
        # The other tenant can neither see the session nor use it.
        assert other.get("/v1/sessions/space1").status_code == 404
        assert other.post("/v1/jobs", json={**job, "session": "space1"}).status_code == 400


def test_presets_and_precedence_on_the_stack(library_stack):
    with _user(library_stack, "preset-user") as client, _user(library_stack, "nosy") as nosy:
        preset = client.post("/v1/presets", json={"id": "small", "settings": {"width": 64, "height": 64,
                                                                              "num_inference_steps": 3}}).json()
        client.put("/v1/sessions/s", json={"preset": "small", "settings": {"num_inference_steps": 2}})
        doc = _finished(client, client.post("/v1/jobs", json={"prompt": "x", "session": "s",
                                                               "settings": {"height": 128}}).json())
        settings = doc["settings"]
        assert (settings["height"], settings["num_inference_steps"], settings["width"]) == (128, 2, 64)
        assert settings["guidance_scale"] == 7.5, "the model's default"
        assert doc["applied"] == {"session": "s", "preset": preset["id"], "fields": {
            "settings.num_inference_steps": "session", "settings.width": "preset"}}
        assert nosy.get("/v1/presets/small").status_code == 404 and nosy.get("/v1/presets").json()["presets"] == []


def test_the_llm_rewrites_styled_prompts_and_its_timeout_falls_back_to_the_template(library_stack, llm):
    small = {"width": 64, "height": 64, "num_inference_steps": 2}
    with _user(library_stack, "writer") as client:
        plain = _finished(client, client.post("/v1/jobs", json={"prompt": "a fox", "settings": small}).json())
        assert plain["enrichment"] == {"path": "none"} and not llm.requests, "no style: nothing leaves the machine"
        rewritten = _finished(client, client.post("/v1/jobs", json={"prompt": "a fox", "style": "anime",
                                                                     "settings": small}).json())
        assert rewritten["prompt"] == "a fox drawn by the LLM, anime key visual"
        assert rewritten["enrichment"] == {"path": "llm", "llm_model": "fake-7b", "attempts": 1}
        assert rewritten["original_prompt"] == "a fox"
        llm.delay = 3.0  # past the 1 s timeout, twice
        try:
            fallback = _finished(client, client.post("/v1/jobs", json={"prompt": "a fox", "style": "anime",
                                                                        "settings": small}).json())
        finally:
            llm.delay = 0.0
        assert fallback["prompt"].startswith("a fox, anime style, clean line art")
        assert fallback["enrichment"] == {"path": "template", "llm_model": "fake-7b", "attempts": 2,
                                          "error": "timed out after 1 s"}
