"""The A1111 Discord bot's per-user sessions and presets, translated onto Darkroom's.

A bot user's session is the Darkroom session named by its `user_id`, under the caller's tenant
(anonymous from loopback, or the key's): its LoRAs are the bot's `active_loras` (file name ->
weight) and its defaults the bot's `custom_settings`, through CUSTOM_SETTINGS. A bot user's
preset is a Darkroom preset with the id `<user_id>.<12 hex>`, its `config` through the same table
(plus `active_loras`). Everything else the bot stores (`controlnet_configs`) Darkroom does not do.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

from schemas.catalog import Catalog
from schemas.layout import DataLayout, lora_file
from schemas.library import Layer, Preset, PresetBody, Session, SessionBody, is_name
from services.ingress.dialects.a1111_types import PresetInfo, UserSession
from services.ingress.domain.errors import Invalid

# -- mapping tables ------------------------------------------------------------------------------------

# The bot's custom_settings / preset config keys -> a field of Darkroom's session or preset
# ("settings.<name>" or a top-level field). The first key naming a field is how it reads back.
CUSTOM_SETTINGS: dict[str, str] = {
    "preferred_sampler": "settings.sampler", "sampler_name": "settings.sampler",
    "default_steps": "settings.num_inference_steps", "steps": "settings.num_inference_steps",
    "cfg_scale": "settings.guidance_scale", "width": "settings.width", "height": "settings.height",
    "seed": "settings.seed", "batch_size": "settings.batch_size", "batch_count": "settings.batch_count",
    "denoising_strength": "settings.strength", "checkpoint": "model", "negative_prompt": "negative_prompt",
}
# Read back under one name each.
READ_BACK: dict[str, str] = {path: key for key, path in reversed(list(CUSTOM_SETTINGS.items()))}
PRESET_LORAS = "active_loras"  # a preset's config may carry LoRAs too, as the session's {file: weight}
_HASH = re.compile(r"\s*\[[0-9a-fA-F]+\]$")
_EXTENSION = re.compile(r"\.(safetensors|ckpt|pt|bin)$")


def checkpoint_model(name: str | None, catalog: Catalog) -> str | None:
    """A catalog id for an A1111 checkpoint name ("name.safetensors [hash]", "name"); None if unknown."""
    if not name:
        return None
    base = _EXTENSION.sub("", _HASH.sub("", name).strip())
    return name if name in catalog.models else base if base in catalog.models else None


def check_user(user_id: str) -> None:
    if not is_name(user_id) or len(user_id) > 50:
        raise Invalid(f"user_id: {user_id!r} must be 1-50 letters, digits, '.', '_' or '-', starting with a "
                      "letter or digit")


def merged(layer: Layer, changes: dict[str, Any], catalog: Catalog) -> dict[str, Any]:
    """The layer's fields with bot settings merged in (null removes one); Invalid naming the key."""
    fields = msgspec.to_builtins(layer)
    unknown = sorted(set(changes) - set(CUSTOM_SETTINGS))
    if unknown:
        raise Invalid(f"{unknown[0]}: not a setting Darkroom keeps; supported: {', '.join(CUSTOM_SETTINGS)}")
    for key, value in changes.items():
        if key == "checkpoint" and value is not None:
            model = checkpoint_model(str(value), catalog)
            if model is None:
                raise Invalid(f"checkpoint: unknown model {value!r}; valid: {', '.join(sorted(catalog.models))}")
            value = model
        path = CUSTOM_SETTINGS[key]
        if path.startswith("settings."):
            fields.setdefault("settings", {})[path.removeprefix("settings.")] = value
        else:
            fields[path] = value
    return fields


def custom_settings(layer: Layer) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path, key in READ_BACK.items():
        value = getattr(layer.settings, path.removeprefix("settings.")) if path.startswith("settings.") \
            else getattr(layer, path)
        if value is not None:
            found[key] = value
    return found


def active_loras(layer: Layer, layout: DataLayout) -> dict[str, float]:
    """{file name: weight}, as the bot lists them."""
    found = {}
    for lora in layer.loras:
        path = lora_file(layout.loras_dir, lora.name)
        found[path.name if path is not None else f"{lora.name}.safetensors"] = lora.weight
    return found


def user_session(user_id: str, session: Session, layout: DataLayout) -> UserSession:
    return UserSession(user_id=user_id, active_loras=active_loras(session, layout), controlnet_configs=[],
                       custom_settings=custom_settings(session), last_updated=session.updated_at)


def with_settings(body: SessionBody, changes: dict[str, Any], catalog: Catalog) -> SessionBody:
    try:
        return msgspec.convert(merged(body, changes, catalog), SessionBody)
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc).replace("$.", "")) from None


def preset_body(user_id: str, name: str, description: str | None, config: dict[str, Any],
                catalog: Catalog) -> PresetBody:
    """A new Darkroom preset for a bot user's SavePresetRequest."""
    check_user(user_id)
    settings = {k: v for k, v in config.items() if k != PRESET_LORAS}
    fields = merged(Layer(), settings, catalog)
    loras = config.get(PRESET_LORAS) or {}
    if not isinstance(loras, dict):
        raise Invalid(f"config.{PRESET_LORAS}: expected {{\"file.safetensors\": weight}}")
    fields["loras"] = [{"name": file, "weight": weight} for file, weight in loras.items()]
    fields |= {"id": f"{user_id}.{uuid.uuid4().hex[:12]}", "name": name, "description": description or ""}
    try:
        return msgspec.convert(fields, PresetBody)
    except msgspec.ValidationError as exc:
        raise Invalid("config." + str(exc).replace("$.", "")) from None


def owns(user_id: str, preset_id: str) -> bool:
    return preset_id.rpartition(".")[0] == user_id


def preset_info(preset: Preset, layout: DataLayout) -> PresetInfo:
    config = custom_settings(preset)
    if preset.loras:
        config[PRESET_LORAS] = active_loras(preset, layout)
    return PresetInfo(preset_id=preset.id, name=preset.name, description=preset.description or None, config=config,
                      created_at=preset.created_at, last_used=None)
