"""`darkroom models pull|list|show|remove`: the operator's side of the models stage.

A pull is sent to the running models stage and followed on the bus with a progress bar; with no
broker to reach (Darkroom not running), the same pull runs in this process instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from schemas.catalog import TINY_MODEL_ID, load_catalog, load_runtime_catalog
from schemas.events import (
    Event,
    ModelAvailable,
    ModelPullFailed,
    ModelPullProgressed,
    ModelPullStarted,
    PullModel,
    RemovalResult,
    RemoveModel,
)
from schemas.settings import Settings
from schemas.topology import MODEL_AVAILABLE, MODEL_PULL_FAILED, MODEL_PULL_PROGRESS, MODEL_PULL_STARTED, Topology

console = Console(stderr=True)
PULL_KEYS = (MODEL_PULL_STARTED, MODEL_PULL_PROGRESS, MODEL_PULL_FAILED, MODEL_AVAILABLE)


class PullView:
    """Renders one pull's events as a rich progress bar; `done` is set by its last event."""

    def __init__(self, pull_id: str, progress: Progress):
        self.pull_id = pull_id
        self.progress = progress
        self.task = progress.add_task("resolving", total=None, name="")
        self.done = asyncio.Event()
        self.result: Event | None = None

    async def on_event(self, event: Event) -> None:
        if getattr(event, "pull_id", None) != self.pull_id:
            return
        match event:
            case ModelPullStarted():
                self.progress.update(self.task, description=f"{event.model}: {event.files} file(s)",
                                     total=event.total_bytes or None)
            case ModelPullProgressed():
                self.progress.update(self.task, completed=event.done_bytes, total=event.total_bytes or None)
            case ModelAvailable() | ModelPullFailed():
                if isinstance(event, ModelAvailable):
                    self.progress.update(self.task, completed=event.bytes, total=event.bytes)
                self.result = event
                self.done.set()


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console)


async def pull(settings: Settings, command: PullModel, *, wait: bool = True) -> int:
    from ops.deadletters import amqp_url
    from services.bus import BrokerUnavailable, Bus

    try:
        url = amqp_url(settings)
        bus = await Bus.connect(url, Topology(settings.namespace), name="darkroom-models", timeout=5)
    except (SystemExit, BrokerUnavailable):
        console.print("Darkroom is not running (no broker): pulling in this process; its generators will see the "
                      "model when they start.")
        return await pull_here(settings, command)
    try:
        if await bus.consumer_count("models") == 0:
            console.print("[yellow]the models stage is not consuming yet: the pull waits in its queue[/yellow]")
        with _progress() as progress:
            view = PullView(command.command_id, progress)
            await bus.subscribe(PULL_KEYS, view.on_event, name="cli-pull")
            await bus.send(command)
            console.print(f"pull {command.command_id} sent")
            if not wait:
                return 0
            await view.done.wait()
        return _report(view.result)
    finally:
        await bus.close()


async def pull_here(settings: Settings, command: PullModel) -> int:
    """The models stage's own pull, run in this process (events go to the progress bar only)."""
    from services import runtime
    from services.models.handlers import Stage, accept_pull, pull_model
    from services.models.store import ModelStore

    layout = runtime.layout(settings)
    with _progress() as progress:
        view = PullView(command.command_id, progress)

        pending: set[asyncio.Future] = set()

        def soon(event: Event) -> None:
            future = asyncio.ensure_future(view.on_event(event))
            pending.add(future)
            future.add_done_callback(pending.discard)

        stage = Stage(layout=layout, store=ModelStore(layout), catalog=runtime.LiveCatalog(settings),
                      publish=view.on_event, publish_soon=soon, jobs_using=lambda kind, name: [],
                      disk_reserve=settings.models_disk_reserve)
        await accept_pull(command, stage=stage)
        await pull_model(stage.queue.get_nowait(), stage=stage)
    return _report(view.result)


def _report(result: Event | None) -> int:
    if isinstance(result, ModelAvailable):
        where = "the LoRA library" if result.kind == "lora" else "the catalog (GET /v1/models)"
        console.print(f"[green]{result.model}[/green] is available in {where}: {result.path}, "
                      f"{result.bytes / 1024**2:.1f} MiB, {len(result.files)} file(s) verified"
                      + (f", family {result.family}" if result.family else ""))
        return 0
    reason = result.reason if isinstance(result, ModelPullFailed) else "no answer"
    console.print(f"[red]pull failed:[/red] {reason}")
    return 1


async def remove(settings: Settings, name: str, kind: str, wait: float) -> int:
    from ops.deadletters import amqp_url
    from services.bus import BrokerUnavailable, Bus

    try:
        bus = await Bus.connect(amqp_url(settings), Topology(settings.namespace),
                                name="darkroom-models", timeout=5)
    except BrokerUnavailable as exc:
        console.print(f"[red]cannot reach the broker:[/red] {exc}; the models stage removes models while Darkroom runs")
        return 1
    try:
        if await bus.consumer_count("models") == 0:
            console.print("[red]the models stage is not running[/red] (`darkroom run` starts it)")
            return 1
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            answer = msgspec.json.decode(await bus.request(RemoveModel(model=name, kind=kind), timeout=30),
                                         type=RemovalResult)
            if answer.removed or not answer.jobs or asyncio.get_running_loop().time() >= deadline:
                break
            console.print(f"waiting for {len(answer.jobs)} job(s) that use {name!r}...")
            await asyncio.sleep(2)
    finally:
        await bus.close()
    console.print(answer.message)
    return 0 if answer.removed else 1


def list_models(settings: Settings) -> int:
    data = settings.data_path
    catalog = load_catalog(Path(settings.config_path).resolve(), data)
    pulled = load_runtime_catalog(data)
    table = Table("id", "family", "size", "default", "from", "source")
    for key, entry in sorted(catalog.models.items()):
        item = pulled.models.get(key)
        origin = "built in" if key == TINY_MODEL_ID else (f"pulled: {item.origin}" if item else "darkroom.toml")
        table.add_row(key, entry.family, f"{entry.defaults.width}x{entry.defaults.height}",
                      "yes" if key == catalog.default else "", origin, entry.source)
    for key, item in sorted(pulled.loras.items()):
        table.add_row(key, "LoRA", f"{item.bytes / 1024**2:.1f} MiB", "", f"pulled: {item.origin}", item.path)
    Console().print(table)
    return 0


def show(settings: Settings, name: str) -> int:
    data = settings.data_path
    pulled = load_runtime_catalog(data)
    item = pulled.models.get(name) or pulled.loras.get(name)
    catalog = load_catalog(Path(settings.config_path).resolve(), data)
    if item is None and name not in catalog.models:
        console.print(f"[red]no model or LoRA named {name!r}[/red]")
        return 1
    shown: dict = {}
    if name in catalog.models:
        shown["catalog_entry"] = msgspec.to_builtins(catalog.models[name])
    if item is not None:
        shown["pulled"] = msgspec.to_builtins(msgspec.structs.replace(item, entry=None))
    with contextlib.suppress(BrokenPipeError):
        print(msgspec.json.format(msgspec.json.encode(shown)).decode())
    return 0
