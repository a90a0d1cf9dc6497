"""The generator's engine start: torch and diffusers imported, the default model loaded, set up
for its device and warmed up at every batch size. It runs in a thread while `main` connects to
the broker; the generator consumes only once it is done.

Everything that imports torch is imported inside `start`, so the process reaches its model load
without paying for torch twice (the import is the load's first step, overlapping the connect).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from pipelines.errors import ModelLoadError
from schemas.catalog import TINY_MODEL_ID, Catalog
from schemas.settings import Settings
from services.generator.faults import FaultHook
from services.generator.progress import ProgressSettings

if TYPE_CHECKING:
    from pipelines.loader import LoadedModel, ModelCache
    from services.generator.render import Renderer

log = structlog.get_logger("generator")


@dataclass
class Engine:
    cache: ModelCache
    render: Renderer
    # Images per pipeline call (DARKROOM_MAX_BATCH, or by device).
    capacity: int
    device: str
    # The default model, warm; None when it failed to load (jobs for it fail with the reason).
    warm: LoadedModel | None


def split_decode(settings: Settings, device_type: str) -> bool:
    """Whether the VAE decode leaves the pipeline thread with the PNG encoding (overlapped). On
    CUDA the pipeline thread then queues the next batch's UNet at once. On a CPU (torch on all
    cores but one) the decode runs on the core the UNet leaves (`darkroom bench overlap`, tiny
    model, 2 cores: 1.22x and 1.39x the generator's images/s with overlap off, paired rounds, in
    two runs of 2026-12-01; PNG encoding alone moved: 1.01-1.02x)."""
    return settings.overlap == "on"


def start(settings: Settings, catalog: Catalog, *, lora_folder: Path, compile_cache: Path, fault: FaultHook) -> Engine:
    """Load and warm the default model (in a thread: it imports torch and runs the pipeline)."""
    from pipelines.loader import ModelCache, configure_threads, resolve_device
    from pipelines.tiny import ensure_tiny_model
    from pipelines.warmup import compile_wanted, prepare, use_compile_cache, warm_up
    from services.generator.render import Renderer

    device = resolve_device(settings.device)
    threads = configure_threads(settings.torch_threads, device)
    capacity = settings.batch_capacity(device.type)
    if compile_wanted(settings.compile, device):
        use_compile_cache(compile_cache)
    cache = ModelCache(settings.memory_budget, settings.device, settings.dtype, prepare=prepare)
    render = Renderer(
        lora_folder=lora_folder, capacity=capacity,
        progress=ProgressSettings(rate=settings.progress_rate, preview_every=settings.preview_every),
        fault=fault, split_decode=split_decode(settings, device.type),
    )
    ensure_tiny_model(Path(catalog.models[TINY_MODEL_ID].source))
    default = catalog.model(None)
    try:
        warm, _ = cache.load(default)
    except ModelLoadError as exc:
        # Not fatal: jobs for other models still run; jobs for this one fail with the reason.
        log.error("default model failed to load", error=str(exc))
        return Engine(cache, render, capacity, device.type, None)
    log.info("model loaded", model=default.id, device=str(warm.device), dtype=str(warm.dtype),
             seconds=round(warm.load_seconds, 2), threads=threads, max_batch=capacity)
    if settings.warmup == "on":
        report = warm_up(warm, capacity, lora_folder=lora_folder, compile=settings.compile, log=log.info)
        log.info("model warmed up", model=default.id, batch_sizes=report.batch_sizes, size=report.size,
                 seconds=report.seconds, compiled=report.compiled, compile=report.compile_reason)
    return Engine(cache, render, capacity, device.type, warm)
