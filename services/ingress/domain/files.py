"""The job files as the ingress uses them: `services.jobfiles.JobFiles` (the one owner of job
files and their decoders) plus what only the ingress does: staging a new job's document until the
broker confirms it, storing uploaded inputs, and claiming a cancellation.

Blocking file I/O, like its base: async code calls these off the event loop (asyncio.to_thread)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from schemas.jobs import TERMINAL_STATUSES, ImageRecord, JobDocument
from services.files import create_file, publish_staged, temp_path, write_atomic_many
from services.ingress.requests import Resolved
from services.jobfiles import ImagePaths, JobHead, decode_document, decode_head, decode_record, encode_document
from services.jobfiles import JobFiles as _JobFiles


@dataclass(frozen=True)
class JobFiles(_JobFiles):
    """The ingress's view of the job files."""

    # -- job documents -----------------------------------------------------------------------------

    def document_bytes(self, job_id: str) -> bytes:
        """The stored document (JSON); FileNotFoundError when there is none."""
        data = self.read_bytes(job_id)
        if data is None:
            raise FileNotFoundError(job_id)
        return data

    head = staticmethod(decode_head)
    decode = staticmethod(decode_document)
    encode = staticmethod(encode_document)

    def stage_document(self, doc: JobDocument) -> Path:
        """Write a new job's document under a hidden name; `publish_document` links it into place."""
        staged = self.layout.staging_dir / temp_path(self.layout.job(doc.id)).name
        create_file(staged, encode_document(doc))
        return staged

    def publish_document(self, staged: Path, job_id: str) -> None:
        publish_staged(staged, self.layout.job(job_id))

    def discard_staged(self, staged: Path, job_id: str) -> None:
        """A job that was not accepted after all: its staged document and input images go."""
        staged.unlink(missing_ok=True)
        shutil.rmtree(self.layout.inputs_dir / job_id, ignore_errors=True)

    def job_ended(self, job_id: str) -> bool:
        """Whether the job ended (or its document is gone): it no longer holds a queue slot."""
        head: JobHead | None = self.read_head(job_id)
        return head is None or head.status in TERMINAL_STATUSES

    # -- cancellation --------------------------------------------------------------------------------

    def claim_cancel(self, job_id: str) -> str | None:
        """Claim the job's end as "cancelled". None when the claim is ours; else how it already
        ended ("completed": the saver was first; "cancelled": an earlier cancel was)."""
        return None if self.claim_outcome(job_id, "cancelled") else self.outcome(job_id)

    def withdraw_cancel(self, job_id: str) -> None:
        """Give the claim back (the cancellation could not be announced)."""
        self.unclaim_outcome(job_id, "cancelled")

    # -- images ------------------------------------------------------------------------------------

    def preview(self, job_id: str) -> Path | None:
        """The latest preview of a job, if one is on disk."""
        path = self.preview_path(job_id)
        return path if path.exists() else None

    def image_files(self, doc: JobDocument, image_id: str) -> tuple[Path, Path] | None:
        """(PNG, sidecar) of one of the job's images, or None while it has no sidecar (not saved)."""
        paths: ImagePaths = self.image_paths(image_id, doc.created_at)
        return (paths.png, paths.sidecar) if paths.sidecar.exists() else None

    @staticmethod
    def image_record(sidecar: Path) -> ImageRecord:
        """An image's sidecar; FileNotFoundError when it is gone."""
        return decode_record(sidecar.read_bytes())

    @staticmethod
    def remove(*paths: Path) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    def store_inputs(self, job_id: str, resolved: Resolved) -> dict[str, str]:
        """Write the job's uploaded input images; returns the spec fields pointing at them."""
        inputs, files, fields = resolved.inputs, [], {}
        if inputs.init_image_path is not None:
            fields["init_image"] = inputs.init_image_path
        elif inputs.init_image is not None:
            path = self.input_path(job_id, "init")
            files.append((path, inputs.init_image.png))
            fields["init_image"] = self.relative(path)
        if inputs.mask_image is not None:
            path = self.input_path(job_id, "mask")
            files.append((path, inputs.mask_image.png))
            fields["mask_image"] = self.relative(path)
        if files:
            write_atomic_many(files, durable=False)
        return fields
