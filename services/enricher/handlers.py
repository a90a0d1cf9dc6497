"""The enricher's effects."""

from __future__ import annotations

import asyncio
from typing import Protocol

import msgspec

from schemas.catalog import Style
from schemas.events import Command, Event, GenerateImages, JobAccepted, JobEnriched, JobFailed
from schemas.jobs import Enrichment, JobSpec
from services.enricher.llm import LlmFailed, LlmRewriter
from services.jobfiles import JobFiles, MissingInput
from services.styles import enrich_prompt


class Publisher(Protocol):
    async def publish(self, event: Event) -> None: ...
    async def send(self, command: Command) -> None: ...


async def settle_prompt(spec: JobSpec, styles: dict[str, Style],
                        llm: LlmRewriter | None) -> tuple[str, str | None, Enrichment]:
    """(prompt, negative prompt, which path settled them): the style's template, or, with an LLM
    configured, the LLM's rewrite in that style (the template when every attempt fails)."""
    prompt, negative = enrich_prompt(spec.prompt, spec.negative_prompt, spec.style, styles)
    if not spec.style:
        return prompt, negative, Enrichment(path="none")
    if llm is None:
        return prompt, negative, Enrichment(path="template")
    try:
        rewritten, attempts = await llm.rewrite(spec.prompt, spec.style, styles[spec.style])
    except LlmFailed as exc:
        return prompt, negative, Enrichment(path="template", llm_model=llm.config.model or None,
                                            attempts=exc.attempts, error=str(exc))
    return rewritten, negative, Enrichment(path="llm", llm_model=llm.config.model or None, attempts=attempts)


async def enrich_job(event: JobAccepted, *, bus: Publisher, styles: dict[str, Style], files: JobFiles,
                     llm: LlmRewriter | None = None) -> None:
    """Apply the job's style (or pass the prompt through), record it, and queue the generation.

    Input images travel inside the command, so generator workers need no shared disk.
    """
    spec = event.spec
    prompt, negative, enrichment = await settle_prompt(spec, styles, llm)
    enriched = msgspec.structs.replace(spec, prompt=prompt, negative_prompt=negative)
    init_image, mask_image = await asyncio.to_thread(files.read_inputs, spec)
    # Both confirms are awaited together; job.enriched is written to the broker first, so it is
    # queued for subscribers before the generator can start.
    await asyncio.gather(
        bus.publish(JobEnriched(
            job_id=event.job_id, prompt=prompt, negative_prompt=negative,
            original_prompt=spec.prompt, style=spec.style, enrichment=enrichment,
        )),
        bus.send(GenerateImages(
            job_id=event.job_id, spec=enriched, created_at=event.occurred_at,
            init_image=init_image, mask_image=mask_image,
        )),
    )


async def fail_job(event: JobAccepted, error: Exception, *, bus: Publisher) -> None:
    """A job the enricher cannot pass on ends failed with the reason, never silently dropped."""
    reason = str(error) if isinstance(error, MissingInput) else f"prompt enrichment failed: {error}"
    await bus.publish(JobFailed(job_id=event.job_id, reason=reason))
