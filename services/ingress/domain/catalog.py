"""Queries on what this installation offers: models, samplers, and prompt styles."""

from __future__ import annotations

from schemas.api import EnrichRequest, EnrichResponse, ModelInfo, ModelList, SamplerInfo
from schemas.catalog import SAMPLERS, Catalog
from schemas.settings import Settings
from services.ingress.domain.errors import Invalid
from services.ingress.requests import MAX_IMAGES
from services.styles import UnknownStyle, enrich_prompt


def list_models(catalog: Catalog) -> ModelList:
    models = {
        entry.id: ModelInfo(
            id=entry.id,
            description=entry.description,
            family=entry.family,
            supports_negative_prompt=entry.supports_negative_prompt,
            capabilities=list(entry.capabilities),
            defaults={k: v for k, v in {
                "num_inference_steps": entry.defaults.num_inference_steps,
                "guidance_scale": entry.defaults.guidance_scale,
                "width": entry.defaults.width,
                "height": entry.defaults.height,
                "sampler": entry.defaults.sampler,
            }.items() if v is not None},
            limits={
                "max_width": entry.limits.max_width,
                "max_height": entry.limits.max_height,
                "max_steps": entry.limits.max_steps,
                "max_images": MAX_IMAGES,
            },
        )
        for entry in catalog.models.values()
    }
    return ModelList(models=models, default=catalog.default)


def list_samplers() -> list[SamplerInfo]:
    return [SamplerInfo(name=name, scheduler=scheduler, options=options) for name, (scheduler, options) in SAMPLERS.items()]


def enrich(request: EnrichRequest, *, catalog: Catalog, settings: Settings) -> EnrichResponse:
    """Apply a style template to a prompt (what the enricher will do to a job's prompt)."""
    if len(request.prompt) > settings.max_prompt_length:
        raise Invalid(f"prompt is {len(request.prompt)} characters; the limit is {settings.max_prompt_length}")
    try:
        prompt, negative = enrich_prompt(request.prompt, None, request.style, catalog.styles)
    except UnknownStyle as exc:
        raise Invalid(f"style: {exc}") from None
    return EnrichResponse(original_prompt=request.prompt, enriched_prompt=prompt, negative_prompt=negative,
                          style=request.style)
