"""Rate limits and quotas, checked and reserved in one step per caller, across processes.

What each caller may do (`Limits`): a key's own rate and quotas, else the defaults for keys;
without a key, the anonymous rate per client IP; admins are unlimited unless given limits.

A submit checks the caller's moving-window rate, images today and jobs queued, and reserves all
three at once, under a file lock per caller in the data directory: no other request (in this
ingress or another on the same data directory) can pass between the check and the reservation.
The publish happens after; if it fails, the reservation is given back. State lives in files, so
windows and quotas survive an ingress restart.

One folder per caller under `state/usage/<owner>/`:
- `rate.json`: times of the accepted requests inside the current window (a moving-window log);
- `<YYYY-MM-DD>.json`: images asked for that UTC day;
- `active.json`: ids of the caller's jobs that were accepted and had not ended when last looked at
  (an id leaves when its job document says it ended, so a slow recorder never frees a slot early).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from limits import RateLimitItem, parse

from schemas.settings import Settings
from services.files import write_atomic
from services.ingress.auth import Principal
from services.ingress.domain.errors import LimitReached


@dataclass(frozen=True)
class Caps:
    """What one caller may do; None: unlimited."""

    rate: RateLimitItem | None
    daily_images: int | None
    queued_jobs: int | None


@dataclass(frozen=True)
class Reservation:
    """What a submit took, to give back if the job is not accepted after all."""

    identity: str
    job_id: str
    images: int
    day: str
    at: float


class _Usage(msgspec.Struct):
    images: int = 0


class _Rate(msgspec.Struct):
    hits: list[float] = []
    rate: str = ""  # the rate these hits were counted under: a new rate counts from a fresh window


class _Active(msgspec.Struct):
    jobs: list[tuple[str, float]] = []  # (job id, when it was reserved)


# A reserved job's document appears only once the broker confirmed it: until then a missing
# document means "being accepted", not "gone" (a reservation whose publish failed is released).
ACCEPTING_SECONDS = 120.0


def _read(path: Path, kind: type):
    try:
        return msgspec.json.decode(path.read_bytes(), type=kind)
    except (FileNotFoundError, msgspec.MsgspecError):
        return kind()


def _write(path: Path, value: msgspec.Struct) -> None:
    write_atomic(path, msgspec.json.encode(value), durable=False)


class Reservations:
    """Check-and-reserve of rate, daily images and queued jobs, one caller at a time."""

    def __init__(self, usage_dir: Path, job_ended: Callable[[str], bool]):
        self.usage_dir = usage_dir
        self.job_ended = job_ended  # True once a job's document says it ended (or it is gone)

    def _folder(self, identity: str) -> Path:
        return self.usage_dir / identity

    @contextlib.contextmanager
    def _locked(self, identity: str) -> Iterator[Path]:
        folder = self._folder(identity)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield folder
        finally:
            os.close(fd)  # releases the lock

    def _still_active(self, jobs: list[tuple[str, float]], now: float) -> list[tuple[str, float]]:
        return [(job, at) for job, at in jobs if now - at < ACCEPTING_SECONDS or not self.job_ended(job)]

    def reserve(self, identity: str, job_id: str, images: int, caps: Caps, who: str) -> Reservation:
        """Reserve one request, `images` images and one queued job for `identity`, or raise
        LimitReached naming the limit (and reserve nothing). Blocking: call it off the event loop."""
        now = time.time()
        today = datetime.now(UTC)
        with self._locked(identity) as folder:
            rate = _read(folder / "rate.json", _Rate)
            if caps.rate is not None:
                if rate.rate != str(caps.rate):
                    rate = _Rate(rate=str(caps.rate))
                window = caps.rate.get_expiry()
                rate.hits = [hit for hit in rate.hits if hit > now - window]
                if len(rate.hits) >= caps.rate.amount:
                    wait = max(1, int(rate.hits[0] + window - now) + 1)
                    raise LimitReached(f"rate limit reached: {caps.rate.amount} generation requests per "
                                       f"{per(caps.rate)} for {who}; try again in {duration(wait)}", wait)
            usage_path = folder / f"{today:%Y-%m-%d}.json"
            usage = _read(usage_path, _Usage)
            if caps.daily_images is not None and usage.images + images > caps.daily_images:
                midnight = (today + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
                wait = int((midnight - today).total_seconds()) + 1
                raise LimitReached(f"daily image quota reached: {usage.images} of {caps.daily_images} images used "
                                   f"today (UTC), this job asks for {images}; it resets in {duration(wait)}", wait)
            active = _read(folder / "active.json", _Active)
            if caps.queued_jobs is not None:
                active.jobs = self._still_active(active.jobs, now)
                if len(active.jobs) >= caps.queued_jobs:
                    _write(folder / "active.json", active)
                    raise LimitReached(f"too many jobs in the queue: {len(active.jobs)} pending or processing, the "
                                       f"limit is {caps.queued_jobs}; submit more when some finish", 10)
            if caps.rate is not None:
                rate.hits.append(now)
                _write(folder / "rate.json", rate)
            usage.images += images
            _write(usage_path, usage)
            if caps.queued_jobs is not None:
                active.jobs.append((job_id, now))
                _write(folder / "active.json", active)
        return Reservation(identity=identity, job_id=job_id, images=images, day=f"{today:%Y-%m-%d}", at=now)

    def release(self, reservation: Reservation) -> None:
        """Give back what `reserve` took (the job was not accepted)."""
        with self._locked(reservation.identity) as folder:
            rate = _read(folder / "rate.json", _Rate)
            if reservation.at in rate.hits:
                rate.hits.remove(reservation.at)
                _write(folder / "rate.json", rate)
            usage_path = folder / f"{reservation.day}.json"
            usage = _read(usage_path, _Usage)
            usage.images = max(0, usage.images - reservation.images)
            _write(usage_path, usage)
            active = _read(folder / "active.json", _Active)
            kept = [(job, at) for job, at in active.jobs if job != reservation.job_id]
            if len(kept) != len(active.jobs):
                _write(folder / "active.json", _Active(jobs=kept))

    def usage(self, identity: str, caps: Caps) -> dict[str, int]:
        """What `identity` has used: requests in the rate window, images today, jobs queued."""
        now = time.time()
        folder = self._folder(identity)
        counted = _read(folder / "rate.json", _Rate)
        hits = counted.hits if caps.rate is not None and counted.rate == str(caps.rate) else []
        window = caps.rate.get_expiry() if caps.rate is not None else 0
        active = self._still_active(_read(folder / "active.json", _Active).jobs, now)
        return {
            "queued_jobs": len(active),
            "daily_images": _read(folder / f"{datetime.now(UTC):%Y-%m-%d}.json", _Usage).images,
            "hourly_requests": len([hit for hit in hits if hit > now - window]),
        }


def per(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


def duration(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


UNLIMITED = "Infinity"  # how the weights.gg quota shape says "no limit"


def rate(text: str | None) -> RateLimitItem | None:
    """A rate such as "300/hour"; None for none/unlimited/off."""
    if not text or text.lower() in ("none", "unlimited", "off"):
        return None
    return parse(text)


class Limits:
    """The limits of each caller, reserved atomically when a job is submitted (`Reservations`)."""

    def __init__(self, settings: Settings, state_dir: Path, job_ended: Callable[[str], bool]):
        self.settings = settings
        self.reservations = Reservations(state_dir / "usage", job_ended)

    def caps(self, principal: Principal) -> Caps:
        key, settings = principal.key, self.settings
        if key is None:
            return Caps(rate=rate(settings.anonymous_rate), daily_images=None, queued_jobs=None)

        def own(value: int | None, default: int) -> int | None:
            if value is not None:
                return value or None
            return None if key.admin else (default or None)

        return Caps(
            rate=rate(key.rate) if key.rate is not None else None if key.admin else rate(settings.key_rate),
            daily_images=own(key.daily_images, settings.key_daily_images),
            queued_jobs=own(key.queued_jobs, settings.key_queued_jobs),
        )

    @staticmethod
    def identity(principal: Principal) -> str:
        """Whose usage it is: the key's id, or the client's address without a key."""
        return principal.owner if principal.key else f"ip-{principal.ip}"

    def reserve(self, principal: Principal, job_id: str, images: int) -> Reservation:
        """Blocking (file lock): call it off the event loop."""
        who = "this key" if principal.key else "your address"
        return self.reservations.reserve(self.identity(principal), job_id, images, self.caps(principal), who)

    def release(self, reservation: Reservation) -> None:
        self.reservations.release(reservation)

    def usage(self, principal: Principal) -> dict[str, int]:
        return self.reservations.usage(self.identity(principal), self.caps(principal))
