"""Fault injection for Darkroom's own reliability tests. Off unless DARKROOM_FAULT_INJECTION is set.

    DARKROOM_FAULT_INJECTION="exit-on-prompt:POISON,raise-on-prompt:BOOM"

exit-on-prompt kills the generator process (os._exit, as a segfault or an OOM kill would) when a
job's prompt contains the word; raise-on-prompt raises inside the pipeline thread, as a CUDA error
would. Nothing else reads this variable, and nothing in normal use sets it.
"""

from __future__ import annotations

import os

from schemas.jobs import JobSpec


def _rules() -> list[tuple[str, str]]:
    raw = os.environ.get("DARKROOM_FAULT_INJECTION", "")
    return [tuple(rule.split(":", 1)) for rule in raw.split(",") if ":" in rule]  # type: ignore[misc]


def inject(spec: JobSpec) -> None:
    """Called in the pipeline thread before each call."""
    for kind, word in _rules():
        if word in spec.prompt:
            if kind == "exit-on-prompt":
                os._exit(86)
            if kind == "raise-on-prompt":
                raise RuntimeError(f"injected fault for prompt containing {word!r}")
