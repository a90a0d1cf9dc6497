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
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from ops.broker import free_port
from ops.cluster import Cluster
from schemas.events import JobStarted, new_id
from schemas.topology import Topology
from services.bus import Bus
from tests.integration.test_remote_workers import clean_env, darkroom_command, spawn
from tests.support import drop_namespace, eventually, wait_for_sync

pytestmark = pytest.mark.timeout(300)

JOBS = 24


def events_of(data_dir: Path, kind: str) -> list[dict]:
    found = []
    for path in sorted((data_dir / "events").glob("*.jsonl")):
        found += [event for event in map(json.loads, path.read_text().splitlines()) if event["type"] == kind]
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes for this module; a test that kills one starts it again when it is done."""
    started = time.monotonic()
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), 3).start()
    print(f"\ncluster of 3 started in {time.monotonic() - started:.1f} s")
    try:
        yield cluster
    finally:
        cluster.stop()


def bring_back(cluster: Cluster) -> None:
    for node in cluster.nodes:
        if not node.alive:
            node.relaunch()
            node.wait_ready()


async def test_a_publish_to_a_queue_whose_leader_died_is_confirmed_once_a_new_leader_is_elected(cluster):
    """RabbitMQ 3.10 nacks a channel's publishes to a quorum queue for good when the first one met
    the queue without a leader: the bus must publish again on a new channel, not give up (a handler
    would return its message, and three returns park a generator job)."""
    topo = Topology(f"t{secrets.token_hex(4)}")
    declaring, publishing = cluster.nodes[0], cluster.nodes[1]
    # Declared through node 1, so node 1 leads every queue; the bus is on node 2.
    declarer = await Bus.connect(declaring.url, topo, name="declarer")
    await declarer.close()
    leaders = cluster.queue_leaders()
    recorder_queue = topo.queue("recorder")
    assert leaders[recorder_queue][0] == declaring.node, leaders
    bus = await Bus.connect(publishing.url, topo, name="publisher")
    try:
        declaring.kill()
        started = JobStarted(job_id=new_id(), worker="w")
        await bus.publish(started)  # raises BrokerUnavailable if it gives up
        channel = await bus.connection.channel()
        queue = await channel.declare_queue(recorder_queue, passive=True)
        message = await eventually(lambda: queue.get(fail=False), timeout=10, what="the event in the recorder queue")
        assert json.loads(message.body)["event_id"] == started.event_id
        await message.ack()
    finally:
        await bus.close()
        bring_back(cluster)


async def test_a_process_given_a_dead_address_and_a_live_one_connects_to_the_live_one(settings):
    """Whichever address a process starts at (a random one), it ends up on the node that answers."""
    live = urlsplit(settings.amqp_url).port
    for _ in range(4):
        bus = await Bus.connect(f"amqp://guest:guest@127.0.0.1:{free_port()}/, {settings.amqp_url}",
                                Topology(settings.namespace), name="test", timeout=10)
        try:
            assert bus.connected and bus.connection.url.port == live
            await bus.publish(JobStarted(job_id=new_id(), worker="w"))  # confirmed
        finally:
            await drop_namespace(bus)
            await bus.close()


def test_a_killed_node_loses_no_job_and_duplicates_no_image(cluster, tiny_model, tmp_path):
    started = time.monotonic()
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
        leaders = {name: led for name, led in cluster.queue_leaders().items() if name.startswith("darkroom.")}
        generator_queue = "darkroom.generator"
        assert generator_queue in leaders and all(len(members) == 3 for _, members in leaders.values()), leaders

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
        # Followers (classic queues, on one node each) were declared again where their process is
        # now: the generator's cancellations, the ingress's live events and worker list.
        consumers = cluster.consumers()
        for follower in ("darkroom.generator-follow.", "darkroom.ingress.live.", "darkroom.ingress.workers."):
            assert [n for name, n in consumers.items() if name.startswith(follower)] == [1], (follower, consumers)
        print(f"\nkilled {victim} (generator's node; "
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
            bring_back(cluster)
