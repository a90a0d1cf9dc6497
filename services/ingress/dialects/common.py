"""What the dialects share: who the caller is (a Darkroom key, A1111's basic auth, or anonymous
from loopback), and the base64 of the images they exchange."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from litestar import Request
from litestar.di import NamedDependency

from schemas.keys import ApiKey
from schemas.settings import Settings
from services.ingress.auth import KeyStore, Principal, authenticate, token_from
from services.ingress.domain.errors import Unauthenticated

ANONYMOUS = "anonymous"
_USER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class AnonymousCaller(Principal):
    """A caller without credentials, let in from loopback: the anonymous tenant (its jobs are owned
    by "anonymous"), never an admin, rate-limited per IP address by DARKROOM_ANONYMOUS_RATE."""

    @property
    def owner(self) -> str | None:
        return ANONYMOUS

    @property
    def admin(self) -> bool:
        return False


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return ip == "testclient"  # Litestar's in-process test client


def basic_users(spec: str) -> dict[str, str]:
    """A1111's --api-auth "user:password[,user2:password2]" as {user: password}."""
    users = {}
    for pair in filter(None, (p.strip() for p in spec.split(","))):
        user, _, password = pair.partition(":")
        if _USER.match(user) and password:
            users[user] = password
    return users


def _basic(header: str) -> tuple[str, str] | None:
    if header[:6].lower() != "basic ":
        return None
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (user, password) if sep else None


def caller(request: Request, settings: Settings, keys: KeyStore, *, basic_auth: bool) -> Principal:
    """The caller of a dialect route: a Darkroom key (Bearer or X-API-Key); with `basic_auth`,
    an A1111 --api-auth user (each user is a tenant of its own, `sdapi-<user>`, with a key's
    default limits); else anonymous from loopback, unless DARKROOM_DIALECT_ANONYMOUS=off."""
    ip = request.client.host if request.client else "unknown"
    token = token_from(request.headers)
    if token:
        return authenticate(settings, keys, token, ip)
    credentials = _basic(request.headers.get("authorization", "")) if basic_auth else None
    if credentials is not None:
        user, password = credentials
        expected = basic_users(settings.sdapi_auth).get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            raise Unauthenticated("incorrect username or password")
        return Principal(key=ApiKey(id=f"sdapi-{user}", name=user, secret_sha256="", created_at=_EPOCH), ip=ip)
    if settings.auth == "off":
        return Principal(key=None, ip=ip)
    # A1111 with --api-auth asks everyone for it; so does this dialect once an operator set users.
    if settings.dialect_anonymous == "loopback" and is_loopback(ip) and not (basic_auth and settings.sdapi_auth):
        return AnonymousCaller(key=None, ip=ip)
    raise Unauthenticated("missing credentials: send Authorization: Bearer <darkroom key>"
                          + (" or HTTP basic auth (DARKROOM_SDAPI_AUTH)" if basic_auth else ""))


async def provide_caller(request: Request, config: NamedDependency[Settings],
                         keys: NamedDependency[KeyStore]) -> Principal:
    return caller(request, config, keys, basic_auth=False)


async def provide_basic_caller(request: Request, config: NamedDependency[Settings],
                               keys: NamedDependency[KeyStore]) -> Principal:
    return caller(request, config, keys, basic_auth=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# The caller as a route parameter: a `Principal` (or `AnonymousCaller`). Typed Any because Litestar
# checks dependencies with msgspec, which passes through only instances of the exact type.
DialectCaller = NamedDependency[Any]
