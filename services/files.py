"""Durable file writes: temp file in the same folder, fsync, rename into place, fsync the folder.

A reader sees the old file or the new one, never a torn one, and a crash leaves at most a
`.tmp` file that `sweep_temp_files` removes on start.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` atomically; with `durable`, the rename survives a power cut."""
    write_atomic_many([(path, data)], durable=durable)


def write_atomic_many(files: list[tuple[Path, bytes]], *, durable: bool = True) -> None:
    """Write several files, each atomically, renamed into place in the given order (so the last
    one's presence means all are complete), with one fsync per folder for the renames."""
    temps = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
            temps.append(temp)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        for temp, (path, _) in zip(temps, files):
            os.replace(temp, path)
    except BaseException:
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    if durable:
        for folder in dict.fromkeys(path.parent for path, _ in files):
            fsync_dir(folder)


def create_file(path: Path, data: bytes) -> None:
    """Create a file that must not exist yet, in one step (no temp file, not fsynced).

    For a brand-new file whose name nobody knows until this returns (a new job's document): no
    reader can see it half-written, and a crash mid-write leaves a file no one will ask for.
    About 30 µs, so callers may do it inline on an event loop.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_temp_files(folders: Iterable[Path], older_than: float = 300.0) -> int:
    """Remove temp files a crashed writer left behind (old enough that no live writer owns them)."""
    removed = 0
    cutoff = time.time() - older_than
    for folder in folders:
        if not folder.is_dir():
            continue
        for temp in folder.glob(f".*{TEMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
                    removed += 1
    return removed
