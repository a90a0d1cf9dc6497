"""A1111 sampler names to diffusers schedulers (the table itself is data in schemas.catalog)."""

from __future__ import annotations

from schemas.catalog import SAMPLERS


def scheduler_for(base_config: dict, name: str):
    """A fresh scheduler for sampler `name`, built from the model's own scheduler config."""
    import diffusers

    class_name, overrides = SAMPLERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)
