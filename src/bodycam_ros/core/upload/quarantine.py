"""Quarantine: one bad incident is set aside, named and reported; everything else goes on.

An incident the uploader cannot trust (unsigned, damaged, a local file that no longer matches
its signed manifest) is never deleted, moved or edited: evidence stays exactly as found. The
uploader writes ``<evidence_dir>/quarantine/<incident>.json`` instead (reason, time,
details, and a fingerprint of the directory) and skips the incident while that fingerprint
holds, so a broken incident costs one check, not one per poll. Once someone repairs or
restores it (its files change), the uploader looks again; a successful upload releases it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bodycam_ros.core.upload.queue import RECORD, atomic_write_json, safe_component

QUARANTINE_DIR = 'quarantine'


def fingerprint(path: Path, extra: str = '') -> str:
    """Names, sizes and mtimes of an incident's files: changes when anyone touches them.

    ``upload.json`` (the uploader's own mark) and dot/temp files are left out. ``extra``
    is what else the verdict depended on (the trusted device key): a new one re-checks.
    """
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
        parts = []
        for e in entries:
            if e.name == RECORD or e.name.startswith('.'):
                continue
            st = e.stat(follow_symlinks=False)
            parts.append(f'{e.name}:{st.st_size}:{st.st_mtime_ns}')
    except OSError as exc:
        return f'{extra}#unreadable:{exc.errno}'
    return f'{extra}#' + '|'.join(parts)


@dataclass(frozen=True)
class QuarantineRecord:
    """What ``quarantine/<incident>.json`` holds."""
    incident: str                 # the spool directory name
    reason: str                   # one of queue.Reason
    time: float                   # UNIX seconds when it was quarantined
    message: str = ''
    details: tuple[str, ...] = ()
    fingerprint: str = ''
    path: str = ''                # where the incident is (kept as found)

    def to_json(self) -> dict[str, Any]:
        return {'incident': self.incident, 'reason': self.reason, 'time': self.time,
                'message': self.message, 'details': list(self.details),
                'fingerprint': self.fingerprint, 'path': self.path}

    @classmethod
    def from_json(cls, d: Any) -> QuarantineRecord | None:
        """None for anything that is not a record we wrote (then the incident is re-checked)."""
        if not isinstance(d, dict):
            return None
        try:
            details = d.get('details') or []
            return cls(str(d['incident']), str(d['reason']), float(d['time']),
                       str(d.get('message', '')),
                       tuple(str(x) for x in details) if isinstance(details, list) else (),
                       str(d.get('fingerprint', '')), str(d.get('path', '')))
        except (KeyError, TypeError, ValueError, OverflowError):
            return None


@dataclass
class Quarantine:
    """The quarantine records under ``evidence_dir/quarantine/``."""
    evidence_dir: Path
    _cache: dict[str, QuarantineRecord] = field(default_factory=dict)
    _loaded: bool = False

    @property
    def directory(self) -> Path:
        return self.evidence_dir / QUARANTINE_DIR

    def _file(self, name: str) -> Path:
        return self.directory / f'{safe_component(name)}.json'

    def load(self) -> None:
        """Read the records left by an earlier run (once)."""
        if self._loaded:
            return
        self._loaded = True
        try:
            files = list(self.directory.glob('*.json'))
        except OSError:
            return
        for f in files:
            try:
                rec = QuarantineRecord.from_json(json.loads(f.read_bytes()))
            except (OSError, ValueError, RecursionError):
                rec = None
            if rec is not None and self._file(rec.incident) == f:
                self._cache[rec.incident] = rec

    def add(self, name: str, path: Path, reason: str, message: str, now: float,
            details: Iterable[str] = (), extra: str = '') -> QuarantineRecord:
        """Record (durably) that ``name`` is quarantined. Its files are not touched."""
        rec = QuarantineRecord(name, reason, now, message[:2000],
                               tuple(str(d)[:500] for d in list(details)[:50]),
                               fingerprint(path, extra), str(path))
        atomic_write_json(self._file(name), rec.to_json())
        self._cache[name] = rec
        return rec

    def holds(self, name: str, path: Path, extra: str = '') -> bool:
        """Quarantined and unchanged since (files and ``extra``): skip it unread."""
        self.load()
        rec = self._cache.get(name)
        return rec is not None and rec.fingerprint == fingerprint(path, extra)

    def get(self, name: str) -> QuarantineRecord | None:
        self.load()
        return self._cache.get(name)

    def release(self, name: str) -> bool:
        """Forget a quarantine (the incident uploaded and verified after all)."""
        self.load()
        if self._cache.pop(name, None) is None:
            return False
        try:
            self._file(name).unlink()
        except FileNotFoundError:
            pass
        return True

    def current(self, spool: Path) -> list[QuarantineRecord]:
        """Records whose incident is still in the spool, oldest first."""
        self.load()
        return sorted((r for r in self._cache.values() if (spool / r.incident).is_dir()),
                      key=lambda r: (r.time, r.incident))


__all__ = ['QUARANTINE_DIR', 'Quarantine', 'QuarantineRecord', 'fingerprint']
