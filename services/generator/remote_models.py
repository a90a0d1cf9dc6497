"""Models for a generator on another host: it learns the control node's models from the ingress
(GET /v1/files/models, at start, when `model.available` / `model.removed` arrive, and when a job
names a model it has not heard of), lists them in its catalog, and fetches a model's files into
its own `models/<id>/` when a job first needs it.

A fetch writes every file into a temp folder (`models/.<id>.<pid>.fetching`), checks each against
the sha256 the manifest lists, records the list (`.darkroom-fetched.json`) and renames the folder
into place: a model folder is whole or absent, and a model whose files do not hash right fails
its job with the reason and leaves nothing behind. The next job finds the folder and its record
and loads it without fetching again; a model removed on the control node (`model.removed`) is
deleted here too. Fetching runs in the pipeline thread inside the model load,
so the usual `model.loading` / `model.loaded` events frame it.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path, PurePosixPath

import msgspec
import structlog

from pipelines.errors import ModelLoadError
from schemas.catalog import MODEL_NAME, Catalog, ModelEntry, ModelFile
from schemas.events import Event, ModelRemoved
from schemas.workers import ModelManifest, RemoteModel
from services.generator.fetcher import FetchFailed, IngressFiles
from services.runtime import CatalogView

log = structlog.get_logger("generator")

RECORD = ".darkroom-fetched.json"
# A job naming a model this worker has not heard of asks the ingress again, at most this often.
MISS_REFRESH_SECONDS = 2.0

_files = msgspec.json.Decoder(list[ModelFile])


def _inside(path: str) -> bool:
    """Whether a relative path stays inside its folder (`.` is the folder itself)."""
    parts = PurePosixPath(path).parts
    return path == "." or (bool(parts) and not PurePosixPath(path).is_absolute()
                           and not any(part in ("..", "") or part.startswith(".") for part in parts))


class ModelFetcher:
    """The manifest, and a model's files made present and right in `models_dir/<id>`."""

    def __init__(self, files: IngressFiles, models_dir: Path):
        self.files = files
        self.models_dir = models_dir

    def manifest(self) -> dict[str, RemoteModel]:
        """The control node's models; one whose name or paths would leave `models/<id>` is left
        out (and logged): nothing the ingress says may write outside this worker's models folder."""
        try:
            body = self.files.get("/v1/files/models")
            listed = msgspec.json.decode(body, type=ModelManifest).models
        except (FetchFailed, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise FetchFailed(f"the model list at {self.files.url}/v1/files/models could not be read: {exc}") from exc
        found = {}
        for model in listed:
            paths = [f.path for f in model.files] + [model.entry.source] + ([model.entry.config] if model.entry.config else [])
            if MODEL_NAME.match(model.id) and all(_inside(path) for path in paths):
                found[model.id] = model
            else:
                log.warning("control node's model left out: its name or paths leave its folder", model=model.id)
        return found

    def folder(self, model: RemoteModel) -> Path:
        return self.models_dir / model.id

    def present(self, model: RemoteModel) -> bool:
        """Whether `models/<id>` holds this very version (its record lists the same files, each
        of the listed size); a folder without a record was not fetched here and is never touched."""
        folder = self.folder(model)
        try:
            recorded = _files.decode((folder / RECORD).read_bytes())
        except FileNotFoundError:
            if folder.exists():
                raise ModelLoadError(f"model {model.id!r}: {folder} exists on this worker but was not fetched from "
                                     f"the control node; move it away (or list it in this worker's darkroom.toml)"
                                     ) from None
            return False
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return False
        return recorded == model.files and all(
            (folder / f.path).is_file() and (folder / f.path).stat().st_size == f.size for f in model.files)

    def forget(self, model_id: str) -> None:
        """Delete `models/<id>` if this worker fetched it (a folder without a record is not ours)."""
        folder = self.models_dir / model_id
        if (folder / RECORD).is_file():
            trash = self.models_dir / f".{model_id}.{threading.get_native_id()}.old"
            folder.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
            log.info("removed model's fetched files deleted", model=model_id)

    def ensure(self, model: RemoteModel) -> bool:
        """Make the model present; True when it had to be fetched."""
        if self.present(model):
            return False
        started = time.perf_counter()
        folder = self.folder(model)
        temp = self.models_dir / f".{model.id}.{threading.get_native_id()}.fetching"
        shutil.rmtree(temp, ignore_errors=True)
        try:
            for file in model.files:
                try:
                    self.files.download(f"/v1/files/models/{model.id}/{file.path}", temp / file.path, file.sha256)
                except FetchFailed as exc:
                    raise ModelLoadError(f"model {model.id!r} could not be fetched from {self.files.url}: file "
                                         f"{file.path} (sha256 {file.sha256}): {exc}; nothing was kept") from exc
            (temp / RECORD).write_bytes(msgspec.json.encode(model.files))
            old = self.models_dir / f".{model.id}.{threading.get_native_id()}.old"
            if folder.exists():  # an earlier version, fetched here: swapped out, then deleted
                folder.rename(old)
            temp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        log.info("model fetched", model=model.id, files=len(model.files), bytes=model.bytes,
                 seconds=round(time.perf_counter() - started, 3))
        return True


class RemoteCatalog(CatalogView):
    """The worker's own catalog (a `runtime.LiveCatalog`) plus the control node's models it can
    fetch; its own entries win a name both have. It reads like a `Catalog`."""

    def __init__(self, local, fetcher: ModelFetcher):
        self.local = local
        self.fetcher = fetcher
        self.remote: dict[str, RemoteModel] = {}
        self._asked_at = float("-inf")
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Ask the ingress for its models now (blocks: an HTTP request). Unreachable: keep what
        was known, and say so."""
        self._asked_at = time.monotonic()
        try:
            found = self.fetcher.manifest()
        except FetchFailed as exc:
            log.warning("control node's models unknown for now", error=str(exc))
            return
        with self._lock:
            self.remote = found
        log.info("control node's models", models=sorted(found))

    def refresh_if_older(self, seconds: float) -> None:
        """Ask again when the last answer is older than `seconds` (blocks): a model added to the
        control node's darkroom.toml announces itself to nobody, and under affinity routing its
        jobs wait in its own queue, which only a worker that knows the model looks at."""
        if time.monotonic() - self._asked_at >= seconds:
            self.refresh()

    def entry(self, model: RemoteModel) -> ModelEntry:
        """The manifest's entry with its paths inside this worker's `models/<id>/`."""
        folder = self.fetcher.folder(model)
        return msgspec.structs.replace(model.entry, id=model.id, source=str(folder / model.entry.source),
                                       config=str(folder / model.entry.config) if model.entry.config else None)

    def fetched(self, entry: ModelEntry) -> RemoteModel | None:
        """The remote model an entry of this catalog stands for (None for the worker's own)."""
        with self._lock:
            model = self.remote.get(entry.id)
        return model if model is not None and entry.id not in self.local.models else None

    def current(self, *, force: bool = False) -> Catalog:
        local = self.local.current(force=force)
        with self._lock:
            remote = {key: self.entry(m) for key, m in self.remote.items() if key not in local.models}
        return msgspec.structs.replace(local, models={**remote, **local.models}) if remote else local

    def model(self, model_id: str | None) -> ModelEntry:
        try:
            return self.current().model(model_id)
        except KeyError:
            if model_id is None or time.monotonic() - self._asked_at < MISS_REFRESH_SECONDS:
                raise
        self.refresh()  # a model pulled on the control node a moment ago
        return self.current().model(model_id)


class FetchingCache:
    """The worker's model cache (`pipelines.loader.ModelCache`), fetching a remote model's files
    before loading it (in the pipeline thread, inside the usual model.loading / model.loaded)."""

    def __init__(self, inner, catalog: RemoteCatalog):
        self.inner = inner
        self.catalog = catalog

    def load(self, entry: ModelEntry):
        model = self.catalog.fetched(entry)
        if model is not None:
            self.catalog.fetcher.ensure(model)
        return self.inner.load(entry)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


async def follow_models(event: Event, *, catalog: RemoteCatalog) -> None:
    """A model came or went on the control node: ask for the list again (off the event loop); a
    removed one's fetched files go too (its warm pipeline is dropped by `follow_catalog`)."""
    await asyncio.to_thread(catalog.refresh)
    if isinstance(event, ModelRemoved) and event.kind == "checkpoint" and event.model not in catalog.remote:
        await asyncio.to_thread(catalog.fetcher.forget, event.model)
