"""Native REST API (`/v1`) request and response bodies."""

from __future__ import annotations

from typing import Annotated

import msgspec

NumImages = Annotated[int, msgspec.Meta(ge=1, le=8, description="Images to generate, 1-8")]
Steps = Annotated[int, msgspec.Meta(ge=1, description="Denoising steps (the model caps it)")]
Guidance = Annotated[float, msgspec.Meta(ge=0.0, le=50.0, description="Classifier-free guidance scale")]
Side = Annotated[int, msgspec.Meta(ge=8, description="Pixels, a multiple of 8 (the model caps it)")]
Seed = Annotated[int, msgspec.Meta(ge=-1, le=2**32 - 1, description="-1 or absent: random")]


class SettingsInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional generation settings; anything left out takes the model's default."""

    num_images: NumImages | None = None
    num_inference_steps: Steps | None = None
    guidance_scale: Guidance | None = None
    width: Side | None = None
    height: Side | None = None
    seed: Seed | None = None


class JobRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/jobs: what to generate."""

    prompt: Annotated[str, msgspec.Meta(description="What to draw")]
    negative_prompt: Annotated[str | None, msgspec.Meta(description="What to avoid")] = None
    model: Annotated[str | None, msgspec.Meta(description="Model id from GET /v1/models")] = None
    style: Annotated[str | None, msgspec.Meta(description="Style template applied by the enricher")] = None
    settings: SettingsInput = msgspec.field(default_factory=SettingsInput)


class JobCreated(msgspec.Struct, kw_only=True):
    """202 answer to POST /v1/jobs."""

    id: str
    status: str
    status_url: str
    num_images: int
    message: str


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


class Health(msgspec.Struct, kw_only=True):
    """GET /health. `status` is `ok`, `degraded` (accepting jobs, but no generator is running) or
    `unavailable` (503: the broker is unreachable or the data directory is not writable)."""

    status: str
    broker: str
    data_dir: str
    generators: int
