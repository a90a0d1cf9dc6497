"""Durable file writes: temp file in the same folder, fsync, rename into place, fsync the folder.

A reader sees the old file or the new one, never a torn one, and a crash leaves at most a
`.tmp` file that `sweep_temp_files` removes on start.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def write_atomic(path: Path, data: bytes, *, durable: bool = True, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically; with `durable`, the rename survives a power cut."""
    write_atomic_many([(path, data)], durable=durable, mode=mode)


def write_atomic_many(files: list[tuple[Path, bytes]], *, durable: bool = True, mode: int = 0o644) -> None:
    """Write several files, each atomically, renamed into place in the given order (so the last
    one's presence means all are complete), with one fsync per folder for the renames. `mode` is
    the files' permissions (0o600 for secrets), set before any data is written."""
    temps = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = temp_path(path)
            temps.append(temp)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        for temp, (path, _) in zip(temps, files, strict=False):
            os.replace(temp, path)
    except BaseException:
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    if durable:
        for folder in dict.fromkeys(path.parent for path, _ in files):
            fsync_dir(folder)


def create_file(path: Path, data: bytes) -> None:
    """Create a file that must not exist yet, whole, in one step (not fsynced; ~60 µs, fine
    inline); FileExistsError when it does.

    Written aside, then hard-linked into place: a link fails when the name exists and never shows
    a file half-written. A claim's loser reads the winner's claim at once (jobs/.outcomes: the
    saver's "completed" against a cancel's "cancelled"); created with O_EXCL and then written, it
    could read it empty, take it for no claim, and both would win.
    """
    temp = path.with_name(f".{path.name}.{threading.get_ident()}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:  # its folder is gone (recreated by hand, say): make it, once
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def publish_staged(temp: Path, path: Path) -> None:
    """Move a staged file into place unless `path` already exists (someone else wrote the same
    thing first): link, never rename, so an existing file is never replaced."""
    try:
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writer_gone(temp: Path, cutoff: float) -> bool:
    """Temp names end in .<pid>.tmp: the writer is gone if that process is, or the file is old."""
    try:
        pid = int(temp.name.removesuffix(TEMP_SUFFIX).rsplit(".", 1)[1])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return True
    except PermissionError:
        pass
    return temp.stat().st_mtime < cutoff


def sweep_temp_files(folders: Iterable[Path], older_than: float = 300.0) -> int:
    """Remove temp files a killed writer left behind (its process is gone, or the file is old)."""
    removed = 0
    cutoff = time.time() - older_than
    for folder in folders:
        if not folder.is_dir():
            continue
        for temp in folder.glob(f".*{TEMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if _writer_gone(temp, cutoff):
                    temp.unlink()
                    removed += 1
    return removed


def temp_path(path: Path) -> Path:
    """Where a write of `path` is staged: hidden, same folder, named after the writing process."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
