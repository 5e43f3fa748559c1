"""``bodycam decrypt INCIDENT --agency DIR --out OUT``: the agency reads one incident.

INCIDENT is an incident directory (in a unit's spool or a copy) or its URL in a bucket
(``file://BUCKET/<device>/<date>/<incident>``, ``s3://bucket[/prefix]/<device>/<date>/<id>``).
It is verified first exactly as ``bodycam verify --trust DIR`` would (nothing is decrypted
from evidence the trust store does not vouch for); then every ``.age`` file is decrypted with
the agency's X25519 identity into OUT under its plaintext name and checked against the
plaintext SHA-256 and size the signed manifest names.

A crash-recovered incident (plaintext unknown, ``complete: false``) yields every
authenticated chunk; the video is repaired to its last whole fragment (``video.mp4``, the
decrypted original kept as ``video.original.mp4``) and the sensor journal becomes
``sensors.mcap``. ``decrypt-report.json`` says what was recovered. The agency's key
passphrase comes from ``--passphrase-file``, ``$BODYCAM_AGENCY_PASSPHRASE_FILE`` or
``$BODYCAM_AGENCY_PASSPHRASE``. Exit 0 when every file decrypted and matched, 1 naming each
file that did not (or the verification problems), 2 for unreadable inputs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bodycam_ros.commands.verify import (Result, VerifyUsage, add_source_arguments,
                                         audit_run, load_trust_store, parse_witnesses,
                                         verify_bucket, verify_local)

REPORT = 'decrypt-report.json'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('incident', metavar='INCIDENT_DIR_OR_URL',
                   help='an incident directory or file://BUCKET/<device>/<date>/<incident> '
                        'or s3://bucket[/prefix]/<device>/<date>/<incident>')
    p.add_argument('--agency', type=Path, required=True, metavar='DIR',
                   help="the agency's directory: trust store and encryption key")
    p.add_argument('--out', type=Path, required=True, metavar='OUT',
                   help='directory for the plaintext files (created; must be empty)')
    p.add_argument('--passphrase-file', type=Path, default=None, metavar='FILE',
                   help="file holding the agency key passphrase (0600)")
    add_source_arguments(p)


def _split_url(url: str) -> tuple[str, str, str]:
    """(bucket URL, device, incident) of an incident URL ``.../<device>/<date>/<incident>``."""
    head, _, rest = url.partition('://')
    parts = [x for x in rest.rstrip('/').split('/')]
    if head == 'file':
        if len(parts) < 4:
            raise VerifyUsage(f'{url}: expected file://BUCKET/<device>/<date>/<incident>')
        return f'file://{"/".join(parts[:-3])}', parts[-3], parts[-1]
    if len(parts) < 4:
        raise VerifyUsage(f'{url}: expected s3://bucket[/prefix]/<device>/<date>/<incident>')
    return f's3://{"/".join(parts[:-3])}', parts[-3], parts[-1]


def verified_incident(target: str, args: argparse.Namespace, store: Any,
                      tmp: Path) -> tuple[Result, Path]:
    """Verify the one incident; return the result and its local directory."""
    if target.startswith(('file://', 's3://')):
        bucket, device, incident = _split_url(target)
        res = verify_bucket(bucket, args, store, tmp, only=incident, only_device=device)
        chk = next(c for c in res.devices[0].integrity.incidents if c.path.name == incident)
        return res, chk.path
    path = Path(target)
    if not path.is_dir():
        raise VerifyUsage(f'{path} is not an incident directory')
    from bodycam_ros.core import evidence as ev
    if not (path / ev.MANIFEST).is_file():
        raise VerifyUsage(f'{path}: no {ev.MANIFEST}: not an incident directory')
    return verify_local(path, store, args.allow_empty, parse_witnesses(args.witness)), \
        path.resolve()


def _decrypt_one(src: Path, identity: Any, dst: Path) -> Any:
    from bodycam_ros.core.encryption import decrypt
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'wb') as f:
        res = decrypt(src, identity, f)
        f.flush()
        os.fsync(f.fileno())
    return res


def decrypt_incident(incident: Path, identity: Any, out: Path) -> dict[str, Any]:
    """Decrypt and check every file; repair a crash-left incident. Returns the report."""
    from bodycam_ros.core import evidence as ev
    from bodycam_ros.core.encryption import AgeError
    manifest = json.loads((incident / ev.MANIFEST).read_bytes())
    files: dict[str, Any] = {}
    failed: list[str] = []
    produced: dict[str, str] = {}           # plaintext name -> file in OUT
    for name, entry in sorted(manifest.get('files', {}).items()):
        src = incident / name
        rec: dict[str, Any] = {'source': name, 'complete_in_manifest': entry.get('complete')}
        files[name] = rec
        if not name.endswith(ev.AGE_SUFFIX):            # a plaintext incident's file
            digest, size = ev.sha256_file(src)
            ok = (digest, size) == (entry.get('sha256'), entry.get('size'))
            shutil.copyfile(src, out / name)
            os.chmod(out / name, 0o600)
            rec |= {'output': name, 'sha256': digest, 'size': size, 'matches_manifest': ok}
            produced[name] = name
            if not ok:
                failed.append(f'{name}: SHA-256/size differ from the signed manifest')
            continue
        plain = entry.get('plaintext')
        pname = plain['name'] if isinstance(plain, dict) else name[:-len(ev.AGE_SUFFIX)]
        if '/' in pname or pname.startswith('.') or pname in (REPORT, ev.MANIFEST):
            failed.append(f'{name}: unsafe plaintext name {pname!r}')
            continue
        target = pname if plain is not None else f'.{pname}.partial'
        try:
            res = _decrypt_one(src, identity, out / target)
        except (AgeError, OSError) as exc:
            rec['error'] = str(exc)
            failed.append(f'{name}: {exc}')
            (out / target).unlink(missing_ok=True)
            continue
        rec |= {'output': target, 'complete': res.complete, 'chunks': res.chunks,
                'torn_bytes': res.torn_bytes, 'plaintext_bytes': res.plaintext_bytes,
                'plaintext_sha256': res.plaintext_sha256,
                'ciphertext_matches': res.ciphertext_sha256 == entry.get('sha256')}
        if not rec['ciphertext_matches']:
            failed.append(f'{name}: the ciphertext read is not the one the manifest signed')
        if plain is not None:
            ok = res.complete and (res.plaintext_sha256, res.plaintext_bytes) == \
                (plain.get('sha256'), plain.get('size'))
            rec['matches_manifest'] = ok
            if not ok:
                failed.append(f'{name}: plaintext ' + ('is truncated' if not res.complete else
                                                       'SHA-256/size differ from the manifest'))
                (out / target).unlink(missing_ok=True)
                rec['output'] = None
            else:
                produced[pname] = target
        else:
            rec['matches_manifest'] = None        # unknown to the unit: signed as found
            if res.chunks < int(entry.get('chunks') or 0):
                failed.append(f'{name}: {res.chunks} chunks authenticated, the manifest '
                              f'counted {entry.get("chunks")}')
            produced[pname] = target
    recovered = _recover(out, produced, files)
    report = {'format': 'bodycam-decrypt/1', 'incident_id': manifest.get('incident_id'),
              'device_id': manifest.get('device_id'), 'sequence': manifest.get('sequence'),
              'manifest_sha256': ev.sha256_bytes((incident / ev.MANIFEST).read_bytes()),
              'recovered_incident': bool(manifest.get('recovered')),
              'files': files, 'recovered': recovered, 'failed': failed,
              'outputs': sorted(p.name for p in out.iterdir() if p.name != REPORT)}
    return report


def _recover(out: Path, produced: dict[str, str], files: dict[str, Any]) -> dict[str, Any]:
    """Turn crash-left plaintext (``.<name>.partial``) into files a player and a bag reader
    open: the repaired video, the journal as MCAP."""
    from bodycam_ros.core import mp4
    from bodycam_ros.core.sidecar import SidecarError, read_journal, write_mcap
    done: dict[str, Any] = {}
    video = produced.get('video.mp4')
    if video is not None and video.endswith('.partial'):
        original = out / 'video.original.mp4'
        os.replace(out / video, original)
        produced['video.mp4'] = original.name
        try:
            rep = mp4.repair(original, out / 'video.mp4')
            done['video'] = {'output': 'video.mp4' if rep.playable else None,
                             'original': original.name, 'playable': rep.playable,
                             'fragments': rep.fragments, 'bytes_kept': rep.size_after,
                             'bytes_dropped': rep.dropped_bytes}
        except (mp4.Mp4Error, OSError) as exc:
            done['video'] = {'output': None, 'original': original.name, 'error': str(exc)}
    journal = produced.get('sensors.journal')
    mcap = produced.get('sensors.mcap')
    if mcap is not None and mcap.endswith('.partial'):
        # A torn MCAP has no summary; the journal (when there) holds every synced record.
        os.replace(out / mcap, out / 'sensors.partial.mcap')
        produced['sensors.mcap'] = 'sensors.partial.mcap'
        done['sensors_mcap_partial'] = 'sensors.partial.mcap'
    if journal is not None:
        jpath = out / 'sensors.journal'
        if journal != jpath.name:
            os.replace(out / journal, jpath)
            produced['sensors.journal'] = jpath.name
        try:
            jr = read_journal(jpath)
            info: dict[str, Any] = {'journal': jpath.name, 'records': len(jr.records),
                                    'torn_bytes': jr.torn_bytes}
            if mcap is None or mcap.endswith('.partial'):
                bag = write_mcap(jr.records, out / 'sensors.mcap')
                os.chmod(out / 'sensors.mcap', 0o600)
                info |= {'output': 'sensors.mcap', 'messages': bag.messages}
            done['sensors'] = info
        except (SidecarError, OSError) as exc:
            done['sensors'] = {'journal': jpath.name, 'output': None, 'error': str(exc)}
    for rec in files.values():
        if str(rec.get('output') or '').endswith('.partial'):
            rec['output'] = produced.get(rec['output'][1:-len('.partial')],
                                         rec['output'][1:-len('.partial')])
    for p in out.iterdir():
        if p.name.endswith('.partial'):
            os.replace(p, out / p.name[1:-len('.partial')])
    return done


def main(args: argparse.Namespace) -> int:
    from bodycam_ros.core import trust as tr
    out: Path = args.out
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise VerifyUsage(f'--out {out} exists and is not an empty directory')
        store = load_trust_store(args.agency)
        try:
            identity = tr.load_encryption_private(
                args.agency, tr.agency_passphrase(args.passphrase_file))
        except tr.TrustError as exc:
            raise VerifyUsage(f'--agency {args.agency}: {exc}') from exc
        with tempfile.TemporaryDirectory(prefix='bodycam-decrypt-') as tmp:
            res, incident = verified_incident(args.incident, args, store, Path(tmp))
            for p in res.problems():
                print(f'BAD {p}', file=sys.stderr)
            if not res.ok:
                said = audit_run('decrypt_run', res, args.key_dir, time.time(), decrypted=0)
                print(said, file=sys.stderr)
                print(f'error: {args.incident} does not verify against the trust store of '
                      f'{args.agency}: nothing decrypted', file=sys.stderr)
                return 1
            out.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(out, 0o700)
            report = decrypt_incident(incident, identity, out)
        report['verified'] = {'trusted': res.trusted, 'agency': res.agency,
                              'source': args.incident, 'notes': res.notes}
        data = (json.dumps(report, indent=2, sort_keys=True) + '\n').encode()
        from bodycam_ros.core.fsio import write_atomic
        write_atomic(out / REPORT, data, mode=0o600)
        said = audit_run('decrypt_run', res, args.key_dir, time.time(),
                         decrypted=len(report['outputs']), failed=len(report['failed']),
                         incident_id=str(report['incident_id']))
    except VerifyUsage as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    for name in report['outputs']:
        print(f'{out / name}')
    for what, info in report['recovered'].items():
        print(f'recovered {what}: {json.dumps(info, sort_keys=True)}')
    print(said, file=sys.stderr)
    for f in report['failed']:
        print(f'FAILED {f}', file=sys.stderr)
    return 1 if report['failed'] else 0
