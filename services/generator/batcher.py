"""Dynamic batching: queued jobs that can share a pipeline call are generated together.

Every consumed GenerateImages command waits here on a future until its job's outcome is
published; one loop takes the oldest waiting job and adds compatible ones (same batch key) while
their images fit the call's capacity. Each job keeps its own seeds and is reported and saved as
its own job.

A batch's pipeline calls run first; `run_batch` then returns the rest of its work (decode, PNGs,
publishing). With `overlap` that rest runs as a task while the next batch generates, one batch
finishing at a time (memory stays flat); without, it runs before the next batch starts.

A suspect (a job back from a crash, `attempt` > 1) never overlaps anything: the batch finishing
ends before it starts and it ends before the next one starts. A worker that dies while a suspect
runs then holds only the suspect's message, so the broker charges that delivery to it alone
(quorum queues count every return against `x-delivery-limit`, held or running), and the jobs it
killed come back in the order the worker took them, the suspect first. Among suspects waiting,
the one the broker delivered most often runs first (`_next`).

A lone job on an idle worker never waits. While jobs are arriving (another arrived within
`fill_wait` seconds, or a batch is still finishing) a call that is not full waits up to
`fill_wait` for compatible jobs to fill it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from schemas.events import GenerateImages


def batch_key(command: GenerateImages) -> tuple:
    """What must be equal for two jobs to share one pipeline call."""
    spec, settings = command.spec, command.spec.settings
    return (
        spec.model, spec.mode, settings.width, settings.height, settings.num_inference_steps,
        settings.guidance_scale, settings.sampler, settings.strength, settings.hires, spec.loras,
    )


@dataclass
class Waiting:
    command: GenerateImages
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    # How often the broker delivered this message before (what its x-delivery-limit counts).
    deliveries: int = 0

    @property
    def images(self) -> int:
        return self.command.spec.settings.num_images

    def shareable(self, capacity: int) -> bool:
        # A job that asked for fewer images per call (A1111 batch_size) runs on its own, and so
        # does a retried one: if it is what broke its last call, it breaks nobody else's.
        settings = self.command.spec.settings
        return not self.suspect and settings.num_images <= min(capacity, settings.batch_size)

    @property
    def suspect(self) -> bool:
        """Back from a crash or an error: it may be what broke its last attempt."""
        return self.command.attempt > 1


# Runs a batch's pipeline calls; returns the rest of its work (or None when nothing is left).
RunBatch = Callable[[list["Waiting"]], Awaitable[Awaitable[None] | None]]


class Batcher:
    def __init__(self, run_batch: RunBatch, capacity: int, *, overlap: bool = False, fill_wait: float = 0.0):
        self.run_batch = run_batch
        self.capacity = max(1, capacity)
        self.overlap = overlap
        self.fill_wait = fill_wait
        self._waiting: list[Waiting] = []
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._active = 0  # batches generating or finishing
        self._finishing: asyncio.Task | None = None
        # When the two latest jobs arrived: two close together mean jobs are streaming in.
        self._arrivals = (float("-inf"), float("-inf"))

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    @property
    def empty(self) -> bool:
        """Nothing waiting, generating or finishing: the worker's queues had nothing more for it."""
        return not self._waiting and not self.busy

    def drain(self) -> list[Waiting]:
        """Stop taking batches and hand back every job not started yet."""
        self._closed = True
        self._arrived.set()
        return self.take_others()

    def take_others(self) -> list[Waiting]:
        """Every job waiting now (not started), out of the queue."""
        waiting, self._waiting = self._waiting, []
        return waiting

    async def idle(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for the batches generating or finishing to end."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass

    async def submit(self, command: GenerateImages, deliveries: int = 0) -> None:
        """Queue a job and return once its outcome is published (raises what its batch raised)."""
        waiting = Waiting(command, deliveries=deliveries)
        self._waiting.append(waiting)
        self._arrivals = (self._arrivals[1], time.monotonic())
        self._arrived.set()
        await waiting.done

    def take_batch(self) -> list[Waiting]:
        """The oldest waiting job plus compatible ones that fit its call; when the oldest is a
        suspect, the suspect the broker delivered most often instead (it runs alone)."""
        first = self._waiting.pop(self._next())
        batch = [first]
        if first.shareable(self.capacity):
            key, room = batch_key(first.command), self.capacity - first.images
            for other in list(self._waiting):
                if room <= 0:
                    break
                if other.images <= room and other.shareable(self.capacity) and batch_key(other.command) == key:
                    batch.append(other)
                    self._waiting.remove(other)
                    room -= other.images
        return batch

    def _next(self) -> int:
        """Which waiting job opens the next call. Among suspects, the one delivered most often
        goes first: it is the likeliest to be what kills workers (every worker it killed charged
        it a delivery), and the suspect that runs hands the jobs waiting back to the queue as
        fresh messages, which would reset its count and let it kill more than four times."""
        if not self._waiting[0].suspect:
            return 0
        most = max(w.deliveries for w in self._waiting if w.suspect)
        return next(i for i, w in enumerate(self._waiting) if w.suspect and w.deliveries == most)

    def _room_left(self, first: Waiting) -> int:
        """Images the call `first` opens could still take from jobs not waiting yet."""
        key, room = batch_key(first.command), self.capacity - first.images
        for other in self._waiting[1:]:
            if other.shareable(self.capacity) and batch_key(other.command) == key and other.images <= room:
                room -= other.images
        return room

    async def _fill(self) -> None:
        """While jobs are arriving, wait (at most `fill_wait`) for compatible ones to fill the call."""
        first = self._waiting[0]
        if self.fill_wait <= 0 or not first.shareable(self.capacity):
            return
        streaming = self._still_finishing or time.monotonic() - self._arrivals[0] < self.fill_wait
        if not streaming:
            return
        deadline = time.monotonic() + self.fill_wait
        while self._room_left(first) > 0 and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    async def run(self) -> None:
        """Forever: take a batch, run its pipeline calls, then its rest (overlapped with the next
        batch's calls, or not); every job's future is settled whatever happens."""
        while not self._closed:
            while not self._waiting and not self._closed:
                self._arrived.clear()
                await self._arrived.wait()
            if self._closed:
                break
            if self._waiting[0].suspect and self._still_finishing:
                await self._finished()  # nothing else at risk while a suspect runs
                continue  # look again: the worker may be stopping
            await self._fill()
            if self._closed or not self._waiting:
                continue
            batch = self.take_batch()
            self._begin()
            try:
                rest = await self.run_batch(batch)
            except Exception as exc:  # noqa: BLE001 - each job's consumer decides: requeue or park
                self._settle(batch, exc)
                continue
            except BaseException:
                self._settle(batch, cancelled=True)
                raise
            if rest is None:
                self._settle(batch)
            elif self.overlap and not batch[0].suspect:
                try:
                    await self._finished()  # one batch finishing at a time
                except BaseException:
                    rest.close()
                    self._settle(batch, cancelled=True)
                    raise
                self._finishing = asyncio.create_task(self._finish(batch, rest))
            else:
                await self._finish(batch, rest)

    @property
    def _still_finishing(self) -> bool:
        return self._finishing is not None and not self._finishing.done()

    async def _finished(self) -> None:
        """Wait for the batch finishing (if any) to end."""
        if self._finishing is not None:
            await asyncio.shield(self._finishing)
            self._finishing = None

    async def _finish(self, batch: list[Waiting], rest: Awaitable[None]) -> None:
        try:
            await rest
        except Exception as exc:  # noqa: BLE001 - each job's consumer decides: requeue or park
            self._settle(batch, exc)
        except BaseException:
            self._settle(batch, cancelled=True)
            raise
        else:
            self._settle(batch)

    def _begin(self) -> None:
        self._active += 1
        self._idle.clear()

    def _settle(self, batch: list[Waiting], exc: Exception | None = None, *, cancelled: bool = False) -> None:
        """End a batch: every job's future is settled (a job left unsettled would hold its
        message forever). Cancelled (the process is stopping): its consumers are cancelled too,
        so their messages are neither acked nor parked; the broker has them back."""
        for waiting in batch:
            if waiting.done.done():
                continue
            if cancelled:
                waiting.done.cancel()
            elif exc is not None:
                waiting.done.set_exception(exc)
            else:
                waiting.done.set_result(None)
        self._active -= 1
        if self._active == 0:
            self._idle.set()
