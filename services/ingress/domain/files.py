"""Every read and write of job files the ingress makes (job documents, previews, image files and
sidecars, input images, queue.txt), in one place, so that one owner of job files can take them over.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec

from schemas.jobs import ImageRecord, JobDocument
from schemas.layout import DataLayout
from services.files import create_file, publish_staged, temp_path, write_atomic_many
from services.ingress.requests import Resolved

_encoder = msgspec.json.Encoder()
_doc_decoder = msgspec.json.Decoder(JobDocument)
_record_decoder = msgspec.json.Decoder(ImageRecord)


class Head(msgspec.Struct):
    """The two fields of a job document most reads need, decoded without the rest."""

    owner: str | None = None
    status: str = ""


_head_decoder = msgspec.json.Decoder(Head)


class JobFiles:
    """The job files under the data directory, as the ingress reads and writes them."""

    def __init__(self, layout: DataLayout):
        self.layout = layout
        # Owner of each job seen lately (to count a key's queued jobs without reading documents).
        self._owners: dict[str, str | None] = {}

    # -- job documents -----------------------------------------------------------------------------

    def document_bytes(self, job_id: str) -> bytes:
        """The stored document (JSON); FileNotFoundError when there is none. `job_id` must be checked."""
        return self.layout.job(job_id).read_bytes()

    @staticmethod
    def head(data: bytes) -> Head:
        return _head_decoder.decode(data)

    @staticmethod
    def decode(data: bytes) -> JobDocument:
        return _doc_decoder.decode(data)

    @staticmethod
    def encode(doc: JobDocument) -> bytes:
        return _encoder.encode(doc)

    def stage_document(self, doc: JobDocument) -> Path:
        """Write a new job's document under a hidden name; `publish_document` links it into place."""
        staged = self.layout.staging_dir / temp_path(self.layout.job(doc.id)).name
        create_file(staged, _encoder.encode(doc))
        return staged

    def publish_document(self, staged: Path, job_id: str) -> None:
        publish_staged(staged, self.layout.job(job_id))

    def discard_staged(self, staged: Path, job_id: str) -> None:
        """A job that was not accepted after all: its staged document and input images go."""
        staged.unlink(missing_ok=True)
        shutil.rmtree(self.layout.inputs_dir / job_id, ignore_errors=True)

    # -- the queue ---------------------------------------------------------------------------------

    def remember_owner(self, job_id: str, owner: str | None) -> None:
        self._owners[job_id] = owner

    def queued_jobs(self, owner: str | None) -> int:
        """Pending and processing jobs of `owner` (from queue.txt, which the recorder keeps)."""
        try:
            active = self.layout.queue_file.read_text().split()
        except FileNotFoundError:
            active = []
        count = 0
        for job_id in active:
            if job_id not in self._owners:
                try:
                    self._owners[job_id] = _head_decoder.decode(self.layout.job(job_id).read_bytes()).owner
                except (FileNotFoundError, msgspec.MsgspecError):
                    continue
            count += self._owners[job_id] == owner
        if len(self._owners) > 4 * len(active) + 1000:  # forget jobs that left the queue
            keep = set(active)
            self._owners = {j: o for j, o in self._owners.items() if j in keep}
        return count

    # -- images ------------------------------------------------------------------------------------

    def preview(self, job_id: str) -> Path | None:
        """The latest preview of a job, if one is on disk."""
        path = self.layout.preview(job_id)
        return path if path.exists() else None

    def image_files(self, doc: JobDocument, image_id: str) -> tuple[Path, Path] | None:
        """(PNG, sidecar) of one of the job's images, or None while it has no sidecar (not saved)."""
        file_path = self.layout.image_file_path(doc.created_at, image_id)
        png, sidecar = self.layout.image(file_path), self.layout.sidecar(file_path)
        return (png, sidecar) if sidecar.exists() else None

    @staticmethod
    def image_record(sidecar: Path) -> ImageRecord:
        """An image's sidecar; FileNotFoundError when it is gone."""
        return _record_decoder.decode(sidecar.read_bytes())

    @staticmethod
    def remove(*paths: Path) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    def store_inputs(self, job_id: str, resolved: Resolved) -> dict[str, str]:
        """Write the job's uploaded input images; returns the spec fields pointing at them."""
        layout, inputs, files, fields = self.layout, resolved.inputs, [], {}
        folder = layout.inputs_dir / job_id
        if inputs.init_image_path is not None:
            fields["init_image"] = inputs.init_image_path
        elif inputs.init_image is not None:
            files.append((folder / "init.png", inputs.init_image.png))
            fields["init_image"] = str((folder / "init.png").relative_to(layout.base))
        if inputs.mask_image is not None:
            files.append((folder / "mask.png", inputs.mask_image.png))
            fields["mask_image"] = str((folder / "mask.png").relative_to(layout.base))
        if files:
            write_atomic_many(files, durable=False)
        return fields
