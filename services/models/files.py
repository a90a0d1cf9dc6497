"""Which files of a model a diffusers pipeline needs, and what they are (pickled or not).

Pure functions over relative paths: the same rules choose files from a Hub repo's listing and
from a local folder.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from schemas.catalog import MODEL_NAME

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".gguf")
# Loading these runs Python's unpickler: arbitrary code from whoever made the file.
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
CONFIG_SUFFIXES = (".json", ".txt", ".model")
# Components Darkroom never loads (it passes safety_checker=None).
SKIPPED_COMPONENTS = frozenset({"safety_checker"})
# The diffusers weights loaders read first, best first: safetensors, then pickles (refused unless allowed).
PREFERRED_WEIGHTS = (".safetensors", ".bin")
LORA_NAMES = ("pytorch_lora_weights.safetensors",)

NAME = MODEL_NAME


class UnusableSource(ValueError):
    """The source holds nothing Darkroom can use as asked; the message says what it found."""


def is_pickle(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)


def _variant(path: str) -> bool:
    """`unet/diffusion_pytorch_model.fp16.safetensors` is a variant (fp16, non_ema, ...); the
    default weights have no second dot (shards are `...-00001-of-00002.safetensors`)."""
    name = PurePosixPath(path).name
    for suffix in (".index.json", *WEIGHT_SUFFIXES):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for suffix in WEIGHT_SUFFIXES:  # an index is named after its weights: model.safetensors.index.json
        name = name.removesuffix(suffix)
    return "." in name


def choose_pipeline_files(paths: list[str]) -> list[str]:
    """From a diffusers pipeline's files: model_index.json, each component's configs, and its
    default weights (safetensors when there are any, else pickles). Root-level checkpoints, docs,
    images, variants and the safety checker are left out."""
    if "model_index.json" not in paths:
        raise UnusableSource("no model_index.json: not a diffusers pipeline")
    chosen = ["model_index.json"]
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        parts = path.split("/")
        if len(parts) == 2 and parts[0] not in SKIPPED_COMPONENTS and not parts[0].startswith("."):
            by_folder.setdefault(parts[0], []).append(path)
    for folder in sorted(by_folder):
        files = by_folder[folder]
        weights = [p for p in files if p.endswith(WEIGHT_SUFFIXES) and not _variant(p)]
        kind = next((s for s in PREFERRED_WEIGHTS if any(p.endswith(s) for p in weights)), None)
        for path in sorted(files):
            if path.endswith(".index.json"):
                if kind and not _variant(path) and path.endswith(f"{kind}.index.json"):
                    chosen.append(path)
            elif path.endswith(CONFIG_SUFFIXES):
                chosen.append(path)
            elif kind and path in weights and path.endswith(kind):
                chosen.append(path)
    return chosen


def choose_single_file(paths: list[str], *, lora: bool) -> str:
    """The one weights file of a single-file repo or folder (a LoRA's `pytorch_lora_weights` first)."""
    roots = [p for p in paths if "/" not in p and p.lower().endswith(SINGLE_FILE_SUFFIXES)]
    if lora:
        named = [p for p in roots if p in LORA_NAMES]
        if named:
            return named[0]
    safes = [p for p in roots if p.endswith(".safetensors")]
    candidates = safes or roots
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise UnusableSource("no weights file (.safetensors) at its top level")
    raise UnusableSource(f"several weights files ({', '.join(sorted(candidates)[:6])}); pull one by its URL")


def check_name(name: str) -> str | None:
    """What is wrong with a model or LoRA name, or None."""
    if not NAME.match(name):
        return f"name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None
