"""Files generator workers fetch from the control node by content hash (they share no disk)."""

from __future__ import annotations

import re
from pathlib import Path

from services.ingress.domain.errors import Invalid, NotFound
from services.library import LoraLibrary
from services.library.hashes import LoraHashes

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def lora_by_hash(library: LoraLibrary, hashes: LoraHashes, sha256: str) -> Path:
    """The LoRA file in the library whose content has this sha256 (as jobs name it), else 404."""
    if not _SHA256.match(sha256):
        raise Invalid("sha256 must be 64 lowercase hexadecimal characters")
    found = hashes.file(sha256)
    if found is not None:
        return found
    for entry in library.view.entries.values():
        if entry.sha256 != sha256:
            continue
        path = library.folder / entry.file
        try:
            st = path.stat()
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns):  # still the file that was hashed
            return path
    raise NotFound(f"no LoRA file with sha256 {sha256} in the library (removed or changed since the job was accepted)")
