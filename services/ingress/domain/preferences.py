"""Per-caller preferences kept in the data directory: the default model a caller's requests use
when they name none (A1111's `sd_model_checkpoint` option is per server; here it is per caller).
One small JSON file per caller under `state/preferences/`."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from schemas.catalog import Catalog
from services.files import write_atomic
from services.ingress.auth import Principal
from services.ingress.domain.errors import Invalid

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class Preferences(msgspec.Struct, kw_only=True):
    """What a caller chose; None: the installation's default."""

    model: str | None = None


def _path(state_dir: Path, principal: Principal) -> Path:
    owner = _SAFE.sub("_", principal.owner or "anonymous").lstrip(".") or "anonymous"
    return state_dir / "preferences" / f"{owner}.json"


def preferences(principal: Principal, *, state_dir: Path) -> Preferences:
    try:
        return msgspec.json.decode(_path(state_dir, principal).read_bytes(), type=Preferences)
    except (FileNotFoundError, msgspec.MsgspecError):
        return Preferences()


def default_model(principal: Principal, *, catalog: Catalog, state_dir: Path) -> str:
    """The caller's default model: their choice while the catalog still has it, else the catalog's."""
    chosen = preferences(principal, state_dir=state_dir).model
    return chosen if chosen in catalog.models else catalog.default


def set_default_model(model: str, principal: Principal, *, catalog: Catalog, state_dir: Path) -> str:
    """Make `model` the caller's default (Invalid, naming the valid ids, if the catalog lacks it)."""
    if model not in catalog.models:
        raise Invalid(f"sd_model_checkpoint: unknown model {model!r}; valid models: {', '.join(sorted(catalog.models))}")
    chosen = msgspec.structs.replace(preferences(principal, state_dir=state_dir), model=model)
    write_atomic(_path(state_dir, principal), msgspec.json.encode(chosen), durable=True)
    return model
