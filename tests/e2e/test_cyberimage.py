"""The CyberImage dialect (/api) against the running stack, driven as CyberImage's own clients
drive it: a `requests` client written from its API document (POST generate, poll status every 5 s,
download), its test script (1024x1024, 35 steps, guidance 8, 300 s; here with its size and steps
as parameters: DARKROOM_TEST_CYBERIMAGE_FULL=1 runs it as written), and its MCP JSON-RPC calls.
Every request of the seed document is replayed (sizes and steps made small: the tiny model runs
on a CPU here), every documented field and status code checked. No credentials: the seed has none,
so these run as the anonymous tenant from loopback."""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from PIL import Image

from tests.e2e.conftest import Stack
from tests.e2e.seed_stack_bots import start_stack

pytestmark = pytest.mark.slow
RATE = 14  # anonymous generation requests per hour in this stack; the last test spends the rest
SMALL = {"height": 64, "width": 64, "num_inference_steps": 2}
PROGRESS_FLAGS = {"preparing", "loading_model", "generating", "saving", "completed", "failed", "step", "total_steps"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_lora: Path) -> Iterator[Stack]:
    yield from start_stack(tmp_path_factory.mktemp("cyberimage"), tiny_lora, f"{RATE}/hour")


class CyberImageClient:
    """A client written from CyberImage's API document ("Building a Client")."""

    def __init__(self, api_base: str, poll: float = 5.0, timeout: float = 300.0):
        self.api_base, self.poll, self.timeout = api_base, poll, timeout
        self.seen: list[str] = []

    def models(self) -> dict:
        return requests.get(f"{self.api_base}/models", timeout=10).json()

    def submit(self, body: dict) -> str:
        response = requests.post(f"{self.api_base}/generate", json=body, timeout=10)
        response.raise_for_status()
        return response.json()["job_id"]

    def wait(self, job_id: str) -> dict:
        start = time.time()
        while time.time() - start < self.timeout:
            response = requests.get(f"{self.api_base}/status/{job_id}", timeout=10)
            response.raise_for_status()
            status = response.json()
            self.seen.append(status["status"])
            if status["status"] in ("completed", "failed"):
                return status
            assert status["status"] in ("pending", "processing"), status
            time.sleep(self.poll)
        raise AssertionError(f"timeout after {self.timeout} s")

    def download(self, status: dict, folder: Path) -> list[Path]:
        saved = []
        for i, image_info in enumerate(status["images"]):
            image = requests.get(f"{self.api_base}/get_image/{image_info['id']}", timeout=10)
            image.raise_for_status()
            path = folder / f"generated_image_{i + 1}.png"
            path.write_bytes(image.content)
            saved.append(path)
        return saved


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def _check_completed(status: dict, stack: Stack, count: int, size: tuple[int, int]) -> None:
    assert status["status"] == "completed", status
    assert set(status) >= {"id", "status", "model_id", "prompt", "negative_prompt", "settings", "created_at",
                           "started_at", "completed_at", "message", "progress", "images"}
    assert set(status["progress"]) >= PROGRESS_FLAGS and status["progress"]["completed"] is True
    assert status["completed_at"] and status["started_at"]
    assert len(status["images"]) == count
    for number, image in enumerate(status["images"], 1):
        assert set(image) >= {"id", "file_path", "created_at", "metadata", "url"}
        assert image["url"] == f"{stack.url}/api/get_image/{image['id']}"  # absolute
        meta = image["metadata"]
        assert set(meta) >= {"model_id", "prompt", "negative_prompt", "settings", "image_number", "total_images"}
        assert (meta["image_number"], meta["total_images"]) == (number, count)
        assert set(meta["settings"]) >= {"num_inference_steps", "guidance_scale", "height", "width"}
        assert _png(requests.get(image["url"], timeout=10).content).size == size


def test_models_lists_the_catalog_and_cyberimage_names(stack: Stack):
    models = CyberImageClient(f"{stack.url}/api").models()
    assert models["default"] == "tiny-sd"
    assert models["models"]["tiny-sd"]["id"] == "tiny-sd" and models["models"]["tiny-sd"]["description"]
    for alias in ("flux-1", "flux-2", "sd-3.5", "flux-abliterated"):
        assert models["models"][alias]["id"] == "tiny-sd"


def test_the_documented_client_workflow_follows_a_job_to_its_images(stack: Stack, tmp_path: Path):
    """"Example Client Workflow", as written, with its size and steps made small."""
    client = CyberImageClient(f"{stack.url}/api", poll=0.5)
    assert client.models()["models"]
    submitted = requests.post(f"{client.api_base}/generate", json={
        "model_id": "flux-1", "prompt": "A cyberpunk city at night with neon signs and flying cars",
        "settings": {"num_images": 2, "guidance_scale": 8.0, **SMALL}}, timeout=10)
    assert submitted.status_code == 200
    answer = submitted.json()
    assert answer == {"job_id": answer["job_id"], "status": "pending", "num_images": 2,
                      "message": "Image generation job submitted successfully for 2 image(s)"}
    status = client.wait(answer["job_id"])
    assert set(client.seen) <= {"pending", "processing", "completed"}
    _check_completed(status, stack, 2, (64, 64))
    assert status["model_id"] == "tiny-sd"  # flux-1 is the default model here
    saved = client.download(status, tmp_path)
    assert [_png(p.read_bytes()).size for p in saved] == [(64, 64), (64, 64)]

    image_id = status["images"][0]["id"]
    meta = requests.get(f"{client.api_base}/image/{image_id}/metadata", timeout=10).json()
    assert set(meta) >= {"model_id", "prompt", "negative_prompt", "settings", "generation_time", "image_number",
                         "total_images"}
    assert meta["prompt"] == "A cyberpunk city at night with neon signs and flying cars"
    assert meta["settings"]["guidance_scale"] == 8.0 and meta["generation_time"] > 0


def test_the_documented_generate_bodies_are_accepted_with_their_extra_fields(stack: Stack):
    """The request-body example (max_sequence_length) and the curl example (sd-3.5, negative prompt)."""
    api = f"{stack.url}/api"
    first = requests.post(f"{api}/generate", json={
        "model_id": "flux-1", "prompt": "Your detailed image description",
        "negative_prompt": "Optional text describing what you don't want in the image",
        "settings": {"num_images": 1, "guidance_scale": 7.5, "max_sequence_length": 512, **SMALL}}, timeout=10)
    second = requests.post(f"{api}/generate", json={
        "model_id": "sd-3.5", "prompt": "A cyberpunk city at night with neon signs and flying cars, highly detailed",
        "negative_prompt": "blurry, low quality, distorted, bad anatomy, text, watermark",
        "settings": {"num_images": 2, "guidance_scale": 8.0, "callback_steps": 5, **SMALL}}, timeout=10)
    assert first.status_code == second.status_code == 200
    client = CyberImageClient(api, poll=0.5)
    done = client.wait(second.json()["job_id"])
    _check_completed(done, stack, 2, (64, 64))
    assert done["negative_prompt"] == "blurry, low quality, distorted, bad anatomy, text, watermark"
    _check_completed(client.wait(first.json()["job_id"]), stack, 1, (64, 64))


def test_the_test_script_runs_as_written(stack: Stack):
    """CyberImage's test_generate.py: 1024x1024, 35 steps, guidance 8, polls every 5 s for 300 s.
    Here 64x64 and 2 steps unless DARKROOM_TEST_CYBERIMAGE_FULL=1 (about a minute on a CPU)."""
    full = os.environ.get("DARKROOM_TEST_CYBERIMAGE_FULL") == "1"
    side, steps = (1024, 35) if full else (64, 2)
    client = CyberImageClient(f"{stack.url}/api", poll=5.0, timeout=300.0)
    job_id = client.submit({"model_id": "flux-2", "prompt": "A cyberpunk city at night with neon signs and flying "
                            "cars, highly detailed", "settings": {"num_inference_steps": steps, "guidance_scale": 8.0,
                                                                  "height": side, "width": side,
                                                                  "max_sequence_length": 512}})
    status = client.wait(job_id)
    _check_completed(status, stack, 1, (side, side))
    assert status["settings"]["num_inference_steps"] == steps


def test_sizes_and_steps_beyond_the_model_are_clamped_and_a_cancelled_job_reads_failed(stack: Stack):
    api = f"{stack.url}/api"
    answer = requests.post(f"{api}/generate", json={"model_id": "flux-1", "prompt": "too big", "settings": {
        "width": 4096, "height": 2048, "num_inference_steps": 500, "num_images": 20}}, timeout=10).json()
    assert answer["num_images"] == 8 and "4096x2048 became 1024x512" in answer["message"]
    with stack.client() as admin:  # an admin stops it (the anonymous tenant cannot reach /v1)
        assert admin.delete(f"/v1/jobs/{answer['job_id']}").status_code == 202
    status = CyberImageClient(api, poll=0.2).wait(answer["job_id"])
    assert status["settings"] | {"seed": None} == {"width": 1024, "height": 512, "num_inference_steps": 50,
                                                   "guidance_scale": status["settings"]["guidance_scale"],
                                                   "seed": None}
    assert status["status"] == "failed" and status["progress"]["failed"] is True
    assert "cancel" in status["error"] and status["message"]


def test_queue_statistics_basic_and_detailed(stack: Stack):
    api = f"{stack.url}/api"
    basic = requests.get(f"{api}/queue", timeout=10).json()
    assert set(basic) == {"pending", "processing", "completed", "failed", "total", "queue_size"}
    detailed = requests.get(f"{api}/queue", params={"detailed": "true"}, timeout=10).json()
    assert set(detailed) >= set(basic) | {"recent_24h", "avg_processing_time_seconds", "models", "failure_rate"}
    assert set(detailed["recent_24h"]) == {"pending", "processing", "completed", "failed", "total"}
    assert all(set(counts) == set(detailed["recent_24h"]) for counts in detailed["models"].values())
    # A cancelled job counts as failed in CyberImage's statuses: cancel one while it is queued.
    before = detailed["failed"]
    job_id = requests.post(f"{api}/generate", json={"prompt": "cancelled before it runs", "settings": {
        "num_images": 1, "width": 64, "height": 64, "num_inference_steps": 4}}, timeout=10).json()["job_id"]
    assert httpx.delete(f"{stack.url}/v1/jobs/{job_id}", headers=stack.auth, timeout=10).status_code in (202, 409)
    if requests.get(f"{api}/status/{job_id}", timeout=10).json()["status"] != "completed":  # the cancel won
        deadline = time.monotonic() + 30
        while requests.get(f"{api}/queue", params={"detailed": "true"}, timeout=10).json()["failed"] <= before:
            assert time.monotonic() < deadline, "the cancelled job never counted as failed"
            time.sleep(0.2)


def test_gallery_pages_caps_the_limit_and_searches(stack: Stack):
    api = f"{stack.url}/api"
    page = requests.get(f"{api}/gallery", params={"page": 1, "limit": 20}, timeout=10).json()
    assert set(page) >= {"images", "page", "limit", "has_more", "total"}
    assert page["total"] >= 6 and page["limit"] == 20
    assert set(page["images"][0]) >= {"id", "model_id", "prompt", "created_at", "settings"}
    assert requests.get(f"{api}/gallery", params={"limit": 500}, timeout=10).json()["limit"] == 50
    one = requests.get(f"{api}/gallery", params={"page": 2, "limit": 1}, timeout=10).json()
    assert one["page"] == 2 and len(one["images"]) == 1 and one["has_more"] is True
    found = requests.get(f"{api}/gallery", params={"search": "watermark", "model": "tiny-sd"}, timeout=10).json()
    assert found["images"] == [] or all(i["model_id"] == "tiny-sd" for i in found["images"])
    found = requests.get(f"{api}/gallery", params={"search": "Your detailed image"}, timeout=10).json()
    assert [i["prompt"] for i in found["images"]] == ["Your detailed image description"]


def test_enrich_and_its_error_shape(stack: Stack):
    api = f"{stack.url}/api"
    answer = requests.post(f"{api}/enrich", json={"prompt": "a castle on a hill", "style": "fantasy"}, timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body["original_prompt"] == "a castle on a hill" and body["style"] == "fantasy"
    assert body["enriched_prompt"].startswith("a castle on a hill")
    assert requests.post(f"{api}/enrich", json={"prompt": "x"}, timeout=10).json()["style"] == "cyberpunk"
    for bad in ({}, {"prompt": "x", "style": "baroque"}):
        refused = requests.post(f"{api}/enrich", json=bad, timeout=10)
        assert refused.status_code == 400 and set(refused.json()) == {"error"}


def test_errors_are_cyberimage_shaped(stack: Stack):
    api = f"{stack.url}/api"
    for method, path, body, code in (("get", "/status/0c907066-985e-467b-8d11-07419060ef91", None, 404),
                                     ("get", "/get_image/img_123456", None, 404),
                                     ("get", "/image/img_123456/metadata", None, 404),
                                     ("delete", "/image/img_123456", None, 404),
                                     ("post", "/generate", {"model_id": "flux-1"}, 400),
                                     ("post", "/generate", {"prompt": "x", "settings": {"guidance_scale": 99}}, 400),
                                     ("post", "/generate", {"prompt": "x" * 501}, 400),
                                     ("post", "/reset_queue", None, 403)):
        answer = requests.request(method, f"{api}{path}", json=body, timeout=10)
        assert answer.status_code == code, (path, answer.text)
        assert answer.json()["status"] == "error" and answer.json()["message"], answer.text


def test_reset_queue_with_an_admin_key(stack: Stack):
    answer = requests.post(f"{stack.url}/api/reset_queue", headers=stack.auth, timeout=30)
    assert answer.status_code == 200
    body = answer.json()
    assert body == {"status": "success", "reset_count": body["reset_count"],
                    "message": f"Reset {body['reset_count']} stalled jobs to pending status"}


def test_delete_image(stack: Stack):
    api = f"{stack.url}/api"
    image = requests.get(f"{api}/gallery", params={"limit": 1}, timeout=10).json()["images"][0]
    answer = requests.delete(f"{api}/image/{image['id']}", timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"status": "success", "message": "Image deleted successfully"}
    assert requests.get(f"{api}/get_image/{image['id']}", timeout=10).status_code == 404


def test_a_darkroom_key_is_accepted_and_owns_its_job(stack: Stack):
    api = f"{stack.url}/api"
    answer = requests.post(f"{api}/generate", headers=stack.auth, json={"model_id": "tiny-sd", "prompt": "keyed",
                                                                        "settings": SMALL}, timeout=10)
    assert answer.status_code == 200
    job_id = answer.json()["job_id"]
    assert requests.get(f"{api}/status/{job_id}", headers=stack.auth, timeout=10).status_code == 200
    assert requests.get(f"{api}/status/{job_id}", timeout=10).status_code == 404  # not the anonymous tenant's
    with httpx.Client(base_url=stack.url, timeout=10) as anonymous:
        assert anonymous.get(f"/api/status/{job_id}", headers={"Authorization": "Bearer drk_nope_nope"}).status_code == 401


# -- MCP (JSON-RPC 2.0) -------------------------------------------------------------------------------------

def mcp(stack: Stack, method: str, params: dict | None = None, request_id: Any = None) -> requests.Response:
    payload = {"jsonrpc": "2.0", "method": method, "params": params or {}, "id": request_id or str(uuid.uuid4())}
    return requests.post(f"{stack.url}/api/mcp", json=payload, timeout=10)


def test_mcp_models_generate_status_and_download(stack: Stack, tmp_path: Path):
    """As examples/mcp_client_example.py does: models, generate with the default model, poll, download."""
    listed = mcp(stack, "context.image_generation.models", request_id="m1").json()
    assert listed["jsonrpc"] == "2.0" and listed["id"] == "m1"
    assert listed["result"]["default"] == "tiny-sd" and "flux-1" in listed["result"]["models"]
    generated = mcp(stack, "context.image_generation.generate", {
        "prompt": "A futuristic cyberpunk city at night with neon lights and flying cars",
        "negative_prompt": "blurry, low quality, distorted", "model": listed["result"]["default"],
        "settings": {"num_images": 1, "guidance_scale": 7.5, **SMALL}}, request_id=7).json()
    assert generated["id"] == 7 and generated["result"]["status"] == "pending"
    assert generated["result"]["num_images"] == 1
    job_id = generated["result"]["job_id"]
    deadline = time.monotonic() + 120
    while True:
        status = mcp(stack, "context.image_generation.status", {"job_id": job_id}).json()["result"]
        assert status["status"] in ("pending", "processing", "completed"), status
        if status["status"] == "completed":
            break
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert set(status) >= {"job_id", "status", "model", "prompt", "created_at", "started_at", "completed_at",
                           "progress", "images"}
    [image] = status["images"]
    assert set(image) >= {"id", "url", "metadata"} and image["url"].startswith(f"{stack.url}/api/get_image/")
    saved = tmp_path / "generated_image_1.png"
    saved.write_bytes(requests.get(image["url"], timeout=10).content)
    assert _png(saved.read_bytes()).size == (64, 64)


def test_mcp_errors(stack: Stack):
    not_rpc = requests.post(f"{stack.url}/api/mcp", json={"method": "context.image_generation.models", "id": 1},
                            timeout=10)
    assert not_rpc.status_code == 400 and not_rpc.json()["error"]["code"] == -32600
    assert requests.post(f"{stack.url}/api/mcp", data=b"[1]", headers={"Content-Type": "application/json"},
                         timeout=10).json()["error"]["code"] == -32600
    unknown = mcp(stack, "context.image_generation.edit", request_id="u")
    assert unknown.status_code == 404
    assert unknown.json() == {"jsonrpc": "2.0", "id": "u", "error": {
        "code": -32601, "message": "Method not found: context.image_generation.edit"}}
    for method, params, code in (("context.image_generation.generate", {}, 400),
                                 ("context.image_generation.status", {"job_id": "nope"}, 404),
                                 ("context.image_generation.status", {}, 400)):
        answer = mcp(stack, method, params, request_id=3)
        assert answer.status_code == code and answer.json()["error"]["code"] == -32000 and answer.json()["id"] == 3


def test_anonymous_requests_are_rate_limited_per_ip(stack: Stack):
    """DARKROOM_ANONYMOUS_RATE (here RATE an hour) in CyberImage's shape: 429 with a wait."""
    for _ in range(RATE + 1):
        answer = requests.post(f"{stack.url}/api/generate", json={"prompt": "rate", "settings": {
            **SMALL, "num_inference_steps": 1}}, timeout=10)
        if answer.status_code == 429:
            break
        assert answer.status_code == 200, answer.text
    assert answer.status_code == 429
    assert answer.json()["status"] == "error" and int(answer.headers["Retry-After"]) > 0
    # A key is not the anonymous tenant: still accepted.
    assert requests.post(f"{stack.url}/api/generate", headers=stack.auth, json={"prompt": "keyed", "settings": {
        **SMALL, "num_inference_steps": 1}}, timeout=10).status_code == 200
