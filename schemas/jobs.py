"""Records of jobs and images: what travels inside events and what GET /v1/jobs/{id} returns."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from schemas.webhooks import WebhookState, WebhookTarget

JobStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]
Mode = Literal["txt2img", "img2img", "inpaint"]
ACTIVE_STATUSES: frozenset[str] = frozenset({"pending", "processing"})
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class HiresSettings(msgspec.Struct, frozen=True, kw_only=True):
    """A1111's hires fix: generate, upscale by `scale`, then an img2img pass at the larger size."""

    scale: float
    denoising_strength: float
    steps: int
    width: int
    height: int


SEED_RANGE = 2**32  # seeds are 0 .. 2**32 - 1


class GenerationSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The effective settings of a job: every default filled in, the seed chosen."""

    num_images: int
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    # The seed of the first image; image n (1-based) uses seed + n - 1, as A1111 does, wrapping
    # past 2**32 - 1 so that every image's seed can be asked for again (`image_seed`).
    seed: int
    sampler: str | None = None
    # Images per pipeline call (A1111's batch_size); num_images / batch_size calls in all.
    batch_size: int = 1
    # img2img and inpaint: how far from the init image to go (0 keeps it, 1 ignores it).
    strength: float | None = None
    hires: HiresSettings | None = None

    def image_seed(self, number: int) -> int:
        """The seed of image `number` (1-based), always inside the seeds a request may give."""
        return (self.seed + number - 1) % SEED_RANGE


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


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A validated job: what to generate, with which model and settings."""

    prompt: str
    negative_prompt: str | None = None
    model: str
    style: str | None = None
    settings: GenerationSettings
    owner: str | None = None
    mode: Mode = "txt2img"
    # Input images, as paths inside the data directory (their bytes travel in GenerateImages).
    init_image: str | None = None
    mask_image: str | None = None
    loras: tuple[LoraRef, ...] = ()
    # Things the user should know about how the request was taken (e.g. an ignored field).
    notices: tuple[str, ...] = ()
    # What came from the session and preset the job named (None: it named neither).
    applied: Applied | None = None
    webhook: WebhookTarget | None = None


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
    # Relative to the images folder: YYYY/MM/DD/<id>.png
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
    # The attempt now pending or running (0 before the first starts). Results of older attempts are ignored.
    attempts: int = 0
    images: list[ImageRecord] = msgspec.field(default_factory=list)
    queue_position: int | None = None
    eta_seconds: float | None = None
    mode: Mode = "txt2img"
    loras: tuple[LoraRef, ...] = ()
    notices: tuple[str, ...] = ()
    # Input images, as paths inside the data directory.
    init_image: str | None = None
    mask_image: str | None = None
    applied: Applied | None = None
    enrichment: Enrichment | None = None
    # Where the job's events are POSTed, and how the last delivery went (see schemas/webhooks.py).
    webhook: WebhookState | None = None

    def spec(self) -> JobSpec:
        """The job as the generator needs it (prompts as enriched), e.g. to queue it again."""
        return JobSpec(
            prompt=self.prompt, negative_prompt=self.negative_prompt, model=self.model, style=self.style,
            settings=self.settings, owner=self.owner, mode=self.mode, init_image=self.init_image,
            mask_image=self.mask_image, loras=self.loras, notices=self.notices, applied=self.applied,
            webhook=self.webhook.target if self.webhook else None,
        )

    @classmethod
    def new(cls, job_id: str, spec: JobSpec, created_at: datetime) -> JobDocument:
        """The document of a job just accepted."""
        return cls(
            id=job_id,
            status="pending",
            model=spec.model,
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            original_prompt=spec.prompt,
            style=spec.style,
            settings=spec.settings,
            owner=spec.owner,
            created_at=created_at,
            updated_at=created_at,
            message=" ".join(("Queued", *(f"({notice})" for notice in spec.notices))),
            progress=Progress(preparing=True, total_steps=spec.settings.num_inference_steps),
            mode=spec.mode,
            loras=spec.loras,
            notices=spec.notices,
            init_image=spec.init_image,
            mask_image=spec.mask_image,
            applied=spec.applied,
            webhook=WebhookState(url=spec.webhook.url, events=spec.webhook.events) if spec.webhook else None,
        )
