"""What the sync and async clients share, free of I/O: building requests, reading answers into
typed errors, retry delays, server-sent event framing and progress arithmetic."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

from darkroom_client import errors
from darkroom_client.types import Event, JobDocument, JobRequest, LoraInput, SettingsInput

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 503})
USER_AGENT = "darkroom-client-python/0.1"
_encoder = msgspec.json.Encoder()


def headers(api_key: str | None) -> dict[str, str]:
    return {"User-Agent": USER_AGENT} | ({"Authorization": f"Bearer {api_key}"} if api_key else {})


def encode(body: Any) -> bytes:
    return _encoder.encode(body)


def decode(response: httpx.Response, kind: type[T]) -> T:
    return msgspec.json.decode(response.content, type=kind)


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (it may be a number or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def error_of(response: httpx.Response) -> errors.APIError:
    """The typed error for an error answer, with the API's own message."""
    body: Any = None
    try:
        body = response.json()
        message = body.get("message") or body.get("detail") or response.text
    except (ValueError, AttributeError):
        message = response.text or response.reason_phrase
    return errors.api_error(response.status_code, str(message), body=body, retry_after=retry_after(response))


def backoff_delay(attempt: int, base: float, response: httpx.Response | None, cap: float) -> float | None:
    """Seconds to wait before retry `attempt` (0-based): the server's Retry-After when it gave one,
    else exponential with jitter. None: do not retry (the server asks for longer than `cap`)."""
    if response is not None:
        after = retry_after(response)
        if after is not None:
            return after if after <= cap else None
    return min(cap, base * 2**attempt) * (0.5 + random.random() / 2)


def parse_size(size: str | tuple[int, int] | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    if isinstance(size, str):
        width, _, height = size.lower().partition("x")
        return int(width), int(height or width)
    return int(size[0]), int(size[1])


def lora_input(value: LoraInput | str | tuple[str, float] | Mapping[str, Any]) -> LoraInput:
    """A LoRA from `LoraInput`, `"name:0.8"`, `("name", 0.8)` or `{"name": ..., "weight": ...}`."""
    if isinstance(value, LoraInput):
        return value
    if isinstance(value, str):
        name, sep, weight = value.rpartition(":")
        try:
            return LoraInput(name=name, weight=float(weight)) if sep else LoraInput(name=value)
        except ValueError:
            return LoraInput(name=value)
    if isinstance(value, tuple):
        return LoraInput(name=value[0], weight=float(value[1]))
    return LoraInput(**value)


def job_request(prompt: str | JobRequest, *, model: str | None = None, negative_prompt: str | None = None,
                steps: int | None = None, size: str | tuple[int, int] | None = None, width: int | None = None,
                height: int | None = None, num_images: int | None = None, seed: int | None = None,
                guidance_scale: float | None = None, sampler: str | None = None,
                loras: Iterable[Any] = (), style: str | None = None, session: str | None = None,
                preset: str | None = None, **settings: Any) -> JobRequest:
    """A JobRequest from keyword arguments (or the one given)."""
    if isinstance(prompt, JobRequest):
        return prompt
    size_width, size_height = parse_size(size)
    values = {"num_inference_steps": steps, "width": width or size_width, "height": height or size_height,
              "num_images": num_images, "seed": seed, "guidance_scale": guidance_scale, "sampler": sampler,
              **settings}
    return JobRequest(
        prompt=prompt, model=model, negative_prompt=negative_prompt, style=style, session=session, preset=preset,
        # Not validated here: the server's answer names what is wrong (a typed BadRequest).
        settings=SettingsInput(**{k: v for k, v in values.items() if v is not None}),
        loras=[lora_input(item) for item in loras],
    )


def save(png: bytes, path: Path, image_id: str) -> Path:
    """Write an image to `path` (a folder: as <id>.png in it)."""
    target = path / f"{image_id}.png" if path.is_dir() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png)
    return target


def finished(job: JobDocument, raise_on_failure: bool) -> JobDocument:
    if raise_on_failure and job.status == "failed":
        raise errors.JobFailed(job)
    if raise_on_failure and job.status == "cancelled":
        raise errors.JobCancelled(job)
    return job


# -- server-sent events ---------------------------------------------------------------------------

class SSEDecoder:
    """Frames of `text/event-stream`, fed line by line: an Event at each blank line that ends one
    with data; `None` for a comment (the server's keep-alive)."""

    KEEPALIVE = object()

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}
        self._data: list[str] = []
        self.last_id: str | None = None

    def feed(self, line: str) -> Event | object | None:
        if line == "":
            data, fields = self._data, self._fields
            self._data, self._fields = [], {}
            if not data:
                return None
            event_id = fields.get("id") or ""
            if event_id:
                self.last_id = event_id
            body = msgspec.json.decode("\n".join(data))
            kind = fields.get("event") or (body.get("type") if isinstance(body, dict) else None) or "message"
            return Event(id=event_id, type=kind, data=body if isinstance(body, dict) else {"value": body})
        if line.startswith(":"):
            return self.KEEPALIVE
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name in ("id", "event"):
            self._fields[name] = value
        return None


# -- progress -------------------------------------------------------------------------------------

PHASE_OF = {"job.accepted": "queued", "job.enriched": "queued", "job.started": "preparing",
            "model.loading": "loading_model", "model.loaded": "preparing", "job.requeued": "queued",
            "job.completed": "completed", "job.failed": "failed", "job.cancelled": "cancelled",
            "job.cancel_requested": "cancelling"}
STATUS_OF = {"job.accepted": "pending", "job.requeued": "pending", "job.started": "processing",
             "job.completed": "completed", "job.failed": "failed", "job.cancelled": "cancelled"}


@dataclass
class JobProgress:
    """Where a job is, for a progress callback: the phase (`queued`, `preparing`, `loading_model`,
    `generating`, `hires`, `saving`, `completed`, `failed`, `cancelled`), the step, the speed in
    steps a second and an estimate of the seconds left in this pass; `event` is what told us (None
    when polling)."""

    job_id: str
    status: str = "pending"
    phase: str = "queued"
    step: int = 0
    total_steps: int | None = None
    image_index: int = 1
    total_images: int | None = None
    rate: float | None = None
    eta_seconds: float | None = None
    queue_position: int | None = None
    message: str = ""
    event: Event | None = None
    image_urls: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


class ProgressTracker:
    """Turns events (or polled documents) into `JobProgress`, timing steps for it/s and the ETA."""

    def __init__(self, job_id: str, clock=time.monotonic):
        self.state = JobProgress(job_id=job_id)
        self.clock = clock
        self._pass: tuple[str, int] | None = None
        self._start: tuple[int, float] | None = None

    def _timed(self, phase: str, image_index: int, step: int, total: int | None) -> None:
        now = self.clock()
        if self._pass != (phase, image_index) or self._start is None or step < self._start[0]:
            self._pass, self._start = (phase, image_index), (step, now)
            self.state.rate = self.state.eta_seconds = None
            return
        steps, seconds = step - self._start[0], now - self._start[1]
        if steps > 0 and seconds > 0:
            self.state.rate = steps / seconds
            self.state.eta_seconds = (total - step) / self.state.rate if total else None

    def on_event(self, event: Event) -> JobProgress:
        state, data = self.state, event.data
        state.event = event
        state.status = STATUS_OF.get(event.type, state.status)
        state.phase = PHASE_OF.get(event.type, state.phase)
        if event.type == "job.accepted":
            spec = data.get("spec") or {}
            settings = spec.get("settings") or {}
            state.total_steps = settings.get("num_inference_steps", state.total_steps)
            state.total_images = settings.get("num_images", state.total_images)
        elif event.type == "job.progressed":
            state.status = "processing"
            state.phase = data.get("phase", "generating")
            state.step = int(data.get("step", 0))
            state.total_steps = data.get("total_steps", state.total_steps)
            state.image_index = int(data.get("image_index", 1))
            state.total_images = data.get("total_images", state.total_images)
            self._timed(state.phase, state.image_index, state.step, state.total_steps)
        elif event.type == "job.completed":
            state.step = state.total_steps or state.step
            state.image_urls = list(data.get("image_urls") or [])
            state.eta_seconds = 0.0
        elif event.type in ("job.failed", "job.cancelled"):
            state.message = data.get("reason", "")
        return replace(state)

    def on_document(self, job: JobDocument) -> JobProgress:
        state, progress = self.state, job.progress
        state.event = None
        state.status = job.status
        state.message = job.message
        state.queue_position = job.queue_position
        state.total_images = job.settings.num_images
        state.total_steps = progress.total_steps or job.settings.num_inference_steps
        if job.status == "pending":
            state.phase = "queued"
            state.eta_seconds = job.eta_seconds
        elif job.done:
            state.phase = job.status
        else:
            state.phase = ("saving" if progress.saving else "generating" if progress.generating
                           else "loading_model" if progress.loading_model else "preparing")
            state.step = progress.step or 0
            state.image_index = progress.image_index or 1
            self._timed(state.phase, state.image_index, state.step, state.total_steps)
        if job.status == "completed":
            state.step = state.total_steps or state.step
            state.image_urls = [f"/v1/images/{image.id}" for image in job.images]
        return replace(state)
