"""Commands and queries on presets: a key's named sets of model, settings, LoRAs, style and
negative prompt, which a job (or a session) names by id. Each belongs to the key that made it;
another key gets NotFound. Files under `state/presets/<owner>/`, written atomically."""

from __future__ import annotations

import asyncio
import re
import secrets

from schemas.catalog import Catalog
from schemas.events import utcnow
from schemas.layout import DataLayout
from schemas.library import Preset, PresetBody, PresetList, is_name
from services.ingress.auth import Principal
from services.ingress.domain.errors import Conflict, Invalid
from services.ingress.domain.layers import presets_store
from services.ingress.domain.sessions import check_layer


def _new_id(body: PresetBody) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", body.name).strip("-._")[:40]
    return f"{slug or 'preset'}-{secrets.token_hex(3)}"


def _preset(preset_id: str, body: PresetBody, principal: Principal, loras: list, earlier: Preset | None) -> Preset:
    now = utcnow()
    fields = {f: getattr(body, f) for f in PresetBody.__struct_fields__ if f != "id"}
    fields["loras"] = loras
    return Preset(**fields, id=preset_id, created_at=earlier.created_at if earlier else now, updated_at=now,
                  owner=principal.owner)


async def list_presets(principal: Principal, *, layout: DataLayout) -> PresetList:
    return PresetList(presets=await asyncio.to_thread(presets_store(layout).all, principal.owner))


async def get_preset(preset_id: str, principal: Principal, *, layout: DataLayout) -> Preset:
    return await asyncio.to_thread(presets_store(layout).get, principal.owner, preset_id)


async def create_preset(body: PresetBody, principal: Principal, *, layout: DataLayout, catalog: Catalog) -> Preset:
    """A new preset; its id is `body.id` (409 if taken) or made from its name."""
    store = presets_store(layout)
    preset_id = body.id or _new_id(body)
    preset = _preset(preset_id, body, principal, check_layer(body, layout=layout, catalog=catalog), None)

    def create() -> Preset:
        with store.lock:
            if store.exists(principal.owner, preset_id):
                raise Conflict(f"preset {preset_id!r} exists already; PUT /v1/presets/{preset_id} replaces it")
            store.put(principal.owner, preset_id, preset)
        return preset

    return await asyncio.to_thread(create)


async def put_preset(preset_id: str, body: PresetBody, principal: Principal, *, layout: DataLayout,
                     catalog: Catalog) -> tuple[Preset, bool]:
    """Create or replace a preset; (the preset, whether it was created)."""
    if not is_name(preset_id):
        raise Invalid(f"preset id {preset_id!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if body.id is not None and body.id != preset_id:
        raise Invalid(f"id: {body.id!r} differs from the path's {preset_id!r}")
    store = presets_store(layout)
    loras = check_layer(body, layout=layout, catalog=catalog)

    def put() -> tuple[Preset, bool]:
        with store.lock:
            earlier = store.find(principal.owner, preset_id)
            preset = _preset(preset_id, body, principal, loras, earlier)
            store.put(principal.owner, preset_id, preset)
            return preset, earlier is None

    return await asyncio.to_thread(put)


async def delete_preset(preset_id: str, principal: Principal, *, layout: DataLayout) -> None:
    await asyncio.to_thread(presets_store(layout).delete, principal.owner, preset_id)


