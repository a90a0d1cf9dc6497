"""Process plumbing shared by every service: settings, logs, signals, the bus."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import structlog

from schemas.catalog import Catalog, CatalogError, load_catalog
from schemas.layout import DataLayout
from schemas.settings import Settings, SettingsError
from schemas.topology import Topology
from services import logs
from services.bus import BrokerUnavailable, Bus

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"

ServiceMain = Callable[[Settings, asyncio.Event], Awaitable[None]]


def run_service(name: str, main: ServiceMain) -> None:
    """Run one service until SIGINT or SIGTERM; exit non-zero with a clear log line on fatal errors."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"darkroom {name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log = logs.configure(settings, name)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(settings, stop)

    try:
        _run_loop(runner())
    except (CatalogError, BrokerUnavailable) as exc:
        log.error("cannot start", error=str(exc))
        raise SystemExit(1) from None
    log.info("stopped")


def _run_loop(coroutine) -> None:
    """uvloop when installed (it comes with uvicorn[standard]): lower per-message latency."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    uvloop.run(coroutine)


def layout(settings: Settings) -> DataLayout:
    data = DataLayout(str(settings.data_path))
    data.ensure()
    return data


def catalog(settings: Settings) -> Catalog:
    """The model catalog and styles from darkroom.toml (absent is fine: built-ins only)."""
    return load_catalog(Path(settings.config_path).resolve(), settings.data_path)


@asynccontextmanager
async def connected(settings: Settings, name: str) -> AsyncIterator[Bus]:
    """A bus for the service, closed (consumers cancelled, in-flight publishes flushed) on exit."""
    bus = await Bus.connect(settings.amqp_url or DEFAULT_AMQP_URL, Topology(settings.namespace), name=name)
    structlog.get_logger(name).info("connected to broker", namespace=settings.namespace)
    try:
        yield bus
    finally:
        await bus.close()
