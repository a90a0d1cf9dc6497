"""The built-in default model: a tiny Stable Diffusion 1.x pipeline with random weights.

It is built from configs on first start (about a second, 8 MB, no download) and saved as a normal
diffusers folder, then loaded like any real model. It draws coloured noise, but every image goes
through the real diffusers code path: tokenizer, text encoder, UNet, scheduler and VAE.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

MODEL_INDEX = "model_index.json"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _write_tokenizer(folder: Path) -> int:
    """A byte-level CLIP tokenizer with no merges: every byte is a token. Returns the vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({f"{symbol}</w>": 256 + i for i, symbol in enumerate(symbols)})
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    # transformers 5 ignores vocab_file/merges_file passed to CLIPTokenizer(): only
    # from_pretrained(folder) reads them, so write the config it needs.
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
    }))
    return len(vocab)


def sd_pipeline(*, vae, text_encoder, tokenizer, unet):
    """An SD 1.x pipeline around the given parts, with SD 1.5's scheduler and no safety checker."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline into `folder` (replacing a half-built one). Returns the folder."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    staging = folder.with_name(f".{folder.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    vocab_size = _write_tokenizer(staging / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, expected {vocab_size}")

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    ))
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    # Four VAE blocks give the real 8x latent factor, so sizes and costs scale like SD 1.x.
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, norm_num_groups=32, sample_size=256,
    )
    pipe = sd_pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
    pipe.save_pretrained(staging)
    try:
        staging.rename(folder)
    except OSError:
        # Another process finished first (the rename is atomic), or a stale half-built folder is
        # in the way: keep a complete model, replace an incomplete one.
        if (folder / MODEL_INDEX).exists():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
    return folder


def ensure_tiny_model(folder: Path) -> Path:
    """Build the tiny model unless a complete one is already there."""
    if (folder / MODEL_INDEX).exists() and (folder / "unet").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    return build_tiny_model(folder)


def build_tiny_lora(path: Path, model_folder: Path, seed: int = 1, rank: int = 4) -> Path:
    """A random LoRA for the tiny model's UNet attention layers, saved in diffusers' LoRA format.

    Random weights (peft's init_lora_weights=False) so that it visibly changes the output; for
    tests and for trying the LoRA features without a download.
    """
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_folder / "unet")
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    ))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(path.parent), unet_lora_layers=layers, weight_name=path.name)
    return path
