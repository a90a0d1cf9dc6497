"""HTTP routes: decode the request, call a handler, shape the answer. No business logic here."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Annotated

import msgspec

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
    ExportAnswer,
    Gallery,
    Health,
    ImageDeleteAnswer,
    JobCancelAnswer,
    JobCreated,
    JobList,
    JobRequest,
    ModelInfo,
    ModelList,
    OpsQuery,
    OpsQueryResult,
    OpsStats,
    ProjectionStatus,
    QueueStats,
    Quota,
    RebuildAnswer,
    ResetAnswer,
    SamplerInfo,
)
from schemas.catalog import SAMPLERS
from services.readside import QueryFailed, queries
from schemas.jobs import ImageMetadata, JobDocument, JobStatus
from services.ingress import handlers
from services.ingress.auth import Principal, token_from
from services.ingress.errors import ApiError
from services.ingress.handlers import Ingress, require_readside, scope_of
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

    @get("/", summary="List jobs, newest first", responses=errors(400, 503))
    async def list(
        self,
        ctx: Ctx,
        principal: Caller,
        status: Annotated[JobStatus | None, QueryParameter(required=False)] = None,
        model: Annotated[str | None, QueryParameter(required=False, max_length=200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, QueryParameter(required=False, max_length=500,
                                                      description="next_cursor of the previous page")] = None,
    ) -> JobList:
        """Your jobs (an admin: everyone's), optionally of one status or model (Chutes'
        `GET /status?status=`). Keyset-paginated: follow `next_cursor`. Reads the DuckDB projection,
        which trails the event log by milliseconds."""
        try:
            jobs, next_cursor = await require_readside(ctx).query(
                queries.list_jobs, scope_of(principal), status=status, model=model, limit=limit, cursor=cursor)
        except queries.BadCursor as exc:
            raise ApiError(400, str(exc)) from None
        return msgspec.convert({"jobs": jobs, "next_cursor": next_cursor}, JobList)

    @get("/{job_id:str}", summary="A job's status, progress and images", responses=errors(404))
    async def read(self, ctx: Ctx, principal: Caller, job_id: FromPath[str]) -> Response[JobDocument]:
        """While the job is pending, `queue_position` (1 = next) and `eta_seconds` (from the recent
        throughput) say how long it may wait."""
        return Response(content=await handlers.job_with_place(ctx, job_id, principal), media_type=JSON)

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

    @delete("/{image_id:str}", status_code=200, summary="Delete an image (its owner or an admin)",
            responses=errors(404, 503))
    async def remove(self, ctx: Ctx, principal: Caller, image_id: FromPath[str]) -> ImageDeleteAnswer:
        """Removes the PNG and its sidecar, takes it out of its job and the gallery (`image.deleted`)."""
        await handlers.delete_image(ctx, image_id, principal)
        return ImageDeleteAnswer(status="success", id=image_id, message=f"Image {image_id} deleted")


@get("/v1/gallery", tags=["images"], summary="Images, newest first, with search", responses=errors(400, 503))
async def gallery(
    ctx: Ctx,
    principal: Caller,
    page: Annotated[int, QueryParameter(ge=1, le=100_000)] = 1,
    limit: Annotated[int, QueryParameter(ge=1, le=queries.MAX_PAGE)] = 20,
    search: Annotated[str | None, QueryParameter(required=False, max_length=200,
                                                 description="Matches prompt or model, case-insensitive")] = None,
    model: Annotated[str | None, QueryParameter(required=False, max_length=200)] = None,
    cursor: Annotated[str | None, QueryParameter(required=False, max_length=500,
                                                 description="next_cursor of the previous page (deep pages)")] = None,
) -> Gallery:
    """CyberImage's gallery: `images`, `page`, `limit` (at most 50), `has_more`, `total`. Deep pages
    are cheaper by `cursor` (keyset) than by `page` (offset)."""
    try:
        found = await require_readside(ctx).query(queries.gallery, scope_of(principal), page=page, limit=limit,
                                                  search=search, model=model, cursor=cursor)
    except queries.BadCursor as exc:
        raise ApiError(400, str(exc)) from None
    return msgspec.convert(found, Gallery)


@get("/v1/queue", tags=["queue"], summary="Queue statistics", responses=errors(400, 503))
async def queue(
    ctx: Ctx,
    principal: Caller,
    detailed: Annotated[bool, QueryParameter(description="Add the last 24 h, per-model counts, timings")] = False,
) -> QueueStats:
    """CyberImage's queue statistics over the jobs you can see (an admin: every tenant's)."""
    readside = require_readside(ctx)
    stats = await readside.query(queries.detailed_stats if detailed else queries.queue_stats, scope_of(principal))
    return msgspec.convert(stats, QueueStats)


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
        projection=await _projection_status(ctx),
    )
    return Response(body, status_code=503 if status == "unavailable" else 200)


async def _projection_status(ctx: Ingress) -> ProjectionStatus | None:
    if ctx.readside is None:
        return None
    return msgspec.convert(await asyncio.to_thread(ctx.readside.status), ProjectionStatus)


@get("/metrics", tags=["ops"], summary="Prometheus metrics (admin)", media_type="text/plain; version=0.0.4",
     responses=errors(403, 503))
async def metrics(ctx: Ctx, principal: Caller) -> str:
    """Projection lag and position, and jobs by status, in the Prometheus text format."""
    principal.require_admin()
    readside = require_readside(ctx)
    state = await asyncio.to_thread(readside.status)
    stats = await readside.query(queries.queue_stats, queries.Scope(everyone=True))
    lines = [
        "# HELP darkroom_projection_lag_seconds How long the oldest unapplied part of the event log has waited.",
        "# TYPE darkroom_projection_lag_seconds gauge",
        f"darkroom_projection_lag_seconds {state['lag_seconds']}",
        "# HELP darkroom_projection_pending_bytes Bytes of the event log not applied yet.",
        "# TYPE darkroom_projection_pending_bytes gauge",
        f"darkroom_projection_pending_bytes {state['pending_bytes']}",
        "# HELP darkroom_projection_events_total Events applied to the projection.",
        "# TYPE darkroom_projection_events_total counter",
        f"darkroom_projection_events_total {state['events_applied']}",
        "# HELP darkroom_jobs Jobs by status.",
        "# TYPE darkroom_jobs gauge",
        *(f'darkroom_jobs{{status="{name}"}} {stats[name]}' for name in queries.COUNTED),
    ]
    return "\n".join(lines) + "\n"


class OpsRoutes(Controller):
    """What `darkroom ops` calls while the stack runs (the ingress owns the DuckDB file). Admin only."""

    path = "/v1/ops"
    tags = ["ops"]

    @get("/stats", summary="Detailed statistics of every tenant, and the projection's state", responses=errors(403, 503))
    async def stats(self, ctx: Ctx, principal: Caller) -> OpsStats:
        principal.require_admin()
        readside = require_readside(ctx)
        queue_stats = await readside.query(queries.detailed_stats, queries.Scope(everyone=True))
        return OpsStats(queue=msgspec.convert(queue_stats, QueueStats),
                        projection=msgspec.convert(await asyncio.to_thread(readside.status), ProjectionStatus))

    @post("/query", status_code=200, summary="Run read-only SQL on the projection", responses=errors(400, 403, 413, 503))
    async def query(self, ctx: Ctx, principal: Caller, data: JSONBody[OpsQuery]) -> OpsQueryResult:
        """SELECT statements only (parsed, not pattern-matched), in a read-only transaction,
        stopped after 30 s; at most `max_rows` rows (`truncated` says when there were more)."""
        principal.require_admin()
        readside = require_readside(ctx)
        try:
            columns, rows, truncated = await readside.query(queries.run_query, data.sql, max_rows=data.max_rows)
        except queries.NotReadOnly as exc:
            raise ApiError(400, str(exc)) from None
        except QueryFailed as exc:
            raise ApiError(400, f"sql: {exc}") from None
        return OpsQueryResult(columns=columns, rows=[list(row) for row in rows], truncated=truncated)

    @post("/rebuild", status_code=200, summary="Rebuild the projection from the event log", responses=errors(403, 503))
    async def rebuild(self, ctx: Ctx, principal: Caller) -> RebuildAnswer:
        principal.require_admin()
        started = time.monotonic()
        events = await require_readside(ctx).rebuild()
        return RebuildAnswer(events=events, seconds=round(time.monotonic() - started, 3))

    @post("/export", status_code=200, summary="Export the projection as Parquet files", responses=errors(403, 503))
    async def export(self, ctx: Ctx, principal: Caller) -> ExportAnswer:
        """Writes jobs.parquet and images.parquet into a new folder under the data directory's
        `exports/` (a consistent snapshot)."""
        principal.require_admin()
        readside = require_readside(ctx)
        folder = ctx.layout.exports_dir / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        files = await readside.query(queries.export_parquet, str(folder))
        return ExportAnswer(folder=str(folder), files=files)


@get("/docs", include_in_schema=False)
async def docs() -> Redirect:
    """The interactive API docs live next to the OpenAPI schema."""
    return Redirect(path="/schema/docs")


ROUTES = [JobRoutes, ImageRoutes, OpsRoutes, gallery, queue, metrics, list_models, list_samplers, quota, enrich,
          reset_stalled, health, docs]
DEPENDENCIES = {
    "ctx": Provide(provide_ctx, sync_to_thread=False),
    "principal": Provide(provide_principal),
}
