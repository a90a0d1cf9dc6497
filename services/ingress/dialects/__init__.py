"""Foreign APIs spoken over the same domain as the native /v1 API, one module per API:
`openai` (OpenAI's Images API under /openai/v1), `sdapi` (AUTOMATIC1111's API under /sdapi/v1),
`cyberimage` (CyberImage's API and MCP endpoint under /api), `a1111` (the A1111 Discord bot's API
under /a1111).
Each translates its requests to domain commands, the results to its answers, and the domain's
errors to its own error shape; nothing else. `common` holds who the caller is."""

from services.ingress.dialects.a1111 import A1111BotRoutes
from services.ingress.dialects.cyberimage import CyberImageRoutes
from services.ingress.dialects.cyberimage_mcp import CyberImageMcpRoutes
from services.ingress.dialects.openai import OpenAIRoutes
from services.ingress.dialects.sdapi import SdapiRoutes

DIALECT_ROUTES = [OpenAIRoutes, SdapiRoutes]
DIALECT_ROUTES += [CyberImageRoutes, CyberImageMcpRoutes]
DIALECT_ROUTES += [A1111BotRoutes]

__all__ = ["DIALECT_ROUTES"]
