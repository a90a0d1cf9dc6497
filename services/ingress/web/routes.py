"""The page at `/` (and `/ui`), its static files under `/ui/static/`, and the API docs' render plugin
pointed at the vendored Swagger UI. None of it is in the OpenAPI schema."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from litestar import Response, get
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

from services.ingress.routes.common import CatalogDep

STATIC = Path(__file__).parent / "static"
STATIC_URL = "/ui/static"
SWAGGER = f"{STATIC_URL}/vendor/swagger-ui"
HTML = "text/html"  # Litestar adds the charset
# The page loads only what the ingress serves; images are blob: URLs (fetched with the key).
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@cache
def _template() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


@get(["/", "/ui"], include_in_schema=False, media_type=HTML, sync_to_thread=False)
def page(catalog: CatalogDep) -> Response[str]:
    """The single page; what the catalog knows that no route lists (styles) is written into it."""
    config = {"styles": sorted(catalog.styles), "default_model": catalog.default}
    body = _template().replace("{{config}}", json.dumps(config).replace("<", "\\u003c"))
    return Response(body, media_type=HTML, headers={"Content-Security-Policy": PAGE_POLICY,
                                                    "Cache-Control": "no-cache"})


def docs_plugin() -> SwaggerRenderPlugin:
    """Swagger UI at /schema/docs from the files vendored here (Scalar's bundle is 5 MB and fetches
    its fonts from a CDN; Swagger UI's three files are 2.2 MB and fetch nothing)."""
    return SwaggerRenderPlugin(
        path="/docs", js_url=f"{SWAGGER}/swagger-ui-bundle.js", css_url=f"{SWAGGER}/swagger-ui.css",
        standalone_preset_js_url=f"{SWAGGER}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/svg+xml' href='{STATIC_URL}/favicon.svg'>",
    )


WEB_ROUTES = [
    page,
    create_static_files_router(path=STATIC_URL, directories=[STATIC], include_in_schema=False,
                               name="ui-static", send_as_attachment=False),
]
