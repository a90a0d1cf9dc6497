"""/v1/files (what remote generator workers fetch: LoRAs by content hash, models by the manifest
that lists each file's hash) and /v1/workers (admin: the workers heard from)."""

from __future__ import annotations

import asyncio

from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.response import File

from schemas.workers import ModelManifest, WorkerList
from services.ingress.domain.worker_files import lora_by_hash, model_file, model_manifest
from services.ingress.routes.common import Caller, CatalogDep, ConfigDep, FileReader, errors
from services.ingress.routes.library import LIBRARY, LibraryDep
from services.ingress.workers import WorkerBoard
from services.library.hashes import lora_hashes, model_hashes


def provide_board(state: State) -> WorkerBoard:
    return state["workers"]


class WorkerFileRoutes(Controller):
    path = "/v1/files"
    tags = ["workers"]
    dependencies = LIBRARY

    @get("/loras/{sha256:str}", summary="A LoRA file by its sha256 (worker or admin keys)",
         media_type="application/octet-stream", responses=errors(400, 403, 404, 503))
    async def lora(self, file_reader: FileReader, library: LibraryDep, sha256: FromPath[str]) -> File:
        """The bytes of the library's LoRA file with this content hash: jobs name each LoRA's
        sha256 (`loras[].sha256`), and a generator worker on another host fetches the file by it,
        checks it and keeps it. Only worker keys (`darkroom workers add`) and admin keys may."""
        path = await asyncio.to_thread(lora_by_hash, library, lora_hashes, sha256)
        return File(path=path, media_type="application/octet-stream", filename=f"{sha256}.safetensors")

    @get("/models", summary="The models a worker can fetch, file by file (worker or admin keys)",
         responses=errors(403))
    async def models(self, file_reader: FileReader, catalog: CatalogDep, config: ConfigDep) -> ModelManifest:
        """Every catalog model whose files are on the control node: its catalog entry (`source`
        and `config` relative to the model's folder) and each file's path, size and sha256. A
        generator worker started with `--ingress` reads it to know the models, and fetches a
        model's files when a job first needs it."""
        return await asyncio.to_thread(model_manifest, catalog, config.data_path, model_hashes)

    @get("/models/{model:str}/{path:path}", summary="One file of a model (worker or admin keys)",
         media_type="application/octet-stream", responses=errors(400, 403, 404))
    async def model_file(self, file_reader: FileReader, catalog: CatalogDep, model: FromPath[str],
                         path: FromPath[str]) -> File:
        """A file of a model as GET /v1/files/models lists it (`path` relative to the model's
        folder); the worker checks it against the listed sha256."""
        found = await asyncio.to_thread(model_file, catalog, model, path.lstrip("/"))
        return File(path=found, media_type="application/octet-stream", filename=found.name)


class WorkerRoutes(Controller):
    path = "/v1/workers"
    tags = ["workers"]
    dependencies = {"board": Provide(provide_board, sync_to_thread=False)}

    @get("/", summary="Generator workers heard from (admin)", responses=errors(403))
    async def workers(self, principal: Caller, board: NamedDependency[WorkerBoard]) -> WorkerList:
        """Every generator that announced itself (worker.presence) lately: its host, device,
        dtype, warm models, batch size, busy share and jobs done. One silent for 3 of its
        presence intervals is `gone`; after 10 it is no longer listed."""
        principal.require_admin()
        return board.listing()
