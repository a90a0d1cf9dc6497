"""The overlapped worker with plain fakes: the next batch generates while the last one finishes,
the hand-off is bounded, fencing and cancellation still decide what is published, and the
batcher waits to fill a call only while jobs are arriving."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.events import GenerateImages, ImageGenerated, JobCancelled, JobCancelRequested, JobRequeued, JobStarted
from schemas.jobs import GenerationSettings, JobSpec
from services.generator.batcher import Batcher
from services.generator.handlers import follow_job, generate_images
from services.generator.render import RenderedImage
from services.generator.worker import Options, Worker
from tests.support import wait_for

SETTINGS = GenerationSettings(num_images=1, num_inference_steps=4, guidance_scale=7.5, width=64, height=64, seed=1)


def command(job: str, attempt: int = 1) -> GenerateImages:
    # The same prompt for all: only the job id tells them apart, so every job may share a call.
    return GenerateImages(job_id=job, spec=JobSpec(prompt="a fox", model="tiny-sd", settings=SETTINGS), attempt=attempt,
                          created_at=datetime(2026, 1, 1, tzinfo=UTC))


class Bus:
    def __init__(self) -> None:
        self.events: list = []
        self.sent: list[str] = []
        # When set: job.started's confirm waits for it (a slow broker).
        self.confirm: asyncio.Event | None = None

    async def publish(self, event) -> None:
        self.events.append(event)
        if isinstance(event, JobStarted) and self.confirm is not None:
            await self.confirm.wait()

    def publish_soon(self, event) -> None:
        self.events.append(event)

    async def send(self, command) -> None:
        self.sent.append(command.job_id)


@dataclass
class Model:
    class entry:  # what the worker reads of a loaded model's catalog entry
        id = "tiny-sd"


class Catalog:
    def model(self, name):
        return Model.entry


class Cache:
    def get(self, entry):
        return Model()


@dataclass
class Rendered:
    jobs: list[str]
    dropped: set[str] = field(default_factory=set)


class Render:
    """Records the order of pipeline calls and finishes; each finish waits for its gate."""

    def __init__(self, drop: set[str] = frozenset()) -> None:
        self.log: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.drop = drop

    def gate(self, job: str) -> threading.Event:
        return self.gates.setdefault(job, threading.Event())

    def __call__(self, model, commands, watch) -> Rendered:
        jobs = [c.job_id for c in commands]
        self.log.append("generate " + ",".join(jobs))
        return Rendered(jobs, {j for j in jobs if j in self.drop})

    def finish(self, commands, rendered, skip):
        jobs = ",".join(rendered.jobs)
        self.gate(rendered.jobs[0]).wait(10)
        self.log.append("finish " + jobs)
        return [[] if skip(c.job_id) else [RenderedImage(b"\x89PNG", 64, 64, 1)] for c in commands]


def worker(render: Render, **options) -> Worker:
    return Worker(bus=Bus(), catalog=Catalog(), cache=Cache(), render=render, worker_id="w1",
                  options=Options(max_batch=1, **options))


async def until(condition, timeout: float = 5.0) -> None:
    await wait_for(condition, timeout, interval=0.005)


def generated(w: Worker) -> list[tuple[str, int]]:
    return [(e.job_id, e.attempt) for e in w.bus.events if isinstance(e, ImageGenerated)]


def test_the_next_batch_generates_while_the_last_one_finishes_and_the_hand_off_is_bounded():
    async def scenario():
        render = Render()
        w = worker(render)
        running = asyncio.create_task(w.batcher.run())
        jobs = [asyncio.create_task(w.batcher.submit(command(f"j{n}"))) for n in range(3)]
        # j0 finishes slowly: j1 generates meanwhile, but j2 waits for j0's hand-off to clear.
        await until(lambda: "generate j1" in render.log)
        await asyncio.sleep(0.05)
        assert render.log == ["generate j0", "generate j1"], "one batch finishing, one generated: no more"
        assert set(w.held) == {"j0", "j1"}, "heartbeats speak for the finishing batch too"
        render.gate("j0").set()
        await until(lambda: "generate j2" in render.log)
        render.gate("j1").set()
        render.gate("j2").set()
        await asyncio.gather(*jobs)
        assert generated(w) == [("j0", 1), ("j1", 1), ("j2", 1)]
        assert not w.held and not w.batcher.busy
        running.cancel()

    asyncio.run(scenario())


def test_without_overlap_each_batch_ends_before_the_next_starts():
    async def scenario():
        render = Render()
        for job in ("j0", "j1"):
            render.gate(job).set()
        w = worker(render, overlap=False)
        running = asyncio.create_task(w.batcher.run())
        await asyncio.gather(*(w.batcher.submit(command(f"j{n}")) for n in range(2)))
        assert render.log == ["generate j0", "finish j0", "generate j1", "finish j1"]
        running.cancel()

    asyncio.run(scenario())


def test_an_attempt_superseded_while_its_batch_finishes_publishes_nothing():
    async def scenario():
        render = Render()
        w = worker(render)
        running = asyncio.create_task(w.batcher.run())
        job = asyncio.create_task(w.batcher.submit(command("j0")))
        await until(lambda: "generate j0" in render.log)
        # The reaper gave up on this worker meanwhile and requeued the job as attempt 2.
        await follow_job(JobRequeued(job_id="j0", attempt=2, reason="stalled"), worker=w)
        render.gate("j0").set()
        await job
        assert generated(w) == [], "a zombie's images are dropped"
        assert [e.attempt for e in w.bus.events if isinstance(e, JobStarted)] == [1]
        running.cancel()

    asyncio.run(scenario())


def test_a_job_cancelled_while_its_batch_finishes_publishes_nothing_and_its_batch_mate_does():
    async def scenario():
        render = Render()
        w = Worker(bus=Bus(), catalog=Catalog(), cache=Cache(), render=render, worker_id="w1", options=Options(max_batch=4))
        running = asyncio.create_task(w.batcher.run())
        jobs = asyncio.gather(*(w.batcher.submit(command(j)) for j in ("a", "b")))
        await until(lambda: "generate a,b" in render.log)
        # Its pipeline call is over (every step ran): the cancel lands while the images are made.
        await follow_job(JobCancelRequested(job_id="b"), worker=w)
        await follow_job(JobCancelled(job_id="b", reason="cancelled while generating"), worker=w)
        render.gate("a").set()
        await jobs
        assert generated(w) == [("a", 1)], "the cancel announced b's end: none of its images is published"
        running.cancel()

    asyncio.run(scenario())


def test_a_job_cancelled_after_its_images_were_encoded_publishes_nothing():
    async def scenario():
        render = Render()
        w = worker(render)
        w.bus.confirm = asyncio.Event()
        running = asyncio.create_task(w.batcher.run())
        job = asyncio.create_task(w.batcher.submit(command("j0")))
        await until(lambda: "generate j0" in render.log)
        render.gate("j0").set()
        await until(lambda: "finish j0" in render.log)
        # Encoded, not published yet (publishing waits for job.started's confirm): cancelled now.
        await follow_job(JobCancelRequested(job_id="j0"), worker=w)
        w.bus.confirm.set()
        await job
        assert generated(w) == []
        running.cancel()

    asyncio.run(scenario())


def test_a_suspect_never_overlaps_another_batch():
    """A job back from a crash runs with nothing else of this worker at risk: the batch finishing
    ends (acked) before it generates, the jobs waiting go back to the queue, and the next batch
    generates only once it ended."""
    async def scenario():
        render = Render()
        w = worker(render)
        running = asyncio.create_task(w.batcher.run())
        first = asyncio.create_task(w.batcher.submit(command("j0")))
        await until(lambda: "generate j0" in render.log)
        suspect = asyncio.create_task(w.batcher.submit(command("s", attempt=2)))
        after = asyncio.create_task(w.batcher.submit(command("j1")))
        await asyncio.sleep(0.05)
        assert render.log == ["generate j0"], "the suspect waits for j0 to finish"
        render.gate("j0").set()
        await first
        await until(lambda: "generate s" in render.log)
        await asyncio.sleep(0.05)
        assert render.log == ["generate j0", "finish j0", "generate s"], "nothing generates beside the suspect"
        assert w.bus.sent == ["j1"], "handed back as a fresh message"
        render.gate("s").set()
        await asyncio.gather(suspect, after)
        after_suspect = asyncio.create_task(w.batcher.submit(command("j2")))
        await until(lambda: "generate j2" in render.log)
        assert render.log[:4] == ["generate j0", "finish j0", "generate s", "finish s"]
        render.gate("j2").set()
        await after_suspect
        running.cancel()

    asyncio.run(scenario())


def test_among_suspects_the_one_delivered_most_often_runs_first_and_the_others_go_back():
    """Innocent suspects (held by a worker the poison killed) may arrive ahead of the poison; if
    one ran first it would hand the poison back as a fresh message and reset its delivery count."""
    async def scenario():
        render = Render()
        for job in ("innocent", "poison", "fresh"):
            render.gate(job).set()
        w = worker(render)
        waiting = [
            asyncio.create_task(w.batcher.submit(command("innocent", attempt=2), deliveries=1)),
            asyncio.create_task(w.batcher.submit(command("poison", attempt=4), deliveries=3)),
            asyncio.create_task(w.batcher.submit(command("fresh"))),
        ]
        await asyncio.sleep(0)
        running = asyncio.create_task(w.batcher.run())
        await asyncio.gather(*waiting)
        assert render.log == ["generate poison", "finish poison"]
        assert w.bus.sent == ["innocent", "fresh"], "the others go back to the queue before it runs"
        running.cancel()

    asyncio.run(scenario())


def test_a_job_cancelled_in_a_shared_call_is_dropped_and_its_batch_mates_published():
    async def scenario():
        render = Render(drop={"b"})
        render.gate("a").set()
        w = Worker(bus=Bus(), catalog=Catalog(), cache=Cache(), render=render, worker_id="w1", options=Options(max_batch=4))
        await follow_job(JobCancelRequested(job_id="queued"), worker=w)
        running = asyncio.create_task(w.batcher.run())
        await asyncio.gather(*(w.batcher.submit(command(j)) for j in ("a", "b", "queued")))
        assert generated(w) == [("a", 1)]
        running.cancel()

    asyncio.run(scenario())


def test_the_batcher_waits_to_fill_a_call_only_while_jobs_are_arriving():
    async def scenario():
        taken: list[list[str]] = []

        async def run_batch(batch):
            taken.append([w.command.job_id for w in batch])
            return None

        batcher = Batcher(run_batch, capacity=4, overlap=True, fill_wait=0.2)
        running = asyncio.create_task(batcher.run())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.submit(command("lone"))
        assert loop.time() - started < 0.15, "a lone job on an idle worker does not wait"
        # Two jobs at once, two more a moment later: one call for all four.
        burst = [asyncio.create_task(batcher.submit(command(f"b{n}"))) for n in range(2)]
        await asyncio.sleep(0.03)
        burst += [asyncio.create_task(batcher.submit(command(f"b{n}"))) for n in range(2, 4)]
        await asyncio.gather(*burst)
        assert taken == [["lone"], ["b0", "b1", "b2", "b3"]]
        running.cancel()

    asyncio.run(scenario())


def test_two_attempts_of_one_job_held_together_only_the_newest_is_published():
    """A lost worker's messages come back together: its attempt 1 (renumbered 2) and the attempt 2
    the reaper requeued into its prefetch (renumbered 3). The newer one alone may end the job."""
    async def scenario():
        render = Render()
        w = worker(render, overlap=True)
        running = asyncio.create_task(w.batcher.run())
        older = asyncio.create_task(generate_images(command("j0", 1), deliveries=1, worker=w))
        await until(lambda: "generate j0" in render.log)
        newer = asyncio.create_task(generate_images(command("j0", 2), deliveries=1, worker=w))
        await until(lambda: w.batcher._waiting)
        render.gate("j0").set()
        await asyncio.gather(older, newer)
        assert generated(w) == [("j0", 3)], "attempt 2 became a zombie when attempt 3 arrived"
        running.cancel()

    asyncio.run(scenario())


def test_a_redelivered_copy_of_a_job_this_worker_already_generated_is_dropped():
    async def scenario():
        render = Render()
        render.gate("j0").set()
        w = worker(render, overlap=True)
        running = asyncio.create_task(w.batcher.run())
        await generate_images(command("j0", 1), deliveries=1, worker=w)
        # Its job.completed has not come back yet when another copy arrives.
        await generate_images(command("j0", 2), deliveries=1, worker=w)
        assert generated(w) == [("j0", 2)]
        assert render.log == ["generate j0", "finish j0"], "the copy never ran"
        running.cancel()

    asyncio.run(scenario())
