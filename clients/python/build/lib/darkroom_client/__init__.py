"""A light client for Darkroom's REST API: `Client` (sync) and `AsyncClient` (asyncio).

    from darkroom_client import Client
    with Client() as darkroom:                 # DARKROOM_URL, DARKROOM_API_KEY
        job = darkroom.generate("a red fox", steps=20, on_progress=print)
        darkroom.download_images(job, "out/")
"""

from darkroom_client._core import JobProgress
from darkroom_client.aio import AsyncClient
from darkroom_client.client import Client
from darkroom_client.config import resolve as resolve_connection
from darkroom_client.errors import (
    APIError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    DarkroomError,
    Forbidden,
    JobCancelled,
    JobError,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from darkroom_client.types import Event, JobDocument, JobRequest, LoraInput, SettingsInput

__all__ = [
    "APIError", "AsyncClient", "BadRequest", "Client", "Conflict", "ConnectionFailed", "DarkroomError", "Event",
    "Forbidden", "JobCancelled", "JobDocument", "JobError", "JobFailed", "JobProgress", "JobRequest", "LoraInput",
    "NotFound", "PayloadTooLarge", "RateLimited", "ServerError", "SettingsInput", "Unauthorized", "Unavailable",
    "WaitTimeout", "resolve_connection",
]
