"""The users' LoRA library: an index of the LoRA folder (name, size, sha256, base family, trigger
words and tags from the safetensors header, preview image), kept current with watchfiles and
searched fuzzily with rapidfuzz. Hosted by the ingress process, like the read side.

- `metadata`: reading a safetensors header and what its metadata means
- `index`: the index, its persisted cache, and search
- `host`: `LoraLibrary`, the index as the ingress runs it (watching the folder)
"""

from services.library.host import LoraLibrary, lora_base
from services.library.index import Entry, ScanResult

__all__ = ["Entry", "LoraLibrary", "ScanResult", "lora_base"]
