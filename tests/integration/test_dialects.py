"""The dialects on the real ingress with the real broker (no generator: jobs stay queued)."""

from __future__ import annotations

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from schemas.layout import DataLayout
from services.ingress.app import create_app
from tests.support import wait_for


@pytest.fixture
async def client(settings, bus):
    settings = msgspec.structs.replace(settings, dialect_wait=0.5, auth="on")
    async with AsyncTestClient(app=create_app(settings)) as client:
        await wait_for(lambda: client.app.state.bus.connected, what="ingress connected")
        yield client


async def test_every_dialect_route_is_in_the_schema_under_its_own_tag(client):
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    dialect = {path: ops for path, ops in paths.items() if path.startswith(("/openai/", "/sdapi/"))}
    assert {"/openai/v1/images/generations", "/openai/v1/images/edits", "/openai/v1/images/variations",
            "/openai/v1/models", "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/progress",
            "/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/options", "/sdapi/v1/sd-models", "/sdapi/v1/samplers",
            "/sdapi/v1/schedulers", "/sdapi/v1/loras", "/sdapi/v1/refresh-loras", "/sdapi/v1/upscalers",
            "/sdapi/v1/png-info", "/sdapi/v1/memory"} <= set(dialect)
    for path, ops in dialect.items():
        for op in ops.values():
            assert op["tags"] == [path.split("/")[1]], (path, op["tags"])


async def test_a_call_that_outlives_the_wait_answers_408_and_the_job_goes_on(client, settings):
    answer = await client.post("/openai/v1/images/generations", json={"prompt": "slow", "model": "tiny-sd",
                                                                      "size": "64x64"})
    assert answer.status_code == 408 and answer.headers["x-should-retry"] == "false"
    error = answer.json()["error"]
    assert error["type"] == "timeout" and error["code"] == "job_still_running"
    job_id = error["message"].split()[1]
    assert (DataLayout(settings.data_dir).job(job_id)).exists(), "the job stays queued and retrievable"
    held = await client.post("/sdapi/v1/txt2img", json={"prompt": "slow", "width": 64, "height": 64})
    assert held.status_code == 408 and held.json()["error"] == "StillRunning"


@pytest.mark.parametrize(("path", "body", "status", "needle"), [
    ("/openai/v1/images/generations", {"prompt": "x", "n": 0, "model": "tiny-sd"}, 400, "n must be"),
    ("/openai/v1/images/generations", {"prompt": "x", "size": "huge"}, 400, "size"),
    ("/openai/v1/images/generations", {"prompt": 5}, 400, "prompt"),
    ("/openai/v1/images/generations", {"prompt": "x", "response_format": "gif"}, 400, "response_format"),
    ("/openai/v1/images/generations", {"prompt": "x", "stream": True, "model": "gpt-image-1"}, 400, "stream"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 99}, 422, "batch_size"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 12000}, 422, "width"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Nope"}, 422, "sampler_name"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "scheduler": "beta"}, 422, "scheduler"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": 2}}, 422, "override_settings"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "enable_hr": True, "hr_upscaler": "Latent"}, 422, "hr_upscaler"),
    ("/sdapi/v1/txt2img", {"prompt": "", "width": 64}, 422, "prompt"),
    ("/sdapi/v1/img2img", {"prompt": "x"}, 422, "init_images"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": ["!!"]}, 422, "init_image"),
    ("/sdapi/v1/png-info", {"image": "not base64 !"}, 422, "image"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": "nope"}, 422, "nope"),
])
async def test_bad_input_answers_4xx_in_the_dialects_shape(client, path, body, status, needle):
    answer = await client.post(path, json=body)
    assert answer.status_code == status, answer.text
    payload = answer.json()
    message = payload["error"]["message"] if path.startswith("/openai") else payload["detail"]
    assert needle in message, message
    if path.startswith("/sdapi"):
        assert set(payload) == {"error", "detail", "body", "errors"}


async def test_malformed_json_and_a_bad_upload_are_4xx_in_shape(client):
    answer = await client.post("/openai/v1/images/generations", content=b"{nope",
                               headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
    upload = await client.post("/openai/v1/images/edits", files={"image": ("a.png", b"not a png", "image/png")},
                               data={"prompt": "x"})
    assert upload.status_code == 400 and upload.json()["error"]["param"] == "image"
    sd = await client.post("/sdapi/v1/txt2img", content=b"[", headers={"content-type": "application/json"})
    assert sd.status_code == 422 and sd.json()["error"] == "ValidationError"


async def test_a_binary_text_field_in_a_form_is_a_400(client):
    body = (b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n\xff\xfe\r\n--b--\r\n')
    answer = await client.post("/openai/v1/images/edits", content=body,
                               headers={"content-type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
