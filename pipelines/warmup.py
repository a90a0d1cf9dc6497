"""Getting a loaded model to full speed before the first job: device set-up, warm-up calls at
every batch size, and (CUDA) the compiled path, kept only when it is faster with the same images.

The first call at a new shape pays for CUDA context set-up, cuDNN's algorithm search and the
allocator's growth (measured on an H100: +0.9 s at each new batch size, 8 s for the first job);
`warm_up` pays them before the generator takes jobs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.generate import ImageTask, Recipe, generate
from pipelines.loader import LoadedModel

# Compiled images may differ from eager ones by rounding only: at most this mean absolute
# difference per channel (in 0..255 levels) and this largest single difference.
COMPILE_TOLERANCE_MEAN = 1.0
COMPILE_TOLERANCE_MAX = 24
# The compiled path must beat eager by this factor over the warm-up calls to be kept.
COMPILE_MIN_SPEEDUP = 1.05
WARMUP_STEPS = 2
# CPU warm-up runs at this size (nothing there depends on the shape; keep it cheap).
CPU_WARMUP_SIZE = 64


@dataclass
class WarmupReport:
    """What warm-up did, for the generator's log."""

    batch_sizes: list[int]
    size: tuple[int, int]
    seconds: float = 0.0
    compiled: bool = False
    compile_reason: str = "off"
    eager_seconds: float | None = None
    compiled_seconds: float | None = None
    differences: dict[int, tuple[float, int]] = field(default_factory=dict)


def prepare(model: LoadedModel) -> None:
    """CUDA: channels_last UNet and VAE, PyTorch's fused SDPA attention, cuDNN autotuning.
    Nothing on other devices (the CPU path stays exactly as diffusers runs it)."""
    if model.device.type != "cuda":
        return
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    pipe = model.pipe
    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        module.to(memory_format=torch.channels_last)
        if hasattr(module, "set_attn_processor"):
            module.set_attn_processor(AttnProcessor2_0())


def compile_wanted(setting: str, device: torch.device) -> bool:
    """DARKROOM_COMPILE: `auto` compiles on CUDA only; `on` anywhere; `off` never."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def use_compile_cache(folder: Path) -> None:
    """Keep inductor's and Triton's caches under the data directory, so a restart reuses them."""
    folder.mkdir(parents=True, exist_ok=True)
    # Importing diffusers already makes inductor fill in its default (/tmp/torchinductor_<user>);
    # only a folder the operator chose is kept.
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        inductor_default = default_cache_dir()
    except ImportError:
        inductor_default = None
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, inductor_default):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")


class ShapeRouted:
    """A module's forward that takes the compiled graph for shapes warmed up and the eager
    forward otherwise (a new shape mid-job would otherwise stall it for a compile), and eager
    whenever `eager_only()` says so (LoRA adapters change the module under the graph)."""

    def __init__(self, eager: Callable, compiled: Callable, eager_only: Callable[[], bool]):
        self.eager = eager
        self.compiled = compiled
        self.eager_only = eager_only
        self.shapes: set[tuple[int, ...]] = set()
        self.learning = False

    def __call__(self, sample: torch.Tensor, *args, **kwargs):
        shape = tuple(sample.shape)
        if self.learning:
            self.shapes.add(shape)
        elif shape not in self.shapes or self.eager_only():
            return self.eager(sample, *args, **kwargs)
        return self.compiled(sample, *args, **kwargs)


def _compile(model: LoadedModel) -> list[ShapeRouted]:
    """Route the UNet's and the VAE decoder's forward through torch.compile (one static graph per shape)."""
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    routes = []
    pipe = model.pipe
    for module in (getattr(pipe, "unet", None), getattr(getattr(pipe, "vae", None), "decoder", None)):
        if module is None:
            continue
        eager = module.forward
        route = ShapeRouted(eager, torch.compile(eager, dynamic=False, fullgraph=False), lambda: bool(model.loras))
        module.forward = route  # an instance attribute: nn.Module.__call__ finds it first
        routes.append(route)
    return routes


def _uncompile(model: LoadedModel) -> None:
    pipe = model.pipe
    for module in (getattr(pipe, "unet", None), getattr(getattr(pipe, "vae", None), "decoder", None)):
        if module is not None and "forward" in vars(module):
            del module.forward


def _difference(a: list, b: list) -> tuple[float, int]:
    """(mean, max) absolute difference in 0..255 levels between two lists of images."""
    diffs = [np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)) for x, y in zip(a, b, strict=True)]
    return float(np.mean([d.mean() for d in diffs])), int(max(d.max() for d in diffs))


def warm_up(model: LoadedModel, capacity: int, *, lora_folder: Path, compile: str = "off",
            log: Callable[..., None] = lambda *a, **k: None) -> WarmupReport:
    """One small generation at each batch size 1..capacity (at the model's default size on an
    accelerator), then, when `compile` asks for it, the same with the compiled UNet and VAE
    decoder: kept if its images match eager ones within the tolerance and (for `auto`) it is
    faster, else undone. Runs in the pipeline thread, before the generator consumes."""
    started = time.perf_counter()
    entry = model.entry
    if model.device.type == "cpu":
        size = (CPU_WARMUP_SIZE, CPU_WARMUP_SIZE)
    else:
        size = (entry.defaults.width, entry.defaults.height)
    sizes = list(range(1, max(1, capacity) + 1))
    report = WarmupReport(batch_sizes=sizes, size=size)
    recipe = Recipe(mode="txt2img", width=size[0], height=size[1], steps=WARMUP_STEPS,
                    guidance_scale=entry.defaults.guidance_scale)

    def call(n: int) -> tuple[list, float]:
        tasks = [ImageTask(prompt="warm-up", negative_prompt=None, seed=n * 1000 + i) for i in range(n)]
        begun = time.perf_counter()
        images = generate(model, recipe, tasks, lora_folder=lora_folder)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return images, time.perf_counter() - begun

    wanted = compile_wanted(compile, model.device)
    eager_images, eager_seconds = {}, 0.0
    for n in sizes:
        images, _ = call(n)
        if wanted:  # a second, timed call (the first paid for the shape)
            images, seconds = call(n)
            eager_images[n], eager_seconds = images, eager_seconds + seconds
    if wanted:
        report.eager_seconds = round(eager_seconds, 3)
        report.compiled, report.compile_reason = _try_compile(model, sizes, call, eager_images, eager_seconds,
                                                               require_faster=compile == "auto", report=report)
        log("compile decided", compiled=report.compiled, reason=report.compile_reason,
            eager_s=report.eager_seconds, compiled_s=report.compiled_seconds)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _try_compile(model: LoadedModel, sizes: list[int], call, eager_images: dict, eager_seconds: float, *,
                 require_faster: bool, report: WarmupReport) -> tuple[bool, str]:
    try:
        routes = _compile(model)
        for route in routes:
            route.learning = True
        for n in sizes:
            call(n)  # compiles this shape (or loads it from the on-disk cache)
        for route in routes:
            route.learning = False
        compiled_seconds = 0.0
        for n in sizes:
            images, seconds = call(n)
            compiled_seconds += seconds
            report.differences[n] = _difference(images, eager_images[n])
    except Exception as exc:  # noqa: BLE001 - any compile failure: run eager, say why
        _uncompile(model)
        return False, f"compile failed: {type(exc).__name__}: {exc}"
    report.compiled_seconds = round(compiled_seconds, 3)
    worst_mean = max(mean for mean, _ in report.differences.values())
    worst_max = max(largest for _, largest in report.differences.values())
    if worst_mean > COMPILE_TOLERANCE_MEAN or worst_max > COMPILE_TOLERANCE_MAX:
        _uncompile(model)
        return False, f"images differ beyond tolerance (mean {worst_mean:.2f}, max {worst_max} levels)"
    if require_faster and compiled_seconds * COMPILE_MIN_SPEEDUP > eager_seconds:
        _uncompile(model)
        return False, f"not faster ({compiled_seconds:.3f}s compiled vs {eager_seconds:.3f}s eager)"
    return True, f"faster ({compiled_seconds:.3f}s vs {eager_seconds:.3f}s), images within tolerance"
