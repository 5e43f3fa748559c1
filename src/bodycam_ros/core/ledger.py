"""The device's evidence ledger: every seal, recovery and prune, signed and chained.

``evidence_dir/ledger.jsonl`` is a :class:`~bodycam_ros.core.signedlog.SignedLog` of kind
``bodycam-ledger/1``. Deleting an incident, or its entry, or cutting the log leaves a mark
someone without the device key cannot hide (see ``core.history``). The uploader ships
:func:`complete_bytes` of the file to ``[<prefix>/]<device_id>/ledger.jsonl`` after each
incident verifies (:func:`bucket_key`), beside the incidents under
``<device_id>/<yyyy-mm-dd>/<incident>/``.

Events and their ``data``:

* ``sealed`` / ``recovered``: ``incident_id``, ``sequence`` (the manifest's), ``manifest_sha256``.
* ``uploaded``: the same three, plus the proof the bucket copy verified: ``bucket``,
  ``verified_at`` (wall time) and ``objects`` (``{file: {key, sha256, size, etag}}``, at least
  ``manifest.json`` whose ``sha256`` is the manifest's). Logged by the uploader after the
  remote copy verifies and before it uploads the ledger: a bucket copy of the ledger then
  says which incidents the bucket must hold (the others are still on their way).
* ``pruned``: the same proof, logged before the local copy is deleted.
* ``key_created``, ``key_rotated`` (``new_key``: base64, signed by the old key; later entries
  are signed by the new one), ``key_revoked`` and other ``key_*`` events: free details.
* ``log_repaired``: written by the log itself after a torn write.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bodycam_ros.core.signedlog import (KEY_ROTATED, Entry, Head, LogError, SignedLog, Signer,
                                        b64, complete_bytes)

KIND = 'bodycam-ledger/1'
LEDGER_FILE = 'ledger.jsonl'
SEALED = 'sealed'
RECOVERED = 'recovered'
PRUNED = 'pruned'
UPLOADED = 'uploaded'
SEALS = (SEALED, RECOVERED)
_HEX64 = re.compile(r'[0-9a-f]{64}')

__all__ = ['KIND', 'LEDGER_FILE', 'Ledger', 'LedgerError', 'bucket_key', 'complete_bytes',
           'ledger_path', 'proof_problem']


class LedgerError(LogError):
    """A ledger entry that must not be written (the message names the bad value)."""


def ledger_path(evidence_dir: Path) -> Path:
    return Path(evidence_dir) / LEDGER_FILE


def bucket_key(device_id: str, bucket_prefix: str = '') -> str:
    """Object key the uploader puts the ledger under: ``[<prefix>/]<device_id>/ledger.jsonl``."""
    return '/'.join(p.strip('/') for p in (bucket_prefix, device_id, LEDGER_FILE)
                    if p and p.strip('/'))


def proof_problem(data: Mapping[str, Any]) -> str | None:
    """Why an ``uploaded``/``pruned`` entry's data does not prove a verified upload, or None
    when it does."""
    sha = data.get('manifest_sha256')
    objects = data.get('objects')
    verified_at = data.get('verified_at')
    if not isinstance(verified_at, (int, float)) or isinstance(verified_at, bool):
        return f'no verified_at time ({verified_at!r})'
    if not isinstance(objects, Mapping) or not objects:
        return 'no verified objects listed'
    for name, obj in objects.items():
        if not isinstance(obj, Mapping) or not _HEX64.fullmatch(str(obj.get('sha256'))):
            return f'object {name!r} has no SHA-256'
    manifest = objects.get('manifest.json')
    if manifest is None:
        return 'manifest.json is not among the verified objects'
    if manifest.get('sha256') != sha:
        return 'the verified manifest.json is not the one sealed (SHA-256 differs)'
    if not data.get('bucket'):
        return 'no bucket named'
    return None


def _seal_data(incident_id: str, sequence: int, manifest_sha256: str) -> dict[str, Any]:
    if not incident_id or '/' in incident_id:
        raise LedgerError(f'bad incident_id {incident_id!r}')
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise LedgerError(f'{incident_id}: bad sequence {sequence!r}')
    if not _HEX64.fullmatch(str(manifest_sha256)):
        raise LedgerError(f'{incident_id}: manifest_sha256 {manifest_sha256!r} is not hex SHA-256')
    return {'incident_id': incident_id, 'sequence': sequence,
            'manifest_sha256': manifest_sha256}


class Ledger:
    """Append evidence events to ``path`` (normally :func:`ledger_path` of the evidence dir).

    Several processes may hold one (the recorder seals, the uploader prunes): each append
    locks the file and chains onto whatever is last.
    """

    def __init__(self, path: Path, signer: Signer, device_id: str, *,
                 wall_clock: Callable[[], float] | None = None) -> None:
        kw = {'wall_clock': wall_clock} if wall_clock is not None else {}
        self.log = SignedLog(path, KIND, signer, device_id, **kw)

    @property
    def path(self) -> Path:
        return self.log.path

    def sealed(self, incident_id: str, sequence: int, manifest_sha256: str, now: float, *,
               recovered: bool = False) -> Entry:
        """Log a seal (after the chain head commit). ``recovered``: sealed after a crash."""
        return self.log.append(RECOVERED if recovered else SEALED, now,
                               _seal_data(incident_id, sequence, manifest_sha256))

    def ensure_sealed(self, incident_id: str, sequence: int, manifest_sha256: str, now: float,
                      *, recovered: bool = False) -> Entry | None:
        """Log a seal unless this exact one is logged already; call it on start-up for the
        chain head, so a crash between the chain-head commit and the ledger append heals.

        Raises:
            LedgerError: the ledger names another manifest for this sequence.
        """
        data = _seal_data(incident_id, sequence, manifest_sha256)
        for e in self.log.entries():
            if e.event in SEALS and e.data.get('sequence') == sequence:
                if e.data != data:
                    raise LedgerError(f'sequence {sequence} is already logged for '
                                      f'{e.data.get("incident_id")} with another manifest')
                return None
        return self.log.append(RECOVERED if recovered else SEALED, now, data)

    def pruned(self, incident_id: str, sequence: int, manifest_sha256: str, now: float, *,
               bucket: str, verified_at: float,
               objects: Mapping[str, Mapping[str, Any]]) -> Entry:
        """Log a prune, before deleting anything, with the proof of the verified upload.

        Raises:
            LedgerError: the proof is missing or is not about this manifest.
        """
        return self._proven(PRUNED, incident_id, sequence, manifest_sha256, now, bucket,
                            verified_at, objects)

    def uploaded(self, incident_id: str, sequence: int, manifest_sha256: str, now: float, *,
                 bucket: str, verified_at: float,
                 objects: Mapping[str, Mapping[str, Any]]) -> Entry:
        """Log that the bucket copy verified (then upload the ledger: :meth:`snapshot`).

        Raises:
            LedgerError: the proof is missing or is not about this manifest.
        """
        return self._proven(UPLOADED, incident_id, sequence, manifest_sha256, now, bucket,
                            verified_at, objects)

    def uploaded_from_record(self, incident_id: str, sequence: int, manifest_sha256: str,
                             upload_record: Mapping[str, Any], now: float) -> Entry:
        """:meth:`uploaded` with the uploader's ``upload.json`` record as the proof."""
        return self._from_record(UPLOADED, incident_id, sequence, manifest_sha256,
                                 upload_record, now)

    def _proven(self, event: str, incident_id: str, sequence: int, manifest_sha256: str,
                now: float, bucket: str, verified_at: float,
                objects: Mapping[str, Mapping[str, Any]]) -> Entry:
        data = _seal_data(incident_id, sequence, manifest_sha256) | {
            'bucket': bucket, 'verified_at': verified_at,
            'objects': {str(n): {k: o.get(k) for k in ('key', 'sha256', 'size', 'etag')}
                        for n, o in objects.items()}}
        why = proof_problem(data)
        if why:
            raise LedgerError(f'{incident_id}: refusing to log {event!r}: {why}')
        return self.log.append(event, now, data)

    def _from_record(self, event: str, incident_id: str, sequence: int,
                     manifest_sha256: str, upload_record: Mapping[str, Any],
                     now: float) -> Entry:
        if upload_record.get('verified') is not True:
            raise LedgerError(f'{incident_id}: upload record is not verified')
        return self._proven(event, incident_id, sequence, manifest_sha256, now,
                            str(upload_record.get('bucket') or ''),
                            upload_record.get('verified_at'),    # type: ignore[arg-type]
                            upload_record.get('objects') or {})

    def pruned_after_upload(self, incident_id: str, sequence: int, manifest_sha256: str,
                            upload_record: Mapping[str, Any], now: float) -> Entry:
        """:meth:`pruned` with the uploader's ``upload.json`` record as the proof."""
        return self._from_record(PRUNED, incident_id, sequence, manifest_sha256,
                                 upload_record, now)

    def key_event(self, event: str, now: float, **details: Any) -> Entry:
        """``key_created``, ``key_revoked``... (``key_rotated``: use :meth:`rotate_key`)."""
        if not event.startswith('key_') or event == KEY_ROTATED:
            raise LedgerError(f'{event!r} is not a key event (key_*; rotate with rotate_key)')
        return self.log.append(event, now, details)

    def rotate_key(self, new_signer: Signer, now: float, **details: Any) -> Ledger:
        """Hand the chain to a new key: the old key signs ``key_rotated`` naming the new one;
        returns the ledger that signs with the new key. Both must be registered."""
        new_key = bytes(new_signer.public_key_bytes())
        self.log.append(KEY_ROTATED, now, details | {'new_key': b64(new_key)})
        return Ledger(self.path, new_signer, self.log.device_id)

    def entries(self) -> list[Entry]:
        return self.log.entries()

    def head(self) -> Head | None:
        return self.log.head()

    def snapshot(self) -> bytes:
        """Complete lines only: the bytes to upload to :func:`bucket_key`."""
        return complete_bytes(self.path)
