"""Files generator workers fetch from the control node by content hash (they share no disk)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import msgspec

from schemas.catalog import Catalog, ModelEntry, ModelFile, load_runtime_catalog
from schemas.workers import ModelManifest, RemoteModel
from services.ingress.domain.errors import Invalid, NotFound
from services.library import LoraLibrary
from services.library.hashes import FileHashes

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def lora_by_hash(library: LoraLibrary, hashes: FileHashes, sha256: str) -> Path:
    """The LoRA file in the library whose content has this sha256 (as jobs name it), else 404."""
    if not _SHA256.match(sha256):
        raise Invalid("sha256 must be 64 lowercase hexadecimal characters")
    found = hashes.file(sha256)
    if found is not None:
        return found
    for entry in library.view.entries.values():
        if entry.sha256 != sha256:
            continue
        path = library.folder / entry.file
        try:
            st = path.stat()
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns):  # still the file that was hashed
            return path
    raise NotFound(f"no LoRA file with sha256 {sha256} in the library (removed or changed since the job was accepted)")


# The folder a single-file checkpoint's config folder goes to inside its model folder.
CONFIG_FOLDER = "config"


def model_manifest(catalog: Catalog, data_dir: Path, hashes: FileHashes) -> ModelManifest:
    """Every catalog model whose files are on this machine, with each file's size and sha256.
    Pulled models come with the hashes the models stage recorded (kept while a file's size still
    matches); any other file is hashed once per process (`hashes`). Blocks: call it off the loop."""
    pulled = load_runtime_catalog(data_dir).models
    found = []
    for entry in catalog.models.values():
        source = Path(entry.source)
        if not source.is_absolute() or not source.exists():
            continue  # a hub repo id (the control node downloads it itself), or files gone
        record = pulled.get(entry.id)
        recorded = {f.path: f for f in record.files} if record and (data_dir / record.path) == source else {}
        files = _folder_files(source, "", recorded, hashes) if source.is_dir() else [_file(source, source.name, recorded, hashes)]
        relative = msgspec.structs.replace(entry, source="." if source.is_dir() else source.name, config=None)
        if entry.config and not source.is_dir():
            files += _folder_files(Path(entry.config), CONFIG_FOLDER, {}, hashes)
            relative = msgspec.structs.replace(relative, config=CONFIG_FOLDER)
        found.append(RemoteModel(id=entry.id, entry=relative, files=files))
    return ModelManifest(models=sorted(found, key=lambda m: m.id))


def model_file(catalog: Catalog, model: str, path: str) -> Path:
    """The file `path` of model `model` as the manifest lists it (nothing outside it), else 404."""
    entry = _entry(catalog, model)
    parts = PurePosixPath(path).parts
    if not parts or "\0" in path or any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise Invalid(f"path {path!r} must be a file of the model as GET /v1/files/models lists it")
    source = Path(entry.source)
    if source.is_dir():
        found = source.joinpath(*parts)
    elif entry.config and parts[0] == CONFIG_FOLDER and len(parts) > 1:
        found = Path(entry.config).joinpath(*parts[1:])
    else:
        found = source if parts == (source.name,) else None
    try:
        usable = found is not None and found.is_file()
    except (OSError, ValueError):  # a name too long for the file system, say
        usable = False
    if not usable:
        raise NotFound(f"model {model!r} has no file {path!r} (see GET /v1/files/models)")
    return found


def _entry(catalog: Catalog, model: str) -> ModelEntry:
    try:
        return catalog.model(model)
    except KeyError as exc:
        raise NotFound(exc.args[0]) from None


def _folder_files(folder: Path, prefix: str, recorded: dict[str, ModelFile], hashes: FileHashes) -> list[ModelFile]:
    """Every file under `folder` (hidden names and folders left out: download bookkeeping)."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append(_file(path, (PurePosixPath(prefix) / relative.as_posix()).as_posix(), recorded, hashes))
    return found


def _file(path: Path, name: str, recorded: dict[str, ModelFile], hashes: FileHashes) -> ModelFile:
    size = path.stat().st_size
    known = recorded.get(name)
    if known is not None and known.size == size:
        return ModelFile(path=name, size=size, sha256=known.sha256)
    return ModelFile(path=name, size=size, sha256=hashes.sha256(path))
