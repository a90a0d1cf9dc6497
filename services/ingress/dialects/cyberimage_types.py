"""CyberImage's API bodies (docs/dialects/cyberimage.md), field for field. Requests accept fields
they do not know (CyberImage's clients send model-specific extras such as `max_sequence_length`
or `callback_steps`); answers carry CyberImage's fields, sometimes a few more."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class GenerateSettings(msgspec.Struct, kw_only=True):
    """`settings` of POST /api/generate; left out: the model's defaults."""

    num_images: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    max_sequence_length: int | None = None  # accepted; Darkroom's models take the whole prompt
    seed: int | None = None  # not in CyberImage; Darkroom honours it


class GenerateBody(msgspec.Struct, kw_only=True):
    """POST /api/generate. `model_id`: a catalog id, or any other name (`flux-1`, ...): the default model."""

    prompt: str
    model_id: str | None = None
    negative_prompt: str | None = None
    settings: GenerateSettings | None = None


class GenerateAnswer(msgspec.Struct, kw_only=True):
    job_id: str
    status: str
    num_images: int
    message: str


class ModelSummary(msgspec.Struct, kw_only=True):
    id: str
    description: str


class ModelsAnswer(msgspec.Struct, kw_only=True):
    models: dict[str, ModelSummary]
    default: str


class StatusProgress(msgspec.Struct, kw_only=True):
    preparing: bool
    loading_model: bool
    generating: bool
    saving: bool
    completed: bool
    failed: bool
    step: int | None
    total_steps: int | None


class ImageSettings(msgspec.Struct, kw_only=True):
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    seed: int | None = None


class ImageMeta(msgspec.Struct, kw_only=True):
    """GET /api/image/{id}/metadata, and `metadata` of each image in a status answer."""

    model_id: str
    prompt: str
    negative_prompt: str | None
    settings: ImageSettings
    generation_time: float
    image_number: int
    total_images: int
    seed: int


class StatusImage(msgspec.Struct, kw_only=True):
    id: str
    file_path: str
    created_at: datetime
    metadata: ImageMeta
    url: str  # absolute: <base>/api/get_image/<id>


class StatusAnswer(msgspec.Struct, kw_only=True):
    """GET /api/status/{job_id}. `error` is set when the job failed (or was cancelled)."""

    id: str
    status: str
    model_id: str
    prompt: str
    negative_prompt: str | None
    settings: ImageSettings
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    message: str
    progress: StatusProgress
    images: list[StatusImage]
    error: str | None = None
    num_images: int = 1


class Counts(msgspec.Struct, kw_only=True):
    pending: int
    processing: int
    completed: int
    failed: int
    total: int


class QueueAnswer(msgspec.Struct, kw_only=True, omit_defaults=True):
    """GET /api/queue; with ?detailed=true also the last 24 h, per model, timings, failure rate."""

    pending: int
    processing: int
    completed: int
    failed: int
    total: int
    queue_size: int
    recent_24h: Counts | None = None
    avg_processing_time_seconds: float | None = None
    models: dict[str, Counts] | None = None
    failure_rate: float | None = None


class ResetAnswer(msgspec.Struct, kw_only=True):
    status: str
    reset_count: int
    message: str


class GalleryItem(msgspec.Struct, kw_only=True):
    id: str
    model_id: str
    prompt: str
    created_at: datetime
    settings: dict[str, Any]
    url: str


class GalleryAnswer(msgspec.Struct, kw_only=True):
    images: list[GalleryItem]
    page: int
    limit: int
    has_more: bool
    total: int


class EnrichBody(msgspec.Struct, kw_only=True):
    prompt: str | None = None
    style: str | None = None


class EnrichAnswer(msgspec.Struct, kw_only=True):
    original_prompt: str
    enriched_prompt: str
    style: str


class StatusMessage(msgspec.Struct, kw_only=True):
    """DELETE /api/image/{id}: {"status": "success", "message": ...}; errors: {"status": "error", ...}."""

    status: str
    message: str


class EnrichError(msgspec.Struct, kw_only=True):
    """/api/enrich's errors."""

    error: str


# -- MCP (JSON-RPC 2.0 over POST /api/mcp) ----------------------------------------------------------------

class McpRequest(msgspec.Struct, kw_only=True):
    jsonrpc: str | None = None
    method: str | None = None
    params: dict[str, Any] | None = None
    id: str | int | None = None


class McpError(msgspec.Struct, kw_only=True):
    code: int
    message: str


class McpAnswer(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A JSON-RPC 2.0 answer: `result` or `error`."""

    jsonrpc: str
    id: str | int | None
    result: dict[str, Any] | None = None
    error: McpError | None = None
