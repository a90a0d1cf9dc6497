"""The Chutes proxy dialect against the whole stack: the seed's Bruno collection
(clients/bruno/chutes) run with `bru run`, every documented field and status code, and one task
followed to its image through /chutes alone. The stack's default model clamps the collection's
1024x1024, 20-step request to 64x64 and 4 steps (tests/e2e/seed_stack.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ops import keys
from schemas.layout import DataLayout
from tests.e2e.conftest import Stack
from tests.e2e.seed_stack import seed_stack
from tests.support import wait_for_sync

pytestmark = pytest.mark.slow
COLLECTION = Path(__file__).resolve().parents[2] / "clients" / "bruno" / "chutes"
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
FIELDS = {"id", "prompt", "status", "file_path", "error", "created_at", "updated_at"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_lora: Path) -> Iterator[Stack]:
    with seed_stack(tmp_path_factory.mktemp("chutes"), tiny_model, tiny_lora,
                    DARKROOM_ANONYMOUS_RATE="500/hour") as stack:
        yield stack


@pytest.fixture(scope="module")
def chutes(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{stack.url}/chutes", timeout=30) as client:  # no auth, as the seed
        yield client


def _follow(chutes: httpx.Client, task_id: str, timeout: float = 120) -> tuple[dict, list[str]]:
    """Poll GET /status/{id} until the task ends; (its last row, the statuses seen)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        answer = chutes.get(f"/status/{task_id}")
        assert answer.status_code == 200, answer.text
        task = answer.json()
        if not seen or seen[-1] != task["status"]:
            seen.append(task["status"])
        if task["status"] in ("completed", "failed"):
            return task, seen
        assert time.monotonic() < deadline, f"task {task_id} still {task['status']}"
        time.sleep(0.1)


def _cleanup_until(client: httpx.Client, task_id: str, headers: dict[str, str] | None = None) -> dict:
    """POST /cleanup {timeoutMinutes: 0} until it names the task (the queue file lists it a moment after 202)."""
    def cleaned() -> dict | None:
        answer = client.post("/cleanup", json={"timeoutMinutes": 0}, headers=headers or {})
        assert answer.status_code == 200, answer.text
        return answer.json() if task_id in answer.json()["cleanedIds"] else None

    return wait_for_sync(cleaned, timeout=30, interval=0.2, what=f"cleanup to take {task_id}")


def test_the_bruno_collection_runs_green_and_its_task_completes(stack: Stack, chutes: httpx.Client,
                                                               tmp_path: Path) -> None:
    if shutil.which("bru") is None:
        pytest.fail("Bruno's CLI is not installed: npm install -g @usebruno/cli@4 (.ci/run does)")
    report = tmp_path / "bru.json"
    run = subprocess.run(["bru", "run", "--env", "Local", "--env-var", f"baseUrl={stack.url}/chutes",
                          "--reporter-json", str(report)], cwd=COLLECTION, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    [iteration] = json.loads(report.read_text())  # one iteration of the collection
    results = iteration["results"]
    assert len(results) == 8, [r.get("test", {}).get("filename") for r in results]
    for result in results:
        assert result["testResults"], result["test"]["filename"]
        assert all(test["status"] == "pass" for test in result["testResults"]), result["testResults"]
    generated = next(r for r in results if r["test"]["filename"].startswith("Generate Image"))
    task_id = generated["response"]["data"]["id"]
    task, _ = _follow(chutes, task_id)
    assert task["status"] == "completed", task
    assert Image.open(task["file_path"]).size == (64, 64)  # qwen-image 1024x1024 -> the default model's limit


def test_one_task_followed_to_its_image(chutes: httpx.Client) -> None:
    queued = chutes.post("/generate", json={"prompt": "A futuristic coffee machine"})
    assert queued.status_code == 202 and queued.headers["content-type"].startswith("application/json")
    body = queued.json()
    assert set(body) == {"id", "status", "message"} and body["status"] == "pending"
    assert body["message"] == "Task queued successfully"
    task, seen = _follow(chutes, body["id"])
    assert set(task) == FIELDS and task["id"] == body["id"]
    assert task["status"] == "completed" and task["error"] is None and seen[-1] == "completed"
    assert set(seen) <= {"pending", "processing", "completed"}
    assert task["prompt"] == "A futuristic coffee machine"
    assert STAMP.match(task["created_at"]) and STAMP.match(task["updated_at"])
    assert task["updated_at"] >= task["created_at"]
    path = Path(task["file_path"])
    assert path.is_absolute() and path.suffix == ".png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (64, 64)


def test_the_list_is_newest_first_and_filters_by_status(chutes: httpx.Client) -> None:
    ids = [chutes.post("/generate", json={"prompt": f"list me {n}", "width": 64, "height": 64,
                                          "num_inference_steps": 2}).json()["id"] for n in range(2)]
    for task_id in ids:
        _follow(chutes, task_id)

    def listed() -> list[dict] | None:
        rows = chutes.get("/status", params={"status": "completed"}).json()
        return rows if {row["id"] for row in rows} >= set(ids) else None

    rows = wait_for_sync(listed, timeout=30, interval=0.2, what="both tasks in the read model")
    assert all(set(row) == FIELDS and row["status"] == "completed" and row["file_path"] for row in rows)
    order = [row["id"] for row in rows if row["id"] in ids]
    assert order == ids[::-1]  # newest first
    every = chutes.get("/status").json()
    assert [row["created_at"] for row in every] == sorted((row["created_at"] for row in every), reverse=True)
    for status in ("pending", "processing", "failed"):
        answer = chutes.get("/status", params={"status": status})
        assert answer.status_code == 200 and all(row["status"] == status for row in answer.json())


def test_cleanup_fails_the_callers_stuck_tasks_only(stack: Stack, chutes: httpx.Client) -> None:
    mine = chutes.post("/generate", json={"prompt": "stuck behind the others", "model": "tiny-sd",
                                          "width": 256, "height": 256, "num_inference_steps": 50}).json()["id"]
    keyed = chutes.post("/generate", json={"prompt": "a key holder's task"}, headers=stack.auth)
    assert keyed.status_code == 202  # a Darkroom key works here too
    cleaned = _cleanup_until(chutes, mine)
    assert set(cleaned) == {"message", "cleanedCount", "cleanedIds"}
    assert cleaned["cleanedCount"] == len(cleaned["cleanedIds"]) and keyed.json()["id"] not in cleaned["cleanedIds"]
    task, _ = _follow(chutes, mine)
    assert task["status"] == "failed" and task["error"] and task["file_path"] is None
    assert chutes.get(f"/status/{keyed.json()['id']}").status_code == 404  # another tenant's task
    again = chutes.post("/cleanup", json={"timeoutMinutes": 30}).json()
    assert mine not in again["cleanedIds"]


def test_documented_errors_in_the_proxys_shape(stack: Stack, chutes: httpx.Client) -> None:
    for body in (None, {}, {"model": "qwen-image"}):
        missing = chutes.post("/generate", json=body) if body is not None else chutes.post("/generate")
        assert missing.status_code == 400 and missing.json() == {"error": "Prompt is required"}
    for task_id in (":id", "00000000-0000-4000-8000-000000000000", "not-a-uuid"):
        unknown = chutes.get(f"/status/{task_id}")
        assert unknown.status_code == 404 and unknown.json() == {"error": "Task not found"}
    for path in ("/edit", "/generate-video", "/analyze-image"):
        answer = chutes.post(path, json={"prompt": "x"})
        assert answer.status_code == 501 and "not available" in answer.json()["error"]
    bad = chutes.post("/generate", json={"prompt": "x"}, headers={"Authorization": "Bearer drk_nope_nope"})
    assert bad.status_code == 401 and set(bad.json()) == {"error"}
    _, token = keys.create(DataLayout(str(stack.data_dir)).state_dir, "one-an-hour", rate="1/hour")
    assert chutes.post("/generate", json={"prompt": "x"}, headers={"X-API-Key": token}).status_code == 202
    limited = chutes.post("/generate", json={"prompt": "x"}, headers={"X-API-Key": token})
    assert limited.status_code == 429 and "rate limit" in limited.json()["error"]
    assert int(limited.headers["retry-after"]) > 0
