"""Content hashes of files: LoRAs for jobs (the sha256 a job's LoRA had when it was accepted) and
for remote workers (the file with a given sha256, served by GET /v1/files/loras/{sha256}); model
files for the manifest remote workers fetch models by (GET /v1/files/models).

A hash is remembered per file identity (path, inode, size, mtime), so a file is read once however
many jobs name it, and a rewritten file is hashed again. The LoRA index (`index.py`) keeps its own
hashes on disk; this cache covers a file copied in a moment ago, before the index saw it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from services.library.index import sha256_of

_Identity = tuple[str, int, int, int]


class FileHashes:
    """sha256 of files by identity, and the file last seen with each sha256."""

    def __init__(self) -> None:
        self._by_identity: dict[_Identity, str] = {}
        self._by_hash: dict[str, _Identity] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _identity(path: Path) -> _Identity:
        st = path.stat()
        return str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns

    def sha256(self, path: Path) -> str:
        """The file's sha256 (read and hashed only when its identity is new). Blocks: call it off the loop."""
        identity = self._identity(path)
        with self._lock:
            known = self._by_identity.get(identity)
        if known is None:
            known = sha256_of(path)
            with self._lock:
                self._by_identity[identity] = known
                self._by_hash[known] = identity
        return known

    def file(self, sha256: str) -> Path | None:
        """The file last hashed to `sha256`, if it is still that same file."""
        with self._lock:
            identity = self._by_hash.get(sha256)
        if identity is None:
            return None
        path = Path(identity[0])
        try:
            return path if self._identity(path) == identity else None
        except OSError:
            return None


# One of each per process: the ingress stamps LoRA hashes at submit and serves files by them, and
# lists model files with theirs (a model's gigabytes are read once per process, not per request).
lora_hashes = FileHashes()
model_hashes = FileHashes()
