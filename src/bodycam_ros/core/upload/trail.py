"""The uploader's part of the evidence trail: signed ledger entries and audit lines for what it
uploads and prunes, and the bucket's copies of both logs.

* After an incident's bucket copy verifies: an ``uploaded`` ledger entry (the ``upload.json``
  record is the proof) and an ``incident_uploaded`` audit line. The recorder moves an incident
  into the spool before it logs the seal, so an incident whose seal is not in the ledger yet
  is logged later (:meth:`Trail.heal` on every scan), never before its seal.
* Before a local copy is deleted: a ``pruned`` ledger entry with the proof (the delete follows
  only once that line is on disk), then an ``incident_pruned`` audit line naming the check of
  the bucket copy made just before. No signer, no seal in the ledger, no valid proof: no delete.
* After each incident and each prune pass, and when a drain ends, the ledger and the audit log
  (complete lines only) are put to ``[<prefix>/]<device>/ledger.jsonl`` and ``audit.jsonl``
  (:func:`core.ledger.bucket_key`, :func:`core.audit.bucket_key`). They only grow; each put
  overwrites the object, and with Object Lock versioning keeps every earlier version.

The signer is the device key from ``key_dir`` (``core.keys.open_signer``), opened lazily: on a
fresh unit the recorder provisions it after the uploader started.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bodycam_ros.core import audit as au
from bodycam_ros.core import keys
from bodycam_ros.core import ledger as lg
from bodycam_ros.core.signedlog import LogError, Signer
from bodycam_ros.core.upload.backends import Backend
from bodycam_ros.core.upload.errors import UploadError

MANIFEST = 'manifest.json'
#: How often a key_dir that could not be opened is tried again [s].
RETRY_OPEN_S = 10.0


@dataclass
class LedgerIndex:
    """What the ledger says about incidents, by sequence."""
    seals: dict[int, tuple[str, str]] = field(default_factory=dict)  # seq -> (id, manifest sha)
    uploaded: set[int] = field(default_factory=set)
    pruned: set[int] = field(default_factory=set)


class Trail:
    """The ledger and audit log of ``evidence_dir``, signed with the device key.

    Args:
        key_dir: the device key directory (None: only ``signer`` can sign).
        signer: a signer to use instead of opening ``key_dir`` (tests, a shared token).
        device_id: the unit as registered; '' = the one recorded in ``key_dir/device.json``,
            else the host name (the recorder's default).
        warn: called with a message when something is wrong (each distinct one once).
    """

    def __init__(self, evidence_dir: Path, *, key_dir: Path | None = None,
                 signer: Signer | None = None, device_id: str = '',
                 warn: Callable[[str], None] = lambda m: None) -> None:
        self.evidence_dir = Path(evidence_dir)
        self.key_dir = Path(key_dir) if key_dir else None
        self._signer = signer
        self._device_id = device_id
        self._warn_cb = warn
        self._warned: set[str] = set()
        self.ledger: lg.Ledger | None = None
        self.audit: au.AuditLog | None = None
        self._next_open = 0.0
        self._published: dict[str, tuple[int, int, str]] = {}   # key -> (size, mtime, sha)

    # -- the signer ------------------------------------------------------------------------
    def ready(self) -> bool:
        """True once the ledger can be signed (opens the signer on first use)."""
        if self.ledger is not None:
            return True
        if time.monotonic() < self._next_open:
            return False
        self._next_open = time.monotonic() + RETRY_OPEN_S
        signer, why = self._signer, ''
        info: dict[str, Any] = {}
        if signer is None and self.key_dir is None:
            why = 'no key_dir'
        elif signer is None and self.key_dir is not None:
            try:
                info = keys.read_device_info(self.key_dir)
                signer = keys.open_signer(self.key_dir)
            except (keys.KeyStoreError, OSError) as exc:
                why = f'key_dir {self.key_dir}: {exc}'
        if signer is None:
            self._warn(f'no device signing key ({why}): uploading, but writing no ledger or '
                       'audit entries and never pruning while there is none (no proof could '
                       'be written)')
            return False
        device_id = self._device_id or str(info.get('device_id') or '') or \
            socket.gethostname()
        self.ledger = lg.Ledger(lg.ledger_path(self.evidence_dir), signer, device_id)
        self.audit = au.AuditLog(au.audit_path(self.evidence_dir), signer, device_id)
        return True

    @property
    def device_id(self) -> str:
        return self.ledger.log.device_id if self.ledger is not None else ''

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self._warn_cb(message)

    def _prepare(self) -> None:
        """The logs are evidence too: create them 0600 (as the recorder does)."""
        for log in (self.ledger, self.audit):
            if log is not None and not log.path.exists():
                log.path.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(log.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))

    # -- reading the ledger ------------------------------------------------------------------
    def index(self) -> LedgerIndex:
        """Seals, uploads and prunes the ledger records (entries this device signed)."""
        idx = LedgerIndex()
        if self.ledger is None:
            return idx
        try:
            entries = self.ledger.entries()
        except (LogError, OSError) as exc:
            self._warn(f'{lg.ledger_path(self.evidence_dir)}: unreadable: {exc}')
            return idx
        for e in entries:
            seq = e.data.get('sequence')
            if not isinstance(seq, int):
                continue
            if e.event in lg.SEALS:
                idx.seals.setdefault(seq, (str(e.data.get('incident_id')),
                                           str(e.data.get('manifest_sha256'))))
            elif e.event == lg.UPLOADED:
                idx.uploaded.add(seq)
            elif e.event == lg.PRUNED:
                idx.pruned.add(seq)
        return idx

    @staticmethod
    def _sealed(idx: LedgerIndex, incident_id: str, sequence: int | None,
                manifest_sha256: str) -> str | None:
        """Why the ledger does not hold this incident's seal (None: it does)."""
        if sequence is None:
            return 'its manifest has no sequence'
        seal = idx.seals.get(sequence)
        if seal is None:
            return f'the ledger holds no seal for sequence {sequence} (yet)'
        if seal != (incident_id, manifest_sha256):
            return (f'the ledger sealed sequence {sequence} as {seal[0]} with another '
                    'manifest')
        return None

    # -- uploaded ----------------------------------------------------------------------------
    def uploaded(self, incident_id: str, sequence: int | None, manifest_sha256: str,
                 record: Mapping[str, Any], now: float,
                 idx: LedgerIndex | None = None) -> bool:
        """Log a verified upload once its seal is in the ledger; True when it is logged (now
        or before). False: not yet (no signer, seal not logged yet) or refused (warned)."""
        if not self.ready():
            return False
        assert self.ledger is not None and self.audit is not None
        idx = idx or self.index()
        if sequence is not None and sequence in idx.uploaded:
            return True
        if self._sealed(idx, incident_id, sequence, manifest_sha256):
            return False                      # heal() logs it once the recorder has
        assert sequence is not None
        self._prepare()
        try:
            entry = self.ledger.uploaded_from_record(incident_id, sequence, manifest_sha256,
                                                     record, now)
        except (LogError, OSError) as exc:
            self._warn(f'{incident_id}: no uploaded entry in the ledger: {exc}')
            return False
        idx.uploaded.add(sequence)
        objects = record.get('objects') or {}
        self._audit('incident_uploaded', now, incident_id=incident_id, sequence=sequence,
                    manifest_sha256=manifest_sha256, bucket=record.get('bucket'),
                    verified_at=record.get('verified_at'),
                    objects={n: o.get('sha256') for n, o in objects.items()},
                    ledger_entry=entry.seq)
        return True

    def heal(self, verified: Mapping[str, tuple[Path, Mapping[str, Any]]],
             now: float) -> set[str]:
        """Log ``uploaded`` for verified incidents (name -> (dir, upload.json record)) whose
        entry is missing: sealed after they went up, or a crash before the entry. Returns
        the names now logged, and those that can never be (no sequence, another manifest)."""
        done: set[str] = set()
        if not verified or not self.ready():
            return done
        idx = self.index()
        for name, (path, record) in sorted(verified.items()):
            try:
                body = (path / MANIFEST).read_bytes()
                seq = json.loads(body).get('sequence')
            except (OSError, ValueError, AttributeError):
                continue
            sha = hashlib.sha256(body).hexdigest()
            if type(seq) is not int or sha != record.get('manifest_sha256') or \
                    seq in idx.uploaded:
                done.add(name)
                continue
            if self.uploaded(name, seq, sha, record, now, idx):
                done.add(name)
        return done

    # -- pruned ------------------------------------------------------------------------------
    def before_prune(self, incident_id: str, sequence: int | None, manifest_sha256: str,
                     record: Mapping[str, Any], now: float) -> str | None:
        """Write the signed ``pruned`` entry that must precede a delete. Returns None when it
        is on disk (the delete may go ahead), else why not (then nothing may be deleted)."""
        if not self.ready():
            return 'no device signing key: a prune record cannot be signed'
        assert self.ledger is not None
        idx = self.index()
        why = self._sealed(idx, incident_id, sequence, manifest_sha256)
        if why:
            return f'not pruned: {why}'
        assert sequence is not None
        if sequence in idx.pruned:
            return None                       # logged by an attempt whose delete failed
        self._prepare()
        try:
            self.ledger.pruned_after_upload(incident_id, sequence, manifest_sha256, record, now)
        except (LogError, OSError) as exc:
            return f'not pruned: the ledger refused the prune record: {exc}'
        return None

    def after_prune(self, incident_id: str, sequence: int | None, manifest_sha256: str,
                    record: Mapping[str, Any], now: float, why: str) -> None:
        """Audit a completed delete, with the proof it rested on."""
        objects = record.get('objects') or {}
        self._audit('incident_pruned', now, incident_id=incident_id, sequence=sequence,
                    manifest_sha256=manifest_sha256, bucket=record.get('bucket'),
                    verified_at=record.get('verified_at'), bucket_checked_at=now,
                    objects={n: o.get('sha256') for n, o in objects.items()}, reason=why)

    def _audit(self, action: str, now: float, **details: Any) -> None:
        if self.audit is None:
            return
        self._prepare()
        try:
            self.audit.append(action, now, **details)
        except (LogError, OSError) as exc:
            self._warn(f'audit log: cannot append {action}: {exc}')

    # -- the bucket's copies -----------------------------------------------------------------
    def publish(self, backend: Backend, bucket_prefix: str) -> str:
        """Put the ledger and audit log to the bucket if they changed since the last put.
        Returns '' or what failed (the next call tries again)."""
        if self.ledger is None or self.audit is None:
            return ''
        errors = []
        for key, log in ((lg.bucket_key(self.device_id, bucket_prefix), self.ledger),
                         (au.bucket_key(self.device_id, bucket_prefix), self.audit)):
            try:
                st = log.path.stat()
            except FileNotFoundError:
                continue
            except OSError as exc:
                errors.append(f'{log.path}: {exc.strerror}')
                continue
            seen = self._published.get(key)
            if seen is not None and seen[:2] == (st.st_size, st.st_mtime_ns):
                continue
            data = log.snapshot()
            sha = hashlib.sha256(data).hexdigest()
            if not data or (seen is not None and seen[2] == sha):
                self._published[key] = (st.st_size, st.st_mtime_ns, sha)
                continue
            try:
                put_bytes(backend, key, data)
            except UploadError as exc:
                errors.append(f'{key}: {exc}')
                continue
            self._published[key] = (st.st_size, st.st_mtime_ns, sha)
        return '; '.join(errors)


def put_bytes(backend: Backend, key: str, data: bytes) -> None:
    """One small object, put and checked (size and SHA-256 as the store reports them).

    Raises:
        UploadError: the put failed or the store holds other bytes.
    """
    from bodycam_ros.core.upload.errors import VerifyError
    sha = hashlib.sha256(data)
    md5 = hashlib.md5(data)
    etag = backend.put(key, io.BytesIO(data), len(data),
                       base64.b64encode(md5.digest()).decode(),
                       base64.b64encode(sha.digest()).decode(), {'sha256': sha.hexdigest()})
    if etag and backend.etag_is_md5 and '-' not in etag and etag != md5.hexdigest():
        raise VerifyError(f'{key}: server ETag {etag} != MD5 {md5.hexdigest()}')
    remote = backend.head(key)
    if remote is None or remote.size != len(data) or remote.sha256 != sha.hexdigest():
        raise VerifyError(f'{key}: the store does not hold the {len(data)} bytes just put')


__all__ = ['LedgerIndex', 'Trail', 'put_bytes']
