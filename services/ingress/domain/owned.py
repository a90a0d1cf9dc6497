"""Small documents each owned by one API key (sessions, presets): one JSON file per document
under `state/<kind>/<owner>/<id>.json`, written atomically (temp + fsync + rename).

Each key has a folder of its own, so another tenant's ids are simply not there: the same id
under another key is another document, and reading someone else's is a 404 like a missing one.
Ids are checked against `schemas.library.NAME_PATTERN` before any path is built.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Generic, TypeVar

import msgspec

from schemas.library import is_name
from services.files import write_atomic
from services.ingress.domain.errors import Conflict, NotFound

T = TypeVar("T", bound=msgspec.Struct)
ANONYMOUS = "_anonymous"  # the owner folder when auth is off (no key)


class OwnedStore(Generic[T]):
    """Documents of type `kind` (named `label` in messages), at most `limit` per owner."""

    def __init__(self, folder: Path, kind: type[T], label: str, limit: int):
        self.folder = folder
        self.label = label
        self.limit = limit
        self._decoder = msgspec.json.Decoder(kind)
        # Read-modify-write of one document (add a LoRA to a session) happens under this lock;
        # the ingress is one process.
        self.lock = threading.Lock()

    def _owner_dir(self, owner: str | None) -> Path:
        return self.folder / (owner or ANONYMOUS)

    def _path(self, owner: str | None, doc_id: str) -> Path:
        if not is_name(doc_id):
            raise NotFound.of(self.label, doc_id)
        return self._owner_dir(owner) / f"{doc_id}.json"

    def get(self, owner: str | None, doc_id: str) -> T:
        try:
            return self._decoder.decode(self._path(owner, doc_id).read_bytes())
        except FileNotFoundError:
            raise NotFound.of(self.label, doc_id) from None

    def find(self, owner: str | None, doc_id: str) -> T | None:
        try:
            return self.get(owner, doc_id)
        except NotFound:
            return None

    def exists(self, owner: str | None, doc_id: str) -> bool:
        return self._path(owner, doc_id).is_file()

    def put(self, owner: str | None, doc_id: str, doc: T) -> None:
        path = self._path(owner, doc_id)
        if not path.exists() and self.count(owner) >= self.limit:
            raise Conflict(f"at most {self.limit} {self.label}s per key; delete one first")
        write_atomic(path, msgspec.json.encode(doc), mode=0o600)

    def delete(self, owner: str | None, doc_id: str) -> None:
        try:
            self._path(owner, doc_id).unlink()
        except FileNotFoundError:
            raise NotFound.of(self.label, doc_id) from None

    def count(self, owner: str | None) -> int:
        try:
            return sum(1 for name in os.listdir(self._owner_dir(owner)) if name.endswith(".json"))
        except FileNotFoundError:
            return 0

    def all(self, owner: str | None) -> list[T]:
        folder = self._owner_dir(owner)
        try:
            names = sorted(name for name in os.listdir(folder) if name.endswith(".json"))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            try:
                found.append(self._decoder.decode((folder / name).read_bytes()))
            except FileNotFoundError:  # deleted meanwhile
                continue
        return found
