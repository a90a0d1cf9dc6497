"""Typed errors: each API error answer becomes the exception for its status, carrying the API's
message (Darkroom's errors are always `{"status": "error", "message": ...}`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from darkroom_client.types import JobDocument


class DarkroomError(Exception):
    """Anything this client raises."""


class ConnectionFailed(DarkroomError):
    """The server could not be reached (after the retries)."""


class APIError(DarkroomError):
    """The API answered with an error; `message` is what it said."""

    status_code: int = 0

    def __init__(self, message: str, *, status_code: int | None = None, body: Any = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.body = body
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status_code}: {self.message}"


class BadRequest(APIError):
    status_code = 400


class Unauthorized(APIError):
    status_code = 401


class Forbidden(APIError):
    status_code = 403


class NotFound(APIError):
    status_code = 404


class Conflict(APIError):
    status_code = 409


class PayloadTooLarge(APIError):
    status_code = 413


class RateLimited(APIError):
    """A rate limit or quota was reached (429); `retry_after` says when to try again."""

    status_code = 429


class Unavailable(APIError):
    """The server cannot take the request now (503); nothing was changed."""

    status_code = 503


class ServerError(APIError):
    status_code = 500


BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    422: BadRequest, 429: RateLimited, 503: Unavailable,
}


def api_error(status_code: int, message: str, *, body: Any = None, retry_after: float | None = None) -> APIError:
    kind = BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else APIError)
    return kind(message, status_code=status_code, body=body, retry_after=retry_after)


class JobError(DarkroomError):
    """A job ended without images; `job` is its final document."""

    def __init__(self, job: JobDocument):
        super().__init__(f"job {job.id} {job.status}: {job.error or job.message}")
        self.job = job


class JobFailed(JobError):
    pass


class JobCancelled(JobError):
    pass


class WaitTimeout(DarkroomError):
    """The job did not end within the time `wait` was given."""
