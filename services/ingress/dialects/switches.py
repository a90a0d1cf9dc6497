"""A dialect that can be switched off (DARKROOM_DIALECT_<NAME>=off): a guard on its controller
answers every route with the dialect's own 404 before anything else runs."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from services.ingress.domain.errors import NotFound


class SwitchedOff(NotFound):
    """The dialect is switched off in the settings."""


def switch(setting: str, name: str):
    """A guard reading `Settings.<setting>` ("on"/"off") on every request."""

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if getattr(connection.app.state.config, setting) == "off":
            raise SwitchedOff(f"the {name} dialect is switched off (DARKROOM_{setting.upper()}=off)")

    return guard
