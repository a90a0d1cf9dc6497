"""Input images of img2img and inpaint jobs: decoded, bounded and normalized before anything is
queued. Sizes are checked from the header before the pixels are decoded in full."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from services.ingress.domain.errors import DomainError, Invalid, TooLarge

FORMATS = ("PNG", "JPEG", "WEBP")
MAX_ENCODED_BYTES = 15 * 1024 * 1024


@dataclass(frozen=True)
class InputImage:
    """A checked input image, re-encoded as PNG (RGB for images, L for masks)."""

    png: bytes
    width: int
    height: int


def decode_base64(field: str, text: str) -> bytes:
    """Base64 (standard or URL-safe, with or without a data: URL prefix) to bytes, or Invalid (TooLarge past the limit)."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    text = "".join(text.split())
    if len(text) > MAX_ENCODED_BYTES * 4 // 3 + 4:
        raise TooLarge(f"{field} is larger than {MAX_ENCODED_BYTES // (1024 * 1024)} MB")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if "-" in text or "_" in text else None, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"{field} is not valid base64") from None


def load_image(field: str, data: bytes, *, max_width: int, max_height: int, mode: str) -> InputImage:
    """Open, bound and normalize an image; every failure is Invalid, naming `field`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise Invalid(f"{field} must be PNG, JPEG or WebP, got {image.format or 'an unknown format'}")
            # The header alone says the size: refuse oversized images before decoding any pixel.
            if image.width > max_width or image.height > max_height:
                raise Invalid(
                    f"{field} is {image.width}x{image.height}; the model accepts at most {max_width}x{max_height}"
                )
            image.load()
    except DomainError:
        raise
    except UnidentifiedImageError:
        raise Invalid(f"{field} is not an image Darkroom can read (PNG, JPEG or WebP)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Invalid(f"{field} has too many pixels to decode safely") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise Invalid(f"{field} is damaged and cannot be decoded: {exc}") from None
    converted = image.convert(mode)
    buffer = io.BytesIO()
    converted.save(buffer, format="PNG")
    return InputImage(png=buffer.getvalue(), width=converted.width, height=converted.height)
