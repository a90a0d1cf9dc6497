"""The A1111 Discord bot API's models (its api/models.py), field for field, with its bounds (out
of them: 422, as FastAPI answers). Every optional field also takes null (= its default); fields
it does not know are ignored, as pydantic ignores them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

Seed = Annotated[int, msgspec.Meta(ge=-1, le=2**32 - 1)]


class GenerationBody(msgspec.Struct, kw_only=True):
    """BaseGenerationRequest: the bot's txt2img request. Left out or null: the user's session
    (`custom_settings`), then the model's defaults."""

    user_id: Annotated[str, msgspec.Meta(min_length=1)]
    prompt: str
    negative_prompt: str | None = None
    checkpoint: str | None = None
    vae: str | None = None
    sampler_name: str | None = None
    steps: Annotated[int, msgspec.Meta(ge=1, le=150)] | None = None
    cfg_scale: Annotated[float, msgspec.Meta(ge=1.0, le=30.0)] | None = None
    width: Annotated[int, msgspec.Meta(ge=64, le=2048)] | None = None
    height: Annotated[int, msgspec.Meta(ge=64, le=2048)] | None = None
    batch_count: Annotated[int, msgspec.Meta(ge=1, le=10)] | None = None
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=4)] | None = None
    seed: Seed | None = None
    enable_hr: bool | None = None
    hr_scale: Annotated[float, msgspec.Meta(ge=1.0, le=4.0)] | None = None
    hr_upscaler: str | None = None
    hr_second_pass_steps: Annotated[int, msgspec.Meta(ge=0, le=150)] | None = None
    denoising_strength: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None


class Img2ImgBody(GenerationBody, kw_only=True):
    """Img2ImgRequest: its extra fields are accepted; Darkroom resizes and paints the whole image."""

    resize_mode: int | None = None
    inpaint_full_res: bool | None = None
    inpaint_full_res_padding: int | None = None
    inpainting_mask_invert: int | None = None


class GenerationAnswer(msgspec.Struct, kw_only=True):
    """GenerationResponse."""

    job_id: str
    status: str
    message: str
    estimated_time: int | None = None


class JobStatusAnswer(msgspec.Struct, kw_only=True):
    """JobStatus: `progress` 0-1."""

    job_id: str
    status: str
    progress: float | None
    eta_relative: float | None
    message: str | None
    created_at: datetime
    completed_at: datetime | None = None


class JobResult(msgspec.Struct, kw_only=True):
    """JobResult: `images` are plain base64 PNGs (no data: prefix); `info` a dict."""

    job_id: str
    status: str
    images: list[str]
    info: dict[str, Any]
    parameters: dict[str, Any]
    error: str | None = None


class ModelsAnswer(msgspec.Struct, kw_only=True):
    checkpoints: list[str]
    vaes: list[str]
    samplers: list[str]
    upscalers: list[str]


class LoraInfo(msgspec.Struct, kw_only=True):
    filename: str
    name: str
    tags: list[str]
    trigger_words: list[str]
    strength_range: list[float]
    description: str | None = None
    thumbnail: str | None = None
    civitai_id: int | None = None


class LoraList(msgspec.Struct, kw_only=True):
    loras: list[LoraInfo]
    total: int


class ScanAnswer(msgspec.Struct, kw_only=True):
    message: str
    details: dict[str, Any]


class AddLora(msgspec.Struct, kw_only=True):
    """AddLoRARequest."""

    filename: Annotated[str, msgspec.Meta(min_length=1)]
    weight: Annotated[float, msgspec.Meta(ge=0.1, le=2.0)]


class UserSession(msgspec.Struct, kw_only=True):
    user_id: str
    active_loras: dict[str, float]
    controlnet_configs: list[dict[str, Any]]
    custom_settings: dict[str, Any]
    last_updated: datetime | None = None


class SessionAnswer(msgspec.Struct, kw_only=True):
    message: str
    session: UserSession


class Message(msgspec.Struct, kw_only=True):
    message: str


class SavePreset(msgspec.Struct, kw_only=True):
    """SavePresetRequest: `config` holds generation fields (see CONFIG_FIELDS)."""

    name: Annotated[str, msgspec.Meta(max_length=200)]
    config: dict[str, Any]
    description: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


class PresetSaved(msgspec.Struct, kw_only=True):
    message: str
    preset_id: str


class PresetInfo(msgspec.Struct, kw_only=True):
    preset_id: str
    name: str
    config: dict[str, Any]
    created_at: datetime
    description: str | None = None
    last_used: datetime | None = None


class PresetList(msgspec.Struct, kw_only=True):
    presets: list[PresetInfo]


class HealthAnswer(msgspec.Struct, kw_only=True):
    status: str
    a1111_status: dict[str, Any]
    timestamp: str


class ValidationItem(msgspec.Struct, kw_only=True):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(msgspec.Struct, kw_only=True):
    """FastAPI's error answer: a message, or (422) a list of what failed validation."""

    detail: str | list[ValidationItem]
