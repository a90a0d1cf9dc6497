"""Foreign APIs spoken over the same domain as the native /v1 API, one module per API:
`openai` (OpenAI's Images API under /openai/v1), `sdapi` (AUTOMATIC1111's API under /sdapi/v1),
`weights` (the unofficial weights.gg API under /weights), `chutes` (the Chutes proxy under
/chutes), `cyberimage` (CyberImage's API and MCP endpoint under /api) and `a1111` (the A1111
Discord bot's API under /a1111). Each translates its requests to domain commands, the results to
its answers, and the domain's errors to its own error shape; nothing else. `common` holds who the
caller is. A dialect's name is its OpenAPI tag; DARKROOM_DIALECTS switches dialects off."""

from schemas.settings import Settings
from services.ingress.dialects.a1111 import A1111BotRoutes
from services.ingress.dialects.chutes import ChutesRoutes
from services.ingress.dialects.cyberimage import CyberImageRoutes
from services.ingress.dialects.cyberimage_mcp import CyberImageMcpRoutes
from services.ingress.dialects.openai import OpenAIRoutes
from services.ingress.dialects.sdapi import SdapiRoutes
from services.ingress.dialects.weights import WeightsRoutes

DIALECT_ROUTES = [OpenAIRoutes, SdapiRoutes, WeightsRoutes, ChutesRoutes, CyberImageRoutes, CyberImageMcpRoutes,
                  A1111BotRoutes]


def enabled_routes(settings: Settings) -> list:
    """The dialects DARKROOM_DIALECTS leaves on (each controller's tag is its dialect's name)."""
    return [routes for routes in DIALECT_ROUTES if settings.dialect_on(routes.tags[0])]


__all__ = ["DIALECT_ROUTES", "enabled_routes"]
