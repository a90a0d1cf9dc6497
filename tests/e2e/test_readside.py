"""The read side of a running stack: the gallery, deletion, and `darkroom ops` talking to the
ingress that holds the DuckDB file."""

from __future__ import annotations

import json
import os
import subprocess

from tests.e2e.conftest import Stack, darkroom_command
from tests.e2e.test_stack import submit, wait_done
from tests.support import wait_for_sync


def ops(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env |= {"DARKROOM_DATA_DIR": str(stack.data_dir), "DARKROOM_PORT": stack.url.rsplit(":", 1)[1]}
    return subprocess.run([*darkroom_command(), "ops", *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_finished_image_is_in_the_gallery_until_deleted(stack: Stack):
    with stack.client() as client:
        job_id = submit(client, width=64, height=64, num_inference_steps=2, seed=11, num_images=2)
        assert wait_done(client, job_id)["status"] == "completed"
        ids = [f"{job_id}_1", f"{job_id}_2"]

        def in_gallery() -> list[str]:
            found = client.get("/v1/gallery", params={"search": "RED FOX", "limit": 50}).json()["images"]
            return [image["id"] for image in found if image["job_id"] == job_id]

        wait_for_sync(lambda: sorted(in_gallery()) == ids, what="both images in the gallery")
        # The projection trails the job document by a few milliseconds.
        wait_for_sync(lambda: job_id in [job["id"] for job in client.get(
            "/v1/jobs", params={"status": "completed", "limit": 100}).json()["jobs"]], what="the job listed as completed")
        record = json.loads((stack.data_dir / "jobs" / f"{job_id}.json").read_text())["images"][0]
        png = stack.data_dir / "images" / record["file_path"]
        assert png.exists()
        answer = client.delete(f"/v1/images/{ids[0]}")
        assert answer.status_code == 200, answer.text
        assert not png.exists() and not png.with_suffix(".json").exists()
        wait_for_sync(lambda: in_gallery() == [ids[1]], what="the deleted image to leave the gallery")
        assert client.get(f"/v1/images/{ids[0]}").status_code == 404


def test_ops_commands_ask_the_running_ingress(stack: Stack, tmp_path):
    with stack.client() as client:
        queue = client.get("/v1/queue", params={"detailed": "true"}).json()
    stats = ops(stack, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["queue"]["total"] >= queue["total"] > 0
    found = ops(stack, "query", "SELECT count(*) AS n FROM jobs", "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["n"] >= queue["total"]
    refused = ops(stack, "query", "DROP TABLE jobs")
    assert refused.returncode == 1 and "only SELECT" in refused.stderr
    exported = ops(stack, "export", "--parquet", str(tmp_path / "pq"))
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == ["images.parquet", "jobs.parquet"]
