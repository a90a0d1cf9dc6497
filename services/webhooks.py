"""Webhooks, shared by the ingress (which checks a job's webhook URL at submit) and the notifier
(which checks it again, signs and sends): where a webhook may go, who signs it, how it is sent.

- Where: http(s) only, and never to a private, loopback, link-local, multicast or reserved address
  unless the operator allow-listed it (`DARKROOM_WEBHOOK_ALLOW` / `[webhooks] allow`: hosts or
  CIDRs). The host is resolved and every address checked; the request then goes to the checked
  address (Host header and TLS SNI keep the name), so a DNS answer that changes in between
  cannot send it elsewhere.
- Who: the Standard Webhooks signature, `v1,` + base64 HMAC-SHA256 of `id.timestamp.body` with
  the owner key's `whsec_` secret (an installation secret under state/ when auth is off).
- How: one POST, no redirects, a timeout, at most `webhook_max_response_bytes` of the answer read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import os
import socket
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec

from schemas.keys import ApiKey, keys_dir, new_webhook_secret
from schemas.settings import Settings
from schemas.webhooks import WebhooksSection

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
RESOLVE_TIMEOUT = 5.0
INSTALLATION_SECRET = "webhook-secret"


class Refused(ValueError):
    """The URL may not be used as a webhook; the message says why."""


@dataclass(frozen=True)
class AllowList:
    """What an operator allowed webhooks to reach although it is private."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: list[str]) -> AllowList:
        hosts, networks = set(), []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def admits(self, host: str, address: Address) -> bool:
        return host in self.hosts or any(address in net for net in self.networks)


def allow_list(settings: Settings) -> AllowList:
    """`DARKROOM_WEBHOOK_ALLOW` plus darkroom.toml's `[webhooks] allow`."""
    entries = settings.webhook_allow.split(",")
    path = Path(settings.config_path)
    if path.exists():
        try:
            entries += msgspec.convert(tomllib.loads(path.read_text()).get("webhooks", {}), WebhooksSection).allow
        except (tomllib.TOMLDecodeError, msgspec.ValidationError):
            pass  # the catalog reports a bad file; webhooks then allow only the environment's list
    return AllowList.parse(entries)


def public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
                or address.is_reserved or address.is_unspecified)


@dataclass(frozen=True)
class Destination:
    """A checked webhook URL and the address to connect to."""

    url: str
    host: str
    address: Address

    def request_url(self) -> str:
        """The URL with the checked address in place of the name (the name goes in Host and SNI)."""
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        netloc = literal + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


def _split(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise Refused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise Refused("must be an http:// or https:// URL")
    if not parts.hostname:
        raise Refused("has no host")
    if parts.username or parts.password:
        raise Refused("must not carry credentials (user:password@)")
    return parts.hostname.lower().rstrip("."), parts.scheme, port


async def check(url: str, allow: AllowList) -> Destination:
    """The URL's destination, or Refused: a bad URL, an unknown host, or a private address."""
    host, _, port = _split(url)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
        except (OSError, TimeoutError):
            raise Refused(f"host {host!r} does not resolve") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    if not addresses:
        raise Refused(f"host {host!r} does not resolve")
    for address in addresses:
        if not public(address) and not allow.admits(host, address):
            raise Refused(f"{host!r} is a private, loopback or link-local address ({address}); an operator can "
                          "allow it with DARKROOM_WEBHOOK_ALLOW")
    return Destination(url=url, host=host, address=addresses[0])


# -- signing ---------------------------------------------------------------------------------------


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks `webhook-signature` header value."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, webhook_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(now if now is not None else time.time())
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


def installation_secret(state_dir: Path, *, create: bool) -> str | None:
    """The secret that signs webhooks of jobs without an owner (auth off)."""
    path = state_dir / INSTALLATION_SECRET
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(new_webhook_secret() + "\n")
    return path.read_text().strip()


def owner_secret(state_dir: Path, owner: str | None) -> str:
    """The secret that signs the webhooks of `owner`'s jobs; Refused when there is none to use."""
    if owner is None:
        secret = installation_secret(state_dir, create=True)
        assert secret is not None
        return secret
    try:
        key = msgspec.json.decode((keys_dir(state_dir) / f"{Path(owner).name}.json").read_bytes(), type=ApiKey)
    except (FileNotFoundError, msgspec.MsgspecError):
        raise Refused(f"the key {owner!r} that owns the job is gone") from None
    if not key.active:
        raise Refused(f"the key {owner!r} that owns the job was revoked")
    if not key.webhook_secret:
        raise Refused(f"the key {owner!r} has no webhook secret yet: run `darkroom keys show {owner}`")
    return key.webhook_secret


# -- sending ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


async def post(client: httpx.AsyncClient, destination: Destination, body: bytes, signed: dict[str, str], *,
               timeout: float, max_bytes: int) -> Answer:
    """One POST to a checked destination: 2xx is delivered, anything else (or no answer) is not."""
    request_headers = {**signed, "host": urlsplit(destination.url).netloc.rsplit("@", 1)[-1],
                       "user-agent": "Darkroom-Webhooks/1"}
    extensions = {"sni_hostname": destination.host} if destination.url.startswith("https") else {}
    try:
        async with asyncio.timeout(timeout):
            request = client.build_request("POST", destination.request_url(), content=body,
                                           headers=request_headers, extensions=extensions)
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= max_bytes:
                        break  # the answer's body says nothing we need; stop reading
            finally:
                await response.aclose()
    except TimeoutError:
        return Answer(None, f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return Answer(None, f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= response.status_code < 300:
        return Answer(response.status_code, None)
    return Answer(response.status_code, f"answered HTTP {response.status_code}")
