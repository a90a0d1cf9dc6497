"""/v1/ws: the same live events over one WebSocket, with subscriptions the client changes.

Client messages (JSON): `{"action": "auth", "key": TOKEN}` (first, when no Authorization or
X-API-Key header could be sent, as from a browser), `{"action": "subscribe", "job": ID}`,
`{"action": "subscribe", "type": "job.*"}` and the matching `unsubscribe`. Server messages: each
event's JSON (as on SSE, with `type` and `event_id`), `{"action": "ready" | "subscribed" |
"unsubscribed", ...}`, and `{"status": "error", "message": ...}` for a bad message."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

import msgspec
from litestar import WebSocket, websocket
from litestar.datastructures import State
from litestar.exceptions import WebSocketDisconnect
from litestar.status_codes import WS_1008_POLICY_VIOLATION

from services.ingress.auth import Principal, authenticate, token_from
from services.ingress.domain.errors import DomainError
from services.ingress.domain.events import check_pattern, job_subscription
from services.ingress.live import Follower, Live, Subscription
from services.ingress.routes.common import FilesDep

AUTH_TIMEOUT = 10.0
MESSAGE_BYTES = 4096


class ClientMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    action: Literal["auth", "subscribe", "unsubscribe"]
    key: str | None = None
    job: str | None = None
    type: str | None = None


_decoder = msgspec.json.Decoder(ClientMessage)
_encoder = msgspec.json.Encoder()


def _error(message: str) -> str:
    return _encoder.encode({"status": "error", "message": message}).decode()


async def _receive(socket: WebSocket) -> ClientMessage:
    raw = await socket.receive_data("text")
    if len(raw) > MESSAGE_BYTES:
        raise DomainError(f"message over {MESSAGE_BYTES} bytes")
    try:
        return _decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise DomainError(f"bad message: {exc}") from None


async def _principal(socket: WebSocket, state: State) -> Principal | None:
    """From the upgrade request's headers, else from a first `auth` message; None: refused."""
    ip = socket.client.host if socket.client else "unknown"
    token = token_from(socket.headers)
    try:
        if token is None and state["config"].auth == "on":
            first = await asyncio.wait_for(_receive(socket), AUTH_TIMEOUT)
            if first.action != "auth" or not first.key:
                raise DomainError('send {"action": "auth", "key": ...} first (or an Authorization header)')
            token = first.key
        return authenticate(state["config"], state["keys"], token, ip)
    except DomainError as exc:
        await socket.send_text(_error(exc.message))
    except TimeoutError:
        await socket.send_text(_error(f"no auth message within {AUTH_TIMEOUT:g} s"))
    await socket.close(code=WS_1008_POLICY_VIOLATION, reason="unauthenticated")
    return None


@websocket("/v1/ws")
async def live_socket(socket: WebSocket, state: State, files: FilesDep) -> None:
    await socket.accept()
    principal = await _principal(socket, state)
    if principal is None:
        return
    live: Live | None = state.get("live")
    if live is None:
        await socket.close(code=1013, reason="live events are not available yet")
        return
    follower = live.add(Follower(owner=principal.owner, admin=principal.admin))
    await socket.send_text(_encoder.encode({"action": "ready", "owner": principal.owner,
                                            "admin": principal.admin}).decode())

    async def write() -> None:
        while True:
            item = await follower.queue.get()
            await socket.send_text(item.data.decode())

    writer = asyncio.create_task(write())
    try:
        while not writer.done():
            try:
                message = await _receive(socket)
                if message.action == "auth":
                    raise DomainError("already authenticated")
                if message.job is None and message.type is None:
                    raise DomainError(f"{message.action} needs a job or a type")
                pattern = check_pattern(message.type)
                sub = job_subscription(message.job, principal, files) if message.job else Subscription()
                sub = Subscription(job=sub.job, pattern=pattern)
                if message.action == "subscribe":
                    live.subscribe(follower, sub)
                else:
                    live.unsubscribe(follower, sub)
                answer = {"action": f"{message.action}d", "job": sub.job, "type": sub.pattern}
                await socket.send_text(_encoder.encode(answer).decode())
            except DomainError as exc:
                await socket.send_text(_error(exc.message))
    except WebSocketDisconnect:
        pass
    finally:
        live.remove(follower)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await writer
