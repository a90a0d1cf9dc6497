"""Live events for SSE and WebSocket clients: ONE broker subscription per ingress process, fanned
out in memory to every follower (never a queue per client).

Each event is turned into its stream form once (`StreamEvent`: JSON without image or preview
bytes, with URLs instead) and handed to the followers whose subscriptions match it. A follower
that falls `FOLLOWER_BACKLOG` events behind is dropped (its stream ends; the client reconnects
with `Last-Event-ID` and loses nothing). The last `RECENT` events stay in memory: a client that
connects between an event's delivery here and its line in the event log still gets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import msgspec
import structlog

from schemas import topology as t
from schemas.events import (
    Event,
    ImageGenerated,
    ImageSaved,
    JobAccepted,
    JobCompleted,
    JobProgressed,
)
from schemas.layout import DataLayout
from services.bus import event_decoder

log = structlog.get_logger("ingress")

# What the process subscribes to: every event but workers' heartbeats (see topology.UNSTREAMED_KEYS).
LIVE_KEYS = (t.EVERY_JOB_EVENT, t.EVERY_MODEL_EVENT, t.EVERY_IMAGE_EVENT, t.EVERY_WEBHOOK_EVENT)
RECENT = 4096
FOLLOWER_BACKLOG = 2048
OWNERS_KEPT = 50_000
_encoder = msgspec.json.Encoder()
_UNKNOWN = object()


@dataclass(slots=True, eq=False)
class StreamEvent:
    """An event as streams carry it: `data` is its JSON (no PNG or preview bytes, URLs instead);
    `frame` its SSE frame, made once by the first stream that writes it."""

    event_id: str
    type: str
    job_id: str | None
    data: bytes
    frame: Any = None

    @property
    def terminal(self) -> bool:
        return self.type in t.TERMINAL_KEYS


def stream_form(event: Event) -> StreamEvent:
    """The event for streams: bytes out (image ids and URLs in), encoded once for every follower."""
    body: dict[str, Any] = msgspec.to_builtins(event)
    if isinstance(event, ImageGenerated):
        body.pop("png", None)
        body["image_url"] = f"/v1/images/{event.image_id}"
    elif isinstance(event, JobProgressed):
        if body.pop("preview", None) is not None:
            body["preview_url"] = f"/v1/jobs/{event.job_id}/preview"
    elif isinstance(event, ImageSaved):
        body["image_url"] = f"/v1/images/{event.image.id}"
    elif isinstance(event, JobCompleted):
        body["image_urls"] = [f"/v1/images/{image_id}" for image_id in event.image_ids]
    kind = type(event).__struct_config__.tag
    return StreamEvent(event_id=event.event_id, type=kind, job_id=event.job_id, data=_encoder.encode(body))


@functools.lru_cache(maxsize=4096)
def _matches(pattern: str, key: str) -> bool:
    return t.key_matches(pattern, key)


@dataclass(frozen=True, slots=True)
class Subscription:
    """Events of one job, or of one routing-key pattern, or both (None: any)."""

    job: str | None = None
    pattern: str | None = None

    def matches(self, event: StreamEvent) -> bool:
        return ((self.job is None or self.job == event.job_id)
                and (self.pattern is None or _matches(self.pattern, event.type)))


@dataclass(eq=False)
class Follower:
    """One client's view: its subscriptions, who it is, and the events waiting to be written."""

    owner: str | None
    admin: bool
    subscriptions: set[Subscription] = field(default_factory=set)
    queue: asyncio.Queue[StreamEvent] = field(default_factory=lambda: asyncio.Queue(FOLLOWER_BACKLOG))
    lost: bool = False
    # When the follower was handed each event (monotonic), for the fan-out latency benchmark.
    on_put: Callable[[StreamEvent], None] | None = None

    def may_see(self, owner: Any) -> bool:
        return self.admin or (owner is not _UNKNOWN and owner is not None and owner == self.owner)


class Live:
    """The process's one subscription and its followers."""

    def __init__(self, layout: DataLayout, observe: Callable[[Event], None] | None = None):
        self.layout = layout
        self.observe = observe  # what else each event is shown to (the metrics)
        self.recent: deque[StreamEvent] = deque(maxlen=RECENT)
        self._by_job: dict[str, set[Follower]] = {}
        self._broad: set[Follower] = set()
        self._owners: OrderedDict[str, str | None] = OrderedDict()
        self.connected = asyncio.Event()

    async def follow_bus(self, get_bus: Callable[[], Any]) -> None:
        """Subscribe once the bus is connected (the robust channel keeps the subscription across
        reconnects); then stay until cancelled."""
        while (bus := get_bus()) is None:  # noqa: ASYNC110 - the link is a plain attribute, set once
            await asyncio.sleep(0.1)
        await bus.subscribe(LIVE_KEYS, self.publish, name="ingress.live")
        self.connected.set()
        log.info("following events for live streams")
        await asyncio.Event().wait()

    # -- followers ---------------------------------------------------------------------------------

    def add(self, follower: Follower) -> Follower:
        for sub in follower.subscriptions:
            self._index(follower, sub)
        return follower

    def subscribe(self, follower: Follower, sub: Subscription) -> None:
        follower.subscriptions.add(sub)
        self._index(follower, sub)

    def unsubscribe(self, follower: Follower, sub: Subscription) -> None:
        follower.subscriptions.discard(sub)
        self._unindex(follower)
        for left in follower.subscriptions:
            self._index(follower, left)

    def remove(self, follower: Follower) -> None:
        self._unindex(follower)

    def _index(self, follower: Follower, sub: Subscription) -> None:
        if sub.job is not None:
            self._by_job.setdefault(sub.job, set()).add(follower)
        else:
            self._broad.add(follower)

    def _unindex(self, follower: Follower) -> None:
        self._broad.discard(follower)
        for job in [s.job for s in follower.subscriptions if s.job is not None]:
            followers = self._by_job.get(job)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._by_job[job]

    @property
    def followers(self) -> int:
        return len(self._broad) + sum(len(f) for f in self._by_job.values())

    # -- events ------------------------------------------------------------------------------------

    async def publish(self, event: Event) -> None:
        """Hand one event from the broker to every follower it matches."""
        if isinstance(event, JobAccepted):
            self._remember(event.job_id, event.spec.owner)
        if self.observe is not None:
            try:
                self.observe(event)
            except Exception:  # metrics must never stop live streams
                log.exception("metrics could not fold an event", type=type(event).__name__)
        self.deliver(stream_form(event))

    def deliver(self, item: StreamEvent) -> None:
        self.recent.append(item)
        targets = self._by_job.get(item.job_id, set()) if item.job_id is not None else set()
        if self._broad:
            targets = targets | self._broad
        owner: Any = _UNKNOWN
        for follower in targets:
            if not any(sub.matches(item) for sub in follower.subscriptions):
                continue
            # Job subscriptions were checked when made; broad ones see only their tenant's events.
            if not follower.admin and not any(s.job == item.job_id for s in follower.subscriptions):
                if owner is _UNKNOWN:
                    owner = self.owner_of(item.job_id)
                if not follower.may_see(owner):
                    continue
            self._put(follower, item)

    def _put(self, follower: Follower, item: StreamEvent) -> None:
        try:
            follower.queue.put_nowait(item)
        except asyncio.QueueFull:
            follower.lost = True
            self.remove(follower)
            log.warning("live follower too slow; its stream ends", owner=follower.owner)
            return
        if follower.on_put is not None:
            follower.on_put(item)

    def recent_after(self, event_id: str) -> list[StreamEvent] | None:
        """Events seen since `event_id`, or None when it is no longer (or never was) in memory."""
        items = list(self.recent)
        for index in range(len(items) - 1, -1, -1):
            if items[index].event_id == event_id:
                return items[index + 1:]
        return None

    def recent_of(self, job_id: str) -> list[StreamEvent]:
        return [item for item in self.recent if item.job_id == job_id]

    # -- owners ------------------------------------------------------------------------------------

    def _remember(self, job_id: str, owner: str | None) -> None:
        self._owners[job_id] = owner
        self._owners.move_to_end(job_id)
        while len(self._owners) > OWNERS_KEPT:
            self._owners.popitem(last=False)

    def owner_of(self, job_id: str | None) -> Any:
        """The key id that owns the job (None: no owner, auth off), or _UNKNOWN (admins only)."""
        if job_id is None:
            return _UNKNOWN
        if job_id in self._owners:
            return self._owners[job_id]
        try:
            owner = msgspec.json.decode(self.layout.job(job_id).read_bytes(), type=_Owner).owner
        except (OSError, msgspec.MsgspecError):
            return _UNKNOWN
        self._remember(job_id, owner)
        return owner


class _Owner(msgspec.Struct):
    owner: str | None = None


def read_job_log(layout: DataLayout, job_id: str, since: date) -> list[StreamEvent]:
    """The job's events from the event log (files of `since` and later), in log order.

    A bytes search for the job id finds its lines without decoding the others. Blocks: call it
    in a thread."""
    needle = f'"job_id":"{job_id}"'.encode()
    found: list[StreamEvent] = []
    seen: set[str] = set()
    for path in sorted(layout.events_dir.glob("*.jsonl")):
        with contextlib.suppress(ValueError):
            if date.fromisoformat(path.stem) < since:
                continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        position = data.find(needle)
        while position != -1:
            start = data.rfind(b"\n", 0, position) + 1
            end = data.find(b"\n", position)
            if end == -1:
                break  # a line still being written
            try:
                event = event_decoder.decode(data[start:end])
            except msgspec.MsgspecError:
                event = None
            if event is not None and event.job_id == job_id and event.event_id not in seen \
                    and type(event).__struct_config__.tag not in t.UNSTREAMED_KEYS:
                seen.add(event.event_id)
                found.append(stream_form(event))
            position = data.find(needle, end)
    return found


def merge(history: Iterable[StreamEvent], recent: Iterable[StreamEvent]) -> list[StreamEvent]:
    """The log's events, then those only in memory yet, each once."""
    merged, seen = [], set()
    for item in (*history, *recent):
        if item.event_id not in seen:
            seen.add(item.event_id)
            merged.append(item)
    return merged


def day_of(moment: datetime) -> date:
    return moment.date()
