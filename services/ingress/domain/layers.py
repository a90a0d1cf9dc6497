"""The one precedence rule for a job's values: **the job's own values win, then its session's,
then its preset's, then the model's defaults.**

`layered` applies the first three (the model's defaults are filled in afterwards by
`services.ingress.requests.resolve_job`, for whatever is still left out) and says what it took
from where; the job document records that as `applied`. Per field:

- `model`, `style`, `negative_prompt`: the first layer that sets one.
- `settings`: field by field, the first layer that sets it. The image count (`num_images`,
  `batch_size`, `batch_count`) is one group: a layer that sets any of the three supplies all
  three, so counts from two layers never contradict each other. `enable_hr` counts as set when
  true.
- `loras`: the union, by LoRA name: the job's LoRAs first (with their weights), then the
  session's it does not name, then the preset's neither names.

The preset is the job's `preset`, else the session's `preset`.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from schemas.api import JobRequest, LoraInput, SettingsInput
from schemas.jobs import Applied
from schemas.layout import LORA_SUFFIXES, DataLayout
from schemas.library import Layer, Preset, Session
from services.ingress.auth import Principal
from services.ingress.domain.errors import Invalid, NotFound
from services.ingress.domain.owned import OwnedStore

COUNTS = ("num_images", "batch_size", "batch_count")
SESSION_LIMIT = 100
PRESET_LIMIT = 200


def sessions_store(layout: DataLayout) -> OwnedStore[Session]:
    return OwnedStore(layout.state_dir / "sessions", Session, "session", SESSION_LIMIT)


def presets_store(layout: DataLayout) -> OwnedStore[Preset]:
    return OwnedStore(layout.state_dir / "presets", Preset, "preset", PRESET_LIMIT)


def lora_key(name: str) -> str:
    """A LoRA's name as the library knows it (file name without extension)."""
    base = Path(name).name
    for suffix in LORA_SUFFIXES:
        base = base.removesuffix(suffix)
    return base


def layered(request: JobRequest, session: Session | None, preset: Preset | None) -> tuple[JobRequest, Applied | None]:
    """The job with what it leaves out taken from its session, then its preset; and what was taken."""
    if session is None and preset is None:
        return request, None
    layers: list[tuple[str, Layer]] = [(label, layer) for label, layer in (("session", session), ("preset", preset))
                                       if layer is not None]
    taken: dict[str, str] = {}
    changes: dict[str, object] = {}
    for name in ("model", "style", "negative_prompt"):
        if getattr(request, name) in (None, ""):
            for label, layer in layers:
                if getattr(layer, name) not in (None, ""):
                    changes[name], taken[name] = getattr(layer, name), label
                    break
    settings = _settings(request.settings, layers, taken)
    if settings is not request.settings:
        changes["settings"] = settings
    loras = _loras(request.loras, layers, taken)
    if len(loras) != len(request.loras):
        changes["loras"] = loras
    applied = Applied(session=session.id if session else None, preset=preset.id if preset else None, fields=taken)
    return msgspec.structs.replace(request, **changes), applied


def _settings(given: SettingsInput, layers: list[tuple[str, Layer]], taken: dict[str, str]) -> SettingsInput:
    values: dict[str, object] = {}
    if all(getattr(given, name) is None for name in COUNTS):
        for label, layer in layers:
            if any(getattr(layer.settings, name) is not None for name in COUNTS):
                for name in COUNTS:
                    if getattr(layer.settings, name) is not None:
                        values[name], taken[f"settings.{name}"] = getattr(layer.settings, name), label
                break
    for field in msgspec.structs.fields(SettingsInput):
        name = field.name
        if name in COUNTS or getattr(given, name) not in (None, False):
            continue
        for label, layer in layers:
            value = getattr(layer.settings, name)
            if value not in (None, False):
                values[name], taken[f"settings.{name}"] = value, label
                break
    return msgspec.structs.replace(given, **values) if values else given


def _loras(given: list[LoraInput], layers: list[tuple[str, Layer]], taken: dict[str, str]) -> list[LoraInput]:
    merged = list(given)
    named = {lora_key(lora.name) for lora in given}
    for label, layer in layers:
        for lora in layer.loras:
            key = lora_key(lora.name)
            if key not in named:
                named.add(key)
                merged.append(lora)
                taken[f"loras.{key}"] = label
    return merged


def apply_layers(request: JobRequest, principal: Principal, layout: DataLayout) -> tuple[JobRequest, Applied | None]:
    """Load the session and preset a job names (its owner's only) and apply `layered`."""
    if request.session is None and request.preset is None:
        return request, None
    session = preset = None
    if request.session is not None:
        try:
            session = sessions_store(layout).get(principal.owner, request.session)
        except NotFound:
            raise Invalid(f"session: no session {request.session!r} (create it with PUT /v1/sessions/{{id}})") from None
    preset_id = request.preset or (session.preset if session else None)
    if preset_id is not None:
        try:
            preset = presets_store(layout).get(principal.owner, preset_id)
        except NotFound:
            field = "preset" if request.preset else f"session {session.id!r}: its preset"
            raise Invalid(f"{field}: no preset {preset_id!r}") from None
    return layered(request, session, preset)
