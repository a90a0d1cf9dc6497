"""The saver: writes each generated image and its JSON sidecar durably, then says so."""
