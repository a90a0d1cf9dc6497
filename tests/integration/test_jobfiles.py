"""services/jobfiles.py against real files: documents, inputs, previews and image paths."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.jobs import GenerationSettings, ImageMetadata, ImageRecord, JobDocument, JobSpec
from schemas.layout import DataLayout, image_id
from services.jobfiles import JobFiles, MissingInput

JOB = "0c907066-985e-467b-8d11-07419060ef91"
CREATED = datetime(2026, 3, 20, 12, tzinfo=UTC)
SETTINGS = GenerationSettings(num_images=1, num_inference_steps=4, guidance_scale=7.5, width=64, height=64, seed=7)


def files_in(tmp_path: Path) -> JobFiles:
    layout = DataLayout(str(tmp_path))
    layout.ensure()
    return JobFiles(layout)


def test_a_document_is_written_and_read_back_and_anything_else_reads_as_no_job(tmp_path: Path):
    files = files_in(tmp_path)
    assert files.read(JOB) is None
    assert files.read("../../etc/passwd") is None and files.read(None) is None and files.read("") is None
    doc = JobDocument.new(JOB, JobSpec(prompt="a fox", model="tiny-sd", settings=SETTINGS), CREATED)
    files.write(doc)
    assert files.read(JOB) == doc
    assert files.read_head(JOB).status == "pending"
    assert [head.id for head in files.heads()] == [JOB]
    files.layout.job(JOB).write_bytes(b"{not json")
    assert files.read(JOB) is None  # derived from the event log: damaged reads as absent


def test_inputs_previews_and_images_live_where_the_layout_says(tmp_path: Path):
    files = files_in(tmp_path)
    init = files.input_path(JOB, "init")
    assert init == tmp_path / "inputs" / JOB / "init.png"
    with pytest.raises(ValueError):
        files.input_path(JOB, "../x")
    with pytest.raises(MissingInput, match="init_image"):
        files.read_input(files.relative(init), "init_image")
    init.parent.mkdir(parents=True)
    init.write_bytes(b"png")
    spec = JobSpec(prompt="a fox", model="tiny-sd", settings=SETTINGS, init_image=files.relative(init))
    assert files.read_inputs(spec) == (b"png", None)

    files.write_preview(JOB, b"preview")
    assert files.preview_path(JOB).read_bytes() == b"preview"
    files.remove_preview(JOB)
    assert not files.preview_path(JOB).exists()

    first = image_id(JOB, 1)
    assert files.image_paths(first) is None  # no document: where it lives is unknown
    files.write(JobDocument.new(JOB, spec, CREATED))
    paths = files.image_paths(first)
    assert paths.file_path == f"2026/03/20/{first}.png" and paths == files.image_paths(first, CREATED)
    assert files.read_image_record(first) is None
    record = ImageRecord(id=first, file_path=paths.file_path, created_at=CREATED, width=64, height=64, size_bytes=3,
                         metadata=ImageMetadata(job_id=JOB, model_id="tiny-sd", prompt="a fox", settings=SETTINGS,
                                                seed=7, image_number=1, total_images=1))
    files.write_image(paths, b"png", record)
    assert paths.png.read_bytes() == b"png"
    assert files.read_image_record(first) == record


def test_the_loser_of_an_outcome_claim_always_reads_the_winners(tmp_path: Path):
    """The saver's "completed" and a cancel's "cancelled" race for one claim: whoever loses must
    read the winner's outcome, never an empty claim (then both would think they won)."""
    files = files_in(tmp_path)
    empty = []
    for n in range(400):
        job = f"job-{n}"

        def claim(outcome: str, job: str = job) -> None:
            if not files.claim_outcome(job, outcome) and files.outcome(job) is None:
                empty.append(job)

        racers = [threading.Thread(target=claim, args=(o,)) for o in ("completed", "cancelled")]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert files.outcome(job) in ("completed", "cancelled")
    assert empty == []
    assert not [p for p in (tmp_path / "jobs" / ".outcomes").iterdir() if p.name.startswith(".")], "no temp file left"
