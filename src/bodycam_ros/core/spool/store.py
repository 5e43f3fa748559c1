"""The evidence store: the recorder's view of the evidence directory.

It creates the layout, claims the directory for one recorder process, reads the chain head,
measures free space, lists unsealed and sealed incidents and moves a hopeless incident into
quarantine. It never deletes evidence: the uploader alone prunes, after a remote re-verify.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.fsio import dir_size, fsync_dir, write_atomic
from bodycam_ros.core.spool.layout import DIR_MODE, QUARANTINE_REASON, EvidenceLayout, SpoolError


@dataclass(frozen=True)
class SealedIncident:
    incident_id: str
    path: Path
    sequence: int
    sealed_time: float
    uploaded: bool
    size: int




class EvidenceStore:
    """The evidence directory: layout, the chain head, free space, quarantine.

    Args:
        root: the evidence directory.
        quota_bytes: if > 0, evidence may use at most this much (e.g. a share of an SD card);
            free space is then the smaller of the disk's and the quota's.
        disk_free: how free bytes are measured (the filesystem by default).
    """

    def __init__(self, root: Path, quota_bytes: int = 0,
                 disk_free: Callable[[Path], int] | None = None) -> None:
        self.layout = EvidenceLayout(Path(root))
        self.root = self.layout.root
        self.recording = self.layout.recording
        self.spool = self.layout.spool
        self.quarantine = self.layout.quarantine
        self.keys = self.layout.keys
        self.quota_bytes = quota_bytes
        self._disk_free = disk_free or (lambda p: shutil.disk_usage(p).free)
        for d in (self.root, self.recording, self.spool):
            d.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            os.chmod(d, DIR_MODE)      # an older 0755 tree is closed too
        self._lock_fd = -1

    def lock(self) -> None:
        """Claim the store for this process (released when it exits, however it exits).

        Two recorders on one store would each take the other's open incident for a crashed
        one and seal it under their feet.

        Raises:
            SpoolError: another live process holds the store.
        """
        import fcntl
        fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(f'{self.root} is in use by another recorder process') from None
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)   # closing the descriptor releases the flock
            self._lock_fd = -1

    @property
    def chain_head_path(self) -> Path:
        return self.layout.chain_head

    def chain_head(self) -> ev.ChainHead:
        return ev.ChainHead.read(self.chain_head_path)

    def free_bytes(self) -> int:
        free = self._disk_free(self.root)
        if self.quota_bytes > 0:
            free = min(free, self.quota_bytes - dir_size(self.root))
        return free

    def unsealed(self) -> list[Path]:
        """Incidents in recording/, oldest first (what recovery seals one by one)."""
        out = []
        for p in self.recording.iterdir():
            try:
                if p.is_dir():
                    out.append((p.stat().st_mtime, p.name, p))
            except OSError:
                continue        # vanished or unreadable: the next pass sees it again
        return [p for _, _, p in sorted(out)]

    def sealed(self) -> list[SealedIncident]:
        """Sealed incidents, oldest (lowest sequence) first."""
        out = []
        for d in self.spool.iterdir():
            if not d.is_dir() or d.name.startswith('.'):
                continue
            try:
                m = json.loads((d / ev.MANIFEST).read_text())
                seq, sealed_t = int(m['sequence']), float(m.get('sealed_time', 0.0))
            except (OSError, ValueError, KeyError, TypeError):
                continue   # half-copied or foreign
            out.append(SealedIncident(d.name, d, seq, sealed_t, self.uploaded(d), dir_size(d)))
        return sorted(out, key=lambda s: s.sequence)

    @staticmethod
    def uploaded(directory: Path) -> bool:
        """The uploader's mark: ``upload.json`` with ``"verified": true`` (informational:
        nothing here deletes on its word)."""
        try:
            return json.loads((directory / ev.UPLOAD_MARK).read_text()).get('verified') is True
        except (OSError, ValueError, AttributeError):
            return False

    def quarantined(self) -> list[Path]:
        if not self.quarantine.is_dir():
            return []
        return sorted(p for p in self.quarantine.iterdir()
                      if p.is_dir() and not p.name.startswith('.'))

    def quarantine_incident(self, directory: Path, stage: str, error: BaseException,
                            now: float) -> Path:
        """Move an incident that cannot be sealed out of recording/, untouched, with
        ``quarantine.json`` (why, when, which error) so it is never retried blindly and never
        blocks the next one. Nothing is deleted."""
        self.quarantine.mkdir(exist_ok=True, mode=DIR_MODE)
        target = self.quarantine / directory.name
        n = 1
        while target.exists():          # the same name quarantined before: keep both
            n += 1
            target = self.quarantine / f'{directory.name}.{n}'
        reason: dict[str, Any] = {
            'incident_id': directory.name, 'stage': stage, 'error_type': type(error).__name__,
            'error': str(error), 'quarantined_time': now, 'from': str(directory),
            'files': sorted(p.name for p in directory.iterdir()),
        }
        os.replace(directory, target)
        fsync_dir(self.quarantine)
        fsync_dir(directory.parent)
        write_atomic(target / QUARANTINE_REASON, ev.canonical(reason), mode=0o600)
        return target
