"""A Stable Diffusion 1.5-shaped model with random weights, for GPU benchmarks without a download.

Same architecture and sizes as SD 1.5 (UNet 860M parameters, 768-wide CLIP ViT-L/14 text encoder,
the 4-channel VAE with its 8x latent factor), so each step costs what the real model's does; the
images are noise. Built from configs (about 1.7 GB saved in float16) and loaded like any model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipelines.tiny import MODEL_INDEX, _write_tokenizer, sd_pipeline

SD15_RANDOM_ID = "sd15-random"


def build_sd15_random(folder: Path, seed: int = 0) -> Path:
    """Build the model into `folder` unless a complete one is there. Returns the folder."""
    if (folder / MODEL_INDEX).exists() and (folder / "unet").exists():
        return folder
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    staging = folder.with_name(f".{folder.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    vocab_size = _write_tokenizer(staging / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
    torch.manual_seed(seed)
    # SD 1.5's text encoder is CLIP ViT-L/14's (49408 tokens); our byte-level tokenizer's ids fit in it.
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    ))
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    pipe = sd_pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
    # Random weights keep their scale in float16; half the bytes to write and to read.
    pipe.to(torch.float16)
    pipe.save_pretrained(staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def catalog_toml(folder: Path) -> str:
    """A darkroom.toml entry for the model (SD 1.5's defaults and limits), as the default model."""
    return (
        f'default = "{SD15_RANDOM_ID}"\n\n'
        f"[models.{SD15_RANDOM_ID}]\n"
        f'source = "{folder}"\n'
        'family = "sd1.x"\n'
        "[models.sd15-random.defaults]\n"
        "num_inference_steps = 25\nwidth = 512\nheight = 512\n"
    )
