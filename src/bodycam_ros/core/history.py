"""Is a device's history complete? The ledger against the incidents actually present.

:func:`verify_history` reads a device's ledger and its incidents' manifests through a small
:class:`HistoryReader` (a local evidence directory, or a bucket listing: ``file://`` or
``s3://``) and fails, naming the incident and sequence, when a signer is not in the trust store,
keys are mixed in one chain, a sequence is missing without a signed prune made after the
incident verified in the bucket, a chain link (ledger entry or manifest) is broken, an incident
is present that the ledger does not know or the ledger knows one that is gone (in a bucket,
every incident the ledger records as uploaded or pruned; one sealed but not yet recorded as
uploaded is a ``not_uploaded_yet`` warning), or the history is empty.

Only the trust store says who may sign. The ledger entry that seals an incident fixes its
manifest's SHA-256 and the key that must have signed it; the key a manifest carries, or one
found in ``keys/`` beside the evidence, is never trusted by itself. File contents against the
manifest are ``evidence.check_incident``'s job; this module checks which manifests exist.

What nobody holding only the unit and the bucket can catch: the newest incidents *and* their
ledger entries deleted from both. ``witness`` (a ledger head recorded elsewhere: the agency
portal, an Object-Lock version of the ledger) closes that gap.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bodycam_ros.core import ledger as lg
from bodycam_ros.core.signedlog import (GENESIS, Entry, Head, LogReport, Problem, TrustStore,
                                        check_witness, fingerprint, sha256_hex, signature_ok,
                                        verify_log)

MANIFEST = 'manifest.json'
SIGNATURE = 'manifest.sig'
#: A directory holding any of these is an incident (a missing manifest is then a problem).
_MARKS = (MANIFEST, SIGNATURE, 'video.mp4', 'sensors.mcap')

__all__ = ['HistoryError', 'HistoryReader', 'HistoryReport', 'ObjectReader', 'SpoolReader',
           'bucket_devices', 'file_bucket_reader', 'file_lister', 's3_bucket_reader',
           's3_lister', 'verify_history']


class HistoryError(RuntimeError):
    """A history source that cannot be read at all (the message names it)."""


class HistoryReader(Protocol):
    """Where one device's history is read from."""
    #: Shown in messages: a path or URL.
    source: str
    #: True for a bucket: every incident the ledger records as uploaded (or pruned) must be
    #: there; False for a unit: every sealed incident unless validly pruned.
    complete: bool

    def ledger(self) -> bytes | None: ...        # the raw ledger file, None if absent
    def incident_ids(self) -> list[str]: ...     # incidents present
    def read(self, incident_id: str, name: str) -> bytes | None: ...   # None if absent


class SpoolReader:
    """A unit's evidence directory (``ledger.jsonl`` + ``spool/<id>/``), or its spool dir."""
    complete = False

    def __init__(self, path: Path) -> None:
        path = Path(path).resolve()
        if (path / 'spool').is_dir() or (path / lg.LEDGER_FILE).exists():
            self.root, self.spool = path, path / 'spool'
        elif path.name == 'spool':
            self.root, self.spool = path.parent, path
        else:
            raise HistoryError(f'{path}: not an evidence directory (no spool/ or '
                               f'{lg.LEDGER_FILE})')
        self.source = str(self.root)

    def ledger(self) -> bytes | None:
        try:
            return (self.root / lg.LEDGER_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def incident_ids(self) -> list[str]:
        if not self.spool.is_dir():
            return []
        return sorted(p.name for p in self.spool.iterdir()
                      if p.is_dir() and not p.name.startswith('.')
                      and any((p / m).exists() for m in _MARKS))

    def read(self, incident_id: str, name: str) -> bytes | None:
        try:
            return (self.spool / incident_id / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None


class ObjectReader:
    """One device in a bucket laid out ``[<prefix>/]<device>/<yyyy-mm-dd>/<incident>/<file>``
    with the ledger at ``[<prefix>/]<device>/ledger.jsonl``.

    Args:
        list_keys: every object key starting with the given prefix.
        get: an object's bytes, None if it does not exist.
    """
    complete = True

    def __init__(self, list_keys: Callable[[str], Iterable[str]],
                 get: Callable[[str], bytes | None], device_id: str, prefix: str = '',
                 source: str = '') -> None:
        self._get = get
        self._base = '/'.join(p.strip('/') for p in (prefix, device_id) if p.strip('/'))
        self.ledger_key = lg.bucket_key(device_id, prefix)
        self.source = source or self._base
        self._objects: dict[str, dict[str, str]] = {}       # incident -> file -> key
        for key in list_keys(self._base + '/'):
            parts = key[len(self._base) + 1:].split('/')
            if len(parts) == 3 and parts[2]:
                self._objects.setdefault(parts[1], {})[parts[2]] = key

    def ledger(self) -> bytes | None:
        return self._get(self.ledger_key)

    def incident_ids(self) -> list[str]:
        return sorted(i for i, files in self._objects.items() if any(m in files for m in _MARKS))

    def read(self, incident_id: str, name: str) -> bytes | None:
        key = self._objects.get(incident_id, {}).get(name)
        return None if key is None else self._get(key)


def file_lister(root: Path) -> Callable[[str], list[str]]:
    def list_keys(prefix: str) -> list[str]:
        out = []
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith('.')]
            for name in files:
                if name.startswith('.') or name.endswith('.tmp'):
                    continue
                key = Path(dirpath, name).relative_to(root).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)
    return list_keys


def _file_get(root: Path) -> Callable[[str], bytes | None]:
    def get(key: str) -> bytes | None:
        try:
            return (root / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
    return get


def file_bucket_reader(root: Path, device_id: str, prefix: str = '') -> ObjectReader:
    """A ``file://`` bucket directory."""
    root = Path(root)
    if not root.is_dir():
        raise HistoryError(f'bucket directory {root} does not exist')
    return ObjectReader(file_lister(root), _file_get(root), device_id, prefix,
                        source=f'file://{root}')


def s3_bucket_reader(client: Any, bucket: str, device_id: str, prefix: str = '') -> ObjectReader:
    """An ``s3://bucket/prefix`` through a boto3 S3 client the caller made (credentials,
    endpoint and TLS are the caller's)."""
    def get(key: str) -> bytes | None:
        try:
            return client.get_object(Bucket=bucket, Key=key)['Body'].read()
        except client.exceptions.NoSuchKey:
            return None
    src = f's3://{bucket}' + (f'/{prefix.strip("/")}' if prefix.strip('/') else '')
    return ObjectReader(s3_lister(client, bucket), get, device_id, prefix, source=src)


def s3_lister(client: Any, bucket: str) -> Callable[[str], list[str]]:
    """Every key under a prefix of an S3 bucket (boto3 client, paginated)."""
    def list_keys(pfx: str) -> list[str]:
        out: list[str] = []
        for page in client.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=pfx):
            out.extend(o['Key'] for o in page.get('Contents', []))
        return out
    return list_keys


def bucket_devices(list_keys: Callable[[str], Iterable[str]], prefix: str = '') -> list[str]:
    """Every device with anything under ``prefix`` (a ledger or incidents): each must be
    verified, so a device whose ledger was deleted is not skipped. ``list_keys``:
    :func:`file_lister` or :func:`s3_lister`."""
    base = prefix.strip('/') + '/' if prefix.strip('/') else ''
    return sorted({k[len(base):].split('/', 1)[0] for k in list_keys(base)
                   if '/' in k[len(base):]})


@dataclass
class HistoryReport:
    """The outcome: ``ok`` only without problems; ``counts`` for the JSON report."""
    source: str
    ledger: LogReport
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def device_id(self) -> str | None:
        return self.ledger.device_id

    def add(self, code: str, message: str, **where: Any) -> None:
        self.problems.append(Problem(code, message, **where))

    def as_dict(self) -> dict[str, Any]:
        head = self.ledger.head
        return {'source': self.source, 'ok': self.ok, 'device_id': self.device_id,
                'ledger_head': head.as_dict() if head else None,
                'keys': [fingerprint(k) for k in self.ledger.keys], 'counts': self.counts,
                'problems': [p.as_dict() for p in self.problems],
                'warnings': [w.as_dict() for w in self.warnings]}


def verify_history(reader: HistoryReader, trust: TrustStore, *, allow_empty: bool = False,
                   witness: Head | None = None) -> HistoryReport:
    """Check one device's history; see the module docstring for what fails."""
    raw = reader.ledger()
    lrep = verify_log(raw or b'', lg.KIND, trust, f'{reader.source}/{lg.LEDGER_FILE}')
    rep = HistoryReport(reader.source, lrep, list(lrep.problems), list(lrep.warnings))
    if witness is not None:
        n = len(lrep.problems)
        check_witness(lrep, witness)
        rep.problems += lrep.problems[n:]
    present = reader.incident_ids()
    seals, uploaded, pruned = _walk([e for e in lrep.entries if e.line not in lrep.suspect],
                                    rep)
    rep.counts = {'ledger_entries': len(lrep.entries), 'sealed': len(seals),
                  'uploaded': len(uploaded), 'pruned': len(pruned), 'present': len(present),
                  'checked': 0}
    if raw is None and present:
        rep.add('no_ledger', f'{reader.source}: {len(present)} incidents but no '
                f'{lg.LEDGER_FILE}: nothing vouches that the history is complete')
    if not seals and not present and not allow_empty:
        rep.add('empty_history', f'{reader.source}: no incidents and no sealed entries '
                '(pass allow_empty for a unit that has recorded nothing yet)')
    by_id = {s.data['incident_id']: s for s in seals.values()}
    top = max(seals, default=0)
    for seq in range(1, top + 1):
        if seq not in seals:
            rep.add('sequence_missing', f'sequence {seq}: no seal in the ledger (an incident '
                    'was cut from the history)', sequence=seq)
    for seq, seal in sorted(seals.items()):
        iid = seal.data['incident_id']
        if iid in present:
            _check_present(reader, rep, seal, seals.get(seq - 1))
            rep.counts['checked'] += 1
        elif reader.complete and (seq in uploaded or seq in pruned):
            state = 'pruned from the unit but ' if seq in pruned else ''
            rep.add('missing_incident', f'{iid} (sequence {seq}) verified in the bucket '
                    f'(ledger) but is {state}not in {reader.source}',
                    incident_id=iid, sequence=seq, entry=seal.seq)
        elif reader.complete:
            rep.warnings.append(Problem(
                'not_uploaded_yet', f'{iid} (sequence {seq}) is sealed; this copy of the '
                'ledger does not record it verified in the bucket yet',
                incident_id=iid, sequence=seq, entry=seal.seq))
        elif seq not in pruned:
            rep.add('missing_incident', f'{iid} (sequence {seq}) is gone without a signed '
                    'prune record showing it had verified in the bucket',
                    incident_id=iid, sequence=seq, entry=seal.seq)
    for iid in present:
        if iid not in by_id:
            seq = _sequence_of(reader.read(iid, MANIFEST))
            rep.add('not_in_ledger', f'{iid}' + (f' (sequence {seq})' if seq else '') +
                    ' is present but the ledger never sealed it', incident_id=iid, sequence=seq)
    return rep


def _walk(entries: list[Entry],
          rep: HistoryReport) -> tuple[dict[int, Entry], set[int], set[int]]:
    """Seals by incident sequence, the sequences with valid upload and prune proofs.
    ``entries`` are only those signed by the chain's registered key: a forged prune or seal
    counts for nothing (its signer is already a problem)."""
    seals: dict[int, Entry] = {}
    ids: dict[str, int] = {}
    proven: dict[str, set[int]] = {lg.UPLOADED: set(), lg.PRUNED: set()}
    last = 0
    for e in entries:
        if e.event not in lg.SEALS and e.event not in proven:
            continue
        d = e.data
        iid, seq, sha = d.get('incident_id'), d.get('sequence'), d.get('manifest_sha256')
        if not isinstance(iid, str) or not isinstance(seq, int) or not isinstance(sha, str):
            rep.add('bad_entry', f'ledger entry {e.seq}: {e.event} without incident_id, '
                    'sequence and manifest_sha256', entry=e.seq, line=e.line)
            continue
        where = {'incident_id': iid, 'sequence': seq, 'entry': e.seq}
        if e.event in lg.SEALS:
            if seq in seals:
                rep.add('duplicate_sequence', f'sequence {seq} sealed twice (entries '
                        f'{seals[seq].seq} and {e.seq}: {seals[seq].data["incident_id"]}, {iid})',
                        **where)
                continue
            if iid in ids:
                rep.add('duplicate_incident', f'{iid} sealed twice (sequences {ids[iid]} and '
                        f'{seq})', **where)
                continue
            if seq < last:
                rep.add('sequence_order', f'{iid}: sequence {seq} sealed after {last}',
                        **where)
            seals[seq], ids[iid], last = e, seq, max(last, seq)
            continue
        seal = seals.get(seq)
        why = lg.proof_problem(d)
        if seal is None or seal.data['incident_id'] != iid or \
                seal.data['manifest_sha256'] != sha:
            why = 'it names no incident sealed before it'
        elif why is None and float(d['verified_at']) > e.wall_time:
            why = f'the upload verified after the {e.event} entry was logged'
        if why:
            rep.add('bad_prune' if e.event == lg.PRUNED else 'bad_upload',
                    f'{iid} (sequence {seq}): {e.event} entry {e.seq} is no proof: {why}',
                    **where)
        elif seq in proven[e.event]:
            rep.warnings.append(Problem(f'duplicate_{e.event}', f'{iid} {e.event} twice',
                                        **where))
        else:
            proven[e.event].add(seq)
    return seals, proven[lg.UPLOADED], proven[lg.PRUNED]


def _sequence_of(manifest: bytes | None) -> int | None:
    try:
        seq = json.loads(manifest or b'').get('sequence')
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def _check_present(reader: HistoryReader, rep: HistoryReport, seal: Entry,
                   prev: Entry | None) -> None:
    """The manifest present is the one sealed, signed by the ledger's (trusted) key, and
    chained to the previous seal."""
    iid, seq = seal.data['incident_id'], seal.data['sequence']
    where = {'incident_id': iid, 'sequence': seq}
    data, sig = reader.read(iid, MANIFEST), reader.read(iid, SIGNATURE)
    if data is None:
        rep.add('unreadable', f'{iid}: {MANIFEST} is missing', **where)
        return
    try:
        manifest = json.loads(data)
        if not isinstance(manifest, dict):
            raise ValueError('not an object')
    except ValueError as exc:
        rep.add('unreadable', f'{iid}: {MANIFEST} is not JSON ({exc})', **where)
        return
    if sha256_hex(data) != seal.data['manifest_sha256']:
        rep.add('manifest_mismatch', f'{iid} (sequence {seq}): {MANIFEST} is not the one the '
                f'ledger sealed at entry {seal.seq} (replaced or edited)', **where)
    if sig is None or not signature_ok(seal.key, sig, data):
        rep.add('bad_signature', f'{iid} (sequence {seq}): {SIGNATURE} ' +
                ('is missing' if sig is None else
                 f'does not verify with the ledger key {fingerprint(seal.key)}'), **where)
    try:
        named = base64.b64decode(str(manifest.get('device_public_key', '')), validate=True)
    except (binascii.Error, ValueError):
        named = b''
    if named != seal.key:
        rep.add('foreign_key', f'{iid}: the manifest names key '
                f'{fingerprint(named) if named else "(none)"}, the ledger is signed by '
                f'{fingerprint(seal.key)}', **where)
    if manifest.get('device_id') != seal.device_id:
        rep.add('device_mismatch', f'{iid}: manifest device {manifest.get("device_id")!r}, '
                f'ledger device {seal.device_id!r}', **where)
    if manifest.get('incident_id') != iid or manifest.get('sequence') != seq:
        rep.add('manifest_mismatch', f'{iid}: manifest says incident '
                f'{manifest.get("incident_id")!r} sequence {manifest.get("sequence")!r}',
                **where)
    want = GENESIS if seq == 1 else (prev.data['manifest_sha256'] if prev else None)
    if want is not None and manifest.get('prev_manifest_sha256') != want:
        rep.add('chain_broken', f'{iid} (sequence {seq}): prev_manifest_sha256 does not match '
                f'the manifest the ledger sealed as sequence {seq - 1}', **where)
    if bool(manifest.get('recovered')) != (seal.event == lg.RECOVERED):
        rep.warnings.append(Problem('recovered_flag', f'{iid}: manifest recovered='
                                    f'{manifest.get("recovered")!r}, ledger event '
                                    f'{seal.event!r}', **where))
