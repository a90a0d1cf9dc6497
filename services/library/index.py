"""The LoRA index: every `.safetensors` file of the LoRA folder with its size, sha256 and what its
header says, kept current by `scan` and persisted under `state/`, so that a restart re-reads
only the files that changed and never hashes a file twice.

A scan compares the folder with the index by (size, mtime): unchanged files are kept as they
are, a renamed file keeps its hash (same inode, size and mtime), new and changed files have
their header read and their bytes hashed. Readers get an immutable `View` swapped in whole when
a scan ends, so a search never sees half an update and never waits for a scan.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import structlog
from rapidfuzz import fuzz, process, utils

from services.files import write_atomic
from services.library.metadata import HeaderError, LoraMetadata, describe, read_header

log = structlog.get_logger("library")

SUFFIX = ".safetensors"
PREVIEW_SUFFIXES = (".preview.png", ".png", ".jpg", ".jpeg", ".webp")
SCORE_CUTOFF = 65.0
# A match on a tag or trigger word counts a little less than one on the name.
KEYWORD_WEIGHT = 0.95
PREFIX_WEIGHT = 0.97
_HASH_CHUNK = 4 * 1024 * 1024


class Entry(msgspec.Struct, kw_only=True):
    """One indexed LoRA file."""

    name: str
    file: str
    size: int
    mtime_ns: int
    inode: int
    sha256: str | None
    meta: LoraMetadata
    preview: str | None = None

    @property
    def modified_at(self) -> datetime:
        return datetime.fromtimestamp(self.mtime_ns / 1e9, UTC)

    @property
    def keywords(self) -> list[str]:
        return [*self.meta.trigger_words, *self.meta.tags]


class _Cache(msgspec.Struct):
    version: int
    entries: list[Entry]


class ScanResult(msgspec.Struct, kw_only=True):
    added: list[str]
    removed: list[str]
    changed: list[str]
    total: int
    seconds: float


class View:
    """An immutable snapshot for readers: entries by name, plus the arrays a search scans.

    Search terms are each entry's name, the words of its name, its tags and trigger words and
    their words; each term lists the entries that carry it (a flat posting list). A query is
    compared (rapidfuzz's plain ratio, one vectorised call) with each term's prefix of the
    query's length, so that autocomplete matches while typing, typos included; a term no longer
    than the query is compared whole. An entry scores its best term.
    """

    MAX_QUERY = 32

    def __init__(self, entries: dict[str, Entry]):
        self.entries = entries
        self.ordered = [entries[name] for name in sorted(entries, key=str.lower)]
        self.bases = np.array([entry.meta.base for entry in self.ordered], dtype=object)
        terms: dict[str, int] = {}
        best: dict[tuple[int, int], float] = {}  # (term, entry) -> weight
        for index, entry in enumerate(self.ordered):
            for weight, texts in ((1.0, [entry.name]), (KEYWORD_WEIGHT, entry.keywords)):
                for text in texts:
                    phrase = utils.default_process(text)
                    for term in {phrase, *phrase.split()}:
                        if term:
                            key = (terms.setdefault(term, len(terms)), index)
                            best[key] = max(best.get(key, 0.0), weight)
        self.terms = list(terms)
        self.post_term = np.fromiter((t for t, _ in best), dtype=np.int64, count=len(best))
        self.post_entry = np.fromiter((e for _, e in best), dtype=np.int64, count=len(best))
        self.post_weight = np.fromiter(best.values(), dtype=np.float64, count=len(best))
        # Plain arrays (few objects: a big view must not slow the garbage collector down).
        self.lengths = np.fromiter(map(len, self.terms), dtype=np.int64, count=len(self.terms))
        self.first = np.fromiter((ord(t[0]) for t in self.terms), dtype=np.int64, count=len(self.terms))
        self.second = np.fromiter((ord(t[1]) if len(t) > 1 else -1 for t in self.terms), dtype=np.int64,
                                  count=len(self.terms))

    def search(self, query: str, base: str | None) -> tuple[list[int], np.ndarray]:
        """Indices of the matching entries, best first (ties by name), and their scores."""
        size = len(self.ordered)
        allowed = np.ones(size, dtype=bool) if base is None else (self.bases == base)
        q = utils.default_process(query)[:self.MAX_QUERY]
        if not q:
            ids = np.nonzero(allowed)[0]
            return ids.tolist(), np.full(len(ids), np.nan)
        scores = np.zeros(size, dtype=np.float64)
        if self.terms:
            # Only terms that start like the query are compared: the same first letter, or the
            # first two swapped, or the query missing the first letter. A typo in the very first
            # letter is the one kind this misses; it makes a search several times cheaper.
            c0, c1 = ord(q[0]), ord(q[1]) if len(q) > 1 else -2
            candidates = np.nonzero((self.first == c0) | (self.first == c1) | (self.second == c0))[0]
            term_scores = np.zeros(len(self.terms), dtype=np.float64)
            if len(candidates):
                length = len(q)
                prefixes = [self.terms[i][:length] for i in candidates.tolist()]
                matched = process.cdist([q], prefixes, scorer=fuzz.ratio, processor=None, dtype=np.float64,
                                        score_cutoff=SCORE_CUTOFF)[0]
                # A whole term ranks above a prefix of a longer one matched as well.
                term_scores[candidates] = matched * np.where(self.lengths[candidates] > length, PREFIX_WEIGHT, 1.0)
            hit = term_scores[self.post_term] > 0
            np.maximum.at(scores, self.post_entry[hit], term_scores[self.post_term[hit]] * self.post_weight[hit])
        scores[~allowed] = 0.0
        hits = np.nonzero(scores >= SCORE_CUTOFF)[0]
        order = hits[np.argsort(-scores[hits], kind="stable")]
        return order.tolist(), scores[order]


class LoraIndex:
    """The index of one LoRA folder, persisted in `cache_path`."""

    def __init__(self, folder: Path, cache_path: Path):
        self.folder = folder
        self.cache_path = cache_path
        self._scanning = threading.Lock()
        self._broken: dict[str, tuple[int, int]] = {}  # unreadable files, until they change
        self.view = View(self._load())

    def _load(self) -> dict[str, Entry]:
        try:
            cache = msgspec.json.decode(self.cache_path.read_bytes(), type=_Cache)
        except FileNotFoundError:
            return {}
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("LoRA index cache unreadable; rebuilding it", path=str(self.cache_path), error=str(exc))
            return {}
        return {entry.name: entry for entry in cache.entries}

    def get(self, name: str) -> Entry | None:
        entries = self.view.entries
        return entries.get(name) or entries.get(Path(name).name.removesuffix(SUFFIX))

    def scan(self, *, hash_files: bool = True) -> ScanResult:
        """Bring the index in line with the folder; what changed. One scan at a time."""
        with self._scanning:
            return self._scan(hash_files)

    def _scan(self, hash_files: bool) -> ScanResult:
        started = time.monotonic()
        old = self.view.entries
        try:
            listing = {item.name: item for item in os.scandir(self.folder)}
        except FileNotFoundError:
            listing = {}
        names = set(listing)
        by_identity = {(e.inode, e.size, e.mtime_ns): e for e in old.values()}
        entries: dict[str, Entry] = {}
        added, changed = [], []
        for file_name, item in listing.items():
            if not file_name.endswith(SUFFIX) or file_name.startswith("."):
                continue
            try:
                stat = item.stat()
            except FileNotFoundError:
                continue
            name = file_name.removesuffix(SUFFIX)
            preview = next((name + s for s in PREVIEW_SUFFIXES if name + s in names), None)
            before = old.get(name)
            if before is not None and (before.size, before.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                entries[name] = before if before.preview == preview else msgspec.structs.replace(before, preview=preview)
                continue
            if self._broken.get(name) == (stat.st_size, stat.st_mtime_ns):
                continue
            entry = self._read(Path(item.path), name, stat, preview, by_identity, hash_files)
            if entry is None:
                self._broken[name] = (stat.st_size, stat.st_mtime_ns)
                continue
            self._broken.pop(name, None)
            entries[name] = entry
            (changed if before is not None else added).append(name)
        removed = sorted(set(old) - set(entries))
        if added or changed or removed or entries.keys() != old.keys() or any(
                entries[n] is not old.get(n) for n in entries):
            self.view = View(entries)
            self._save(entries)
        result = ScanResult(added=sorted(added), removed=removed, changed=sorted(changed), total=len(entries),
                            seconds=round(time.monotonic() - started, 4))
        if added or changed or removed:
            log.info("LoRA library rescanned", added=len(added), removed=len(removed), changed=len(changed),
                     total=len(entries), seconds=result.seconds)
        return result

    def _read(self, path: Path, name: str, stat: os.stat_result, preview: str | None,
              by_identity: dict[tuple[int, int, int], Entry], hash_files: bool) -> Entry | None:
        try:
            meta = describe(read_header(path))
        except (OSError, HeaderError) as exc:  # half-written, or not a safetensors file
            log.warning("LoRA file skipped: unreadable header", file=path.name, error=str(exc))
            return None
        renamed = by_identity.get((stat.st_ino, stat.st_size, stat.st_mtime_ns))
        digest = renamed.sha256 if renamed is not None else None
        if digest is None and hash_files:
            try:
                digest = sha256_of(path)
            except OSError:
                return None
        return Entry(name=name, file=path.name, size=stat.st_size, mtime_ns=stat.st_mtime_ns, inode=stat.st_ino,
                     sha256=digest, meta=meta, preview=preview)

    def _save(self, entries: dict[str, Entry]) -> None:
        data = msgspec.json.encode(_Cache(version=1, entries=list(entries.values())))
        try:
            write_atomic(self.cache_path, data, durable=False)  # a lost cache only costs a rehash
        except OSError as exc:
            log.warning("LoRA index cache not written", error=str(exc))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
