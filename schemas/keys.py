"""API keys: the token format and the record stored for each key (under state/keys/).

A token is `drk_<id>_<secret>`. Only a SHA-256 of the secret is stored, so the token is shown once,
when the key is created. The id is public: job documents name their owner by it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import datetime
from pathlib import Path

import msgspec

_TOKEN = re.compile(r"^drk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class ApiKey(msgspec.Struct, kw_only=True):
    """One key. Limits left None take the installation's defaults (admin keys have none)."""

    id: str
    name: str
    secret_sha256: str
    admin: bool = False
    # A generator worker's key (`darkroom workers add`): it may fetch files by hash
    # (GET /v1/files/...) and nothing else.
    worker: bool = False
    created_at: datetime
    revoked_at: datetime | None = None
    # Overrides: generation requests per period ("100/hour"), images per UTC day, queued jobs.
    rate: str | None = None
    daily_images: int | None = None
    queued_jobs: int | None = None
    # Signs this key's webhooks (Standard Webhooks: `whsec_` + base64 of 32 random bytes). Kept in
    # the clear, like any HMAC key, in this 0600 file; `darkroom keys show` prints it.
    webhook_secret: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_sha256, hash_secret(secret))


def hash_secret(secret: str) -> str:
    # Secrets are 256 random bits: a fast hash is enough (no password stretching needed).
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str, str]:
    """(token, id, secret) for a new key."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    return f"drk_{key_id}_{secret}", key_id, secret


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    match = _TOKEN.match(token.strip())
    return (match.group(1), match.group(2)) if match else None


def keys_dir(state_dir: Path) -> Path:
    return state_dir / "keys"
