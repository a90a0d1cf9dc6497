"""LoRAs as named peft adapters on a loaded pipeline: loaded once and kept, switched per job.

`applied(...)` activates a job's LoRAs with their weights and always deactivates them after,
so the next job sees the base model exactly (disabled adapters are bypassed, bit for bit).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

from pipelines.errors import LoraError
from schemas.layout import lora_file


def find_lora(folder: Path, name: str) -> Path:
    """The file of LoRA `name` in the library folder, or LoraError."""
    path = lora_file(folder, name)
    if path is None:
        raise LoraError(f"LoRA {name!r} is not in the library ({folder})")
    return path


def adapter_name(path: Path) -> str:
    # peft adapter names become module attribute names: keep them plain and unique per file. The
    # real file counts (a remote worker's `<name>.safetensors` links to its content-addressed
    # copy, so a LoRA whose content changed under the same name is a new adapter).
    return "lora_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]


@contextlib.contextmanager
def applied(pipe, loaded: dict[str, Path], folder: Path, loras: tuple[tuple[str, float], ...]) -> Iterator[None]:
    """Activate `loras` ((name, weight) pairs) on `pipe` for the duration of the block.

    `loaded` maps adapter names already on this pipeline to their files (kept across jobs).
    """
    if not loras:
        yield
        return
    names, weights = [], []
    for name, weight in loras:
        path = find_lora(folder, name)
        adapter = adapter_name(path)
        if adapter not in loaded:
            try:
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
            except Exception as exc:  # diffusers/peft raise many kinds for a bad file
                raise LoraError(f"LoRA {name!r} could not be loaded: {exc}") from exc
            loaded[adapter] = path
        names.append(adapter)
        weights.append(weight)
    pipe.enable_lora()
    pipe.set_adapters(names, adapter_weights=weights)
    try:
        yield
    finally:
        pipe.disable_lora()
