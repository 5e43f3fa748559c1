"""Append-only files that never drop an accepted byte, even on a full disk."""
from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path


class DurableFile:
    """An append-only file that never drops accepted bytes, even on a full disk.

    ``write`` always accepts; bytes the OS refuses (ENOSPC, EIO...) stay in memory and are
    retried by the next write or :meth:`sync`. The muxer writing through it therefore never
    sees an error mid-fragment, and nothing already on disk is touched.
    """

    CHUNK = 1 << 20

    def __init__(self, path: Path, write: Callable[[int, bytes], int] | None = None,
                 fsync: Callable[[int], None] | None = None, mode: int = 0o600) -> None:
        self.path = path
        # 0600: evidence is the unit's business alone (whoever else reads the card, too).
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
        self._write, self._fsync = write or os.write, fsync or os.fsync
        self._pending = bytearray()
        self.error: OSError | None = None
        self.on_disk = os.fstat(self._fd).st_size
        self._synced = self.on_disk

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    @property
    def dirty(self) -> bool:
        return bool(self._pending) or self._synced != self.on_disk

    def write(self, data: bytes) -> int:
        self._pending += data
        self._drain()
        return len(data)

    def _drain(self) -> bool:
        while self._pending:
            try:
                n = self._write(self._fd, bytes(self._pending[:self.CHUNK]))
            except OSError as exc:
                self.error = exc
                return False
            del self._pending[:n]
            self.on_disk += n
        self.error = None
        return True

    def sync(self) -> bool:
        """Drain and fsync; True when every accepted byte is durable."""
        if not self._drain():
            return False
        if self._synced != self.on_disk:
            try:
                self._fsync(self._fd)
            except OSError as exc:
                self.error = exc
                return False
            self._synced = self.on_disk
        return True

    def close(self) -> None:
        """Sync and close; raises the disk's error if bytes are still pending."""
        if self._fd < 0:
            return
        if not self.sync():
            assert self.error is not None
            raise self.error
        os.close(self._fd)
        self._fd = -1

    def abandon(self) -> None:
        """Close without syncing (shutdown with a full disk: recovery takes what is there)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
