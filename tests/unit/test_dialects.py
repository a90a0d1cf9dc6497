"""The dialects' mapping tables cover every value of our enums, and their pure translations."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from pipelines.png import a1111_parameters
from schemas.catalog import SAMPLERS, TINY_MODEL_ID, Catalog, tiny_model_entry
from schemas.jobs import GenerationSettings, JobSpec, JobStatus, LoraRef
from services.ingress.dialects import openai as oai
from services.ingress.dialects import sdapi
from services.ingress.dialects.sdapi_types import Txt2ImgBody
from services.ingress.domain import errors
from services.ingress.domain.errors import DomainError, Invalid
from services.ingress.domain.pnginfo import parse_parameters
from services.ingress.domain.waiting import StillRunning

CATALOG = Catalog(models={TINY_MODEL_ID: tiny_model_entry(Path("/nowhere"))}, default=TINY_MODEL_ID, styles={})
DOMAIN_ERRORS = [kind for kind in vars(errors).values()
                 if isinstance(kind, type) and issubclass(kind, DomainError) and kind is not DomainError]


@pytest.mark.parametrize("kind", [*DOMAIN_ERRORS, StillRunning])
def test_every_domain_error_has_a_status_in_each_dialect(kind):
    assert any(issubclass(kind, mapped) for mapped in oai.ERRORS), kind
    assert any(issubclass(kind, mapped) for mapped in sdapi.ERRORS), kind
    assert all(400 <= status < 600 for status, *_ in [*oai.ERRORS.values(), *sdapi.ERRORS.values()])


@pytest.mark.parametrize("status", typing.get_args(JobStatus))
def test_every_job_status_is_mapped(status):
    assert status in oai.OUTCOMES and status in sdapi.OUTCOMES and status in sdapi.TEXTINFO


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_is_reachable_from_an_a1111_name_and_scheduler(name):
    base, scheduler = (name[: -len(" Karras")], "karras") if name.endswith(" Karras") else (name, "automatic")
    assert sdapi.sampler_name(Txt2ImgBody(sampler_name=base, scheduler=scheduler)) == name
    assert sdapi.sampler_name(Txt2ImgBody(sampler_name=name)) == name  # A1111 < 1.9 names


def test_every_alias_has_sizes_and_every_quality_and_style_maps():
    assert set(oai.SIZES) == set(oai.ALIASES)
    for quality in oai.QUALITY_STEPS:
        request = oai.generation_request(oai.GenerateRequest(prompt="x", model="dall-e-2", size="256x256",
                                                             quality=quality), _settings(), CATALOG)
        assert 1 <= request.settings.num_inference_steps <= CATALOG.models[TINY_MODEL_ID].limits.max_steps
    for style, ours in oai.STYLES.items():
        assert oai.generation_request(oai.GenerateRequest(prompt="x", style=style, size="256x256"),
                                      _settings(), CATALOG).style == ours


def _settings():
    from schemas.settings import Settings
    return Settings()


def test_sizes_are_clamped_to_the_model_keeping_the_aspect():
    entry = CATALOG.models[TINY_MODEL_ID]
    assert oai._size("1792x1024", "dall-e-3", entry) == (1024, 584)
    with pytest.raises(Invalid):
        oai._size("100x100", "dall-e-2", entry)


def test_loras_come_out_of_the_prompt_as_a1111_reads_them():
    assert sdapi.split_loras("a fox <lora:fox:0.5> in snow <lora:ink>") == (
        "a fox in snow", [{"name": "fox", "weight": 0.5}, {"name": "ink", "weight": 1.0}])
    with pytest.raises(Invalid):
        sdapi.split_loras("<lora:fox:heavy>")


def test_unsupported_a1111_fields_are_refused_by_name():
    for name in sdapi.NEUTRAL:
        if name in Txt2ImgBody.__struct_fields__:
            body = Txt2ImgBody(prompt="x", **{name: "something else"})
            with pytest.raises(Invalid, match=f"^{name}:"):
                sdapi.job_request(body, TINY_MODEL_ID, CATALOG)
    request, _ = sdapi.job_request(Txt2ImgBody(prompt="x"), TINY_MODEL_ID, CATALOG)
    assert request.model == TINY_MODEL_ID


def test_parameters_written_by_darkroom_parse_back():
    spec = JobSpec(prompt="a red fox, snow", negative_prompt="blurry", model="tiny-sd", loras=(LoraRef("fox", 0.5),),
                   settings=GenerationSettings(num_images=1, num_inference_steps=3, guidance_scale=6.5, width=64,
                                               height=56, seed=42, sampler="Euler"))
    parsed = parse_parameters(a1111_parameters(spec, seed=42, width=64, height=56))
    assert parsed["Prompt"] == "a red fox, snow <lora:fox:0.5>" and parsed["Negative prompt"] == "blurry"
    assert (parsed["Steps"], parsed["Sampler"], parsed["CFG scale"], parsed["Seed"]) == ("3", "Euler", "6.5", "42")
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Model"]) == ("64", "56", "tiny-sd")


def test_a1111_text_with_quoted_values_and_multiline_prompts_parses():
    text = ('masterpiece,\nbest quality\nNegative prompt: ugly\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, '
            'CFG scale: 7, Seed: 1, Size: 512x768, Model hash: abc, Lora hashes: "fox: 1234, ink: 5678", Version: v1.10')
    parsed = parse_parameters(text)
    assert parsed["Prompt"] == "masterpiece,\nbest quality" and parsed["Schedule type"] == "Karras"
    assert parsed["Lora hashes"] == "fox: 1234, ink: 5678" and parsed["Size-2"] == "768"
