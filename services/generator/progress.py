"""Step reports from the pipeline thread to the bus: throttled progress, previews, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipelines.previews import preview_png
from schemas.events import Event, JobCancelled, JobProgressed


@dataclass(frozen=True)
class Slot:
    """One job's share of a pipeline call: its images start at `offset` in the batch."""

    job_id: str
    attempt: int
    offset: int
    first_image: int
    total_images: int


class ProgressReporter:
    """The `on_step` callback of one pipeline call; runs in the pipeline's thread.

    Publishes at most `rate` progress events a second per job (always the first and last step of
    each phase) without waiting for the broker, a preview every `preview_every` steps, and stops
    the call when every job in it was cancelled. A job cancelled while sharing a call with others
    is announced cancelled at once; its images are dropped when the call ends.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        publish: Callable[[Event], None],
        slots: list[Slot],
        rate: float,
        preview_every: int,
        family: str,
        cancelled: Callable[[str], bool],
        interrupted: Callable[[], bool] = lambda: False,
    ):
        self.loop = loop
        self.publish = publish
        self.slots = slots
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.preview_every = preview_every
        self.family = family
        self.cancelled = cancelled
        self.interrupted = interrupted
        self.dropped: set[str] = set()
        self._last = float("-inf")

    def _send(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.publish, event)

    def __call__(self, step: int, total: int, latents: torch.Tensor, phase: str) -> bool:
        if self.interrupted():  # the worker is shutting down: this step is done, stop here
            return True
        for slot in self.slots:
            if slot.job_id not in self.dropped and self.cancelled(slot.job_id):
                self.dropped.add(slot.job_id)
                self._send(JobCancelled(job_id=slot.job_id, reason="cancelled while generating"))
        if len(self.dropped) == len(self.slots):
            return True
        now = time.monotonic()
        if step in (1, total) or now - self._last >= self.interval:
            self._last = now
            with_preview = self.preview_every > 0 and (step % self.preview_every == 0 or step == total)
            for slot in self.slots:
                if slot.job_id in self.dropped:
                    continue
                preview = preview_png(latents[slot.offset : slot.offset + 1], self.family) if with_preview else None
                self._send(JobProgressed(
                    job_id=slot.job_id, phase=phase, step=step, total_steps=total, attempt=slot.attempt,
                    image_index=slot.first_image, total_images=slot.total_images, preview=preview,
                ))
        return False
