"""The models stage: pulls, verifies, places and removes model and LoRA files, and keeps the
runtime catalog (`state/models.toml`)."""
