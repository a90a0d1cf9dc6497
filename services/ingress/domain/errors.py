"""What a command or query answers instead of success, free of HTTP. Each error's message names
what was wrong; `services.ingress.errors` maps them to status codes (and a dialect to its own error
shape). Where waiting helps, `retry_after` says how long, in seconds."""

from __future__ import annotations


class DomainError(Exception):
    """Base of the ingress's domain errors."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Invalid(DomainError):
    """A field of the request is wrong; the message names it."""


class TooLarge(DomainError):
    """Part of the request is over a size limit."""


class Unauthenticated(DomainError):
    """No API key, or an invalid or revoked one."""


class Forbidden(DomainError):
    """The caller's key may not do this (it needs an admin key)."""


class NotFound(DomainError):
    """No such id for this caller (another tenant's ids are not found either)."""

    @classmethod
    def of(cls, kind: str, value: str) -> NotFound:
        return cls(f"{kind} {value!r} not found")


class Conflict(DomainError):
    """Conflicts with the current state (an ended job, a reused Idempotency-Key). With
    `retry_after`, the state will change by itself (e.g. a job still saving its images)."""

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class LimitReached(DomainError):
    """A rate limit or quota was reached; it frees up after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """Something the request needs is not available now; nothing was changed."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after
