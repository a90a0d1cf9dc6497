"""The A1111 Discord bot's API (TPtownie/A1111_discord_bot, api/main.py) under /a1111, for the bot
and the mobile clients written against it.

A translation layer only: POST /generate/txt2img and /img2img become the native `JobRequest`
naming the user's session (so its LoRAs and `custom_settings` fill what the request leaves out)
and go through `jobs.submit_job` and the durable queue; the client polls /jobs/{id} and fetches
/jobs/{id}/result. Sessions and presets are Darkroom's (`a1111_library`). Mapping tables live in
`a1111_mapping` and `a1111_library`; docs/dialects/a1111-bot.md is the page.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import Provide
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body, FromPath, JSONBody, QueryParameter

from schemas.catalog import SAMPLERS
from schemas.jobs import TERMINAL_STATUSES, JobDocument
from schemas.layout import lora_file
from schemas.library import SessionLora
from services.ingress.auth import Principal
from services.ingress.dialects import a1111_library as bot
from services.ingress.dialects.a1111_mapping import (
    EXCEPTION_HANDLERS,
    LORA_STRENGTH_RANGE,
    NOT_IMPLEMENTED,
    RESULT_NOT_READY,
    STATUSES,
    UPSCALERS,
    VAES,
    Img2ImgForm,
    detail,
    errors,
    img2img_body,
    info,
    job_request,
    job_status,
    parameters,
)
from services.ingress.dialects.a1111_types import (
    AddLora,
    ErrorBody,
    GenerationAnswer,
    GenerationBody,
    HealthAnswer,
    JobResult,
    JobStatusAnswer,
    LoraInfo,
    LoraList,
    Message,
    ModelsAnswer,
    PresetList,
    PresetSaved,
    SavePreset,
    ScanAnswer,
    SessionAnswer,
    UserSession,
)
from services.ingress.dialects.common import DialectCaller, b64, provide_caller
from services.ingress.domain import jobs, loras, ops, presets, sessions
from services.ingress.domain.errors import Invalid, NotFound
from services.ingress.domain.pnginfo import read_png_info
from services.ingress.domain.waiting import image_bytes
from services.ingress.routes.common import (
    BusDep,
    CatalogDep,
    ConfigDep,
    FilesDep,
    IdempotencyDep,
    LayoutDep,
    LimitsDep,
    ReadSideIfOpenDep,
)
from services.ingress.routes.library import LIBRARY, LibraryDep

UserId = FromPath[str]
NOT_READY = {404: ResponseSpec(data_container=ErrorBody, description=f'"{RESULT_NOT_READY}": no such job, or it '
                               "has not ended yet")}


class A1111BotRoutes(Controller):
    """The A1111 Discord bot's API: point the bot's API base at `<darkroom>/a1111`."""

    path = "/a1111"
    tags = ["a1111-bot"]
    dependencies = {"principal": Provide(provide_caller), **LIBRARY}
    exception_handlers = EXCEPTION_HANDLERS
    security = [{"bearer": []}]

    # -- health and models ------------------------------------------------------------------------

    @get("/health", summary="Darkroom's health as the bot reads A1111's (A1111 bot)", security=[],
         responses={503: ResponseSpec(data_container=ErrorBody, description="Jobs cannot be accepted now"),
                    404: ResponseSpec(data_container=ErrorBody, description="The dialect is switched off")})
    async def health(self, bus: BusDep, layout: LayoutDep) -> Response[HealthAnswer]:
        found = await ops.health(bus=bus, layout=layout, readside=None, detailed=False)
        if found.status == "unavailable":
            return detail(503, "A1111 not available: the broker or the data directory is unavailable",
                          {"Retry-After": "5"})
        state = {"status": "online" if found.status == "ok" else "degraded", "webui_version": "darkroom"}
        if found.status != "ok":
            state["note"] = "no generator is running: jobs are queued until one starts"
        return Response(HealthAnswer(status="healthy", a1111_status=state, timestamp=datetime.now(UTC).isoformat()))

    @get("/models", summary="Checkpoints, VAEs, samplers, upscalers (A1111 bot)", responses=errors())
    async def models(self, principal: DialectCaller, catalog: CatalogDep) -> ModelsAnswer:
        return ModelsAnswer(checkpoints=list(catalog.models), vaes=list(VAES), samplers=list(SAMPLERS),
                            upscalers=list(UPSCALERS))

    # -- LoRAs ----------------------------------------------------------------------------------------

    @get("/loras", summary="Search LoRAs (A1111 bot)", responses=errors(503))
    async def loras(self, request: Request, principal: DialectCaller, library: LibraryDep, search: str | None = None,
                    limit: Annotated[int, QueryParameter(ge=-(2**31), le=2**31)] = 50) -> LoraList:
        """Best match first (name, tags, trigger words); `limit` is kept within 1-100."""
        page = loras.search_loras(library, search=search or None, limit=max(1, min(limit, loras.MAX_PAGE)))
        base = str(request.base_url).rstrip("/")
        found = []
        for item in page.loras:
            entry = library.get(item.name)
            found.append(LoraInfo(filename=entry.file if entry else f"{item.name}.safetensors", name=item.name,
                                  tags=item.tags, trigger_words=item.trigger_words,
                                  strength_range=list(LORA_STRENGTH_RANGE),
                                  thumbnail=f"{base}{item.preview_url}" if item.preview_url else None))
        return LoraList(loras=found, total=len(found))

    @post("/loras/scan", status_code=200, summary="Rescan the LoRA folder (A1111 bot)", responses=errors(503))
    async def scan_loras(self, principal: DialectCaller, library: LibraryDep) -> ScanAnswer:
        """An admin key rescans now; anyone else gets the index as it stands (the folder is watched)."""
        if principal.admin:
            result = await loras.rescan(library, principal)
            details: dict[str, Any] = {"count": result.total, "added": result.added, "removed": result.removed,
                                       "changed": result.changed, "rescanned": True}
        else:
            details = {"count": loras.search_loras(library, limit=1).total, "rescanned": False,
                       "note": "the folder is watched; a forced rescan needs an admin key"}
        return ScanAnswer(message=f"Scanned and found {details['count']} LoRAs", details=details)

    # -- sessions -------------------------------------------------------------------------------------

    @staticmethod
    async def _session(user_id: str, principal: Principal, layout) -> Any:
        bot.check_user(user_id)
        return await sessions.open_session(user_id, principal, layout=layout)

    @get("/sessions/{user_id:str}", summary="A user's session (A1111 bot)", responses=errors(409))
    async def get_session(self, principal: DialectCaller, layout: LayoutDep, user_id: UserId) -> UserSession:
        """Created empty on first use, as the bot's are."""
        return bot.user_session(user_id, await self._session(user_id, principal, layout), layout)

    @post("/sessions/{user_id:str}/loras", status_code=200, summary="Add a LoRA to a user's session (A1111 bot)",
          responses=errors(409, 413))
    async def add_lora(self, principal: DialectCaller, layout: LayoutDep, user_id: UserId,
                       data: JSONBody[AddLora]) -> SessionAnswer:
        await self._session(user_id, principal, layout)
        if lora_file(layout.loras_dir, data.filename) is None:
            raise Invalid(f"filename: unknown LoRA {data.filename!r}; see GET /a1111/loras")
        session = await sessions.add_lora(user_id, SessionLora(name=data.filename, weight=data.weight), principal,
                                          layout=layout)
        return SessionAnswer(message="LoRA added to session", session=bot.user_session(user_id, session, layout))

    @delete("/sessions/{user_id:str}/loras/{filename:str}", status_code=200,
            summary="Remove a LoRA from a user's session (A1111 bot)", responses=errors(409))
    async def remove_lora(self, principal: DialectCaller, layout: LayoutDep, user_id: UserId,
                          filename: FromPath[str]) -> Message:
        await self._session(user_id, principal, layout)
        try:
            await sessions.remove_lora(user_id, filename, principal, layout=layout)
        except NotFound:
            raise NotFound("LoRA not found in session") from None
        return Message(message="LoRA removed from session")

    @delete("/sessions/{user_id:str}/loras", status_code=200, summary="Clear a user's LoRAs (A1111 bot)",
            responses=errors(409))
    async def clear_loras(self, principal: DialectCaller, layout: LayoutDep, user_id: UserId) -> Message:
        await self._session(user_id, principal, layout)
        await sessions.clear_loras(user_id, principal, layout=layout)
        return Message(message="All LoRAs cleared from session")

    @post("/sessions/{user_id:str}/settings", status_code=200,
          summary="Merge custom_settings into a user's session (A1111 bot's update_custom_settings)",
          responses=errors(409, 413))
    async def update_settings(self, principal: DialectCaller, layout: LayoutDep, catalog: CatalogDep,
                              user_id: UserId, data: JSONBody[dict[str, Any]]) -> SessionAnswer:
        """Keys as in `custom_settings` (see docs/dialects/a1111-bot.md); null removes one."""
        await self._session(user_id, principal, layout)
        session = await sessions.change_session(user_id, lambda body: bot.with_settings(body, data, catalog),
                                                principal, layout=layout, catalog=catalog)
        return SessionAnswer(message="Custom settings updated", session=bot.user_session(user_id, session, layout))

    # -- presets --------------------------------------------------------------------------------------

    @get("/presets/{user_id:str}", summary="A user's presets (A1111 bot)", responses=errors())
    async def list_presets(self, principal: DialectCaller, layout: LayoutDep, user_id: UserId) -> PresetList:
        found = await presets.list_presets(principal, layout=layout)
        return PresetList(presets=[bot.preset_info(p, layout) for p in found.presets if bot.owns(user_id, p.id)])

    @post("/presets/{user_id:str}", status_code=200, summary="Save a preset (A1111 bot)", responses=errors(409, 413))
    async def save_preset(self, principal: DialectCaller, layout: LayoutDep, catalog: CatalogDep, user_id: UserId,
                          data: JSONBody[SavePreset]) -> PresetSaved:
        body = bot.preset_body(user_id, data.name, data.description, data.config, catalog)
        preset = await presets.create_preset(body, principal, layout=layout, catalog=catalog)
        return PresetSaved(message="Preset saved", preset_id=preset.id)

    @delete("/presets/{user_id:str}/{preset_id:str}", status_code=200, summary="Delete a preset (A1111 bot)",
            responses=errors())
    async def delete_preset(self, principal: DialectCaller, layout: LayoutDep, user_id: UserId,
                            preset_id: FromPath[str]) -> Message:
        try:
            if not bot.owns(user_id, preset_id):
                raise NotFound("Preset not found")
            await presets.delete_preset(preset_id, principal, layout=layout)
        except NotFound:
            raise NotFound("Preset not found") from None
        return Message(message="Preset deleted")

    # -- generation -----------------------------------------------------------------------------------

    @staticmethod
    async def _submit(body, principal: Principal, *, bus, files, limits, idempotency, catalog, config, layout,
                      readside, init_image: str | None = None) -> GenerationAnswer:
        session = await A1111BotRoutes._session(body.user_id, principal, layout)
        request = job_request(body, session, catalog)
        if init_image is not None:
            request = msgspec.structs.replace(request, init_image=init_image)
        doc, _ = await jobs.submit_job(request, principal, bus=bus, files=files, limits=limits,
                                       idempotency=idempotency, catalog=catalog, settings=config, layout=layout)
        estimate = None
        if readside is not None:
            placed = files.decode(await jobs.job_with_place(doc.id, principal, files=files, readside=readside))
            estimate = round(placed.eta_seconds) if placed.eta_seconds is not None else None
        return GenerationAnswer(job_id=doc.id, status="queued", message="Generation queued successfully",
                                estimated_time=estimate)

    @post("/generate/txt2img", status_code=200, summary="Queue a text-to-image job (A1111 bot)",
          responses=errors(409, 413, 429, 503))
    async def txt2img(self, principal: DialectCaller, bus: BusDep, files: FilesDep, limits: LimitsDep,
                      idempotency: IdempotencyDep, catalog: CatalogDep, config: ConfigDep, layout: LayoutDep,
                      readside_if_open: ReadSideIfOpenDep, data: JSONBody[GenerationBody]) -> GenerationAnswer:
        return await self._submit(data, principal, bus=bus, files=files, limits=limits, idempotency=idempotency,
                                  catalog=catalog, config=config, layout=layout, readside=readside_if_open)

    @post("/generate/img2img", status_code=200, summary="Queue an image-to-image job (A1111 bot; multipart)",
          responses=errors(409, 413, 429, 503))
    async def img2img(self, principal: DialectCaller, bus: BusDep, files: FilesDep, limits: LimitsDep,
                      idempotency: IdempotencyDep, catalog: CatalogDep, config: ConfigDep, layout: LayoutDep,
                      readside_if_open: ReadSideIfOpenDep,
                      data: Annotated[Img2ImgForm, Body(media_type=RequestEncodingType.MULTI_PART)]
                      ) -> GenerationAnswer:
        body = img2img_body(data)
        image = await data.image.read()
        if not image:
            raise Invalid("image: the uploaded file is empty")
        return await self._submit(body, principal, bus=bus, files=files, limits=limits, idempotency=idempotency,
                                  catalog=catalog, config=config, layout=layout, readside=readside_if_open,
                                  init_image=b64(image))

    @post("/generate/controlnet", status_code=200, summary="ControlNet: not supported (501)",
          responses=errors(501))
    async def controlnet(self, principal: DialectCaller) -> Response[ErrorBody]:
        return detail(501, NOT_IMPLEMENTED["controlnet"])

    @post("/generate/regional", status_code=200, summary="Regional prompting: not supported (501)",
          responses=errors(501))
    async def regional(self, principal: DialectCaller) -> Response[ErrorBody]:
        return detail(501, NOT_IMPLEMENTED["regional"])

    @get("/controlnet/models", summary="ControlNet models: not supported (501)", responses=errors(501))
    async def controlnet_models(self, principal: DialectCaller) -> Response[ErrorBody]:
        return detail(501, NOT_IMPLEMENTED["controlnet"])

    @post("/controlnet/preprocess", status_code=200, summary="ControlNet preprocessing: not supported (501)",
          responses=errors(501))
    async def controlnet_preprocess(self, principal: DialectCaller) -> Response[ErrorBody]:
        return detail(501, NOT_IMPLEMENTED["controlnet"])

    # -- jobs -----------------------------------------------------------------------------------------

    @get("/jobs/{job_id:str}", summary="A job's status and progress 0-1 (A1111 bot)", responses=errors())
    async def job(self, principal: DialectCaller, files: FilesDep, readside_if_open: ReadSideIfOpenDep,
                  job_id: FromPath[str]) -> JobStatusAnswer:
        try:
            data = await jobs.job_with_place(job_id, principal, files=files, readside=readside_if_open)
        except NotFound:
            raise NotFound("Job not found") from None
        return job_status(files.decode(data))

    @get("/jobs/{job_id:str}/result", summary="A finished job's images, base64 PNG (A1111 bot)",
         responses=errors() | NOT_READY)
    async def result(self, principal: DialectCaller, files: FilesDep, job_id: FromPath[str]) -> JobResult:
        try:
            doc: JobDocument = await asyncio.to_thread(jobs.read_job, files, job_id, principal)
        except NotFound:
            raise NotFound(RESULT_NOT_READY) from None
        if doc.status not in TERMINAL_STATUSES:
            raise NotFound(RESULT_NOT_READY)
        found = await asyncio.to_thread(image_bytes, doc, files) if doc.status == "completed" else []
        infotexts = [read_png_info(png).parameters or "" for _, png in found]
        status = STATUSES[doc.status]
        error = None if status == "completed" else (doc.error or f"the job was {doc.status}: {doc.message}")
        return JobResult(job_id=doc.id, status=status, images=[b64(png) for _, png in found],
                         info=info(doc, infotexts), parameters=parameters(doc), error=error)
