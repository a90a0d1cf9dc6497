"""What the ingress does for each request, free of HTTP: accept, cancel, read."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog

from schemas.api import JobCancelAnswer, JobRequest, Quota
from schemas.catalog import Catalog
from services.readside import queries
from schemas.events import (
    ImageDeleted,
    JobAccepted,
    JobCancelled,
    JobCancelRequested,
    SweepResult,
    SweepStalled,
    new_id,
    utcnow,
)
from schemas.jobs import TERMINAL_STATUSES, ImageRecord, JobDocument
from schemas.layout import DataLayout, is_job_id, split_image_id
from schemas.settings import Settings
from services.bus import BrokerUnavailable, Bus
from services.files import create_file, publish_staged, temp_path, write_atomic_many
from services.ingress.auth import UNLIMITED, KeyStore, Limits, Principal
from services.ingress.errors import ApiError, not_found
from services.ingress.idempotency import ABANDONED_SECONDS, IdempotencyStore, check_key, fingerprint
from services.readside import ReadSide
from services.ingress.requests import Resolved, resolve_job

log = structlog.get_logger("ingress")
_encoder = msgspec.json.Encoder()
_doc_decoder = msgspec.json.Decoder(JobDocument)
_record_decoder = msgspec.json.Decoder(ImageRecord)


class _Head(msgspec.Struct):
    owner: str | None = None
    status: str = ""


_head_decoder = msgspec.json.Decoder(_Head)


@dataclass
class Ingress:
    """What request handlers need: settings, catalog, data layout, and the bus once connected."""

    settings: Settings
    catalog: Catalog
    layout: DataLayout
    bus: Bus | None = None
    connecting: asyncio.Task | None = field(default=None, repr=False)
    readside: ReadSide | None = field(default=None, repr=False)
    idempotency: IdempotencyStore = field(init=False)
    keys: KeyStore = field(init=False)
    limits: Limits = field(init=False)
    # Owner of each job seen lately (to count a key's queued jobs without reading documents).
    owners: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.idempotency = IdempotencyStore(self.layout.state_dir / "idempotency")
        self.keys = KeyStore(self.layout.state_dir)
        self.limits = Limits(self.settings, self.layout.state_dir)

    def queued_jobs(self, owner: str | None) -> int:
        """Pending and processing jobs of `owner` (from queue.txt, which the recorder keeps)."""
        try:
            active = self.layout.queue_file.read_text().split()
        except FileNotFoundError:
            active = []
        count = 0
        for job_id in active:
            if job_id not in self.owners:
                try:
                    self.owners[job_id] = _head_decoder.decode(self.layout.job(job_id).read_bytes()).owner
                except (FileNotFoundError, msgspec.MsgspecError):
                    continue
            count += self.owners[job_id] == owner
        if len(self.owners) > 4 * len(active) + 1000:  # forget jobs that left the queue
            keep = set(active)
            self.owners = {j: o for j, o in self.owners.items() if j in keep}
        return count

    def require_bus(self) -> Bus:
        if self.bus is None or not self.bus.connected:
            raise BrokerUnavailable("not connected to the broker")
        return self.bus


def _store_inputs(layout: DataLayout, job_id: str, resolved: Resolved) -> dict[str, str]:
    """Write the job's uploaded input images; returns the spec fields pointing at them."""
    inputs, files, fields = resolved.inputs, [], {}
    folder = layout.inputs_dir / job_id
    if inputs.init_image_path is not None:
        fields["init_image"] = inputs.init_image_path
    elif inputs.init_image is not None:
        files.append((folder / "init.png", inputs.init_image.png))
        fields["init_image"] = str((folder / "init.png").relative_to(layout.base))
    if inputs.mask_image is not None:
        files.append((folder / "mask.png", inputs.mask_image.png))
        fields["mask_image"] = str((folder / "mask.png").relative_to(layout.base))
    if files:
        write_atomic_many(files, durable=False)
    return fields


async def submit_job(ctx: Ingress, request: JobRequest, principal: Principal,
                     idempotency_key: str | None = None) -> tuple[JobDocument, bool]:
    """Accept a job durably: its document is written and the broker confirmed job.accepted.

    The broker's confirm is the durability point (job.accepted sits in quorum queues, fsynced by
    RabbitMQ); the document is written first only so that GET answers at once after the 202, and
    the recorder recreates it from job.accepted if a power cut lost it. If the broker cannot take
    the event, the document (and any input image) is removed again and nothing is accepted.

    With an Idempotency-Key already used for the same body, the earlier job is returned instead
    (the flag says so). Rate limits and quotas are checked first; only accepted jobs count.
    """
    owner = principal.owner
    await ctx.limits.check_rate(principal)
    resolved = resolve_job(request, ctx.catalog, ctx.settings, ctx.layout, principal)
    bus = ctx.require_bus()
    job_id = new_id()
    if idempotency_key is not None:
        earlier = await _claim(ctx, owner, idempotency_key, request, job_id)
        if earlier is not None:
            return earlier, True
    try:
        ctx.limits.check_quotas(principal, resolved.spec.settings.num_images, ctx.queued_jobs(owner))
        doc = await _accept(ctx, bus, resolved, job_id)
    except BaseException:
        if idempotency_key is not None:
            ctx.idempotency.release(owner, idempotency_key)
        raise
    ctx.owners[job_id] = owner
    await ctx.limits.count_request(principal)
    ctx.limits.add_images(principal, resolved.spec.settings.num_images)
    return doc, False


async def _claim(ctx: Ingress, owner: str | None, key: str, request: JobRequest, job_id: str) -> JobDocument | None:
    """The job an earlier request with this key created, once it is readable; None if ours is new."""
    claim = ctx.idempotency.claim(owner, check_key(key), fingerprint(msgspec.json.encode(request)), job_id)
    if claim is None:
        return None
    deadline = time.monotonic() + ABANDONED_SECONDS
    while True:  # the first request may still be on its way; wait for its document
        try:
            return _doc_decoder.decode(ctx.layout.job(claim.job_id).read_bytes())
        except FileNotFoundError:
            if time.monotonic() > deadline:
                ctx.idempotency.release(owner, key)
                raise ApiError(409, "the earlier request with this Idempotency-Key did not finish; retry") from None
            await asyncio.sleep(0.05)


async def _accept(ctx: Ingress, bus: Bus, resolved: Resolved, job_id: str) -> JobDocument:
    now = utcnow()
    spec = resolved.spec
    if resolved.inputs.init_image is not None:
        spec = msgspec.structs.replace(spec, **await asyncio.to_thread(_store_inputs, ctx.layout, job_id, resolved))
    doc = JobDocument.new(job_id, spec, now)
    path = ctx.layout.job(job_id)
    # Staged under a hidden name until the broker confirms: if this process dies in between, no
    # document claims a job the broker never got. After the confirm it is linked into place
    # (unless the recorder, hearing job.accepted, already wrote the same document).
    staged = ctx.layout.staging_dir / temp_path(path).name
    create_file(staged, _encoder.encode(doc))
    try:
        await bus.publish(JobAccepted(job_id=job_id, occurred_at=now, spec=spec))
    except BaseException:
        staged.unlink(missing_ok=True)
        shutil.rmtree(ctx.layout.inputs_dir / job_id, ignore_errors=True)
        raise
    publish_staged(staged, path)
    log.info("job accepted", job_id=job_id, model=spec.model, mode=spec.mode, images=spec.settings.num_images)
    return doc


async def reset_stalled(ctx: Ingress, silent_seconds: float | None) -> SweepResult:
    """Have the reaper sweep now; it resets only jobs that really are stalled."""
    bus = ctx.require_bus()
    try:
        answer = await bus.request(SweepStalled(job_id="", silent_seconds=silent_seconds), timeout=10)
    except TimeoutError:
        raise ApiError(503, "the reaper did not answer within 10 s; is it running?", {"Retry-After": "10"}) from None
    return msgspec.json.decode(answer, type=SweepResult)


async def cancel_job(ctx: Ingress, job_id: str, principal: Principal) -> JobCancelAnswer:
    """Cancel a job: a queued one ends now and never runs; a running one stops within one step."""
    doc = read_job(ctx, job_id, principal)
    requested_by = principal.owner
    if doc.status in TERMINAL_STATUSES:
        raise ApiError(409, f"job {job_id!r} is already {doc.status}")
    bus = ctx.require_bus()
    # Every generator hears the request: whichever holds the job stops it, the others skip it.
    await bus.publish(JobCancelRequested(job_id=job_id, requested_by=requested_by))
    if doc.status == "pending":
        await bus.publish(JobCancelled(job_id=job_id, reason="cancelled while queued"))
        return JobCancelAnswer(id=job_id, status="cancelled", message="The job was cancelled before it started")
    return JobCancelAnswer(id=job_id, status="cancelling", message="The job stops within one step; its images are discarded")


def read_job_bytes(ctx: Ingress, job_id: str, principal: Principal) -> bytes:
    """The job's document as stored (JSON), or 404 (also when it is another tenant's)."""
    if not is_job_id(job_id):
        raise not_found("job", job_id)
    try:
        data = ctx.layout.job(job_id).read_bytes()
    except FileNotFoundError:
        raise not_found("job", job_id) from None
    if not principal.admin and not principal.may_see(_head_decoder.decode(data).owner):
        raise not_found("job", job_id)
    return data


async def job_with_place(ctx: Ingress, job_id: str, principal: Principal) -> bytes:
    """The job's document; while pending, with its place in the queue and an estimated wait."""
    data = read_job_bytes(ctx, job_id, principal)
    if _head_decoder.decode(data).status != "pending" or ctx.readside is None:
        return data
    doc = _doc_decoder.decode(data)
    doc.queue_position, doc.eta_seconds = await ctx.readside.query(queries.queue_position, doc.id, doc.created_at)
    return _encoder.encode(doc)


def read_job(ctx: Ingress, job_id: str, principal: Principal) -> JobDocument:
    return _doc_decoder.decode(read_job_bytes(ctx, job_id, principal))


async def quota(ctx: Ingress, principal: Principal) -> Quota:
    limits = {
        "queued_jobs": ctx.limits.queued_jobs_for(principal),
        "daily_images": ctx.limits.daily_images_for(principal),
        "hourly_requests": (item.amount if (item := ctx.limits.rate_for(principal)) is not None else None),
    }
    usage = {
        "queued_jobs": await asyncio.to_thread(ctx.queued_jobs, principal.owner),
        "daily_images": ctx.limits.images_today(principal),
        "hourly_requests": await ctx.limits.requests_used(principal),
    }
    key = principal.key
    premium = key is not None and (key.admin or any(v is not None for v in (key.rate, key.daily_images, key.queued_jobs)))
    return Quota(
        is_premium=premium,
        usage=usage,
        limits={k: UNLIMITED if v is None else v for k, v in limits.items()},
        remaining={k: UNLIMITED if v is None else max(0, v - usage[k]) for k, v in limits.items()},
    )


def preview_path(ctx: Ingress, job_id: str, principal: Principal) -> Path:
    """The latest preview of a running job, or 404 saying why there is none."""
    doc = read_job(ctx, job_id, principal)
    path = ctx.layout.preview(job_id)
    if doc.status in TERMINAL_STATUSES or not path.exists():
        reason = f"job {job_id!r} is {doc.status}" if doc.status in TERMINAL_STATUSES else "no preview yet"
        raise ApiError(404, f"no preview for job {job_id!r}: {reason}")
    return path


def image_paths(ctx: Ingress, image_id: str, principal: Principal) -> tuple[Path, Path]:
    """(PNG, sidecar) of an image, or 404. Ids are checked before any path is built."""
    parts = split_image_id(image_id)
    if parts is None:
        raise not_found("image", image_id)
    job_id, number = parts
    try:
        doc = read_job(ctx, job_id, principal)
    except ApiError:
        raise not_found("image", image_id) from None
    if number > doc.settings.num_images:
        raise not_found("image", image_id)
    file_path = ctx.layout.image_file_path(doc.created_at, image_id)
    png, sidecar = ctx.layout.image(file_path), ctx.layout.sidecar(file_path)
    if not sidecar.exists():
        raise not_found("image", image_id)
    return png, sidecar


def read_image_record(ctx: Ingress, image_id: str, principal: Principal) -> ImageRecord:
    _, sidecar = image_paths(ctx, image_id, principal)
    try:
        return _record_decoder.decode(sidecar.read_bytes())
    except FileNotFoundError:
        raise not_found("image", image_id) from None


async def delete_image(ctx: Ingress, image_id: str, principal: Principal) -> None:
    """Announce the deletion (the recorder edits the job, the projection drops the row), then
    remove the files. If this dies in between, deleting again finishes it."""
    png, sidecar = await asyncio.to_thread(image_paths, ctx, image_id, principal)
    bus = ctx.require_bus()
    job_id, _ = split_image_id(image_id)
    await bus.publish(ImageDeleted(job_id=job_id, image_id=image_id))
    await asyncio.to_thread(_remove, sidecar, png)
    log.info("image deleted", image_id=image_id, by=principal.owner)


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def scope_of(principal: Principal) -> queries.Scope:
    """Admins see every tenant's rows; a key sees its own."""
    return queries.Scope(everyone=True) if principal.admin else queries.Scope(owner=principal.owner)


def require_readside(ctx: Ingress) -> ReadSide:
    if ctx.readside is None:
        raise ApiError(503, "the read side is not open yet", {"Retry-After": "1"})
    return ctx.readside
