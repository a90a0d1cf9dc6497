"""Native REST API (`/v1`) request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from schemas.webhooks import WebhookInput

NumImages = Annotated[int, msgspec.Meta(ge=1, le=8, description="Images to generate, 1-8")]
Steps = Annotated[int, msgspec.Meta(ge=1, description="Denoising steps (the model caps it)")]
Guidance = Annotated[float, msgspec.Meta(ge=0.0, le=50.0, description="Classifier-free guidance scale")]
Side = Annotated[int, msgspec.Meta(ge=8, description="Pixels, a multiple of 8 (the model caps it)")]
Seed = Annotated[int, msgspec.Meta(ge=-1, le=2**32 - 1, description="-1 or absent: random")]


Strength = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class SettingsInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional generation settings; anything left out takes the model's default."""

    num_images: NumImages | None = None
    num_inference_steps: Steps | None = None
    guidance_scale: Guidance | None = None
    width: Side | None = None
    height: Side | None = None
    seed: Seed | None = None
    sampler: Annotated[str | None, msgspec.Meta(description="A1111 sampler name, see GET /v1/samplers")] = None
    # A1111's pair: batch_size images per call, batch_count calls (num_images = their product).
    batch_size: NumImages | None = None
    batch_count: NumImages | None = None
    strength: Annotated[Strength | None, msgspec.Meta(description="img2img/inpaint denoising strength")] = None
    enable_hr: bool = False
    hr_scale: Annotated[float, msgspec.Meta(gt=1.0, le=4.0)] | None = None
    hr_denoising_strength: Strength | None = None
    hr_second_pass_steps: Steps | None = None


class LoraInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A LoRA to apply: its name in GET /v1/loras (file name, with or without extension)."""

    name: str
    weight: Annotated[float, msgspec.Meta(ge=-4.0, le=4.0)] = 1.0


class JobRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/jobs: what to generate."""

    prompt: Annotated[str, msgspec.Meta(description="What to draw")]
    negative_prompt: Annotated[str | None, msgspec.Meta(description="What to avoid")] = None
    model: Annotated[str | None, msgspec.Meta(description="Model id from GET /v1/models")] = None
    style: Annotated[str | None, msgspec.Meta(description="Style template applied by the enricher")] = None
    settings: SettingsInput = msgspec.field(default_factory=SettingsInput)
    init_image: Annotated[str | None, msgspec.Meta(description="img2img/inpaint input: base64 PNG/JPEG/WebP (data URL ok)")] = None
    init_image_id: Annotated[str | None, msgspec.Meta(description="img2img/inpaint input: the id of an image Darkroom holds")] = None
    mask_image: Annotated[str | None, msgspec.Meta(description="inpaint: base64 mask, white = repaint, same size as the init image")] = None
    loras: list[LoraInput] = msgspec.field(default_factory=list)
    session: Annotated[str | None, msgspec.Meta(
        description="A session (space) of yours: its LoRAs and settings fill what this job leaves out")] = None
    preset: Annotated[str | None, msgspec.Meta(
        description="A preset of yours: fills what the job and its session leave out")] = None
    webhook: WebhookInput | None = None


class JobCreated(msgspec.Struct, kw_only=True):
    """202 answer to POST /v1/jobs."""

    id: str
    status: str
    status_url: str
    num_images: int
    message: str
    # Server-sent events of this job, from job.accepted to its end.
    events_url: str | None = None


class JobCancelAnswer(msgspec.Struct, kw_only=True):
    """DELETE /v1/jobs/{id}: `cancelled` when it was still queued, `cancelling` when a worker
    holds it (it stops within one step)."""

    id: str
    status: str
    message: str


class ResetAnswer(msgspec.Struct, kw_only=True):
    """POST /v1/queue/reset-stalled (CyberImage's /reset_queue shape, plus what happened to whom)."""

    status: str
    reset_count: int
    failed_count: int
    job_ids: list[str]
    message: str


class Quota(msgspec.Struct, kw_only=True, rename={"is_premium": "isPremium"}):
    """GET /v1/quota in the weights.gg shape, with Darkroom's quota names: `queued_jobs` (pending or
    processing now), `daily_images` (images asked for today, UTC), `hourly_requests` (generation
    requests in the rate window). Unlimited reads "Infinity"."""

    is_premium: bool
    usage: dict[str, int]
    limits: dict[str, int | str]
    remaining: dict[str, int | str]


class SamplerInfo(msgspec.Struct, kw_only=True):
    """One entry of GET /v1/samplers."""

    name: str
    scheduler: str
    options: dict[str, object]


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error answer: `message` names what was wrong."""

    message: str
    status: str = "error"


class ModelInfo(msgspec.Struct, kw_only=True):
    """One entry of GET /v1/models (CyberImage shape plus what a client needs to build a form)."""

    id: str
    description: str
    family: str
    supports_negative_prompt: bool
    capabilities: list[str]
    defaults: dict[str, object]
    limits: dict[str, int]


class ModelList(msgspec.Struct, kw_only=True):
    """GET /v1/models."""

    models: dict[str, ModelInfo]
    default: str


class EnrichRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/enrich."""

    prompt: str
    style: str | None = None


class EnrichResponse(msgspec.Struct, kw_only=True):
    original_prompt: str
    enriched_prompt: str
    negative_prompt: str | None
    style: str | None


class Health(msgspec.Struct, kw_only=True, omit_defaults=True):
    """GET /health. `status` is `ok`, `degraded` (accepting jobs, but no generator is running) or
    `unavailable` (503: the broker is unreachable or the data directory is not writable). The
    details (broker, data directory, generators, projection) are shown to admin keys only."""

    status: str
    broker: str | None = None
    data_dir: str | None = None
    generators: int | None = None
    projection: ProjectionStatus | None = None


class ProjectionStatus(msgspec.Struct, kw_only=True):
    """How far the DuckDB projection is behind the event log."""

    events_applied: int
    pending_bytes: int
    lag_seconds: float
    last_event_at: datetime | None = None


class StatusCounts(msgspec.Struct, kw_only=True):
    pending: int = 0
    processing: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0


class QueueStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    """GET /v1/queue in the CyberImage shape plus `cancelled`. With ?detailed=true also the last
    24 hours, per-model counts, the mean processing time and the failure rate (failed / finished, %)."""

    pending: int
    processing: int
    completed: int
    failed: int
    cancelled: int
    total: int
    queue_size: int
    recent_24h: StatusCounts | None = None
    avg_processing_time_seconds: float | None = None
    models: dict[str, StatusCounts] | None = None
    failure_rate: float | None = None


class JobSummary(msgspec.Struct, kw_only=True):
    """One job in GET /v1/jobs (the full document is at `status_url`)."""

    id: str
    status: str
    model: str
    mode: str
    prompt: str
    num_images: int
    owner: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    attempts: int
    error: str | None
    status_url: str


class JobList(msgspec.Struct, kw_only=True):
    """GET /v1/jobs: newest first; pass `next_cursor` as `cursor` for the next page (null: no more)."""

    jobs: list[JobSummary]
    next_cursor: str | None


class GalleryImage(msgspec.Struct, kw_only=True):
    """One image in GET /v1/gallery (CyberImage's fields plus where to fetch it)."""

    id: str
    job_id: str
    model_id: str
    prompt: str
    width: int
    height: int
    seed: int
    settings: dict[str, Any]
    created_at: datetime
    url: str


class Gallery(msgspec.Struct, kw_only=True):
    """GET /v1/gallery in the CyberImage shape; `page` is null when paging by `cursor`."""

    images: list[GalleryImage]
    page: int | None
    limit: int
    has_more: bool
    total: int
    next_cursor: str | None


class ImageDeleteAnswer(msgspec.Struct, kw_only=True):
    status: str
    id: str
    message: str


class OpsQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/ops/query: one or more SELECT statements over the projection (the last one answers)."""

    sql: Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
    max_rows: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000


class OpsQueryResult(msgspec.Struct, kw_only=True):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


class OpsStats(msgspec.Struct, kw_only=True):
    """GET /v1/ops/stats: detailed queue statistics over every tenant, and the projection's state."""

    queue: QueueStats
    projection: ProjectionStatus


class RebuildAnswer(msgspec.Struct, kw_only=True):
    events: int
    seconds: float


class ExportAnswer(msgspec.Struct, kw_only=True):
    """POST /v1/ops/export: Parquet files written under the data directory's exports/ folder."""

    folder: str
    files: list[str]


Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$", description="sha256, 64 hex digits")]


class PullRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/models/pulls: provision a model or LoRA while Darkroom runs (admin)."""

    source: Annotated[str, msgspec.Meta(min_length=1, max_length=2048,
                                        description="A Hugging Face repo id, an http(s) URL, or a path on the server")]
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] | None = None
    kind: Literal["checkpoint", "lora"] = "checkpoint"
    revision: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    sha256: Sha256 | None = None
    allow_pickle: Annotated[bool, msgspec.Meta(description="Accept pickled .ckpt/.bin/.pt weights (they can run code)")] = False
    config: Annotated[str, msgspec.Meta(max_length=1024, description="Single-file checkpoints: a catalog model id or "
                                                                     "diffusers folder with the matching configs")] | None = None


PullState = Literal["queued", "pulling", "verifying", "placing", "available", "failed"]


class PullStatus(msgspec.Struct, kw_only=True):
    """A pull as the models stage reports it (GET /v1/models/pulls/{id}; state/pulls/<id>.json)."""

    id: str
    source: str
    name: str
    kind: Literal["checkpoint", "lora"]
    state: PullState = "queued"
    done_bytes: int = 0
    total_bytes: int = 0
    files: int = 0
    revision: str | None = None
    reason: str | None = None
    created_at: datetime
    updated_at: datetime
