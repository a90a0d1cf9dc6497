"""Commands and queries on jobs: submit, cancel, read (with its place in the queue), preview, list.
Plain async functions over the few things each needs; errors are `domain.errors`."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

import msgspec
import structlog

from schemas.api import JobCancelAnswer, JobList, JobRequest
from schemas.catalog import Catalog
from schemas.events import EVENT_TYPES, JobAccepted, JobCancelled, JobCancelRequested, new_id, utcnow
from schemas.jobs import TERMINAL_STATUSES, JobDocument
from schemas.layout import DataLayout, is_job_id
from schemas.settings import Settings
from schemas.topology import consumers_of, key_matches
from schemas.webhooks import WebhookInput, WebhookTarget
from services import webhooks
from services.bus import Bus
from services.ingress.auth import Principal
from services.ingress.domain.errors import Conflict, Invalid, NotFound
from services.ingress.domain.files import JobFiles
from services.ingress.domain.layers import apply_layers
from services.ingress.domain.links import BusLink
from services.ingress.idempotency import (
    ABANDONED_SECONDS,
    IdempotencyStore,
    check_key,
    fingerprint,
)
from services.ingress.limits import Limits
from services.ingress.requests import Resolved, resolve_job
from services.readside import BadCursor, ReadSide, Scope, queries

log = structlog.get_logger("ingress")


def scope_of(principal: Principal) -> Scope:
    """Admins see every tenant's rows; a key sees its own."""
    return Scope(everyone=True) if principal.admin else Scope(owner=principal.owner)


async def submit_job(request: JobRequest, principal: Principal, *, bus: BusLink, files: JobFiles, limits: Limits,
                     idempotency: IdempotencyStore, catalog: Catalog, settings: Settings, layout: DataLayout,
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
    # Job values win, then the session's, then the preset's, then the model's defaults (layers.py).
    layered_request, applied = request, None
    if request.session is not None or request.preset is not None:  # their files are read off the loop
        layered_request, applied = await asyncio.to_thread(apply_layers, request, principal, layout)
    if (request.init_image is not None or request.mask_image is not None or request.init_image_id is not None
            or layered_request.loras):
        # Decoding and re-encoding input images takes milliseconds, hashing a new LoRA file more:
        # never on the event loop.
        resolved = await asyncio.to_thread(resolve_job, layered_request, catalog, settings, layout, principal)
    else:
        resolved = resolve_job(layered_request, catalog, settings, layout, principal)
    if applied is not None:
        resolved.spec = msgspec.structs.replace(resolved.spec, applied=applied)
    if request.webhook is not None:
        target = await webhook_target(request.webhook, principal, settings, layout)
        resolved.spec = msgspec.structs.replace(resolved.spec, webhook=target)
    connected = bus.require()
    job_id = new_id()
    if idempotency_key is not None:
        earlier = await _claim(files, idempotency, owner, idempotency_key, request, job_id)
        if earlier is not None:
            return earlier, True
    reservation = None
    try:
        # Rate, daily images and queued jobs checked and reserved in one step (a file lock per
        # caller): concurrent submits cannot slip past a limit between the check and the count.
        reservation = await asyncio.to_thread(limits.reserve, principal, job_id, resolved.spec.settings.num_images)
        doc = await _accept(files, connected, resolved, job_id)
    except BaseException:
        if reservation is not None:
            await asyncio.to_thread(limits.release, reservation)
        if idempotency_key is not None:
            idempotency.release(owner, idempotency_key)
        raise
    return doc, False


@functools.cache
def _allow_list(settings: Settings) -> webhooks.AllowList:
    return webhooks.allow_list(settings)


async def webhook_target(given: WebhookInput, principal: Principal, settings: Settings,
                         layout: DataLayout) -> WebhookTarget:
    """A job's webhook, checked: a public (or allow-listed) http(s) URL, events the notifier hears,
    and a secret to sign with."""
    try:
        await webhooks.check(given.url, _allow_list(settings))
    except webhooks.Refused as exc:
        raise Invalid(f"webhook.url {exc}") from None
    patterns = tuple(dict.fromkeys(e.strip() for e in given.events))
    if not patterns:
        raise Invalid("webhook.events must name at least one routing key (e.g. job.completed)")
    for index, pattern in enumerate(patterns):
        if not any(key_matches(pattern, key) for key in webhook_keys()):
            raise Invalid(f"webhook.events[{index}]: {pattern!r} matches no event a webhook can report; "
                          f"use routing keys or patterns of: {', '.join(webhook_keys())}")
    try:
        await asyncio.to_thread(webhooks.owner_secret, layout.state_dir, principal.owner)
    except webhooks.Refused as exc:
        raise Invalid(f"webhook: {exc}") from None
    return WebhookTarget(url=given.url, events=patterns)


@functools.cache
def webhook_keys() -> tuple[str, ...]:
    """Routing keys of the events the notifier hears (what a webhook's `events` may match)."""
    tags = (cls.__struct_config__.tag for cls in EVENT_TYPES)
    return tuple(key for key in tags if "notifier" in consumers_of(key))


async def _claim(files: JobFiles, idempotency: IdempotencyStore, owner: str | None, key: str, request: JobRequest,
                 job_id: str) -> JobDocument | None:
    """The job an earlier request with this key created, once it is readable; None if ours is new."""
    claim = idempotency.claim(owner, check_key(key), fingerprint(msgspec.json.encode(request)), job_id)
    if claim is None:
        return None
    deadline = time.monotonic() + ABANDONED_SECONDS
    while True:  # the first request may still be on its way; wait for its document
        try:
            return files.decode(files.document_bytes(claim.job_id))
        except FileNotFoundError:
            if time.monotonic() > deadline:
                idempotency.release(owner, key)
                raise Conflict("the earlier request with this Idempotency-Key did not finish; retry") from None
            await asyncio.sleep(0.05)


async def _accept(files: JobFiles, bus: Bus, resolved: Resolved, job_id: str) -> JobDocument:
    now = utcnow()
    spec = resolved.spec
    if resolved.inputs.init_image is not None:
        spec = msgspec.structs.replace(spec, **await asyncio.to_thread(files.store_inputs, job_id, resolved))
    doc = JobDocument.new(job_id, spec, now)
    # Staged under a hidden name until the broker confirms: if this process dies in between, no
    # document claims a job the broker never got. After the confirm it is linked into place
    # (unless the recorder, hearing job.accepted, already wrote the same document).
    staged = files.stage_document(doc)
    try:
        await bus.publish(JobAccepted(job_id=job_id, occurred_at=now, spec=spec))
    except BaseException:
        files.discard_staged(staged, job_id)
        raise
    files.publish_document(staged, job_id)
    log.info("job accepted", job_id=job_id, model=spec.model, mode=spec.mode, images=spec.settings.num_images)
    return doc


async def cancel_job(job_id: str, principal: Principal, *, bus: BusLink, files: JobFiles) -> JobCancelAnswer:
    """Cancel a job: a queued one never runs; a running one stops within one step; either way no
    image of it is kept. A job ends once (services/jobfiles.py: outcomes): the cancel claims
    "cancelled", or finds the saver already claimed "completed" (409), so a 202 is the truth."""
    doc = await asyncio.to_thread(read_job, files, job_id, principal)
    if doc.status in TERMINAL_STATUSES:
        raise Conflict(f"job {job_id!r} is already {doc.status}")
    connected = bus.require()
    ended = await asyncio.to_thread(files.claim_cancel, job_id)
    if ended is not None:
        raise Conflict(f"job {job_id!r} is already {ended}" if ended == "completed" else
                       f"job {job_id!r} is already being cancelled")
    try:
        # Every generator hears it: whichever holds the job stops it, the others skip it; the
        # saver drops (and removes) any image of it.
        await connected.publish(JobCancelRequested(job_id=job_id, requested_by=principal.owner))
        await connected.publish(JobCancelled(job_id=job_id, reason="cancelled while queued" if doc.status == "pending"
                                             else "cancelled while generating"))
    except BaseException:
        await asyncio.to_thread(files.withdraw_cancel, job_id)
        raise
    if doc.status == "pending":
        return JobCancelAnswer(id=job_id, status="cancelled", message="The job was cancelled before it started")
    return JobCancelAnswer(id=job_id, status="cancelling",
                           message="The job is cancelled: it stops within one step and none of its images is kept")


def read_job_bytes(files: JobFiles, job_id: str, principal: Principal) -> bytes:
    """The job's document as stored (JSON); NotFound also when it is another tenant's."""
    if not is_job_id(job_id):
        raise NotFound.of("job", job_id)
    try:
        data = files.document_bytes(job_id)
    except FileNotFoundError:
        raise NotFound.of("job", job_id) from None
    if not principal.admin and not principal.may_see(files.head(data).owner):
        raise NotFound.of("job", job_id)
    return data


def read_job(files: JobFiles, job_id: str, principal: Principal) -> JobDocument:
    return files.decode(read_job_bytes(files, job_id, principal))


async def job_with_place(job_id: str, principal: Principal, *, files: JobFiles, readside: ReadSide | None) -> bytes:
    """The job's document (JSON); while pending, with its place in the queue and an estimated wait
    (when the read side is open)."""
    data = read_job_bytes(files, job_id, principal)
    if files.head(data).status != "pending" or readside is None:
        return data
    doc = files.decode(data)
    doc.queue_position, doc.eta_seconds = await readside.query(queries.queue_position, doc.id, doc.created_at, doc.owner)
    return files.encode(doc)


def preview_path(job_id: str, principal: Principal, *, files: JobFiles) -> Path:
    """The latest preview of a running job; NotFound saying why there is none."""
    doc = read_job(files, job_id, principal)
    path = files.preview(job_id)
    if doc.status in TERMINAL_STATUSES or path is None:
        reason = f"job {job_id!r} is {doc.status}" if doc.status in TERMINAL_STATUSES else "no preview yet"
        raise NotFound(f"no preview for job {job_id!r}: {reason}")
    return path


async def list_jobs(principal: Principal, *, readside: ReadSide, status: str | None = None, model: str | None = None,
                    limit: int = 20, cursor: str | None = None) -> JobList:
    """The caller's jobs (an admin's: everyone's), newest first, keyset-paginated."""
    try:
        jobs, next_cursor = await readside.current_query(
            queries.list_jobs, scope_of(principal), status=status, model=model, limit=limit, cursor=cursor)
    except BadCursor as exc:
        raise Invalid(str(exc)) from None
    return msgspec.convert({"jobs": jobs, "next_cursor": next_cursor}, JobList)
