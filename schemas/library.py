"""The users' library over the REST API: the LoRA index, sessions (spaces) and presets.

A session and a preset carry the same `Layer` of job values (model, settings, LoRAs, style,
negative prompt); a job naming them is filled in by one precedence rule (see
`services.ingress.domain.layers.layered`): the job's own values, then the session's, then the
preset's, then the model's defaults.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from schemas.api import LoraInput, SettingsInput

# LoRA base-model families as the library names them (`?base=`); `unknown` when a file says nothing.
Base = Literal["sd1", "sd2", "sdxl", "sd3", "flux", "unknown"]
BASES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sd3", "flux", "unknown")
# The catalog's model families (schemas.catalog.Family) as LoRA bases.
FAMILY_BASE: dict[str, str] = {"sd1.x": "sd1", "sd2.x": "sd2", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux"}

# Ids of sessions and presets: also their file names, so nothing else is ever allowed.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def is_name(value: str) -> bool:
    return bool(_NAME.match(value)) and ".." not in value


class LoraSummary(msgspec.Struct, kw_only=True):
    """One LoRA of the library, as listed and searched."""

    name: str
    base: Base
    trigger_words: list[str]
    tags: list[str]
    size_bytes: int
    sha256: str | None
    preview_url: str | None = None
    # 0-100 when searching: how well the query matched its name, tags or trigger words.
    score: float | None = None


class LoraInfo(msgspec.Struct, kw_only=True):
    """GET /v1/loras/{name}: one LoRA with what its safetensors header says about it."""

    name: str
    file: str
    base: Base
    # The raw base-model string the file declared (`ss_base_model_version`, `modelspec.architecture`).
    base_model: str | None
    trigger_words: list[str]
    tags: list[str]
    # Tag -> how often it appeared in the training captions (kohya's ss_tag_frequency, summed).
    tag_frequency: dict[str, int]
    size_bytes: int
    sha256: str | None
    modified_at: datetime
    preview_url: str | None = None
    # The header's __metadata__ (long values shortened).
    metadata: dict[str, str] = {}


class LoraPage(msgspec.Struct, kw_only=True):
    """GET /v1/loras: best match first when searching, else by name; follow `next_cursor`."""

    loras: list[LoraSummary]
    total: int
    next_cursor: str | None


class ScanAnswer(msgspec.Struct, kw_only=True):
    """POST /v1/loras/scan: what the rescan changed in the index."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    total: int
    seconds: float


Weight = Annotated[float, msgspec.Meta(ge=-4.0, le=4.0)]
Text = Annotated[str, msgspec.Meta(max_length=2000)]


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
