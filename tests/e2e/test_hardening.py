"""Regression tests for the November attack report (`shared/reviews/attack-2026-11.md`), each named
after its finding, against the stack started as `just run` starts it. The supervisor's findings
(F5-F7) are in test_supervisor.py, the HTTP server's (F3, F16) in tests/integration/test_http_limits.py."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import Stack, created_token, darkroom_command
from tests.support import wait_for_sync

TERMINAL = ("completed", "failed", "cancelled")
SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}


def make_key(stack: Stack, name: str, *flags: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env["DARKROOM_DATA_DIR"] = str(stack.data_dir)
    out = subprocess.run([*darkroom_command(), "keys", "create", "--name", name, *flags], env=env,
                         capture_output=True, text=True, check=True).stdout
    return created_token(out)


def client_for(stack: Stack, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=stack.url, timeout=30, headers=headers)


def wait_ended(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    return wait_for_sync(lambda: (doc := client.get(f"/v1/jobs/{job_id}").json())["status"] in TERMINAL and doc,
                         timeout=timeout, interval=0.1, what=f"job {job_id} to end")


def events_of(stack: Stack, job_id: str) -> list[dict]:
    found = []
    for log in sorted((stack.data_dir / "events").glob("*.jsonl")):
        for line in log.read_text().splitlines():
            if job_id in line:
                event = json.loads(line)
                if event.get("job_id") == job_id:
                    found.append(event)
    return found


def png_b64(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# -- F1, F21: limits hold under concurrency ---------------------------------------------------


def test_f1_concurrent_submits_cannot_exceed_quota(stack: Stack) -> None:
    token = make_key(stack, "tight", "--rate", "5/hour", "--daily-images", "3", "--queued-jobs", "2")
    # Slow enough (about 20 s each here) that none ends during the burst and frees its slot.
    body = {"prompt": "a slow fox", "settings": {"width": 512, "height": 512, "num_inference_steps": 50}}
    barrier = threading.Barrier(16)

    def submit(_: int) -> httpx.Response:
        with client_for(stack, token) as client:
            barrier.wait()
            return client.post("/v1/jobs", json=body)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(submit, range(16)))
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 429]
    assert len(accepted) + len(refused) == 16, [a.status_code for a in answers]
    assert len(accepted) == 2, f"{len(accepted)} jobs accepted with a queued-jobs limit of 2"
    assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
    with client_for(stack, token) as client:
        usage = client.get("/v1/quota").json()["usage"]
        assert usage["queued_jobs"] <= 2 and usage["daily_images"] <= 3 and usage["hourly_requests"] <= 5
        for answer in accepted:
            client.delete(f"/v1/jobs/{answer.json()['id']}")


def test_f1_concurrent_submits_cannot_exceed_the_daily_images(stack: Stack) -> None:
    token = make_key(stack, "daily3", "--daily-images", "3", "--queued-jobs", "0", "--rate", "none")
    barrier = threading.Barrier(12)

    def submit(_: int) -> int:
        with client_for(stack, token) as client:
            barrier.wait()
            return client.post("/v1/jobs", json={"prompt": "fox", "settings": SMALL}).status_code

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(submit, range(12)))
    assert codes.count(202) == 3 and codes.count(429) == 9, codes


# -- F2: deleting an image while its job is saving -------------------------------------------


def test_f2_an_image_deleted_while_its_job_saves_never_comes_back(stack: Stack) -> None:
    sidecars = stack.data_dir / "images"
    with stack.client() as client:
        for _ in range(3):
            job_id = client.post("/v1/jobs", json={"prompt": "eight foxes", "settings": {
                "width": 128, "height": 128, "num_inference_steps": 2, "num_images": 8}}).json()["id"]
            image_id = f"{job_id}_1"
            wait_for_sync(lambda image_id=image_id: any(sidecars.rglob(f"{image_id}.json")), timeout=120, interval=0.005,
                          what="the first image's sidecar")
            answer = client.delete(f"/v1/images/{image_id}")
            assert answer.status_code in (200, 409), answer.text
            if answer.status_code == 409:
                assert int(answer.headers["retry-after"]) >= 1
            doc = wait_ended(client, job_id, timeout=30)  # never stalls waiting for the deleted sidecar
            assert doc["status"] == "completed" and doc["attempts"] == 1, doc
            if answer.status_code == 200:
                assert client.get(f"/v1/images/{image_id}").status_code == 404
                assert image_id not in [image["id"] for image in doc["images"]]
                assert not any(sidecars.rglob(f"{image_id}.*"))
            else:
                assert client.get(f"/v1/images/{image_id}").status_code == 200
                assert client.delete(f"/v1/images/{image_id}").status_code == 200
            assert len([e for e in events_of(stack, job_id) if e["type"] == "job.started"]) == 1


# -- F8, F19: malformed bodies, strict types, HEAD ---------------------------------------------


@pytest.mark.parametrize(("body", "content_type", "message"), [
    (b'{"prompt":"fox \xff"}', "application/json", "UTF-8"),
    ('{"prompt":"caf\u00e9"}'.encode("latin-1"), "application/json; charset=latin-1", "UTF-8"),
    (b"[" * 1000 + b"]" * 1000, "application/json", "nest"),
    (b'{"prompt":"a","settings":{"num_images":1},"settings":{"num_images":8}}', "application/json", "duplicate"),
    (b'{"prompt":"fox"}', "text/plain", "application/json"),
    (b"", "application/json", "empty"),
    (b"   ", "application/json", "empty"),
    (b'{"prompt":"fox","settings":{"num_images":"2"}}', "application/json", "settings.num_images"),
    (b'{"prompt":"fox","settings":{"num_images":2.0}}', "application/json", "settings.num_images"),
    (b'{"prompt":"fox","model":""}', "application/json", "model"),
])
def test_f8_f19_malformed_bodies_get_a_4xx_naming_the_problem(stack: Stack, body: bytes, content_type: str,
                                                              message: str) -> None:
    with stack.client() as client:
        answer = client.post("/v1/jobs", content=body, headers={"Content-Type": content_type})
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["status"] == "error"
    assert message.lower() in answer.json()["message"].lower(), answer.json()["message"]


@pytest.mark.parametrize("path", ["/v1/enrich", "/v1/ops/query"])
def test_f8_invalid_utf8_on_other_routes_is_a_400(stack: Stack, path: str) -> None:
    with stack.client() as client:
        answer = client.post(path, content=b'{"prompt":"caf\xe9","sql":"select \xff"}',
                             headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "UTF-8" in answer.json()["message"], answer.text


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"])
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/gallery"])
def test_f8_out_of_range_cursors_are_a_400(stack: Stack, path: str, stamp: str) -> None:
    cursor = base64.urlsafe_b64encode(json.dumps([stamp, "x"]).encode()).decode().rstrip("=")
    with stack.client() as client:
        answer = client.get(path, params={"cursor": cursor})
    assert answer.status_code == 400 and "cursor" in answer.json()["message"], answer.text


def test_f19_head_works_where_get_does(stack: Stack) -> None:
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json={"prompt": "fox", "settings": SMALL}).json()["id"]
        for path in ("/health", f"/v1/jobs/{job_id}", "/v1/models", "/v1/gallery"):
            get, head = client.get(path), client.head(path)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path


# -- F9, F10: cancellation is the truth ----------------------------------------------------------


def test_f9_a_202_cancel_means_no_image_is_ever_kept(stack: Stack) -> None:
    with stack.client() as client:
        jobs = []
        for n in range(24):
            job_id = client.post("/v1/jobs", json={"prompt": f"race {n}", "settings": {
                "width": 64, "height": 64, "num_inference_steps": 6, "seed": n}}).json()["id"]
            time.sleep(0.03 * (n % 8))  # cancels land before, during and after each job's run
            jobs.append((job_id, client.delete(f"/v1/jobs/{job_id}")))
        for job_id, answer in jobs:
            doc = wait_ended(client, job_id)
            assert answer.status_code in (202, 409), answer.text
            if answer.status_code == 202:
                assert doc["status"] == "cancelled" and doc["images"] == [], doc
                assert client.get(f"/v1/images/{job_id}_1").status_code == 404
                assert not any((stack.data_dir / "images").rglob(f"{job_id}_*"))
            else:
                assert doc["status"] in ("completed", "failed"), doc
            kinds = [e["type"] for e in events_of(stack, job_id)]
            assert kinds.count("job.cancelled") == (1 if answer.status_code == 202 else 0), kinds
            assert sum(kinds.count(k) for k in ("job.completed", "job.failed", "job.cancelled")) == 1, kinds


def test_f9_concurrent_cancels_give_one_202_and_one_cancelled_event(stack: Stack) -> None:
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json={"prompt": "cancel me", "settings": {
            "width": 64, "height": 64, "num_inference_steps": 40}}).json()["id"]
        wait_for_sync(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "processing", timeout=120,
                      what="the job to start")

        def cancel(_: int) -> int:
            with stack.client() as own:
                return own.delete(f"/v1/jobs/{job_id}").status_code

        with ThreadPoolExecutor(10) as pool:
            codes = list(pool.map(cancel, range(10)))
        assert codes.count(202) == 1 and codes.count(409) == 9, codes
        assert wait_ended(client, job_id)["status"] == "cancelled"
        kinds = [e["type"] for e in events_of(stack, job_id)]
        assert kinds.count("job.cancelled") == 1 and kinds.count("job.cancel_requested") == 1, kinds


# -- F11, F20: validation before acceptance ------------------------------------------------------


@pytest.mark.parametrize(("extra", "field"), [
    ({"init_image": "PNG", "settings": {"strength": 0.1, "num_inference_steps": 8}}, "settings.strength"),
    ({"init_image": "PNG", "settings": {"strength": 0.0, "num_inference_steps": 8}}, "settings.strength"),
    ({"init_image": "PNG", "settings": {"num_inference_steps": 1}}, "settings.strength"),
    ({"settings": {"enable_hr": True, "hr_denoising_strength": 0.0, "num_inference_steps": 8}},
     "hr_denoising_strength"),
])
def test_f11_img2img_and_hires_need_at_least_one_denoising_step(stack: Stack, extra: dict, field: str) -> None:
    body = {"prompt": "fox", **extra}
    if body.get("init_image") == "PNG":
        body["init_image"] = png_b64()
    body["settings"] = {"width": 64, "height": 64, **body["settings"]}
    with stack.client() as client:
        answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 400, answer.text
    assert field in answer.json()["message"] and "step" in answer.json()["message"], answer.json()["message"]


def test_f20_every_images_seed_is_in_range_and_reproducible(stack: Stack) -> None:
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json={"prompt": "seeds", "settings": {
            **SMALL, "seed": 4294967295, "num_images": 3}}).json()["id"]
        doc = wait_ended(client, job_id)
        assert doc["status"] == "completed"
        seeds = [image["metadata"]["seed"] for image in doc["images"]]
        assert all(0 <= seed <= 4294967295 for seed in seeds), seeds
        last = seeds[-1]
        again = client.post("/v1/jobs", json={"prompt": "seeds", "settings": {**SMALL, "seed": last}})
        assert again.status_code == 202, again.text


# -- F13, F14: operators' SQL -----------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "SELECT content FROM read_text('/etc/hostname')",
    "SELECT size FROM read_blob('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "SELECT * FROM glob('/etc/*')",
])
def test_f13_the_sql_route_cannot_read_files_or_reach_the_network(stack: Stack, sql: str) -> None:
    with stack.client() as client:
        answer = client.post("/v1/ops/query", json={"sql": sql})
    assert answer.status_code == 400, answer.text
    assert "root:" not in answer.text


def test_f13_the_sql_routes_configuration_is_locked(stack: Stack) -> None:
    with stack.client() as client:
        settings = client.post("/v1/ops/query", json={"sql": (
            "SELECT current_setting('enable_external_access'), current_setting('autoload_known_extensions'), "
            "current_setting('autoinstall_known_extensions'), current_setting('lock_configuration')")})
        assert settings.status_code == 200, settings.text
        assert settings.json()["rows"] == [[False, False, False, True]]
        for sql in ("SELECT * FROM (SET enable_external_access = true)", "LOAD httpfs", "INSTALL httpfs"):
            assert client.post("/v1/ops/query", json={"sql": sql}).status_code == 400, sql


def test_f14_heavy_sql_never_starves_health_or_images(stack: Stack) -> None:
    heavy = {"sql": "SELECT count(*) FROM range(3000000000) t(a), range(2) u(b) WHERE a % 7 = b"}
    # Each heavy query runs until the route interrupts it (DARKROOM_OPS_QUERY_SECONDS, 8 s in these
    # tests); the client waits longer.
    with httpx.Client(base_url=stack.url, timeout=60, headers=stack.auth) as client, ThreadPoolExecutor(6) as pool:
        running = [pool.submit(client.post, "/v1/ops/query", json=heavy) for _ in range(6)]
        try:
            time.sleep(0.5)
            worst = 0.0
            for _ in range(10):
                started = time.monotonic()
                assert httpx.get(f"{stack.url}/health", timeout=10).status_code == 200
                worst = max(worst, time.monotonic() - started)
            assert worst < 2.0, f"/health took {worst:.1f} s behind operators' SQL"
        finally:
            answers = [future.result() for future in running]
    assert all(a.status_code in (400, 503) for a in answers), [a.status_code for a in answers]
    interrupted = [a.json()["message"] for a in answers if a.status_code == 400]
    assert interrupted and all("interrupted after 8 s (DARKROOM_OPS_QUERY_SECONDS)" in m for m in interrupted), interrupted
    assert all("operator queries are running" in a.json()["message"] for a in answers if a.status_code == 503)


# -- F15: uploads do not outlive their job ------------------------------------------------------


def test_f15_uploaded_inputs_are_removed_when_the_job_ends(stack: Stack) -> None:
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json={"prompt": "fox", "init_image": png_b64(), "mask_image": png_b64(
            color=(255, 255, 255)), "settings": {**SMALL, "num_inference_steps": 4}}).json()["id"]
        assert wait_ended(client, job_id)["status"] == "completed"
    wait_for_sync(lambda: not (stack.data_dir / "inputs" / job_id).exists(), timeout=15,
                  what="the job's uploaded images to be removed")
    previews = stack.data_dir / "previews"
    assert not list(previews.glob(f"{job_id}*")) if previews.exists() else True


# -- F17: a tenant learns nothing exact about others ------------------------------------------


def test_f17_queue_position_counts_only_the_callers_jobs(stack: Stack) -> None:
    bob, alice = make_key(stack, "bob-f17", "--queued-jobs", "0"), make_key(stack, "alice-f17")
    with client_for(stack, bob) as as_bob, client_for(stack, alice) as as_alice:
        heavy = [as_bob.post("/v1/jobs", json={"prompt": "heavy", "settings": {
            "width": 64, "height": 64, "num_inference_steps": 40}}).json()["id"] for _ in range(4)]
        mine = as_alice.post("/v1/jobs", json={"prompt": "mine", "settings": SMALL}).json()["id"]
        doc = as_alice.get(f"/v1/jobs/{mine}").json()
        assert doc["status"] == "pending", "bob's four 40-step jobs are ahead of it"
        assert doc["queue_position"] == 1, doc
        assert doc["eta_seconds"] is None or doc["eta_seconds"] >= 0
        for job_id in heavy:
            as_bob.delete(f"/v1/jobs/{job_id}")
    public = httpx.get(f"{stack.url}/health").json()
    assert set(public) == {"status"}, public
    with stack.client() as admin:
        detailed = admin.get("/health").json()
        assert {"broker", "data_dir", "generators"} <= set(detailed)


# -- F18: rebuild swaps in atomically ---------------------------------------------------------------


def test_f18_readers_never_see_a_partial_projection_during_rebuild(stack: Stack) -> None:
    with stack.client() as client:
        for n in range(3):
            client.post("/v1/jobs", json={"prompt": f"rebuild {n}", "settings": SMALL})
        wait_for_sync(lambda: client.get("/v1/queue").json()["pending"] + client.get("/v1/queue").json()[
            "processing"] == 0, timeout=120, what="the queue to drain")
        expected = client.get("/v1/gallery", params={"limit": 1}).json()["total"]
        assert expected > 0
        seen: list[int] = []
        stop = threading.Event()

        def read() -> None:
            with stack.client() as reader:
                while not stop.is_set():
                    seen.append(reader.get("/v1/gallery", params={"limit": 1}).json()["total"])

        readers = [threading.Thread(target=read) for _ in range(3)]
        for thread in readers:
            thread.start()
        try:
            for _ in range(3):
                assert client.post("/v1/ops/rebuild").status_code == 200
        finally:
            stop.set()
            for thread in readers:
                thread.join()
    # Jobs of earlier tests may still complete meanwhile (totals only grow); a partial or empty
    # projection would show fewer.
    assert seen and min(seen) >= expected, sorted(set(seen))


# -- F4: DuckDB memory is bounded ----------------------------------------------------------------


def test_f4_duckdb_memory_is_limited(stack: Stack) -> None:
    with stack.client() as client:
        answer = client.post("/v1/ops/query", json={"sql": "SELECT current_setting('memory_limit')"})
    assert answer.status_code == 200, answer.text
    limit = answer.json()["rows"][0][0]
    number, unit = limit.split()
    assert unit in ("MiB", "GiB", "MB", "GB") and (float(number) <= 1024 if unit.startswith("M") else float(number) <= 1)


def test_f23_a_new_key_works_on_its_very_next_request(stack: Stack) -> None:
    for n in range(3):
        token = make_key(stack, f"fresh-{n}")
        answer = httpx.get(f"{stack.url}/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text

