"""Helpers for the uploader's trust tests (no tests here): the fixtures' device key as a
``core.keys`` signer, and ``spoolutil.make_incident`` incidents given what the recorder gives
each incident it seals: a chain ``sequence`` in the signed manifest and a ``sealed`` entry in
the signed ledger. Pruning needs both (the ``pruned`` entry proves a gap of a sealed
sequence), so every pruning test seals its incidents with :func:`seal_in_ledger`.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from bodycam_ros.core import keys
from bodycam_ros.core.ledger import Ledger, ledger_path
from spoolutil import DEVICE, _signing_key
from uploadutil import resign


def device_signer() -> keys.FileSigner:
    """The key ``spoolutil`` signs manifests with, as the uploader's ledger signer."""
    from cryptography.hazmat.primitives import serialization as ser
    private = _signing_key()
    raw = private.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return keys.FileSigner(private, raw)


def seal_in_ledger(ev: Path, *incidents: Path, device_id: str = DEVICE) -> Ledger:
    """Number the incidents after whatever the ledger sealed already (re-signing their
    manifests) and log each seal, as the recorder does when it seals."""
    ledger = Ledger(ledger_path(ev), device_signer(), device_id)
    seq = max((e.data['sequence'] for e in ledger.entries() if e.event == 'sealed'), default=0)
    for inc in incidents:
        seq += 1
        resign(inc, sequence=seq)
        sha = hashlib.sha256((inc / 'manifest.json').read_bytes()).hexdigest()
        ledger.sealed(inc.name, seq, sha, time.time())
    return ledger


def evidence_objects(objects: dict[str, bytes]) -> dict[str, bytes]:
    """Bucket objects without the device's ledger and audit copies."""
    return {k: v for k, v in objects.items()
            if not k.endswith(('/ledger.jsonl', '/audit.jsonl'))}
