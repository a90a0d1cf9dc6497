"""Ingress process: the REST API on uvicorn."""

from __future__ import annotations

import sys

from schemas.settings import Settings, SettingsError
from services import logs
from services.ingress.app import create_app
from services.ingress.server import serve


def run() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"darkroom ingress: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log = logs.configure(settings, "ingress")
    log.info("listening", host=settings.host, port=settings.port)
    serve(create_app(settings), settings)
