"""`darkroom keys create|list|revoke|update`: API keys, stored hashed under the data directory."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from schemas.keys import ApiKey, keys_dir, new_token, new_webhook_secret
from services.files import write_atomic

_encoder = msgspec.json.Encoder()


def _write(folder: Path, key: ApiKey) -> None:
    write_atomic(folder / f"{key.id}.json", _encoder.encode(key), mode=0o600)
    os.utime(folder)  # the ingress reloads keys when this folder changes


def load_all(state_dir: Path) -> list[ApiKey]:
    folder = keys_dir(state_dir)
    if not folder.is_dir():
        return []
    return sorted((msgspec.json.decode(p.read_bytes(), type=ApiKey) for p in folder.glob("*.json")),
                  key=lambda k: k.created_at)


def _check_rate(rate: object) -> None:
    if isinstance(rate, str) and rate not in ("default", "none"):
        from limits import parse

        try:
            parse(rate)
        except ValueError:
            raise SystemExit(f'--rate must look like "100/hour" or "5/minute", got {rate!r}') from None


def create(state_dir: Path, name: str, *, admin: bool = False, rate: str | None = None,
           daily_images: int | None = None, queued_jobs: int | None = None, worker: bool = False) -> tuple[ApiKey, str]:
    """A new key and its token (the only time the token exists in the clear)."""
    if not name.strip():
        raise SystemExit("a key needs a --name (say who or what uses it)")
    _check_rate(rate)
    token, key_id, secret = new_token()
    from schemas.keys import hash_secret

    key = ApiKey(id=key_id, name=name.strip(), secret_sha256=hash_secret(secret), admin=admin, worker=worker,
                 created_at=datetime.now(UTC), rate=rate, daily_images=daily_images, queued_jobs=queued_jobs,
                 webhook_secret=new_webhook_secret())
    _write(keys_dir(state_dir), key)
    return key, token


def find(state_dir: Path, key_id: str) -> ApiKey:
    path = keys_dir(state_dir) / f"{Path(key_id).name}.json"
    if not path.exists():
        raise SystemExit(f"no key {key_id!r} (see `darkroom keys list`)")
    return msgspec.json.decode(path.read_bytes(), type=ApiKey)


def show(state_dir: Path, key_id: str) -> ApiKey:
    """The key, with a webhook secret (keys made before webhooks existed get one now)."""
    key = find(state_dir, key_id)
    if key.webhook_secret is None:
        key.webhook_secret = new_webhook_secret()
        _write(keys_dir(state_dir), key)
    return key


def revoke(state_dir: Path, key_id: str) -> ApiKey:
    key = find(state_dir, key_id)
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        _write(keys_dir(state_dir), key)
    return key


def update(state_dir: Path, key_id: str, **limits: object) -> ApiKey:
    _check_rate(limits.get("rate"))
    key = find(state_dir, key_id)
    for name, value in limits.items():
        if value is not None:
            setattr(key, name, None if value in ("default", -1) else value)
    _write(keys_dir(state_dir), key)
    return key


def describe(key: ApiKey) -> str:
    limits = ", ".join(f"{n}={getattr(key, n)}" for n in ("rate", "daily_images", "queued_jobs") if getattr(key, n) is not None)
    state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
    return f"{key.id}  {key.name:24}  {'admin' if key.admin else 'worker' if key.worker else 'user':6}  {state:22}  {limits or 'default limits'}"
