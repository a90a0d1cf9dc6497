"""Who is calling, what they may see, and how much they may ask for.

- Keys come from `state/keys/` (written by `darkroom keys`), one file a key, read when a key is
  first used and checked again at most once a second, so a new key works at once and a
  revocation takes effect within a second. Sent as `Authorization: Bearer <token>` or
  `X-API-Key: <token>`.
- Tenancy: a job belongs to the key that made it; others get 404 for it. Admin keys see all.
- Rate limits and quotas are `services.ingress.limits` (reserved atomically at submit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import structlog

from schemas.keys import ApiKey, keys_dir, split_token
from schemas.settings import Settings
from services.ingress.domain.errors import Forbidden, Unauthenticated

log = structlog.get_logger("ingress")
_key_decoder = msgspec.json.Decoder(ApiKey)


@dataclass(frozen=True)
class Principal:
    """The caller: a key (its id owns the jobs it makes), or anonymous when auth is off."""

    key: ApiKey | None
    ip: str

    @property
    def owner(self) -> str | None:
        return self.key.id if self.key else None

    @property
    def admin(self) -> bool:
        return self.key is None or self.key.admin  # auth off: a local sandbox, no tenants

    def may_see(self, owner: str | None) -> bool:
        return self.admin or owner == self.owner

    @property
    def worker(self) -> bool:
        return self.key is not None and self.key.worker

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this needs an admin key")

    def require_worker_or_admin(self) -> None:
        if not (self.admin or self.worker):
            raise Forbidden("this needs a worker key (`darkroom workers add`) or an admin key")


class _Cached(msgspec.Struct):
    key: ApiKey
    mtime_ns: int
    checked: float


class KeyStore:
    """The keys on disk, read one file at a time: a key is looked up by its id the first time it
    is used (so a key made a moment ago works on its very next request), and its file is checked
    again at most once a second (so a revocation or a limit change applies within a second).
    No request ever waits for the whole folder to be read, however many keys there are."""

    RECHECK_SECONDS = 1.0

    def __init__(self, state_dir: Path):
        self.folder = keys_dir(state_dir)
        self._keys: dict[str, _Cached] = {}

    def _load(self, key_id: str, now: float) -> ApiKey | None:
        path = self.folder / f"{key_id}.json"
        try:
            mtime = path.stat().st_mtime_ns
            cached = self._keys.get(key_id)
            if cached is not None and cached.mtime_ns == mtime:
                cached.checked = now
                return cached.key
            key = _key_decoder.decode(path.read_bytes())
        except FileNotFoundError:
            self._keys.pop(key_id, None)
            return None
        except (OSError, msgspec.MsgspecError):
            log.error("unreadable API key file", path=str(path))
            self._keys.pop(key_id, None)
            return None
        self._keys[key_id] = _Cached(key=key, mtime_ns=mtime, checked=now)
        return key

    def verify(self, token: str) -> ApiKey:
        parts = split_token(token)
        if parts is None:
            raise Unauthenticated("invalid API key: expected a token like drk_<id>_<secret>")
        now = time.monotonic()
        cached = self._keys.get(parts[0])
        key = cached.key if cached is not None and now - cached.checked < self.RECHECK_SECONDS else self._load(parts[0], now)
        if key is None or not key.matches(parts[1]):
            raise Unauthenticated("invalid API key")
        if not key.active:
            raise Unauthenticated("this API key was revoked")
        return key

    def count(self) -> int:
        """How many keys exist (reads the folder listing: for start-up messages, not requests)."""
        return len(list(self.folder.glob("*.json"))) if self.folder.is_dir() else 0


def authenticate(settings: Settings, keys: KeyStore, token: str | None, ip: str, *,
                 allow_worker: bool = False) -> Principal:
    """The caller: anonymous when auth is off, else the key `token` names (401 without one).

    A worker key (`darkroom workers add`) is good only where `allow_worker` says so (fetching
    files by hash); anywhere else it is refused (403), so a worker host's credential can neither
    submit jobs nor read anyone's."""
    if settings.auth == "off":
        return Principal(key=None, ip=ip)
    if not token:
        raise Unauthenticated("missing API key: send Authorization: Bearer <token> or X-API-Key: <token>")
    key = keys.verify(token)
    if key.worker and not allow_worker:
        raise Forbidden("a worker key may only fetch files (GET /v1/files/...)")
    return Principal(key=key, ip=ip)


def token_from(headers) -> str | None:
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return headers.get("x-api-key")
