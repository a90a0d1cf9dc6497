"""The models stage's files: the runtime catalog (`state/models.toml`, TOML like darkroom.toml)
and one record per pull (`state/pulls/<id>.json`: its request and progress, so an interrupted
pull resumes when the stage starts again). Only the models stage writes them; every write is
temp file + rename."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from schemas.api import PullStatus
from schemas.catalog import PulledModel, RuntimeCatalog, parse_runtime_catalog
from schemas.events import PullModel
from schemas.layout import DataLayout
from services.files import write_atomic

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_PULL_ID = re.compile(r"^[0-9a-f-]{36}$")


class PullRecord(msgspec.Struct, kw_only=True):
    """What state/pulls/<id>.json holds: the request (to resume it) and its status."""

    command: PullModel
    status: PullStatus


_record_decoder = msgspec.json.Decoder(PullRecord)


def now() -> datetime:
    return datetime.now(UTC)


class ModelStore:
    def __init__(self, layout: DataLayout):
        self.layout = layout
        self._lock = threading.Lock()

    # -- the runtime catalog ------------------------------------------------------------------------

    def read(self) -> RuntimeCatalog:
        path = self.layout.runtime_catalog
        return parse_runtime_catalog(path.read_text(), path) if path.exists() else RuntimeCatalog()

    def add(self, kind: str, name: str, pulled: PulledModel) -> None:
        with self._lock:
            catalog = self.read()
            table = catalog.models if kind == "checkpoint" else catalog.loras
            table[name] = pulled
            self._write(catalog)

    def remove(self, kind: str, name: str) -> PulledModel | None:
        with self._lock:
            catalog = self.read()
            pulled = (catalog.models if kind == "checkpoint" else catalog.loras).pop(name, None)
            if pulled is not None:
                self._write(catalog)
            return pulled

    def _write(self, catalog: RuntimeCatalog) -> None:
        header = ("# Written by Darkroom's models stage (`darkroom models pull|remove`); do not edit while it runs.\n"
                  "# Models in darkroom.toml take precedence over these.\n\n")
        write_atomic(self.layout.runtime_catalog, (header + toml_dumps(msgspec.to_builtins(catalog))).encode())

    # -- pull records -------------------------------------------------------------------------------

    def pull_path(self, pull_id: str) -> Path | None:
        return self.layout.pulls_dir / f"{pull_id}.json" if _PULL_ID.match(pull_id) else None

    def save_pull(self, record: PullRecord) -> None:
        record.status.updated_at = now()
        self.layout.pulls_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.pull_path(record.status.id), msgspec.json.encode(record), durable=False)

    def read_pull(self, pull_id: str) -> PullRecord | None:
        path = self.pull_path(pull_id)
        try:
            return _record_decoder.decode(path.read_bytes()) if path else None
        except (FileNotFoundError, msgspec.DecodeError):
            return None

    def unfinished(self) -> list[PullRecord]:
        """Pulls a stopped stage left queued or under way, oldest first."""
        if not self.layout.pulls_dir.is_dir():
            return []
        records = [self.read_pull(p.stem) for p in self.layout.pulls_dir.glob("*.json")]
        return sorted((r for r in records if r and r.status.state not in ("available", "failed")),
                      key=lambda r: r.status.created_at)


# -- a TOML writer for the runtime catalog's shape (tables, arrays of flat tables, scalars) -----------


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def toml_dumps(data: dict, prefix: str = "") -> str:
    """TOML for nested dicts of scalars, lists, tables and arrays of flat tables; None is left out."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if v is not None and not isinstance(v, dict) and not _is_table_array(v)}
    if prefix and (scalars or not any(isinstance(v, dict) or _is_table_array(v) for v in data.values())):
        lines.append(f"[{prefix}]")
    lines += [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    text = "\n".join(lines) + ("\n\n" if lines else "")
    for key, value in data.items():
        path = f"{prefix}.{_key(key)}" if prefix else _key(key)
        if isinstance(value, dict):
            text += toml_dumps(value, path)
        elif _is_table_array(value):
            for item in value:
                text += f"[[{path}]]\n" + "".join(f"{_key(k)} = {_value(v)}\n" for k, v in item.items() if v is not None) + "\n"
    return text
