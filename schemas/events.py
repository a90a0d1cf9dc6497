"""Events (facts, past tense) and commands (imperative, one consumer) that travel over RabbitMQ.

The wire format is JSON. Every event carries the same envelope (`type`, `event_id`, `job_id`,
`occurred_at`); its `type` is also its routing key on the events exchange. `job_id` is null only on
messages that concern no job (a model loaded at a worker's start, a sweep). Events evolve only by
adding fields with defaults, so old subscribers keep decoding new messages.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

import msgspec

from schemas import topology as t
from schemas.jobs import Enrichment, ImageMetadata, ImageRecord, JobDocument, JobSpec
from schemas.webhooks import WebhookTarget

ProgressPhase = Literal["preparing", "loading_model", "generating", "hires", "saving"]
# What a pull provisions: a model for the catalog, or a LoRA for the LoRA folder.
PullKind = Literal["checkpoint", "lora"]


def new_id() -> str:
    return str(uuid.uuid4())


def derived_id(source: str, kind: str) -> str:
    """The id of the `kind` event published about `source` (an event id, or a job's attempt): the
    same every time it is announced, so that a copy published again (the handler's message came
    back after a broker failover, a nacked publish sent again) is skipped as a duplicate downstream."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"darkroom:{kind}:{source}"))


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Envelope shared by every event."""

    event_id: str = msgspec.field(default_factory=new_id)
    job_id: str
    occurred_at: datetime = msgspec.field(default_factory=utcnow)


class JobAccepted(Event, tag=t.JOB_ACCEPTED, kw_only=True):
    """The ingress validated a job, wrote its document and queued it."""

    spec: JobSpec


class JobEnriched(Event, tag=t.JOB_ENRICHED, kw_only=True):
    """The enricher settled the final prompt (style template applied, or passed through)."""

    prompt: str
    negative_prompt: str | None = None
    original_prompt: str
    style: str | None = None
    # Which path settled the prompt (template, LLM, or none); absent from older enrichers.
    enrichment: Enrichment | None = None


class JobStarted(Event, tag=t.JOB_STARTED, kw_only=True):
    """A generator worker took the job and began working on it."""

    worker: str
    attempt: int = 1
    # How many jobs share this job's pipeline call (dynamic batching); 1 when it runs alone.
    batch_jobs: int = 1


class JobProgressed(Event, tag=t.JOB_PROGRESSED, kw_only=True):
    """A step of generation finished (transient, throttled; may carry a small preview PNG)."""

    phase: ProgressPhase = "generating"
    step: int
    total_steps: int
    image_index: int = 1
    total_images: int = 1
    attempt: int = 1
    preview: bytes | None = None


class ModelLoading(Event, tag=t.MODEL_LOADING, kw_only=True):
    """A worker began loading a model for the job (the job waits for it)."""

    # Model events are the worker's: the job that needed the model, if any.
    job_id: str | None = None
    model: str
    worker: str


class ModelLoaded(Event, tag=t.MODEL_LOADED, kw_only=True):
    """A worker finished loading a model and keeps it warm (job_id: null when warmed at start)."""

    job_id: str | None = None
    model: str
    worker: str
    seconds: float
    bytes: int


class ModelEvicted(Event, tag=t.MODEL_EVICTED, kw_only=True):
    """A worker dropped a warm model to stay inside its memory budget (job_id: the job that needed room)."""

    job_id: str | None = None
    model: str
    worker: str
    bytes: int


class ModelPullStarted(Event, tag=t.MODEL_PULL_STARTED, kw_only=True):
    """The models stage began a pull: the files it will fetch and their total size (`pull_id` is
    the PullModel command's id; pulls concern no job)."""

    job_id: str | None = None
    pull_id: str
    model: str
    kind: PullKind = "checkpoint"
    source: str
    files: int
    total_bytes: int


class ModelPullProgressed(Event, tag=t.MODEL_PULL_PROGRESS, kw_only=True):
    """Bytes of a pull on disk so far (transient, throttled); a resumed pull starts where it stopped."""

    job_id: str | None = None
    pull_id: str
    model: str
    done_bytes: int
    total_bytes: int
    # The file being fetched, relative to the model's folder.
    file: str = ""


class ModelPullFailed(Event, tag=t.MODEL_PULL_FAILED, kw_only=True):
    """A pull stopped without a model; `reason` says why in words an operator can act on."""

    job_id: str | None = None
    pull_id: str
    model: str
    reason: str


class ModelAvailable(Event, tag=t.MODEL_AVAILABLE, kw_only=True):
    """A pulled model or LoRA is verified, in place and in the runtime catalog; generators see it
    on their next job that names it."""

    job_id: str | None = None
    pull_id: str | None = None
    model: str
    kind: PullKind = "checkpoint"
    # Where it lives, relative to the data directory, and the sha256 of each file in it.
    path: str
    files: dict[str, str] = {}
    bytes: int = 0
    family: str | None = None


class ModelRemoved(Event, tag=t.MODEL_REMOVED, kw_only=True):
    """A model or LoRA was removed from the runtime catalog and its files deleted; generators drop
    it from their warm cache."""

    job_id: str | None = None
    model: str
    kind: PullKind = "checkpoint"


class ImageGenerated(Event, tag=t.IMAGE_GENERATED, kw_only=True):
    """A worker produced one image of a job; the PNG bytes travel inside, so workers need no shared disk."""

    image_id: str
    image_number: int
    total_images: int
    # Images are filed under their job's creation day, so every attempt writes the same paths.
    job_created_at: datetime
    attempt: int = 1
    worker: str
    width: int
    height: int
    png: bytes
    metadata: ImageMetadata


class ImageSaved(Event, tag=t.IMAGE_SAVED, kw_only=True):
    """The saver wrote an image and its JSON sidecar durably into the data directory."""

    image: ImageRecord


class JobCompleted(Event, tag=t.JOB_COMPLETED, kw_only=True):
    """Every image of the job is saved; `images` lists them all, in order."""

    image_ids: list[str]
    images: list[ImageRecord] = []
    attempt: int = 1


class JobFailed(Event, tag=t.JOB_FAILED, kw_only=True):
    """The job ended without images; `reason` says why in words a user can act on."""

    reason: str
    attempt: int = 1


class JobCancelRequested(Event, tag=t.JOB_CANCEL_REQUESTED, kw_only=True):
    """A client asked to cancel the job; whoever holds it stops it."""

    requested_by: str | None = None


class JobCancelled(Event, tag=t.JOB_CANCELLED, kw_only=True):
    """The job was stopped before it finished; no images of it are kept."""

    reason: str = "cancelled by request"


class JobStalled(Event, tag=t.JOB_STALLED, kw_only=True):
    """A processing job went silent past its deadline."""

    attempt: int
    silent_seconds: float


class JobRequeued(Event, tag=t.JOB_REQUEUED, kw_only=True):
    """The job was put back in the queue: for another attempt (after a stall or an error), or
    with the same attempt (its worker shut down). Results of older attempts are ignored."""

    attempt: int
    reason: str
    # An operator replayed a parked job: this may bring a failed job back.
    replay: bool = False


class ImageDeleted(Event, tag=t.IMAGE_DELETED, kw_only=True):
    """An image and its sidecar were removed on request."""

    image_id: str


class ImageExpired(Event, tag=t.IMAGE_EXPIRED, kw_only=True):
    """An image was removed by the retention janitor after its time to live."""

    image_id: str


class WorkerHeartbeat(Event, tag=t.WORKER_HEARTBEAT, kw_only=True):
    """A worker is alive and busy with the job (sent while loading, when no steps report)."""

    worker: str
    attempt: int = 1


class WorkerPresence(Event, tag=t.WORKER_PRESENCE, kw_only=True):
    """A generator worker is up (transient, every `interval` seconds; job_id is null): where it
    runs, on what, which models it keeps warm and how busy it was. The last one, sent as it shuts
    down, says `leaving`. The ingress keeps the live set (GET /v1/workers)."""

    job_id: str | None = None
    worker: str
    host: str
    device: str
    dtype: str
    # Model ids warm in its memory, most recently used last.
    models: tuple[str, ...] = ()
    max_batch: int
    # Share of the last interval its pipeline thread spent generating (0 to 1).
    busy: float = 0.0
    # Jobs whose images it generated since it started.
    jobs_done: int = 0
    started_at: datetime
    # Seconds until the next one: a worker silent for 3 intervals is gone.
    interval: float
    leaving: bool = False


class WebhookDelivered(Event, tag=t.WEBHOOK_DELIVERED, kw_only=True):
    """The notifier POSTed the job's document to its webhook for `for_event` and got a 2xx."""

    webhook_id: str
    for_event: str
    url: str
    tries: int
    status_code: int


class WebhookFailed(Event, tag=t.WEBHOOK_FAILED, kw_only=True):
    """Every try to POST the job's document to its webhook for `for_event` failed; the delivery
    is parked in the dead-letter queue (`darkroom ops dead-letters replay` tries again)."""

    webhook_id: str
    for_event: str
    url: str
    tries: int
    error: str
    status_code: int | None = None


AnyEvent = (
    JobAccepted
    | JobEnriched
    | JobStarted
    | JobProgressed
    | ModelLoading
    | ModelLoaded
    | ModelEvicted
    | ModelPullStarted
    | ModelPullProgressed
    | ModelPullFailed
    | ModelAvailable
    | ModelRemoved
    | ImageGenerated
    | ImageSaved
    | JobCompleted
    | JobFailed
    | JobCancelRequested
    | JobCancelled
    | JobStalled
    | JobRequeued
    | ImageDeleted
    | ImageExpired
    | WorkerHeartbeat
    | WorkerPresence
    | WebhookDelivered
    | WebhookFailed
)

EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__  # type: ignore[attr-defined]

# Events that may be lost without harm: published without confirms, not persisted.
TRANSIENT_EVENTS: tuple[type[Event], ...] = (JobProgressed, WorkerHeartbeat, WorkerPresence, ModelPullProgressed)


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Envelope shared by every command (`job_id`: the job it is for, null for a sweep)."""

    command_id: str = msgspec.field(default_factory=new_id)
    job_id: str
    issued_at: datetime = msgspec.field(default_factory=utcnow)


class GenerateImages(Command, tag=t.GENERATE_IMAGES, kw_only=True):
    """Generate the images of a job (enriched prompt included). Consumed by the generator queue.

    Input images travel inside as PNG bytes, so generator workers need no shared disk.
    """

    spec: JobSpec
    attempt: int = 1
    created_at: datetime
    init_image: bytes | None = None
    mask_image: bytes | None = None


class SweepStalled(Command, tag=t.SWEEP_STALLED, kw_only=True):
    """Ask the reaper to sweep now (POST /v1/queue/reset-stalled); it answers how many jobs it reset.

    `silent_seconds` overrides the stall timeout for this sweep (never below 1 s)."""

    job_id: str | None = None  # a sweep is for no job in particular
    silent_seconds: float | None = None


class DeliverWebhook(Command, tag=t.DELIVER_WEBHOOK, kw_only=True):
    """POST `document` (the job as of `for_event`) to the job's webhook, signed with its owner's
    secret. `webhook_id` (the event's id) is the same on every try; `tries` counts those made."""

    webhook_id: str
    for_event: str
    target: WebhookTarget
    owner: str | None = None
    document: JobDocument
    tries: int = 0


class PullModel(Command, tag=t.PULL_MODEL, kw_only=True):
    """Provision a model or LoRA: from a Hugging Face repo id (HF_ENDPOINT, HF_TOKEN honoured), an
    http(s) URL, or a local path. Consumed by the models stage; `command_id` is the pull's id."""

    job_id: str | None = None
    source: str
    # The catalog id (or LoRA name) it gets; derived from the source when absent.
    name: str | None = None
    kind: PullKind = "checkpoint"
    revision: str | None = None
    # Expected sha256 of a single-file source (URL or file); hub files are checked against the hub's own.
    sha256: str | None = None
    # Pickled weights (.ckpt, .bin, .pt) can run code when loaded: refused unless this is set.
    allow_pickle: bool = False
    # For a single-file checkpoint: the local diffusers folder (or catalog id) with its configs;
    # default: the catalog's default model.
    config: str | None = None
    requested_by: str | None = None


class RemoveModel(Command, tag=t.REMOVE_MODEL, kw_only=True):
    """Remove a pulled model or LoRA (request-reply: the models stage answers with a RemovalResult).

    Refused while jobs that are pending or processing name it."""

    job_id: str | None = None
    model: str
    kind: PullKind = "checkpoint"


AnyCommand = GenerateImages | SweepStalled | DeliverWebhook | PullModel | RemoveModel


def command_for_attempt(
    job: GenerateImages | JobDocument, attempt: int, *, init_image: bytes | None = None, mask_image: bytes | None = None
) -> GenerateImages:
    """The GenerateImages that sends a job to the generators (again) as `attempt`.

    The one builder for a retry after an error, a redelivery, a stalled job's requeue and an
    operator's replay: from the job's last command (same id, same inputs), or, when only its
    document is left (the reaper), from the document and its input files' bytes.
    """
    if isinstance(job, GenerateImages):
        return msgspec.structs.replace(job, attempt=attempt)
    return GenerateImages(job_id=job.id, spec=job.spec(), attempt=attempt, created_at=job.created_at,
                          init_image=init_image, mask_image=mask_image)


# Replies answer a request (RabbitMQ direct reply-to); they are neither events nor commands, are
# never routed by an exchange, and are not part of the published event schema.


class SweepResult(msgspec.Struct, frozen=True, kw_only=True):
    """The reaper's answer to SweepStalled."""

    reset_count: int
    failed_count: int
    job_ids: list[str]


class RemovalResult(msgspec.Struct, frozen=True, kw_only=True):
    """The models stage's answer to RemoveModel."""

    removed: bool
    message: str
    # Jobs that still use the model (pending or processing) when the removal was refused.
    jobs: list[str] = []


def event_schema() -> dict:
    """JSON Schema of every event and command: the published contract, committed as events.schema.json."""
    (schema,), components = msgspec.json.schema_components([AnyEvent | AnyCommand])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Darkroom events and commands",
        "description": __doc__.strip(),
        **schema,
        "$defs": components,
    }
