"""AUTOMATIC1111's API bodies, field for field (its defaults where Darkroom has the same notion;
None where Darkroom's model default applies). A1111 ignores fields it does not know, and so do
these; fields it knows but Darkroom does not do are refused by `sdapi` when set to anything but
their neutral value (see NEUTRAL there), never ignored silently."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

Seed = Annotated[int, msgspec.Meta(ge=-1, le=2**32 - 1)]
Count = Annotated[int, msgspec.Meta(ge=1, le=8)]
Side = Annotated[int, msgspec.Meta(ge=8, le=16384)]
Steps = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Cfg = Annotated[float, msgspec.Meta(ge=0.0, le=50.0)]
Text = Annotated[str, msgspec.Meta(max_length=100_000)]
Small = Annotated[float, msgspec.Meta(ge=-1000.0, le=1000.0)]


class GenerationBody(msgspec.Struct, kw_only=True):
    """Fields txt2img and img2img share."""

    prompt: Text = ""
    negative_prompt: Text = ""
    styles: list[str] | None = None
    seed: Seed = -1
    subseed: int = -1
    subseed_strength: Small = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None  # deprecated in A1111: sampler_name wins
    scheduler: str | None = None
    batch_size: Count = 1
    n_iter: Count = 1
    steps: Steps | None = None
    cfg_scale: Cfg | None = None
    width: Side | None = None
    height: Side | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: Small | None = None
    denoising_strength: Fraction | None = None
    s_min_uncond: Small | None = None
    s_churn: Small | None = None
    s_tmax: Small | None = None
    s_tmin: Small | None = None
    s_noise: Small | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: Small | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    infotext: str | None = None
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = []
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = {}


class Txt2ImgBody(GenerationBody, kw_only=True):
    """POST /sdapi/v1/txt2img."""

    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: Annotated[float, msgspec.Meta(ge=1.0, le=4.0)] = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: Text = ""
    hr_negative_prompt: Text = ""
    firstpass_image: str | None = None


class Img2ImgBody(GenerationBody, kw_only=True):
    """POST /sdapi/v1/img2img: the first of `init_images` (base64), optionally `mask` (white = repaint)."""

    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: Small | None = None
    mask: str | None = None
    mask_blur_x: Annotated[int, msgspec.Meta(ge=0, le=256)] = 4
    mask_blur_y: Annotated[int, msgspec.Meta(ge=0, le=256)] = 4
    mask_blur: Annotated[int, msgspec.Meta(ge=0, le=256)] | None = None
    mask_round: bool = True
    inpainting_fill: Annotated[int, msgspec.Meta(ge=0, le=3)] = 0
    inpaint_full_res: bool | int = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: Annotated[int, msgspec.Meta(ge=0, le=1)] = 0
    initial_noise_multiplier: Small | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


class GenerationAnswer(msgspec.Struct, kw_only=True):
    """txt2img/img2img: base64 PNGs, the request as received, and `info`, a JSON string."""

    images: list[str]
    parameters: dict[str, Any]
    info: str


class ProgressState(msgspec.Struct, kw_only=True):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressAnswer(msgspec.Struct, kw_only=True):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class PngInfoBody(msgspec.Struct, kw_only=True):
    image: Annotated[str, msgspec.Meta(min_length=1)]


class PngInfoAnswer(msgspec.Struct, kw_only=True):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class SdModel(msgspec.Struct, kw_only=True):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class Sampler(msgspec.Struct, kw_only=True):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class Scheduler(msgspec.Struct, kw_only=True):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class Lora(msgspec.Struct, kw_only=True):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = {}


class Upscaler(msgspec.Struct, kw_only=True):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    """A1111's error answer (its api middleware's shape)."""

    error: str
    detail: str
    body: str = ""
    errors: str = ""
