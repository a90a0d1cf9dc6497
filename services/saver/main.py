"""Saver process: image.generated in, files on disk, image.saved and job.completed out."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import partial

from schemas.settings import Settings
from services import runtime
from services.bus import event_decoder
from services.files import sweep_temp_files
from services.jobfiles import JobFiles
from services.saver.handlers import JobLocks, SavedImages, fail_job, save_image

STAGE = "saver"


async def main(settings: Settings, stop: asyncio.Event) -> None:
    layout = runtime.layout(settings)
    # A saver killed mid-write leaves only temp files behind; its message comes back and is redone.
    today = datetime.now(UTC)
    recent = [layout.images_dir / f"{today - timedelta(days=d):%Y/%m/%d}" for d in range(7)]
    await asyncio.to_thread(sweep_temp_files, recent)
    async with runtime.connected(settings, STAGE) as bus:
        await bus.consume(
            STAGE,
            partial(save_image, bus=bus, files=JobFiles(layout), locks=JobLocks(), saved=SavedImages()),
            decoder=event_decoder,
            on_failure=partial(fail_job, bus=bus),
            prefetch=16,
        )
        await stop.wait()


def run() -> None:
    runtime.run_service(STAGE, main)
