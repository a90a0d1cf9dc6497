"""HTTP routes: decode the request, call a handler, shape the answer. No business logic here."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import File, Redirect

from schemas.api import (
    EnrichRequest,
    EnrichResponse,
    ErrorBody,
    Health,
    JobCancelAnswer,
    JobCreated,
    JobRequest,
    ModelInfo,
    ModelList,
    Quota,
    ResetAnswer,
    SamplerInfo,
)
from schemas.catalog import SAMPLERS
from schemas.jobs import ImageMetadata, JobDocument
from services.ingress import handlers
from services.ingress.auth import Principal, token_from
from services.ingress.errors import ApiError
from services.ingress.handlers import Ingress
from services.styles import UnknownStyle, enrich_prompt

JSON = "application/json"
WHY = {
    400: "A field is wrong; the message names it",
    401: "No API key, or an invalid or revoked one",
    403: "The route needs an admin key",
    404: "No such id for this key (another tenant's ids are 404 too)",
    409: "Conflicts with the current state (an ended job, a reused Idempotency-Key)",
    413: "The request body is too large",
    429: "A rate limit or quota was reached; see Retry-After",
    503: "The broker or the data directory is unavailable; nothing was changed; see Retry-After",
}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """Documented error answers of a route: always {"status": "error", "message": ...}."""
    return {code: ResponseSpec(data_container=ErrorBody, description=WHY[code]) for code in (401, *codes)}


def provide_ctx(state: State) -> Ingress:
    return state.ctx


async def provide_principal(request: Request, state: State) -> Principal:
    """The caller, from `Authorization: Bearer <token>` or `X-API-Key: <token>`."""
    ctx: Ingress = state.ctx
    ip = request.client.host if request.client else "unknown"
    if ctx.settings.auth == "off":
        return Principal(key=None, ip=ip)
    token = token_from(request.headers)
    if not token:
        raise ApiError(401, "missing API key: send Authorization: Bearer <token> or X-API-Key: <token>",
                       {"WWW-Authenticate": "Bearer"})
    return Principal(key=ctx.keys.verify(token), ip=ip)


Ctx = NamedDependency[Ingress]
Caller = NamedDependency[Principal]


class JobRoutes(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]

    @post("/", status_code=202, summary="Submit a generation job", responses=errors(400, 409, 413, 429, 503))
    async def create(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[JobRequest],
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", required=False)] = None,
    ) -> Response[JobCreated]:
        """Validate and queue a job. Answers 202 once the job is durable; poll `status_url`.

        With an `Idempotency-Key` header, retrying the same request returns the same job (for 24
        hours); the same key with a different body is a 409."""
        doc, replayed = await handlers.submit_job(ctx, data, principal, idempotency_key=idempotency_key)
        status_url = f"/v1/jobs/{doc.id}"
        body = JobCreated(
            id=doc.id,
            status=doc.status,
            status_url=status_url,
            num_images=doc.settings.num_images,
            message=f"Job queued for {doc.settings.num_images} image(s)" if not replayed
            else "Already submitted with this Idempotency-Key",
        )
        headers = {"Location": status_url} | ({"Idempotent-Replayed": "true"} if replayed else {})
        return Response(body, status_code=202, headers=headers)

    @get("/{job_id:str}", summary="A job's status, progress and images", responses=errors(404))
    async def read(self, ctx: Ctx, principal: Caller, job_id: FromPath[str]) -> Response[JobDocument]:
        # A small file in the page cache: reading it inline is cheaper than a thread hop.
        return Response(content=handlers.read_job_bytes(ctx, job_id, principal), media_type=JSON)

    @delete("/{job_id:str}", status_code=202, summary="Cancel a job", responses=errors(404, 409, 503))
    async def cancel(self, ctx: Ctx, principal: Caller, job_id: FromPath[str]) -> JobCancelAnswer:
        """A queued job is cancelled at once and never runs; a running one stops within one step
        and its partial images are discarded. 409 when the job already ended."""
        return await handlers.cancel_job(ctx, job_id, principal)

    @get("/{job_id:str}/preview", summary="The latest preview of a running job (PNG)", media_type="image/png",
         responses=errors(404))
    async def preview(self, ctx: Ctx, principal: Caller, job_id: FromPath[str]) -> File:
        path = handlers.preview_path(ctx, job_id, principal)
        return File(path=path, media_type="image/png", filename=f"{job_id}-preview.png", content_disposition_type="inline")


class ImageRoutes(Controller):
    path = "/v1/images"
    tags = ["images"]

    @get("/{image_id:str}", summary="Download an image (PNG)", media_type="image/png", responses=errors(404))
    async def read(self, ctx: Ctx, principal: Caller, image_id: FromPath[str]) -> File:
        png, _ = await asyncio.to_thread(handlers.image_paths, ctx, image_id, principal)
        return File(path=png, media_type="image/png", filename=f"{image_id}.png", content_disposition_type="inline")

    @get("/{image_id:str}/metadata", summary="How an image was made", responses=errors(404))
    async def metadata(self, ctx: Ctx, principal: Caller, image_id: FromPath[str]) -> ImageMetadata:
        record = await asyncio.to_thread(handlers.read_image_record, ctx, image_id, principal)
        return record.metadata


@get("/v1/models", tags=["models"], summary="Models this installation offers", responses=errors())
async def list_models(ctx: Ctx, principal: Caller) -> ModelList:
    models = {
        entry.id: ModelInfo(
            id=entry.id,
            description=entry.description,
            family=entry.family,
            supports_negative_prompt=entry.supports_negative_prompt,
            capabilities=list(entry.capabilities),
            defaults={k: v for k, v in {
                "num_inference_steps": entry.defaults.num_inference_steps,
                "guidance_scale": entry.defaults.guidance_scale,
                "width": entry.defaults.width,
                "height": entry.defaults.height,
                "sampler": entry.defaults.sampler,
            }.items() if v is not None},
            limits={
                "max_width": entry.limits.max_width,
                "max_height": entry.limits.max_height,
                "max_steps": entry.limits.max_steps,
                "max_images": 8,
            },
        )
        for entry in ctx.catalog.models.values()
    }
    return ModelList(models=models, default=ctx.catalog.default)


@get("/v1/samplers", tags=["models"], summary="Samplers by their A1111 names", responses=errors())
async def list_samplers(principal: Caller) -> list[SamplerInfo]:
    return [SamplerInfo(name=name, scheduler=scheduler, options=options) for name, (scheduler, options) in SAMPLERS.items()]


@get("/v1/quota", tags=["account"], summary="This key's usage, limits and what remains", responses=errors())
async def quota(ctx: Ctx, principal: Caller) -> Quota:
    """The weights.gg quota shape (`isPremium`, `usage`, `limits`, `remaining`) with Darkroom's
    quota names; an unlimited quota reads "Infinity"."""
    return await handlers.quota(ctx, principal)


@post("/v1/queue/reset-stalled", tags=["queue"], summary="Requeue stalled jobs now (admin)", status_code=200,
      responses=errors(400, 403, 503))
async def reset_stalled(
    ctx: Ctx,
    principal: Caller,
    silent_seconds: Annotated[float | None, QueryParameter(name="silent_seconds", gt=0, le=86400, required=False)] = None,
) -> ResetAnswer:
    """The reaper sweeps at once: jobs silent past the stall timeout (or `silent_seconds`) are
    requeued for another attempt, or failed after their last. Jobs still making progress are not
    touched (CyberImage's /reset_queue, but safe). Admin keys only."""
    principal.require_admin()
    result = await handlers.reset_stalled(ctx, silent_seconds)
    return ResetAnswer(
        status="success", reset_count=result.reset_count, failed_count=result.failed_count, job_ids=result.job_ids,
        message=f"Reset {result.reset_count} stalled job(s) to pending status"
        + (f"; {result.failed_count} had no attempts left and failed" if result.failed_count else ""),
    )


@post("/v1/enrich", tags=["prompts"], summary="Apply a style template to a prompt", status_code=200,
      responses=errors(400, 413))
async def enrich(ctx: Ctx, principal: Caller, data: JSONBody[EnrichRequest]) -> EnrichResponse:
    if len(data.prompt) > ctx.settings.max_prompt_length:
        raise ApiError(400, f"prompt is {len(data.prompt)} characters; the limit is {ctx.settings.max_prompt_length}")
    try:
        prompt, negative = enrich_prompt(data.prompt, None, data.style, ctx.catalog.styles)
    except UnknownStyle as exc:
        raise ApiError(400, f"style: {exc}") from None
    return EnrichResponse(original_prompt=data.prompt, enriched_prompt=prompt, negative_prompt=negative, style=data.style)


@get("/health", tags=["ops"], summary="Broker, data directory and worker health (503 when jobs cannot be accepted)",
     security=[], responses={503: ResponseSpec(data_container=Health, description="Jobs cannot be accepted now")})
async def health(ctx: Ctx) -> Response[Health]:
    broker_ok = ctx.bus is not None and ctx.bus.connected
    data_ok = await asyncio.to_thread(os.access, ctx.layout.base, os.W_OK)
    generators = 0
    if broker_ok:
        try:
            generators = await ctx.bus.consumer_count("generator")
        except Exception:  # noqa: BLE001 - a failed probe means "not known to be healthy"
            broker_ok = False
    status = "unavailable" if not (broker_ok and data_ok) else "ok" if generators else "degraded"
    body = Health(
        status=status,
        broker="connected" if broker_ok else "unreachable",
        data_dir="writable" if data_ok else "not writable",
        generators=generators,
    )
    return Response(body, status_code=503 if status == "unavailable" else 200)


@get("/docs", include_in_schema=False)
async def docs() -> Redirect:
    """The interactive API docs live next to the OpenAPI schema."""
    return Redirect(path="/schema/docs")


ROUTES = [JobRoutes, ImageRoutes, list_models, list_samplers, quota, enrich, reset_stalled, health, docs]
DEPENDENCIES = {
    "ctx": Provide(provide_ctx, sync_to_thread=False),
    "principal": Provide(provide_principal),
}
