"""The DuckDB projection of the event log: jobs and images as rows, for queue statistics, lists,
the gallery and ops queries.

- Ingests `events/*.jsonl` incrementally from a stored position (file, byte offset); only whole
  lines are read, so a line the recorder is still writing waits for the next round.
- Each batch is folded through the job state machine (`schemas.lifecycle`, the same one the
  recorder uses for job documents) and written, rows and new position, in one transaction: a
  crash mid-batch leaves the old position, and the batch is applied again (upserts by id, so
  applying an event twice changes nothing).
- Can always be rebuilt from scratch by replaying the log (`rebuild`).

One process owns the file (DuckDB lets no other process open it while it is open for writing):
the ingress, which hosts the read side (`services.readside.host`) and so answers the queries.
`python -m services.readside.projection DB EVENTS` catches a file up from the command line (tests
use it to kill a catch-up mid-batch).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import msgspec
import pyarrow as pa

from schemas.events import (
    AnyEvent,
    Event,
    ImageDeleted,
    ImageExpired,
    ImageSaved,
    JobAccepted,
    JobCancelled,
    JobCompleted,
)
from schemas.jobs import ACTIVE_STATUSES, GenerationSettings, ImageRecord, JobDocument
from schemas.lifecycle import apply_event

BATCH_BYTES = 16 << 20  # of log per transaction (~50k events)
# Documents kept in memory: active jobs always, plus the most recently created ended ones.
CACHED_DOCUMENTS = 20_000
BIG_CATCH_UP = 500_000  # events; after a catch-up this long the WAL is checkpointed
# After a catch-up, a WAL past this is checkpointed too: DuckDB holds what the WAL holds in
# memory until a checkpoint, so a steady trickle of events must not grow the process for ever.
CHECKPOINT_WAL_BYTES = 16 << 20
REBUILDING = "_rebuilding"  # suffix of the tables a rebuild fills before it swaps them in
TABLES = ("jobs", "images", "projection_state")


def lock_down(con: duckdb.DuckDBPyConnection, memory_limit: str) -> None:
    """The database touches no file but its own and loads nothing: operators' SQL runs here, so
    it must not read host files, fetch URLs or install extensions (then the settings are locked)."""
    for statement in (
        f"SET memory_limit = '{memory_limit}'",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET allow_community_extensions = false",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ):
        con.execute(statement)
_decoder = msgspec.json.Decoder(AnyEvent)
_settings_decoder = msgspec.json.Decoder(GenerationSettings)
_encoder = msgspec.json.Encoder()

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs{s} (
    id VARCHAR PRIMARY KEY,
    owner VARCHAR,
    status VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    mode VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,
    original_prompt VARCHAR,
    negative_prompt VARCHAR,
    style VARCHAR,
    num_images INTEGER NOT NULL,
    settings VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    started_at TIMESTAMP,
    completed_at TIMESTAMP,
    updated_at TIMESTAMP NOT NULL,
    attempts INTEGER NOT NULL,
    error VARCHAR
);
CREATE TABLE IF NOT EXISTS images{s} (
    id VARCHAR PRIMARY KEY,
    job_id VARCHAR NOT NULL,
    owner VARCHAR,
    model VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,
    file_path VARCHAR NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    seed BIGINT NOT NULL,
    settings VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP,
    deleted_reason VARCHAR,
    -- lower(prompt || ' ' || model): what gallery search scans (one contains() per row)
    search VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS projection_state{s} (
    id INTEGER PRIMARY KEY,
    file VARCHAR NOT NULL,
    "offset" BIGINT NOT NULL,
    events BIGINT NOT NULL,
    applied_at TIMESTAMP,
    last_event_at TIMESTAMP
);
"""

_TEXT, _INT, _BIG, _TIME = pa.string(), pa.int32(), pa.int64(), pa.timestamp("us")
JOB_TYPES = {"id": _TEXT, "owner": _TEXT, "status": _TEXT, "model": _TEXT, "mode": _TEXT, "prompt": _TEXT,
             "original_prompt": _TEXT, "negative_prompt": _TEXT, "style": _TEXT, "num_images": _INT,
             "settings": _TEXT, "created_at": _TIME, "started_at": _TIME, "completed_at": _TIME,
             "updated_at": _TIME, "attempts": _INT, "error": _TEXT}
IMAGE_TYPES = {"id": _TEXT, "job_id": _TEXT, "owner": _TEXT, "model": _TEXT, "prompt": _TEXT, "file_path": _TEXT,
               "width": _INT, "height": _INT, "seed": _BIG, "settings": _TEXT, "created_at": _TIME,
               "deleted_at": _TIME, "deleted_reason": _TEXT}
JOB_COLUMNS = tuple(JOB_TYPES)
IMAGE_COLUMNS = tuple(IMAGE_TYPES)


def _arrow(rows: list[tuple], types: dict[str, pa.DataType]) -> pa.Table:
    """Rows as a columnar table: DuckDB ingests it in bulk (executemany goes row by row)."""
    columns = list(zip(*rows, strict=True))
    return pa.table({name: pa.array(column, type=kind) for (name, kind), column in zip(types.items(), columns, strict=True)})


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None


# Rows hold aware datetimes; Arrow stores them as UTC in the naive TIMESTAMP columns.
def job_row(doc: JobDocument) -> tuple:
    return (doc.id, doc.owner, doc.status, doc.model, doc.mode, doc.prompt, doc.original_prompt, doc.negative_prompt,
            doc.style, doc.settings.num_images, _encoder.encode(doc.settings).decode(), doc.created_at,
            doc.started_at, doc.completed_at, doc.updated_at, doc.attempts, doc.error)


def image_row(image: ImageRecord, doc: JobDocument | None) -> tuple:
    meta = image.metadata
    return (image.id, meta.job_id, doc.owner if doc else None, meta.model_id, meta.prompt, image.file_path,
            image.width, image.height, meta.seed, _encoder.encode(meta.settings).decode(), image.created_at,
            None, None)


@dataclass
class Position:
    file: str = ""
    offset: int = 0
    events: int = 0
    last_event_at: datetime | None = None


@dataclass
class Batch:
    """What one batch changes, ready for DuckDB: Arrow tables of rows, and the position it ends at."""

    jobs: pa.Table | None
    images: pa.Table | None
    removed: pa.Table | None
    position: Position
    cancelled: pa.Table | None = None  # jobs cancelled in this batch: their image rows are deleted



class Projection:
    """Owns the DuckDB file: applies the event log to it and hands out cursors to query it."""

    def __init__(self, db_path: Path, events_dir: Path, *, batch_bytes: int = BATCH_BYTES, memory_limit: str = "512MB",
                 con: duckdb.DuckDBPyConnection | None = None, suffix: str = ""):
        self.db_path = db_path
        self.events_dir = events_dir
        self.batch_bytes = batch_bytes
        self.suffix = suffix  # a rebuild's shadow tables share the connection, under other names
        self.jobs, self.images, self.state = (f"{table}{suffix}" for table in TABLES)
        if con is None:
            con = duckdb.connect(str(db_path))
            # A second connection in this process shares the database instance, locked down already.
            if not con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
                # Checkpoint less often than the default 16 MB of WAL: a catch-up over a large log
                # runs 1.4x faster; catch-ups end with a checkpoint when the WAL grew.
                con.execute("SET checkpoint_threshold = '256MB'")
                lock_down(con, memory_limit)
        self.con = con
        self.con.execute(SCHEMA.format(s=suffix))
        # `position`: what is committed; `_read_at`: where the next batch starts (ahead of `position`
        # while a batch is being written).
        self.position = self._read_at = self._load_position()
        # Documents of active and recently ended jobs, oldest first, so most events fold without a query.
        self._docs: dict[str, JobDocument] = {}
        self._behind_since: float | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="projection-writer")

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one thread (DuckDB cursors must not be shared across threads)."""
        return self.con.cursor()

    def close(self) -> None:
        self._writer.shutdown()
        self.con.close()

    # -- position ------------------------------------------------------------------------------

    def _load_position(self) -> Position:
        row = self.con.execute(f'SELECT file, "offset", events, last_event_at FROM {self.state} WHERE id = 1').fetchone()
        return Position(*row) if row else Position()

    def pending_bytes(self) -> int:
        """How much of the log is not applied yet."""
        total, position = 0, self.position
        for path in self._files():
            if path.name >= position.file:  # older files are applied: no need to look at them
                with contextlib.suppress(FileNotFoundError):  # the janitor may remove an old one
                    size = path.stat().st_size
                    total += max(0, size - position.offset) if path.name == position.file else size
        return total

    def lag_seconds(self) -> float:
        """0 when caught up; else how long the log has been seen ahead of the projection (since the
        last catch-up that left nothing behind, or since this was first asked while behind: an idle
        hour before a new event must not read as an hour of lag)."""
        now = time.time()
        if self.pending_bytes() == 0:
            self._behind_since = None
            return 0.0
        if self._behind_since is None:
            self._behind_since = now
        return round(now - self._behind_since, 3)

    def _files(self) -> list[Path]:
        return sorted(self.events_dir.glob("*.jsonl")) if self.events_dir.is_dir() else []

    # -- ingest --------------------------------------------------------------------------------

    def catch_up(self, max_events: int | None = None) -> int:
        """Apply whatever the log holds beyond the position, in batches. Returns events applied.

        While DuckDB writes one batch (in a thread: it releases the GIL), the next is decoded and
        folded. Each batch commits its rows and its end position in one transaction. It stops at
        the end of what the log held when it last read, never chasing lines appended while it
        wrote: a transaction costs ~10 ms of CPU however few rows it holds, and a stream of events
        chased line by line cost the ingress most of a core (`darkroom bench capacity`). The next
        wake-up takes them, all together.
        """
        applied = 0
        writing: Future | None = None
        try:
            while max_events is None or applied < max_events:
                lines, file, offset, more = self._read_batch(self.batch_bytes)
                if not lines:
                    break
                with _no_gc_pauses():
                    batch = self._fold_batch(lines, file, offset, writing)
                if writing is not None:
                    writing.result()
                writing = self._writer.submit(self._write, batch)
                applied += len(lines)
                if not more:
                    break
            if writing is not None:
                writing.result()
            if applied and (applied > BIG_CATCH_UP or self._wal_bytes() > CHECKPOINT_WAL_BYTES):
                self._checkpoint()
        except BaseException:
            # The documents in memory ran ahead of what was committed: start again from the file.
            if writing is not None:
                with contextlib.suppress(BaseException):
                    writing.result()
            self._docs.clear()
            self.position = self._read_at = self._load_position()
            raise
        return applied

    def _checkpoint(self) -> None:
        """Write the WAL into the database file, unless a reader's transaction is open right now
        (then the next catch-up tries again; never abort a reader for it)."""
        try:
            self.con.execute("CHECKPOINT")
        except duckdb.TransactionException:
            pass

    def _wal_bytes(self) -> int:
        try:
            return self.db_path.with_name(self.db_path.name + ".wal").stat().st_size
        except FileNotFoundError:
            return 0

    def _read_batch(self, limit: int) -> tuple[list[bytes], str, int, bool]:
        """The whole lines in up to `limit` bytes after the position, from one file, where they
        end, and whether the log held more when read (the batch was full, or a later file exists)."""
        files = self._files()
        for path in files:
            if path.name < self._read_at.file:
                continue
            start = self._read_at.offset if path.name == self._read_at.file else 0
            if path.stat().st_size <= start:
                continue
            with path.open("rb") as handle:
                handle.seek(start)
                data = handle.read(limit)
                while data and b"\n" not in data and len(data) % limit == 0:  # a line longer than a batch
                    more = handle.read(limit)
                    if not more:
                        break
                    data += more
            end = data.rfind(b"\n") + 1  # whole lines only: the last one may still be written
            if end == 0:
                continue
            return data[:end].splitlines(), path.name, start + end, len(data) >= limit or path != files[-1]
        return [], self._read_at.file, self._read_at.offset, False

    def _fold_batch(self, lines: list[bytes], file: str, offset: int, writing: Future | None) -> Batch:
        """Fold a batch of log lines into the rows it changes (documents in memory move on)."""
        events = _decode(lines)
        accepted = {e.job_id for e in events if isinstance(e, JobAccepted)}
        missing = {e.job_id for e in events if e.job_id} - self._docs.keys() - accepted
        if missing:
            if writing is not None:
                writing.result()  # their rows may be in the batch being written
            self._load_missing(missing)
        jobs: dict[str, JobDocument] = {}
        images: dict[str, tuple] = {}
        removed: dict[str, tuple[datetime, str]] = {}
        cancelled: dict[str, datetime] = {}
        for event in events:
            self._fold(event, jobs, images, removed)
            if isinstance(event, JobCancelled) and event.job_id in jobs and jobs[event.job_id].status == "cancelled":
                cancelled[event.job_id] = _utc(event.occurred_at)
                for image_id, row in images.items():  # saved earlier in this batch
                    if row[1] == event.job_id:
                        images[image_id] = (*row[:-2], _utc(event.occurred_at), "cancelled")
        last_at = _utc(events[-1].occurred_at) if events else self._read_at.last_event_at
        self._read_at = Position(file, offset, self._read_at.events + len(lines), last_at)
        self._trim()
        return Batch(
            jobs=_arrow([job_row(doc) for doc in jobs.values()], JOB_TYPES) if jobs else None,
            images=_arrow(list(images.values()), IMAGE_TYPES) if images else None,
            removed=pa.table({"id": list(removed), "at": pa.array([at for at, _ in removed.values()], _TIME),
                              "why": [why for _, why in removed.values()]}) if removed else None,
            position=self._read_at,
            cancelled=pa.table({"id": list(cancelled), "at": pa.array(list(cancelled.values()), _TIME)})
            if cancelled else None,
        )

    def _write(self, batch: Batch) -> None:
        """Rows and position in one transaction."""
        with self.con.cursor() as cur:
            cur.execute("BEGIN")
            try:
                jobs, images = self.jobs, self.images
                if batch.jobs is not None:
                    cur.register("job_rows", batch.jobs)
                    cur.execute(f"INSERT OR REPLACE INTO {jobs} SELECT * FROM job_rows")
                if batch.images is not None:
                    cur.register("image_rows", batch.images)
                    # A row already deleted stays deleted (a replayed batch must not bring it back).
                    cur.execute(f"""INSERT INTO {images} SELECT *, lower(prompt || ' ' || model) FROM image_rows
                                    ON CONFLICT (id) DO NOTHING""")
                if batch.removed is not None:
                    cur.register("gone", batch.removed)
                    cur.execute(f"""UPDATE {images} SET deleted_at = gone.at, deleted_reason = gone.why FROM gone
                                    WHERE {images}.id = gone.id AND {images}.deleted_at IS NULL""")
                if batch.cancelled is not None:  # a cancelled job keeps no image
                    cur.register("cancelled_jobs", batch.cancelled)
                    cur.execute(f"""UPDATE {images} SET deleted_at = c.at, deleted_reason = 'cancelled' FROM cancelled_jobs c
                                    WHERE {images}.job_id = c.id AND {images}.deleted_at IS NULL""")
                at = batch.position
                cur.execute(f"INSERT OR REPLACE INTO {self.state} VALUES (1, ?, ?, ?, ?, ?)",
                            (at.file, at.offset, at.events, datetime.now(UTC).replace(tzinfo=None), at.last_event_at))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        self.position = batch.position

    def _fold(self, event: Event, jobs: dict, images: dict, removed: dict) -> None:
        if isinstance(event, (ImageDeleted, ImageExpired)):
            # Only the image row changes: a job row must not depend on whether its document
            # happened to be in memory (a document rebuilt from its row has no image list).
            gone = (event.occurred_at, "expired" if isinstance(event, ImageExpired) else "deleted")
            if event.image_id in images:  # listed earlier in this batch: insert it as deleted
                images[event.image_id] = images[event.image_id][:-2] + gone
            # And mark the row if it is in the table already: job.completed lists images an earlier
            # batch inserted, so being listed in this batch does not mean the row is new.
            removed[event.image_id] = gone
            return
        doc = self._docs.get(event.job_id)
        new = apply_event(doc, event)
        if new is not None:
            if doc is None:
                self._docs[new.id] = new
            jobs[new.id] = new
        owner_doc = new or doc
        if isinstance(event, ImageSaved):
            images.setdefault(event.image.id, image_row(event.image, owner_doc))
        elif isinstance(event, JobCompleted):
            for image in event.images:
                images.setdefault(image.id, image_row(image, owner_doc))

    def _trim(self) -> None:
        """After a batch: forget the oldest ended jobs beyond the cache size (active jobs stay)."""
        excess = len(self._docs) - CACHED_DOCUMENTS
        if excess <= 0:
            return
        for job_id in list(itertools.islice(self._docs, 2 * excess)):
            doc = self._docs.pop(job_id)
            if doc.status in ACTIVE_STATUSES:
                self._docs[job_id] = doc  # to the young end
            else:
                excess -= 1
                if not excess:
                    break

    def _load_missing(self, job_ids: set[str]) -> None:
        """Documents for jobs this batch touches that are not in memory, rebuilt from their rows."""
        if not job_ids:
            return
        select = f"SELECT {', '.join(JOB_COLUMNS)} FROM {self.jobs}"
        with self.con.cursor() as cur:
            if len(job_ids) <= 64:  # the primary-key index answers each at once; a join scans the table
                rows = [row for job_id in job_ids for row in cur.execute(f"{select} WHERE id = ?", [job_id]).fetchall()]
            else:
                rows = cur.execute(f"{select} WHERE id IN (SELECT unnest(?))", [list(job_ids)]).fetchall()
        for row in rows:
            doc = _doc_from_row(dict(zip(JOB_COLUMNS, row, strict=True)))
            self._docs[doc.id] = doc

    def rebuild(self) -> int:
        """Replay the whole log into fresh tables, then swap them in with one transaction: readers
        see the old rows until the new ones are complete, never an empty or partial projection."""
        for table in TABLES:
            self.con.execute(f"DROP TABLE IF EXISTS {table}{REBUILDING}")
        shadow = Projection(self.db_path, self.events_dir, batch_bytes=self.batch_bytes, con=self.con, suffix=REBUILDING)
        try:
            applied = shadow.catch_up()
        finally:
            shadow._writer.shutdown()
        with self.con.cursor() as cur:
            cur.execute("BEGIN")
            try:
                for table in TABLES:
                    cur.execute(f"DROP TABLE {table}")
                    cur.execute(f"ALTER TABLE {table}{REBUILDING} RENAME TO {table}")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        self.position = self._read_at = shadow.position
        self._docs = shadow._docs
        self._checkpoint()
        return applied + self.catch_up()  # what arrived while it was replaying


@contextlib.contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """A batch makes a few hundred thousand small objects, and no reference cycles: without this,
    the cyclic collector walks every cached document again and again and halves the rate."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _decode(lines: list[bytes]) -> list[Event]:
    """A line torn by a crash is skipped: the recorder wrote the event again after it."""
    events = []
    decode = _decoder.decode
    for line in lines:
        try:
            events.append(decode(line))
        except msgspec.MsgspecError:
            continue
    return events


def _doc_from_row(row: dict) -> JobDocument:
    """Enough of a job's document for the state machine (status, attempts, settings, owner)."""
    def aware(value):
        return value.replace(tzinfo=UTC) if value is not None else None

    return JobDocument(
        id=row["id"], status=row["status"], model=row["model"], prompt=row["prompt"],
        negative_prompt=row["negative_prompt"], original_prompt=row["original_prompt"], style=row["style"],
        settings=_settings_decoder.decode(row["settings"]), owner=row["owner"], created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]), started_at=aware(row["started_at"]),
        completed_at=aware(row["completed_at"]), attempts=row["attempts"], error=row["error"], mode=row["mode"],
    )


if __name__ == "__main__":
    import sys

    projection = Projection(Path(sys.argv[1]), Path(sys.argv[2]), batch_bytes=int(sys.argv[3]) if len(sys.argv) > 3 else BATCH_BYTES)
    print(projection.catch_up())
