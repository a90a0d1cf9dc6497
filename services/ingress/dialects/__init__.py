"""Foreign APIs spoken over the same domain as the native /v1 API, one module per API:
`openai` (OpenAI's Images API under /openai/v1) and `sdapi` (AUTOMATIC1111's API under /sdapi/v1).
Each translates its requests to domain commands, the results to its answers, and the domain's
errors to its own error shape; nothing else. `common` holds who the caller is."""

from services.ingress.dialects.openai import OpenAIRoutes
from services.ingress.dialects.sdapi import SdapiRoutes

DIALECT_ROUTES = [OpenAIRoutes, SdapiRoutes]

__all__ = ["DIALECT_ROUTES"]
