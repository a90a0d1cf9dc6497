"""Loading models from the catalog, and keeping them warm in an LRU bounded by a memory budget."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.errors import ModelLoadError
from schemas.catalog import ModelEntry

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


@dataclass
class LoadedModel:
    """A pipeline on its device, ready to generate, with what was built on it since."""

    entry: ModelEntry
    pipe: object  # a diffusers DiffusionPipeline
    device: torch.device
    dtype: torch.dtype
    bytes: int
    load_seconds: float
    # img2img / inpaint pipelines made from `pipe` on first use (they share its weights).
    variants: dict[str, object] = field(default_factory=dict)
    # LoRA adapters loaded onto `pipe`: adapter name -> file.
    loras: dict[str, Path] = field(default_factory=dict)

    def for_mode(self, mode: str):
        """The pipeline for txt2img, img2img or inpaint."""
        if mode == "txt2img":
            return self.pipe
        if mode not in self.variants:
            import diffusers

            auto = {"img2img": diffusers.AutoPipelineForImage2Image, "inpaint": diffusers.AutoPipelineForInpainting}[mode]
            variant = auto.from_pipe(self.pipe)
            variant.set_progress_bar_config(disable=True)
            self.variants[mode] = variant
        return self.variants[mode]


def resolve_device(requested: str) -> torch.device:
    """`auto` means the first CUDA device when there is one, else the CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(requested)


def configure_threads(requested: int, device: torch.device) -> int:
    """Set torch's CPU thread count: `requested`, or on a CPU all cores but one. Returns it."""
    import os

    threads = requested or (max(1, (os.cpu_count() or 2) - 1) if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    return threads


# Families trained and shipped in bfloat16: float16 overflows in their activations.
BFLOAT16_FAMILIES = ("sd3", "flux")


def resolve_dtype(requested: str, device: torch.device, family: str = "sd1.x") -> torch.dtype:
    """`auto` is float16 on accelerators (half the memory, same images; bfloat16 for SD3 and Flux
    on CUDA) and float32 on the CPU."""
    if requested == "auto":
        if device.type == "cpu":
            return torch.float32
        if device.type == "cuda" and family in BFLOAT16_FAMILIES and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    return getattr(torch, requested)


def _pipeline_class(family: str):
    import diffusers

    return {
        "sd1.x": diffusers.StableDiffusionPipeline,
        "sd2.x": diffusers.StableDiffusionPipeline,
        "sdxl": diffusers.StableDiffusionXLPipeline,
        "sd3": diffusers.StableDiffusion3Pipeline,
        "flux": diffusers.FluxPipeline,
    }[family]


def _model_bytes(pipe: object) -> int:
    total = 0
    for component in getattr(pipe, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.parameters())
            total += sum(t.numel() * t.element_size() for t in component.buffers())
    return total


def estimate_bytes(entry: ModelEntry) -> int:
    """Size of the weights on disk: an upper bound of what loading them takes (0 when unknown)."""
    source = Path(entry.source)
    if source.is_file():
        return source.stat().st_size
    if source.is_dir():
        return sum(p.stat().st_size for p in source.rglob("*") if p.suffix in SINGLE_FILE_SUFFIXES)
    return 0


def load(entry: ModelEntry, default_device: str = "auto", default_dtype: str = "auto") -> LoadedModel:
    """Load one catalog entry onto its device. Local sources never touch the network."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    device = resolve_device(entry.device if entry.device != "auto" else default_device)
    dtype = resolve_dtype(entry.dtype if entry.dtype != "auto" else default_dtype, device, entry.family)
    source = Path(entry.source)
    options = {"dtype": dtype}
    if entry.family in ("sd1.x", "sd2.x"):
        options |= {"safety_checker": None, "requires_safety_checker": False}
    started = time.perf_counter()
    try:
        if source.is_dir():
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(source, local_files_only=True, **options)
        elif source.suffix in SINGLE_FILE_SUFFIXES:
            if not source.exists():
                raise ModelLoadError(f"model {entry.id!r}: checkpoint {source} does not exist")
            if entry.config is None:
                raise ModelLoadError(
                    f"model {entry.id!r}: a single-file checkpoint needs `config`, a local diffusers folder "
                    "with the matching configs (loading one offline cannot fetch them)"
                )
            pipe = _pipeline_class(entry.family).from_single_file(
                source, config=entry.config, local_files_only=True, **options
            )
        elif source.is_absolute() or entry.source.startswith("."):
            raise ModelLoadError(f"model {entry.id!r}: {source} does not exist")
        else:
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(entry.source, **options)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers raises many kinds; the user needs the model and the cause
        raise ModelLoadError(f"model {entry.id!r} failed to load from {entry.source}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return LoadedModel(
        entry=entry, pipe=pipe, device=device, dtype=dtype,
        bytes=_model_bytes(pipe), load_seconds=time.perf_counter() - started,
    )


class ModelCache:
    """Warm models, least recently used evicted first, kept within `budget` bytes.

    The model in use is never evicted; a single model larger than the budget still loads (alone).
    """

    def __init__(self, budget: int, default_device: str = "auto", default_dtype: str = "auto",
                 prepare: Callable[[LoadedModel], None] | None = None):
        self.budget = budget
        self.default_device = default_device
        self.default_dtype = default_dtype
        # Run on each model once it is loaded (the generator's fast-path set-up: channels_last, ...).
        self.prepare = prepare
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()

    @property
    def used(self) -> int:
        return sum(model.bytes for model in self._models.values())

    def get(self, entry: ModelEntry) -> LoadedModel | None:
        """The warm model for `entry`, marked most recently used, or None when it is not loaded."""
        model = self._models.get(entry.id)
        if model is not None and model.entry == entry:
            self._models.move_to_end(entry.id)
            return model
        return None

    def load(self, entry: ModelEntry) -> tuple[LoadedModel, list[LoadedModel]]:
        """Load `entry` and return it with the models evicted to make room for it.

        Room is made before loading, from the size of the weights on disk, so that two large
        models never have to fit at once.
        """
        self._models.pop(entry.id, None)  # a changed catalog entry replaces the old pipeline
        evicted = self._make_room(estimate_bytes(entry), keep=entry.id)
        model = load(entry, self.default_device, self.default_dtype)
        if self.prepare is not None:
            self.prepare(model)
        evicted += self._make_room(model.bytes, keep=entry.id)
        self._models[entry.id] = model
        return model, evicted

    def warm(self) -> list[LoadedModel]:
        """The models loaded now, least recently used first."""
        return list(self._models.values())

    def would_evict(self, entry: ModelEntry) -> list[str]:
        """The warm models loading `entry` would evict now (by the size of its weights on disk)."""
        if entry.id in self._models:
            return []
        needed, used, victims = estimate_bytes(entry), self.used, []
        for key, model in self._models.items():
            if used + needed <= self.budget:
                break
            victims.append(key)
            used -= model.bytes
        return victims

    def drop(self, model_id: str) -> LoadedModel | None:
        """Forget a warm model (its files were removed); returns it, or None when it was not warm."""
        model = self._models.pop(model_id, None)
        if model is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return model

    def _make_room(self, needed: int, keep: str) -> list[LoadedModel]:
        evicted = []
        while self._models and self.used + needed > self.budget:
            victim_id = next((key for key in self._models if key != keep), None)
            if victim_id is None:
                break
            victim = self._models.pop(victim_id)
            evicted.append(victim)
        if evicted and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return evicted
