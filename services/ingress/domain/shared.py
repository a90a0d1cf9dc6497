"""Queries by unguessable id, without a key: what a link pasted in a chat may fetch.

A job id is a random UUID (122 random bits): whoever holds it was given it, so the job's first
image (or, while it runs, its latest preview) may be read with the id alone. Nothing else of the
job is shown, and nothing can be changed this way. Blocking file I/O: call these off the loop."""

from __future__ import annotations

from pathlib import Path

from schemas.jobs import TERMINAL_STATUSES, JobDocument
from schemas.layout import is_job_id
from services.ingress.domain.errors import NotFound
from services.ingress.domain.files import JobFiles


def image_path(doc: JobDocument, files: JobFiles) -> Path | None:
    """The PNG of a job's first saved image still on disk, or None."""
    for record in sorted(doc.images, key=lambda r: r.metadata.image_number):
        path = files.layout.image(record.file_path)
        if path.is_file():
            return path
    return None


def image_or_preview(job_id: str, *, files: JobFiles) -> bytes:
    """The PNG bytes of the job's first image once it completed, its latest preview while it runs;
    NotFound otherwise (no such job, no preview yet, failed, cancelled, image deleted)."""
    if not is_job_id(job_id):
        raise NotFound.of("image", job_id)
    try:
        doc = files.decode(files.document_bytes(job_id))
    except FileNotFoundError:
        raise NotFound.of("image", job_id) from None
    path = image_path(doc, files) if doc.status == "completed" else \
        None if doc.status in TERMINAL_STATUSES else files.preview(job_id)
    if path is None:
        raise NotFound.of("image", job_id)
    try:
        return path.read_bytes()
    except FileNotFoundError:  # the preview was replaced or the image deleted meanwhile
        raise NotFound.of("image", job_id) from None
