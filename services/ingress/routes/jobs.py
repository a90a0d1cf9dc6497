"""/v1/jobs: submit, list, read, cancel, preview."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import File

from schemas.api import JobCancelAnswer, JobCreated, JobList, JobRequest
from schemas.jobs import JobDocument, JobStatus
from services.ingress.domain import jobs
from services.ingress.routes.common import (
    JSON,
    BusDep,
    Caller,
    CatalogDep,
    ConfigDep,
    FilesDep,
    IdempotencyDep,
    LayoutDep,
    LimitsDep,
    ReadSideDep,
    ReadSideIfOpenDep,
    errors,
)


class JobRoutes(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]

    @post("/", status_code=202, summary="Submit a generation job", responses=errors(400, 409, 413, 429, 503))
    async def create(
        self,
        principal: Caller,
        bus: BusDep,
        files: FilesDep,
        limits: LimitsDep,
        idempotency: IdempotencyDep,
        catalog: CatalogDep,
        config: ConfigDep,
        layout: LayoutDep,
        data: JSONBody[JobRequest],
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", required=False)] = None,
    ) -> Response[JobCreated]:
        """Validate and queue a job. Answers 202 once the job is durable; poll `status_url`.

        With an `Idempotency-Key` header, retrying the same request returns the same job (for 24
        hours); the same key with a different body is a 409."""
        doc, replayed = await jobs.submit_job(
            data, principal, bus=bus, files=files, limits=limits, idempotency=idempotency, catalog=catalog,
            settings=config, layout=layout, idempotency_key=idempotency_key)
        status_url = f"/v1/jobs/{doc.id}"
        body = JobCreated(
            id=doc.id,
            status=doc.status,
            status_url=status_url,
            num_images=doc.settings.num_images,
            events_url=f"{status_url}/events",
            message=f"Job queued for {doc.settings.num_images} image(s)" if not replayed
            else "Already submitted with this Idempotency-Key",
        )
        headers = {"Location": status_url} | ({"Idempotent-Replayed": "true"} if replayed else {})
        return Response(body, status_code=202, headers=headers)

    @get("/", summary="List jobs, newest first", responses=errors(400, 503))
    async def list(
        self,
        principal: Caller,
        readside: ReadSideDep,
        status: Annotated[JobStatus | None, QueryParameter(required=False)] = None,
        model: Annotated[str | None, QueryParameter(required=False, max_length=200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, QueryParameter(required=False, max_length=500,
                                                      description="next_cursor of the previous page")] = None,
    ) -> JobList:
        """Your jobs (an admin: everyone's), optionally of one status or model (Chutes'
        `GET /status?status=`). Keyset-paginated: follow `next_cursor`. Reads the DuckDB projection,
        which trails the event log by milliseconds."""
        return await jobs.list_jobs(principal, readside=readside, status=status, model=model, limit=limit,
                                    cursor=cursor)

    @get("/{job_id:str}", summary="A job's status, progress and images", responses=errors(404))
    async def read(self, principal: Caller, files: FilesDep, readside_if_open: ReadSideIfOpenDep,
                   job_id: FromPath[str]) -> Response[JobDocument]:
        """While the job is pending, `queue_position` (1 = next) and `eta_seconds` (from the recent
        throughput) say how long it may wait."""
        document = await jobs.job_with_place(job_id, principal, files=files, readside=readside_if_open)
        return Response(content=document, media_type=JSON)

    @delete("/{job_id:str}", status_code=202, summary="Cancel a job", responses=errors(404, 409, 503))
    async def cancel(self, principal: Caller, bus: BusDep, files: FilesDep, job_id: FromPath[str]) -> JobCancelAnswer:
        """A queued job is cancelled at once and never runs; a running one stops within one step
        and its partial images are discarded. 409 when the job already ended."""
        return await jobs.cancel_job(job_id, principal, bus=bus, files=files)

    @get("/{job_id:str}/preview", summary="The latest preview of a running job (PNG)", media_type="image/png",
         responses=errors(404))
    async def preview(self, principal: Caller, files: FilesDep, job_id: FromPath[str]) -> File:
        path = jobs.preview_path(job_id, principal, files=files)
        return File(path=path, media_type="image/png", filename=f"{job_id}-preview.png", content_disposition_type="inline")
