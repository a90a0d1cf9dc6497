"""Every error answer is JSON `{"status": "error", "message": ...}` with the right status code: the
one place where domain errors (and Litestar's, the broker's, the disk's) become HTTP answers."""

from __future__ import annotations

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from services.bus import BrokerUnavailable
from services.ingress.domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    LimitReached,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
)

log = structlog.get_logger("ingress")

RETRY_AFTER_BROKER = 5
STATUS = {Invalid: 400, Unauthenticated: 401, Forbidden: 403, NotFound: 404, Conflict: 409, TooLarge: 413,
          LimitReached: 429, Unavailable: 503}


def _body(message: str) -> dict[str, str]:
    return {"status": "error", "message": message}


def domain_error(request: Request, exc: DomainError) -> Response:
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), None)
    if status is None:  # a DomainError with no status of its own is a bug
        return internal_error(request, exc)
    headers = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, LimitReached | Unavailable | Conflict) and exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return Response(_body(exc.message), status_code=status, headers=headers)


def validation_error(request: Request, exc: ValidationException) -> Response:
    """Litestar's body/parameter validation, rephrased to name the field."""
    if request.method in ("POST", "PUT", "PATCH") and request.headers.get("content-length", "0") == "0" and \
            "data" in str(exc.detail) + str(exc.extra):
        return Response(_body("the request body is empty: send a JSON object"), status_code=400)
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
        limit = request.app.state.config.max_body_bytes
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
    """Anything else, a read-side `QueryFailed` or `ProjectionFailed` among them."""
    log.exception("unhandled error", path=request.url.path)
    return Response(_body("internal error; it has been logged"), status_code=500)


EXCEPTION_HANDLERS = {
    DomainError: domain_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    BrokerUnavailable: broker_error,
    OSError: storage_error,
    Exception: internal_error,
}
