"""Cheap previews of a running generation: latents to RGB by a fixed linear map, no VAE.

The factors are the widely used approximation for Stable Diffusion's 4-channel latent space
(A1111's "Approx cheap"); for other latent spaces no preview is produced.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

# Rows: latent channels; columns: R, G, B.
SD_FACTORS = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])
SDXL_FACTORS = torch.tensor([
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
])
MAX_SIDE = 256


def preview_png(latents: torch.Tensor, family: str) -> bytes | None:
    """A small PNG of the first latent in the batch, or None when the latent space is unknown."""
    if latents.ndim != 4 or latents.shape[1] != 4:
        return None
    factors = SDXL_FACTORS if family == "sdxl" else SD_FACTORS
    rgb = torch.einsum("chw,cr->hwr", latents[0].detach().float().cpu(), factors)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    scale = max(1, MAX_SIDE // max(image.size))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
