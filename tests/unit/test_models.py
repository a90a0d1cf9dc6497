"""The models stage's pure parts: which files a pipeline needs, names, the runtime catalog's TOML."""

from __future__ import annotations

import msgspec
import pytest

from schemas.catalog import (
    ModelDefaults,
    ModelEntry,
    ModelFile,
    PulledModel,
    RuntimeCatalog,
    model_name_from_source,
    parse_runtime_catalog,
    pulled_entry,
)
from services.models.downloads import source_kind
from services.models.files import UnusableSource, check_name, choose_pipeline_files, choose_single_file
from services.models.inspect import defaults_for
from services.models.store import toml_dumps

SD15 = [
    ".gitattributes", "README.md", "model_index.json", "v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt",
    "feature_extractor/preprocessor_config.json", "safety_checker/config.json", "safety_checker/model.safetensors",
    "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin", "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.bin",
]


def test_a_pipeline_pull_takes_configs_and_default_safetensors_only():
    chosen = choose_pipeline_files(SD15)
    assert chosen == [
        "model_index.json", "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]


def test_pickles_are_chosen_only_when_a_component_has_nothing_else_and_shards_keep_their_index():
    chosen = choose_pipeline_files([
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
        "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.json", "text_encoder/model.fp16.safetensors.index.json",
    ])
    assert "unet/diffusion_pytorch_model.bin" in chosen
    assert {"text_encoder/model-00001-of-00002.safetensors", "text_encoder/model.safetensors.index.json"} <= set(chosen)
    assert "text_encoder/model.fp16.safetensors.index.json" not in chosen
    with pytest.raises(UnusableSource, match=r"model_index\.json"):
        choose_pipeline_files(["unet/config.json"])


def test_single_files_and_loras():
    assert choose_single_file(["README.md", "a.safetensors"], lora=False) == "a.safetensors"
    assert choose_single_file(["x.safetensors", "pytorch_lora_weights.safetensors"], lora=True) == \
        "pytorch_lora_weights.safetensors"
    assert choose_single_file(["a.ckpt", "a.safetensors"], lora=False) == "a.safetensors"
    with pytest.raises(UnusableSource, match="several"):
        choose_single_file(["a.safetensors", "b.safetensors"], lora=False)


def test_names_and_sources():
    assert model_name_from_source("runwayml/stable-diffusion-v1-5") == "stable-diffusion-v1-5"
    assert model_name_from_source("https://x.org/dl/My Model.safetensors?token=1") == "My-Model"
    assert check_name("../etc") and check_name("") and check_name("ok-name_1.5") is None
    assert [source_kind(s) for s in ("org/name", "https://a/b.safetensors", "/tmp")] == ["hub", "url", "path"]
    with pytest.raises(UnusableSource):
        source_kind("not a source!")


def test_the_runtime_catalog_round_trips_through_toml_and_resolves_against_the_data_dir(tmp_path):
    entry = ModelEntry(source="models/x/x.safetensors", config="models/tiny-sd", family="sdxl",
                       defaults=ModelDefaults(width=1024, height=1024))
    catalog = RuntimeCatalog(
        models={"x": PulledModel(origin="org/x", revision="abc", path="models/x", entry=entry,
                                 files=[ModelFile(path="x.safetensors", size=3, sha256="a" * 64)])},
        loras={"fox v2": PulledModel(kind="lora", origin="https://h/fox.safetensors", path="models/loras/fox v2.safetensors")},
    )
    text = toml_dumps(msgspec.to_builtins(catalog))
    assert parse_runtime_catalog(text, tmp_path / "models.toml") == catalog
    resolved = pulled_entry("x", catalog.models["x"], tmp_path)
    assert resolved.id == "x" and resolved.source == str(tmp_path / "models/x/x.safetensors")
    assert resolved.config == str(tmp_path / "models/tiny-sd")


def test_defaults_follow_the_family():
    defaults, limits = defaults_for("sdxl", 1024)
    assert (defaults.width, defaults.guidance_scale, limits.max_width) == (1024, 7.0, 2048)
    assert defaults_for("flux", 1024)[0].guidance_scale == 3.5
