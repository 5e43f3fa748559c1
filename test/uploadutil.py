"""Small helpers for the uploader's robustness tests: re-sign a damaged manifest.

A manifest with odd fields but a valid signature is what a buggy recorder (or a holder of
the device key) would leave; the uploader must quarantine it by reason, not crash.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spoolutil import _signing_key


def sign_body(inc: Path, body: bytes) -> None:
    """Write ``body`` as the manifest, signed with the fixtures' device key."""
    (inc / 'manifest.json').write_bytes(body)
    (inc / 'manifest.sig').write_bytes(_signing_key().sign(body))


def resign(inc: Path, **fields: Any) -> None:
    """Change manifest fields and sign the result (non-finite floats written as JSON allows
    Python to, e.g. ``NaN``: a recorder bug, still signed)."""
    manifest = json.loads((inc / 'manifest.json').read_bytes())
    manifest.update(fields)
    body = (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True) + '\n').encode()
    sign_body(inc, body)
