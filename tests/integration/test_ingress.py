"""The REST ingress against the real broker and real files."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from schemas.events import JobAccepted
from schemas.layout import DataLayout
from schemas.settings import Settings
from services.ingress.app import create_app
from tests.support import wait_for


@pytest.fixture
async def client(settings, bus):
    async with AsyncTestClient(app=create_app(settings)) as client:
        await wait_for(lambda: client.app.state.bus.connected, what="ingress connected")
        yield client


async def test_submit_is_durable_and_readable_at_once(client, settings, tap):
    answer = await client.post("/v1/jobs", json={"prompt": "a red fox", "settings": {"width": 64, "height": 64, "seed": 5}})
    assert answer.status_code == 202
    body = answer.json()
    assert body["status"] == "pending" and body["status_url"] == f"/v1/jobs/{body['id']}" and body["num_images"] == 1
    assert answer.headers["location"] == body["status_url"]
    # No 404 right after the 202: the document was on disk before the answer.
    job = (await client.get(body["status_url"])).json()
    assert job["status"] == "pending" and job["prompt"] == "a red fox" and job["progress"]["preparing"] is True
    assert job["settings"] == {"num_images": 1, "num_inference_steps": 8, "guidance_scale": 7.5, "width": 64,
                               "height": 64, "seed": 5, "sampler": "Euler", "batch_size": 1, "strength": None,
                               "hires": None}
    assert (job["mode"], job["loras"], job["notices"]) == ("txt2img", [], [])
    [accepted] = await tap.wait(JobAccepted, body["id"])
    assert accepted.spec.settings.seed == 5 and accepted.spec.model == "tiny-sd"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"prompt": "x", "settings": {"num_images": 9}}, "settings.num_images: Expected `int` <= 8"),
        ({"prompt": "x", "settings": {"num_images": 0}}, "settings.num_images: Expected `int` >= 1"),
        ({"prompt": "x", "settings": {"width": 100}}, "settings.width must be a multiple of 8, got 100"),
        ({"prompt": "x", "settings": {"width": "wide"}}, "settings.width: Expected `int | null`, got `str`"),
        ({"prompt": "x", "steps": 3}, "Object contains unknown field `steps`"),
        ({"prompt": "x", "settings": {"steps": 3}}, "settings: Object contains unknown field `steps`"),
        ({"prompt": "x", "model": "nope"}, "model: unknown model 'nope'; valid models: tiny-sd"),
        ({"negative_prompt": "x"}, "Object missing required field `prompt`"),
        ({"prompt": "x" * 501}, "prompt is 501 characters; the limit is 500"),
        ({"prompt": "x", "settings": {"guidance_scale": -1}}, "settings.guidance_scale: Expected `float` >= 0.0"),
    ],
)
async def test_bad_requests_get_400_naming_the_field(client, settings, payload, message):
    answer = await client.post("/v1/jobs", json=payload)
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"status": "error", "message": answer.json()["message"]}
    assert message in answer.json()["message"]
    assert not list(DataLayout(settings.data_dir).jobs_dir.glob("*.json")), "nothing accepted"


async def test_malformed_json_is_a_400(client):
    answer = await client.post("/v1/jobs", content=b"{nope", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["status"] == "error" and "malformed" in answer.json()["message"]


@pytest.mark.parametrize("path", [
    "/v1/jobs/0c907066-985e-467b-8d11-07419060ef91",
    "/v1/jobs/not-a-uuid",
    "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
    "/v1/images/0c907066-985e-467b-8d11-07419060ef91_1",
    "/v1/images/..%2Fjobs%2Fx",
    "/v1/images/0c907066-985e-467b-8d11-07419060ef91_1/metadata",
])
async def test_unknown_and_malformed_ids_are_404(client, path):
    answer = await client.get(path)
    assert answer.status_code == 404
    assert answer.json()["status"] == "error"
    assert "not found" in answer.json()["message"] or "no such endpoint" in answer.json()["message"]


async def test_models_in_cyberimage_shape_with_default(client):
    body = (await client.get("/v1/models")).json()
    assert body["default"] == "tiny-sd"
    tiny = body["models"]["tiny-sd"]
    assert tiny["id"] == "tiny-sd" and tiny["description"]
    assert tiny["limits"]["max_width"] == 1024 and tiny["defaults"]["width"] == 256


async def test_health_reports_broker_and_workers(client):
    answer = await client.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "degraded", "broker": "connected", "data_dir": "writable", "generators": 0,
                             "projection": {"events_applied": 0, "pending_bytes": 0, "lag_seconds": 0.0,
                                            "last_event_at": None}}


async def test_broker_down_means_503_with_retry_after_and_nothing_kept(data_dir):
    from ops.broker import free_port

    settings = Settings(data_dir=str(data_dir), amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/", auth="off")
    async with AsyncTestClient(app=create_app(settings)) as client:
        answer = await client.post("/v1/jobs", json={"prompt": "a red fox"})
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert "broker is unreachable" in answer.json()["message"]
        health = await client.get("/health")
        assert health.status_code == 503 and health.json()["broker"] == "unreachable"
    assert not list((data_dir / "jobs").glob("*.json"))


async def test_enrich_previews_a_style(client):
    answer = await client.post("/v1/enrich", json={"prompt": "a castle on a hill", "style": "fantasy"})
    assert answer.status_code == 200
    assert answer.json()["enriched_prompt"].startswith("a castle on a hill, epic fantasy")
    bad = await client.post("/v1/enrich", json={"prompt": "x", "style": "noir"})
    assert bad.status_code == 400 and "valid styles" in bad.json()["message"]


async def test_openapi_and_docs_are_served(client):
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/v1/jobs" in schema["paths"] and "/v1/images/{image_id}" in schema["paths"]
    docs = await client.get("/docs", follow_redirects=True)
    assert docs.status_code == 200 and "<html" in docs.text.lower()


def _png_b64(size=(64, 64), mode="RGB", colour=120) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def test_img2img_inputs_are_stored_and_referenced_by_the_event(client, settings, tap):
    answer = await client.post("/v1/jobs", json={
        "prompt": "a fox", "init_image": "data:image/png;base64," + _png_b64((80, 64)),
        "mask_image": _png_b64((80, 64), "L", 255), "settings": {"strength": 0.6},
    })
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    [accepted] = await tap.wait(JobAccepted, job_id)
    spec = accepted.spec
    assert (spec.mode, spec.settings.width, spec.settings.height, spec.settings.strength) == ("inpaint", 80, 64, 0.6)
    layout = DataLayout(settings.data_dir)
    assert spec.init_image == f"inputs/{job_id}/init.png" and spec.mask_image == f"inputs/{job_id}/mask.png"
    assert (layout.base / spec.init_image).read_bytes().startswith(b"\x89PNG")


async def test_an_image_darkroom_holds_can_be_the_init_image(client, settings, tap):
    from datetime import UTC, datetime

    import msgspec as ms

    from schemas.jobs import JobDocument
    from tests.unit.test_events import SPEC

    layout = DataLayout(settings.data_dir)
    source_job = "0c907066-985e-467b-8d11-07419060ef91"
    doc = JobDocument.new(source_job, SPEC, datetime(2026, 3, 20, tzinfo=UTC))
    layout.job(source_job).write_bytes(ms.json.encode(doc))
    image = layout.image(layout.image_file_path(doc.created_at, f"{source_job}_1"))
    image.parent.mkdir(parents=True)
    import base64

    image.write_bytes(base64.b64decode(_png_b64((64, 64))))
    answer = await client.post("/v1/jobs", json={"prompt": "again", "init_image_id": f"{source_job}_1"})
    assert answer.status_code == 202, answer.text
    [accepted] = await tap.wait(JobAccepted, answer.json()["id"])
    assert accepted.spec.init_image == f"images/2026/03/20/{source_job}_1.png" and accepted.spec.mode == "img2img"
    missing = await client.post("/v1/jobs", json={"prompt": "x", "init_image_id": f"{source_job}_2"})
    assert missing.status_code == 400 and "init_image_id: no image" in missing.json()["message"]


@pytest.mark.parametrize(("payload", "message"), [
    ({"prompt": "x", "init_image": "%%%"}, "init_image is not valid base64"),
    ({"prompt": "x", "init_image": _png_b64((64, 64)), "mask_image": _png_b64((32, 32), "L")},
     "mask_image is 32x32; it must be the init image's size, 64x64"),
    ({"prompt": "x", "settings": {"sampler": "Euler z"}}, "settings.sampler: unknown sampler 'Euler z'"),
    ({"prompt": "x", "loras": [{"name": "nope"}]}, "loras[0].name: unknown LoRA 'nope'; available: fox"),
])
async def test_bad_inputs_of_the_engine_are_400s_naming_the_field(client, settings, payload, message):
    loras = DataLayout(settings.data_dir).loras_dir
    loras.mkdir(parents=True, exist_ok=True)
    (loras / "fox.safetensors").write_bytes(b"not read by the ingress")
    answer = await client.post("/v1/jobs", json=payload)
    assert answer.status_code == 400 and message in answer.json()["message"], answer.text


async def test_a_known_lora_is_accepted_by_file_name_or_stem(client, settings, tap):
    loras = DataLayout(settings.data_dir).loras_dir
    loras.mkdir(parents=True, exist_ok=True)
    (loras / "fox.safetensors").write_bytes(b"x")
    answer = await client.post("/v1/jobs", json={"prompt": "x", "loras": [{"name": "fox.safetensors", "weight": 0.7}]})
    assert answer.status_code == 202, answer.text
    [accepted] = await tap.wait(JobAccepted, answer.json()["id"])
    assert [(lora.name, lora.weight) for lora in accepted.spec.loras] == [("fox", 0.7)]


async def test_cancelling_a_queued_job_ends_it_at_once(client, settings, tap):
    from schemas.events import JobCancelled, JobCancelRequested

    job_id = (await client.post("/v1/jobs", json={"prompt": "x"})).json()["id"]
    answer = await client.delete(f"/v1/jobs/{job_id}")
    assert answer.status_code == 202
    assert answer.json() == {"id": job_id, "status": "cancelled", "message": "The job was cancelled before it started"}
    await tap.wait(JobCancelRequested, job_id)
    [cancelled] = await tap.wait(JobCancelled, job_id)
    assert cancelled.reason == "cancelled while queued"
    assert (await client.delete("/v1/jobs/0c907066-985e-467b-8d11-07419060ef91")).status_code == 404


async def test_cancelling_a_finished_job_is_a_conflict(client, settings):
    import msgspec as ms

    from schemas.jobs import JobDocument

    job_id = (await client.post("/v1/jobs", json={"prompt": "x"})).json()["id"]
    layout = DataLayout(settings.data_dir)
    doc = ms.json.decode(layout.job(job_id).read_bytes(), type=JobDocument)
    doc.status = "completed"
    layout.job(job_id).write_bytes(ms.json.encode(doc))
    answer = await client.delete(f"/v1/jobs/{job_id}")
    assert answer.status_code == 409 and answer.json()["message"] == f"job '{job_id}' is already completed"


async def test_preview_is_served_while_there_is_one(client, settings):
    job_id = (await client.post("/v1/jobs", json={"prompt": "x"})).json()["id"]
    none_yet = await client.get(f"/v1/jobs/{job_id}/preview")
    assert none_yet.status_code == 404 and none_yet.json()["message"] == f"no preview for job '{job_id}': no preview yet"
    import base64

    DataLayout(settings.data_dir).preview(job_id).write_bytes(base64.b64decode(_png_b64((16, 16))))
    answer = await client.get(f"/v1/jobs/{job_id}/preview")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"


async def test_samplers_are_listed_by_their_a1111_names(client):
    samplers = (await client.get("/v1/samplers")).json()
    names = [s["name"] for s in samplers]
    assert {"Euler", "Euler a", "DPM++ 2M Karras", "DDIM", "UniPC"} <= set(names)
    karras = next(s for s in samplers if s["name"] == "DPM++ 2M Karras")
    assert karras == {"name": "DPM++ 2M Karras", "scheduler": "DPMSolverMultistepScheduler",
                      "options": {"use_karras_sigmas": True}}
