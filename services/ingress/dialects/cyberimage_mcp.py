"""CyberImage's MCP endpoint, POST /api/mcp: JSON-RPC 2.0 with three methods over the same
translation as its REST API (`cyberimage`). Errors are JSON-RPC errors: -32600 (not a JSON-RPC
2.0 request), -32601 (unknown method), -32000 (anything else; the HTTP status says which)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog
from litestar import Controller, Request, Response, post
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody

from services.bus import BrokerUnavailable
from services.ingress.dialects.common import DialectCaller, provide_caller
from services.ingress.dialects.cyberimage import (
    ERRORS,
    image_meta,
    image_url,
    models_answer,
    status_answer,
    submit,
    submitted_message,
)
from services.ingress.dialects.cyberimage_types import GenerateBody, McpAnswer, McpError, McpRequest
from services.ingress.domain import jobs
from services.ingress.domain.errors import DomainError, Invalid, LimitReached, TooLarge, Unavailable
from services.ingress.routes.common import (
    BusDep,
    CatalogDep,
    ConfigDep,
    FilesDep,
    IdempotencyDep,
    LayoutDep,
    LimitsDep,
)

log = structlog.get_logger("ingress")

PREFIX = "context.image_generation."
METHODS = ("models", "generate", "status")  # after PREFIX
INVALID_REQUEST, METHOD_NOT_FOUND, SERVER_ERROR = -32600, -32601, -32000


def rpc_error(request_id: Any, code: int, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(McpAnswer(jsonrpc="2.0", id=request_id, error=McpError(code=code, message=message)),
                    status_code=status, headers=headers or {})


def _generate_body(params: dict[str, Any]) -> GenerateBody:
    """MCP's generate params are REST's body with `model` for `model_id`."""
    if not isinstance(params.get("prompt"), str):
        raise Invalid("Missing required parameter: prompt")
    body = {"prompt": params["prompt"], "negative_prompt": params.get("negative_prompt") or None,
            "model_id": params.get("model"), "settings": params.get("settings") or None}
    try:
        return msgspec.convert(body, GenerateBody)
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc).replace("$.", "")) from None


# -- errors as JSON-RPC errors (HTTP status as the seed's: 400 bad request, 404 unknown method) ------------

def _domain(_: Request, exc: DomainError) -> Response:
    """Errors before the method runs: a body that is not a JSON-RPC object (-32600), or the caller."""
    if isinstance(exc, Invalid | TooLarge):
        return rpc_error(None, INVALID_REQUEST, f"Invalid Request: Not a valid JSON-RPC 2.0 request ({exc.message})",
                         400)
    return _method_error(None, exc)


def _method_error(request_id: Any, exc: DomainError) -> Response:
    status = next((v for k, v in ERRORS.items() if isinstance(exc, k)), 500)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, LimitReached | Unavailable) else {}
    return rpc_error(request_id, SERVER_ERROR, exc.message, status, headers)


def _invalid(_: Request, exc: Exception) -> Response:
    detail = getattr(exc, "detail", "") or str(exc)
    if isinstance(exc, HTTPException) and exc.status_code not in (400, 422):
        return rpc_error(None, SERVER_ERROR, str(detail), exc.status_code)
    return rpc_error(None, INVALID_REQUEST, f"Invalid Request: Not a valid JSON-RPC 2.0 request ({detail})", 400)


def _internal(request: Request, _: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return rpc_error(None, SERVER_ERROR, "Server error: internal error; it has been logged", 500)


HANDLERS = {DomainError: _domain, ValidationException: _invalid, HTTPException: _invalid,
            BrokerUnavailable: lambda _, __: rpc_error(None, SERVER_ERROR, "the message broker is unreachable", 503,
                                                      {"Retry-After": "5"}),
            OSError: lambda _, e: rpc_error(None, SERVER_ERROR, f"cannot write to the data directory ({e})", 503),
            Exception: _internal}
WHY = {400: "-32600: not a JSON-RPC 2.0 request; -32000: a parameter is wrong", 401: "-32000: no or an invalid key",
       404: "-32601: unknown method; -32000: no such job (or the dialect is switched off)",
       413: "The request body is too large", 429: "-32000: a rate limit or quota was reached",
       503: "-32000: the broker or the data directory is unavailable"}


class CyberImageMcpRoutes(Controller):
    """CyberImage's MCP endpoint (JSON-RPC 2.0)."""

    path = "/api"
    tags = ["cyberimage"]
    dependencies = {"principal": Provide(provide_caller)}
    exception_handlers = HANDLERS
    security = [{"bearer": []}]

    @post("/mcp", status_code=200, summary="MCP: context.image_generation.models|generate|status (JSON-RPC 2.0)",
          responses={code: ResponseSpec(data_container=McpAnswer, description=why) for code, why in WHY.items()})
    async def mcp(self, request: Request, principal: DialectCaller, bus: BusDep, files: FilesDep, limits: LimitsDep,
                  idempotency: IdempotencyDep, catalog: CatalogDep, config: ConfigDep, layout: LayoutDep,
                  data: JSONBody[McpRequest]) -> Response[McpAnswer]:
        request_id = data.id
        if data.jsonrpc != "2.0" or not data.method:
            return rpc_error(request_id, INVALID_REQUEST, "Invalid Request: Not a valid JSON-RPC 2.0 request", 400)
        method = data.method.removeprefix(PREFIX) if data.method.startswith(PREFIX) else None
        if method not in METHODS:
            return rpc_error(request_id, METHOD_NOT_FOUND, f"Method not found: {data.method}", 404)
        params = data.params or {}
        base = str(request.base_url).rstrip("/")
        try:
            if method == "models":
                result = models_answer(catalog)
            elif method == "generate":
                body = _generate_body(params)
                doc, notes = await submit(body, principal, bus=bus, files=files, limits=limits,
                                          idempotency=idempotency, catalog=catalog, config=config, layout=layout)
                result = {"job_id": doc.id, "status": "pending", "num_images": doc.settings.num_images,
                          "message": submitted_message(doc.settings.num_images, notes)}
            else:
                job_id = params.get("job_id")
                if not isinstance(job_id, str) or not job_id:
                    raise Invalid("Missing required parameter: job_id")
                doc = await asyncio.to_thread(jobs.read_job, files, job_id, principal)
                answer = status_answer(doc, base)
                result = {"job_id": doc.id, "status": answer.status, "model": doc.model, "prompt": answer.prompt,
                          "created_at": answer.created_at, "started_at": answer.started_at,
                          "completed_at": answer.completed_at, "progress": answer.progress,
                          "message": answer.message}
                if answer.error is not None:
                    result["error"] = answer.error
                if answer.status == "completed":
                    result["images"] = [{"id": r.id, "url": image_url(base, r.id), "metadata": image_meta(r.metadata)}
                                        for r in sorted(doc.images, key=lambda r: r.metadata.image_number)]
        except DomainError as exc:
            return _method_error(request_id, exc)
        return Response(McpAnswer(jsonrpc="2.0", id=request_id, result=msgspec.to_builtins(result)), status_code=200)

