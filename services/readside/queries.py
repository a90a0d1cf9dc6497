"""Read-side queries over the DuckDB projection: queue statistics, job lists, the gallery, queue
positions, and operators' ad-hoc SQL. Each takes a cursor (one per thread) and plain values;
`owner` limits rows to one tenant (None with `everyone=True` means no limit, for admins).

These run on a bare cursor (the ingress's read side runs them in worker threads and translates
DuckDB's errors; `darkroom ops` runs them on a projection it opened itself).
"""

from __future__ import annotations

import base64
import math
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import msgspec
import pyarrow.parquet as pq

from services.readside.errors import BadCursor, NotReadOnly, QueryFailed

COUNTED = ("pending", "processing", "completed", "failed", "cancelled")
MAX_PAGE = 50
MAX_QUERY_ROWS = 10_000


@dataclass(frozen=True)
class Scope:
    """Whose rows a query sees: one owner's, or everyone's (admins)."""

    owner: str | None = None
    everyone: bool = False

    def where(self, column: str = "owner") -> tuple[str, list]:
        if self.everyone:
            return "TRUE", []
        if self.owner is None:
            return f"{column} IS NULL", []
        return f"{column} = ?", [self.owner]


def _naive(value: datetime) -> datetime:
    """UTC without a zone, as the tables store it (a value without a zone is taken as UTC already)."""
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


def _counts() -> dict[str, int]:
    return dict.fromkeys((*COUNTED, "total"), 0)


# -- queue statistics -------------------------------------------------------------------------------


def queue_stats(cur: duckdb.DuckDBPyConnection, scope: Scope) -> dict:
    """CyberImage's GET /queue: counts by status, total, queue_size (pending), plus cancelled."""
    where, params = scope.where()
    stats = _counts()
    for status, count in cur.execute(f"SELECT status, count(*) FROM jobs WHERE {where} GROUP BY status", params).fetchall():
        stats[status] = count
        stats["total"] += count
    stats["queue_size"] = stats["pending"]
    return stats


def detailed_stats(cur: duckdb.DuckDBPyConnection, scope: Scope, now: datetime | None = None) -> dict:
    """GET /queue?detailed=true: the basic counts, the last 24 hours, per-model counts, the mean
    processing time (started to completed) and the failure rate (failed / finished, in %) in one scan."""
    now = now or datetime.now(UTC)
    where, params = scope.where()
    rows = cur.execute(
        f"""SELECT model, status, created_at >= ? AS recent, count(*) AS n,
                   sum(epoch(completed_at - started_at)) FILTER (status = 'completed' AND started_at IS NOT NULL),
                   count(*) FILTER (status = 'completed' AND started_at IS NOT NULL)
            FROM jobs WHERE {where} GROUP BY ALL""",
        [_naive(now - timedelta(hours=24)), *params],
    ).fetchall()
    stats, recent, models = _counts(), _counts(), {}
    seconds, timed = 0.0, 0
    for model, status, is_recent, n, busy, busy_n in rows:
        per_model = models.setdefault(model, _counts())
        for bucket in (stats, per_model, *((recent,) if is_recent else ())):
            bucket[status] = bucket.get(status, 0) + n
            bucket["total"] += n
        seconds += busy or 0.0
        timed += busy_n
    stats["queue_size"] = stats["pending"]
    finished = stats["completed"] + stats["failed"]
    return stats | {
        "recent_24h": recent,
        "avg_processing_time_seconds": round(seconds / timed, 2) if timed else 0.0,
        "models": dict(sorted(models.items())),
        "failure_rate": round(100.0 * stats["failed"] / finished, 2) if finished else 0.0,
    }


# -- cursors (keyset pagination) ---------------------------------------------------------------------


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = msgspec.json.encode([created_at.isoformat(), row_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = msgspec.json.decode(raw, type=tuple[str, str])
        at = datetime.fromisoformat(created)
        _naive(at)  # in UTC it must still be a date (9999-12-31T23:59-23:59 is not)
        return at, row_id
    except (ValueError, OverflowError, msgspec.MsgspecError):
        raise BadCursor("cursor: not one this server handed out (use next_cursor from the previous page)") from None


# -- job lists ---------------------------------------------------------------------------------------

JOB_FIELDS = ("id", "status", "model", "mode", "prompt", "num_images", "owner", "created_at", "started_at",
              "completed_at", "updated_at", "attempts", "error")


def list_jobs(cur: duckdb.DuckDBPyConnection, scope: Scope, *, status: str | None = None, model: str | None = None,
              limit: int = 20, cursor: str | None = None) -> tuple[list[dict], str | None]:
    """Jobs newest first, optionally of one status or model; keyset-paginated. Returns (jobs, next cursor)."""
    where, params = scope.where()
    clauses = [where]
    if status is not None:
        clauses.append("status = ?")
        params.append(status)
    if model is not None:
        clauses.append("model = ?")
        params.append(model)
    if cursor is not None:
        created, row_id = decode_cursor(cursor)
        clauses.append("(created_at, id) < (?, ?)")
        params += [_naive(created), row_id]
    rows = cur.execute(
        f"SELECT {', '.join(JOB_FIELDS)} FROM jobs WHERE {' AND '.join(clauses)} "
        f"ORDER BY created_at DESC, id DESC LIMIT ?", [*params, limit + 1],
    ).fetchall()
    jobs = [_job(row) for row in rows[:limit]]
    more = len(rows) > limit
    return jobs, encode_cursor(rows[limit - 1][7], rows[limit - 1][0]) if more else None


def _job(row: tuple) -> dict:
    job = dict(zip(JOB_FIELDS, row, strict=True))
    for name in ("created_at", "started_at", "completed_at", "updated_at"):
        job[name] = _aware(job[name])
    job["status_url"] = f"/v1/jobs/{job['id']}"
    return job


# -- gallery -----------------------------------------------------------------------------------------

IMAGE_FIELDS = ("id", "job_id", "model", "prompt", "width", "height", "seed", "settings", "created_at")


def gallery(cur: duckdb.DuckDBPyConnection, scope: Scope, *, page: int = 1, limit: int = 20,
            search: str | None = None, model: str | None = None, cursor: str | None = None) -> dict:
    """CyberImage's GET /gallery: images newest first, `search` matching prompt or model (case
    insensitive), `model` exact. Pages by number (OFFSET) or, for deep pages, by `cursor`."""
    where, params = scope.where()
    clauses = ["deleted_at IS NULL", where]
    if search:
        clauses.append("contains(search, lower(?))")  # case-insensitive substring of prompt or model
        params.append(search)
    if model:
        clauses.append("model = ?")
        params.append(model)
    filtered = " AND ".join(clauses)
    total = cur.execute(f"SELECT count(*) FROM images WHERE {filtered}", params).fetchone()[0]
    page_clauses, page_params = [filtered], list(params)
    offset = (page - 1) * limit
    if cursor is not None:
        created, row_id = decode_cursor(cursor)
        page_clauses.append("(created_at, id) < (?, ?)")
        page_params += [_naive(created), row_id]
        offset = 0
    rows = cur.execute(
        f"SELECT {', '.join(IMAGE_FIELDS)} FROM images WHERE {' AND '.join(page_clauses)} "
        f"ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?", [*page_params, limit + 1, offset],
    ).fetchall()
    images = [_image(row) for row in rows[:limit]]
    more = len(rows) > limit
    return {
        "images": images,
        "page": page if cursor is None else None,
        "limit": limit,
        "has_more": more,
        "total": total,
        "next_cursor": encode_cursor(rows[limit - 1][8], rows[limit - 1][0]) if more else None,
    }


def _image(row: tuple) -> dict:
    image = dict(zip(IMAGE_FIELDS, row, strict=True))
    image["model_id"] = image.pop("model")
    image["settings"] = msgspec.json.decode(image["settings"])
    image["created_at"] = _aware(image["created_at"])
    image["url"] = f"/v1/images/{image['id']}"
    return image


# -- queue position ----------------------------------------------------------------------------------


ETA_GRAIN = 5.0  # seconds: estimates are rounded up to this, so they say nothing exact about others' volume


def queue_position(cur: duckdb.DuckDBPyConnection, job_id: str, created_at: datetime, owner: str | None,
                   now: datetime | None = None) -> tuple[int, float | None]:
    """(1-based place among the owner's own pending jobs, estimated seconds until it finishes).

    The place counts only the owner's jobs, so a tenant learns nothing of others' volume; the
    estimate accounts for all work ahead (every tenant's), rounded up to ETA_GRAIN. It uses the
    jobs finished in the last 15 minutes (all workers together), or the mean processing time of
    the last 100 when the service was idle; None when there is no history yet."""
    now = now or datetime.now(UTC)
    mine, ahead, done_recently = cur.execute(
        """SELECT (SELECT count(*) FROM jobs WHERE status = 'pending' AND (created_at, id) < (?, ?)
                      AND owner IS NOT DISTINCT FROM ?),
                  (SELECT count(*) FROM jobs WHERE status = 'pending' AND (created_at, id) < (?, ?)),
                  (SELECT count(*) FROM jobs WHERE status = 'completed' AND completed_at >= ?)""",
        [_naive(created_at), job_id, owner, _naive(created_at), job_id, _naive(now - timedelta(minutes=15))],
    ).fetchone()
    position, work = mine + 1, ahead + 1
    if done_recently:
        return position, _coarse(work * 900.0 / done_recently)
    mean = cur.execute(
        """SELECT avg(epoch(completed_at - started_at)) FROM (
               SELECT completed_at, started_at FROM jobs WHERE status = 'completed' AND started_at IS NOT NULL
               ORDER BY completed_at DESC LIMIT 100)""",
    ).fetchone()[0]
    return position, _coarse(work * mean) if mean is not None else None


def _coarse(seconds: float) -> float:
    return math.ceil(seconds / ETA_GRAIN) * ETA_GRAIN


# -- retention ---------------------------------------------------------------------------------------


def expired_images(cur: duckdb.DuckDBPyConnection, cutoff: datetime, limit: int = 500) -> list[tuple[str, str, str]]:
    """(image id, job id, file path) of the oldest images created before `cutoff` still held."""
    return cur.execute(
        "SELECT id, job_id, file_path FROM images WHERE deleted_at IS NULL AND created_at < ? "
        "ORDER BY created_at LIMIT ?", [_naive(cutoff), limit],
    ).fetchall()


# -- operators' SQL ----------------------------------------------------------------------------------

EXPORTED_TABLES = ("jobs", "images")


def export_parquet(cur: duckdb.DuckDBPyConnection, folder: str) -> list[str]:
    """Write each table to <folder>/<table>.parquet (a consistent snapshot); returns the files.

    Written by pyarrow, not DuckDB's COPY: the database itself may touch no file but its own."""
    files = []
    cur.execute("BEGIN TRANSACTION READ ONLY")
    try:
        for table in EXPORTED_TABLES:
            target = f"{folder}/{table}.parquet"
            pq.write_table(cur.sql(f"SELECT * FROM {table}").to_arrow_table(), target, compression="zstd")
            files.append(target)
    finally:
        cur.execute("ROLLBACK")
    return files


def _quote(path: str) -> str:
    return path.replace("'", "''")



def check_read_only(sql: str) -> None:
    """Parse (not pattern-match) the SQL: every statement must be a plain SELECT."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise NotReadOnly(f"sql: {exc}") from None
    if not statements:
        raise NotReadOnly("sql: no statement given")
    for statement in statements:
        if statement.type != duckdb.StatementType.SELECT:
            raise NotReadOnly(f"sql: only SELECT queries are allowed here, not {statement.type.name}")


def run_query(cur: duckdb.DuckDBPyConnection, sql: str, *, seconds: float,
              max_rows: int = MAX_QUERY_ROWS) -> tuple[list[str], list[tuple], bool]:
    """Run an operator's SELECT in a read-only transaction, interrupted after `seconds`.
    Returns (column names, rows, truncated)."""
    check_read_only(sql)
    timer = threading.Timer(seconds, cur.interrupt)
    cur.execute("BEGIN TRANSACTION READ ONLY")
    timer.start()
    try:
        result = cur.execute(sql)
        columns = [d[0] for d in result.description or []]
        rows = result.fetchmany(max_rows + 1)
    except duckdb.InterruptException:
        raise QueryFailed(f"interrupted after {seconds:g} s (DARKROOM_OPS_QUERY_SECONDS); narrow the query") from None
    finally:
        timer.cancel()
        cur.execute("ROLLBACK")
    return columns, rows[:max_rows], len(rows) > max_rows

