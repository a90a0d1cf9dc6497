"""LoRA files for a generator on another host: fetched from the control node's ingress by the
sha256 each job names (GET /v1/files/loras/{sha256}, with the worker key), checked against it
and kept in this worker's own folder, so that it shares nothing with the control node but the
broker.

Layout of the worker's `models/loras/`: `.sha256/<sha256>.safetensors` holds each fetched file
once (written to a temp name, checked, renamed; checked again once per process); `<name>.safetensors` is a link to the content
the last job with that name asked for. The pipeline loads LoRAs by name as on the control node,
and a LoRA whose content changed is a new adapter (adapters are keyed by the real file).

Fetching runs in the pipeline thread, right before a batch renders (one batch at a time, so no
two fetches race over a name). Any failure is a `LoraError`: the job fails with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import httpx
import structlog

from pipelines.errors import LoraError
from schemas.jobs import LoraRef
from schemas.layout import lora_file

log = structlog.get_logger("generator")

STORE = ".sha256"
SUFFIX = ".safetensors"
_CHUNK = 1024 * 1024


class LoraFetcher:
    """Makes the LoRAs a job names present and right in `folder`, fetching what is missing."""

    def __init__(self, ingress_url: str, token: str, folder: Path, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.ingress_url = ingress_url.rstrip("/")
        self.folder = folder
        self.store = folder / STORE
        # sha256 of files found under a LoRA's name, by identity (path, inode, size, mtime).
        self.hashes: dict[tuple[str, int, int, int], str] = {}
        self.client = httpx.Client(base_url=self.ingress_url, timeout=timeout, follow_redirects=False,
                                   headers={"Authorization": f"Bearer {token}"} if token else {}, transport=transport)

    def ensure(self, loras: tuple[LoraRef, ...]) -> None:
        for ref in loras:
            self._ensure(ref)

    def _ensure(self, ref: LoraRef) -> None:
        present = lora_file(self.folder, ref.name)
        if ref.sha256 is None:
            if present is None:
                raise LoraError(f"LoRA {ref.name!r} is not on this worker ({self.folder}) and the job names no "
                                f"sha256 to fetch it by")
            return
        if present is not None and self._sha256(present) == ref.sha256:
            return
        stored = self.store / f"{ref.sha256}{SUFFIX}"
        # A kept copy is checked once per process (by identity): a cache, not fsynced, so a power
        # cut may have left it short; then it is fetched again.
        if not (stored.is_file() and self._sha256(stored) == ref.sha256):
            self._download(ref, stored)
        self._link(Path(ref.name).name, stored)

    def _sha256(self, path: Path) -> str | None:
        try:
            st = path.stat()
            identity = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
            if identity not in self.hashes:
                digest = hashlib.sha256()
                with path.open("rb") as file:
                    while chunk := file.read(_CHUNK):
                        digest.update(chunk)
                self.hashes[identity] = digest.hexdigest()
            return self.hashes[identity]
        except OSError:
            return None

    def _download(self, ref: LoraRef, stored: Path) -> None:
        url = f"/v1/files/loras/{ref.sha256}"
        where = f"LoRA {ref.name!r} (sha256 {ref.sha256}) could not be fetched from {self.ingress_url}"
        self.store.mkdir(parents=True, exist_ok=True)
        temp = self.store / f".{ref.sha256}.{os.getpid()}.part"
        digest, size = hashlib.sha256(), 0
        try:
            with self.client.stream("GET", url) as answer:
                if answer.status_code != 200:
                    answer.read()
                    raise LoraError(f"{where}: HTTP {answer.status_code} {_message(answer)}")
                with temp.open("wb") as out:
                    for chunk in answer.iter_bytes(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            if digest.hexdigest() != ref.sha256:
                raise LoraError(f"{where}: the {size} bytes received hash to {digest.hexdigest()}")
            os.replace(temp, stored)
        except httpx.HTTPError as exc:
            raise LoraError(f"{where}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise LoraError(f"{where}: cannot write {stored}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
        log.info("LoRA fetched", lora=ref.name, sha256=ref.sha256, bytes=size)

    def _link(self, name: str, stored: Path) -> None:
        """`<name>.safetensors` -> `.sha256/<sha256>.safetensors`, replaced atomically."""
        link = self.folder / f"{name}{SUFFIX}"
        temp = self.folder / f".{name}.{os.getpid()}.link"
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        os.symlink(Path(STORE) / stored.name, temp)
        os.replace(temp, link)

    def close(self) -> None:
        self.client.close()


def _message(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("message", ""))
    except ValueError:
        return answer.text[:200]


class FetchingRender:
    """The worker's render path (`worker.Render`), with each job's LoRAs made present first."""

    def __init__(self, inner, fetcher: LoraFetcher):
        self.inner = inner
        self.fetcher = fetcher

    def __call__(self, model, commands, watch):
        for command in commands:
            self.fetcher.ensure(command.spec.loras)
        return self.inner(model, commands, watch)

    def finish(self, commands, rendered, skip):
        return self.inner.finish(commands, rendered, skip)
