"""How events move a job document through its life (the recorder's pure reducer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.events import (
    ImageDeleted,
    ImageGenerated,
    ImageSaved,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobEnriched,
    JobFailed,
    JobProgressed,
    JobRequeued,
    JobStarted,
    ModelLoaded,
    ModelLoading,
)
from schemas.jobs import GenerationSettings, ImageMetadata, ImageRecord, JobSpec
from schemas.lifecycle import apply_event

T0 = datetime(2026, 3, 20, 10, 30, tzinfo=UTC)
SETTINGS = GenerationSettings(num_images=2, num_inference_steps=4, guidance_scale=7.5, width=64, height=64, seed=7)
SPEC = JobSpec(prompt="a castle", model="tiny-sd", style="fantasy", settings=SETTINGS)
JOB = "0c907066-985e-467b-8d11-07419060ef91"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def record(number: int) -> ImageRecord:
    return ImageRecord(
        id=f"{JOB}_{number}", file_path=f"2026/03/20/{JOB}_{number}.png", created_at=at(5), width=64, height=64,
        size_bytes=100, metadata=ImageMetadata(job_id=JOB, model_id="tiny-sd", prompt="p", settings=SETTINGS,
                                               seed=6 + number, image_number=number, total_images=2),
    )


def accepted():
    return apply_event(None, JobAccepted(job_id=JOB, spec=SPEC, occurred_at=T0))


def test_a_job_goes_pending_processing_completed_with_cyberimage_flags():
    doc = accepted()
    assert (doc.status, doc.progress.preparing, doc.message) == ("pending", True, "Queued")

    doc = apply_event(doc, JobEnriched(job_id=JOB, prompt="a castle, epic", original_prompt="a castle", style="fantasy", occurred_at=at(0.1)))
    assert doc.prompt == "a castle, epic" and doc.original_prompt == "a castle"

    doc = apply_event(doc, JobStarted(job_id=JOB, worker="w1", occurred_at=at(1)))
    assert (doc.status, doc.started_at, doc.attempts) == ("processing", at(1), 1)

    doc = apply_event(doc, ModelLoading(job_id=JOB, model="tiny-sd", worker="w1", occurred_at=at(1.1)))
    assert doc.progress.loading_model and "Loading model tiny-sd" in doc.message
    doc = apply_event(doc, ModelLoaded(job_id=JOB, model="tiny-sd", worker="w1", seconds=0.5, bytes=10, occurred_at=at(1.6)))
    assert not doc.progress.loading_model

    doc = apply_event(doc, JobProgressed(job_id=JOB, step=2, total_steps=4, total_images=2, occurred_at=at(2)))
    assert doc.progress.generating and (doc.progress.step, doc.progress.total_steps) == (2, 4)
    assert doc.message == "Generating image 1 of 2... Step 2/4"

    doc = apply_event(doc, ImageSaved(job_id=JOB, image=record(2), occurred_at=at(3)))
    doc = apply_event(doc, ImageSaved(job_id=JOB, image=record(1), occurred_at=at(3.1)))
    doc = apply_event(doc, ImageSaved(job_id=JOB, image=record(1), occurred_at=at(3.2)))  # redelivered
    assert [image.metadata.image_number for image in doc.images] == [1, 2]

    doc = apply_event(doc, JobCompleted(job_id=JOB, image_ids=[f"{JOB}_1", f"{JOB}_2"], occurred_at=at(4)))
    assert doc.status == "completed" and doc.completed_at == at(4)
    assert doc.progress.completed and not doc.progress.generating and doc.progress.step == 4
    assert doc.message == "Generated 2 image(s)" and doc.updated_at == at(4)


def test_completion_carries_images_whose_saved_events_arrive_late():
    doc = apply_event(accepted(), ImageSaved(job_id=JOB, image=record(1), occurred_at=at(1)))
    doc = apply_event(doc, JobCompleted(job_id=JOB, image_ids=[f"{JOB}_1", f"{JOB}_2"], images=[record(1), record(2)], occurred_at=at(2)))
    assert [image.id for image in doc.images] == [f"{JOB}_1", f"{JOB}_2"]
    assert apply_event(doc, ImageSaved(job_id=JOB, image=record(2), occurred_at=at(3))) is None


def test_a_finished_job_ignores_late_progress_and_results():
    doc = accepted()
    doc = apply_event(doc, JobFailed(job_id=JOB, reason="out of memory", occurred_at=at(1)))
    assert doc.status == "failed" and doc.error == "out of memory" and doc.progress.failed
    assert apply_event(doc, JobProgressed(job_id=JOB, step=3, total_steps=4, occurred_at=at(2))) is None
    assert apply_event(doc, JobCompleted(job_id=JOB, image_ids=[], occurred_at=at(3))) is None
    assert doc.status == "failed"


def test_cancelled_is_final():
    doc = apply_event(accepted(), JobCancelled(job_id=JOB, occurred_at=at(1)))
    assert doc.status == "cancelled"
    assert apply_event(doc, JobStarted(job_id=JOB, worker="w", occurred_at=at(2))) is None


def test_events_of_a_superseded_attempt_are_ignored():
    doc = apply_event(accepted(), JobStarted(job_id=JOB, worker="w1", occurred_at=at(1)))
    doc = apply_event(doc, JobRequeued(job_id=JOB, attempt=2, reason="stalled", occurred_at=at(60)))
    assert (doc.status, doc.attempts) == ("pending", 2)
    assert apply_event(doc, JobProgressed(job_id=JOB, step=4, total_steps=4, attempt=1, occurred_at=at(61))) is None
    assert apply_event(doc, JobCompleted(job_id=JOB, image_ids=[], attempt=1, occurred_at=at(62))) is None
    doc = apply_event(doc, JobStarted(job_id=JOB, worker="w2", attempt=2, occurred_at=at(63)))
    assert (doc.status, doc.attempts) == ("processing", 2)


def test_image_generated_moves_to_saving():
    doc = apply_event(accepted(), JobStarted(job_id=JOB, worker="w1", occurred_at=at(1)))
    doc = apply_event(doc, ImageGenerated(
        job_id=JOB, image_id=f"{JOB}_1", image_number=1, total_images=2, job_created_at=T0, worker="w1",
        width=64, height=64, png=b"", metadata=record(1).metadata, occurred_at=at(2),
    ))
    assert doc.progress.saving and doc.message == "Saving image 1 of 2"


def test_deleting_an_image_edits_even_a_completed_job():
    doc = apply_event(accepted(), ImageSaved(job_id=JOB, image=record(1), occurred_at=at(1)))
    doc = apply_event(doc, JobCompleted(job_id=JOB, image_ids=[f"{JOB}_1"], occurred_at=at(2)))
    doc = apply_event(doc, ImageDeleted(job_id=JOB, image_id=f"{JOB}_1", occurred_at=at(3)))
    assert doc.images == [] and doc.status == "completed"


def test_events_for_unknown_jobs_change_nothing():
    assert apply_event(None, JobStarted(job_id=JOB, worker="w", occurred_at=at(1))) is None


def test_notices_about_the_request_stay_in_the_message():
    spec = JobSpec(prompt="a castle", model="flux", settings=SETTINGS, notices=("negative prompt ignored: model 'flux' does not use one",))
    doc = apply_event(None, JobAccepted(job_id=JOB, spec=spec, occurred_at=T0))
    assert doc.message == "Queued (negative prompt ignored: model 'flux' does not use one)"
    doc = apply_event(doc, JobCompleted(job_id=JOB, image_ids=[f"{JOB}_1"], occurred_at=at(1)))
    assert doc.message == "Generated 1 image(s) (negative prompt ignored: model 'flux' does not use one)"
    assert doc.notices == spec.notices


def test_an_operator_replay_brings_a_failed_job_back_and_nothing_else_does():
    doc = apply_event(accepted(), JobFailed(job_id=JOB, reason="crashed its worker", occurred_at=at(1)))
    assert apply_event(doc, JobRequeued(job_id=JOB, attempt=2, reason="stalled", occurred_at=at(2))) is None
    doc = apply_event(doc, JobRequeued(job_id=JOB, attempt=2, reason="replayed by an operator", replay=True, occurred_at=at(3)))
    assert (doc.status, doc.error, doc.attempts) == ("pending", None, 2)
    done = apply_event(doc, JobCompleted(job_id=JOB, image_ids=[], attempt=2, occurred_at=at(4)))
    assert done.status == "completed"
    assert apply_event(done, JobRequeued(job_id=JOB, attempt=3, reason="x", replay=True, occurred_at=at(5))) is None


def test_every_change_moves_updated_at_on_by_a_millisecond_even_within_one():
    # The saver stamps image.saved and job.completed in the same millisecond; a client polling
    # between them (weights.gg's lastModifiedDate, in ms) must see the completion as a new time.
    doc = apply_event(accepted(), JobStarted(job_id=JOB, worker="w1", occurred_at=at(1)))
    saved = apply_event(doc, ImageSaved(job_id=JOB, image=record(1), occurred_at=at(5)))
    processing_at = saved.updated_at
    done = apply_event(saved, JobCompleted(job_id=JOB, image_ids=[record(1).id], images=[record(1)], occurred_at=at(5)))
    assert done.status == "completed" and int(done.updated_at.timestamp() * 1000) > int(processing_at.timestamp() * 1000)
    later = apply_event(done, ImageDeleted(job_id=JOB, image_id=record(1).id, occurred_at=at(9)))
    assert later.updated_at == at(9), "an event stamped later sets its own time"
