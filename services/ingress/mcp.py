"""Darkroom for AI assistants: an MCP server (the official `mcp` SDK) whose tools call the REST API
through the Python SDK, so both transports share them: streamable HTTP at `/mcp` in the ingress
(authenticated with the caller's Darkroom key, which the tools then use) and stdio (`darkroom mcp`,
with DARKROOM_URL / DARKROOM_API_KEY or ~/.config/darkroom/config.toml)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec
from litestar import Litestar
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import TextContent

from darkroom_client import APIError, AsyncClient, DarkroomError, JobProgress
from schemas.settings import Settings
from services.ingress.auth import authenticate, token_from
from services.ingress.domain.errors import DomainError

INSTRUCTIONS = ("Darkroom generates images from text prompts. `generate_image` returns the image(s) and their "
                "URLs (reporting progress while it runs); `list_models` and `search_loras` show what can be used; "
                "`enrich_prompt` applies a style; `gallery_search` finds earlier images; `get_job` reads a job.")

# Given the tool call's context: a client for the caller, and the base URL images are linked under.
Connector = Callable[[Context], tuple[AsyncClient, str]]


def _data(value: Any) -> Any:
    return msgspec.to_builtins(value)


@contextlib.asynccontextmanager
async def _darkroom(connect: Connector, ctx: Context) -> AsyncIterator[tuple[AsyncClient, str]]:
    """The caller's client; the API's errors become tool errors carrying its message."""
    client, public = connect(ctx)
    try:
        async with client:
            yield client, public
    except APIError as exc:
        raise ToolError(f"Darkroom answered {exc.status_code}: {exc.message}") from exc
    except DarkroomError as exc:
        raise ToolError(str(exc)) from exc


def build_server(connect: Connector) -> MCPServer:
    server = MCPServer(name="darkroom", instructions=INSTRUCTIONS, version="1")

    @server.tool(structured_output=False)
    async def generate_image(ctx: Context, prompt: str, negative_prompt: str | None = None, model: str | None = None,
                             steps: int | None = None, width: int | None = None, height: int | None = None,
                             num_images: int = 1, seed: int | None = None, style: str | None = None,
                             loras: list[str] | None = None) -> list[Image | TextContent]:
        """Generate image(s) from a prompt and return them with their URLs. `loras` are "name:weight"
        (see search_loras); steps, width and height default to the model's (see list_models)."""
        async with _darkroom(connect, ctx) as (darkroom, public):
            created = await darkroom.submit(prompt, negative_prompt=negative_prompt, model=model, steps=steps,
                                            width=width, height=height, num_images=num_images, seed=seed, style=style,
                                            loras=loras or ())
            done = 0.0

            async def on_progress(p: JobProgress) -> None:
                nonlocal done
                total = (p.total_steps or 1) * (p.total_images or 1)
                at = total if p.phase == "completed" else (p.image_index - 1) * (p.total_steps or 1) + p.step
                if at > done:  # MCP progress only ever increases
                    done = at
                    await ctx.report_progress(at, total, f"{p.phase} {p.step}/{p.total_steps or '?'}")

            job = await darkroom.wait(created.id, on_progress=on_progress, raise_on_failure=False)
            if job.status != "completed":
                raise ToolError(f"job {job.id} {job.status}: {job.error or job.message}")
            content: list[Image | TextContent] = [Image(data=await darkroom.download(image), format="png")
                                                  for image in job.images]
            urls = [f"{public}/v1/images/{image.id}" for image in job.images]
            summary = {"job_id": job.id, "image_urls": urls, "seed": job.settings.seed, "model": job.model,
                       "prompt": job.prompt}
            return [*content, TextContent(type="text", text=json.dumps(summary))]

    @server.tool()
    async def get_job(ctx: Context, job_id: str) -> dict[str, Any]:
        """A job's status, progress, settings and images."""
        async with _darkroom(connect, ctx) as (darkroom, _):
            return _data(await darkroom.job(job_id))

    @server.tool()
    async def list_models(ctx: Context) -> dict[str, Any]:
        """The models this Darkroom offers, their defaults and limits, and which is the default."""
        async with _darkroom(connect, ctx) as (darkroom, _):
            return _data(await darkroom.models())

    @server.tool()
    async def search_loras(ctx: Context, query: str | None = None, base: str | None = None,
                           limit: int = 10) -> dict[str, Any]:
        """LoRAs in the library, best match first (fuzzy: typos are fine); base: sd1, sdxl, flux, ..."""
        async with _darkroom(connect, ctx) as (darkroom, _):
            return {"loras": [_data(lora) async for lora in darkroom.loras(query, base=base, limit=limit)]}

    @server.tool()
    async def enrich_prompt(ctx: Context, prompt: str, style: str | None = None) -> dict[str, Any]:
        """The prompt with a style template applied (and the negative prompt the style brings)."""
        async with _darkroom(connect, ctx) as (darkroom, _):
            return _data(await darkroom.enrich(prompt, style))

    @server.tool()
    async def gallery_search(ctx: Context, search: str | None = None, model: str | None = None,
                             limit: int = 10) -> dict[str, Any]:
        """Earlier images, newest first, whose prompt or model matches `search`."""
        async with _darkroom(connect, ctx) as (darkroom, public):
            images = [_data(image) | {"url": f"{public}{image.url}"}
                      async for image in darkroom.gallery(search=search, model=model, limit=limit)]
            return {"images": images}

    return server


# -- stdio: `darkroom mcp` --------------------------------------------------------------------------

def run_stdio(url: str | None = None, api_key: str | None = None) -> None:
    from darkroom_client.config import resolve

    connection = resolve(url, api_key)
    server = build_server(lambda ctx: (AsyncClient(connection.url, connection.api_key), connection.url))
    server.run("stdio")


# -- streamable HTTP at /mcp in the ingress ----------------------------------------------------------

def loopback_url(settings: Settings) -> str:
    """Where the ingress reaches its own API."""
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::", "localhost") else settings.host
    return f"http://{'[' + host + ']' if ':' in host else host}:{settings.port}"


def public_url(headers: Mapping[str, str], fallback: str) -> str:
    """The base URL the MCP client reached us by (image links in tool results point there)."""
    host = headers.get("x-forwarded-host") or headers.get("host")
    scheme = headers.get("x-forwarded-proto") or "http"
    return f"{scheme}://{host}" if host else fallback


class HttpMount:
    """The MCP endpoint as a Litestar mount plus the lifespan its session manager needs."""

    def __init__(self, settings: Settings):
        api = loopback_url(settings)

        def connect(ctx: Context) -> tuple[AsyncClient, str]:
            headers = ctx.headers or {}
            return AsyncClient(api, token_from(headers)), public_url(headers, api)

        self.server = build_server(connect)
        # Keys, not cookies, authenticate here, so DNS rebinding gains an attacker nothing.
        self.server.streamable_http_app(transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=False))
        self.manager = self.server.session_manager

        @asgi("/mcp", is_mount=True, copy_scope=True, include_in_schema=False)
        async def mcp_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            """MCP over streamable HTTP; the caller's Darkroom key is checked before anything else."""
            app: Litestar = scope["litestar_app"]
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            try:
                authenticate(app.state["config"], app.state["keys"], token_from(headers),
                             (scope.get("client") or ("unknown",))[0])
            except DomainError as exc:
                body = json.dumps({"status": "error", "message": exc.message}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
            await self.manager.handle_request(scope, receive, send)

        self.route = mcp_endpoint

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        async with self.manager.run():
            yield
