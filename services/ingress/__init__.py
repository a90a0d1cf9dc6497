"""The ingress: Darkroom's REST API (Litestar). Validates requests and publishes them as events."""
