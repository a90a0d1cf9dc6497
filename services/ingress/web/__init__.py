"""The web UI (`/`): a small vanilla-JS page over the public API, and the static files it and the
API docs (`/docs`, Swagger UI vendored under `static/vendor/`) load, all served by the ingress:
nothing is fetched from the internet at run time."""

from services.ingress.web.routes import STATIC_URL, WEB_ROUTES, docs_plugin

__all__ = ["STATIC_URL", "WEB_ROUTES", "docs_plugin"]
