"""The CyberImage and A1111 bot dialects: their mapping tables cover every value of our enums,
and their pure translations (plain fakes, no I/O)."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from schemas.catalog import SAMPLERS, TINY_MODEL_ID, Catalog, ModelLimits, tiny_model_entry
from schemas.jobs import GenerationSettings, JobDocument, JobStatus, LoraRef
from schemas.library import Layer, Session, SessionBody, SettingsInput
from schemas.settings import Settings
from services.ingress.dialects import (
    A1111BotRoutes,
    CyberImageMcpRoutes,
    CyberImageRoutes,
    OpenAIRoutes,
    cyberimage,
    cyberimage_mcp,
    enabled_routes,
)
from services.ingress.dialects import a1111_library as bot
from services.ingress.dialects import a1111_mapping as a1111
from services.ingress.dialects.a1111_types import GenerationBody, Img2ImgBody
from services.ingress.dialects.cyberimage_types import GenerateBody, GenerateSettings
from services.ingress.domain import errors
from services.ingress.domain.errors import DomainError, Invalid

SMALL = msgspec.structs.replace(tiny_model_entry(Path("/nowhere")), limits=ModelLimits(max_width=512, max_height=512,
                                                                                       max_steps=20))
CATALOG = Catalog(models={TINY_MODEL_ID: SMALL}, default=TINY_MODEL_ID, styles={})
DOMAIN_ERRORS = [kind for kind in vars(errors).values()
                 if isinstance(kind, type) and issubclass(kind, DomainError) and kind is not DomainError]
NOW = datetime(2025, 1, 4, 12, tzinfo=UTC)


@pytest.mark.parametrize("status", typing.get_args(JobStatus))
def test_every_job_status_maps_to_a_status_each_seed_has(status):
    assert cyberimage.STATUSES[status] in ("pending", "processing", "completed", "failed")
    assert a1111.STATUSES[status] in ("queued", "processing", "completed", "failed")


@pytest.mark.parametrize("kind", DOMAIN_ERRORS)
def test_every_domain_error_has_a_status_in_each_dialect(kind):
    for table in (cyberimage.ERRORS, a1111.ERRORS):
        assert any(issubclass(kind, mapped) for mapped in table), kind
        assert all(400 <= status < 600 for status in table.values())


@pytest.mark.parametrize("field", [f.name for f in msgspec.structs.fields(Layer)
                                   if f.name in ("model", "negative_prompt")] +
                         [f"settings.{name}" for name in ("sampler", "num_inference_steps", "guidance_scale", "width",
                                                          "height", "seed", "batch_size", "batch_count", "strength")])
def test_custom_settings_reach_session_fields_and_read_back_under_one_name(field):
    keys = [key for key, path in bot.CUSTOM_SETTINGS.items() if path == field]
    assert keys, field
    assert bot.READ_BACK[field] == keys[0]


def test_every_custom_setting_names_a_real_session_field():
    settings_fields = {f.name for f in msgspec.structs.fields(SettingsInput)}
    for path in bot.CUSTOM_SETTINGS.values():
        assert path.removeprefix("settings.") in settings_fields if path.startswith("settings.") \
            else path in SessionBody.__struct_fields__


def test_custom_settings_merge_and_read_back():
    body = bot.with_settings(SessionBody(), {"preferred_sampler": "DPM++ 2M Karras", "steps": 12,
                                             "checkpoint": "tiny-sd.safetensors [abc123]"}, CATALOG)
    assert body.settings.sampler == "DPM++ 2M Karras" and body.settings.num_inference_steps == 12
    assert body.model == TINY_MODEL_ID
    assert bot.custom_settings(body) == {"preferred_sampler": "DPM++ 2M Karras", "default_steps": 12,
                                         "checkpoint": TINY_MODEL_ID}
    cleared = bot.with_settings(body, {"default_steps": None}, CATALOG)
    assert cleared.settings.num_inference_steps is None
    with pytest.raises(Invalid, match=r"^clip_skip: "):
        bot.with_settings(body, {"clip_skip": 2}, CATALOG)
    with pytest.raises(Invalid, match=r"^checkpoint: "):
        bot.with_settings(body, {"checkpoint": "animefull_final.safetensors"}, CATALOG)


def test_presets_belong_to_their_user_id():
    preset = bot.preset_body("user123", "p", None, {"steps": 3}, CATALOG)
    assert bot.owns("user123", preset.id) and not bot.owns("user12", preset.id)
    assert not bot.owns("user", "user123.abc")
    with pytest.raises(Invalid, match=r"^user_id: "):
        bot.check_user("has space")


# -- CyberImage ---------------------------------------------------------------------------------------------

def test_cyberimage_model_names_map_to_the_default_model():
    for name in (*cyberimage.ALIASES, None, "anything-else"):
        assert cyberimage.model_entry(name, CATALOG).id == TINY_MODEL_ID


def test_cyberimage_sizes_and_steps_are_clamped_to_the_model_keeping_the_aspect():
    body = GenerateBody(prompt="x", model_id="flux-1", settings=GenerateSettings(
        width=1024, height=2048, num_inference_steps=35, num_images=20, guidance_scale=8.0, max_sequence_length=512))
    request, notes = cyberimage.job_request(body, CATALOG)
    s = request.settings
    assert (s.width, s.height, s.num_inference_steps, s.num_images) == (256, 512, 20, 8)
    assert len(notes) == 2 and "1024x2048 became 256x512" in notes[1]
    with pytest.raises(Invalid, match=r"^settings.num_images"):
        cyberimage.job_request(GenerateBody(prompt="x", settings=GenerateSettings(num_images=0)), CATALOG)
    with pytest.raises(Invalid, match="guidance_scale"):
        cyberimage.job_request(GenerateBody(prompt="x", settings=GenerateSettings(guidance_scale=99)), CATALOG)


def _doc(status: JobStatus, **changes) -> JobDocument:
    settings = GenerationSettings(num_images=1, num_inference_steps=4, guidance_scale=7.5, width=64, height=64, seed=5)
    return JobDocument(id="job-1", status=status, model=TINY_MODEL_ID, prompt="p", original_prompt="p",
                       settings=settings, created_at=NOW, updated_at=NOW, **changes)


@pytest.mark.parametrize("status", typing.get_args(JobStatus))
def test_cyberimage_status_answer_for_every_status(status):
    answer = cyberimage.status_answer(_doc(status, message="why"), "http://h:1")
    assert answer.status == cyberimage.STATUSES[status]
    assert answer.progress.failed is (answer.status == "failed")
    assert (answer.error is not None) is (answer.status == "failed")
    if status == "cancelled":
        assert "cancelled" in answer.error


def test_cyberimage_mcp_generate_params_are_the_rest_body():
    body = cyberimage_mcp._generate_body({"prompt": "x", "model": "flux-2", "negative_prompt": "",
                                          "settings": {"num_images": 2, "callback_steps": 3}})
    assert body.model_id == "flux-2" and body.negative_prompt is None and body.settings.num_images == 2
    with pytest.raises(Invalid, match="prompt"):
        cyberimage_mcp._generate_body({})


def test_switched_off_dialects_are_not_served():
    routes = enabled_routes(Settings(dialects="openai,chutes"))
    assert CyberImageRoutes not in routes and A1111BotRoutes not in routes and OpenAIRoutes in routes
    assert {CyberImageRoutes, CyberImageMcpRoutes, A1111BotRoutes} <= set(enabled_routes(Settings()))


# -- A1111 bot ----------------------------------------------------------------------------------------------

def _session(**fields) -> Session:
    return Session(id="user123", created_at=NOW, updated_at=NOW, **fields)


def test_a1111_request_names_the_session_and_takes_loras_from_the_prompt():
    body = GenerationBody(user_id="user123", prompt="a fox <lora:fox:0.6>", checkpoint="animefull_final.safetensors",
                          vae="vae-ft-mse", sampler_name="DPM++ 2M Karras", steps=150, width=2048, height=1024,
                          batch_count=2, batch_size=4, seed=-1)
    request = a1111.job_request(body, _session(), CATALOG)
    assert request.session == "user123" and request.model is None  # unknown checkpoint: session's, else default
    assert request.prompt == "a fox" and [(lora.name, lora.weight) for lora in request.loras] == [("fox", 0.6)]
    s = request.settings
    assert (s.num_inference_steps, s.width, s.height, s.batch_count, s.batch_size) == (20, 512, 256, 2, 4)
    assert s.sampler == "DPM++ 2M Karras"


def test_a1111_left_out_fields_are_left_to_the_session():
    request = a1111.job_request(GenerationBody(user_id="u", prompt="x"), _session(), CATALOG)
    assert request.settings == SettingsInput() and request.negative_prompt is None


def test_a1111_refusals_name_the_field():
    for body, field in ((GenerationBody(user_id="u", prompt="x", sampler_name="Nope"), "sampler_name"),
                        (GenerationBody(user_id="u", prompt="x", batch_count=3, batch_size=3), "batch_count")):
        with pytest.raises(Invalid, match=rf"^{field}: "):
            a1111.job_request(body, _session(), CATALOG)
    assert "DPM++ 2M Karras" in SAMPLERS  # the bot's default sampler exists


def test_a1111_bodies_take_nulls_and_validate_bounds_as_fastapi():
    assert msgspec.convert({"user_id": "u", "prompt": "x", "steps": None, "enable_hr": None}, GenerationBody).steps \
        is None
    for field, value in (("steps", 151), ("cfg_scale", 0.5), ("width", 32), ("batch_size", 5), ("seed", -2)):
        with pytest.raises(msgspec.ValidationError, match=field):
            msgspec.convert({"user_id": "u", "prompt": "x", field: value}, GenerationBody)


def test_a1111_img2img_form_as_json_field_or_flat_fields():
    form = a1111.Img2ImgForm(image=None, request='{"user_id": "u", "prompt": "x", "steps": 3}', steps="5",
                             inpaint_full_res="true")
    body = a1111.img2img_body(form)
    assert isinstance(body, Img2ImgBody) and body.steps == 5 and body.inpaint_full_res is True
    flat = a1111.img2img_body(a1111.Img2ImgForm(image=None, user_id="u", prompt="x", denoising_strength="0.4"))
    assert flat.denoising_strength == 0.4
    with pytest.raises(Invalid, match=r"^request: "):
        a1111.img2img_body(a1111.Img2ImgForm(image=None, request="{nope"))


@pytest.mark.parametrize("status", typing.get_args(JobStatus))
def test_a1111_job_status_for_every_status(status):
    answer = a1111.job_status(_doc(status, loras=(LoraRef("fox", 0.8),)))
    assert answer.status == a1111.STATUSES[status] and 0.0 <= answer.progress <= 1.0
    assert (answer.progress == 1.0) is (status == "completed")


def test_a1111_info_appends_the_loras_to_the_prompt():
    found = a1111.info(_doc("completed", loras=(LoraRef("fox", 0.8),)), [])
    assert found["prompt"] == "p <lora:fox:0.8>" and found["all_seeds"] == [5]
