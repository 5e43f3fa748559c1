"""The spool is the durable queue: sealed incidents waiting for upload, in priority order.

A directory per incident under ``<evidence_dir>/spool/`` (written by the recorder, which
renames a finished ``recording/<id>/`` into place); nothing else is needed to survive a
power cut. The uploader reads ``manifest.json`` (never edits it) and marks success with
``upload.json`` beside it. Every field it uses comes from a manifest whose Ed25519 signature
holds; an entry that cannot be read or trusted is a :class:`SpoolError` with a
machine-readable ``reason`` (the uploader quarantines it), never an exception out of a scan.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.fsio import write_atomic

#: Trigger reasons whose incidents jump the queue (officer down, weapon drawn).
from bodycam_ros.core.messages import URGENT_REASONS  # the one list of reasons
MANIFEST = 'manifest.json'
SIGNATURE = 'manifest.sig'
RECORD = 'upload.json'
#: Uploaded last, so a cloud reader that sees the manifest knows every other file is there.
LAST_FILES = (MANIFEST, SIGNATURE)
_UNSAFE = re.compile(r'[^A-Za-z0-9._-]+')
#: Latest start time a key can be made for (datetime's year 9999).
_MAX_TIME = 253_402_300_799.0


class Reason:
    """Why a spool entry is quarantined (the ``reason`` of a :class:`SpoolError`)."""
    NOT_SEALED = 'not_sealed'                 # manifest.json or manifest.sig missing
    MANIFEST_UNREADABLE = 'manifest_unreadable'   # not JSON, not an object, I/O error
    MANIFEST_INVALID = 'manifest_invalid'     # a field the upload needs is malformed
    BAD_START_TIME = 'bad_start_time'         # not a finite time a key can be made for
    NO_PUBLIC_KEY = 'no_public_key'           # nothing to check the signature with
    BAD_SIGNATURE = 'bad_signature'           # manifest.sig does not sign manifest.json
    FILE_MISMATCH = 'file_mismatch'           # a local file differs from the manifest
    CHANGED_DURING_UPLOAD = 'changed_during_upload'


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
    #: size per file name as the signed manifest states it.
    manifest_size: Mapping[str, int] = field(default_factory=dict)
    #: The manifest's chain sequence (oldest first when pruning), None if it has none.
    sequence: int | None = None
    #: SHA-256 of the manifest bytes (the chain link logged when the incident is pruned).
    manifest_digest: str = ''
    #: Evidence files are encrypted to the agency (format 2 ``age-v1``): opaque bytes here.
    encrypted: bool = False

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
    invalid: dict[str, SpoolError] = field(default_factory=dict)  # id -> why it is skipped
    #: Entries skipped because ``skip_entry`` said so (quarantined and unchanged).
    skipped: list[str] = field(default_factory=list)
    #: Incident directories the recorder is still writing (``recording/``).
    recording: int = 0


class SpoolError(ValueError):
    """A spool entry that cannot be understood or trusted (the message says why).

    ``reason`` is one of :class:`Reason`; ``details`` lists specifics (bad files, errors).
    """

    def __init__(self, message: str, reason: str = Reason.MANIFEST_INVALID,
                 details: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.details = list(details)


def safe_component(value: str) -> str:
    """One key/path component: letters, digits, ``._-``; never empty, never ``..``."""
    text = _UNSAFE.sub('_', str(value)).strip('.')
    return text or 'unknown'


def parse_time(value: Any) -> float:
    """UNIX seconds from a float or an ISO 8601 string (a naive one is taken as UTC)."""
    if isinstance(value, bool):
        raise SpoolError(f'time {value!r} is not a number or ISO 8601 string')
    shown = repr(value)[:60]
    try:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                dt = datetime.fromisoformat(value.replace('Z', '+00:00'))
            except ValueError:
                return float(value)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return dt.timestamp()
    except (ValueError, OverflowError):
        pass
    raise SpoolError(f'time {shown} is not a number or ISO 8601 string',
                     Reason.BAD_START_TIME)


def check_start_time(t: float) -> float:
    """``t`` if an object key (``yyyy-mm-dd``) can be made for it.

    Raises:
        SpoolError: NaN, infinite, before 1970 or after 9999 (Reason.BAD_START_TIME).
    """
    if not math.isfinite(t) or not 0.0 <= t <= _MAX_TIME:
        raise SpoolError(f'start_time {t!r} is not a time between 1970 and 9999',
                         Reason.BAD_START_TIME)
    return t


def manifest_key(manifest: Mapping[str, Any], public_key: bytes | None) -> bytes:
    """The key to check a manifest's signature with: the device's own (``keys/``) when
    known, else the one the manifest names (which proves integrity, not origin).

    Raises:
        SpoolError: neither is a 32-byte Ed25519 key (Reason.NO_PUBLIC_KEY).
    """
    if public_key is not None:
        return public_key
    try:
        key = base64.b64decode(str(manifest.get('device_public_key', '')), validate=True)
    except (ValueError, binascii.Error):
        key = b''
    if len(key) != 32:
        raise SpoolError('no device key in keys/ and no usable device_public_key in the '
                         'manifest to check its signature with', Reason.NO_PUBLIC_KEY)
    return key


def read_incident(path: Path, public_key: bytes | None = None) -> Incident:
    """Read one sealed spool directory; its signature must hold before any field is used.

    Args:
        public_key: the device's raw Ed25519 key; None uses the manifest's own.

    Raises:
        SpoolError: not sealed, unreadable, unsigned or malformed (``reason`` says which).
    """
    manifest_path, sig_path = path / MANIFEST, path / SIGNATURE
    if not manifest_path.is_file() or not sig_path.is_file():
        raise SpoolError('not sealed: manifest.json or manifest.sig missing', Reason.NOT_SEALED)
    try:
        body = manifest_path.read_bytes()
        signature = sig_path.read_bytes()
        manifest = json.loads(body)
    except (OSError, ValueError, RecursionError) as exc:
        raise SpoolError(f'unreadable manifest.json: {str(exc)[:200]}',
                         Reason.MANIFEST_UNREADABLE) from None
    if not isinstance(manifest, dict):
        raise SpoolError('manifest.json is not a JSON object', Reason.MANIFEST_UNREADABLE)
    key = manifest_key(manifest, public_key)
    if len(signature) != 64 or not ev.signature_ok(key, signature, body):
        raise SpoolError('manifest.sig does not sign manifest.json with the device key '
                         '(either was altered, or another key signed it)', Reason.BAD_SIGNATURE)
    triggers = manifest.get('triggers')
    triggers = triggers if isinstance(triggers, list) else []
    reasons = tuple(str(t.get('reason', '')) for t in triggers if isinstance(t, dict))
    start = manifest.get('start_time')
    try:
        start_time = check_start_time(parse_time(start) if start is not None
                                      else manifest_path.stat().st_mtime)
    except SpoolError as exc:
        raise SpoolError(f'manifest start_time: {exc}', Reason.BAD_START_TIME) from None
    except OSError as exc:
        raise SpoolError(f'cannot stat manifest.json: {exc.strerror}',
                         Reason.MANIFEST_UNREADABLE) from None
    declared = manifest.get('files') if isinstance(manifest.get('files'), dict) else {}
    hashes = {str(k): str(v.get('sha256', '')) for k, v in declared.items() if isinstance(v, dict)}
    sizes = {str(k): v['size'] for k, v in declared.items()
             if isinstance(v, dict) and type(v.get('size')) is int}
    sequence = manifest.get('sequence')
    files = []
    try:
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.name == RECORD or entry.name.startswith('.') or \
                    entry.name.endswith('.tmp') or not entry.is_file(follow_symlinks=False):
                continue
            files.append(LocalFile(entry.name, Path(entry.path), entry.stat().st_size))
    except OSError as exc:
        raise SpoolError(f'cannot list {path.name}: {exc.strerror}',
                         Reason.MANIFEST_UNREADABLE) from None
    incident_id = manifest.get('incident_id')
    device_id = manifest.get('device_id')
    scheme = manifest.get('encryption')
    encrypted = (isinstance(scheme, dict) and scheme.get('scheme') not in (None, 'none')) or \
        any(f.name.endswith('.age') for f in files)
    return Incident(
        incident_id=str(incident_id)[:200] if incident_id else path.name,
        path=path,
        device_id=str(device_id)[:200] if device_id else 'unknown-device',
        start_time=start_time,
        reasons=reasons,
        files=tuple(order_files(files)),
        manifest_sha256=hashes,
        manifest_size=sizes,
        sequence=sequence if type(sequence) is int else None,
        manifest_digest=ev.sha256_bytes(body),
        encrypted=encrypted,
    )


def order_files(files: Iterable[LocalFile]) -> list[LocalFile]:
    """Evidence files smallest first (most incidents complete sooner), manifest last."""
    return sorted(files, key=lambda f: (f.name in LAST_FILES, LAST_FILES.index(f.name)
                                        if f.name in LAST_FILES else 0, f.size, f.name))


def read_record(incident_dir: Path) -> dict[str, Any] | None:
    """The uploader's ``upload.json`` for an incident, or None if absent or unreadable."""
    try:
        record = json.loads((incident_dir / RECORD).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def is_verified(incident_dir: Path) -> bool:
    record = read_record(incident_dir)
    return bool(record and record.get('verified') is True)


def scan_spool(evidence_dir: Path, skip: Iterable[str] = (),
               public_key: bytes | None = None,
               skip_entry: Callable[[str, Path], bool] | None = None) -> SpoolScan:
    """Read every spool entry; sort the pending ones by priority. Never raises for an entry.

    Args:
        skip: directory names known to be verified already (saves reading them again).
        public_key: the device key to check signatures with (None: the manifest's own).
        skip_entry: (name, path) -> True to pass over an entry unread (quarantined ones).
    """
    scan = SpoolScan()
    skip = set(skip)
    spool = evidence_dir / 'spool'
    try:
        entries = sorted(os.scandir(spool), key=lambda e: e.name)
    except FileNotFoundError:
        entries = []
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.name.startswith('.'):
                continue
        except OSError:
            continue
        path = Path(entry.path)
        if entry.name in skip:
            continue
        record = read_record(path)
        if record and record.get('verified') is True:
            scan.verified[entry.name] = record
            continue
        if skip_entry is not None and skip_entry(entry.name, path):
            scan.skipped.append(entry.name)
            continue
        try:
            scan.pending.append(read_incident(path, public_key))
        except SpoolError as exc:
            scan.invalid[entry.name] = exc
    scan.pending.sort(key=lambda i: i.sort_key)
    try:
        scan.recording = sum(1 for e in os.scandir(evidence_dir / 'recording') if e.is_dir())
    except OSError:
        pass
    return scan


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON whole or not at all (``upload.json``, multipart state), mode 0644 like the
    evidence files beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, sort_keys=True) + '\n'
    write_atomic(path, text.encode(), best_effort_dir_sync=True)
