"""TLS to the broker: `amqps://` URLs get the CA file and client certificate the settings name
(DARKROOM_BROKER_CA, _CERT, _KEY) as the query parameters aiormq reads (`cafile`, `certfile`,
`keyfile`), and a process checks the broker's certificate once before connecting, so that a TLS
failure stops it at once with the reason instead of being retried like a broker still booting."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from schemas.settings import Settings
from services.bus import BrokerUnavailable

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


def context(settings: Settings) -> ssl.SSLContext:
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
            tls = context(settings)
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
