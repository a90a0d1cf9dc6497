"""What a pipeline call can raise. No torch here: the worker catches these without loading it."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A catalog entry could not be loaded; the message names the model and the cause."""


class InvalidRequest(ValueError):
    """A parameter the model cannot take; the message names it (checked before any GPU work)."""


class LoraError(ValueError):
    """A LoRA could not be found or loaded; the message names it."""


class Interrupted(Exception):
    """The step callback stopped the call; whatever the pipeline returned is discarded."""
