"""Fault injection with real processes and the real broker: nothing accepted is lost or done twice.

One stack for the module (2 generators, short stall timeout, a poison word wired to kill the
generator that runs it), with a broker the test owns so that it can restart it.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from PIL import Image

from ops.broker import PrivateBroker, free_port
from schemas.events import AnyEvent
from schemas.jobs import ACTIVE_STATUSES, JobDocument
from schemas.lifecycle import apply_event
from tests.e2e.conftest import Stack, created_token, darkroom_command
from tests.support import wait_for_sync

TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[tuple[Stack, PrivateBroker]]:
    root = tmp_path_factory.mktemp("faults")
    broker = PrivateBroker(root / "rabbitmq", name="darkroom-faults").start()
    data_dir = root / "var"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env |= {
        "DARKROOM_DATA_DIR": str(data_dir),
        "DARKROOM_PORT": str(port),
        "DARKROOM_AMQP_URL": broker.url,
        "DARKROOM_LOG_FORMAT": "json",
        "DARKROOM_CONFIG_PATH": str(root / "darkroom.toml"),
        "DARKROOM_GENERATORS": "2",
        "DARKROOM_MAX_BATCH": "2",
        "DARKROOM_STALL_TIMEOUT": "10",
        "DARKROOM_HEARTBEAT_INTERVAL": "0.5",
        "DARKROOM_FAULT_INJECTION": "exit-on-prompt:POISON",
    }
    log = root / "stack.log"
    key = created_token(subprocess.run([*darkroom_command(), "keys", "create", "--name", "faults", "--admin"], env=env,
                         capture_output=True, text=True, check=True).stdout)
    with log.open("wb") as out:
        process = subprocess.Popen([*darkroom_command(), "run"], env=env, stdout=out, stderr=subprocess.STDOUT)
    stack = Stack(url=f"http://127.0.0.1:{port}", data_dir=data_dir, process=process, log=log, token=key)

    def ready() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{stack.url}/health", timeout=1, headers=stack.auth).json()["generators"] == 2
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    try:
        wait_for_sync(ready, timeout=180, interval=0.25, what="the fault stack with two generators")
        yield stack, broker
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        broker.stop()


def service_pids(stack: Stack, service: str) -> list[int]:
    pids = []
    for task in Path(f"/proc/{stack.process.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if f"services.{service}".encode() in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0"):
                    pids.append(int(child))
            except OSError:
                continue
    return pids


def events(stack: Stack) -> list[dict]:
    return [json.loads(line) for path in sorted((stack.data_dir / "events").glob("*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def doc(stack: Stack, job_id: str) -> dict:
    return json.loads((stack.data_dir / "jobs" / f"{job_id}.json").read_text())


def submit(client: httpx.Client, prompt: str, key: str | None = None, **settings) -> str:
    """Submit, retrying through restarts and outages with the same Idempotency-Key, as a careful client does."""
    headers = {"Idempotency-Key": key} if key else {}
    payload = {"prompt": prompt, "settings": {"width": 128, "height": 128, "num_inference_steps": 12, **settings}}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            answer = client.post("/v1/jobs", json=payload, headers=headers, timeout=15)
        except httpx.TransportError:
            time.sleep(0.3)
            continue
        if answer.status_code == 202:
            return answer.json()["id"]
        assert answer.status_code in (503, 409), answer.text
        assert "different request body" not in answer.text
        time.sleep(0.3)
    raise AssertionError(f"could not submit {prompt!r}")


def wait_terminal(stack: Stack, job_ids: list[str], timeout: float = 180) -> dict[str, dict]:
    def all_done():
        docs = {}
        for job_id in job_ids:
            try:
                docs[job_id] = doc(stack, job_id)
            except (FileNotFoundError, ValueError):
                return None
            if docs[job_id]["status"] not in TERMINAL:
                return None
        return docs

    try:
        return wait_for_sync(all_done, timeout=timeout, interval=0.5, what=f"{len(job_ids)} jobs to end")
    except AssertionError:
        trail = []
        for job_id in job_ids:
            path = stack.data_dir / "jobs" / f"{job_id}.json"
            status = doc(stack, job_id)["status"] if path.exists() else "no document"
            if status not in TERMINAL:
                kinds = [f"{e['type']}@{e.get('attempt', '')}" for e in events(stack) if e["job_id"] == job_id]
                trail.append(f"{job_id}: {status}: {' '.join(kinds)}")
        raise AssertionError("jobs that never ended (lost):\n" + "\n".join(trail)) from None


def test_f22_a_poison_job_is_delivered_as_often_as_documented_then_parked(fault_stack):
    stack, broker = fault_stack
    with stack.client() as client:
        poison = submit(client, "a POISON apple")
        others = [submit(client, f"a plain apple {n}", seed=n) for n in range(4)]
        docs = wait_terminal(stack, [poison, *others])
    assert docs[poison]["status"] == "failed"
    assert "parked in the dead-letter queue (delivery_limit)" in docs[poison]["error"]
    assert all(docs[job]["status"] == "completed" for job in others), {j: docs[j]["error"] for j in others}
    exits = [json.loads(line) for line in stack.log.read_text().splitlines() if '"service exited; restarting"' in line]
    assert [e["code"] for e in exits if e["service"].startswith("generator")] == [86] * 4, (
        "one delivery and three redeliveries, each killing its worker; then it was parked"
    )
    listing = subprocess.run([*darkroom_command(), "ops", "dead-letters", "list", "--json"], capture_output=True,
                             text=True, env={**os.environ, "DARKROOM_AMQP_URL": broker.url}, timeout=60)
    parked = json.loads(listing.stdout)
    assert [(p["job_id"], p["kind"]) for p in parked] == [(poison, "generate_images")]
    wait_for_sync(lambda: len(service_pids(stack, "generator")) == 2, timeout=60, what="both generators back")


def test_a_hung_generator_is_found_and_its_late_result_ignored(fault_stack):
    stack, _ = fault_stack
    with stack.client() as client:
        # Big enough to still be running when stopped; the second generator is idle.
        job_id = submit(client, "a slow fox", width=256, height=256, num_inference_steps=50)
        started = wait_for_sync(
            lambda: [e for e in events(stack) if e["job_id"] == job_id and e["type"] == "job.started"],
            timeout=60, what="the job to start",
        )
        hung_pid = int(started[0]["worker"].rsplit("-", 1)[1])
        os.kill(hung_pid, signal.SIGSTOP)
        try:
            time.sleep(1.5)
            answer = client.post("/v1/queue/reset-stalled", params={"silent_seconds": 1})
            assert answer.status_code == 200 and answer.json()["job_ids"] == [job_id], answer.text
            # The requeued attempt may land in the stopped worker's prefetch: the broker takes it
            # back once that worker misses its AMQP heartbeats (~20 s), then the other one runs it.
            finished = wait_terminal(stack, [job_id], timeout=120)[job_id]
        finally:
            os.kill(hung_pid, signal.SIGCONT)
        time.sleep(4)  # the woken worker finishes its call and tries to report
    final = doc(stack, job_id)
    assert finished["status"] == final["status"] == "completed" and final["attempts"] >= 2
    assert [image["id"] for image in final["images"]] == [f"{job_id}_1"]
    saved = [e for e in events(stack) if e["job_id"] == job_id and e["type"] == "image.saved"]
    assert len(saved) == 1 and saved[0]["image"]["metadata"]["job_id"] == job_id
    generated = [e for e in events(stack) if e["job_id"] == job_id and e["type"] == "image.generated"]
    assert 1 not in {e["attempt"] for e in generated}, "the hung worker's result never counted"
    assert len(list((stack.data_dir / "images").rglob(f"{job_id}_*.png"))) == 1


def test_chaos_every_service_killed_and_the_broker_restarted(fault_stack, capsys):
    stack, broker = fault_stack
    rng = random.Random(int(os.environ.get("DARKROOM_CHAOS_SEED", "20261121")))
    accepted: dict[str, str] = {}
    faults: list[str] = []

    def client_thread() -> None:
        with stack.client() as client:
            for n in range(45):
                images = 2 if n % 9 == 0 else 1
                accepted[f"chaos-{n}"] = submit(client, f"chaos fox {n}", key=f"chaos-{n}", seed=1000 + n,
                                                num_images=images)
                time.sleep(rng.uniform(0.05, 0.35))

    submitting = threading.Thread(target=client_thread)
    submitting.start()
    for service in ("enricher", "generator", "saver", "recorder", "reaper", "ingress"):
        time.sleep(rng.uniform(0.8, 1.8))
        pids = service_pids(stack, service)
        if pids:
            victim = rng.choice(pids)
            os.kill(victim, signal.SIGKILL)
            faults.append(f"SIGKILL {service} (pid {victim})")
    time.sleep(rng.uniform(0.5, 1.5))
    broker.restart()
    faults.append("RabbitMQ stopped and started")
    submitting.join(240)
    assert not submitting.is_alive(), "the client could not submit through the faults"
    job_ids = list(accepted.values())
    docs = wait_terminal(stack, job_ids, timeout=240)

    completed = [j for j in job_ids if docs[j]["status"] == "completed"]
    failed = [j for j in job_ids if docs[j]["status"] == "failed"]
    lost = [j for j in job_ids if docs[j]["status"] not in TERMINAL]
    for job_id in failed:
        assert docs[job_id]["error"], f"{job_id} failed without a reason"

    # Exactly one set of images per completed job, none for others, nothing torn or left over.
    on_disk = Counter(p.name.rsplit("_", 1)[0] for p in (stack.data_dir / "images").rglob("*.png"))
    duplicated = []
    for job_id in job_ids:
        expected = docs[job_id]["settings"]["num_images"] if job_id in completed else 0
        if on_disk.get(job_id, 0) != expected:
            duplicated.append(job_id)
    for job_id in completed:
        for image in docs[job_id]["images"]:
            path = stack.data_dir / "images" / image["file_path"]
            with Image.open(io.BytesIO(path.read_bytes())) as png:
                png.load()
            assert path.with_suffix(".json").exists()
    leftovers = [p for p in stack.data_dir.rglob(".*.tmp")]
    assert leftovers == [], leftovers

    # The event log, the job documents and queue.txt tell the same story.
    decoder = msgspec.json.Decoder(AnyEvent)
    folded: dict[str, JobDocument] = {}
    seen = set()
    completions = Counter()
    for line in events(stack):
        if line["event_id"] in seen:
            continue
        seen.add(line["event_id"])
        if line["type"] == "job.completed":
            completions[line["job_id"]] += 1
        event = decoder.decode(json.dumps(line))
        result = apply_event(folded.get(event.job_id), event)
        if result is not None:
            folded[event.job_id] = result
    for job_id in job_ids:
        from_log = folded[job_id]
        assert from_log.status == docs[job_id]["status"], job_id
        assert [i.id for i in from_log.images] == [i["id"] for i in docs[job_id]["images"]], job_id
    active = [j for j, d in folded.items() if d.status in ACTIVE_STATUSES]
    assert (stack.data_dir / "queue.txt").read_text().split() == active == []

    table = (
        "| faults injected | jobs accepted | completed | failed | lost | duplicated |\n"
        "|---|---|---|---|---|---|\n"
        f"| {len(faults)} | {len(job_ids)} | {len(completed)} | {len(failed)} | {len(lost)} | {len(duplicated)} |"
    )
    with capsys.disabled():
        print("\n" + "\n".join(faults) + "\n" + table)
        print(f"job.completed events repeated for {sum(1 for c in completions.values() if c > 1)} job(s) "
              "(idempotent: the document and the images count once)")
    assert len(faults) == 7 and len(job_ids) == 45
    assert lost == [] and duplicated == []
    assert len(completed) + len(failed) == 45
