"""The unit's audit trail: who did what to the evidence, signed and chained.

``evidence_dir/audit.jsonl`` is a :class:`~bodycam_ros.core.signedlog.SignedLog` of kind
``bodycam-audit/1``: the same line format, locking, torn-write handling and verification as the
ledger, a separate chain (it is appended far more often, by more processes). Uploaded beside the
ledger to ``[<prefix>/]<device_id>/audit.jsonl`` (:func:`bucket_key`); checked by
``bodycam audit verify``.

Details are the caller's keyword arguments. Never log a secret: a credential is named by an id
or a fingerprint (``credential='token:3f2a…'``); keys that look like secrets are refused.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bodycam_ros.core.signedlog import (Entry, Head, LogError, LogReport, Problem, SignedLog,
                                        Signer, TrustStore, check_witness, complete_bytes,
                                        verify_log)

KIND = 'bodycam-audit/1'
AUDIT_FILE = 'audit.jsonl'

#: Every action the unit audits. ``key_*`` and ``config_*`` are open families.
ACTIONS = frozenset({
    'incident_opened', 'incident_sealed', 'incident_recovered', 'incident_quarantined',
    'incident_uploaded',          # uploaded and verified in the bucket
    'incident_pruned',
    'verify_run', 'decrypt_run', 'export_run',
    'live_view_start', 'live_view_stop', 'live_view_denied',
    'config_loaded', 'config_changed',
    'key_created', 'key_loaded', 'key_rotated', 'key_revoked',
    'log_repaired',
})
_SECRET_WORDS = ('secret', 'password', 'passphrase', 'private', 'token')
_SAFE_SUFFIXES = ('_id', '_sha256', '_fingerprint', '_name', '_hint')

__all__ = ['ACTIONS', 'AUDIT_FILE', 'AuditError', 'AuditLog', 'KIND', 'audit_path',
           'bucket_key', 'complete_bytes', 'verify_audit', 'verify_audit_bytes']


class AuditError(LogError):
    """An audit entry that must not be written (unknown action, a secret in the details)."""


def audit_path(evidence_dir: Path) -> Path:
    return Path(evidence_dir) / AUDIT_FILE


def bucket_key(device_id: str, bucket_prefix: str = '') -> str:
    """``[<prefix>/]<device_id>/audit.jsonl``."""
    return '/'.join(p.strip('/') for p in (bucket_prefix, device_id, AUDIT_FILE)
                    if p and p.strip('/'))


def _check_details(action: str, details: dict[str, Any]) -> None:
    for k in details:
        low = k.lower()
        if any(w in low for w in _SECRET_WORDS) and not low.endswith(_SAFE_SUFFIXES):
            raise AuditError(f'{action}: detail {k!r} looks like a secret; log its id or '
                             f'SHA-256 fingerprint ({k}_sha256) instead')


class AuditLog:
    """Append evidence-affecting actions to the unit's audit log.

    Args:
        path: normally :func:`audit_path` of the evidence directory.
        signer: the device key (the same one that signs manifests and the ledger).
        device_id: the unit as registered in the trust store.
    """

    def __init__(self, path: Path, signer: Signer, device_id: str, *,
                 wall_clock: Callable[[], float] | None = None) -> None:
        kw = {'wall_clock': wall_clock} if wall_clock is not None else {}
        self.log = SignedLog(path, KIND, signer, device_id, **kw)

    @property
    def path(self) -> Path:
        return self.log.path

    def append(self, action: str, now: float, **details: Any) -> Entry:
        """Log one action at ``now`` (ROS time); returns the entry once it is fsync'd.

        Raises:
            AuditError: unknown action, or a detail that looks like a secret.
            LogError: the file cannot be chained onto (its last line is not an entry).
        """
        if action not in ACTIONS and not action.startswith(('key_', 'config_')):
            raise AuditError(f'unknown audit action {action!r}; one of {sorted(ACTIONS)}')
        _check_details(action, details)
        return self.log.append(action, now, details)

    def head(self) -> Head | None:
        return self.log.head()

    def snapshot(self) -> bytes:
        """Complete lines only: the bytes to upload to :func:`bucket_key`."""
        return complete_bytes(self.path)


def verify_audit_bytes(data: bytes, trust: TrustStore, *, source: str = '',
                       allow_empty: bool = False, witness: Head | None = None) -> LogReport:
    """:func:`verify_audit` over bytes already read (a bucket object)."""
    rep = verify_log(data, KIND, trust, source)
    if not rep.entries and not allow_empty:
        rep.add('empty_history', f'{source or "audit log"} holds no entries '
                '(pass allow_empty for a unit that has done nothing yet)')
    for e in rep.entries:
        if e.event not in ACTIONS and not e.event.startswith(('key_', 'config_')):
            rep.warnings.append(Problem('unknown_action', f'entry {e.seq}: action '
                                        f'{e.event!r} is not one this version knows',
                                        entry=e.seq, line=e.line))
    if witness is not None:
        check_witness(rep, witness)
    return rep


def verify_audit(path: Path, trust: TrustStore, *, allow_empty: bool = False,
                 witness: Head | None = None) -> LogReport:
    """Check an audit log file: chain, signatures, one registered key, no torn tail.

    A missing file is an empty history (fails unless ``allow_empty``).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        data = b''
    return verify_audit_bytes(data, trust, source=str(path), allow_empty=allow_empty,
                              witness=witness)
