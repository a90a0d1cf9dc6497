"""Job files: the one owner of job documents, input images, previews and image files.

    jobs/<job_id>.json                     the job's document (`read`, `read_bytes`, `write`;
                                           `read_head`, `heads` for listing quickly)
    inputs/<job_id>/init.png, mask.png     its uploaded input images (`input_path`, `read_input`)
    previews/<job_id>.png                  the latest preview while it runs (`preview_path`)
    images/YYYY/MM/DD/<image_id>.png|json  its images and their sidecars (`image_paths`)
    jobs/.outcomes/<job_id>                how it ended, claimed once (`claim_outcome`): the
                                           saver's "completed" and a cancel's "cancelled" race
                                           for it, and whichever is first is the truth

One decoder per file kind lives here; no other module decodes a job document or a sidecar.
Ids are checked before any path is built: a malformed id reads as "no such job".

Every method does blocking file I/O. The one rule for async code: call them off the event
loop, `await asyncio.to_thread(files.read, job_id)` (or inside a function that runs in a
thread), never directly from a coroutine.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import msgspec
import structlog

from schemas.jobs import ImageRecord, JobDocument, JobSpec
from schemas.layout import DataLayout, image_id, is_job_id, split_image_id
from services.files import create_file, write_atomic, write_atomic_many

log = structlog.get_logger("jobfiles")

_encoder = msgspec.json.Encoder()
_document_decoder = msgspec.json.Decoder(JobDocument)
_record_decoder = msgspec.json.Decoder(ImageRecord)


class JobHead(msgspec.Struct):
    """Just enough of a job document to list jobs quickly (queue.txt, a key's queued jobs)."""

    id: str
    status: str
    created_at: datetime
    owner: str | None = None


_head_decoder = msgspec.json.Decoder(JobHead)

INPUT_NAMES = ("init", "mask")


class MissingInput(ValueError):
    """An input image the job refers to is no longer in the data directory."""


class ImagePaths(NamedTuple):
    """Where one image lives: its path relative to images/ (as records store it), PNG and sidecar."""

    file_path: str
    png: Path
    sidecar: Path


@dataclass(frozen=True)
class JobFiles:
    """The job files of one data directory."""

    layout: DataLayout

    # Job documents. Not fsynced: the fsynced event log is the source of truth and rebuilds any.

    def document_path(self, job_id: str | None) -> Path | None:
        """jobs/<job_id>.json, or None for an id that is not a job id."""
        return self.layout.job(job_id) if job_id and is_job_id(job_id) else None

    def read_bytes(self, job_id: str | None) -> bytes | None:
        """The job's document as stored, or None when there is none."""
        path = self.document_path(job_id)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def read(self, job_id: str | None) -> JobDocument | None:
        """The job's document, or None when there is none (or it cannot be decoded: documents are
        derived from the event log, so a damaged one is logged and treated as absent)."""
        data = self.read_bytes(job_id)
        if data is None:
            return None
        try:
            return decode_document(data)
        except msgspec.MsgspecError as exc:
            log.warning("unreadable job document ignored", job_id=job_id, error=str(exc))
            return None

    def read_head(self, job_id: str | None) -> JobHead | None:
        """The head of the job's document (id, status, created_at, owner), or None."""
        data = self.read_bytes(job_id)
        try:
            return None if data is None else _head_decoder.decode(data)
        except msgspec.MsgspecError:
            return None

    def heads(self) -> list[JobHead]:
        """The head of every job document on disk, in no order; unreadable ones are skipped."""
        found = []
        with os.scandir(self.layout.jobs_dir) as entries:
            for entry in entries:
                if not entry.name.endswith(".json") or entry.name.startswith("."):
                    continue
                try:
                    found.append(_head_decoder.decode(Path(entry.path).read_bytes()))
                except (OSError, msgspec.MsgspecError):
                    continue
        return found

    def write(self, doc: JobDocument, *, durable: bool = False) -> None:
        """Replace the job's document atomically."""
        write_atomic(self.layout.job(doc.id), _encoder.encode(doc), durable=durable)

    # Outcomes: one claim per job, made by whoever ends it first on this data directory.

    def claim_outcome(self, job_id: str, outcome: str) -> bool:
        """Claim that the job ended with `outcome` (`completed` or `cancelled`): True when the
        claim is ours, False when someone claimed an outcome first (`outcome` says which)."""
        try:
            create_file(self._outcome_path(job_id), outcome.encode())
            return True
        except FileExistsError:
            return False

    def unclaim_outcome(self, job_id: str, outcome: str) -> None:
        """Withdraw our claim (its announcement failed), if it still says `outcome`."""
        if self.outcome(job_id) == outcome:
            self._outcome_path(job_id).unlink(missing_ok=True)

    def _outcome_path(self, job_id: str) -> Path:
        return self.layout.jobs_dir / ".outcomes" / job_id

    def outcome(self, job_id: str) -> str | None:
        """The claimed outcome of a job, or None while nobody has ended it."""
        try:
            return self._outcome_path(job_id).read_text() or None
        except FileNotFoundError:
            return None

    def remove_inputs(self, job_id: str) -> None:
        """The job's uploaded images, once it ended (nothing needs them any more)."""
        folder = self.layout.inputs_dir / job_id
        for name in INPUT_NAMES:
            (folder / f"{name}.png").unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError, OSError):
            folder.rmdir()

    def remove_images(self, job_id: str, created: datetime, count: int) -> list[str]:
        """Remove whatever files of the job's images exist (sidecar first); their ids."""
        removed = []
        for number in range(1, count + 1):
            paths = self.image_paths(image_id(job_id, number), created)
            if paths.sidecar.exists() or paths.png.exists():
                paths.sidecar.unlink(missing_ok=True)
                paths.png.unlink(missing_ok=True)
                removed.append(image_id(job_id, number))
        return removed

    # Input images (img2img, inpaint), stored by the ingress, read into the GenerateImages command.

    def input_path(self, job_id: str, name: str) -> Path:
        """inputs/<job_id>/<name>.png, `name` being `init` or `mask`."""
        if name not in INPUT_NAMES:
            raise ValueError(f"an input image is one of {INPUT_NAMES}, not {name!r}")
        return self.layout.inputs_dir / job_id / f"{name}.png"

    def relative(self, path: Path) -> str:
        """How a job's spec refers to one of its files: relative to the data directory."""
        return str(path.relative_to(self.layout.base))

    def read_input(self, relative: str | None, field: str) -> bytes | None:
        """The bytes of an input image the spec refers to (`field` names it in the error)."""
        if not relative:
            return None
        try:
            return (self.layout.base / relative).read_bytes()
        except FileNotFoundError:
            raise MissingInput(f"{field} {relative} no longer exists") from None

    def read_inputs(self, job: JobSpec | JobDocument) -> tuple[bytes | None, bytes | None]:
        """(init image, mask image) of a job, each None when it has none."""
        return self.read_input(job.init_image, "init_image"), self.read_input(job.mask_image, "mask_image")

    # Previews of running jobs.

    def preview_path(self, job_id: str) -> Path:
        return self.layout.preview(job_id)

    def write_preview(self, job_id: str, png: bytes) -> None:
        write_atomic(self.preview_path(job_id), png, durable=False)

    def remove_preview(self, job_id: str) -> None:
        self.preview_path(job_id).unlink(missing_ok=True)

    # Images, filed under their job's creation day.

    def image_paths(self, image_id: str, created: datetime | None = None) -> ImagePaths | None:
        """Where an image lives. Without `created` (its job's creation time) it is read from the
        job's document; None when the id is malformed or the job is unknown."""
        if created is None:
            parts = split_image_id(image_id)
            doc = self.read(parts[0]) if parts is not None else None
            if doc is None:
                return None
            created = doc.created_at
        file_path = self.layout.image_file_path(created, image_id)
        return ImagePaths(file_path, self.layout.image(file_path), self.layout.sidecar(file_path))

    def write_image(self, paths: ImagePaths, png: bytes, record: ImageRecord) -> None:
        """PNG first, then the sidecar, each fsynced: a sidecar on disk means its image is complete."""
        write_atomic_many([(paths.png, png), (paths.sidecar, _encoder.encode(record))])

    def read_image_record(self, image_id: str, created: datetime | None = None) -> ImageRecord | None:
        """The image's record (its sidecar), or None when it is not saved (yet). A damaged sidecar
        raises: images are primary data, never silently skipped."""
        paths = self.image_paths(image_id, created)
        if paths is None:
            return None
        try:
            return _record_decoder.decode(paths.sidecar.read_bytes())
        except FileNotFoundError:
            return None


def decode_head(data: bytes) -> JobHead:
    """The head (id, status, created_at, owner) of a stored job document."""
    return _head_decoder.decode(data)


def encode_document(doc: JobDocument) -> bytes:
    return _encoder.encode(doc)


def decode_record(data: bytes) -> ImageRecord:
    """A stored image sidecar."""
    return _record_decoder.decode(data)


def decode_document(data: bytes) -> JobDocument:
    """The one JobDocument decoder (for bytes already read, e.g. by the ingress)."""
    return _document_decoder.decode(data)
