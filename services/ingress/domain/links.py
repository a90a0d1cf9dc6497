"""The ingress's link to the bus: connected in the background (so the API answers before the broker
does), and possibly lost later; commands check it when they need it, after validating the request."""

from __future__ import annotations

from dataclasses import dataclass

from services.bus import BrokerUnavailable, Bus


@dataclass
class BusLink:
    """The bus once connected; until then commands that need it answer BrokerUnavailable."""

    bus: Bus | None = None

    @property
    def connected(self) -> bool:
        return self.bus is not None and self.bus.connected

    def require(self) -> Bus:
        if self.bus is None or not self.bus.connected:
            raise BrokerUnavailable("not connected to the broker")
        return self.bus

