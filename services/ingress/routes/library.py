"""What the library's controllers share: the `library` dependency and OpenAPI examples."""

from __future__ import annotations

from typing import Any

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.openapi.spec import Example
from litestar.params import Body

from services.ingress.domain.errors import Unavailable
from services.library import LoraLibrary


def provide_library(state: State) -> LoraLibrary:
    library = state.get("library")
    if library is None:
        raise Unavailable("the LoRA library is not open yet", retry_after=1)
    return library


LIBRARY = {"library": Provide(provide_library, sync_to_thread=False)}
LibraryDep = NamedDependency[LoraLibrary]

LAYER_EXAMPLE: dict[str, Any] = {
    "model": "tiny-sd",
    "settings": {"num_inference_steps": 12, "width": 256, "height": 256, "sampler": "Euler a"},
    "loras": [{"name": "fox_style", "weight": 0.8}],
    "style": "anime",
    "negative_prompt": "blurry",
}


def json_body(summary: str, value: dict[str, Any]) -> Any:
    """A JSON request body documented with one example."""
    return Body(media_type=RequestEncodingType.JSON, examples=[Example(summary=summary, value=value)])
