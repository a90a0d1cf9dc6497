"""The generator: loads models (kept warm), runs diffusers, reports progress, emits images."""
