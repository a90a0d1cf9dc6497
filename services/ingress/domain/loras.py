"""Queries and commands on the LoRA library: search and list, one LoRA, its preview, rescan.
The library (`services.library`) is shared by every key; rescanning needs an admin key."""

from __future__ import annotations

from pathlib import Path

from schemas.library import BASES, LoraInfo, LoraPage, LoraSummary, ScanAnswer
from services.ingress.auth import Principal
from services.ingress.domain.errors import Invalid, NotFound
from services.library import Entry, LoraLibrary

MAX_PAGE = 100


def _preview_url(entry: Entry) -> str | None:
    return f"/v1/loras/{entry.name}/preview" if entry.preview else None


def _summary(entry: Entry, score: float | None) -> LoraSummary:
    return LoraSummary(name=entry.name, base=entry.meta.base, trigger_words=entry.meta.trigger_words,
                       tags=entry.meta.tags, size_bytes=entry.size, sha256=entry.sha256,
                       preview_url=_preview_url(entry), score=score)


def search_loras(library: LoraLibrary, *, search: str | None = None, base: str | None = None, limit: int = 20,
                 cursor: str | None = None) -> LoraPage:
    """The LoRAs matching `search` (fuzzy, on name, tags and trigger words), best first; all of
    them by name without one. `cursor` is the `next_cursor` of the previous page."""
    if base is not None and base not in BASES:
        raise Invalid(f"base: unknown base {base!r}; valid bases: {', '.join(BASES)}")
    try:
        offset = int(cursor) if cursor else 0
    except ValueError:
        offset = -1
    if offset < 0:
        raise Invalid(f"cursor: {cursor!r} is not a cursor this list gave")
    view = library.view
    ids, scores = view.search(search or "", base)
    page = ids[offset:offset + limit]
    loras = [_summary(view.ordered[i], None if search is None or not search.strip() else round(float(s), 1))
             for i, s in zip(page, scores[offset:offset + limit], strict=True)]
    more = offset + limit < len(ids)
    return LoraPage(loras=loras, total=len(ids), next_cursor=str(offset + limit) if more else None)


def lora_info(library: LoraLibrary, name: str) -> LoraInfo:
    entry = library.get(name)
    if entry is None:
        raise NotFound.of("LoRA", name)
    meta = entry.meta
    return LoraInfo(name=entry.name, file=entry.file, base=meta.base, base_model=meta.base_model,
                    trigger_words=meta.trigger_words, tags=meta.tags, tag_frequency=meta.tag_frequency,
                    size_bytes=entry.size, sha256=entry.sha256, modified_at=entry.modified_at,
                    preview_url=_preview_url(entry), metadata=meta.metadata)


def preview_path(library: LoraLibrary, name: str) -> Path:
    entry = library.get(name)
    if entry is None:
        raise NotFound.of("LoRA", name)
    if entry.preview is None:
        raise NotFound(f"LoRA {entry.name!r} has no preview image")
    path = library.folder / entry.preview
    if not path.is_file():
        raise NotFound(f"LoRA {entry.name!r} has no preview image")
    return path


async def rescan(library: LoraLibrary, principal: Principal) -> ScanAnswer:
    """Re-index the LoRA folder now (it is also watched); what changed."""
    principal.require_admin()
    result = await library.rescan()
    return ScanAnswer(added=result.added, removed=result.removed, changed=result.changed, total=result.total,
                      seconds=result.seconds)


