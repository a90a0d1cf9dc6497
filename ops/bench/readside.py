"""The `readside` case: the DuckDB projection over a synthetic log of 1,000,000 jobs (catch-up
rate, then p50/p95 of the read queries), against bare DuckDB on the same files and the same rows.

The catch-up and its baseline each run in a child process, so that their peak RSS is their own:

    python -m ops.bench.readside catch-up DB EVENTS_DIR
    python -m ops.bench.readside bare-ingest DB EVENTS_DIR

Each prints one JSON object: events, seconds, cpu_seconds, peak_rss_bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ops.bench.harness import Context, Measurement, percentile

SEED = 7
# A fixed start makes a cached log the same as a fresh one; queries get the log's end as "now".
START = datetime(2026, 1, 5, tzinfo=UTC)
CACHE = Path("bench/cache")
CATCH_UP_TARGET = 50_000  # events/s
QUERY_TARGET_MS = 50.0
MB = 1024 * 1024
# What a minimal bare ingest is: DuckDB parses every line and stores every field, no state machine.
BARE_INGEST = "CREATE TABLE raw AS SELECT * FROM read_json(?, format = 'newline_delimited')"


async def readside(ctx: Context) -> list[Measurement]:
    """Catch-up of a fresh projection vs bare DuckDB ingesting the same log; then each read query
    vs the bare SQL it needs at least, interleaved repetition by repetition on the same file."""
    return await asyncio.to_thread(_measure, ctx.work, ctx.quick)


def _measure(work: Path, quick: bool) -> list[Measurement]:
    jobs = 10_000 if quick else 1_000_000
    written = time.monotonic()
    events, truth, cached = synthetic_log(work, jobs, cache=not quick)
    written = time.monotonic() - written
    log_bytes = _warm_page_cache(events)  # both sides then read the log from memory alike
    db = work / "readside.duckdb"
    ours = _child("catch-up", db, events)
    bare_db = work / "bare-ingest.duckdb"
    bare = _child("bare-ingest", bare_db, events)
    bare_bytes = _size(bare_db)
    for path in (bare_db, bare_db.with_name(bare_db.name + ".wal")):
        path.unlink(missing_ok=True)
    if ours["events"] != bare["events"]:
        raise RuntimeError(f"readside: the projection applied {ours['events']} events, the log holds {bare['events']}")

    from services.readside.projection import Projection

    projection = Projection(db, events)
    try:
        if (late := projection.catch_up()) != 0:
            raise RuntimeError(f"readside: {late} events were left after the catch-up")
        cur = projection.cursor()
        _check_against_log(cur, truth)
        rate, bare_rate = ours["events"] / ours["seconds"], bare["events"] / bare["seconds"]
        results = [Measurement(
            case="readside", metric=f"catch-up, {jobs:,} jobs ({ours['events']:,} events)", unit="events/s",
            darkroom=round(rate), baseline=round(bare_rate), better="higher",
            target=f">= {CATCH_UP_TARGET:,} events/s", met=rate >= CATCH_UP_TARGET,
            details={
                "jobs": jobs, "events": ours["events"], "seconds": round(ours["seconds"], 2),
                "cpu_seconds": ours["cpu_seconds"], "db_mb": round(_size(db) / MB, 1),
                "peak_rss_mb": round(ours["peak_rss_bytes"] / MB, 1), "log_mb": round(log_bytes / MB, 1),
                "baseline": "bare DuckDB: " + BARE_INGEST, "baseline_seconds": round(bare["seconds"], 2),
                "baseline_cpu_seconds": bare["cpu_seconds"], "baseline_db_mb": round(bare_bytes / MB, 1),
                "baseline_peak_rss_mb": round(bare["peak_rss_bytes"] / MB, 1),
                "log_cached": cached, "log_write_seconds": None if cached else round(written, 1),
            },
        )]
        reps, warm_ups = (10, 1) if quick else (50, 3)
        for query in _queries(cur, projection.cursor(), truth):
            results.append(_time_query(query, reps, warm_ups, jobs))
        return results
    finally:
        projection.close()


# -- the synthetic log ------------------------------------------------------------------------------


def synthetic_log(work: Path, jobs: int, *, cache: bool) -> tuple[Path, dict, bool]:
    """(events folder, the true counts, whether it came from the cache). The cache is written under
    a temporary name and renamed when complete, so a killed run never leaves half a log there."""
    from ops.bench.synthetic import write_log

    if not cache:
        events = work / "readside-log" / "events"
        return events, write_log(events, jobs, seed=SEED, start=START), False
    root = CACHE / f"synthetic-{jobs}-seed{SEED}"
    truth_file = root / "truth.json"
    if truth_file.exists():
        stored = json.loads(truth_file.read_text())
        if stored.get("fingerprint") == _fingerprint():
            return root / "events", stored["truth"], True
    for stale in CACHE.glob(f"{root.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = root.with_name(f"{root.name}.partial-{time.time_ns()}")
    truth = write_log(partial / "events", jobs, seed=SEED, start=START)
    (partial / "truth.json").write_text(json.dumps({"fingerprint": _fingerprint(), "truth": truth}))
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return root / "events", truth, False


def _fingerprint() -> str:
    """Of the code that shapes the log: a change to the generator or the events invalidates the cache."""
    import ops.bench.synthetic
    import schemas.events
    import schemas.jobs

    digest = hashlib.sha256()
    for module in (ops.bench.synthetic, schemas.events, schemas.jobs):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _warm_page_cache(events: Path) -> int:
    total = 0
    for path in sorted(events.glob("*.jsonl")):
        with path.open("rb") as handle:
            while chunk := handle.read(16 * MB):
                total += len(chunk)
    return total


def _size(db: Path) -> int:
    return sum(path.stat().st_size for path in (db, db.with_name(db.name + ".wal")) if path.exists())


def _child(mode: str, db: Path, events: Path) -> dict:
    run = subprocess.run([sys.executable, "-m", "ops.bench.readside", mode, str(db), str(events)],
                         capture_output=True, text=True, timeout=900, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"readside {mode} failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.splitlines()[-1])


def _check_against_log(cur, truth: dict) -> None:
    """A wrong projection must fail the bench, not report a fast figure."""
    counts = dict.fromkeys(truth["counts"], 0) | dict(cur.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    models: dict[str, dict[str, int]] = {}
    for model, status, n in cur.execute("SELECT model, status, count(*) FROM jobs GROUP BY ALL").fetchall():
        models.setdefault(model, {})[status] = n
    images = cur.execute("SELECT count(*) FROM images WHERE deleted_at IS NULL").fetchone()[0]
    if counts != truth["counts"] or models != truth["models"] or images != truth["counts"]["completed"]:
        raise RuntimeError(f"readside: the projection's counts {counts} (models {models}, {images} images) "
                           f"differ from the log's {truth}")


# -- queries ----------------------------------------------------------------------------------------


@dataclass
class Query:
    """One read: ours (a function of the repetition number) and the bare SQL that does its work."""

    metric: str
    ours: Callable[[int], object]
    bare: Callable[[int], object]
    sql: str


IMAGE_COLUMNS = "id, job_id, model, prompt, width, height, seed, settings, created_at"
JOB_COLUMNS = "id, status, model, mode, prompt, num_images, owner, created_at, started_at, completed_at, updated_at, attempts, error"


def _queries(cur, bare, truth: dict) -> list[Query]:
    from ops.bench.synthetic import WORDS
    from services.readside import queries

    admin, alice = queries.Scope(everyone=True), queries.Scope(owner="alice")
    now = cur.execute("SELECT max(updated_at) FROM jobs").fetchone()[0].replace(tzinfo=UTC)  # the log's end
    naive_now = now.replace(tzinfo=None)
    terms = [*WORDS, *(f"{a} {b}" for a, b in zip(WORDS, WORDS[1:] + WORDS[:1], strict=True))]

    def term(rep: int) -> str:
        return terms[rep % len(terms)]

    def bare_page(where: str, params: list, after: tuple | None = None) -> tuple:
        """The total that matches, and 20 rows of them (after a (created_at, id) key, for a deep page)."""
        total = bare.execute(f"SELECT count(*) FROM images WHERE {where}", params).fetchone()[0]
        if after is not None:
            where, params = f"{where} AND (created_at, id) < (?, ?)", [*params, *after]
        rows = bare.execute(f"SELECT {IMAGE_COLUMNS} FROM images WHERE {where} ORDER BY created_at DESC LIMIT 20",
                            params).fetchall()
        return total, rows

    first = queries.gallery(cur, admin)
    if first["total"] != truth["counts"]["completed"] or len(first["images"]) != 20:
        raise RuntimeError(f"readside: gallery page 1 shows {first['total']} images, the log has {truth['counts']['completed']}")
    deep = first["next_cursor"]
    for _ in range(49):  # to page 51
        deep = queries.gallery(cur, admin, cursor=deep)["next_cursor"]
    deep_at, deep_id = queries.decode_cursor(deep)
    deep_at = deep_at.astimezone(UTC).replace(tzinfo=None)

    pending_id, pending_at, pending_owner = cur.execute(
        "SELECT id, created_at, owner FROM jobs WHERE status = 'pending' ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
    position, _ = queries.queue_position(cur, pending_id, pending_at.replace(tzinfo=UTC), pending_owner, now=now)
    own_pending = cur.execute("SELECT count(*) FROM jobs WHERE status = 'pending' AND owner IS NOT DISTINCT FROM ?",
                              [pending_owner]).fetchone()[0]
    if position != own_pending:
        raise RuntimeError(f"readside: the owner's newest pending job is at position {position}, not {own_pending}")
    return [
        Query("queue stats", lambda _: queries.queue_stats(cur, admin),
              lambda _: bare.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall(),
              "SELECT status, count(*) FROM jobs GROUP BY status"),
        Query("detailed stats", lambda _: queries.detailed_stats(cur, admin, now=now),
              lambda _: bare.execute(
                  "SELECT model, status, created_at >= ?, count(*), avg(epoch(completed_at - started_at)) "
                  "FROM jobs GROUP BY ALL", [naive_now - timedelta(hours=24)]).fetchall(),
              "SELECT model, status, created_at >= ?, count(*), avg(epoch(completed_at - started_at)) FROM jobs GROUP BY ALL"),
        Query("gallery page 1", lambda _: queries.gallery(cur, admin),
              lambda _: bare_page("deleted_at IS NULL", []),
              f"count(*) + SELECT {IMAGE_COLUMNS} FROM images WHERE deleted_at IS NULL ORDER BY created_at DESC LIMIT 20"),
        Query("gallery search", lambda rep: queries.gallery(cur, admin, search=term(rep)),
              lambda rep: bare_page("deleted_at IS NULL AND contains(search, ?)", [term(rep)]),
              "count(*) + page WHERE deleted_at IS NULL AND contains(search, ?) (16 words, 16 two-word terms)"),
        Query("gallery page 51 by cursor", lambda _: queries.gallery(cur, admin, cursor=deep),
              lambda _: bare_page("deleted_at IS NULL", [], after=(deep_at, deep_id)),
              "count(*) WHERE deleted_at IS NULL + page WHERE ... AND (created_at, id) < (?, ?)"),
        Query("job list, newest first", lambda _: queries.list_jobs(cur, admin),
              lambda _: bare.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT 20").fetchall(),
              f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT 20"),
        Query("queue position", lambda _: queries.queue_position(cur, pending_id, pending_at.replace(tzinfo=UTC), pending_owner, now=now),
              lambda _: bare.execute(
                  "SELECT (SELECT count(*) FROM jobs WHERE status = 'pending' AND created_at < ?), "
                  "(SELECT count(*) FROM jobs WHERE status = 'completed' AND completed_at >= ?)",
                  [pending_at, naive_now - timedelta(minutes=15)]).fetchall(),
              "pending jobs created before it + jobs completed in the last 15 minutes (two counts)"),
        Query("tenant gallery page 1", lambda _: queries.gallery(cur, alice),
              lambda _: bare_page("deleted_at IS NULL AND owner = ?", ["alice"]),
              "count(*) + page WHERE deleted_at IS NULL AND owner = ?"),
    ]


def _time_query(query: Query, reps: int, warm_ups: int, jobs: int) -> Measurement:
    """Ours and bare, repetition by repetition (taking turns going first), so that machine noise
    lands on both alike."""
    ours, bare = [], []
    for rep in range(warm_ups + reps):
        if rep % 2:
            theirs = _timed(query.bare, rep)
            mine = _timed(query.ours, rep)
        else:
            mine = _timed(query.ours, rep)
            theirs = _timed(query.bare, rep)
        if rep >= warm_ups:
            ours.append(mine)
            bare.append(theirs)
    p50 = percentile(ours, 50)
    return Measurement(
        case="readside", metric=f"{query.metric} p50", unit="ms", darkroom=round(p50, 3),
        baseline=round(percentile(bare, 50), 3), target=f"p50 <= {QUERY_TARGET_MS:.0f} ms", met=p50 <= QUERY_TARGET_MS,
        details={"p95_ms": round(percentile(ours, 95), 3), "baseline_p95_ms": round(percentile(bare, 95), 3),
                 "reps": reps, "warm_ups": warm_ups, "jobs": jobs, "baseline": query.sql},
    )


def _timed(call: Callable[[int], object], rep: int) -> float:
    started = time.perf_counter()
    call(rep)
    return (time.perf_counter() - started) * 1000


# -- the child processes ----------------------------------------------------------------------------


def _catch_up(db: Path, events: Path) -> int:
    from services.readside.projection import Projection

    projection = Projection(db, events)
    try:
        return projection.catch_up()
    finally:
        projection.close()


def _bare_ingest(db: Path, events: Path) -> int:
    import duckdb

    with duckdb.connect(str(db)) as con:
        con.execute(BARE_INGEST, [str(events / "*.jsonl")])
        return con.execute("SELECT count(*) FROM raw").fetchone()[0]


def main(argv: list[str]) -> None:
    mode, db, events = argv
    ingest = {"catch-up": _catch_up, "bare-ingest": _bare_ingest}[mode]
    started, cpu = time.perf_counter(), time.process_time()
    applied = ingest(Path(db), Path(events))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"events": applied, "seconds": seconds, "cpu_seconds": round(cpu, 2), "peak_rss_bytes": peak}))


if __name__ == "__main__":
    main(sys.argv[1:])
