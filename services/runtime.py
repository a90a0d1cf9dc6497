"""Process plumbing shared by every service: settings, logs, signals, the bus (and TLS to it)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import sys
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from schemas.catalog import Catalog, CatalogError, load_catalog, runtime_catalog_path
from schemas.layout import DataLayout
from schemas.settings import Settings, SettingsError
from schemas.topology import Topology
from services import logs
from services.bus import BrokerUnavailable, Bus

# TLS to the broker: `amqps://` URLs get the CA file and client certificate the settings name
# (DARKROOM_BROKER_CA, _CERT, _KEY) as the query parameters aiormq reads (`cafile`, `certfile`,
# `keyfile`), and a process checks the broker's certificate once before connecting, so that a TLS
# failure stops it at once with the reason instead of being retried like a broker still booting.
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def broker_url(settings: Settings, url: str | None = None) -> str:
    """`url` (default: DARKROOM_AMQP_URL) with the TLS files added to each amqps:// address of it."""
    url = url or settings.amqp_url or DEFAULT_AMQP_URL
    return ",".join(_with_tls(part.strip(), settings) for part in url.split(","))


def _with_tls(url: str, settings: Settings) -> str:
    parts = urlsplit(url)
    if parts.scheme != "amqps":
        return url
    query = dict(parse_qsl(parts.query))
    for key, value in (("cafile", settings.broker_ca), ("certfile", settings.broker_cert),
                       ("keyfile", settings.broker_key)):
        if value:
            query.setdefault(key, value)
    return urlunsplit(parts._replace(query=urlencode(query)))


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The client side's TLS context, as aiormq builds it from the URL."""
    made = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.broker_ca or None)
    if settings.broker_cert:
        made.load_cert_chain(settings.broker_cert, settings.broker_key or None)
    return made


async def check_tls(settings: Settings, url: str, timeout: float = 10.0) -> None:
    """For each amqps:// address: a TLS handshake, which must succeed if the broker answers at
    all (a broker not up yet is left to the connect's retries)."""
    for part in url.split(","):
        parts = urlsplit(part.strip())
        if parts.scheme != "amqps":
            continue
        where = f"{parts.hostname}:{parts.port or 5671}"
        try:
            tls = tls_context(settings)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerUnavailable(f"TLS to the broker at {where}: the CA or client certificate cannot be used "
                                    f"(DARKROOM_BROKER_CA / _CERT / _KEY): {exc}") from exc
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, parts.port or 5671, ssl=tls), timeout)
        except ssl.SSLError as exc:
            checked = f"DARKROOM_BROKER_CA={settings.broker_ca}" if settings.broker_ca else "the system's CAs"
            raise BrokerUnavailable(f"TLS to the broker at {where} failed: {exc} (its certificate is checked "
                                    f"against {checked})") from exc
        except (OSError, TimeoutError):
            continue  # not reachable yet: Bus.connect waits for it and says so
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


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
    """The model catalog and styles from darkroom.toml (absent is fine: built-ins only), with the
    models pulled at runtime."""
    return load_catalog(Path(settings.config_path).resolve(), settings.data_path)


class CatalogView(ABC):
    """Reads like a `Catalog` (`model`, `models`, `default`, `styles`, `enrichment`) for code written
    against one, each read from `current()`: the catalog as it is now."""

    @abstractmethod
    def current(self, *, force: bool = False) -> Catalog:
        """The catalog as it is now (`force`: read it again even if nothing seems changed)."""

    def model(self, model_id: str | None):
        return self.current().model(model_id)

    @property
    def models(self):
        return self.current().models

    @property
    def default(self) -> str:
        return self.current().default

    @property
    def styles(self):
        return self.current().styles

    @property
    def enrichment(self):
        return self.current().enrichment


class LiveCatalog(CatalogView):
    """The catalog, read again whenever darkroom.toml or the runtime catalog (`state/models.toml`)
    changed: two `stat` calls per look, so a model pulled (or removed) while running is seen by the
    next request or job without a restart. A file that no longer parses keeps the last good catalog.

    """

    def __init__(self, settings: Settings):
        self.config_path = Path(settings.config_path).resolve()
        self.data_dir = settings.data_path
        self.runtime_path = runtime_catalog_path(self.data_dir)
        self._stamp = self._stamps()
        self._catalog = load_catalog(self.config_path, self.data_dir)

    def _stamps(self) -> tuple:
        def stamp(path: Path) -> tuple | None:
            try:
                st = path.stat()
            except FileNotFoundError:
                return None
            return st.st_mtime_ns, st.st_size, st.st_ino

        return stamp(self.config_path), stamp(self.runtime_path)

    def current(self, *, force: bool = False) -> Catalog:
        stamp = self._stamps()
        if force or stamp != self._stamp:
            try:
                self._catalog = load_catalog(self.config_path, self.data_dir)
                self._stamp = stamp
            except (CatalogError, OSError) as exc:
                structlog.get_logger("catalog").error("catalog changed but cannot be read; keeping the last one",
                                                      error=str(exc))
        return self._catalog



@asynccontextmanager
async def connected(settings: Settings, name: str) -> AsyncIterator[Bus]:
    """A bus for the service, closed (consumers cancelled, in-flight publishes flushed) on exit."""
    url = broker_url(settings)
    await check_tls(settings, url)
    bus = await Bus.connect(url, Topology(settings.namespace), name=name)
    bus.routing = settings.routing
    structlog.get_logger(name).info("connected to broker", namespace=settings.namespace)
    try:
        yield bus
    finally:
        await bus.close()
