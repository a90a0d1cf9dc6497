"""The HTTP server under the API: uvicorn with the read limits it lacks.

uvicorn (httptools) buffers a request's headers without any size limit and waits for them, and for
the body, without any deadline: one client can make the ingress hold gigabytes, and a few dozen slow
ones can pin sockets forever. `GuardedProtocol` adds three limits to the same fast parser:
- the request line and headers may take `max_header_bytes` (431 beyond it);
- they must arrive within `header_timeout` seconds of the connection, or of the request's first byte
  on a kept-alive connection (408);
- the body must arrive within `body_timeout` seconds of the headers (408).
Then the connection is closed. Idle kept-alive connections are closed by uvicorn itself.
A request that is not valid HTTP (a malformed request line, header or content-length) is answered
400 in the API's JSON error shape, naming what the parser refused, instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import json

import httptools
import uvicorn
from litestar.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from schemas.settings import Settings
from services.ingress.http import head_as_get

MALFORMED = "malformed HTTP request"  # the start of a protocol-level 400's message


def _answer(status: str, message: str) -> bytes:
    body = json.dumps({"status": "error", "message": message}).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class _Parser:
    """httptools' parser, keeping the reason of its last refusal (uvicorn drops it)."""

    def __init__(self, parser: httptools.HttpRequestParser) -> None:
        self._parser = parser
        self.refusal = ""

    def feed_data(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.refusal = str(exc)
            raise

    def __getattr__(self, name: str):
        return getattr(self._parser, name)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit and header and body deadlines."""

    max_header_bytes = 32 * 1024
    header_timeout = 10.0
    body_timeout = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.parser = _Parser(self.parser)
        self._reading_head = True
        self._head_bytes = 0  # bytes received while a head was incomplete
        self._parsed_head = 0  # bytes of the current request's line and headers
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(self.header_timeout, "the request headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
            if self._deadline is None:  # the first byte of a request on a kept-alive connection
                self._arm(self.header_timeout, "the request headers")
        super().data_received(data)
        # Headers still incomplete after this chunk: the whole chunk counted as head, so a body
        # that arrives in the same read as its headers is never mistaken for a header.
        if self._reading_head and self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._refuse("431 Request Header Fields Too Large",
                         f"request line and headers exceed {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        self._parsed_head = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._parsed_head += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_head += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        if self._parsed_head > self.max_header_bytes:  # complete, but too large (it came in one read)
            self._refuse("431 Request Header Fields Too Large",
                         f"request line and headers exceed {self.max_header_bytes} bytes")
            return
        self._arm(self.body_timeout, "the request body")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():  # refused: the rest of what it sent is ignored
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading_head = True
        self._head_bytes = 0
        if not self.transport.is_closing():
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what httptools cannot parse, in the API's error shape."""
        reason = self.parser.refusal or msg
        self._refuse("400 Bad Request", f"{MALFORMED}: {reason}")

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, what: str, seconds: float) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self._refuse("408 Request Timeout", f"{what} did not arrive within {seconds:g} s")

    def _refuse(self, status: str, message: str) -> None:
        self._disarm()
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_answer(status, message))
        if self.cycle is not None:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()


def config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration for `app`: the guarded protocol, a cap on concurrent connections, and
    HEAD answered wherever GET is."""
    protocol = type("Guarded", (GuardedProtocol,), {
        "max_header_bytes": settings.max_header_bytes,
        "header_timeout": settings.header_timeout,
        "body_timeout": settings.body_timeout,
    })
    return uvicorn.Config(
        head_as_get(app),
        host=settings.host,
        port=settings.port,
        http=protocol,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
    )


def serve(app: ASGIApp, settings: Settings) -> None:
    """Run `app` under `config` until the process is told to stop."""
    uvicorn.Server(config(app, settings)).run()
