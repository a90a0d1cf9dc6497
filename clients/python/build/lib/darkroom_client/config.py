"""Where the server is and which key to use: arguments, then DARKROOM_URL / DARKROOM_API_KEY, then
~/.config/darkroom/config.toml (`url = ...`, `api_key = ...`), then http://127.0.0.1:8000."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(os.environ.get("DARKROOM_CLIENT_CONFIG") or Path(base) / "darkroom" / "config.toml")


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str | None


def resolve(url: str | None = None, api_key: str | None = None, path: Path | None = None) -> Connection:
    """The connection from the first place that names each value."""
    file: dict = {}
    path = path or config_path()
    if path.is_file():
        with path.open("rb") as handle:
            file = tomllib.load(handle)
    url = url or os.environ.get("DARKROOM_URL") or file.get("url") or DEFAULT_URL
    api_key = api_key or os.environ.get("DARKROOM_API_KEY") or file.get("api_key") or None
    return Connection(url=url.rstrip("/"), api_key=api_key)
