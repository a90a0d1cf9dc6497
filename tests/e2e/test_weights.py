"""The weights.gg dialect driven by a client written from the seed's document (tests/e2e/
weights_client.py: health first, `x-api-key: None`, polling every 100 ms) against the whole stack:
every request of the seed document, its documented fields and status codes, and one job followed
to its image through /weights alone."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ops import keys
from schemas.layout import DataLayout
from tests.e2e.conftest import Stack
from tests.e2e.seed_stack import seed_stack
from tests.e2e.weights_client import WeightsApi, WeightsError
from tests.support import wait_for_sync

pytestmark = pytest.mark.slow
STATUSES = {"QUEUED", "STARTING", "PENDING", "PROCESSING", "COMPLETED", "FAILED", "NOT_FOUND"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_lora: Path) -> Iterator[Stack]:
    with seed_stack(tmp_path_factory.mktemp("weights"), tiny_model, tiny_lora,
                    DARKROOM_ANONYMOUS_RATE="500/hour") as stack:
        yield stack


@pytest.fixture(scope="module")
def anonymous(stack: Stack) -> WeightsApi:
    return WeightsApi(api_key=None, endpoint=f"{stack.url}/weights")  # sends x-api-key: None


@pytest.fixture(scope="module")
def keyed(stack: Stack) -> WeightsApi:
    return WeightsApi(api_key=stack.token, endpoint=f"{stack.url}/weights")


def _jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    image.load()
    return image


def test_health_is_ok_json_whatever_key_a_client_sends(stack: Stack) -> None:
    for key in ("None", "null", stack.token, "drk_not_a_key"):
        # GET with the JSON content type and an empty body, as the clients send it.
        answer = httpx.request("GET", f"{stack.url}/weights/health", content=b"",
                               headers={"x-api-key": key, "Content-Type": "application/json"})
        assert answer.status_code == 200 and answer.json() == {"status": "OK"}
        assert answer.headers["content-type"].startswith("application/json")


def test_one_job_followed_to_its_image_through_weights_alone(anonymous: WeightsApi, stack: Stack) -> None:
    started = anonymous.generate_image("a lighthouse at dusk on a cliff")
    assert set(started) == {"success", "imageId", "imageUrl", "statusUrl"} and started["success"] is True
    assert started["imageUrl"] == f"{stack.url}/weights/{started['imageId']}.jpg"
    assert started["statusUrl"] == f"{stack.url}/weights/status/{started['imageId']}"
    seen: list[dict] = []
    final = anonymous.generate_progressive_image("", callback=lambda status, data: seen.append(data), started=started)
    assert final["status"] == "COMPLETED" and final["error"] is None
    assert final["prompt"] == "a lighthouse at dusk on a cliff"
    assert set(final) == {"status", "prompt", "startTime", "lastModifiedDate", "error", "spaceId"}
    assert {data["status"] for data in seen} <= STATUSES and seen[-1]["status"] == "COMPLETED"
    modified = [data["lastModifiedDate"] for data in seen]
    assert modified == sorted(modified) and len(set(modified)) == len(modified)
    assert final["startTime"] <= final["lastModifiedDate"]
    image = httpx.get(started["imageUrl"])  # no key: a chat embeds the link
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert _jpeg(image.content).size == (64, 64)


def test_search_loras_and_generate_with_a_lora(anonymous: WeightsApi, stack: Stack) -> None:
    [fox] = anonymous.search_loras("fox")
    assert set(fox) == {"name", "image", "tags"} and fox["name"] == "fox" and "foxstyle" in fox["tags"]
    preview = httpx.get(fox["image"], headers=stack.auth)
    assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).size == (32, 32)
    assert anonymous.search_loras("zzzzqqqq") == []
    started = anonymous.generate_image("a castle on a hill at night", lora_name="fox")
    assert anonymous.generate_progressive_image("", started=started)["status"] == "COMPLETED"
    job = httpx.get(f"{stack.url}/v1/jobs/{started['imageId']}", headers=stack.auth).json()
    assert [lora["name"] for lora in job["loras"]] == ["fox"]
    assert job["original_prompt"] == "foxstyle, a castle on a hill at night"  # the trigger word first, as the seed


def test_spaces_carry_loras_into_their_jobs(keyed: WeightsApi, stack: Stack) -> None:
    space = keyed.allocate_space()
    assert space["success"] is True
    assert keyed.add_lora("fox", space["spaceId"]) == {"success": True}
    started = keyed.generate_image_job("a red fox in deep snow", space["spaceId"])
    assert set(started) == {"success", "imageId", "imageUrl", "statusUrl", "spaceId"}
    assert started["spaceId"] == space["spaceId"]
    final = keyed.generate_progressive_image("", started=started)
    assert final["status"] == "COMPLETED" and final["spaceId"] == space["spaceId"]
    job = httpx.get(f"{stack.url}/v1/jobs/{started['imageId']}", headers=stack.auth).json()
    assert job["applied"]["session"] == space["spaceId"] and [lora["name"] for lora in job["loras"]] == ["fox"]
    assert keyed.remove_lora(space["spaceId"]) == {"success": True}
    session = httpx.get(f"{stack.url}/v1/sessions/{space['spaceId']}", headers=stack.auth).json()
    assert session["loras"] == []


def test_quota_reads_as_text(keyed: WeightsApi, anonymous: WeightsApi) -> None:
    for client in (keyed, anonymous):
        quota = json.loads(client.get_quota())
        assert set(quota) == {"isPremium", "usage", "limits", "remaining"}
        assert {"QUEUED_IMAGE_JOBS", "DAILY_IMAGE_CREATIONS", "HOURLY_IMAGE_REQUESTS"} == set(quota["usage"])
    assert json.loads(keyed.get_quota())["limits"]["DAILY_IMAGE_CREATIONS"] == "Infinity"  # an admin key


def test_the_image_url_shows_the_preview_while_running_and_a_cancelled_job_reads_failed(keyed: WeightsApi,
                                                                                         stack: Stack) -> None:
    space = keyed.allocate_space()["spaceId"]
    # A job long enough to watch: the space (a session) sets tiny-sd, 256x256, 50 steps.
    put = httpx.put(f"{stack.url}/v1/sessions/{space}", headers=stack.auth, json={
        "model": "tiny-sd", "settings": {"num_inference_steps": 50, "width": 256, "height": 256}})
    assert put.status_code in (200, 201), put.text
    started = keyed.generate_image_job("a slow and detailed painting of a harbour", space)

    def drawing() -> dict | None:
        status = keyed.get_status(started["imageId"])
        return status if status["status"] == "PENDING" else None

    first = wait_for_sync(drawing, timeout=120, interval=0.1, what="the job to draw")
    preview = wait_for_sync(lambda: (r := httpx.get(started["imageUrl"])).status_code == 200 and r, timeout=30,
                            interval=0.1, what="a preview at imageUrl")
    assert _jpeg(preview.content).size == (256, 256)
    later = wait_for_sync(lambda: (s := keyed.get_status(started["imageId"]))["lastModifiedDate"]
                          > first["lastModifiedDate"] and s, timeout=30, interval=0.1, what="a progress update")
    assert later["status"] in {"PENDING", "PROCESSING"}
    cancelled = httpx.delete(f"{stack.url}/v1/jobs/{started['imageId']}", headers=stack.auth)
    assert cancelled.status_code == 202, cancelled.text
    with pytest.raises(WeightsError, match="failed"):
        keyed.generate_progressive_image("", started=started)  # stops: FAILED, not an endless poll
    status = keyed.get_status(started["imageId"])
    assert status["status"] == "FAILED" and status["error"]
    assert httpx.get(started["imageUrl"]).status_code == 404


def test_documented_errors_in_the_seeds_shape(stack: Stack) -> None:
    base, none = f"{stack.url}/weights", {"x-api-key": "None", "Content-Type": "application/json"}
    for params in ({}, {"prompt": "tiny"}):
        short = httpx.get(f"{base}/generateImage", params=params, headers=none)
        assert short.status_code == 400
        assert short.json() == {"error": "Validation error", "details": ["Prompt is too short"]}
    bad = httpx.get(f"{base}/generateImage", params={"prompt": "a lighthouse at dusk"}, headers={"x-api-key": "x"})
    assert bad.status_code == 401 and bad.json() == {"error": "Invalid or missing API key."}
    missing = httpx.get(f"{base}/status/00000000-0000-4000-8000-000000000000", headers=none)
    assert missing.status_code == 404 and missing.json() == {"error": "Image not found"}
    _, token = keys.create(DataLayout(str(stack.data_dir)).state_dir, "one-a-day", rate="1/hour")
    first = httpx.get(f"{base}/generateImage", params={"prompt": "a lighthouse at dusk"}, headers={"x-api-key": token})
    assert first.status_code == 200, first.text
    busy = httpx.get(f"{base}/generateImage", params={"prompt": "a lighthouse at dusk"}, headers={"x-api-key": token})
    assert busy.status_code == 429 and busy.json() == {"error": "Server is busy. Please try again later."}
    assert int(busy.headers["retry-after"]) > 0
    space = httpx.get(f"{base}/generateImageJob", params={"prompt": "a lighthouse at dusk", "spaceId": "nope"},
                      headers=none)
    assert space.status_code == 404 and space.json()["error"] == "Space not found"
    for path in ("/health", "/status/x", "/quota", "/search-loras?query=fox", "/nope.jpg"):
        answer = httpx.get(f"{base}{path}", headers=none)
        assert answer.headers["content-type"].startswith("application/json"), path
