"""What a LoRA file says about itself: its safetensors header (tensor names and `__metadata__`),
read without loading a tensor, and what that means: base-model family, trigger words, tags.

Trainers write what they know as string metadata: kohya's `ss_*` keys (`ss_base_model_version`,
`ss_tag_frequency`, `ss_dataset_dirs`, `ss_v2`) and the Stability model spec (`modelspec.*`).
When the metadata names no base, the tensor names still tell SDXL (a second text encoder) and
Flux (double/single transformer blocks) apart; otherwise the base is `unknown`.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import msgspec

MAX_HEADER_BYTES = 64 * 1024 * 1024  # the spec's own limit is 100 MB; real LoRA headers are < 1 MB
TOP_TAGS = 20
KEPT_FREQUENCIES = 100
SHOWN_VALUE_CHARS = 500
_REPEATS = re.compile(r"^\d+_")
_header_decoder = msgspec.json.Decoder(dict)


class HeaderError(ValueError):
    """The file is not a readable safetensors file."""


class LoraMetadata(msgspec.Struct, kw_only=True):
    """What the index keeps of a LoRA's header."""

    base: str = "unknown"
    base_model: str | None = None
    trigger_words: list[str] = []
    tags: list[str] = []
    tag_frequency: dict[str, int] = {}
    metadata: dict[str, str] = {}


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file (tensor entries plus `__metadata__`)."""
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise HeaderError(f"{path.name}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= MAX_HEADER_BYTES:
            raise HeaderError(f"{path.name}: header length {length} is not plausible")
        raw = file.read(length)
    if len(raw) < length:
        raise HeaderError(f"{path.name}: header is cut short ({len(raw)} of {length} bytes)")
    try:
        header = _header_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise HeaderError(f"{path.name}: header is not JSON: {exc}") from None
    return header


def describe(header: dict) -> LoraMetadata:
    """Base family, trigger words and tags from a header."""
    raw = header.get("__metadata__") or {}
    meta = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    base_model = meta.get("ss_base_model_version") or meta.get("modelspec.architecture")
    frequency = _tag_frequency(meta)
    tags = [tag for tag, _ in sorted(frequency.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_TAGS]]
    for tag in _split(meta.get("modelspec.tags", "")):
        if tag not in tags:
            tags.append(tag)
    kept = dict(sorted(frequency.items(), key=lambda kv: (-kv[1], kv[0]))[:KEPT_FREQUENCIES])
    return LoraMetadata(
        base=base_of(meta, header.keys()),
        base_model=base_model,
        trigger_words=_trigger_words(meta),
        tags=tags,
        tag_frequency=kept,
        metadata={k: v if len(v) <= SHOWN_VALUE_CHARS else v[:SHOWN_VALUE_CHARS] + "..." for k, v in meta.items()},
    )


def base_of(meta: dict[str, str], tensor_names) -> str:
    """The LoRA's base family (`sd1`, `sd2`, `sdxl`, `sd3`, `flux`, or `unknown`)."""
    for key in ("ss_base_model_version", "modelspec.architecture", "ss_sd_model_name"):
        base = _family(meta.get(key, ""))
        if base:
            return base
    if meta.get("ss_v2", "").lower() == "true":
        return "sd2"
    names = " ".join(name for name in tensor_names if name != "__metadata__")
    if "lora_te2_" in names or "text_encoder_2." in names:
        return "sdxl"
    if "double_blocks" in names or "single_transformer_blocks" in names or "single_blocks" in names:
        return "flux"
    return "unknown"


def file_base(path: Path) -> str:
    """The base family of a LoRA file; `unknown` when its header cannot be read."""
    try:
        header = read_header(path)
    except (OSError, HeaderError):
        return "unknown"
    raw = header.get("__metadata__") or {}
    meta = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    return base_of(meta, header.keys())


def _family(value: str) -> str | None:
    v = value.lower()
    if not v:
        return None
    if "flux" in v:
        return "flux"
    if "xl" in v:
        return "sdxl"
    if "v3" in v or "sd3" in v or "sd_3" in v:
        return "sd3"
    if "v2" in v or "sd2" in v or "sd_2" in v:
        return "sd2"
    if "v1" in v or "sd1" in v or "sd_1" in v:
        return "sd1"
    return None


def _json(value: str | None) -> dict:
    if not value:
        return {}
    try:
        decoded = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _tag_frequency(meta: dict[str, str]) -> dict[str, int]:
    """kohya's ss_tag_frequency ({dataset: {tag: count}}), summed over datasets."""
    total: dict[str, int] = {}
    for tags in _json(meta.get("ss_tag_frequency")).values():
        if isinstance(tags, dict):
            for tag, count in tags.items():
                tag = str(tag).strip()
                if tag and isinstance(count, int | float):
                    total[tag] = total.get(tag, 0) + int(count)
    return total


def _trigger_words(meta: dict[str, str]) -> list[str]:
    """The model spec's trigger phrase, then kohya's dataset folder names (`10_fox style` -> `fox style`)."""
    words: list[str] = []
    candidates = [*_split(meta.get("modelspec.trigger_phrase", "")),
                  *_json(meta.get("ss_dataset_dirs")).keys(), *_json(meta.get("ss_tag_frequency")).keys()]
    for candidate in candidates:
        word = _REPEATS.sub("", str(candidate)).strip()
        if word and word not in words:
            words.append(word)
    return words


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]
