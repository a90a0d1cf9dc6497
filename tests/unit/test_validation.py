"""Job requests are checked against the catalog before anything is queued; errors name the field."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import msgspec
import pytest
from PIL import Image

from schemas.api import JobRequest, LoraInput, SettingsInput
from schemas.catalog import parse_catalog
from schemas.layout import DataLayout
from schemas.settings import Settings
from services.ingress.domain.errors import Invalid
from services.ingress.requests import resolve_job

CATALOG = parse_catalog(
    """
default = "tiny-sd"
[models.big]
source = "org/big-model"
family = "sdxl"
[models.big.defaults]
width = 1024
height = 1024
num_inference_steps = 25
[models.big.limits]
max_width = 1536
max_height = 1536
max_steps = 60
[models.flux]
source = "org/flux"
family = "flux"
supports_negative_prompt = false
capabilities = ["txt2img"]
""",
    Path("/etc/darkroom/darkroom.toml"),
    Path("/srv/var"),
)
SETTINGS = Settings()
LAYOUT = DataLayout("/nonexistent/var")  # untouched unless a test asks for LoRAs or image ids


def png(size=(64, 64), mode="RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def resolve(**fields):
    settings = fields.pop("settings", {})
    request = JobRequest(prompt=fields.pop("prompt", "a red fox"), settings=SettingsInput(**settings), **fields)
    return resolve_job(request, CATALOG, SETTINGS, LAYOUT)


def test_defaults_come_from_the_model():
    spec = resolve(model="big").spec
    assert (spec.settings.width, spec.settings.height, spec.settings.num_inference_steps) == (1024, 1024, 25)
    tiny = resolve().spec
    assert tiny.model == "tiny-sd" and tiny.settings.width == 256 and tiny.settings.num_images == 1
    assert tiny.settings.sampler == "Euler" and tiny.mode == "txt2img" and tiny.settings.strength is None


def test_a_random_seed_is_chosen_and_recorded():
    seeds = {resolve(settings={"seed": -1}).spec.settings.seed for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= seed < 2**32 for seed in seeds)
    assert resolve(settings={"seed": 1234}).spec.settings.seed == 1234


def test_a1111_batch_size_and_count_make_num_images():
    settings = resolve(settings={"batch_size": 2, "batch_count": 3}).spec.settings
    assert (settings.num_images, settings.batch_size) == (6, 2)
    assert resolve(settings={"num_images": 4}).spec.settings.batch_size == 4


def test_inputs_decide_the_mode_and_the_size():
    img2img = resolve(init_image=png((100, 72)))
    assert img2img.spec.mode == "img2img" and img2img.spec.settings.strength == 0.75
    assert (img2img.spec.settings.width, img2img.spec.settings.height) == (96, 72), "rounded down to multiples of 8"
    inpaint = resolve(init_image=png(), mask_image=png(mode="L"), settings={"strength": 0.4})
    assert inpaint.spec.mode == "inpaint" and inpaint.spec.settings.strength == 0.4
    assert inpaint.inputs.mask_image.width == 64


def test_hires_is_resolved_to_its_final_size():
    hires = resolve(settings={"width": 64, "height": 96, "enable_hr": True, "hr_scale": 1.5}).spec.settings.hires
    assert (hires.width, hires.height, hires.scale, hires.denoising_strength, hires.steps) == (96, 144, 1.5, 0.7, 8)


def test_ignored_fields_are_said_not_silently_dropped():
    flux = resolve(model="flux", negative_prompt="blurry").spec
    assert flux.negative_prompt is None
    assert flux.notices == ("negative prompt ignored: model 'flux' does not use one",)
    assert resolve(settings={"strength": 0.5}).spec.notices == ("strength ignored: it applies to img2img and inpaint",)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"settings": {"width": 100}}, "settings.width must be a multiple of 8, got 100"),
        ({"settings": {"height": 2048}}, "settings.height 2048 is over the limit of 1024 for model 'tiny-sd'"),
        ({"settings": {"num_inference_steps": 51}}, "settings.num_inference_steps must be 1-50"),
        ({"model": "nope"}, "model: unknown model 'nope'; valid models: big, flux, tiny-sd"),
        ({"style": "noir"}, "style: unknown style 'noir'; valid styles: anime, cyberpunk"),
        ({"prompt": "   "}, "prompt must not be empty"),
        ({"prompt": "x" * 501}, "prompt is 501 characters; the limit is 500"),
        ({"negative_prompt": "y" * 600}, "negative_prompt is 600 characters"),
        ({"settings": {"sampler": "Euler b"}}, "settings.sampler: unknown sampler 'Euler b'; valid samplers: Euler, Euler a,"),
        ({"settings": {"batch_size": 4, "batch_count": 3}}, "settings.batch_size x settings.batch_count must be at most 8, got 12"),
        ({"settings": {"num_images": 3, "batch_size": 2}}, "settings.num_images (3) disagrees with batch_size x batch_count (2)"),
        ({"settings": {"enable_hr": True, "hr_scale": 4.0, "width": 512, "height": 512}},
         "settings.hr_scale 4 gives 2048x2048: hires width 2048 is over the limit of 1024"),
        ({"init_image": "not base64!!"}, "init_image is not valid base64"),
        ({"init_image": base64.b64encode(b"GIF89a definitely not an image").decode()}, "init_image is not an image Darkroom can read (PNG, JPEG or WebP)"),
        ({"init_image": png((2048, 64))}, "init_image is 2048x64; the model accepts at most 1024x1024"),
        ({"init_image": png((64, 64)), "mask_image": png((32, 32), "L")},
         "mask_image is 32x32; it must be the init image's size, 64x64"),
        ({"mask_image": png()}, "mask_image needs an init_image"),
        ({"init_image": png(), "init_image_id": "x"}, "give init_image or init_image_id, not both"),
        ({"init_image_id": "../../etc/passwd"}, "init_image_id: no image '../../etc/passwd'"),
        ({"init_image": png(), "settings": {"enable_hr": True}}, "settings.enable_hr works with txt2img only"),
        ({"model": "flux", "init_image": png()}, "model 'flux' cannot do img2img; it can do txt2img"),
        ({"loras": [LoraInput(name="../secret")]}, "loras[0].name: unknown LoRA '../secret'; available: none"),
    ],
)
def test_bad_requests_name_what_is_wrong(fields, message):
    with pytest.raises(Invalid) as caught:
        resolve(**fields)
    assert message in caught.value.message


def test_a_model_over_its_own_limits_is_refused():
    with pytest.raises(Invalid, match=r"settings.width 2048 is over the limit of 1536 for model 'big'"):
        resolve(model="big", settings={"width": 2048})


def test_request_structs_reject_unknown_fields_by_name():
    with pytest.raises(msgspec.ValidationError, match="unknown field `steps`"):
        msgspec.json.decode(b'{"prompt": "x", "settings": {"steps": 3}}', type=JobRequest)
