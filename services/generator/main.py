"""Generator process: GenerateImages in; model, progress and image events out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from functools import partial

import structlog

from schemas import topology
from schemas.events import GenerateImages, ModelLoaded
from schemas.settings import Settings
from services import runtime
from services.bus import BrokerUnavailable, command_decoder, delivery_count
from services.generator import engine, faults
from services.generator.affinity import Affinity
from services.generator.handlers import fail_job, follow_catalog, follow_job, generate_images
from services.generator.remote import attach
from services.generator.worker import Options, Worker

STAGE = "generator"
log = structlog.get_logger(STAGE)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    # Read again when the runtime catalog changes: models pulled while running need no restart.
    catalog = runtime.LiveCatalog(settings)
    data = runtime.layout(settings)
    # Load and warm the default model (importing torch on the way) while the broker connection
    # opens; consume only once it is warm, so that readiness (a consumer on the queue) is honest.
    starting = asyncio.create_task(asyncio.to_thread(
        engine.start, settings, catalog, lora_folder=data.loras_dir,
        compile_cache=data.base / "cache" / "compile", fault=faults.from_environment(os.environ),
    ))
    async with runtime.connected(settings, STAGE) as bus:
        if settings.routing == "affinity":
            await bus.declare_model_queues(catalog.models)
        ready = await starting
        default, warm = catalog.model(None), ready.warm
        worker_id = f"{socket.gethostname()}-{os.getpid()}"
        # On another host: the control node's models join the catalog (fetched when first needed).
        parts = await asyncio.to_thread(attach, ready, settings, catalog, data=data, worker_id=worker_id)
        presence = parts.presence
        options = Options(
            max_batch=ready.capacity, max_attempts=settings.max_attempts,
            heartbeat_interval=settings.heartbeat_interval, overlap=settings.overlap == "on",
            batch_wait=settings.batch_wait_ms / 1000,
        )
        worker = Worker(
            bus=bus, catalog=parts.catalog, cache=parts.cache, render=parts.render,
            worker_id=worker_id, options=options,
        )

        async def generate(command: GenerateImages) -> None:
            # The bus sets the delivery count of the message it is handing over.
            await generate_images(command, deliveries=delivery_count.get(), worker=worker)

        batching = asyncio.create_task(worker.batcher.run())
        beating = asyncio.create_task(worker.heartbeats())
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
        if parts.follow_models is not None:
            await bus.subscribe(topology.CATALOG_CHANGE_KEYS, parts.follow_models, name="generator-models")
        # Prefetch two batches: overlapped, one finishes while the next generates (or a full next
        # batch waits while one runs). Not more: commands a worker holds when it dies go back with
        # their delivery count up by one (4 deliveries allowed), held or not.
        consume = partial(bus.consume, STAGE, generate, decoder=command_decoder,
                          on_failure=partial(fail_job, worker=worker), prefetch=2 * ready.capacity)
        # Each warm model's own queue (affinity routing), then the shared one: always consumed,
        # whatever DARKROOM_ROUTING, so that what was sent there is served and readiness is honest.
        affinity = Affinity(bus=bus, worker=worker, consume=lambda model: consume(model=model),
                            patience=settings.affinity_patience, look_around=settings.routing == "affinity")
        worker.on_models_changed = affinity.models_changed
        await affinity.follow_cache()
        await consume()
        # Announced once it consumes: a worker listed `up` (GET /v1/workers) takes jobs, and /health
        # counts it (a presence sent during the subscriptions above was seen before it consumed).
        announcing = asyncio.create_task(presence.announce(bus.publish_soon))
        following = asyncio.create_task(affinity.run())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, batching, beating}, return_when=asyncio.FIRST_COMPLETED)
        for task in (batching, beating):
            if task.done() and not task.cancelled() and task.exception():
                # Never keep consuming without a batcher: exit, hand everything back, be restarted.
                log.error("generator loop died; exiting", error=repr(task.exception()))
                raise SystemExit(1)
        log.info("stopping: finishing or handing back the current work", grace=settings.shutdown_grace)
        following.cancel()
        worker.on_models_changed = None
        await bus.cancel_consumers()
        await worker.stop(settings.shutdown_grace)
        batching.cancel()
        beating.cancel()
        announcing.cancel()
        # Goodbye, briefly: without it the ingress lists this worker as gone a little later instead.
        with contextlib.suppress(BrokerUnavailable, TimeoutError):
            await asyncio.wait_for(bus.publish(presence.event(leaving=True)), 2)
    worker.executor.shutdown(wait=False, cancel_futures=True)
    worker.finisher.shutdown(wait=False, cancel_futures=True)


def run() -> None:
    runtime.run_service(STAGE, main)
