"""Idempotency-Key: a client retrying a submit (after a timeout, a dropped connection) gets the job
it already created instead of a second one. Keys live 24 hours, per owner, as small claim files
created atomically, so two concurrent requests with one key still make one job."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import msgspec

from services.files import create_file
from services.ingress.domain.errors import Conflict, Invalid

TTL_SECONDS = 24 * 3600
# A claim whose job never appears (the ingress died mid-request) is given up after this.
ABANDONED_SECONDS = 10.0


class Claim(msgspec.Struct, frozen=True):
    job_id: str
    fingerprint: str
    created: float


def check_key(key: str) -> str:
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise Invalid("Idempotency-Key must be 1-255 printable characters")
    return key


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class IdempotencyStore:
    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, owner: str | None, key: str) -> Path:
        return self.folder / (hashlib.sha256(f"{owner or ''}\0{key}".encode()).hexdigest() + ".json")

    def claim(self, owner: str | None, key: str, print_: str, job_id: str) -> Claim | None:
        """Claim `key` for a new job; None when claimed now, else the earlier claim (same body).
        A different body under a live key is a Conflict."""
        path = self._path(owner, key)
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                create_file(path, msgspec.json.encode(Claim(job_id=job_id, fingerprint=print_, created=time.time())))
                return None
            except FileExistsError:
                try:
                    earlier = msgspec.json.decode(path.read_bytes(), type=Claim)
                except (FileNotFoundError, msgspec.MsgspecError):
                    continue
                if time.time() - earlier.created > TTL_SECONDS:
                    path.unlink(missing_ok=True)
                    continue
                if earlier.fingerprint != print_:
                    raise Conflict("Idempotency-Key was already used with a different request body") from None
                return earlier
        raise Conflict("Idempotency-Key is being used by a concurrent request; retry shortly")

    def release(self, owner: str | None, key: str) -> None:
        """The job was not accepted after all: the key is free again."""
        self._path(owner, key).unlink(missing_ok=True)
