"""HTTP details under every route: how request bodies are read, and HEAD.

Request bodies (`DarkroomRequest.json`): only JSON in UTF-8 (`Content-Type: application/json`),
not empty, at most MAX_DEPTH levels deep, no key given twice in one object, and values of exactly
the types the schema says (`"2"` is not an integer, `2.0` is not an integer) — each refused with a
400 naming the problem, before anything is decoded into the route's types.

HEAD (`head_as_get`): answered wherever GET is, with GET's status and headers and no body.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import msgspec
from litestar import Request
from litestar.types import ASGIApp, Empty, Message, Receive, Scope, Send

from services.ingress.domain.errors import Invalid

MAX_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise Invalid(f"duplicate key {key!r} in one object of the JSON body; give each key once")
        found[key] = value
    return found


def parse_json_body(body: bytes, content_type: str | None) -> Any:
    """The JSON value of a request body, or Invalid naming what is wrong with it."""
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise Invalid(f"the request body must be JSON sent with Content-Type: application/json "
                      f"(got {media or 'no Content-Type'})")
    charset = re.search(r"charset\s*=\s*\"?([\w-]+)", params, re.I)
    if charset and charset.group(1).lower() not in ("utf-8", "utf8"):
        raise Invalid(f"JSON must be sent as UTF-8, not {charset.group(1)} (Content-Type: application/json; charset=utf-8)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(f"the request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at position {exc.start}); "
                      "JSON must be UTF-8") from None
    if not text.strip():
        raise Invalid("the request body is empty: send a JSON object")
    brackets = _STRING.sub(b'""', body).translate(None, _BRACKETS)
    depth = max(itertools.accumulate(_DEPTH[b] for b in brackets), default=0)
    if depth > MAX_DEPTH:
        raise Invalid(f"the JSON body is nested {depth} levels deep; the limit is {MAX_DEPTH}")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise Invalid(f"malformed JSON in the request body: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


class DarkroomRequest(Request):
    """Litestar's Request, reading JSON bodies strictly (see the module docstring)."""

    async def json(self) -> Any:
        if self._json is Empty:
            if self._connection_state.json is not Empty:
                self._json = self._connection_state.json
            else:
                value = parse_json_body(await self.body(), self.headers.get("content-type"))
                _check_types(self, value)
                self._json = self._connection_state.json = value
        return self._json


def _check_types(request: Request, value: Any) -> None:
    """Convert once with strict types (Litestar converts leniently afterwards): a string where the
    schema wants a number is an error naming the field, not a number."""
    field = getattr(request.route_handler, "parsed_data_field", None)
    annotation = getattr(field, "annotation", None)
    if annotation is None or isinstance(value, (str, int, float, bool)) or value is None:
        return
    try:
        msgspec.convert(value, type=annotation, strict=True)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$")
        path = path.rstrip("`").lstrip(".")
        raise Invalid(f"{path}: {message}" if path else message) from None
    except TypeError:  # an annotation msgspec does not know (e.g. a form): Litestar checks it
        return


def head_as_get(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: HEAD is GET without the body."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await app(scope, receive, send)
            return

        async def send_head(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await app({**scope, "method": "GET"}, receive, send_head)

    return middleware
