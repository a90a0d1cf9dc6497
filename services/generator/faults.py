"""Fault injection for Darkroom's own reliability tests. Off unless DARKROOM_FAULT_INJECTION is set.

    DARKROOM_FAULT_INJECTION="exit-on-prompt:POISON,raise-on-prompt:BOOM"

exit-on-prompt kills the generator process (os._exit, as a segfault or an OOM kill would) when a
job's prompt contains the word; raise-on-prompt raises inside the pipeline thread, as a CUDA error
would. Only the generator's `main` reads this variable, once, and passes the hook to the render
path; nothing in normal use sets it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from schemas.jobs import JobSpec

VARIABLE = "DARKROOM_FAULT_INJECTION"

# Called in the pipeline thread before each batch, with each job's spec.
FaultHook = Callable[[JobSpec], None]


def no_faults(spec: JobSpec) -> None:
    """The hook in normal use."""


@dataclass(frozen=True)
class Faults:
    """The injection rules: (kind, word) pairs."""

    rules: tuple[tuple[str, str], ...]

    def __call__(self, spec: JobSpec) -> None:
        for kind, word in self.rules:
            if word in spec.prompt:
                if kind == "exit-on-prompt":
                    os._exit(86)
                if kind == "raise-on-prompt":
                    raise RuntimeError(f"injected fault for prompt containing {word!r}")


def from_environment(environ: Mapping[str, str]) -> FaultHook:
    """The hook the environment asks for: `no_faults` unless DARKROOM_FAULT_INJECTION is set."""
    raw = environ.get(VARIABLE, "")
    rules = tuple(tuple(rule.split(":", 1)) for rule in raw.split(",") if ":" in rule)
    return Faults(rules) if rules else no_faults  # type: ignore[arg-type]
