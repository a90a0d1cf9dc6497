"""The read side through the REST API: queue statistics, job lists and the gallery answered by the
ingress's DuckDB projection of a real event log; image deletion and retention with the real
recorder and saver on the real broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from ops import analytics
from ops.bench.synthetic import write_log
from schemas.events import ImageDeleted, ImageExpired, JobAccepted, JobCompleted
from schemas.jobs import JobSpec
from schemas.layout import DataLayout
from services.ingress.app import create_app
from services.readside import host
from services.recorder.main import main as recorder_main
from services.saver.main import main as saver_main
from tests.integration.test_stages import SETTINGS, generated
from tests.support import running, wait_for


async def caught_up(client: AsyncTestClient) -> None:
    readside = client.app.state.readside

    def done() -> bool:
        return readside is not None and readside.projection.pending_bytes() == 0 and readside.projection.position.events > 0

    await wait_for(done, timeout=30, what="the projection to catch up")


@pytest.fixture
async def logged(settings):
    """An ingress over a synthetic log of 300 jobs, and the log's true counts."""
    layout = DataLayout(settings.data_dir)
    truth = write_log(layout.events_dir, 300, start=datetime.now(UTC) - timedelta(days=2))
    async with AsyncTestClient(app=create_app(settings)) as client:
        await caught_up(client)
        yield client, truth, layout


async def test_queue_statistics_in_the_cyberimage_shape(logged):
    client, truth, _ = logged
    basic = (await client.get("/v1/queue")).json()
    assert basic == {**truth["counts"], "total": 300, "queue_size": truth["counts"]["pending"]}
    detailed = (await client.get("/v1/queue", params={"detailed": "true"})).json()
    assert {k: detailed[k] for k in basic} == basic
    assert set(detailed["models"]) == set(truth["models"])
    for model, counts in truth["models"].items():
        assert {k: v for k, v in detailed["models"][model].items() if v and k != "total"} == counts
    assert detailed["recent_24h"]["total"] < 300 and detailed["avg_processing_time_seconds"] > 0
    finished = truth["counts"]["completed"] + truth["counts"]["failed"]
    assert detailed["failure_rate"] == round(100 * truth["counts"]["failed"] / finished, 2)


async def test_gallery_pages_newest_first_by_number_and_by_cursor(logged):
    client, truth, _ = logged
    completed = truth["counts"]["completed"]
    by_page, page = [], 1
    while True:
        body = (await client.get("/v1/gallery", params={"page": page, "limit": 50})).json()
        assert body["page"] == page and body["limit"] == 50 and body["total"] == completed
        by_page += body["images"]
        if not body["has_more"]:
            break
        page += 1
    assert len(by_page) == len({image["id"] for image in by_page}) == completed
    stamps = [image["created_at"] for image in by_page]
    assert stamps == sorted(stamps, reverse=True)
    first = by_page[0]
    assert set(first) >= {"id", "model_id", "prompt", "created_at", "settings", "url"}
    assert first["url"] == f"/v1/images/{first['id']}" and first["settings"]["num_inference_steps"] == 20
    by_cursor, cursor = [], None
    while True:
        body = (await client.get("/v1/gallery", params={"limit": 40, **({"cursor": cursor} if cursor else {})})).json()
        by_cursor += body["images"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [image["id"] for image in by_cursor] == [image["id"] for image in by_page]


async def test_gallery_search_matches_prompt_or_model_case_insensitively(logged):
    client, _, _ = logged
    everything = (await client.get("/v1/gallery", params={"limit": 50})).json()["total"]
    all_images = []
    for page in range(1, everything // 50 + 2):
        all_images += (await client.get("/v1/gallery", params={"limit": 50, "page": page})).json()["images"]
    for term in ("CASTLE", "owl neon", "sdxl", "Fl"):
        expected = [i["id"] for i in all_images if term.lower() in f"{i['prompt']} {i['model_id']}".lower()]
        body = (await client.get("/v1/gallery", params={"search": term, "limit": 50})).json()
        assert body["total"] == len(expected), term
        assert [i["id"] for i in body["images"]] == expected[:50], term
    assert expected, "the last term matched something"
    only = (await client.get("/v1/gallery", params={"model": "sd15", "search": "fox", "limit": 50})).json()
    assert only["images"] and all(i["model_id"] == "sd15" and "fox" in i["prompt"] for i in only["images"])
    for params, field in (({"limit": 51}, "limit"), ({"page": 0}, "page"), ({"cursor": "bogus"}, "cursor")):
        answer = await client.get("/v1/gallery", params=params)
        assert answer.status_code == 400 and field in answer.json()["message"], answer.text


async def test_jobs_list_filters_by_status_and_model(logged):
    client, truth, _ = logged
    pending = (await client.get("/v1/jobs", params={"status": "pending", "limit": 100})).json()
    assert len(pending["jobs"]) == truth["counts"]["pending"] and pending["next_cursor"] is None
    assert all(job["status"] == "pending" and job["status_url"] == f"/v1/jobs/{job['id']}" for job in pending["jobs"])
    flux = (await client.get("/v1/jobs", params={"model": "flux", "limit": 10})).json()
    assert len(flux["jobs"]) == 10 and {job["model"] for job in flux["jobs"]} == {"flux"} and flux["next_cursor"]
    answer = await client.get("/v1/jobs", params={"status": "lost"})
    assert answer.status_code == 400 and "status" in answer.json()["message"]


async def test_a_job_just_logged_is_listed_while_the_follower_rests(settings, monkeypatch):
    """Read your writes: the follower paces itself under load (it rests after each catch-up), but
    a list answers only after applying what the log held when it was asked."""
    monkeypatch.setattr(host, "PACE", 1000.0)
    monkeypatch.setattr(host, "MAX_REST", 60.0)  # the follower rests a minute after each catch-up
    layout = DataLayout(settings.data_dir)
    write_log(layout.events_dir, 10, start=datetime.now(UTC) - timedelta(days=4), active=0)  # over 3 days
    log = layout.events_dir / f"{datetime.now(UTC):%Y-%m-%d}.jsonl"
    spec = JobSpec(prompt="a red fox", model="tiny-sd", settings=SETTINGS)

    def accepted(job: str) -> bytes:
        return msgspec.json.encode(JobAccepted(job_id=job, spec=spec, occurred_at=datetime.now(UTC))) + b"\n"

    async with AsyncTestClient(app=create_app(settings)) as client:
        await caught_up(client)
        projection = client.app.state.readside.projection
        applied = projection.position.events
        with log.open("ab") as out:
            out.write(accepted("first"))
        await wait_for(lambda: projection.position.events > applied, timeout=30, what="the follower to apply it")
        with log.open("ab") as out:  # the follower is resting now
            out.write(accepted("second"))
        listed = (await client.get("/v1/jobs", params={"limit": 5})).json()["jobs"]
        assert [job["id"] for job in listed[:2]] == ["second", "first"]
        assert listed[0]["status"] == "pending"
        found = (await client.post("/v1/ops/query", json={"sql": "SELECT count(*) FROM jobs WHERE id = 'second'"})).json()
        assert found["rows"] == [[1]]


async def test_ops_query_runs_select_only_and_health_shows_the_lag(logged):
    client, truth, _ = logged
    answer = await client.post("/v1/ops/query", json={"sql": "SELECT status, count(*) AS n FROM jobs GROUP BY ALL ORDER BY 1"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["columns"] == ["status", "n"]
    assert dict(answer.json()["rows"]) == {k: v for k, v in truth["counts"].items() if v}
    for sql in ("DELETE FROM jobs", "SELECT 1; DROP TABLE jobs", "SELEC 1"):
        refused = await client.post("/v1/ops/query", json={"sql": sql})
        assert refused.status_code == 400 and refused.json()["message"].startswith("sql:"), refused.text
    health = (await client.get("/health")).json()
    assert health["projection"]["pending_bytes"] == 0 and health["projection"]["lag_seconds"] == 0
    metrics = (await client.get("/metrics")).text
    assert f'darkroom_jobs{{status="completed"}} {float(truth["counts"]["completed"])}' in metrics


def test_ops_query_without_a_running_ingress_is_interrupted_after_its_time(settings):
    """`darkroom ops query` opens the projection itself when no ingress holds it; a runaway query
    stops after DARKROOM_OPS_QUERY_SECONDS with an operator's error, not a traceback."""
    write_log(DataLayout(settings.data_dir).events_dir, 20, active=0)
    quick = msgspec.structs.replace(settings, ops_query_seconds=0.5)
    assert analytics.query(quick, "SELECT count(*) AS n FROM jobs", 10)["rows"] == [[20]]
    with pytest.raises(analytics.OpsError, match=r"interrupted after 0\.5 s \(DARKROOM_OPS_QUERY_SECONDS\)"):
        analytics.query(quick, "SELECT count(*) FROM range(3000000000) t(a), range(2) u(b) WHERE a % 7 = b", 10)


async def saved_job(bus, tap, job: str) -> JobCompleted:
    """A real two-image job: accepted, then its images through the real saver."""
    spec = JobSpec(prompt="a red fox", model="tiny-sd", settings=SETTINGS)
    await bus.publish(JobAccepted(job_id=job, spec=spec, occurred_at=datetime(2026, 3, 20, 10, 30, tzinfo=UTC)))
    for number in (1, 2):
        await bus.publish(generated(number, job=job))
    [completed] = await tap.wait(JobCompleted, job)
    return completed


async def test_deleting_an_image_removes_its_files_its_row_and_its_place_in_the_job(settings, bus, tap):
    layout = DataLayout(settings.data_dir)
    job = "6e5a1f0e-2a43-4b7e-9a0b-3f1e2d4c5b6a"
    async with (running(recorder_main, settings, "recorder", bus), running(saver_main, settings, "saver", bus),
                AsyncTestClient(app=create_app(settings)) as client):
        completed = await saved_job(bus, tap, job)
        first = completed.images[0]
        png, sidecar = layout.image(first.file_path), layout.sidecar(first.file_path)
        assert png.exists() and sidecar.exists()
        await wait_for(lambda: layout.job(job).exists() and json.loads(layout.job(job).read_bytes())["status"] == "completed")
        await wait_for(lambda: client.app.state.bus.connected, what="the ingress connected to the broker")
        answer = await client.delete(f"/v1/images/{first.id}")
        assert answer.status_code == 200 and answer.json()["status"] == "success", answer.text
        assert not png.exists() and not sidecar.exists()
        await tap.wait(ImageDeleted, job)
        assert (await client.get(f"/v1/images/{first.id}")).status_code == 404
        assert (await client.delete(f"/v1/images/{first.id}")).status_code == 404

        def gallery_ids() -> list[str]:
            return [row[0] for row in client.app.state.readside.projection.con.execute(
                "SELECT id FROM images WHERE deleted_at IS NULL").fetchall()]

        await wait_for(lambda: gallery_ids() == [completed.images[1].id], what="the row to go")
        listed = (await client.get("/v1/gallery")).json()
        assert [i["id"] for i in listed["images"]] == [completed.images[1].id] and listed["total"] == 1
        await wait_for(lambda: [i["id"] for i in json.loads(layout.job(job).read_bytes())["images"]]
                       == [completed.images[1].id], what="the job document to drop the image")
        for bad in ("../../etc/passwd", f"{job}_9", "nope"):
            assert (await client.delete(f"/v1/images/{bad}")).status_code == 404


async def test_the_janitor_expires_images_past_their_time_to_live(settings, bus, tap):
    settings = msgspec.structs.replace(settings, image_ttl=1.0)
    layout = DataLayout(settings.data_dir)
    job = "7f5a1f0e-2a43-4b7e-9a0b-3f1e2d4c5b6a"
    async with (running(recorder_main, settings, "recorder", bus), running(saver_main, settings, "saver", bus),
                AsyncTestClient(app=create_app(settings)) as client):
        completed = await saved_job(bus, tap, job)
        files = [path for image in completed.images
                 for path in (layout.image(image.file_path), layout.sidecar(image.file_path))]
        expired = await tap.wait(ImageExpired, job, count=2, timeout=30)
        assert {event.image_id for event in expired} == {image.id for image in completed.images}
        assert not any(path.exists() for path in files)
        projection = client.app.state.readside.projection
        await wait_for(lambda: projection.con.execute(
            "SELECT count(*) FROM images WHERE deleted_reason = 'expired'").fetchone()[0] == 2, what="rows expired")
        assert (await client.get("/v1/gallery")).json()["total"] == 0
