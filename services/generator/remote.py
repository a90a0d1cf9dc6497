"""What a generator adds around its render callable (wired by `main`): LoRA fetching when it
runs on another host (DARKROOM_INGRESS_URL set), and its presence (always)."""

from __future__ import annotations

from pathlib import Path

from pipelines.loader import ModelCache
from schemas.settings import Settings
from services.generator.fetcher import FetchingRender, LoraFetcher
from services.generator.presence import Presence, TalliedRender


def wrap_render(render, settings: Settings, *, lora_folder: Path, cache: ModelCache, worker_id: str,
                device: str, max_batch: int) -> tuple[TalliedRender, Presence]:
    """The render callable the worker runs, and the presence that reports on it."""
    if settings.ingress_url:
        render = FetchingRender(render, LoraFetcher(settings.ingress_url, settings.worker_token, lora_folder))
    tallied = TalliedRender(render)

    def describe() -> tuple[str, str, list[str]]:
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

    presence = Presence(worker_id=worker_id, tally=tallied.tally, describe=describe, max_batch=max_batch,
                        interval=settings.presence_interval)
    return tallied, presence
