"""Who is calling, what they may see, and how much they may ask for.

- Keys come from `state/keys/` (written by `darkroom keys`), reloaded when that folder changes, so
  a revocation takes effect within a second. Sent as `Authorization: Bearer <token>` or
  `X-API-Key: <token>`.
- Tenancy: a job belongs to the key that made it; others get 404 for it. Admin keys see all.
- Rate limits (generation requests per period) per key, or per IP without a key, counted with
  the `limits` library's moving window. Litestar's own rate-limit middleware has one rate for all
  callers, and keys need their own.
- Quotas per key: images per UTC day (persisted, so a restart does not reset them) and jobs
  pending or processing at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from schemas.keys import ApiKey, keys_dir, split_token
from schemas.settings import Settings
from services.files import write_atomic
from services.ingress.domain.errors import Forbidden, LimitReached, Unauthenticated

log = structlog.get_logger("ingress")
_key_decoder = msgspec.json.Decoder(ApiKey)
UNLIMITED = "Infinity"  # how the weights.gg quota shape says "no limit"


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

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this needs an admin key")


class KeyStore:
    """The keys on disk, reloaded (at most once a second) when their folder changes."""

    def __init__(self, state_dir: Path):
        self.folder = keys_dir(state_dir)
        self._keys: dict[str, ApiKey] = {}
        self._seen_mtime = -1.0
        self._checked = 0.0

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        try:
            mtime = self.folder.stat().st_mtime
        except FileNotFoundError:
            self._keys, self._seen_mtime = {}, -1.0
            return
        if mtime == self._seen_mtime:
            return
        keys = {}
        for path in self.folder.glob("*.json"):
            try:
                key = _key_decoder.decode(path.read_bytes())
                keys[key.id] = key
            except (OSError, msgspec.MsgspecError):
                log.error("unreadable API key file", path=str(path))
        self._keys, self._seen_mtime = keys, mtime

    def verify(self, token: str) -> ApiKey:
        parts = split_token(token)
        if parts is None:
            raise Unauthenticated("invalid API key: expected a token like drk_<id>_<secret>")
        self._refresh()
        key = self._keys.get(parts[0])
        if key is None or not key.matches(parts[1]):
            raise Unauthenticated("invalid API key")
        if not key.active:
            raise Unauthenticated("this API key was revoked")
        return key

    def count(self) -> int:
        self._checked = 0.0
        self._refresh()
        return len(self._keys)


def authenticate(settings: Settings, keys: KeyStore, token: str | None, ip: str) -> Principal:
    """The caller: anonymous when auth is off, else the key `token` names (401 without one)."""
    if settings.auth == "off":
        return Principal(key=None, ip=ip)
    if not token:
        raise Unauthenticated("missing API key: send Authorization: Bearer <token> or X-API-Key: <token>")
    return Principal(key=keys.verify(token), ip=ip)


def token_from(headers) -> str | None:
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return headers.get("x-api-key")


def _rate(text: str | None) -> RateLimitItem | None:
    if not text or text.lower() in ("none", "unlimited", "off"):
        return None
    return parse(text)


@dataclass
class Limits:
    """Rate limits and quotas, applied when a job is submitted."""

    settings: Settings
    state_dir: Path
    limiter: MovingWindowRateLimiter = field(default_factory=lambda: MovingWindowRateLimiter(MemoryStorage()))

    def rate_for(self, principal: Principal) -> RateLimitItem | None:
        key = principal.key
        if key is None:
            return _rate(self.settings.anonymous_rate)
        if key.rate is not None:
            return _rate(key.rate)
        return None if key.admin else _rate(self.settings.key_rate)

    def daily_images_for(self, principal: Principal) -> int | None:
        key = principal.key
        if key is not None and key.daily_images is not None:
            return key.daily_images or None
        if key is None or key.admin:
            return None
        return self.settings.key_daily_images or None

    def queued_jobs_for(self, principal: Principal) -> int | None:
        key = principal.key
        if key is not None and key.queued_jobs is not None:
            return key.queued_jobs or None
        if key is None or key.admin:
            return None
        return self.settings.key_queued_jobs or None

    @staticmethod
    def _identity(principal: Principal) -> tuple[str, str]:
        return ("key", principal.owner) if principal.key else ("ip", principal.ip)

    async def check_rate(self, principal: Principal) -> None:
        item = self.rate_for(principal)
        if item is None:
            return
        if not await self.limiter.test(item, *self._identity(principal)):
            stats = await self.limiter.get_window_stats(item, *self._identity(principal))
            wait = max(1, int(stats.reset_time - time.time()) + 1)
            who = "this key" if principal.key else "your address"
            raise LimitReached(f"rate limit reached: {item.amount} generation requests per {_per(item)} for {who}; "
                               f"try again in {_duration(wait)}", wait)

    async def count_request(self, principal: Principal) -> None:
        item = self.rate_for(principal)
        if item is not None:
            await self.limiter.hit(item, *self._identity(principal))

    async def requests_used(self, principal: Principal) -> int:
        item = self.rate_for(principal)
        if item is None:
            return 0
        stats = await self.limiter.get_window_stats(item, *self._identity(principal))
        return item.amount - stats.remaining

    # Daily images: a small file per owner and UTC day.
    def _usage_path(self, principal: Principal, day: datetime) -> Path:
        return self.state_dir / "usage" / (principal.owner or "anonymous") / f"{day:%Y-%m-%d}.json"

    def images_today(self, principal: Principal) -> int:
        try:
            return msgspec.json.decode(self._usage_path(principal, datetime.now(UTC)).read_bytes(), type=dict)["images"]
        except (FileNotFoundError, msgspec.MsgspecError, KeyError):
            return 0

    def add_images(self, principal: Principal, count: int) -> None:
        path = self._usage_path(principal, datetime.now(UTC))
        write_atomic(path, msgspec.json.encode({"images": self.images_today(principal) + count}), durable=False)

    def check_quotas(self, principal: Principal, images: int, queued: int) -> None:
        daily = self.daily_images_for(principal)
        if daily is not None and self.images_today(principal) + images > daily:
            now = datetime.now(UTC)
            midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            wait = int((midnight - now).total_seconds()) + 1
            used = self.images_today(principal)
            raise LimitReached(f"daily image quota reached: {used} of {daily} images used today (UTC), this job "
                               f"asks for {images}; it resets in {_duration(wait)}", wait)
        limit = self.queued_jobs_for(principal)
        if limit is not None and queued >= limit:
            raise LimitReached(f"too many jobs in the queue: {queued} pending or processing, the limit is {limit}; "
                               "submit more when some finish", 10)


def _per(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


def _duration(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
