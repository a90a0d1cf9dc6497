"""Step reports from the pipeline thread to the bus, throttled, with cancellation checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import torch

from schemas.events import Event, JobProgressed


class ProgressReporter:
    """The `on_step` callback of one pipeline call. Runs in the pipeline's thread.

    Publishes at most `rate` progress events a second (always the first and last step) without
    waiting for the broker, and returns True to stop the call when the job was cancelled.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        publish: Callable[[Event], None],
        job_id: str,
        attempt: int,
        total_images: int,
        rate: float,
        cancelled: Callable[[], bool],
    ):
        self.loop = loop
        self.publish = publish
        self.job_id = job_id
        self.attempt = attempt
        self.total_images = total_images
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.cancelled = cancelled
        self._last = float("-inf")

    def __call__(self, step: int, total: int, latents: torch.Tensor) -> bool:
        now = time.monotonic()
        if step in (1, total) or now - self._last >= self.interval:
            self._last = now
            event = JobProgressed(
                job_id=self.job_id, step=step, total_steps=total,
                total_images=self.total_images, attempt=self.attempt,
            )
            self.loop.call_soon_threadsafe(self.publish, event)
        return self.cancelled()
