"""`Client`: Darkroom's REST API, synchronously (see `AsyncClient` for the same, awaited)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from darkroom_client import _core, errors
from darkroom_client._core import JobProgress, ProgressTracker, SSEDecoder
from darkroom_client.config import resolve
from darkroom_client.types import (
    EnrichRequest,
    EnrichResponse,
    Event,
    Gallery,
    GalleryImage,
    ImageRecord,
    JobCancelAnswer,
    JobCreated,
    JobDocument,
    JobList,
    JobRequest,
    JobSummary,
    LoraInfo,
    LoraPage,
    LoraSummary,
    ModelList,
    Preset,
    PresetBody,
    PresetList,
    Quota,
    Session,
    SessionBody,
    SessionLora,
)

ProgressCallback = Callable[[JobProgress], Any]
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class Client:
    """Darkroom's REST API. `url` and `api_key` default to DARKROOM_URL / DARKROOM_API_KEY, then
    ~/.config/darkroom/config.toml. 429 and 503 answers are retried (`retries` times) after the
    server's Retry-After, or with exponential backoff when it gives none."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.5, max_retry_wait: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        connection = resolve(url, api_key)
        self.url, self.api_key = connection.url, connection.api_key
        self.retries, self.backoff, self.max_retry_wait = retries, backoff, max_retry_wait
        self._http = httpx.Client(base_url=self.url, headers=_core.headers(self.api_key), timeout=timeout,
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
              headers: dict | None = None, stream: bool = False, timeout: Any = None) -> httpx.Response:
        """One request, retried on 429/503 (and on connection errors when repeating is safe)."""
        content = _core.encode(body) if body is not None else None
        headers = (headers or {}) | ({"Content-Type": "application/json"} if content is not None else {})
        params = {k: v for k, v in (params or {}).items() if v is not None}
        safe = method in IDEMPOTENT or "Idempotency-Key" in headers
        extra = {"timeout": timeout} if timeout is not None else {}
        for attempt in range(self.retries + 1):
            try:
                request = self._http.build_request(method, path, content=content, params=params, headers=headers,
                                                   **extra)
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if not safe or attempt == self.retries:
                    raise errors.ConnectionFailed(f"{method} {self.url}{path}: {exc}") from exc
                time.sleep(_core.backoff_delay(attempt, self.backoff, None, self.max_retry_wait) or 0)
                continue
            if response.is_success:
                return response
            if stream:
                response.read()
                response.close()
            delay = (_core.backoff_delay(attempt, self.backoff, response, self.max_retry_wait)
                     if response.status_code in _core.RETRY_STATUSES and attempt < self.retries else None)
            if delay is None:
                raise _core.error_of(response)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _get(self, path: str, kind: type[_core.T], **params: Any) -> _core.T:
        return _core.decode(self._send("GET", path, params=params), kind)

    # -- jobs -------------------------------------------------------------------------------------

    def submit(self, prompt: str | JobRequest, *, idempotency_key: str | None = None, **options: Any) -> JobCreated:
        """Queue a job (see `JobRequest`; `steps`, `size="512x512"`, `loras=["name:0.8"]` are
        shorthands). An idempotency key is made when none is given, so a retried submit never
        queues the job twice."""
        request = _core.job_request(prompt, **options)
        key = idempotency_key or uuid.uuid4().hex
        answer = self._send("POST", "/v1/jobs", body=request, headers={"Idempotency-Key": key})
        return _core.decode(answer, JobCreated)

    def job(self, job_id: str) -> JobDocument:
        return self._get(f"/v1/jobs/{job_id}", JobDocument)

    def cancel(self, job_id: str) -> JobCancelAnswer:
        return _core.decode(self._send("DELETE", f"/v1/jobs/{job_id}"), JobCancelAnswer)

    def jobs(self, *, status: str | None = None, model: str | None = None, page_size: int = 20,
             limit: int | None = None) -> Iterator[JobSummary]:
        """Your jobs, newest first, page after page (at most `limit`)."""
        cursor, count = None, 0
        while True:
            page = self._get("/v1/jobs", JobList, status=status, model=model, limit=page_size, cursor=cursor)
            for job in page.jobs:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield job
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def events(self, job_id: str | None = None, *, type: str | None = None, last_event_id: str | None = None,
               reconnects: int = 5) -> Iterator[Event]:
        """Server-sent events: one job's from `job.accepted` to its end (then the iterator stops),
        or, without `job_id`, all of yours (filtered by `type`, e.g. `job.*`). A dropped
        connection is resumed with Last-Event-ID, losing nothing."""
        for item in self._event_stream(job_id, type=type, last_event_id=last_event_id, reconnects=reconnects):
            if isinstance(item, Event):
                yield item

    def _event_stream(self, job_id: str | None, *, type: str | None = None, last_event_id: str | None = None,
                      reconnects: int = 5) -> Iterator[Event | None]:
        """Events, and None at each keep-alive (so that a waiter can look at its clock)."""
        path, params = (f"/v1/jobs/{job_id}/events", {}) if job_id else ("/v1/events", {"type": type})
        failures = 0
        while True:
            decoder = SSEDecoder()
            headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_event_id} if last_event_id else {})
            try:
                response = self._send("GET", path, params=params, headers=headers, stream=True,
                                      timeout=httpx.Timeout(10.0, read=60.0))
                try:
                    for line in response.iter_lines():
                        item = decoder.feed(line)
                        if isinstance(item, Event):
                            failures = 0
                            last_event_id = decoder.last_id or last_event_id
                            yield item
                            if job_id and item.terminal:
                                return
                        elif item is SSEDecoder.KEEPALIVE:
                            yield None
                finally:
                    response.close()
            except (httpx.TransportError, errors.ConnectionFailed) as exc:
                failures += 1
                if failures > reconnects:
                    raise errors.ConnectionFailed(f"the event stream {path} keeps dropping: {exc}") from exc
            else:
                failures += 1  # the server ended the stream early (e.g. it restarted): resume
                if failures > reconnects:
                    raise errors.ConnectionFailed(f"the event stream {path} ended before the job did")
            time.sleep(_core.backoff_delay(failures - 1, self.backoff, None, self.max_retry_wait) or 0)

    def wait(self, job_id: str, *, on_progress: ProgressCallback | None = None, timeout: float | None = None,
             poll_interval: float = 1.0, use_events: bool = True, raise_on_failure: bool = True) -> JobDocument:
        """Wait for the job to end and return its document, calling `on_progress` at each event
        (over server-sent events; polling the job when the stream is not available). Raises
        `JobFailed` / `JobCancelled` (unless `raise_on_failure=False`) and `WaitTimeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        tracker = ProgressTracker(job_id)

        def check_time() -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise errors.WaitTimeout(f"job {job_id} did not end within {timeout} s")

        ended = False
        if use_events:
            try:
                for item in self._event_stream(job_id):
                    check_time()
                    if item is not None:
                        ended = item.terminal
                        if on_progress is not None:
                            on_progress(tracker.on_event(item))
            except (errors.ConnectionFailed, errors.Unavailable, errors.ServerError):
                pass  # no live stream: poll instead
        while True:
            job = self.job(job_id)
            # After the stream's last event the document is read once more (it may trail by a moment).
            if on_progress is not None and not ended:
                on_progress(tracker.on_document(job))
            if job.done:
                return _core.finished(job, raise_on_failure)
            check_time()
            time.sleep(0.1 if ended else poll_interval)

    def generate(self, prompt: str | JobRequest, *, on_progress: ProgressCallback | None = None,
                 timeout: float | None = None, output_dir: str | Path | None = None,
                 idempotency_key: str | None = None, **options: Any) -> JobDocument:
        """Submit, wait (with progress) and, given `output_dir`, download the images there."""
        created = self.submit(prompt, idempotency_key=idempotency_key, **options)
        job = self.wait(created.id, on_progress=on_progress, timeout=timeout)
        if output_dir is not None:
            self.download_images(job, output_dir)
        return job

    # -- images -----------------------------------------------------------------------------------

    def download(self, image: str | ImageRecord | GalleryImage, path: str | Path | None = None) -> bytes:
        """An image's PNG bytes (written to `path` too, when given: a file, or a folder for <id>.png)."""
        image_id = image if isinstance(image, str) else image.id
        png = self._send("GET", f"/v1/images/{image_id}").content
        if path is not None:
            _core.save(png, Path(path), image_id)
        return png

    def download_images(self, job: str | JobDocument, folder: str | Path) -> list[Path]:
        """Every image of a job into `folder` as <image id>.png; returns the paths."""
        document = self.job(job) if isinstance(job, str) else job
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for image in document.images:
            self.download(image, folder / f"{image.id}.png")
            paths.append(folder / f"{image.id}.png")
        return paths

    def gallery(self, *, search: str | None = None, model: str | None = None, page_size: int = 20,
                limit: int | None = None) -> Iterator[GalleryImage]:
        """Images newest first, page after page (keyset), optionally searched."""
        cursor, count = None, 0
        while True:
            page = self._get("/v1/gallery", Gallery, search=search, model=model, limit=page_size, cursor=cursor)
            for image in page.images:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield image
            if not page.has_more or not page.next_cursor:
                return
            cursor = page.next_cursor

    def delete_image(self, image_id: str) -> None:
        self._send("DELETE", f"/v1/images/{image_id}")

    # -- catalog, library, account ----------------------------------------------------------------

    def models(self) -> ModelList:
        return self._get("/v1/models", ModelList)

    def enrich(self, prompt: str, style: str | None = None) -> EnrichResponse:
        answer = self._send("POST", "/v1/enrich", body=EnrichRequest(prompt=prompt, style=style))
        return _core.decode(answer, EnrichResponse)

    def loras(self, search: str | None = None, *, base: str | None = None, page_size: int = 20,
              limit: int | None = None) -> Iterator[LoraSummary]:
        """The LoRA library (best match first when searching), page after page."""
        cursor, count = None, 0
        while True:
            page = self._get("/v1/loras", LoraPage, search=search, base=base, limit=page_size, cursor=cursor)
            for lora in page.loras:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield lora
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def lora(self, name: str) -> LoraInfo:
        return self._get(f"/v1/loras/{name}", LoraInfo)

    def quota(self) -> Quota:
        return self._get("/v1/quota", Quota)

    def session(self, session_id: str) -> Session:
        return self._get(f"/v1/sessions/{session_id}", Session)

    def put_session(self, session_id: str, body: SessionBody | None = None, **values: Any) -> Session:
        body = body or _core.msgspec.convert(values, SessionBody)
        return _core.decode(self._send("PUT", f"/v1/sessions/{session_id}", body=body), Session)

    def delete_session(self, session_id: str) -> None:
        self._send("DELETE", f"/v1/sessions/{session_id}")

    def add_session_lora(self, session_id: str, name: str, weight: float = 1.0) -> Session:
        body = SessionLora(name=name, weight=weight)
        return _core.decode(self._send("POST", f"/v1/sessions/{session_id}/loras", body=body), Session)

    def remove_session_lora(self, session_id: str, name: str) -> Session:
        return _core.decode(self._send("DELETE", f"/v1/sessions/{session_id}/loras/{name}"), Session)

    def presets(self) -> list[Preset]:
        return self._get("/v1/presets", PresetList).presets

    def preset(self, preset_id: str) -> Preset:
        return self._get(f"/v1/presets/{preset_id}", Preset)

    def create_preset(self, body: PresetBody | None = None, **values: Any) -> Preset:
        body = body or _core.msgspec.convert(values, PresetBody)
        return _core.decode(self._send("POST", "/v1/presets", body=body), Preset)

    def put_preset(self, preset_id: str, body: PresetBody | None = None, **values: Any) -> Preset:
        body = body or _core.msgspec.convert(values, PresetBody)
        return _core.decode(self._send("PUT", f"/v1/presets/{preset_id}", body=body), Preset)

    def delete_preset(self, preset_id: str) -> None:
        self._send("DELETE", f"/v1/presets/{preset_id}")
