"""Generator process: GenerateImages in; model, progress and image events out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from functools import partial
from pathlib import Path

import structlog

from pipelines.errors import ModelLoadError
from pipelines.loader import ModelCache, configure_threads, resolve_device
from pipelines.tiny import ensure_tiny_model
from schemas import topology
from schemas.catalog import TINY_MODEL_ID
from schemas.events import GenerateImages, ModelLoaded
from schemas.settings import Settings
from services import runtime
from services.bus import BrokerUnavailable, command_decoder, delivery_count
from services.generator import faults
from services.generator.handlers import fail_job, follow_catalog, follow_job, generate_images
from services.generator.progress import ProgressSettings
from services.generator.remote import wrap_render
from services.generator.render import Renderer
from services.generator.worker import Options, Worker

STAGE = "generator"
log = structlog.get_logger(STAGE)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    # Read again when the runtime catalog changes: models pulled while running need no restart.
    catalog = runtime.LiveCatalog(settings)
    cache = ModelCache(settings.memory_budget, settings.device)
    threads = configure_threads(settings.torch_threads, resolve_device(settings.device))
    await asyncio.to_thread(ensure_tiny_model, Path(catalog.models[TINY_MODEL_ID].source))
    # Warm the default model before connecting: the load overlaps the broker's start, and the
    # first job does not pay for it.
    default = catalog.model(None)
    try:
        warm, _ = await asyncio.to_thread(cache.load, default)
        log.info("model warm", model=default.id, device=str(warm.device), seconds=round(warm.load_seconds, 2), threads=threads)
    except ModelLoadError as exc:
        # Not fatal: jobs for other models still run; jobs for this one fail with the reason.
        warm = None
        log.error("default model failed to load", error=str(exc))
    async with runtime.connected(settings, STAGE) as bus:
        render = Renderer(
            lora_folder=runtime.layout(settings).loras_dir, capacity=settings.max_batch,
            progress=ProgressSettings(rate=settings.progress_rate, preview_every=settings.preview_every),
            fault=faults.from_environment(os.environ),
        )
        worker_id = f"{socket.gethostname()}-{os.getpid()}"
        render, presence = wrap_render(render, settings, lora_folder=runtime.layout(settings).loras_dir, cache=cache,
                                       worker_id=worker_id, device=str(resolve_device(settings.device)))
        options = Options(
            max_batch=settings.max_batch, max_attempts=settings.max_attempts,
            heartbeat_interval=settings.heartbeat_interval,
        )
        worker = Worker(
            bus=bus, catalog=catalog, cache=cache, render=render,
            worker_id=worker_id, options=options,
        )

        async def generate(command: GenerateImages) -> None:
            # The bus sets the delivery count of the message it is handing over.
            await generate_images(command, deliveries=delivery_count.get(), worker=worker)

        batching = asyncio.create_task(worker.batcher.run())
        beating = asyncio.create_task(worker.heartbeats())
        announcing = asyncio.create_task(presence.announce(bus.publish_soon))
        if warm is not None:
            await bus.publish(ModelLoaded(
                model=default.id, worker=worker.id, seconds=round(warm.load_seconds, 3), bytes=warm.bytes
            ))
        await bus.subscribe(
            [topology.JOB_CANCEL_REQUESTED, topology.JOB_REQUEUED, topology.JOB_STARTED,
             topology.JOB_COMPLETED, topology.JOB_FAILED, topology.JOB_CANCELLED],
            partial(follow_job, worker=worker), name="generator-follow", outlive_disconnects=True,
        )
        await bus.subscribe(topology.CATALOG_CHANGE_KEYS, partial(follow_catalog, worker=worker), name="generator-catalog")
        # Prefetch two batches: a full next batch waits here while one runs. Commands a worker
        # holds when it dies go back with their delivery count up by one (4 deliveries allowed).
        await bus.consume(
            STAGE,
            generate,
            decoder=command_decoder,
            on_failure=partial(fail_job, worker=worker),
            prefetch=2 * settings.max_batch,
        )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, batching, beating}, return_when=asyncio.FIRST_COMPLETED)
        for task in (batching, beating):
            if task.done() and not task.cancelled() and task.exception():
                # Never keep consuming without a batcher: exit, hand everything back, be restarted.
                log.error("generator loop died; exiting", error=repr(task.exception()))
                raise SystemExit(1)
        log.info("stopping: finishing or handing back the current work", grace=settings.shutdown_grace)
        await bus.cancel_consumers()
        await worker.stop(settings.shutdown_grace)
        batching.cancel()
        beating.cancel()
        announcing.cancel()
        # Goodbye, briefly: without it the ingress lists this worker as gone a little later instead.
        with contextlib.suppress(BrokerUnavailable, TimeoutError):
            await asyncio.wait_for(bus.publish(presence.event(leaving=True)), 2)
    worker.executor.shutdown(wait=False, cancel_futures=True)


def run() -> None:
    runtime.run_service(STAGE, main)
