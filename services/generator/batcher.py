"""Dynamic batching: queued jobs that can share a pipeline call are generated together.

Every consumed GenerateImages command waits here on a future until its job's outcome is
published; one loop takes the oldest waiting job and adds compatible ones (same batch key) while
their images fit the call's capacity. Each job keeps its own seeds and is reported and saved as
its own job. Nothing waits for more jobs to arrive: only what is already queued is batched.
"""

from __future__ import annotations

import asyncio
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

    @property
    def images(self) -> int:
        return self.command.spec.settings.num_images

    def shareable(self, capacity: int) -> bool:
        # A job that asked for fewer images per call (A1111 batch_size) runs on its own, and so
        # does a retried one: if it is what broke its last call, it breaks nobody else's.
        settings = self.command.spec.settings
        return self.command.attempt == 1 and settings.num_images <= min(capacity, settings.batch_size)


class Batcher:
    def __init__(self, run_batch: Callable[[list[Waiting]], Awaitable[None]], capacity: int):
        self.run_batch = run_batch
        self.capacity = max(1, capacity)
        self._waiting: list[Waiting] = []
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def drain(self) -> list[Waiting]:
        """Stop taking batches and hand back every job not started yet."""
        self._closed = True
        return self.take_others()

    def take_others(self) -> list[Waiting]:
        """Every job waiting now (not started), out of the queue."""
        waiting, self._waiting = self._waiting, []
        return waiting

    async def idle(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for the running batch to end."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass

    async def submit(self, command: GenerateImages) -> None:
        """Queue a job and return once its outcome is published (raises what its batch raised)."""
        waiting = Waiting(command)
        self._waiting.append(waiting)
        self._arrived.set()
        await waiting.done

    def take_batch(self) -> list[Waiting]:
        """The oldest waiting job plus compatible ones that fit its call."""
        first = self._waiting.pop(0)
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

    async def run(self) -> None:
        """Forever: take a batch, run it, settle every job's future (whatever happens)."""
        while not self._closed:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            if self._closed:
                break
            batch = self.take_batch()
            self._idle.clear()
            try:
                await self.run_batch(batch)
            except Exception as exc:  # noqa: BLE001 - each job's consumer decides: requeue or park
                for waiting in batch:
                    if not waiting.done.done():
                        waiting.done.set_exception(exc)
            finally:
                self._idle.set()
                for waiting in batch:  # a job left unsettled would hold its message forever
                    if not waiting.done.done():
                        waiting.done.set_result(None)
