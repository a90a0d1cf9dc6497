"""What a generator adds around its engine (wired by `main`): on another host (DARKROOM_INGRESS_URL
set), the control node's models in its catalog, fetched when first needed, and LoRAs fetched by
hash; and its presence (always)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from pipelines.loader import ModelCache
from schemas.layout import DataLayout
from schemas.settings import Settings
from services.generator.engine import Engine
from services.generator.fetcher import FetchingRender, IngressFiles, LoraFetcher
from services.generator.presence import Presence, TalliedRender
from services.generator.remote_models import FetchingCache, ModelFetcher, RemoteCatalog, follow_models


@dataclass
class Attached:
    """The catalog, cache and render callable the worker uses, its presence, and (remote only)
    the handler that follows the control node's model changes."""

    catalog: object
    cache: ModelCache | FetchingCache
    render: TalliedRender
    presence: Presence
    follow_models: Callable[..., Awaitable[None]] | None


def attach(ready: Engine, settings: Settings, catalog, *, data: DataLayout, worker_id: str) -> Attached:
    """Blocks (it asks the ingress for its models once): run it off the event loop."""
    render, cache, follow = ready.render, ready.cache, None
    if settings.ingress_url:
        files = IngressFiles(settings.ingress_url, settings.worker_token)
        catalog = RemoteCatalog(catalog, ModelFetcher(files, data.models_dir))
        catalog.refresh()
        cache = FetchingCache(cache, catalog)
        render = FetchingRender(render, LoraFetcher(files, data.loras_dir))
        follow = partial(follow_models, catalog=catalog)
    tallied = TalliedRender(render)
    presence = Presence(worker_id=worker_id, tally=tallied.tally, describe=partial(_describe, cache, ready.device),
                        max_batch=ready.capacity, interval=settings.presence_interval)
    return Attached(catalog, cache, tallied, presence, follow)


def _describe(cache: ModelCache, device: str) -> tuple[str, str, list[str]]:
    """(device, dtype, warm model ids) for the presence event."""
    for _ in range(3):  # the pipeline thread may be loading or evicting a model this instant
        try:
            warm = cache.warm()
            break
        except RuntimeError:
            continue
    else:
        warm = []
    if not warm:
        return device, "", []
    return str(warm[-1].device), str(warm[-1].dtype).removeprefix("torch."), [m.entry.id for m in warm]



