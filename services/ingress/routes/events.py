"""Server-sent events: /v1/jobs/{id}/events (one job, resumable) and /v1/events (all of the
caller's, filtered), and the AMQP contract at /asyncapi.json."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from services.ingress.domain import events
from services.ingress.live import StreamEvent
from services.ingress.routes.common import JSON, Caller, ConfigDep, FilesDep, LayoutDep, errors

LastEventId = Annotated[str | None, HeaderParameter(name="Last-Event-ID", required=False, max_length=100)]
RETRY_MS = 2000


class Frame(ServerSentEventMessage):
    """An event's SSE frame, encoded once and written to every follower as is."""

    def __init__(self, encoded: bytes):
        super().__init__()
        self.encoded = encoded

    def encode(self) -> bytes:
        return self.encoded


KEEP_ALIVE = Frame(ServerSentEventMessage(comment="keep-alive", data=None).encode())


def frame(item: StreamEvent) -> Frame:
    """`id:` the event id, `event:` its type, `data:` its JSON (one line: JSON has no raw newlines)."""
    if item.frame is None:
        item.frame = Frame(b"id: %s\r\nevent: %s\r\ndata: %s\r\n\r\n" % (
            item.event_id.encode(), item.type.encode(), item.data))
    return item.frame


async def frames(stream: AsyncIterator[StreamEvent | None]) -> AsyncIterator[ServerSentEventMessage]:
    """SSE framing of a stream; a comment line to keep the connection alive."""
    yield ServerSentEventMessage(comment="following", retry=RETRY_MS, data=None)
    async for item in stream:
        yield KEEP_ALIVE if item is None else frame(item)


class EventRoutes(Controller):
    path = "/v1"
    tags = ["events"]

    @get("/jobs/{job_id:str}/events", summary="A job's events, live (server-sent events)",
         media_type="text/event-stream", responses=errors(400, 404, 503))
    async def job_events(self, principal: Caller, files: FilesDep, layout: LayoutDep, config: ConfigDep,
                         state: State, job_id: FromPath[str], last_event_id: LastEventId = None) -> ServerSentEvent:
        """Every event of the job, from `job.accepted` to its end (`job.completed`, `job.failed` or
        `job.cancelled`), after which the stream closes. Each has an `id:`; reconnect with
        `Last-Event-ID` to get exactly what you missed, then the live tail. Image bytes never
        travel here: `image_url` / `image_urls` / `preview_url` say where to fetch them."""
        stream = await events.follow_job(job_id, principal, live=state.get("live"), files=files, layout=layout,
                                         last_event_id=last_event_id, keepalive=config.stream_keepalive)
        return ServerSentEvent(frames(stream))

    @get("/events", summary="All your events, live (server-sent events)", media_type="text/event-stream",
         responses=errors(400, 404, 503))
    async def all_events(
        self, principal: Caller, files: FilesDep, config: ConfigDep, state: State,
        type: Annotated[str | None, QueryParameter(required=False, max_length=100,
                                                    description="routing key or pattern: job.completed, job.*, #")] = None,
        job: Annotated[str | None, QueryParameter(required=False, max_length=100, description="one job's id")] = None,
        last_event_id: LastEventId = None,
    ) -> ServerSentEvent:
        """Events of your jobs (an admin: everyone's) as they happen, optionally of one routing-key
        pattern and/or one job; a comment line every few seconds keeps the connection alive.
        `Last-Event-ID` resumes while the missed events are still in the server's memory."""
        stream = await events.follow_events(principal, live=state.get("live"), files=files, pattern=type, job_id=job,
                                            last_event_id=last_event_id, keepalive=config.stream_keepalive)
        return ServerSentEvent(frames(stream))


class ContractRoutes(Controller):
    path = "/"
    tags = ["events"]

    @get("/asyncapi.json", summary="The AMQP contract (AsyncAPI 3): exchanges, routing keys, payloads", security=[],
         media_type=JSON)
    async def asyncapi(self, state: State) -> Response[dict[str, Any]]:
        """Generated from `schemas/` (the same document is committed as schemas/asyncapi.json).
        Encoded once, when the ingress starts."""
        return Response(state["asyncapi"], media_type=JSON)
