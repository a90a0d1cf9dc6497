"""A synthetic event log: N jobs with the events a real run writes for them, for read-side tests
and the 1M-job benchmark. Deterministic for a given seed."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from schemas.events import ImageSaved, JobAccepted, JobCompleted, JobEnriched, JobFailed, JobProgressed, JobStarted
from schemas.jobs import GenerationSettings, ImageMetadata, ImageRecord, JobSpec
from schemas.layout import DataLayout, image_id

MODELS = ("tiny-sd", "sd15", "sdxl", "flux")
WORDS = ("fox", "castle", "lighthouse", "cyberpunk", "forest", "portrait", "dragon", "city", "ocean", "robot",
         "garden", "mountain", "owl", "neon", "sunset", "desert")
OWNERS = ("alice", "bob", "carol", None)


def write_log(events_dir: Path, jobs: int, *, seed: int = 7, start: datetime | None = None,
              failure_rate: float = 0.04, cancel_rate: float = 0.01, active: int = 50) -> dict:
    """Write events for `jobs` jobs (the last `active` left pending or processing) into one log
    file per day; returns the true counts, to check queries against."""
    rng = random.Random(seed)
    encoder = msgspec.json.Encoder()
    start = start or datetime.now(UTC) - timedelta(days=3)
    step = timedelta(days=3) / max(jobs, 1)
    counts = {"pending": 0, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0}
    per_model: dict[str, dict[str, int]] = {}
    events_dir.mkdir(parents=True, exist_ok=True)
    handles: dict[str, object] = {}
    try:
        for n in range(jobs):
            at = start + step * n
            job = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            model = MODELS[n % len(MODELS)]
            prompt = " ".join(rng.choice(WORDS) for _ in range(4))
            settings = GenerationSettings(num_images=1, num_inference_steps=20, guidance_scale=7.5, width=512,
                                          height=512, seed=n, sampler="Euler", batch_size=1)
            spec = JobSpec(prompt=prompt, model=model, settings=settings, owner=OWNERS[n % len(OWNERS)])
            fate = ("pending" if n >= jobs - active // 2 else "processing" if n >= jobs - active else
                    "failed" if rng.random() < failure_rate else "cancelled" if rng.random() < cancel_rate else "completed")
            lines = [JobAccepted(job_id=job, spec=spec, occurred_at=at),
                     JobEnriched(job_id=job, prompt=prompt, original_prompt=prompt, occurred_at=at + timedelta(milliseconds=5))]
            if fate != "pending":
                began = at + timedelta(seconds=1)
                lines.append(JobStarted(job_id=job, worker="w1", occurred_at=began))
                lines.append(JobProgressed(job_id=job, step=10, total_steps=20, occurred_at=began + timedelta(seconds=1)))
            took = timedelta(seconds=rng.uniform(2, 8))
            if fate == "completed":
                record = ImageRecord(
                    id=image_id(job, 1), file_path=DataLayout.image_file_path(at, image_id(job, 1)), created_at=at + took,
                    width=512, height=512, size_bytes=400_000,
                    metadata=ImageMetadata(job_id=job, model_id=model, prompt=prompt, settings=settings, seed=n,
                                           image_number=1, total_images=1, generation_time=took.total_seconds()),
                )
                lines.append(ImageSaved(job_id=job, image=record, occurred_at=at + took))
                lines.append(JobCompleted(job_id=job, image_ids=[record.id], images=[record], occurred_at=at + took))
            elif fate == "failed":
                lines.append(JobFailed(job_id=job, reason=rng.choice(("out of memory", "model failed to load",
                                                                     "generation failed: RuntimeError")),
                                       occurred_at=at + took))
            elif fate == "cancelled":
                from schemas.events import JobCancelled

                lines.append(JobCancelled(job_id=job, occurred_at=at + took))
            counts[fate] += 1
            per_model.setdefault(model, {}).setdefault(fate, 0)
            per_model[model][fate] += 1
            day = f"{at:%Y-%m-%d}"
            if day not in handles:
                handles[day] = (events_dir / f"{day}.jsonl").open("ab")
            handles[day].write(b"".join(encoder.encode(e) + b"\n" for e in lines))
    finally:
        for handle in handles.values():
            handle.close()
    return {"counts": counts, "models": per_model}
