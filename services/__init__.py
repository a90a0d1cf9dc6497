"""Darkroom's running processes, one package each, plus the modules they share (bus, files, logs)."""
