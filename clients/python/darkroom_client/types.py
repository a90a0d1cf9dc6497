"""Darkroom's wire types: the request and response bodies of the REST API (`/v1`).

These Structs mirror `schemas/` in the Darkroom repository field for field (names, types,
constraints, descriptions): `tests/unit/test_client_types.py` compares their JSON Schemas with the
server's, and `tests/e2e/test_clients.py` compares their fields with the running server's OpenAPI
components, so they cannot drift. Decoding ignores fields a newer server adds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

# -- requests -------------------------------------------------------------------------------------

NumImages = Annotated[int, msgspec.Meta(ge=1, le=8, description="Images to generate, 1-8")]
Steps = Annotated[int, msgspec.Meta(ge=1, description="Denoising steps (the model caps it)")]
Guidance = Annotated[float, msgspec.Meta(ge=0.0, le=50.0, description="Classifier-free guidance scale")]
Side = Annotated[int, msgspec.Meta(ge=8, description="Pixels, a multiple of 8 (the model caps it)")]
Seed = Annotated[int, msgspec.Meta(ge=-1, le=2**32 - 1, description="-1 or absent: random")]
Strength = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

DEFAULT_WEBHOOK_EVENTS: tuple[str, ...] = ("job.completed", "job.failed", "job.cancelled")
MAX_WEBHOOK_EVENTS = 16


class WebhookInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/jobs `webhook`: where to POST the job document, and for which events.

    `events` are routing keys or topic patterns (`job.completed`, `job.failed`, `job.*`); each
    request is signed per the Standard Webhooks spec with the key's `whsec_` secret."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048, description="http(s) URL to POST to")]
    events: Annotated[list[str], msgspec.Meta(max_length=MAX_WEBHOOK_EVENTS, description=(
        "routing keys or patterns; default job.completed, job.failed, job.cancelled"))] = msgspec.field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS))


class SettingsInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional generation settings; anything left out takes the model's default."""

    num_images: NumImages | None = None
    num_inference_steps: Steps | None = None
    guidance_scale: Guidance | None = None
    width: Side | None = None
    height: Side | None = None
    seed: Seed | None = None
    sampler: Annotated[str | None, msgspec.Meta(description="A1111 sampler name, see GET /v1/samplers")] = None
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


class EnrichRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/enrich."""

    prompt: str
    style: str | None = None


# -- answers --------------------------------------------------------------------------------------

class JobCreated(msgspec.Struct, kw_only=True):
    """202 answer to POST /v1/jobs."""

    id: str
    status: str
    status_url: str
    num_images: int
    message: str
    events_url: str | None = None


class JobCancelAnswer(msgspec.Struct, kw_only=True):
    """DELETE /v1/jobs/{id}: `cancelled` when it was still queued, `cancelling` when a worker
    holds it (it stops within one step)."""

    id: str
    status: str
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


class EnrichResponse(msgspec.Struct, kw_only=True):
    original_prompt: str
    enriched_prompt: str
    negative_prompt: str | None
    style: str | None


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


# -- a job's document -----------------------------------------------------------------------------

JobStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]
Mode = Literal["txt2img", "img2img", "inpaint"]
WebhookStatus = Literal["delivered", "failed"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class HiresSettings(msgspec.Struct, frozen=True, kw_only=True):
    """A1111's hires fix: generate, upscale by `scale`, then an img2img pass at the larger size."""

    scale: float
    denoising_strength: float
    steps: int
    width: int
    height: int


class GenerationSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The effective settings of a job: every default filled in, the seed chosen."""

    num_images: int
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int
    sampler: str | None = None
    batch_size: int = 1
    strength: float | None = None
    hires: HiresSettings | None = None


class LoraRef(msgspec.Struct, frozen=True):
    """A LoRA from the library and the weight to apply it with."""

    name: str
    weight: float = 1.0
    # The file's content hash when the job was accepted: remote workers fetch and check it by this.
    sha256: str | None = None


class Applied(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a job took from the session and preset it named: field -> `session` or `preset`
    (settings as `settings.<name>`, LoRAs as `loras.<name>`). Anything not listed was the job's
    own or the model's default."""

    session: str | None = None
    preset: str | None = None
    fields: dict[str, str] = {}


class Enrichment(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How the enricher settled the prompt: `none` (no style), `template` (the style's template)
    or `llm` (rewritten by the configured LLM); `error` says why an LLM attempt fell back to the
    template."""

    path: Literal["none", "template", "llm"]
    llm_model: str | None = None
    attempts: int = 0
    error: str | None = None


class ImageMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """What produced one image; also embedded in the PNG and written as its JSON sidecar."""

    job_id: str
    model_id: str
    prompt: str
    negative_prompt: str | None = None
    settings: GenerationSettings
    seed: int
    image_number: int
    total_images: int
    generation_time: float = 0.0


class ImageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One saved image, as listed in its job's document."""

    id: str
    file_path: str
    created_at: datetime
    width: int
    height: int
    size_bytes: int
    metadata: ImageMetadata


class Progress(msgspec.Struct, kw_only=True):
    """CyberImage-style phase flags plus the current step."""

    preparing: bool = False
    loading_model: bool = False
    generating: bool = False
    saving: bool = False
    completed: bool = False
    failed: bool = False
    step: int | None = None
    total_steps: int | None = None
    image_index: int | None = None


class WebhookState(msgspec.Struct, kw_only=True):
    """A job's webhook as its document shows it: the target and how the last delivery went."""

    url: str
    events: tuple[str, ...] = DEFAULT_WEBHOOK_EVENTS
    status: WebhookStatus | None = None
    last_event: str | None = None
    tries: int = 0
    status_code: int | None = None
    error: str | None = None
    updated_at: datetime | None = None
    delivered: int = 0
    failed: int = 0


class JobDocument(msgspec.Struct, kw_only=True):
    """The current state of one job: what GET /v1/jobs/{id} returns."""

    id: str
    status: JobStatus
    model: str
    prompt: str
    negative_prompt: str | None = None
    original_prompt: str | None = None
    style: str | None = None
    settings: GenerationSettings
    owner: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    message: str = ""
    error: str | None = None
    progress: Progress = msgspec.field(default_factory=Progress)
    attempts: int = 0
    images: list[ImageRecord] = msgspec.field(default_factory=list)
    queue_position: int | None = None
    eta_seconds: float | None = None
    mode: Mode = "txt2img"
    loras: tuple[LoraRef, ...] = ()
    notices: tuple[str, ...] = ()
    init_image: str | None = None
    mask_image: str | None = None
    applied: Applied | None = None
    enrichment: Enrichment | None = None
    webhook: WebhookState | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


# -- the library: LoRAs, sessions, presets --------------------------------------------------------

Base = Literal["sd1", "sd2", "sdxl", "sd3", "flux", "unknown"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Weight = Annotated[float, msgspec.Meta(ge=-4.0, le=4.0)]
Text = Annotated[str, msgspec.Meta(max_length=2000)]


class LoraSummary(msgspec.Struct, kw_only=True):
    """One LoRA of the library, as listed and searched."""

    name: str
    base: Base
    trigger_words: list[str]
    tags: list[str]
    size_bytes: int
    sha256: str | None
    preview_url: str | None = None
    score: float | None = None


class LoraInfo(msgspec.Struct, kw_only=True):
    """GET /v1/loras/{name}: one LoRA with what its safetensors header says about it."""

    name: str
    file: str
    base: Base
    base_model: str | None
    trigger_words: list[str]
    tags: list[str]
    tag_frequency: dict[str, int]
    size_bytes: int
    sha256: str | None
    modified_at: datetime
    preview_url: str | None = None
    metadata: dict[str, str] = {}


class LoraPage(msgspec.Struct, kw_only=True):
    """GET /v1/loras: best match first when searching, else by name; follow `next_cursor`."""

    loras: list[LoraSummary]
    total: int
    next_cursor: str | None


class Layer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Job values a session or a preset supplies when the job leaves them out."""

    model: Annotated[str | None, msgspec.Meta(description="Model id from GET /v1/models")] = None
    settings: SettingsInput = msgspec.field(default_factory=SettingsInput)
    loras: Annotated[list[LoraInput], msgspec.Meta(max_length=8)] = msgspec.field(default_factory=list)
    style: str | None = None
    negative_prompt: Text | None = None


class SessionBody(Layer, kw_only=True, forbid_unknown_fields=True):
    """PUT /v1/sessions/{id}: a session's defaults (replaces them all)."""

    preset: Annotated[str | None, msgspec.Meta(description="A preset its jobs use when they name none")] = None


class Session(SessionBody, kw_only=True):
    """A session (a space): its owner's defaults for the jobs that name it."""

    id: str
    created_at: datetime
    updated_at: datetime
    owner: str | None = None


class SessionLora(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/sessions/{id}/loras: add a LoRA to the session (or change its weight)."""

    name: str
    weight: Weight = 1.0


class PresetBody(Layer, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/presets, PUT /v1/presets/{id}: a named set of job values."""

    id: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN, description="Chosen when left out")] | None = None
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class Preset(PresetBody, kw_only=True):
    id: str  # type: ignore[assignment]
    created_at: datetime
    updated_at: datetime
    owner: str | None = None


class PresetList(msgspec.Struct, kw_only=True):
    presets: list[Preset]


# -- live events ----------------------------------------------------------------------------------

TERMINAL_EVENTS: frozenset[str] = frozenset({"job.completed", "job.failed", "job.cancelled"})


class Event(msgspec.Struct, kw_only=True):
    """One server-sent event: `type` is its routing key (`job.progressed`), `data` its JSON body
    (image bytes never travel here: `image_url`, `image_urls`, `preview_url` say where they are)."""

    id: str
    type: str
    data: dict[str, Any]

    @property
    def job_id(self) -> str | None:
        return self.data.get("job_id")

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


# Every Struct that mirrors one in the server's `schemas/` (by the same name), for the drift tests.
WIRE_TYPES: tuple[type[msgspec.Struct], ...] = (
    WebhookInput, SettingsInput, LoraInput, JobRequest, EnrichRequest, JobCreated, JobCancelAnswer, Quota,
    SamplerInfo, ErrorBody, ModelInfo, ModelList, EnrichResponse, JobSummary, JobList, GalleryImage, Gallery,
    ImageDeleteAnswer, HiresSettings, GenerationSettings, LoraRef, Applied, Enrichment, ImageMetadata, ImageRecord,
    Progress, WebhookState, JobDocument, LoraSummary, LoraInfo, LoraPage, Layer, SessionBody, Session, SessionLora,
    PresetBody, Preset, PresetList,
)
