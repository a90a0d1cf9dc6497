"""Session-wide private RabbitMQ, and per-test namespaces and data directories."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ops.broker import PrivateBroker
from schemas.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def plain_logs() -> None:
    """Service logs as JSON lines in test output (tracebacks as plain text, not boxes)."""
    from services.logs import configure

    configure(Settings(log_format="json", log_level="info"), "test")


@pytest.fixture(scope="session")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker | None]:
    """The session's own RabbitMQ node, on a free loopback port; None with DARKROOM_TEST_AMQP_URL."""
    if os.environ.get("DARKROOM_TEST_AMQP_URL"):
        yield None
        return
    broker = PrivateBroker(tmp_path_factory.mktemp("rabbitmq"), name="darkroom-test").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def amqp_url(private_broker: PrivateBroker | None) -> str:
    """A real RabbitMQ for the whole session: ours (or DARKROOM_TEST_AMQP_URL)."""
    return private_broker.url if private_broker is not None else os.environ["DARKROOM_TEST_AMQP_URL"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny model, built once per session and copied into each data dir that needs it."""
    from pipelines.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A random LoRA for the tiny model (it visibly changes the output)."""
    from pipelines.tiny import build_tiny_lora

    return build_tiny_lora(tmp_path_factory.mktemp("loras") / "fox.safetensors", tiny_model)


@pytest.fixture(scope="session")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model (other random weights), for catalogs with two models."""
    from pipelines.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-b", seed=1)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "var"
    folder.mkdir()
    return folder


@pytest.fixture
def settings(amqp_url: str, data_dir: Path) -> Settings:
    """Settings for one test: its own namespace (exchanges and queues) and its own data dir."""
    return Settings(
        data_dir=str(data_dir),
        amqp_url=amqp_url,
        namespace=f"t{secrets.token_hex(4)}",
        config_path=str(data_dir / "darkroom.toml"),
        progress_rate=0.0,  # every step: tests assert the full sequence
        auth="off",  # the auth tests turn it on
        anonymous_rate="none",
    )


@pytest.fixture
def with_tiny_model(settings: Settings, tiny_model: Path) -> Settings:
    shutil.copytree(tiny_model, Path(settings.data_dir) / "models" / "tiny-sd")
    return settings


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator:
    from tests.support import connect, drop_namespace

    connection = await connect(settings)
    try:
        yield connection
    finally:
        await drop_namespace(connection)
        await connection.close()


@pytest.fixture
async def tap(bus):
    from tests.support import EventTap

    return await EventTap(bus).start()


TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier (the folder it lives in), so `-m integration` selects a tier."""
    for item in items:
        for tier in TIERS:
            if f"tests/{tier}/" in item.nodeid or f"tests{os.sep}{tier}{os.sep}" in str(item.path):
                item.add_marker(getattr(pytest.mark, tier))
                break
