"""What the ingress does for each request, free of HTTP: validate, resolve, write, publish."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog

from schemas.api import JobRequest
from schemas.catalog import Catalog
from schemas.events import JobAccepted, new_id, utcnow
from schemas.jobs import GenerationSettings, ImageRecord, JobDocument, JobSpec
from schemas.layout import DataLayout, is_job_id, split_image_id
from schemas.settings import Settings
from services.bus import Bus, BrokerUnavailable
from services.files import create_file
from services.ingress.errors import ApiError, not_found

log = structlog.get_logger("ingress")
_encoder = msgspec.json.Encoder()
_doc_decoder = msgspec.json.Decoder(JobDocument)
_record_decoder = msgspec.json.Decoder(ImageRecord)


@dataclass
class Ingress:
    """What request handlers need: settings, catalog, data layout, and the bus once connected."""

    settings: Settings
    catalog: Catalog
    layout: DataLayout
    bus: Bus | None = None
    connecting: asyncio.Task | None = field(default=None, repr=False)

    def require_bus(self) -> Bus:
        if self.bus is None or not self.bus.connected:
            raise BrokerUnavailable("not connected to the broker")
        return self.bus


def resolve_job(request: JobRequest, catalog: Catalog, settings: Settings, owner: str | None) -> JobSpec:
    """Check the request against the catalog and limits, fill every default, choose the seed."""
    prompt = request.prompt.strip()
    if not prompt:
        raise ApiError(400, "prompt must not be empty")
    for name, text in (("prompt", prompt), ("negative_prompt", request.negative_prompt or "")):
        if len(text) > settings.max_prompt_length:
            raise ApiError(400, f"{name} is {len(text)} characters; the limit is {settings.max_prompt_length}")
    try:
        entry = catalog.model(request.model)
    except KeyError as exc:
        raise ApiError(400, f"model: {exc.args[0]}") from None
    if request.style is not None and request.style not in catalog.styles:
        raise ApiError(400, f"style: unknown style {request.style!r}; valid styles: {', '.join(sorted(catalog.styles))}")
    given, defaults = request.settings, entry.defaults
    settings_ = GenerationSettings(
        num_images=given.num_images or 1,
        num_inference_steps=given.num_inference_steps or defaults.num_inference_steps,
        guidance_scale=defaults.guidance_scale if given.guidance_scale is None else given.guidance_scale,
        width=given.width or defaults.width,
        height=given.height or defaults.height,
        seed=given.seed if given.seed not in (None, -1) else secrets.randbelow(2**32 - 16),
        sampler=defaults.sampler,
    )
    error = entry.settings_error(settings_.width, settings_.height, settings_.num_inference_steps)
    if error:
        raise ApiError(400, error)
    return JobSpec(
        prompt=prompt,
        negative_prompt=(request.negative_prompt or "").strip() or None,
        model=entry.id,
        style=request.style,
        settings=settings_,
        owner=owner,
    )


async def submit_job(ctx: Ingress, request: JobRequest, owner: str | None = None) -> JobDocument:
    """Accept a job durably: its document is written and the broker confirmed job.accepted.

    The broker's confirm is the durability point (job.accepted sits in quorum queues, fsynced by
    RabbitMQ); the document is written first only so that GET answers at once after the 202, and
    the recorder recreates it from job.accepted if a power cut lost it. If the broker cannot take
    the event, the document is removed again and nothing is accepted.
    """
    spec = resolve_job(request, ctx.catalog, ctx.settings, owner)
    bus = ctx.require_bus()
    job_id = new_id()
    now = utcnow()
    doc = JobDocument.new(job_id, spec, now)
    path = ctx.layout.job(job_id)
    create_file(path, _encoder.encode(doc))
    try:
        await bus.publish(JobAccepted(job_id=job_id, occurred_at=now, spec=spec))
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    log.info("job accepted", job_id=job_id, model=spec.model, images=spec.settings.num_images)
    return doc


def read_job_bytes(ctx: Ingress, job_id: str) -> bytes:
    """The job's document as stored (JSON), or 404."""
    if not is_job_id(job_id):
        raise not_found("job", job_id)
    try:
        return ctx.layout.job(job_id).read_bytes()
    except FileNotFoundError:
        raise not_found("job", job_id) from None


def read_job(ctx: Ingress, job_id: str) -> JobDocument:
    return _doc_decoder.decode(read_job_bytes(ctx, job_id))


def image_paths(ctx: Ingress, image_id: str) -> tuple[Path, Path]:
    """(PNG, sidecar) of an image, or 404. Ids are checked before any path is built."""
    parts = split_image_id(image_id)
    if parts is None:
        raise not_found("image", image_id)
    job_id, number = parts
    try:
        doc = read_job(ctx, job_id)
    except ApiError:
        raise not_found("image", image_id) from None
    if number > doc.settings.num_images:
        raise not_found("image", image_id)
    file_path = ctx.layout.image_file_path(doc.created_at, image_id)
    png, sidecar = ctx.layout.image(file_path), ctx.layout.sidecar(file_path)
    if not sidecar.exists():
        raise not_found("image", image_id)
    return png, sidecar


def read_image_record(ctx: Ingress, image_id: str) -> ImageRecord:
    _, sidecar = image_paths(ctx, image_id)
    try:
        return _record_decoder.decode(sidecar.read_bytes())
    except FileNotFoundError:
        raise not_found("image", image_id) from None
