"""The spool is the durable queue: sealed incidents waiting for upload, in priority order.

A directory per incident under ``<evidence_dir>/spool/`` (written by the recorder, which
renames a finished ``recording/<id>/`` into place); nothing else is needed to survive a
power cut. The uploader reads ``manifest.json`` (never edits it) and marks success with
``upload.json`` beside it, which is also what the recorder's disk policy looks for.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.fsio import write_atomic

#: Trigger reasons whose incidents jump the queue (officer down, weapon drawn).
URGENT_REASONS = frozenset({'officer_down', 'holster'})
MANIFEST = 'manifest.json'
SIGNATURE = 'manifest.sig'
RECORD = 'upload.json'
#: Uploaded last, so a cloud reader that sees the manifest knows every other file is there.
LAST_FILES = (MANIFEST, SIGNATURE)
_UNSAFE = re.compile(r'[^A-Za-z0-9._-]+')


@dataclass(frozen=True)
class LocalFile:
    name: str
    path: Path
    size: int


@dataclass(frozen=True)
class Incident:
    """One sealed incident as the uploader sees it."""
    incident_id: str
    path: Path
    device_id: str
    start_time: float
    reasons: tuple[str, ...]
    files: tuple[LocalFile, ...]
    #: sha256 per file name as the signed manifest states it.
    manifest_sha256: Mapping[str, str] = field(default_factory=dict)

    @property
    def urgent(self) -> bool:
        return bool(URGENT_REASONS.intersection(self.reasons))

    @property
    def sort_key(self) -> tuple[int, float, str]:
        """Urgent first, then oldest first."""
        return (0 if self.urgent else 1, self.start_time, self.incident_id)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def key_prefix(self, bucket_prefix: str = '') -> str:
        """``[<prefix>/]<device>/<yyyy-mm-dd>/<incident>``, the date in UTC of the start."""
        day = datetime.fromtimestamp(self.start_time, timezone.utc).strftime('%Y-%m-%d')
        parts = [bucket_prefix.strip('/'), safe_component(self.device_id), day,
                 safe_component(self.incident_id)]
        return '/'.join(p for p in parts if p)


@dataclass
class SpoolScan:
    """What a pass over the spool found."""
    pending: list[Incident] = field(default_factory=list)        # sorted, most urgent first
    verified: dict[str, dict[str, Any]] = field(default_factory=dict)   # id -> upload record
    invalid: dict[str, str] = field(default_factory=dict)         # id -> why it is skipped
    #: Incident directories the recorder is still writing (``recording/``).
    recording: int = 0


class SpoolError(ValueError):
    """A spool entry that cannot be understood (the message says why)."""


def safe_component(value: str) -> str:
    """One key/path component: letters, digits, ``._-``; never empty, never ``..``."""
    text = _UNSAFE.sub('_', str(value)).strip('.')
    return text or 'unknown'


def parse_time(value: Any) -> float:
    """UNIX seconds from a float or an ISO 8601 string (a naive one is taken as UTC)."""
    if isinstance(value, bool):
        raise SpoolError(f'time {value!r} is not a number or ISO 8601 string')
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace('Z', '+00:00'))
        except ValueError:
            try:
                return float(value)
            except ValueError:
                raise SpoolError(f'time {value!r} is not a number or ISO 8601 string') from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    raise SpoolError(f'time {value!r} is not a number or ISO 8601 string')


def read_incident(path: Path) -> Incident:
    """Read one sealed spool directory.

    Raises:
        SpoolError: not sealed yet (no manifest or signature) or the manifest is unreadable.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file() or not (path / SIGNATURE).is_file():
        raise SpoolError('not sealed: manifest.json or manifest.sig missing')
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SpoolError(f'unreadable manifest.json: {exc}') from None
    if not isinstance(manifest, dict):
        raise SpoolError('manifest.json is not a JSON object')
    triggers = manifest.get('triggers') or []
    reasons = tuple(str(t.get('reason', '')) for t in triggers if isinstance(t, dict))
    start = manifest.get('start_time')
    try:
        start_time = parse_time(start) if start is not None else manifest_path.stat().st_mtime
    except SpoolError as exc:
        raise SpoolError(f'manifest start_time: {exc}') from None
    declared = manifest.get('files') if isinstance(manifest.get('files'), dict) else {}
    hashes = {str(k): str(v.get('sha256', '')) for k, v in declared.items() if isinstance(v, dict)}
    files = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.name == RECORD or entry.name.startswith('.') or entry.name.endswith('.tmp') \
                or not entry.is_file(follow_symlinks=False):
            continue
        files.append(LocalFile(entry.name, Path(entry.path), entry.stat().st_size))
    return Incident(
        incident_id=str(manifest.get('incident_id') or path.name),
        path=path,
        device_id=str(manifest.get('device_id') or 'unknown-device'),
        start_time=start_time,
        reasons=reasons,
        files=tuple(order_files(files)),
        manifest_sha256=hashes,
    )


def order_files(files: Iterable[LocalFile]) -> list[LocalFile]:
    """Evidence files smallest first (most incidents complete sooner), manifest last."""
    return sorted(files, key=lambda f: (f.name in LAST_FILES, LAST_FILES.index(f.name)
                                        if f.name in LAST_FILES else 0, f.size, f.name))


def read_record(incident_dir: Path) -> dict[str, Any] | None:
    """The uploader's ``upload.json`` for an incident, or None if absent or unreadable."""
    try:
        record = json.loads((incident_dir / RECORD).read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_verified(incident_dir: Path) -> bool:
    record = read_record(incident_dir)
    return bool(record and record.get('verified') is True)


def scan_spool(evidence_dir: Path, skip: Iterable[str] = ()) -> SpoolScan:
    """Read every spool entry; sort the pending ones by priority.

    Args:
        skip: directory names known to be verified already (saves reading them again).
    """
    scan = SpoolScan()
    skip = set(skip)
    spool = evidence_dir / 'spool'
    try:
        entries = sorted(os.scandir(spool), key=lambda e: e.name)
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith('.'):
            continue
        path = Path(entry.path)
        if entry.name in skip:
            continue
        record = read_record(path)
        if record and record.get('verified') is True:
            scan.verified[entry.name] = record
            continue
        try:
            scan.pending.append(read_incident(path))
        except (SpoolError, OSError) as exc:
            scan.invalid[entry.name] = str(exc)
    scan.pending.sort(key=lambda i: i.sort_key)
    try:
        scan.recording = sum(1 for e in os.scandir(evidence_dir / 'recording') if e.is_dir())
    except FileNotFoundError:
        pass
    return scan


def prune_incident(evidence_dir: Path, name: str) -> bool:
    """Delete a verified incident's local copy, logging its chain link first.

    Same protocol as the recorder's disk policy: append ``{incident_id, sequence,
    manifest_sha256, pruned_time}`` to ``pruned.jsonl`` (fsync), rename the directory out of
    sight, then remove it. Returns False (and deletes nothing) unless ``upload.json`` says
    verified.
    """
    path = evidence_dir / 'spool' / name
    if not is_verified(path):
        return False
    try:
        body = (path / MANIFEST).read_bytes()
        manifest = json.loads(body)
    except (OSError, ValueError):
        return False
    ev.prune_incident(evidence_dir, path, manifest.get('incident_id', name),
                      manifest.get('sequence'), ev.sha256_bytes(body))
    return True


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON whole or not at all (``upload.json``, multipart state), mode 0644 like the
    evidence files beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, sort_keys=True) + '\n'
    write_atomic(path, text.encode(), best_effort_dir_sync=True)
