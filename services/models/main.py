"""Models process: PullModel and RemoveModel in; model.pull.*, model.available and model.removed out."""

from __future__ import annotations

import asyncio
import shutil
from functools import partial

import structlog

from schemas.events import AnyCommand, PullModel, RemoveModel
from schemas.layout import DataLayout
from schemas.settings import Settings
from services import runtime
from services.bus import command_decoder
from services.jobfiles import JobFiles
from services.models.handlers import Stage, accept_pull, remove_model, run_pulls
from services.models.store import ModelStore

STAGE = "models"
log = structlog.get_logger(STAGE)


def jobs_using(layout: DataLayout, files: JobFiles, kind: str, name: str) -> list[str]:
    """Pending and processing jobs (queue.txt) whose document names the model, or the LoRA."""
    queued = layout.queue_file.read_text().split() if layout.queue_file.exists() else []
    found = []
    for job_id in queued:
        doc = files.read(job_id)
        if doc is None or doc.status not in ("pending", "processing"):
            continue
        if (doc.model == name) if kind == "checkpoint" else any(ref.name == name for ref in doc.loras):
            found.append(job_id)
    return found


async def main(settings: Settings, stop: asyncio.Event) -> None:
    layout = runtime.layout(settings)
    for leftover in layout.models_dir.glob(".removing-*"):  # a removal cut short
        shutil.rmtree(leftover, ignore_errors=True)
    async with runtime.connected(settings, STAGE) as bus:
        stage = Stage(
            layout=layout, store=ModelStore(layout), catalog=runtime.LiveCatalog(settings),
            publish=bus.publish, publish_soon=bus.publish_soon,
            jobs_using=partial(jobs_using, layout, JobFiles(layout)), disk_reserve=settings.models_disk_reserve,
            progress_interval=1 / settings.progress_rate if settings.progress_rate > 0 else 0.0,
        )

        async def handle(command: AnyCommand):
            match command:
                case PullModel():
                    return await accept_pull(command, stage=stage)
                case RemoveModel():
                    return await remove_model(command, stage=stage)
            raise ValueError(f"the models stage does not handle {type(command).__name__}")

        pulling = asyncio.create_task(run_pulls(stage))
        await bus.consume(STAGE, handle, decoder=command_decoder, prefetch=8)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, pulling}, return_when=asyncio.FIRST_COMPLETED)
        if pulling.done() and not pulling.cancelled() and pulling.exception():
            log.error("pull loop died; exiting", error=repr(pulling.exception()))
            raise SystemExit(1)
        # A pull under way stops here; its record says where it was, and the next start resumes it.
        await bus.cancel_consumers()
        pulling.cancel()
        stopped.cancel()


def run() -> None:
    runtime.run_service(STAGE, main)
