"""The weights.gg and Chutes dialects on the real ingress with the real broker and read model (no
generator: jobs stay queued). What finishes jobs is in tests/e2e/test_weights.py and test_chutes.py."""

from __future__ import annotations

import re

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from ops import keys
from schemas.layout import DataLayout
from services.ingress.app import create_app
from tests.support import wait_for

NO_KEY = {"x-api-key": "None", "Content-Type": "application/json"}  # what weights.gg clients send without a key
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


@pytest.fixture
async def client(settings, bus):
    settings = msgspec.structs.replace(settings, auth="on", anonymous_rate="6/hour")
    async with AsyncTestClient(app=create_app(settings)) as client:
        await wait_for(lambda: client.app.state.bus.connected, what="ingress connected")
        yield client


async def test_every_route_is_in_the_schema_under_its_dialects_tag(client):
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    ours = {path: ops for path, ops in paths.items() if path.startswith(("/weights/", "/chutes/"))}
    assert {"/weights/health", "/weights/generateImage", "/weights/status/{image_id}", "/weights/{image_file}",
            "/weights/search-loras", "/weights/quota", "/weights/allocateSpace", "/weights/addLora",
            "/weights/removeLora", "/weights/generateImageJob", "/chutes/generate", "/chutes/status",
            "/chutes/status/{task_id}", "/chutes/cleanup", "/chutes/edit", "/chutes/generate-video",
            "/chutes/analyze-image"} == set(ours)
    for path, ops in ours.items():
        for op in ops.values():
            assert op["tags"] == [path.split("/")[1]], (path, op["tags"])


async def test_weights_errors_have_the_seeds_exact_bodies(client):
    health = await client.get("/weights/health", headers=NO_KEY)
    assert health.status_code == 200 and health.json() == {"status": "OK"}
    assert health.headers["content-type"].startswith("application/json")
    for prompt in (None, "too short"):
        short = await client.get("/weights/generateImage", params={"prompt": prompt} if prompt else {}, headers=NO_KEY)
        assert short.status_code == 400
        assert short.json() == {"error": "Validation error", "details": ["Prompt is too short"]}
    bad = await client.get("/weights/generateImage", params={"prompt": "a lighthouse at dusk"},
                           headers={"x-api-key": "drk_nope_nope"})
    assert bad.status_code == 401 and bad.json() == {"error": "Invalid or missing API key."}
    for unknown in ("nope", "00000000-0000-4000-8000-000000000000"):
        missing = await client.get(f"/weights/status/{unknown}", headers=NO_KEY)
        assert missing.status_code == 404 and missing.json() == {"error": "Image not found"}
        image = await client.get(f"/weights/{unknown}.jpg")
        assert image.status_code == 404 and image.json() == {"error": "Image not found"}


async def test_weights_generate_queues_a_job_and_its_status_reads_queued(client):
    answer = await client.get("/weights/generateImage", params={"prompt": "a lighthouse at dusk"}, headers=NO_KEY)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"success", "imageId", "imageUrl", "statusUrl"} and body["success"] is True
    assert body["imageUrl"].endswith(f"/weights/{body['imageId']}.jpg")
    assert body["statusUrl"].endswith(f"/weights/status/{body['imageId']}")
    status = (await client.get(f"/weights/status/{body['imageId']}", headers=NO_KEY)).json()
    assert status["status"] == "QUEUED" and status["prompt"] == "a lighthouse at dusk" and status["error"] is None
    assert isinstance(status["startTime"], int) and isinstance(status["lastModifiedDate"], int)
    not_yet = await client.get(f"/weights/{body['imageId']}.jpg")  # no preview yet: nothing to show
    assert not_yet.status_code == 404


async def test_weights_full_rate_is_a_429_server_is_busy(client):
    codes = []
    for _ in range(8):
        answer = await client.get("/weights/generateImage", params={"prompt": "a lighthouse at dusk"}, headers=NO_KEY)
        codes.append(answer.status_code)
    assert codes[:6] == [200] * 6 and codes[6] == 429
    busy = await client.get("/weights/generateImage", params={"prompt": "a lighthouse at dusk"}, headers=NO_KEY)
    assert busy.json() == {"error": "Server is busy. Please try again later."} and "retry-after" in busy.headers


async def test_weights_spaces_search_and_quota(client, settings):
    space = (await client.get("/weights/allocateSpace", headers=NO_KEY)).json()
    assert space["success"] is True and space["spaceId"]
    unknown = await client.get("/weights/addLora", params={"loraName": "nope", "spaceId": space["spaceId"]},
                               headers=NO_KEY)
    assert unknown.status_code == 400 and unknown.json()["error"] == "Validation error"
    removed = await client.get("/weights/removeLora", params={"spaceId": space["spaceId"]}, headers=NO_KEY)
    assert removed.json() == {"success": True}
    nowhere = await client.get("/weights/removeLora", params={"spaceId": "nowhere"}, headers=NO_KEY)
    assert nowhere.status_code == 404 and nowhere.json()["error"] == "Space not found"
    job = (await client.get("/weights/generateImageJob", params={"prompt": "a fox in the snow",
                                                                  "spaceId": space["spaceId"]}, headers=NO_KEY)).json()
    assert job["spaceId"] == space["spaceId"]
    status = (await client.get(f"/weights/status/{job['imageId']}", headers=NO_KEY)).json()
    assert status["spaceId"] == space["spaceId"]
    found = await client.get("/weights/search-loras", params={"query": "fox"}, headers=NO_KEY)
    assert found.status_code == 200 and found.json() == []  # an empty library
    no_query = await client.get("/weights/search-loras", headers=NO_KEY)
    assert no_query.status_code == 400
    quota = await client.get("/weights/quota", headers=NO_KEY)
    assert quota.status_code == 200
    assert set(quota.json()) == {"isPremium", "usage", "limits", "remaining"}
    assert quota.json()["usage"]["QUEUED_IMAGE_JOBS"] >= 0


async def test_weights_another_tenants_image_is_not_found_but_its_url_needs_no_key(client, settings):
    _, token = keys.create(DataLayout(settings.data_dir).state_dir, "bob")
    mine = (await client.get("/weights/generateImage", params={"prompt": "a lighthouse at dusk"},
                             headers={"x-api-key": token})).json()
    theirs = await client.get(f"/weights/status/{mine['imageId']}", headers=NO_KEY)
    assert theirs.status_code == 404
    assert (await client.get(f"/weights/status/{mine['imageId']}", headers={"x-api-key": token})).status_code == 200


async def test_chutes_generate_answers_202_and_the_task_reads_pending(client):
    queued = await client.post("/chutes/generate", json={"prompt": "A futuristic coffee machine", "model": "qwen-image",
                                                        "guidance_scale": 7.5, "width": 1024, "height": 1024,
                                                        "num_inference_steps": 20})
    assert queued.status_code == 202, queued.text
    body = queued.json()
    assert body["status"] == "pending" and body["message"] == "Task queued successfully"
    assert re.fullmatch(r"[0-9a-f-]{36}", body["id"])
    task = (await client.get(f"/chutes/status/{body['id']}")).json()
    assert set(task) == {"id", "prompt", "status", "file_path", "error", "created_at", "updated_at"}
    assert task["status"] == "pending" and task["file_path"] is None and task["error"] is None
    assert STAMP.match(task["created_at"]) and STAMP.match(task["updated_at"])


@pytest.mark.parametrize(("method", "path", "body", "status", "error"), [
    ("post", "/chutes/generate", {}, 400, "Prompt is required"),
    ("post", "/chutes/generate", None, 400, "Prompt is required"),
    ("post", "/chutes/generate", {"prompt": "x", "width": 0}, 400, "width must be at least 8, got 0"),
    ("get", "/chutes/status/:id", None, 404, "Task not found"),
    ("get", "/chutes/status/00000000-0000-4000-8000-000000000000", None, 404, "Task not found"),
    ("get", "/chutes/status?status=done", None, 400, None),
    ("post", "/chutes/edit", {"prompt": "x"}, 501, None),
    ("post", "/chutes/generate-video", {"prompt": "x"}, 501, None),
    ("post", "/chutes/analyze-image", {"prompt": "x"}, 501, None),
    ("post", "/chutes/cleanup", {"timeoutMinutes": -1}, 400, None),
])
async def test_chutes_errors_in_the_proxys_shape(client, method, path, body, status, error):
    answer = await (client.post(path, json=body) if method == "post" else client.get(path))
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"}
    if error is not None:
        assert answer.json()["error"] == error


async def test_chutes_malformed_json_is_a_400(client):
    answer = await client.post("/chutes/generate", content=b"{nope", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and set(answer.json()) == {"error"}


async def test_dialects_switched_off_have_no_routes(settings, bus):
    off = msgspec.structs.replace(settings, dialects="openai,sdapi")
    async with AsyncTestClient(app=create_app(off)) as client:
        assert (await client.get("/weights/health")).status_code == 404
        assert (await client.post("/chutes/generate", json={"prompt": "x"})).status_code == 404
        paths = (await client.get("/schema/openapi.json")).json()["paths"]
        assert not any(path.startswith(("/weights", "/chutes")) for path in paths)
