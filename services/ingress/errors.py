"""Every error answer is JSON `{"status": "error", "message": ...}` with the right status code."""

from __future__ import annotations

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from services.bus import BrokerUnavailable

log = structlog.get_logger("ingress")

RETRY_AFTER_BROKER = 5


class ApiError(Exception):
    """An answer other than success: status code, a message naming what was wrong, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def not_found(kind: str, value: str) -> ApiError:
    return ApiError(404, f"{kind} {value!r} not found")


def _body(message: str) -> dict[str, str]:
    return {"status": "error", "message": message}


def api_error(_: Request, exc: ApiError) -> Response:
    return Response(_body(exc.message), status_code=exc.status, headers=exc.headers)


def validation_error(_: Request, exc: ValidationException) -> Response:
    """Litestar's body/parameter validation, rephrased to name the field."""
    problems = []
    for item in exc.extra or []:
        if isinstance(item, dict):
            key, message = item.get("key"), item.get("message", "")
            problems.append(f"{key}: {message}" if key and key != "data" else message)
    return Response(_body("; ".join(problems) or str(exc.detail)), status_code=400)


def http_error(request: Request, exc: HTTPException) -> Response:
    headers = dict(exc.headers or {})
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    elif exc.status_code == 413:
        limit = request.app.state.ctx.settings.max_body_bytes
        message = f"the request body is over the limit of {limit / 1e6:.1f} MB (DARKROOM_MAX_BODY_BYTES)"
    return Response(_body(message), status_code=exc.status_code, headers=headers)


def broker_error(_: Request, exc: BrokerUnavailable) -> Response:
    log.warning("broker unavailable", error=str(exc))
    return Response(
        _body("the message broker is unreachable; nothing was accepted, try again shortly"),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_BROKER)},
    )


def storage_error(request: Request, exc: OSError) -> Response:
    """The data directory refused a write (full, read-only, a file where a folder should be)."""
    if isinstance(exc, ConnectionError):  # a socket, not the disk
        return internal_error(request, exc)
    log.error("data directory not writable", path=request.url.path, error=str(exc))
    return Response(
        _body(f"cannot write to the data directory ({exc.strerror or exc}); nothing was accepted"),
        status_code=503, headers={"Retry-After": "30"},
    )


def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return Response(_body("internal error; it has been logged"), status_code=500)


EXCEPTION_HANDLERS = {
    ApiError: api_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    BrokerUnavailable: broker_error,
    OSError: storage_error,
    Exception: internal_error,
}
