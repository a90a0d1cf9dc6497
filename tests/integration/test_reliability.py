"""Nothing lost, nothing stuck: the reaper, retries, parked messages, shutdown, fencing, storage
errors, all against the real broker, real files and the real tiny model."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime

import msgspec
from litestar.testing import AsyncTestClient

from ops import deadletters
from schemas.events import (
    GenerateImages,
    ImageGenerated,
    ImageSaved,
    JobAccepted,
    JobCompleted,
    JobFailed,
    JobRequeued,
    JobStalled,
    JobStarted,
    WorkerHeartbeat,
)
from schemas.jobs import GenerationSettings, JobDocument, JobSpec
from schemas.layout import DataLayout
from services.generator.main import main as generator_main
from services.ingress.app import create_app
from services.reaper.main import main as reaper_main
from services.saver.main import main as saver_main
from tests.integration.test_stages import generated, take_command
from tests.support import generator_queue, made_model_queue, running, wait_for

JOB = "7a1c9e2b-4d3f-4e8a-9b6c-1f2e3d4c5b6a"
OTHER = "8b2d0f3c-5e4a-4f9b-8c7d-2a3b4c5d6e7f"
SETTINGS = GenerationSettings(num_images=1, num_inference_steps=4, guidance_scale=7.5, width=64, height=64, seed=3, batch_size=1)
SPEC = JobSpec(prompt="a red fox", model="tiny-sd", settings=SETTINGS)
CREATED = datetime(2026, 3, 20, 10, 30, tzinfo=UTC)


def write_doc(settings, job_id: str, status: str = "processing", attempts: int = 1, spec: JobSpec = SPEC) -> None:
    layout = DataLayout(settings.data_dir)
    layout.ensure()
    doc = JobDocument.new(job_id, spec, CREATED)
    doc.status, doc.attempts = status, attempts
    layout.job(job_id).write_bytes(msgspec.json.encode(doc))
    queue = layout.queue_file
    ids = queue.read_text().split() if queue.exists() else []
    queue.write_text("".join(f"{i}\n" for i in dict.fromkeys([*ids, job_id])))


async def stand_in_generator(bus) -> asyncio.Queue:
    """A consumer on the generator queue and the model's that only collects commands: the reaper
    sweeps only while some generator listens (else nobody could run a requeued job)."""
    from services.bus import command_decoder

    inbox: asyncio.Queue = asyncio.Queue()
    channel = await bus.connection.channel()

    async def collect(message) -> None:
        await inbox.put(command_decoder.decode(message.body))

    for queue in (await channel.get_queue(bus.topology.queue("generator"), ensure=False),
                  await generator_queue(bus, channel)):
        await queue.consume(collect, no_ack=True)
    return inbox


def fast(settings, **changes):
    return msgspec.structs.replace(settings, stall_timeout=1.0, heartbeat_interval=0.2, **changes)


async def test_a_silent_job_is_requeued_then_failed_after_its_last_attempt(settings, bus, tap):
    quick = fast(settings)
    write_doc(quick, JOB)
    async with running(reaper_main, quick, "reaper", bus):
        await bus.publish(JobAccepted(job_id=JOB, spec=SPEC))
        commands = await stand_in_generator(bus)
        for attempt in (1, 2, 3):
            write_doc(quick, JOB, attempts=attempt)
            await bus.publish(JobStarted(job_id=JOB, worker="w-hung", attempt=attempt))
            if attempt < 3:
                [*_, requeued] = await tap.wait(JobRequeued, JOB, count=attempt)
                assert requeued.attempt == attempt + 1 and requeued.reason.startswith("stalled: worker w-hung was silent")
                command = await asyncio.wait_for(commands.get(), 10)
                assert (command.job_id, command.attempt, command.spec.prompt) == (JOB, attempt + 1, "a red fox")
                assert command.created_at == CREATED
        [failed] = await tap.wait(JobFailed, JOB)
    assert failed.attempt == 3 and failed.reason.startswith("stalled on all 3 attempts; last time worker w-hung was silent")
    assert [e.attempt for e in tap.of(JobStalled, JOB)] == [1, 2, 3]


async def test_a_job_with_heartbeats_is_left_alone(settings, bus, tap):
    quick = fast(settings)
    write_doc(quick, JOB)
    async with running(reaper_main, quick, "reaper", bus):
        await bus.publish(JobStarted(job_id=JOB, worker="w1"))
        for _ in range(12):
            await bus.publish(WorkerHeartbeat(job_id=JOB, worker="w1"))
            await asyncio.sleep(0.25)
    assert not tap.of(JobStalled, JOB)


async def test_reset_stalled_resets_only_the_silent_jobs(settings, bus, tap):
    """The ingress's domain command asks the reaper over the broker (the HTTP route is covered e2e:
    Litestar's test client would block this test's loop, where the reaper runs)."""
    from services.ingress.auth import Principal
    from services.ingress.domain.links import BusLink
    from services.ingress.domain.queue import reset_stalled

    write_doc(settings, JOB)
    write_doc(settings, OTHER)
    link, admin = BusLink(bus), Principal(key=None, ip="127.0.0.1")
    async with running(reaper_main, settings, "reaper", bus):  # stall timeout 30 s: no sweep on its own
        await stand_in_generator(bus)
        await bus.publish(JobStarted(job_id=JOB, worker="w-silent"))
        await bus.publish(JobStarted(job_id=OTHER, worker="w-busy"))
        for _ in range(8):
            await bus.publish(WorkerHeartbeat(job_id=OTHER, worker="w-busy"))
            await asyncio.sleep(0.25)
        assert (await reset_stalled(None, admin, bus=link)).reset_count == 0, "nothing silent for 30 s"
        result = await reset_stalled(1.0, admin, bus=link)
    assert (result.reset_count, result.failed_count, result.job_ids) == (1, 0, [JOB])
    assert [e.job_id for e in tap.of(JobRequeued)] == [JOB]


async def test_reset_stalled_without_a_reaper_is_a_clear_503(settings, bus):
    async with AsyncTestClient(app=create_app(settings)) as client:
        await wait_for(lambda: client.app.state.bus.connected)
        answer = await client.post("/v1/queue/reset-stalled")
    assert answer.status_code == 503 and "the reaper did not answer" in answer.json()["message"]


async def die_holding(bus, times: int) -> None:
    """Take the generator's next command and die without acking, `times` times (a crash loop)."""
    for _ in range(times):
        channel = await bus.connection.channel()
        queue = await generator_queue(bus, channel)
        message = None
        for _ in range(100):
            if (message := await queue.get(no_ack=False, fail=False)) is not None:
                break
            await asyncio.sleep(0.05)
        assert message is not None
        await channel.close()


async def test_a_command_that_keeps_killing_its_worker_is_parked_and_its_job_failed(settings, bus, tap):
    await made_model_queue(bus)
    write_doc(settings, JOB, status="pending", attempts=0)
    async with running(reaper_main, settings, "reaper", bus):
        await bus.send(GenerateImages(job_id=JOB, spec=SPEC, created_at=CREATED))
        await die_holding(bus, 4)  # one delivery and three redeliveries: then the broker parks it
        [failed] = await tap.wait(JobFailed, JOB)
    assert "parked in the dead-letter queue (delivery_limit)" in failed.reason
    [parked] = await deadletters.list_parked(settings.amqp_url, bus.topology)
    assert (parked.kind, parked.job_id, parked.queue) == ("generate_images", JOB, bus.topology.model_queue("tiny-sd"))
    assert parked.reason.startswith("broker: delivery_limit")

    # An operator fixed the cause: replay brings the job back as a new attempt.
    [replayed] = await deadletters.replay(settings.amqp_url, bus.topology, {parked.message_id})
    assert replayed.job_id == JOB
    [revived] = await tap.wait(JobRequeued, JOB)
    assert (revived.attempt, revived.replay) == (2, True)
    command = await take_command(bus)
    assert (command.job_id, command.attempt) == (JOB, 2)
    assert await deadletters.list_parked(settings.amqp_url, bus.topology) == []


async def test_a_pipeline_error_is_retried_alone_then_fails_and_is_parked(with_tiny_model, bus, tap, monkeypatch):
    monkeypatch.setenv("DARKROOM_FAULT_INJECTION", "raise-on-prompt:BOOM")
    poison = GenerateImages(job_id=JOB, created_at=CREATED, spec=msgspec.structs.replace(SPEC, prompt="BOOM goes the pipeline"))
    async with running(generator_main, with_tiny_model, "generator", bus):
        await bus.send(poison)
        await bus.send(GenerateImages(job_id=OTHER, spec=SPEC, created_at=CREATED))
        [failed] = await tap.wait(JobFailed, JOB)
        await tap.wait(ImageGenerated, OTHER)
    assert [e.attempt for e in tap.of(JobRequeued, JOB)] == [2, 3]
    assert failed.reason == "generation failed: RuntimeError: injected fault for prompt containing 'BOOM'"
    assert {e.batch_jobs for e in tap.of(JobStarted, JOB) if e.attempt > 1} == {1}, "retries run alone"
    [parked] = await deadletters.list_parked(with_tiny_model.amqp_url, bus.topology)
    assert parked.job_id == JOB and "RuntimeError: injected fault" in parked.reason
    assert not tap.of(ImageGenerated, JOB)


async def test_sigterm_hands_unfinished_work_back_without_spending_an_attempt(with_tiny_model, bus, tap):
    await made_model_queue(bus)
    settings = msgspec.structs.replace(with_tiny_model, shutdown_grace=0.5, max_batch=1)
    stop = asyncio.Event()
    task = asyncio.create_task(generator_main(settings, stop))
    await wait_for(lambda: True)
    long = GenerateImages(job_id=JOB, created_at=CREATED, spec=msgspec.structs.replace(
        SPEC, settings=msgspec.structs.replace(SETTINGS, width=256, height=256, num_inference_steps=50)))
    await bus.send(long)
    await bus.send(GenerateImages(job_id=OTHER, spec=SPEC, created_at=CREATED))
    await tap.wait(JobStarted, JOB)
    stop.set()
    await asyncio.wait_for(task, 30)
    requeued = {e.job_id: e for e in tap.of(JobRequeued)}
    assert requeued[JOB].attempt == 1 and requeued[JOB].reason == "its worker shut down mid-generation"
    assert requeued[OTHER].attempt == 1 and requeued[OTHER].reason == "its worker shut down before starting it"
    assert not tap.of(ImageGenerated)
    back = {(c.job_id, c.attempt) for c in [await take_command(bus), await take_command(bus)]}
    assert back == {(JOB, 1), (OTHER, 1)}


async def test_a_generator_drops_zombie_and_duplicate_attempts(with_tiny_model, bus, tap):
    async with running(generator_main, with_tiny_model, "generator", bus):
        await bus.publish(JobStarted(job_id=JOB, worker="another-worker", attempt=2))
        await tap.wait(JobStarted, JOB)
        await bus.send(GenerateImages(job_id=JOB, spec=SPEC, created_at=CREATED, attempt=1))  # zombie
        await bus.send(GenerateImages(job_id=JOB, spec=SPEC, created_at=CREATED, attempt=2))  # duplicate
        await bus.send(GenerateImages(job_id=JOB, spec=SPEC, created_at=CREATED, attempt=3))  # newer: runs
        [image] = await tap.wait(ImageGenerated, JOB)
    assert image.attempt == 3
    assert [e.attempt for e in tap.of(JobStarted, JOB)] == [2, 3]


async def test_the_saver_ignores_results_of_a_superseded_attempt(settings, bus, tap):
    job = "0c907066-985e-467b-8d11-07419060ef91"
    write_doc(settings, job, attempts=2)
    async with running(saver_main, settings, "saver", bus):
        await bus.publish(generated(1, total=1, job=job, attempt=1))
        await bus.publish(generated(1, total=1, job=job, attempt=2))
        [saved] = await tap.wait(ImageSaved, job)
        await tap.wait(JobCompleted, job)
    assert saved.image.id == f"{job}_1" and len(tap.of(ImageSaved, job)) == 1
    assert tap.of(JobCompleted, job)[0].attempt == 2


async def test_an_unwritable_image_folder_fails_the_job_and_the_saver_carries_on(settings, bus, tap):
    layout = DataLayout(settings.data_dir)
    day = layout.images_dir / "2026" / "03"
    day.mkdir(parents=True)
    (day / "20").write_text("a file where a folder must be")  # unwritable even for root
    async with running(saver_main, settings, "saver", bus) as task:
        await bus.publish(generated(1, total=1, job=JOB))
        [failed] = await tap.wait(JobFailed, JOB)
        (day / "20").unlink()
        await bus.publish(generated(1, total=1, job=OTHER))
        await tap.wait(JobCompleted, OTHER)
        assert not task.done()
    assert failed.reason.startswith("saving image 1 failed: [Errno 17] File exists")


async def test_an_unwritable_data_dir_is_a_503_and_nothing_is_left_behind(settings, bus):
    layout = DataLayout(settings.data_dir)
    async with AsyncTestClient(app=create_app(settings)) as client:
        await wait_for(lambda: client.app.state.bus.connected)
        shutil.rmtree(layout.jobs_dir)
        layout.jobs_dir.write_text("not a folder")
        answer = await client.post("/v1/jobs", json={"prompt": "x"})
        assert answer.status_code == 503, answer.text
        assert answer.json()["message"].startswith("cannot write to the data directory")
        layout.jobs_dir.unlink()
        layout.jobs_dir.mkdir()
        assert (await client.post("/v1/jobs", json={"prompt": "x"})).status_code == 202


async def test_idempotency_key_returns_the_same_job(settings, bus, tap):
    async with AsyncTestClient(app=create_app(settings)) as client:
        await wait_for(lambda: client.app.state.bus.connected)
        headers = {"Idempotency-Key": "order-42"}
        first = await client.post("/v1/jobs", json={"prompt": "a fox"}, headers=headers)
        again = await client.post("/v1/jobs", json={"prompt": "a fox"}, headers=headers)
        other = await client.post("/v1/jobs", json={"prompt": "a cat"}, headers=headers)
        fresh = await client.post("/v1/jobs", json={"prompt": "a fox"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert other.status_code == 409 and "different request body" in other.json()["message"]
    assert fresh.json()["id"] != first.json()["id"]
    await tap.wait(JobAccepted, count=2)
    await asyncio.sleep(0.3)
    assert len(tap.of(JobAccepted)) == 2, "the retry made no second job"


async def test_a_key_whose_submit_failed_is_free_again_and_nothing_half_accepted(data_dir):
    from ops.broker import free_port
    from schemas.settings import Settings

    settings = Settings(data_dir=str(data_dir), amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/", auth="off")
    async with AsyncTestClient(app=create_app(settings)) as client:
        answer = await client.post("/v1/jobs", json={"prompt": "x"}, headers={"Idempotency-Key": "k1"})
        assert answer.status_code == 503
    layout = DataLayout(str(data_dir))
    assert not any(layout.jobs_dir.glob("*.json")), "no document"
    assert not any(layout.staging_dir.iterdir()), "not even a staged one"
    assert not any((layout.state_dir / "idempotency").glob("*")), "the key was released"
