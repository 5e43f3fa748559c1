"""Durable file writes shared by the recorder, the uploader and the dispatch outbox.

Evidence must survive a power cut whole or not at all: write to a temporary file, fsync,
rename over, fsync the directory so the rename itself is on disk.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path, best_effort: bool = False) -> None:
    """fsync a directory so renames and new entries in it are durable.

    Args:
        best_effort: ignore filesystems that cannot fsync a directory (a bucket on a
            network share); evidence directories keep the default and raise.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if best_effort:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not best_effort:
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644,
                 best_effort_dir_sync: bool = False) -> None:
    """Write ``data`` so a reader (or a power cut) sees the old file or the new one, never half.

    The temporary name is unique (``.<name>.<random>.tmp``), so two writers never share one.
    """
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        os.fchmod(fd, mode)                     # mkstemp gives 0600
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent, best_effort=best_effort_dir_sync)


def append_durable(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Append ``data`` to a log file and fsync it before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def dir_size(path: Path) -> int:
    """Bytes of every regular file under ``path`` (what an evidence quota counts); a file
    that vanishes or cannot be read while walking (a prune, a seal) is skipped."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total
