"""Step reports from the pipeline thread to the bus: throttled progress, previews, cancellation.

No torch here: the latents are only sliced, and the preview is drawn by the function passed in
(`pipelines.previews.preview_png`), so the worker imports this without loading torch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas.events import Event, JobProgressed

if TYPE_CHECKING:
    import torch

    # (latents of one image, model family) -> a small PNG, or None for an unknown latent space
    Preview = Callable[[torch.Tensor, str], bytes | None]


@dataclass(frozen=True)
class ProgressSettings:
    """How a worker reports its pipeline calls (from settings): at most `rate` progress events a
    second per job, and a preview every `preview_every` steps (0: none)."""

    rate: float = 4.0
    preview_every: int = 5


@dataclass(frozen=True)
class StepWatch:
    """The worker's side of one batch, called from the pipeline thread: where reports go (on the
    worker's loop) and what stops the call."""

    loop: asyncio.AbstractEventLoop
    publish: Callable[[Event], None]
    cancelled: Callable[[str], bool]
    interrupted: Callable[[], bool]


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
    each phase) without waiting for the broker, a preview every `preview_every` steps (one that
    falls due between two reports rides on the next, so the throttle never starves it), and stops
    the call when every job in it was cancelled. A job cancelled while sharing a call with others
    gets no more progress; its images are dropped when the call ends (whoever cancelled it
    announced job.cancelled).
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
        preview: Preview,
        cancelled: Callable[[str], bool],
        interrupted: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.loop = loop
        self.publish = publish
        self.slots = slots
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.preview_every = preview_every
        self.family = family
        self.preview = preview
        self.cancelled = cancelled
        self.interrupted = interrupted
        self.clock = clock
        self.dropped: set[str] = set()
        self._last = float("-inf")
        self._preview_due = False

    @classmethod
    def for_call(cls, slots: list[Slot], *, watch: StepWatch, settings: ProgressSettings, family: str,
                 preview: Preview) -> ProgressReporter:
        return cls(
            loop=watch.loop, publish=watch.publish, slots=slots, rate=settings.rate,
            preview_every=settings.preview_every, family=family, preview=preview,
            cancelled=watch.cancelled, interrupted=watch.interrupted,
        )

    def _send(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.publish, event)

    def __call__(self, step: int, total: int, latents: torch.Tensor, phase: str) -> bool:
        if self.interrupted():  # the worker is shutting down: this step is done, stop here
            return True
        for slot in self.slots:
            if slot.job_id not in self.dropped and self.cancelled(slot.job_id):
                self.dropped.add(slot.job_id)  # its cancel already announced it; no more progress
        if len(self.dropped) == len(self.slots):
            return True
        if self.preview_every > 0 and (step % self.preview_every == 0 or step == total):
            self._preview_due = True
        now = self.clock()
        if step in (1, total) or now - self._last >= self.interval:
            self._last = now
            with_preview, self._preview_due = self._preview_due, False
            for slot in self.slots:
                if slot.job_id in self.dropped:
                    continue
                preview = self.preview(latents[slot.offset : slot.offset + 1], self.family) if with_preview else None
                self._send(JobProgressed(
                    job_id=slot.job_id, phase=phase, step=step, total_steps=total, attempt=slot.attempt,
                    image_index=slot.first_image, total_images=slot.total_images, preview=preview,
                ))
        return False
