"""A newcomer's first job, end to end over HTTP: submit, watch it move, download the PNG."""

from __future__ import annotations

import io
import json
import signal
import time

from PIL import Image

from pipelines.png import read_png_text
from tests.e2e.conftest import Stack, broker_port, port_open
from tests.support import wait_for_sync

CHAIN = ["job.accepted", "job.enriched", "job.started", "job.progressed", "image.generated", "image.saved", "job.completed"]


def submit(client, **settings) -> str:
    answer = client.post("/v1/jobs", json={"prompt": "a red fox", "negative_prompt": "blurry", "settings": settings})
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def wait_done(client, job_id: str, timeout: float = 60) -> dict:
    return wait_for_sync(
        lambda: (doc := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("completed", "failed", "cancelled") and doc,
        timeout=timeout, what=f"job {job_id} to finish",
    )


def job_events(stack: Stack, job_id: str) -> list[str]:
    lines = [json.loads(line) for path in sorted((stack.data_dir / "events").glob("*.jsonl"))
             for line in path.read_text().splitlines()]
    return [line["type"] for line in lines if line["job_id"] == job_id]


def test_a_job_goes_pending_processing_completed_and_yields_the_requested_png(stack: Stack):
    queue_file = stack.data_dir / "queue.txt"
    with stack.client() as client:
        # A longer job ahead of ours, so that ours is visibly pending first.
        blocker = submit(client, width=128, height=128, num_inference_steps=40, seed=1)
        job_id = submit(client, width=64, height=96, num_inference_steps=30, seed=42, num_images=2)
        statuses, seen_in_queue = [], False
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            doc = client.get(f"/v1/jobs/{job_id}").json()
            if not statuses or statuses[-1] != doc["status"]:
                statuses.append(doc["status"])
            if doc["status"] in ("pending", "processing") and queue_file.exists():
                seen_in_queue |= job_id in queue_file.read_text().split()
            if doc["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.01)
        assert statuses == ["pending", "processing", "completed"], statuses
        assert seen_in_queue, "the job id was in queue.txt while it was active"
        wait_for_sync(lambda: job_id not in queue_file.read_text().split(), what="job id gone from queue.txt")
        assert wait_done(client, blocker)["status"] == "completed"

        assert doc["progress"]["completed"] and doc["progress"]["step"] == 30 and doc["attempts"] == 1
        assert doc["message"] == "Generated 2 image(s)"
        assert [image["metadata"]["seed"] for image in doc["images"]] == [42, 43]
        for image in doc["images"]:
            answer = client.get(f"/v1/images/{image['id']}")
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
            with Image.open(io.BytesIO(answer.content)) as png:
                png.load()
                assert png.size == (64, 96)
            text = read_png_text(answer.content)
            seed = image["metadata"]["seed"]
            assert text["parameters"] == (
                "a red fox\nNegative prompt: blurry\n"
                f"Steps: 30, Sampler: Euler, CFG scale: 7.5, Seed: {seed}, Size: 64x96, Model: tiny-sd"
            )
            embedded = json.loads(text["darkroom"])
            assert (embedded["prompt"], embedded["settings"]["width"], embedded["seed"]) == ("a red fox", 64, seed)
            metadata = client.get(f"/v1/images/{image['id']}/metadata").json()
            assert metadata["seed"] == seed and metadata["job_id"] == job_id and metadata["total_images"] == 2

    events = [kind for kind in job_events(stack, job_id) if kind in CHAIN]  # not heartbeats (liveness)
    assert [kind for kind in CHAIN if kind in events] == CHAIN, events
    assert sorted(events, key=CHAIN.index) == events, "events logged in causal order"
    assert events.count("image.saved") == 2 and events.count("job.completed") == 1


def test_same_seed_and_settings_give_the_same_png_bytes(stack: Stack):
    with stack.client() as client:
        jobs = [submit(client, width=64, height=64, num_inference_steps=4, seed=1234) for _ in range(2)]
        images = [wait_done(client, job)["images"][0]["id"] for job in jobs]
        first, second = (client.get(f"/v1/images/{image}").content for image in images)
    assert first == second and first.startswith(b"\x89PNG")


def test_bad_input_is_refused_with_the_field_named(stack: Stack):
    with stack.client() as client:
        answer = client.post("/v1/jobs", json={"prompt": "x", "settings": {"num_images": 9}})
        assert answer.status_code == 400
        assert answer.json() == {"status": "error", "message": "settings.num_images: Expected `int` <= 8"}
        assert client.get("/v1/jobs/0c907066-985e-467b-8d11-07419060ef91").status_code == 404


def test_a_running_job_shows_previews_and_cancels_within_a_step(stack: Stack):
    queue_file = stack.data_dir / "queue.txt"
    with stack.client() as client:
        job_id = submit(client, width=256, height=256, num_inference_steps=50, seed=3)
        preview = wait_for_sync(
            lambda: (answer := client.get(f"/v1/jobs/{job_id}/preview")).status_code == 200 and answer,
            timeout=60, what="a preview while the job runs",
        )
        assert preview.headers["content-type"] == "image/png" and preview.content.startswith(b"\x89PNG")
        step_before = client.get(f"/v1/jobs/{job_id}").json()["progress"]["step"]
        answer = client.delete(f"/v1/jobs/{job_id}")
        assert answer.status_code == 202 and answer.json()["status"] == "cancelling"
        doc = wait_done(client, job_id)
        assert doc["status"] == "cancelled" and doc["images"] == []
        assert doc["progress"]["step"] < 50
        assert client.get(f"/v1/jobs/{job_id}/preview").status_code == 404
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 409
    assert not list((stack.data_dir / "images").rglob(f"{job_id}_*")), "no partial images saved"
    wait_for_sync(lambda: job_id not in queue_file.read_text().split(), what="cancelled job gone from queue.txt")
    assert step_before >= 1


def test_img2img_from_an_image_darkroom_made(stack: Stack):
    with stack.client() as client:
        source = wait_done(client, submit(client, width=64, height=64, num_inference_steps=4, seed=9))
        answer = client.post("/v1/jobs", json={
            "prompt": "the same fox, at night", "init_image_id": source["images"][0]["id"],
            "settings": {"strength": 0.5, "num_inference_steps": 8, "sampler": "DPM++ 2M Karras"},
        })
        assert answer.status_code == 202, answer.text
        doc = wait_done(client, answer.json()["id"])
        assert doc["status"] == "completed" and doc["mode"] == "img2img"
        png = client.get(f"/v1/images/{doc['images'][0]['id']}").content
        text = read_png_text(png)["parameters"]
        assert "Sampler: DPM++ 2M Karras" in text and "Denoising strength: 0.5" in text


def test_sigterm_stops_every_service_and_the_broker(stack: Stack):
    """Runs last in this module (pytest keeps file order): the stack is stopped for good."""
    port = broker_port(stack)
    assert port is not None and port_open(port)
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(60) == 0
    assert not port_open(port), "the private broker was stopped"
    assert not port_open(int(stack.url.rsplit(":", 1)[1])), "the API stopped listening"
    log = stack.log.read_text()
    assert '"stopped"' in log
