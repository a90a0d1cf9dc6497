"""HTTP requests into the metrics: by method, route template (`/v1/jobs/{job_id:str}`, never the
raw path: ids would make a series per job) and status code, and the time to the response's headers.

A middleware notes when a routed request began; the application's `before_send` hook sees every
response start, errors included (Litestar turns exceptions into responses outside the middleware),
and records it. A request no route matched (a 404 or 405 from the router) counts as `unmatched`.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from services.metrics import Meter

_STARTED = "darkroom.started"


def timing_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_STARTED] = time.perf_counter()  # type: ignore[literal-required]
        await app(scope, receive, send)

    return middleware


def request_recorder(meter: Meter) -> Any:
    """The `before_send` hook that counts each HTTP response."""

    async def record(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope["type"] != "http":
            return
        route = scope.get("path_template") or "unmatched"
        method = scope.get("method", "GET")
        meter.http_requests.labels(method, route, str(message["status"])).inc()
        started = scope.get(_STARTED)
        if started is not None:
            meter.http_seconds.labels(method, route).observe(time.perf_counter() - started)

    return record
