"""Job requests are checked against the catalog before anything is queued; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.api import JobRequest, SettingsInput
from schemas.catalog import parse_catalog
from schemas.settings import Settings
from services.ingress.errors import ApiError
from services.ingress.handlers import resolve_job

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
""",
    Path("/etc/darkroom/darkroom.toml"),
    Path("/srv/var"),
)
SETTINGS = Settings()


def resolve(**fields):
    settings = fields.pop("settings", {})
    return resolve_job(JobRequest(prompt=fields.pop("prompt", "a red fox"), settings=SettingsInput(**settings), **fields), CATALOG, SETTINGS, None)


def test_defaults_come_from_the_model():
    spec = resolve(model="big")
    assert (spec.settings.width, spec.settings.height, spec.settings.num_inference_steps) == (1024, 1024, 25)
    tiny = resolve()
    assert tiny.model == "tiny-sd" and tiny.settings.width == 256 and tiny.settings.num_images == 1


def test_a_random_seed_is_chosen_and_recorded():
    seeds = {resolve(settings={"seed": -1}).settings.seed for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= seed < 2**32 for seed in seeds)
    assert resolve(settings={"seed": 1234}).settings.seed == 1234


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"settings": {"width": 100}}, "settings.width must be a multiple of 8, got 100"),
        ({"settings": {"height": 2048}}, "settings.height 2048 is over the limit of 1024 for model 'tiny-sd'"),
        ({"settings": {"num_inference_steps": 51}}, "settings.num_inference_steps must be 1-50"),
        ({"model": "nope"}, "model: unknown model 'nope'; valid models: big, tiny-sd"),
        ({"style": "noir"}, "style: unknown style 'noir'; valid styles: anime, cyberpunk"),
        ({"prompt": "   "}, "prompt must not be empty"),
        ({"prompt": "x" * 501}, "prompt is 501 characters; the limit is 500"),
        ({"negative_prompt": "y" * 600}, "negative_prompt is 600 characters"),
    ],
)
def test_bad_requests_name_what_is_wrong(fields, message):
    with pytest.raises(ApiError) as caught:
        resolve(**fields)
    assert caught.value.status == 400
    assert message in caught.value.message


def test_a_model_over_its_own_limits_is_refused():
    with pytest.raises(ApiError, match="settings.width 2048 is over the limit of 1536 for model 'big'"):
        resolve(model="big", settings={"width": 2048})
