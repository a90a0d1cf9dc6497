"""Fetching model files: from the Hugging Face Hub (huggingface_hub: HF_ENDPOINT and HF_TOKEN
honoured, resumable), from an http(s) URL (resumed with Range requests), or from a local path.

Everything here blocks; the models stage runs it in a thread. A plan lists the files with their
sizes and, when the source says, their sha256; `fetch` brings one file into a pull's folder and
reports the bytes it has so far. Checking the hashes is the caller's (huggingface_hub does not).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from services.models.files import UnusableSource, choose_pipeline_files, choose_single_file

# (file path inside the model, bytes of it on disk so far)
OnBytes = Callable[[str, int], None]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
CHUNK = 1024 * 1024
# Consecutive failed attempts (no byte gained) before a URL download gives up.
ATTEMPTS = 6


class DownloadError(RuntimeError):
    """The source could not be read; the message says what failed (retrying the pull resumes it)."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the model: "unet/diffusion_pytorch_model.safetensors", or the one file's name
    size: int | None = None
    sha256: str | None = None
    location: str = ""  # URL or local path (hub files are addressed by path)


@dataclass(frozen=True)
class Plan:
    kind: Literal["hub", "url", "path"]
    source: str
    # "folder": a diffusers pipeline; "file": one weights file (a single-file checkpoint or a LoRA).
    layout: Literal["folder", "file"]
    files: list[RemoteFile]
    revision: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)


def source_kind(source: str) -> Literal["hub", "url", "path"]:
    if source.startswith(("http://", "https://")):
        return "url"
    if source.startswith(("/", ".", "~")) or Path(source).exists():
        return "path"
    if REPO_ID.match(source):
        return "hub"
    raise UnusableSource(f"source {source!r} is neither a Hugging Face repo id, an http(s) URL nor an existing path")


def hub_endpoint() -> str | None:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, when first imported)."""
    return os.environ.get("HF_ENDPOINT") or None


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None  # None: huggingface_hub's own login, if any


def plan(source: str, *, lora: bool, revision: str | None = None, sha256: str | None = None) -> Plan:
    kind = source_kind(source)
    if kind == "hub":
        return _hub_plan(source, lora=lora, revision=revision)
    if kind == "url":
        return _url_plan(source, sha256)
    return _path_plan(Path(source).expanduser().resolve(), lora=lora, sha256=sha256)


def _hub_plan(repo: str, *, lora: bool, revision: str | None) -> Plan:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(endpoint=hub_endpoint(), token=hub_token()).model_info(repo, revision=revision, files_metadata=True)
    except HfHubHTTPError as exc:
        raise DownloadError(f"the Hub refused {repo}@{revision or 'main'}: {str(exc).splitlines()[0]}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise DownloadError(f"cannot reach the Hub for {repo}: {exc}") from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    paths = list(siblings)
    if not lora and "model_index.json" in paths:
        layout, chosen = "folder", choose_pipeline_files(paths)
    else:
        layout, chosen = "file", [choose_single_file(paths, lora=lora)]
    files = [RemoteFile(path=p, size=siblings[p].size, sha256=siblings[p].lfs.sha256 if siblings[p].lfs else None)
             for p in chosen]
    return Plan(kind="hub", source=repo, layout=layout, files=files, revision=info.sha)


def _url_plan(url: str, sha256: str | None) -> Plan:
    name = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise UnusableSource(f"URL {url!r} names no file")
    size = None
    try:
        head = httpx.head(url, follow_redirects=True, timeout=30, headers=_auth(url))
        if head.status_code < 400 and head.headers.get("content-length", "").isdigit():
            size = int(head.headers["content-length"])
        elif head.status_code in (401, 403, 404):
            raise DownloadError(f"{url}: HTTP {head.status_code}")
    except httpx.HTTPError as exc:
        raise DownloadError(f"cannot reach {url}: {exc}") from None
    return Plan(kind="url", source=url, layout="file", files=[RemoteFile(path=name, size=size, sha256=sha256,
                                                                           location=url)])


def _path_plan(path: Path, *, lora: bool, sha256: str | None) -> Plan:
    if path.is_file():
        return Plan(kind="path", source=str(path), layout="file",
                    files=[RemoteFile(path=path.name, size=path.stat().st_size, sha256=sha256, location=str(path))])
    if not path.is_dir():
        raise UnusableSource(f"{path} does not exist")
    paths = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
    if not lora and "model_index.json" in paths:
        layout, chosen = "folder", choose_pipeline_files(paths)
    else:
        layout, chosen = "file", [choose_single_file(paths, lora=lora)]
    files = [RemoteFile(path=p, size=(path / p).stat().st_size, location=str(path / p),
                        sha256=sha256 if layout == "file" else None) for p in chosen]
    return Plan(kind="path", source=str(path), layout=layout, files=files)


def _auth(url: str) -> dict[str, str]:
    """The Hub token goes to the Hub's own host only, never to another server."""
    token, endpoint = hub_token(), hub_endpoint() or "https://huggingface.co"
    return {"Authorization": f"Bearer {token}"} if token and url.startswith(endpoint.rstrip("/") + "/") else {}


def fetch(plan: Plan, file: RemoteFile, folder: Path, on_bytes: OnBytes) -> Path:
    """Bring one planned file into `folder` (resuming what an earlier try left there)."""
    target = folder / file.path
    target.parent.mkdir(parents=True, exist_ok=True)
    if plan.kind == "hub":
        _fetch_hub(plan, file, folder, on_bytes)
    elif plan.kind == "url":
        fetch_url(file.location, target, expected_size=file.size, on_bytes=lambda n: on_bytes(file.path, n))
    else:
        _copy(Path(file.location), target, lambda n: on_bytes(file.path, n))
    return target


def _fetch_hub(plan: Plan, file: RemoteFile, folder: Path, on_bytes: OnBytes) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import tqdm as hub_tqdm

    class Reporting(hub_tqdm):
        """huggingface_hub's byte counter, turned into our progress (it starts at the resumed size)."""

        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            self.done = kwargs.get("initial") or 0
            super().__init__(*args, **kwargs)
            on_bytes(file.path, self.done)

        def update(self, n=1):
            self.done += n
            on_bytes(file.path, self.done)

    try:
        hf_hub_download(plan.source, file.path, revision=plan.revision, local_dir=folder, endpoint=hub_endpoint(),
                        token=hub_token(), tqdm_class=Reporting)
    except HfHubHTTPError as exc:
        raise DownloadError(f"the Hub refused {file.path}: {str(exc).splitlines()[0]}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise DownloadError(f"downloading {file.path} failed: {exc}") from None


def fetch_url(url: str, target: Path, *, expected_size: int | None, on_bytes: Callable[[int], None]) -> None:
    """Download `url` into `target`, resuming from the bytes already there with a Range request
    (also after the server drops the connection mid-way); a server that ignores Range starts over."""
    failures = 0
    while True:
        have = target.stat().st_size if target.exists() else 0
        if expected_size is not None and have > expected_size:
            target.unlink()
            have = 0
        if expected_size is not None and have == expected_size:
            on_bytes(have)
            return
        before = have
        try:
            headers = {**_auth(url), **({"Range": f"bytes={have}-"} if have else {})}
            with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=30) as response:
                if response.status_code == 416 and have and expected_size is None:
                    return  # nothing past what we have: it was complete
                if response.status_code >= 400:
                    raise DownloadError(f"{url}: HTTP {response.status_code}")
                if have and response.status_code != 206:
                    have = 0
                if expected_size is None:
                    expected_size = _total_size(response, have)
                with target.open("ab" if have else "wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                        have += len(chunk)
                        on_bytes(have)
            if expected_size is None or have == expected_size:
                return
            raise httpx.RemoteProtocolError(f"connection closed at {have} of {expected_size} bytes")
        except httpx.TransportError as exc:
            failures = 0 if have > before else failures + 1
            if failures >= ATTEMPTS:
                raise DownloadError(f"{url}: {exc} ({have} bytes kept; pull again to resume)") from None
            time.sleep(min(0.2 * 2**failures, 5.0))


def _total_size(response: httpx.Response, have: int) -> int | None:
    content_range = response.headers.get("content-range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("content-length", "")
    return have + int(length) if length.isdigit() else None


def _copy(source: Path, target: Path, on_bytes: Callable[[int], None]) -> None:
    done = 0
    with source.open("rb") as src, target.open("wb") as out:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            done += len(chunk)
            on_bytes(done)
    shutil.copystat(source, target)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
