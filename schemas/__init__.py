"""Darkroom's typed messages: API requests and responses, events, commands, records, settings."""
