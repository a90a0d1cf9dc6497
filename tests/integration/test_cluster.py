"""The whole stack on a 3-node RabbitMQ cluster: a node killed mid-run loses and duplicates nothing.

A cluster of three nodes runs on this machine (ops/cluster.py: its own names, ports and folders,
one cookie). `darkroom run` starts every stage (ingress, enricher, generator with the tiny model,
saver, recorder, reaper) with DARKROOM_AMQP_URL naming all three nodes. A batch of jobs is
submitted; while they run, the node the generator is connected to is killed with SIGKILL. Every
service connected there reconnects to another node, and every job must complete with exactly its
images: on disk, in its document, and as image.saved events in the log, none twice.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from ops.broker import free_port
from ops.cluster import Cluster
from schemas.settings import Settings, SettingsError
from tests.integration.test_remote_workers import clean_env, darkroom_command, spawn
from tests.support import wait_for_sync

pytestmark = pytest.mark.timeout(300)

JOBS = 24


def events_of(data_dir: Path, kind: str) -> list[dict]:
    found = []
    for path in sorted((data_dir / "events").glob("*.jsonl")):
        found += [event for event in map(json.loads, path.read_text().splitlines()) if event["type"] == kind]
    return found


def test_a_killed_node_loses_no_job_and_duplicates_no_image(tiny_model, tmp_path):
    started = time.monotonic()
    cluster = Cluster(tmp_path / "cluster", 3).start()
    cluster_seconds = time.monotonic() - started
    data_dir = tmp_path / "var"
    (data_dir / "models").mkdir(parents=True)
    (data_dir / "models" / "tiny-sd").symlink_to(tiny_model)
    port = free_port()
    env = clean_env(
        DARKROOM_DATA_DIR=str(data_dir), DARKROOM_AMQP_URL=cluster.url, DARKROOM_PORT=str(port),
        DARKROOM_CONFIG_PATH=str(data_dir / "darkroom.toml"), DARKROOM_AUTH="off",
        DARKROOM_ANONYMOUS_RATE="none", DARKROOM_SERVICES="recorder,saver,enricher,generator,reaper,ingress",
        DARKROOM_TORCH_THREADS="1", DARKROOM_MAX_BATCH="2", DARKROOM_WARMUP="off",
    )
    stack = spawn([*darkroom_command(), "run"], env, tmp_path / "stack.log")
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        def healthy() -> bool:
            assert stack.poll() is None, (tmp_path / "stack.log").read_text()[-3000:]
            try:
                return api.get("/health", timeout=1).json().get("status") == "ok"
            except (httpx.HTTPError, ValueError):
                return False

        wait_for_sync(healthy, timeout=120, interval=0.25, what="the stack to report healthy")
        # Every stage queue is replicated on all three nodes (declared after the cluster formed).
        leaders = cluster.queue_leaders()
        generator_queue = next(name for name in leaders if name.endswith(".generator"))
        assert all(len(members) == 3 for _, members in leaders.values()), leaders

        victim = cluster.connections()["generator"]  # the node the generator is connected to
        ids, wanted = [], {}
        for number in range(JOBS):
            images = 1 + number % 2
            answer = api.post("/v1/jobs", json={"prompt": f"a lighthouse {number}", "model": "tiny-sd", "settings": {
                "width": 64, "height": 64, "num_inference_steps": 10, "seed": number, "num_images": images}})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
            wanted[ids[-1]] = images

        def statuses() -> Counter:
            return Counter(api.get(f"/v1/jobs/{job}").json()["status"] for job in ids)

        # Mid-run: some jobs done, most still queued or generating.
        wait_for_sync(lambda: statuses()["completed"] >= 2, timeout=60, interval=0.2, what="the first jobs")
        cluster.node_named(victim).kill()
        killed_at = time.monotonic()
        before = statuses()
        assert before["completed"] < JOBS // 2, f"the batch ran too fast to be cut in the middle: {before}"

        def all_completed() -> list[dict]:
            docs = []
            for job in ids:
                try:
                    docs.append(api.get(f"/v1/jobs/{job}").json())
                except httpx.HTTPError:  # the ingress may be reconnecting this instant
                    return []
            failed = [d for d in docs if d["status"] in ("failed", "cancelled")]
            assert not failed, failed
            return docs if all(d["status"] == "completed" for d in docs) else []

        docs = wait_for_sync(all_completed, timeout=150, interval=0.3, what="every job to complete after the kill")
        recovery_seconds = time.monotonic() - killed_at

        # 0 lost: every accepted job completed with its n images, each a file on disk.
        for doc in docs:
            assert len(doc["images"]) == wanted[doc["id"]], doc
            for image in doc["images"]:
                assert (data_dir / "images" / image["file_path"]).stat().st_size > 0
        on_disk = Counter(path.stem.rsplit("_", 1)[0] for path in (data_dir / "images").rglob("*.png"))
        assert on_disk == Counter(wanted), "images on disk per job"
        # 0 duplicated: n image.saved events per job, no image saved twice, one job.completed each.
        saved = events_of(data_dir, "image.saved")
        assert Counter(e["image"]["id"] for e in saved).most_common(1)[0][1] == 1, "an image.saved twice"
        assert Counter(e["job_id"] for e in saved) == Counter(wanted)
        assert Counter(e["job_id"] for e in events_of(data_dir, "job.completed")) == Counter(ids)
        # The services that were on the killed node are on the two others now.
        after = cluster.connections()
        assert after.get("generator") not in (None, victim), after
        assert victim not in after.values(), after
        print(f"\ncluster start {cluster_seconds:.1f} s; killed {victim} (generator's node; "
              f"{generator_queue} led by {leaders[generator_queue][0]}) at {dict(before)}; "
              f"all {JOBS} jobs completed {recovery_seconds:.1f} s later; test {time.monotonic() - started:.1f} s")
    finally:
        api.close()
        stack.terminate()
        try:
            stack.wait(60)
        finally:
            if stack.poll() is None:
                stack.kill()
            cluster.stop()


@pytest.mark.parametrize("raw, named", [
    ("amqp://u:p@h1:5672/,,amqp://u:p@h3:5672/", "address 2 of 3 is empty"),
    ("amqp://u:p@h1:5672/,http://u:secret@h2:5672/", "address 2 of 2 ('http://u:***@h2:5672/') must start with amqp://"),
    ("amqp://u:p@h1:5672/,", "address 2 of 2 is empty"),
    ("amqps://u:p@:5671/", "address 1 of 1 ('amqps://u:***@:5671/') names no host"),
])
def test_a_bad_broker_address_list_is_refused_naming_the_address(raw, named):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"DARKROOM_AMQP_URL": raw})
    assert "DARKROOM_AMQP_URL" in str(error.value) and named in str(error.value)
    assert "secret" not in str(error.value)
