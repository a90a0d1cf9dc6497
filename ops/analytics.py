"""`darkroom ops stats | query | rebuild | export`.

DuckDB lets one process hold the projection file, so these work in one of two ways: when no
Darkroom runs on this data directory they open the file themselves (catching it up with the event
log first); when the ingress holds it, they ask the ingress (admin routes under /v1/ops) with
DARKROOM_KEY or the first admin key in the data directory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx

from schemas.layout import DataLayout
from schemas.settings import Settings
from services.readside import queries
from services.readside.errors import QueryFailed
from services.readside.projection import Projection


class OpsError(RuntimeError):
    """What went wrong, worded for the operator."""


@contextmanager
def direct(settings: Settings) -> Iterator[Projection | None]:
    """The projection opened here and caught up, or None when a running ingress holds the file."""
    layout = DataLayout(settings.data_dir)
    try:
        projection = Projection(layout.analytics_db, layout.events_dir)
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise
        yield None
        return
    try:
        projection.catch_up()
        yield projection
    finally:
        projection.close()


class Remote:
    """The running ingress's /v1/ops routes."""

    def __init__(self, settings: Settings):
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        token = os.environ.get("DARKROOM_KEY") or _first_admin_key(DataLayout(settings.data_dir))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=f"http://{host}:{settings.port}", headers=headers, timeout=600)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            answer = self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise OpsError(f"the projection is held by another process, and the API at {self.client.base_url} "
                           f"did not answer ({exc}); is `darkroom run` running with these settings?") from None
        if answer.status_code in (401, 403):
            raise OpsError("the API refused the key: set DARKROOM_KEY to an admin key (`darkroom keys create --admin`)")
        if answer.status_code >= 400:
            raise OpsError(answer.json().get("message", answer.text))
        return answer.json()


def _first_admin_key(layout: DataLayout) -> str | None:
    path = layout.state_dir / "first-admin-key"
    return path.read_text().strip() if path.exists() else None


def stats(settings: Settings) -> dict:
    with direct(settings) as projection:
        if projection is None:
            return Remote(settings).call("GET", "/v1/ops/stats")
        with projection.cursor() as cur:
            return {"queue": queries.detailed_stats(cur, queries.Scope(everyone=True)),
                    "projection": {"events_applied": projection.position.events, "pending_bytes": 0,
                                   "lag_seconds": 0.0}}


def query(settings: Settings, sql: str, max_rows: int) -> dict:
    queries.check_read_only(sql)  # refuse before touching anything
    with direct(settings) as projection:
        if projection is None:
            return Remote(settings).call("POST", "/v1/ops/query", {"sql": sql, "max_rows": max_rows})
        with projection.cursor() as cur:
            try:
                columns, rows, truncated = queries.run_query(cur, sql, max_rows=max_rows,
                                                             seconds=settings.ops_query_seconds)
            except (duckdb.Error, QueryFailed) as exc:
                raise OpsError(f"sql: {exc}") from None
        return {"columns": columns, "rows": [list(row) for row in rows], "truncated": truncated}


def rebuild(settings: Settings) -> dict:
    with direct(settings) as projection:
        if projection is None:
            return Remote(settings).call("POST", "/v1/ops/rebuild")
        started = time.monotonic()
        events = projection.rebuild()
        return {"events": events, "seconds": round(time.monotonic() - started, 3)}


def export(settings: Settings, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    with direct(settings) as projection:
        if projection is not None:
            with projection.cursor() as cur:
                return queries.export_parquet(cur, str(folder.resolve()))
    # The ingress writes a snapshot under its data directory; this machine holds that directory.
    made = Remote(settings).call("POST", "/v1/ops/export")
    return [shutil.copy2(path, folder / Path(path).name) for path in made["files"]]


# -- printing ---------------------------------------------------------------------------------------


def render_table(columns: list[str], rows: list[list]) -> str:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(row) for row in cells)])


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def render_stats(found: dict) -> str:
    queue, projection = found["queue"], found["projection"]
    statuses = [*queries.COUNTED, "total"]
    rows = [["all", *(queue[s] for s in statuses)], ["last 24 h", *(queue["recent_24h"][s] for s in statuses)]]
    rows += [[f"model {name}", *(counts[s] for s in statuses)] for name, counts in queue["models"].items()]
    return "\n".join([
        render_table(["jobs", *statuses], rows),
        "",
        f"queue size {queue['queue_size']}, mean processing time {queue['avg_processing_time_seconds']} s, "
        f"failure rate {queue['failure_rate']} %",
        f"projection: {projection['events_applied']} events applied, {projection['pending_bytes']} bytes behind "
        f"(lag {projection['lag_seconds']} s), as of {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
    ])


def to_json(value: object) -> str:
    return json.dumps(value, indent=2, default=str)
