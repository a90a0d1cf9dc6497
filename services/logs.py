"""Structured logs: JSON lines when not attached to a terminal, readable columns when it is.

The one logging setup of every Darkroom process: the services and the `darkroom run` supervisor.
"""

from __future__ import annotations

import logging
import sys

import structlog

from schemas.settings import Settings


def configure(settings: Settings, service: str) -> structlog.stdlib.BoundLogger:
    """Configure structlog (and stdlib logging, which libraries use) for one process."""
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    as_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer]
        if as_json
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Route libraries' stdlib logging (aio-pika, uvicorn, diffusers) through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ], foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.INFO) if level < logging.WARNING else level)
    # watchfiles logs "N changes detected" at info on every append to the event log.
    for noisy in ("aio_pika", "aiormq", "httpx", "uvicorn.access", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # aiormq logs an error for every failed connection attempt; Bus.connect retries and reports.
    logging.getLogger("aiormq.connection").addFilter(
        lambda record: not record.getMessage().startswith("error when creating transport")
    )
    structlog.contextvars.bind_contextvars(service=service)
    return structlog.get_logger(service)
