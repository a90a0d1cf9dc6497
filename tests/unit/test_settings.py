"""DARKROOM_* settings: defaults that work on a laptop, and bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.catalog import CatalogError, parse_catalog
from schemas.settings import Settings, SettingsError, broker_urls, parse_size
from services.styles import UnknownStyle, enrich_prompt


def test_defaults_bind_loopback_port_8000_and_var():
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.data_dir, settings.amqp_url) == ("127.0.0.1", 8000, "./var", None)


def test_values_are_read_and_converted():
    settings = Settings.from_env({"DARKROOM_PORT": "9000", "DARKROOM_MEMORY_BUDGET": "2GiB", "DARKROOM_HOST": "0.0.0.0"})
    assert (settings.port, settings.memory_budget, settings.host) == (9000, 2 * 1024**3, "0.0.0.0")


@pytest.mark.parametrize(("env", "message"), [
    ({"DARKROOM_PORT": "eighty"}, "DARKROOM_PORT must be a whole number, got 'eighty'"),
    ({"DARKROOM_MEMORY_BUDGET": "lots"}, "DARKROOM_MEMORY_BUDGET must be a size"),
    ({"DARKROOM_LOG_FORMAT": "xml"}, "log_format"),
])
def test_bad_values_are_named(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_broker_tls_files_must_exist_and_come_in_pairs():
    with pytest.raises(SettingsError, match=r"DARKROOM_BROKER_CA names '/nowhere/ca\.pem', which is not a file"):
        Settings.from_env({"DARKROOM_BROKER_CA": "/nowhere/ca.pem"})
    with pytest.raises(SettingsError, match="DARKROOM_BROKER_TLS_CERT and DARKROOM_BROKER_TLS_KEY go together"):
        Settings.from_env({"DARKROOM_BROKER_TLS_CERT": __file__})
    both = Settings.from_env({"DARKROOM_BROKER_CERT": __file__, "DARKROOM_BROKER_KEY": __file__})
    assert both.broker_cert == both.broker_key == __file__


def test_generator_defaults_follow_the_device_unless_set():
    settings = Settings.from_env({})
    assert (settings.batch_capacity("cuda"), settings.batch_capacity("cpu")) == (8, 4)
    assert (settings.dtype, settings.overlap, settings.warmup, settings.compile) == ("auto", "on", "on", "auto")
    chosen = Settings.from_env({"DARKROOM_MAX_BATCH": "2", "DARKROOM_BATCH_WAIT_MS": "5", "DARKROOM_OVERLAP": "off",
                                "DARKROOM_COMPILE": "off", "DARKROOM_DTYPE": "bfloat16"})
    assert (chosen.batch_capacity("cuda"), chosen.batch_wait_ms, chosen.overlap, chosen.compile, chosen.dtype) == (
        2, 5.0, "off", "off", "bfloat16")
    with pytest.raises(SettingsError, match="compile"):
        Settings.from_env({"DARKROOM_COMPILE": "maybe"})


def test_sizes():
    assert parse_size("x", "512MB") == 512 * 1000**2
    assert parse_size("x", "1.5GiB") == int(1.5 * 1024**3)
    assert parse_size("x", "4096") == 4096


def test_catalog_resolves_relative_sources_and_keeps_hub_ids():
    catalog = parse_catalog(
        '[models.local]\nsource = "./models/sd15"\n[models.hub]\nsource = "stabilityai/sd-turbo"\n',
        Path("/etc/darkroom/darkroom.toml"), Path("/srv/var"),
    )
    assert catalog.models["local"].source == "/etc/darkroom/models/sd15"
    assert catalog.models["hub"].source == "stabilityai/sd-turbo"
    assert catalog.models["tiny-sd"].source == "/srv/var/models/tiny-sd"
    assert catalog.default == "tiny-sd"


def test_catalog_errors_say_where():
    with pytest.raises(CatalogError, match=r"darkroom.toml"):
        parse_catalog('[models.x]\nsource = "a"\nwidth = 3\n', Path("darkroom.toml"), Path("var"))
    with pytest.raises(CatalogError, match="default model 'nope' is not in"):
        parse_catalog('default = "nope"\n', Path("darkroom.toml"), Path("var"))


def test_styles_wrap_the_prompt_and_add_negatives():
    from schemas.catalog import DEFAULT_STYLES

    prompt, negative = enrich_prompt("a castle on a hill", "people", "fantasy", DEFAULT_STYLES)
    assert prompt.startswith("a castle on a hill, epic fantasy")
    assert negative == "people, modern, blurry, low quality"
    assert enrich_prompt("as is", None, None, DEFAULT_STYLES) == ("as is", None)
    with pytest.raises(UnknownStyle, match="valid styles: anime"):
        enrich_prompt("x", None, "noir", DEFAULT_STYLES)


def test_the_broker_url_may_name_a_clusters_nodes():
    raw = "amqp://u:p@h1:5672/, amqps://u:p@h2:5671/vh"
    assert broker_urls(Settings.from_env({"DARKROOM_AMQP_URL": raw}).amqp_url) == (
        "amqp://u:p@h1:5672/", "amqps://u:p@h2:5671/vh")


@pytest.mark.parametrize("raw, named", [
    ("amqp://u:p@h1:5672/,,amqp://u:p@h3:5672/", "address 2 of 3 is empty"),
    ("amqp://u:p@h1:5672/,http://u:secret@h2:5672/", "address 2 of 2 ('http://u:***@h2:5672/') must start with amqp://"),
    ("amqp://u:p@h1:5672/,", "address 2 of 2 is empty"),
    ("amqps://u:p@:5671/", "address 1 of 1 ('amqps://u:***@:5671/') names no host"),
])
def test_a_bad_broker_address_list_is_refused_naming_the_address(raw, named):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"DARKROOM_AMQP_URL": raw})
    assert "DARKROOM_AMQP_URL" in str(error.value) and named in str(error.value)
    assert "secret" not in str(error.value)
