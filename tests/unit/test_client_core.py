"""The Python SDK's pieces that need no server: SSE framing, retry delays, request shorthands and
progress arithmetic (the SDK itself is tested against the running stack in tests/e2e)."""

from __future__ import annotations

import httpx

from darkroom_client import _core, errors
from darkroom_client.types import Event, LoraInput


def test_sse_frames_become_events_and_comments_keepalives() -> None:
    decoder = _core.SSEDecoder()
    lines = [": following", "retry: 2000", "", "id: e1", "event: job.progressed",
             'data: {"type":"job.progressed","job_id":"j","step":2}', "", ": keep-alive", ""]
    out = [decoder.feed(line) for line in lines]
    events = [item for item in out if isinstance(item, Event)]
    assert out[0] is _core.SSEDecoder.KEEPALIVE
    assert events == [Event(id="e1", type="job.progressed", data={"type": "job.progressed", "job_id": "j", "step": 2})]
    assert decoder.last_id == "e1" and events[0].job_id == "j" and not events[0].terminal


def test_retry_after_is_honoured_and_capped() -> None:
    answer = httpx.Response(429, headers={"Retry-After": "3"})
    assert _core.backoff_delay(0, 0.5, answer, cap=60) == 3
    assert _core.backoff_delay(0, 0.5, httpx.Response(429, headers={"Retry-After": "3600"}), cap=60) is None
    assert 0.5 <= _core.backoff_delay(2, 0.5, httpx.Response(503), cap=60) <= 2.0


def test_error_answers_become_typed_errors_with_the_message() -> None:
    error = _core.error_of(httpx.Response(400, json={"status": "error", "message": "settings.width: too small"}))
    assert isinstance(error, errors.BadRequest) and error.message == "settings.width: too small"
    limited = _core.error_of(httpx.Response(429, json={"message": "slow down"}, headers={"Retry-After": "7"}))
    assert isinstance(limited, errors.RateLimited) and limited.retry_after == 7


def test_shorthands_build_the_job_request() -> None:
    request = _core.job_request("a fox", steps=3, size="64x32", loras=["fox:0.8", ("owl", 0.5), "plain"], seed=1)
    assert (request.settings.num_inference_steps, request.settings.width, request.settings.height) == (3, 64, 32)
    assert request.loras == [LoraInput(name="fox", weight=0.8), LoraInput(name="owl", weight=0.5),
                             LoraInput(name="plain")]


def test_progress_times_steps() -> None:
    now = [0.0]
    tracker = _core.ProgressTracker("j", clock=lambda: now[0])
    tracker.on_event(Event(id="1", type="job.accepted", data={"spec": {"settings": {"num_inference_steps": 10,
                                                                                     "num_images": 1}}}))
    for step in (1, 2, 3):
        now[0] += 0.5
        state = tracker.on_event(Event(id=str(step), type="job.progressed",
                                       data={"phase": "generating", "step": step, "total_steps": 10}))
    assert state.rate == 2.0 and state.eta_seconds == 3.5 and state.fraction == 0.3
    done = tracker.on_event(Event(id="9", type="job.completed", data={"image_urls": ["/v1/images/a"]}))
    assert done.phase == "completed" and done.fraction == 1.0 and done.image_urls == ["/v1/images/a"]
