"""How an image was made, read back from the image itself: the A1111 `parameters` text that
Darkroom (pipelines/png.py) and AUTOMATIC1111 embed in their PNGs, parsed as A1111 parses it."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from services.ingress.domain.errors import Invalid

PARAMETERS_KEY = "parameters"
# `Key: value` pairs of the last line; a value may be a quoted string holding commas.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE = "Negative prompt:"


@dataclass(frozen=True)
class PngInfo:
    """An image's generation text (None when it has none), its parsed pairs, and its other text chunks."""

    parameters: str | None
    parsed: dict[str, str] = field(default_factory=dict)
    items: dict[str, str] = field(default_factory=dict)


def parse_parameters(text: str) -> dict[str, str]:
    """A1111's parse: `Prompt`, `Negative prompt`, then each `Key: value` of the last line (`Size`
    also as `Size-1` and `Size-2`). Values stay text, as A1111 leaves them."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:  # no settings line: it is all prompt
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith(NEGATIVE):
            in_negative, line = True, line[len(NEGATIVE):].strip()
        (negative if in_negative else prompt).append(line.strip())
    parsed = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PAIR.findall(last):
        value = value.strip()
        if len(value) > 1 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        size = _SIZE.match(value)
        if size:
            parsed[f"{key}-1"], parsed[f"{key}-2"] = size.group(1), size.group(2)
        parsed[key] = value
    return parsed


def read_png_info(data: bytes, field_name: str = "image") -> PngInfo:
    """The text an image carries (PNG text chunks; other formats' info strings), parsed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                info = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Invalid(f"{field_name} is not an image Darkroom can read") from None
    text = info.pop(PARAMETERS_KEY, None)
    return PngInfo(parameters=text, parsed=parse_parameters(text) if text else {}, items=info)
