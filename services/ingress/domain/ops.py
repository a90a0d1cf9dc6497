"""What operators ask of the running ingress: health, metrics, and the projection's admin queries
(`darkroom ops` calls these while the ingress holds the DuckDB file)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import msgspec

from schemas.api import (
    ExportAnswer,
    Health,
    OpsQueryResult,
    OpsStats,
    ProjectionStatus,
    QueueStats,
    RebuildAnswer,
)
from schemas.layout import DataLayout
from schemas.topology import STAGE_BINDINGS
from services.files import write_atomic
from services.ingress.auth import Principal
from services.ingress.domain.errors import Invalid, Unavailable
from services.ingress.domain.links import BusLink
from services.metrics import Meter
from services.readside import Busy, NotReadOnly, QueryFailed, ReadSide, Scope, queries

EVERYONE = Scope(everyone=True)


def data_dir_writable(layout: DataLayout) -> bool:
    """Probe by writing a small file durably: `os.access` says yes on a full disk."""
    probe = layout.base / f".health-probe.{os.getpid()}"
    try:
        write_atomic(probe, b"darkroom health probe\n" * 200)
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


async def health(*, bus: BusLink, layout: DataLayout, readside: ReadSide | None, detailed: bool) -> Health:
    """Broker, data directory and workers: `ok`, `degraded` (no generator) or `unavailable`; the
    details only when `detailed` (an admin asks): the public answer says nothing of the volume."""
    broker_ok = bus.connected
    data_ok = await asyncio.to_thread(data_dir_writable, layout)
    generators = 0
    if broker_ok:
        try:
            generators = await bus.require().consumer_count("generator")
        except Exception:  # noqa: BLE001 - a failed probe means "not known to be healthy"
            broker_ok = False
    status = "unavailable" if not (broker_ok and data_ok) else "ok" if generators else "degraded"
    if not detailed:
        return Health(status=status)
    return Health(
        status=status,
        broker="connected" if broker_ok else "unreachable",
        data_dir="writable" if data_ok else "not writable",
        generators=generators,
        projection=await projection_status(readside) if readside is not None else None,
    )


async def projection_status(readside: ReadSide) -> ProjectionStatus:
    return msgspec.convert(await asyncio.to_thread(readside.status), ProjectionStatus)


async def metrics(principal: Principal, *, meter: Meter, readside: ReadSide, bus: BusLink,
                  models: Iterable[str] = ()) -> bytes:
    """The Prometheus text of `meter`, after reading what no event says: jobs by status and the
    projection's lag (the read side), each stage's queue depth (and each of `models`' generator
    queue) and the dead letters (the broker)."""
    principal.require_admin()
    projection = await projection_status(readside)
    stats = await readside.query(queries.queue_stats, EVERYONE)
    for name in queries.COUNTED:
        meter.jobs.labels(name).set(stats[name])
    meter.projection_lag.set(projection.lag_seconds)
    meter.projection_pending.set(projection.pending_bytes)
    meter.projection_events.set(projection.events_applied)
    if bus.connected:
        topology = bus.require().topology
        queues = {topology.queue(stage): stage for stage in STAGE_BINDINGS}
        # Affinity routing: each model's generator queue under its own label (`generator.<model>`);
        # `generator` counts every job waiting for a generator, in its queue and the models' queues.
        model_queues = {topology.model_queue(model): f"generator.{model}" for model in models}
        try:
            depths = await bus.require().queue_depths([*queues, *model_queues, topology.dead_letters])
        except Exception:  # noqa: BLE001 - a failed probe leaves the last numbers; the rest still answer
            depths = {}
        for queue, (messages, consumers) in depths.items():
            if queue == topology.dead_letters:
                meter.dead_letters.set(messages)
            else:
                label = queues.get(queue) or model_queues[queue]
                meter.queue_messages.labels(label).set(messages)
                meter.queue_consumers.labels(label).set(consumers)
        generator = topology.queue("generator")
        if generator in depths:
            waiting = sum(depths[queue][0] for queue in (generator, *model_queues) if queue in depths)
            meter.queue_messages.labels("generator").set(waiting)
    return meter.exposition()


async def ops_stats(principal: Principal, *, readside: ReadSide) -> OpsStats:
    principal.require_admin()
    stats = await readside.query(queries.detailed_stats, EVERYONE)
    return OpsStats(queue=msgspec.convert(stats, QueueStats), projection=await projection_status(readside))


async def run_sql(sql: str, max_rows: int, principal: Principal, *, readside: ReadSide) -> OpsQueryResult:
    """SELECT statements only, in a read-only transaction, stopped after DARKROOM_OPS_QUERY_SECONDS;
    at most `max_rows`."""
    principal.require_admin()
    try:
        columns, rows, truncated = await readside.operator_query(queries.run_query, sql, max_rows=max_rows,
                                                                      seconds=readside.settings.ops_query_seconds)
    except NotReadOnly as exc:
        raise Invalid(str(exc)) from None
    except Busy as exc:
        raise Unavailable(str(exc), retry_after=5) from None
    except QueryFailed as exc:
        raise Invalid(f"sql: {exc}") from None
    return OpsQueryResult(columns=columns, rows=[list(row) for row in rows], truncated=truncated)


async def rebuild(principal: Principal, *, readside: ReadSide) -> RebuildAnswer:
    principal.require_admin()
    started = time.monotonic()
    events = await readside.rebuild()
    return RebuildAnswer(events=events, seconds=round(time.monotonic() - started, 3))


async def export(principal: Principal, *, readside: ReadSide, layout: DataLayout) -> ExportAnswer:
    """jobs.parquet and images.parquet in a new folder under the data directory's `exports/`."""
    principal.require_admin()
    folder = layout.exports_dir / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    files = await readside.current_query(queries.export_parquet, str(folder))
    return ExportAnswer(folder=str(folder), files=files)
