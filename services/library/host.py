"""The LoRA library as the ingress process hosts it: the index, kept current by watching the
folder (watchfiles: add, remove, rename, rewrite), and rescanned on demand."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
import watchfiles

from services.library.index import SUFFIX, Entry, LoraIndex, ScanResult, View
from services.library.metadata import file_base

log = structlog.get_logger("library")


def _relevant(_: watchfiles.Change, path: str) -> bool:
    # LoRA files and their preview images; not temp files of a copy in progress.
    name = Path(path).name
    return not name.startswith(".") and not name.endswith((".tmp", ".part", ".crdownload"))


class LoraLibrary:
    """The LoRA index of one folder, cached in `cache_path`; `follow` keeps it current."""

    def __init__(self, folder: Path, cache_path: Path):
        self.folder = folder
        self.index = LoraIndex(folder, cache_path)

    @property
    def view(self) -> View:
        return self.index.view

    def get(self, name: str) -> Entry | None:
        return self.index.get(name)

    async def rescan(self) -> ScanResult:
        return await asyncio.to_thread(self.index.scan)

    async def follow(self) -> None:
        """Scan once, then again whenever the folder changes; runs until cancelled."""
        await self._rescan_logged()
        while True:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                async for _ in watchfiles.awatch(self.folder, watch_filter=_relevant, debounce=200, step=50,
                                                 recursive=False):
                    await self._rescan_logged()
            except (FileNotFoundError, RuntimeError) as exc:  # the folder was removed or replaced
                log.warning("LoRA folder watch restarted", error=str(exc))
            await asyncio.sleep(1)
            await self._rescan_logged()

    async def _rescan_logged(self) -> None:
        try:
            await self.rescan()
        except OSError as exc:
            log.warning("LoRA rescan failed", error=str(exc))


def lora_base(path: Path) -> str:
    """The base family a LoRA file declares (`unknown` when it cannot be read)."""
    return file_base(path)


__all__ = ["SUFFIX", "Entry", "LoraLibrary", "ScanResult", "lora_base"]
