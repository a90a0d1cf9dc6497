"""Each stage service against the real broker and real files: enricher, saver, recorder."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime

import msgspec
from PIL import Image

from schemas.events import (
    GenerateImages,
    ImageGenerated,
    ImageSaved,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobEnriched,
    JobFailed,
    JobProgressed,
    JobStarted,
)
from schemas.jobs import ImageMetadata, JobDocument
from schemas.layout import DataLayout, image_id
from services.bus import command_decoder
from services.enricher.main import main as enricher_main
from services.recorder.main import main as recorder_main
from services.saver.main import main as saver_main
from tests.integration.test_bus import dead_letters, publish_raw
from tests.support import generator_queue, made_model_queue, running, wait_for
from tests.unit.test_events import SETTINGS, SPEC

JOB = "5d7c1f0e-2a43-4b7e-9a0b-3f1e2d4c5b6a"


def png_bytes(colour=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def generated(number: int, total: int = 2, job: str = JOB, attempt: int = 1) -> ImageGenerated:
    return ImageGenerated(
        job_id=job, image_id=image_id(job, number), image_number=number, total_images=total,
        job_created_at=datetime(2026, 3, 20, 10, 30, tzinfo=UTC), attempt=attempt, worker="w1", width=64, height=64,
        png=png_bytes((number * 40, 0, 0)),
        metadata=ImageMetadata(job_id=job, model_id="tiny-sd", prompt="a red fox", settings=SETTINGS,
                               seed=6 + number, image_number=number, total_images=total),
    )


async def take_command(bus, timeout: float = 10.0) -> GenerateImages:
    """The next GenerateImages waiting for a generator (in its model's queue: affinity routing)."""
    channel = await bus.connection.channel()
    queue = await generator_queue(bus, channel)
    deadline = asyncio.get_running_loop().time() + timeout
    while (message := await queue.get(no_ack=True, fail=False)) is None:
        assert asyncio.get_running_loop().time() < deadline, "no GenerateImages command arrived"
        await asyncio.sleep(0.05)
    await channel.close()
    return command_decoder.decode(message.body)


async def test_enricher_applies_the_style_and_queues_generation(settings, bus, tap):
    await made_model_queue(bus)
    async with running(enricher_main, settings, "enricher", bus):
        await bus.publish(JobAccepted(job_id=JOB, spec=msgspec.structs.replace(SPEC, style="anime", negative_prompt="text")))
        [enriched] = await tap.wait(JobEnriched, JOB)
        command = await take_command(bus)
    assert enriched.original_prompt == "a red fox"
    assert enriched.prompt.startswith("a red fox, anime style")
    assert enriched.negative_prompt == "text, photorealistic, blurry, extra limbs"
    assert command.job_id == JOB and command.spec.prompt == enriched.prompt and command.attempt == 1


async def test_enricher_passes_the_prompt_through_without_a_style(settings, bus, tap):
    await made_model_queue(bus)
    async with running(enricher_main, settings, "enricher", bus):
        await bus.publish(JobAccepted(job_id=JOB, spec=SPEC))
        command = await take_command(bus)
    assert command.spec == SPEC


async def test_enricher_fails_a_job_it_cannot_enrich_and_survives_garbage(settings, bus, tap):
    async with running(enricher_main, settings, "enricher", bus) as task:
        await publish_raw(bus, "job.accepted", b'{"type": "job.accepted", "job_id": 3}')
        await bus.publish(JobAccepted(job_id=JOB, spec=msgspec.structs.replace(SPEC, style="vanished")))
        [failed] = await tap.wait(JobFailed, JOB)
        assert "unknown style 'vanished'" in failed.reason
        await bus.publish(JobAccepted(job_id="after", spec=SPEC))
        await tap.wait(JobEnriched, "after")
        assert not task.done()
    letters = await dead_letters(bus, 2)
    assert any(letter.headers["x-darkroom-reason"].startswith("undecodable") for letter in letters)


async def test_saver_writes_png_and_sidecar_then_completes_the_job(settings, bus, tap):
    layout = DataLayout(settings.data_dir)
    async with running(saver_main, settings, "saver", bus):
        await bus.publish(generated(1))
        [saved] = await tap.wait(ImageSaved, JOB)
        assert not tap.of(JobCompleted, JOB), "completed before the second image was saved"
        await bus.publish(generated(2))
        [completed] = await tap.wait(JobCompleted, JOB)
    assert completed.image_ids == [image_id(JOB, 1), image_id(JOB, 2)]
    assert [record.metadata.image_number for record in completed.images] == [1, 2]
    assert saved.image.file_path == f"2026/03/20/{JOB}_1.png"
    png = layout.image(saved.image.file_path)
    with Image.open(png) as image:
        assert image.size == (64, 64) and image.getpixel((0, 0)) == (40, 0, 0)
    sidecar = json.loads(layout.sidecar(saved.image.file_path).read_text())
    assert sidecar["metadata"]["seed"] == 7 and sidecar["size_bytes"] == png.stat().st_size
    assert not list(png.parent.glob(".*tmp")), "temp files left behind"


async def test_saver_discards_images_of_a_cancelled_job(settings, bus, tap):
    layout = DataLayout(settings.data_dir)
    doc = JobDocument.new(JOB, SPEC, datetime(2026, 3, 20, tzinfo=UTC))
    doc.status = "cancelled"
    layout.jobs_dir.mkdir(parents=True, exist_ok=True)
    layout.job(JOB).write_bytes(msgspec.json.encode(doc))
    async with running(saver_main, settings, "saver", bus):
        await bus.publish(generated(1, total=1))
        await bus.publish(generated(1, total=1, job="other"))
        await tap.wait(ImageSaved, "other")
    assert not tap.of(ImageSaved, JOB)
    assert not layout.image(f"2026/03/20/{JOB}_1.png").exists()


async def test_recorder_logs_events_keeps_documents_and_queue_file(settings, bus, tap):
    layout = DataLayout(settings.data_dir)
    second = "6e8d2f1f-3b54-4c8f-8b1c-4a2f3e5d6c7b"
    async with running(recorder_main, settings, "recorder", bus):
        await bus.publish(JobAccepted(job_id=JOB, spec=SPEC))
        await bus.publish(JobAccepted(job_id=second, spec=SPEC))
        await wait_for(lambda: layout.queue_file.exists() and layout.queue_file.read_text() == f"{JOB}\n{second}\n",
                       what="both jobs in queue.txt, oldest first")
        await bus.publish(JobStarted(job_id=JOB, worker="w1"))
        await bus.publish(JobProgressed(job_id=JOB, step=2, total_steps=4, preview=png_bytes()))
        await wait_for(lambda: layout.preview(JOB).exists(), what="the preview file")
        await bus.publish(JobCompleted(job_id=JOB, image_ids=[]))
        await bus.publish(JobCancelled(job_id=second))
        await wait_for(lambda: layout.queue_file.read_text() == "", what="queue.txt to empty")
    doc = msgspec.json.decode(layout.job(JOB).read_bytes(), type=JobDocument)
    assert doc.status == "completed" and doc.started_at is not None
    assert msgspec.json.decode(layout.job(second).read_bytes(), type=JobDocument).status == "cancelled"
    lines = [json.loads(line) for path in sorted(layout.events_dir.glob("*.jsonl")) for line in path.read_text().splitlines()]
    types = [line["type"] for line in lines if line["job_id"] == JOB]
    assert types == ["job.accepted", "job.started", "job.progressed", "job.completed"]
    assert all(line.get("preview") is None for line in lines), "preview bytes do not belong in the log"


async def test_recorder_rebuilds_queue_file_on_restart_and_skips_redelivered_events(settings, bus, tap):
    layout = DataLayout(settings.data_dir)
    accepted = JobAccepted(job_id=JOB, spec=SPEC)
    async with running(recorder_main, settings, "recorder", bus):
        await bus.publish(accepted)
        await wait_for(lambda: layout.queue_file.exists() and layout.queue_file.read_text() == f"{JOB}\n")
    layout.queue_file.write_text("garbage\n")
    async with running(recorder_main, settings, "recorder", bus):
        await wait_for(lambda: layout.queue_file.read_text() == f"{JOB}\n", what="queue.txt rebuilt from job documents")
        await bus.publish(accepted)  # the same event delivered again
        await bus.publish(JobStarted(job_id=JOB, worker="w1"))
        await wait_for(lambda: b'"processing"' in layout.job(JOB).read_bytes())
    lines = [json.loads(line) for path in layout.events_dir.glob("*.jsonl") for line in path.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["job.accepted", "job.started"]


async def test_recorder_dead_letters_garbage_and_keeps_recording(settings, bus, tap):
    layout = DataLayout(settings.data_dir)
    async with running(recorder_main, settings, "recorder", bus) as task:
        await publish_raw(bus, "job.accepted", b"\xff\xfe not an event")
        await bus.publish(JobAccepted(job_id=JOB, spec=SPEC))
        await wait_for(lambda: layout.job(JOB).exists() and layout.queue_file.exists()
                       and layout.queue_file.read_text() == f"{JOB}\n")
        assert not task.done()
    [letter] = await dead_letters(bus, 1)
    assert letter.body == b"\xff\xfe not an event"
