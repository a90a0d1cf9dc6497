"""Commands and queries on sessions (spaces): a key's named defaults (model, settings, LoRAs,
style, negative prompt, a preset) that the jobs naming them use. Each belongs to the key that made
it; another key gets NotFound. Files under `state/sessions/<owner>/`, written atomically."""

from __future__ import annotations

import asyncio

import msgspec

from schemas.api import LoraInput
from schemas.catalog import SAMPLERS, Catalog
from schemas.events import utcnow
from schemas.layout import DataLayout, lora_file
from schemas.library import Layer, Session, SessionBody, SessionLora, is_name
from services.ingress.auth import Principal
from services.ingress.domain.errors import Invalid, NotFound
from services.ingress.domain.layers import lora_key, sessions_store


def _check_id(session_id: str) -> None:
    if not is_name(session_id):
        raise Invalid(f"session id {session_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                      f"letter or digit")


def check_layer(body: Layer, *, layout: DataLayout, catalog: Catalog) -> list[LoraInput]:
    """Check a session's or preset's values against the catalog and the library (Invalid naming
    the field); its LoRAs as the library names them."""
    if body.model is not None and body.model not in catalog.models:
        raise Invalid(f"model: unknown model {body.model!r}; valid models: {', '.join(sorted(catalog.models))}")
    if body.style is not None and body.style not in catalog.styles:
        raise Invalid(f"style: unknown style {body.style!r}; valid styles: {', '.join(sorted(catalog.styles))}")
    sampler = body.settings.sampler
    if sampler is not None and sampler not in SAMPLERS:
        raise Invalid(f"settings.sampler: unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    seen, checked = set(), []
    for index, lora in enumerate(body.loras):
        path = lora_file(layout.loras_dir, lora.name)
        if path is None:
            raise Invalid(f"loras[{index}].name: unknown LoRA {lora.name!r}")
        if path.stem in seen:
            raise Invalid(f"loras[{index}].name: LoRA {path.stem!r} is listed twice")
        seen.add(path.stem)
        checked.append(LoraInput(name=path.stem, weight=lora.weight))
    return checked


async def get_session(session_id: str, principal: Principal, *, layout: DataLayout) -> Session:
    return await asyncio.to_thread(sessions_store(layout).get, principal.owner, session_id)


async def put_session(session_id: str, body: SessionBody, principal: Principal, *, layout: DataLayout,
                      catalog: Catalog) -> tuple[Session, bool]:
    """Create or replace a session's defaults; (the session, whether it was created)."""
    _check_id(session_id)
    loras = check_layer(body, layout=layout, catalog=catalog)
    if body.preset is not None and not is_name(body.preset):
        raise Invalid(f"preset: no preset {body.preset!r}")
    store = sessions_store(layout)

    def put() -> tuple[Session, bool]:
        with store.lock:
            earlier = store.find(principal.owner, session_id)
            now = utcnow()
            session = Session(**{f: getattr(body, f) for f in SessionBody.__struct_fields__}, id=session_id,
                              created_at=earlier.created_at if earlier else now, updated_at=now,
                              owner=principal.owner)
            session = msgspec.structs.replace(session, loras=loras)
            store.put(principal.owner, session_id, session)
            return session, earlier is None

    return await asyncio.to_thread(put)


async def delete_session(session_id: str, principal: Principal, *, layout: DataLayout) -> None:
    await asyncio.to_thread(sessions_store(layout).delete, principal.owner, session_id)


async def _change_loras(session_id: str, principal: Principal, layout: DataLayout, change) -> Session:
    store = sessions_store(layout)

    def apply() -> Session:
        with store.lock:
            session = store.get(principal.owner, session_id)
            updated = msgspec.structs.replace(session, loras=change(list(session.loras)), updated_at=utcnow())
            store.put(principal.owner, session_id, updated)
            return updated

    return await asyncio.to_thread(apply)


async def add_lora(session_id: str, lora: SessionLora, principal: Principal, *, layout: DataLayout) -> Session:
    """Add a LoRA to the session (a LoRA already there gets the new weight)."""
    path = lora_file(layout.loras_dir, lora.name)
    if path is None:
        raise Invalid(f"name: unknown LoRA {lora.name!r}")

    def change(loras: list[LoraInput]) -> list[LoraInput]:
        kept = [item for item in loras if lora_key(item.name) != path.stem]
        if len(kept) >= 8:
            raise Invalid("name: a session holds at most 8 LoRAs; remove one first")
        return [*kept, LoraInput(name=path.stem, weight=lora.weight)]

    return await _change_loras(session_id, principal, layout, change)


async def remove_lora(session_id: str, name: str, principal: Principal, *, layout: DataLayout) -> Session:
    def change(loras: list[LoraInput]) -> list[LoraInput]:
        kept = [item for item in loras if lora_key(item.name) != lora_key(name)]
        if len(kept) == len(loras):
            raise NotFound(f"LoRA {name!r} is not in session {session_id!r}")
        return kept

    return await _change_loras(session_id, principal, layout, change)


async def clear_loras(session_id: str, principal: Principal, *, layout: DataLayout) -> Session:
    return await _change_loras(session_id, principal, layout, lambda _: [])


async def open_session(session_id: str, principal: Principal, *, layout: DataLayout) -> Session:
    """The session, created empty if there is none (for APIs where every user has a session)."""
    _check_id(session_id)
    store = sessions_store(layout)

    def open_() -> Session:
        with store.lock:
            found = store.find(principal.owner, session_id)
            if found is not None:
                return found
            now = utcnow()
            session = Session(id=session_id, created_at=now, updated_at=now, owner=principal.owner)
            store.put(principal.owner, session_id, session)
            return session

    return await asyncio.to_thread(open_)


async def change_session(session_id: str, change, principal: Principal, *, layout: DataLayout,
                         catalog: Catalog) -> Session:
    """Apply `change` (SessionBody -> SessionBody) to a session's defaults in one read-modify-write,
    checked as PUT checks them; NotFound if there is no such session."""
    store = sessions_store(layout)

    def apply() -> Session:
        with store.lock:
            session = store.get(principal.owner, session_id)
            current = SessionBody(**{f: getattr(session, f) for f in SessionBody.__struct_fields__})
            body = change(current)
            loras = check_layer(body, layout=layout, catalog=catalog)
            updated = Session(**{f: getattr(body, f) for f in SessionBody.__struct_fields__}, id=session_id,
                              created_at=session.created_at, updated_at=utcnow(), owner=principal.owner)
            updated = msgspec.structs.replace(updated, loras=loras)
            store.put(principal.owner, session_id, updated)
            return updated

    return await asyncio.to_thread(apply)
