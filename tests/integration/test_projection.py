"""The DuckDB projection over real event-log files: crash safety, and queries checked against counts
computed by hand from the log."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from ops.bench.synthetic import write_log
from schemas.events import ImageDeleted
from services.readside import queries
from services.readside.projection import Projection

SMALL_BATCHES = 64 * 1024


def append_deletions(events_dir: Path, every: int) -> list[str]:
    """Delete every `every`-th saved image (and write one deletion twice, as a recorder retrying
    after a crash would): returns the deleted image ids."""
    saved = [json.loads(line) for path in sorted(events_dir.glob("*.jsonl")) for line in path.read_bytes().splitlines()
             if b'"type":"image.saved"' in line]
    deleted = [event["image"]["id"] for event in saved[::every]]
    newest = sorted(events_dir.glob("*.jsonl"))[-1]
    lines = [msgspec.json.encode(ImageDeleted(job_id=image.rsplit("_", 1)[0], image_id=image)) for image in deleted]
    with newest.open("ab") as log:
        log.write(b"\n".join([*lines, lines[0]]) + b"\n")
    return deleted


def table(projection: Projection, name: str) -> list[tuple]:
    return projection.con.execute(f"SELECT * FROM {name} ORDER BY id").fetchall()


def test_a_catch_up_killed_mid_batch_resumes_to_what_a_rebuild_gives(tmp_path: Path):
    events = tmp_path / "events"
    write_log(events, 6000)
    deleted = append_deletions(events, every=7)
    db = tmp_path / "analytics.duckdb"
    total = sum(len(path.read_bytes().splitlines()) for path in events.glob("*.jsonl"))
    # A real process killed with SIGKILL in the middle of its batches.
    catching_up = subprocess.Popen([sys.executable, "-m", "services.readside.projection", str(db), str(events), str(SMALL_BATCHES)])
    wal = db.with_name(db.name + ".wal")
    deadline = time.monotonic() + 60
    while not (wal.exists() and wal.stat().st_size > 1_000_000) and catching_up.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    catching_up.send_signal(signal.SIGKILL)
    catching_up.wait()
    resumed = Projection(db, events, batch_bytes=SMALL_BATCHES)
    assert 0 < resumed.position.events < total, "killed mid-way"
    resumed.catch_up()
    rebuilt = Projection(tmp_path / "rebuilt.duckdb", events)
    assert rebuilt.catch_up() == total
    assert resumed.position.events == rebuilt.position.events == total
    assert table(resumed, "jobs") == table(rebuilt, "jobs")
    assert table(resumed, "images") == table(rebuilt, "images")
    gone = {row[0] for row in resumed.con.execute("SELECT id FROM images WHERE deleted_at IS NOT NULL").fetchall()}
    assert gone == set(deleted)
    # Rebuilding in place gives the same rows again.
    before = table(resumed, "images")
    assert resumed.rebuild() == total and table(resumed, "images") == before


def hand_counts(events_dir: Path, now: datetime) -> dict:
    """Each job's last status and creation time, straight from the JSON lines."""
    final = {"job.accepted": "pending", "job.started": "processing", "job.completed": "completed",
             "job.failed": "failed", "job.cancelled": "cancelled"}
    status, created, model, busy = {}, {}, {}, {}
    for path in sorted(events_dir.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            event = json.loads(line)
            job, kind = event["job_id"], event["type"]
            at = datetime.fromisoformat(event["occurred_at"])
            if kind == "job.accepted":
                created[job], model[job] = at, event["spec"]["model"]
            if kind == "job.started":
                busy[job] = at
            if kind == "job.completed":
                busy[job] = (at - busy[job]).total_seconds()
            if kind in final and kind != "job.progressed":
                status[job] = final[kind]
    recent = Counter(status[job] for job in status if created[job] >= now - timedelta(hours=24))
    per_model = Counter((model[job], status[job]) for job in status)
    durations = [busy[job] for job in status if status[job] == "completed"]
    return {"all": Counter(status.values()), "recent": recent, "per_model": per_model,
            "mean": sum(durations) / len(durations)}


def test_statistics_match_counts_computed_by_hand(tmp_path: Path):
    now = datetime.now(UTC)
    events = tmp_path / "events"
    truth = write_log(events, 3000, start=now - timedelta(days=2), failure_rate=0.1, cancel_rate=0.05)
    projection = Projection(tmp_path / "analytics.duckdb", events)
    projection.catch_up()
    hand = hand_counts(events, now)
    cur = projection.cursor()
    basic = queries.queue_stats(cur, queries.Scope(everyone=True))
    assert {k: basic[k] for k in queries.COUNTED} == {k: hand["all"][k] for k in queries.COUNTED} == truth["counts"]
    assert basic["total"] == 3000 and basic["queue_size"] == hand["all"]["pending"]
    detailed = queries.detailed_stats(cur, queries.Scope(everyone=True), now=now)
    assert {k: detailed["recent_24h"][k] for k in queries.COUNTED} == {k: hand["recent"][k] for k in queries.COUNTED}
    assert detailed["recent_24h"]["total"] == sum(hand["recent"].values())
    for (model, status), count in hand["per_model"].items():
        assert detailed["models"][model][status] == count
    finished = hand["all"]["completed"] + hand["all"]["failed"]
    assert detailed["failure_rate"] == round(100 * hand["all"]["failed"] / finished, 2)
    assert detailed["avg_processing_time_seconds"] == pytest.approx(hand["mean"], abs=0.01)
    # A tenant sees its own jobs only.
    alice = queries.queue_stats(cur, queries.Scope(owner="alice"))
    assert 0 < alice["total"] < 3000
    assert alice["total"] == projection.con.execute("SELECT count(*) FROM jobs WHERE owner = 'alice'").fetchone()[0]


def test_job_lists_page_newest_first_by_cursor(tmp_path: Path):
    events = tmp_path / "events"
    write_log(events, 230)
    projection = Projection(tmp_path / "analytics.duckdb", events)
    projection.catch_up()
    cur = projection.cursor()
    seen, cursor = [], None
    while True:
        page, cursor = queries.list_jobs(cur, queries.Scope(everyone=True), limit=50, cursor=cursor)
        seen += page
        if cursor is None:
            break
    assert len(seen) == len({job["id"] for job in seen}) == 230
    assert [job["created_at"] for job in seen] == sorted((job["created_at"] for job in seen), reverse=True)
    failed, _ = queries.list_jobs(cur, queries.Scope(everyone=True), status="failed", limit=100)
    assert failed and all(job["status"] == "failed" and job["error"] for job in failed)
    with pytest.raises(queries.BadCursor):
        queries.list_jobs(cur, queries.Scope(everyone=True), cursor="not-a-cursor")


def test_a_deletion_in_the_batch_of_its_jobs_completion_still_deletes_the_row(tmp_path: Path):
    """job.completed lists images already applied; an image.deleted folded with it must still mark
    the row that is already in the table (not only the copy the batch would insert)."""
    events = tmp_path / "events"
    write_log(events, 1, active=0, failure_rate=0, cancel_rate=0)
    [path] = events.glob("*.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    split = next(i for i, line in enumerate(lines) if b'"type":"job.completed"' in line)
    image = json.loads(lines[split])["images"][0]["id"]
    path.write_bytes(b"".join(lines[:split]))
    projection = Projection(tmp_path / "analytics.duckdb", events)
    projection.catch_up()
    assert projection.con.execute("SELECT count(*) FROM images WHERE deleted_at IS NULL").fetchone()[0] == 1
    deletion = msgspec.json.encode(ImageDeleted(job_id=image.rsplit("_", 1)[0], image_id=image))
    with path.open("ab") as log:
        log.write(b"".join(lines[split:]) + deletion + b"\n")
    projection.catch_up()
    assert projection.con.execute("SELECT deleted_reason FROM images WHERE id = ?", [image]).fetchone() == ("deleted",)
    projection.close()


def test_a_catch_up_leaves_what_arrives_while_it_writes_to_the_next_one(tmp_path: Path):
    """Events appended while a catch-up commits wait for the next catch-up (one transaction each,
    whatever it holds) instead of being chased one small transaction at a time."""
    events = tmp_path / "source"
    write_log(events, 40, active=0)
    lines = [line for path in sorted(events.glob("*.jsonl")) for line in path.read_bytes().splitlines(keepends=True)]
    log = tmp_path / "events" / "2026-01-01.jsonl"
    log.parent.mkdir()
    log.write_bytes(b"".join(lines[:100]))
    arriving = iter(lines[100:])

    class Appended(Projection):
        def _write(self, batch):
            with log.open("ab") as out:  # the recorder appends while this transaction commits
                out.write(next(arriving))
            super()._write(batch)

    projection = Appended(tmp_path / "analytics.duckdb", log.parent)
    assert projection.catch_up() == 100
    assert projection.catch_up() == 1  # the one line that arrived during the first commit
    assert projection.position.events == 101
