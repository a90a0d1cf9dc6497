"""The LoRA files this installation has (models/loras/*.safetensors), as foreign APIs list them."""

from __future__ import annotations

from pathlib import Path

from schemas.layout import DataLayout, lora_file, lora_names


def lora_files(layout: DataLayout) -> list[tuple[str, Path]]:
    """(name, file) of every LoRA in the library, by name; read afresh each time (nothing to refresh)."""
    folder = layout.loras_dir
    return [(name, path) for name in lora_names(folder) if (path := lora_file(folder, name)) is not None]
