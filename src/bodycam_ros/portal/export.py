"""Export for court: one zip that a third party can check without the portal.

Layout::

    README.txt                      how to check everything, step by step
    evidence/<device>/<day>/<incident>/   the bucket copy as stored: manifest.json,
                                    manifest.sig, the (encrypted) evidence files
    evidence/<device>/ledger.jsonl  the device's signed ledger (and audit.jsonl)
    trust/devices.json, trust/signing_ed25519.pub, trust/agency.json
                                    the agency's public trust store (no private key)
    decrypted/video.mp4, decrypted/sensors.mcap   the plaintext, hashes as signed
    verify.json                     the portal's verification, in words and codes
    custody.json                    chain of custody: portal audit, ledger, unit audit
"""
from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any

README = """Incident {iid} exported by {user} from the bodycam_ros agency portal at {when}.

What is here
  evidence/   the incident exactly as it is stored in the agency's bucket, with the unit's
              signed ledger: manifest.json (SHA-256 of every file, ciphertext and
              plaintext), manifest.sig (Ed25519, by the unit's registered key)
  trust/      the agency's public trust store: which device keys may sign (no secret)
  decrypted/  the plaintext video and sensor log, decrypted with the agency key
  verify.json the portal's verification; custody.json who saw and handled it, when

How to check it (bodycam_ros installed: pip install bodycam_ros, or from source)
  1. The signature, the registered device, every stored file and the device's history:
       bodycam verify evidence/{prefix} --trust trust
       bodycam verify file://$PWD/evidence --trust trust
  2. The decrypted files are the signed plaintext (compare with manifest.json,
     files.<name>.age.plaintext.sha256):
       sha256sum decrypted/*
  3. The unit's audit log, if present:
       bodycam audit verify evidence/{device}/audit.jsonl --trust trust
  4. Play the video: any player (fragmented MP4, H.264), e.g. ffprobe decrypted/video.mp4

Hashes of the decrypted files
{hashes}
"""


def build_export(portal: Any, row: dict[str, Any], user: str) -> Path:
    """Write the zip into the portal's export directory and return its path."""
    from bodycam_ros.core import trust as tr
    from bodycam_ros.core.evidence import sha256_file
    iid, m = row['incident_id'], row['manifest']
    prefix = row['key_prefix']
    device = row['device_id']
    plain: dict[str, Path] = {}
    for name in ('video.mp4', 'sensors.mcap'):
        files = m.get('files') or {}
        if name in files or f'{name}.age' in files:
            plain[name] = portal.cache.plaintext(iid, prefix, m, row['manifest_sha256'], name)
    now = portal.now()
    out = portal.exports / f'{iid}-{int(now * 1000)}.zip'
    hashes = '\n'.join(f'  {sha256_file(p)[0]}  decrypted/{n}' for n, p in plain.items())
    readme = README.format(iid=iid, user=user, prefix=prefix, device=device, hashes=hashes,
                           when=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now)))
    tmp = out.with_suffix('.part')
    with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED) as z:
        z.writestr('README.txt', readme)
        for o in portal.bucket.list(prefix + '/'):
            data = portal.bucket.get(o.key)
            if data is not None:
                z.writestr(f'evidence/{o.key}', data, compress_type=zipfile.ZIP_STORED)
        for name in ('ledger.jsonl', 'audit.jsonl'):
            data = portal.bucket.get(f'{device}/{name}')
            if data is not None:
                z.writestr(f'evidence/{device}/{name}', data)
        agency = Path(portal.cfg.agency_dir)
        for name in (tr.REGISTRY, tr.SIGNING_PUB, tr.AGENCY_INFO, tr.ENCRYPTION_PUB):
            if (agency / name).is_file():
                z.write(agency / name, f'trust/{name}')
        for name, path in plain.items():
            z.write(path, f'decrypted/{name}', compress_type=zipfile.ZIP_STORED)
        dev = portal.db.one('SELECT report FROM devices WHERE device_id = ?', (device,))
        z.writestr('verify.json', json.dumps({
            'incident_id': iid, 'verified': row['verified'],
            'verify_problems': row['verify_problems'],
            'verification': row['verification'],
            'device_history': json.loads(dev[0]) if dev else None,
            'manifest_sha256': row['manifest_sha256']}, indent=2))
        z.writestr('custody.json', json.dumps(portal.custody(row), indent=2))
    tmp.replace(out)
    return out
