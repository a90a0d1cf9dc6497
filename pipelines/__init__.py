"""Everything diffusers: loading models, generating images, encoding them. Services call a few
clear functions here (`load`, `generate`, `encode_png`) and never touch diffusers themselves."""

import os

# Set before diffusers/transformers are first imported (the modules here import them lazily or
# after this): they warn at import about optional packages we do not use, and draw progress bars.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
