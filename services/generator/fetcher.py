"""Files for a generator on another host, fetched from the control node's ingress with the worker
key and checked against their sha256 before use (`IngressFiles`), so that it shares nothing with
the control node but the broker. Models: `remote_models.py`. LoRAs, here: by the sha256 each job
names (GET /v1/files/loras/{sha256}), kept in this worker's own folder.

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


class FetchFailed(Exception):
    """A file could not be fetched whole and right from the ingress; the message says why."""


class IngressFiles:
    """The control node's /v1/files, with this worker's key: JSON, and files written to a temp
    path, hashed on the way and kept only when they hash to what was asked for."""

    def __init__(self, ingress_url: str, token: str, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = ingress_url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, timeout=timeout, follow_redirects=False,
                                   headers={"Authorization": f"Bearer {token}"} if token else {}, transport=transport)

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        try:
            answer = self.client.get(path, timeout=timeout)
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{type(exc).__name__}: {exc}") from exc
        if answer.status_code != 200:
            raise FetchFailed(f"HTTP {answer.status_code} {_message(answer)}")
        return answer.content

    def download(self, path: str, target: Path, sha256: str) -> int:
        """Write the file at `path` to `target` (via a temp name beside it) if it hashes to
        `sha256`; its size. Nothing is left behind when it does not."""
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.part")
        digest, size = hashlib.sha256(), 0
        try:
            with self.client.stream("GET", path) as answer:
                if answer.status_code != 200:
                    answer.read()
                    raise FetchFailed(f"HTTP {answer.status_code} {_message(answer)}")
                with temp.open("wb") as out:
                    for chunk in answer.iter_bytes(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            if digest.hexdigest() != sha256:
                raise FetchFailed(f"the {size} bytes received hash to {digest.hexdigest()}")
            os.replace(temp, target)
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise FetchFailed(f"cannot write {target}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
        return size

    def close(self) -> None:
        self.client.close()


class LoraFetcher:
    """Makes the LoRAs a job names present and right in `folder`, fetching what is missing."""

    def __init__(self, files: IngressFiles, folder: Path):
        self.files = files
        self.folder = folder
        self.store = folder / STORE
        # sha256 of files found under a LoRA's name, by identity (path, inode, size, mtime).
        self.hashes: dict[tuple[str, int, int, int], str] = {}

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
            try:
                size = self.files.download(f"/v1/files/loras/{ref.sha256}", stored, ref.sha256)
            except FetchFailed as exc:
                raise LoraError(f"LoRA {ref.name!r} (sha256 {ref.sha256}) could not be fetched from "
                                f"{self.files.url}: {exc}") from exc
            log.info("LoRA fetched", lora=ref.name, sha256=ref.sha256, bytes=size)
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

    def _link(self, name: str, stored: Path) -> None:
        """`<name>.safetensors` -> `.sha256/<sha256>.safetensors`, replaced atomically."""
        link = self.folder / f"{name}{SUFFIX}"
        temp = self.folder / f".{name}.{os.getpid()}.link"
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        os.symlink(Path(STORE) / stored.name, temp)
        os.replace(temp, link)


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
