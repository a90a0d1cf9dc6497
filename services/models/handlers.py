"""The models stage's effects: accept a pull (recorded, then run in the background), pull a model
(fetch, verify, place, record, announce) and remove one (refused while jobs use it)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog

from schemas.api import PullStatus
from schemas.catalog import ModelEntry, ModelFile, PulledModel, model_name_from_source
from schemas.events import (
    Event,
    ModelAvailable,
    ModelPullFailed,
    ModelPullProgressed,
    ModelPullStarted,
    ModelRemoved,
    PullModel,
    RemovalResult,
    RemoveModel,
)
from schemas.layout import LORA_SUFFIXES, DataLayout, lora_file
from services.models import downloads, inspect
from services.models.downloads import DownloadError, Plan
from services.models.files import UnusableSource, check_name, is_pickle
from services.models.inspect import NotAModel
from services.models.store import ModelStore, PullRecord, now

log = structlog.get_logger("models")
GiB = 1024**3


class PullRefused(ValueError):
    """The pull is not done, for a reason the operator can act on (the message)."""


@dataclass
class Stage:
    """What the models stage's handlers work with (built by main)."""

    layout: DataLayout
    store: ModelStore
    catalog: object  # services.runtime.LiveCatalog
    publish: Callable[[Event], Awaitable[None]]
    publish_soon: Callable[[Event], None]
    # Ids of pending or processing jobs that use a model (checkpoint) or LoRA: (kind, name) -> ids.
    jobs_using: Callable[[str, str], list[str]]
    disk_reserve: int = GiB
    progress_interval: float = 0.25
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


def _status(command: PullModel, name: str) -> PullStatus:
    return PullStatus(id=command.command_id, source=command.source, name=name, kind=command.kind,
                      revision=command.revision, created_at=now(), updated_at=now())


async def accept_pull(command: PullModel, *, stage: Stage) -> None:
    """Record the pull durably and queue it; the command is acked then (a pull outlasts any
    consumer timeout), and a stage that stops resumes the pull from its record."""
    existing = await asyncio.to_thread(stage.store.read_pull, command.command_id)
    if existing is not None:
        return  # a redelivery: the record is already being worked on
    record = PullRecord(command=command, status=_status(command, command.name or model_name_from_source(command.source)))
    await asyncio.to_thread(stage.store.save_pull, record)
    stage.queue.put_nowait(record)


async def run_pulls(stage: Stage) -> None:
    """Pull one model at a time (they share the disk and the network), oldest first."""
    for record in await asyncio.to_thread(stage.store.unfinished):
        stage.queue.put_nowait(record)
    while True:
        record = await stage.queue.get()
        await pull_model(record, stage=stage)


async def pull_model(record: PullRecord, *, stage: Stage) -> None:
    """Fetch, verify, place and record one model or LoRA; announce each phase on the bus."""
    command, status = record.command, record.status
    try:
        await _pull(record, stage)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # every failure ends the pull with its reason; the stage goes on
        known = (PullRefused, DownloadError, UnusableSource, NotAModel)
        reason = str(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, (*known, OSError)):
            log.exception("pull failed unexpectedly", pull_id=status.id)
        log.warning("pull failed", pull_id=status.id, model=status.name, reason=reason)
        status.state, status.reason = "failed", reason
        await asyncio.to_thread(stage.store.save_pull, record)
        await stage.publish(ModelPullFailed(pull_id=command.command_id, model=status.name, reason=reason))


def _pull_folder(stage: Stage, command: PullModel, name: str) -> Path:
    """The same request pulls into the same folder, so pulling again resumes what was fetched."""
    key = hashlib.sha256("\0".join((command.kind, command.source, command.revision or "", name)).encode()).hexdigest()
    return stage.layout.partial_models_dir / key[:20]


async def _pull(record: PullRecord, stage: Stage) -> None:
    command, status = record.command, record.status
    name, lora = status.name, command.kind == "lora"
    problem = check_name(name) or _name_taken(stage, command.kind, name)
    if problem:
        raise PullRefused(problem)
    plan = await asyncio.to_thread(downloads.plan, command.source, lora=lora, revision=command.revision,
                                   sha256=command.sha256)
    pickled = [f.path for f in plan.files if is_pickle(f.path)]
    if pickled and not command.allow_pickle:
        raise PullRefused(f"{', '.join(pickled)}: pickled weights can run code when loaded; pull a .safetensors "
                          "release instead, or allow it explicitly (--allow-pickle)")
    if lora and not plan.files[0].path.endswith(LORA_SUFFIXES):
        raise PullRefused(f"{plan.files[0].path}: a LoRA must be one of {', '.join(LORA_SUFFIXES)}")
    config = _single_file_config(stage, command) if plan.layout == "file" and not lora else None
    folder = _pull_folder(stage, command, name)
    folder.mkdir(parents=True, exist_ok=True)
    _check_disk(stage, plan, folder)

    status.state, status.total_bytes, status.files, status.revision = "pulling", plan.total_bytes, len(plan.files), plan.revision
    await asyncio.to_thread(stage.store.save_pull, record)
    await stage.publish(ModelPullStarted(pull_id=status.id, model=name, kind=command.kind, source=command.source,
                                         files=len(plan.files), total_bytes=plan.total_bytes))
    await _fetch_all(stage, record, plan, folder)

    status.state = "verifying"
    await asyncio.to_thread(stage.store.save_pull, record)
    files = await asyncio.to_thread(_verify, plan, folder)
    status.state = "placing"
    await asyncio.to_thread(stage.store.save_pull, record)
    pulled = await asyncio.to_thread(_place, stage, command, name, plan, folder, files, config)
    await asyncio.to_thread(stage.store.add, command.kind, name, pulled)
    status.state, status.done_bytes = "available", pulled.bytes
    await asyncio.to_thread(stage.store.save_pull, record)
    family = pulled.entry.family if pulled.entry else None
    log.info("model available", model=name, kind=command.kind, path=pulled.path, bytes=pulled.bytes, family=family)
    await stage.publish(ModelAvailable(pull_id=status.id, model=name, kind=command.kind, path=pulled.path,
                                       files={f.path: f.sha256 for f in pulled.files}, bytes=pulled.bytes, family=family))


def _name_taken(stage: Stage, kind: str, name: str) -> str | None:
    if kind == "lora":
        if lora_file(stage.layout.loras_dir, name):
            return f"a LoRA named {name!r} exists; remove it first (darkroom models remove --kind lora {name})"
        return None
    if name in stage.catalog.current().models or (stage.layout.models_dir / name).exists():
        return f"a model named {name!r} exists; remove it first (darkroom models remove {name}) or pull with --name"
    return None


def _single_file_config(stage: Stage, command: PullModel) -> Path:
    """The local diffusers folder whose configs a single-file checkpoint loads with (offline):
    the one asked for (a catalog id or a folder), else the default model's."""
    catalog = stage.catalog.current()
    wanted = command.config or catalog.default
    source = catalog.models[wanted].source if wanted in catalog.models else wanted
    if catalog.models.get(wanted) and catalog.models[wanted].config:
        source = catalog.models[wanted].config
    folder = Path(source).expanduser()
    if not (folder / "model_index.json").is_file():
        raise PullRefused(f"config {wanted!r}: a single-file checkpoint needs a local diffusers folder (or a catalog "
                          "model with one) for its configs; pass --config")
    return folder.resolve()


def _check_disk(stage: Stage, plan: Plan, folder: Path) -> None:
    have = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    needed = max(plan.total_bytes - have, 0)
    free = shutil.disk_usage(stage.layout.models_dir).free
    if needed + stage.disk_reserve > free:
        raise PullRefused(f"not enough disk space: the pull needs {_size(needed)} more and {_size(free)} is free in "
                          f"{stage.layout.models_dir} (keeping {_size(stage.disk_reserve)} spare, "
                          "DARKROOM_MODELS_DISK_RESERVE)")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


async def _fetch_all(stage: Stage, record: PullRecord, plan: Plan, folder: Path) -> None:
    """Fetch every file in a thread; progress goes out at most every `progress_interval` seconds
    (transient events) and into the pull's record about once a second."""
    status, loop = record.status, asyncio.get_running_loop()
    finished = 0
    last = {"event": 0.0, "record": 0.0}

    def on_bytes(path: str, done: int) -> None:
        status.done_bytes = finished + done
        moment = time.monotonic()
        if moment - last["event"] >= stage.progress_interval:
            last["event"] = moment
            event = ModelPullProgressed(pull_id=status.id, model=status.name, done_bytes=status.done_bytes,
                                        total_bytes=status.total_bytes, file=path)
            loop.call_soon_threadsafe(stage.publish_soon, event)
        if moment - last["record"] >= 1.0:
            last["record"] = moment
            stage.store.save_pull(record)

    for file in plan.files:
        target = await asyncio.to_thread(downloads.fetch, plan, file, folder, on_bytes)
        finished += target.stat().st_size
    status.done_bytes = finished
    stage.publish_soon(ModelPullProgressed(pull_id=status.id, model=status.name, done_bytes=finished,
                                           total_bytes=status.total_bytes))


def _verify(plan: Plan, folder: Path) -> list[ModelFile]:
    """Hash every file; a hash or size the source announced must match (a bad file is deleted, so
    pulling again fetches it afresh)."""
    files = []
    for remote in plan.files:
        path = folder / remote.path
        digest, size = downloads.sha256_of(path), path.stat().st_size
        if remote.sha256 and digest != remote.sha256.lower():
            path.unlink()
            raise PullRefused(f"checksum mismatch for {remote.path}: expected sha256 {remote.sha256.lower()}, got "
                              f"{digest}; the file was deleted")
        if remote.size is not None and size != remote.size:
            path.unlink()
            raise PullRefused(f"{remote.path} has {size} bytes, the source announced {remote.size}; the file was deleted")
        files.append(ModelFile(path=remote.path, size=size, sha256=digest))
    return files


def _place(stage: Stage, command: PullModel, name: str, plan: Plan, folder: Path, files: list[ModelFile],
           config: Path | None) -> PulledModel:
    """Move the verified files into place with one rename, and describe them for the catalog."""
    layout = stage.layout
    shutil.rmtree(folder / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
    base = layout.base.resolve()

    def relative(path: Path) -> str:
        path = path.resolve()
        return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)

    pulled_at = now().isoformat()
    if command.kind == "lora":
        single = folder / files[0].path
        target = layout.loras_dir / f"{name}{single.suffix}"
        single.rename(target)
        shutil.rmtree(folder, ignore_errors=True)
        return PulledModel(kind="lora", origin=command.source, revision=plan.revision, pulled_at=pulled_at,
                           path=relative(target), files=[msgspec.structs.replace(files[0], path=target.name)])
    target = layout.models_dir / name
    if plan.layout == "folder":
        family, native = inspect.folder_family(folder)
        source, entry_config = target, None
    else:
        source = target / files[0].path
        family, native = inspect.checkpoint_family(folder / files[0].path), 0
        config_family, _ = inspect.folder_family(config)
        if config_family != family:
            raise PullRefused(f"{files[0].path} is a {family} checkpoint but its config folder {config} is "
                              f"{config_family}; pass --config with a {family} diffusers folder")
        entry_config = relative(config)
    folder.rename(target)
    defaults, limits = inspect.defaults_for(family, native or inspect.NATIVE_SIZE[family])
    entry = ModelEntry(source=relative(source), config=entry_config, family=family, defaults=defaults, limits=limits,
                       description=f"pulled from {command.source}" + (f" at {plan.revision[:12]}" if plan.revision else ""))
    return PulledModel(kind="checkpoint", origin=command.source, revision=plan.revision, pulled_at=pulled_at,
                       path=relative(target), files=files, entry=entry)


async def remove_model(command: RemoveModel, *, stage: Stage) -> RemovalResult:
    """Remove a pulled model or LoRA: refused while pending or processing jobs use it; otherwise
    out of the catalog first (no new job can name it), then its files, then `model.removed`."""
    name, kind = command.model, command.kind
    pulled = (await asyncio.to_thread(stage.store.read))
    found = (pulled.models if kind == "checkpoint" else pulled.loras).get(name)
    if found is None:
        if kind == "checkpoint" and name in stage.catalog.current().models:
            return RemovalResult(removed=False, message=f"model {name!r} is not a pulled model (it is built in or "
                                                        "comes from darkroom.toml): edit darkroom.toml to remove it")
        return RemovalResult(removed=False, message=f"no pulled {'LoRA' if kind == 'lora' else 'model'} named {name!r}")
    jobs = await asyncio.to_thread(stage.jobs_using, kind, name)
    if jobs:
        shown = ", ".join(jobs[:5]) + (f" and {len(jobs) - 5} more" if len(jobs) > 5 else "")
        return RemovalResult(removed=False, jobs=jobs, message=(
            f"{name!r} is used by {len(jobs)} pending or processing job(s) ({shown}); it was not removed. "
            "Try again when they end (darkroom models remove --wait waits for them)."))
    await asyncio.to_thread(stage.store.remove, kind, name)
    path = stage.layout.base / found.path
    await asyncio.to_thread(_delete, path)
    await stage.publish(ModelRemoved(model=name, kind=kind))
    log.info("model removed", model=name, kind=kind, path=found.path)
    return RemovalResult(removed=True, message=f"removed {'LoRA' if kind == 'lora' else 'model'} {name!r} "
                                               f"({_size(found.bytes)} freed)")


def _delete(path: Path) -> None:
    if path.is_dir():
        # Renamed away first: a half-deleted model folder is never seen under its name.
        doomed = path.with_name(f".removing-{path.name}")
        path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
