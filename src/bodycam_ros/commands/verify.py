"""``bodycam verify PATH_OR_URL --trust DIR``: is this evidence whole, and who vouches for it?

PATH_OR_URL is an incident directory, a unit's evidence (or spool) directory, a ``file://``
bucket directory or ``s3://bucket/prefix``. For every incident: the SHA-256 and size of every
listed file, no unlisted file, each age file's structure against its entry (a file sealed
complete that scans as torn fails), and the manifest signature checked with the key the
agency's trust store registered for the device (a key found beside the evidence is never
trusted). For every device found: its signed ledger against the incidents present
(``core.history``: unregistered signers, mixed keys, a missing sequence without a signed
prune, a broken chain, an empty history without ``--allow-empty``), and its audit log when
one is there.

Exit 0 only when all of that holds with a trust store; 1 naming each incident and what is
wrong (also when no ``--trust`` was given: integrity alone proves no origin); 2 when PATH or
the trust store cannot be read. ``--key-dir`` on a unit's own evidence directory logs the run
as a ``verify_run`` entry in its audit log.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bodycam_ros.commands import add_s3_arguments

PROXY_NAME = 'proxy.mp4'       # the uploader's low-resolution copy: derived, never evidence


class VerifyUsage(Exception):
    """PATH, URL or trust store that cannot be read at all: exit 2."""


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared with ``bodycam decrypt``: where the evidence is and how to reach it."""
    p.add_argument('--allow-empty', action='store_true',
                   help='a device with no incidents and no ledger is fine (a new unit)')
    p.add_argument('--witness', action='append', default=[], metavar='[DEVICE=]SEQ:SHA256',
                   help='a ledger head recorded outside the unit (portal, Object-Lock copy) '
                        'the ledger must still hold; repeat per device')
    add_s3_arguments(p)
    p.add_argument('--key-dir', type=Path, default=None, metavar='DIR',
                   help="the unit's key dir: log this run in the unit's audit log (only for a "
                        "unit's own evidence directory)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('path', metavar='PATH_OR_URL',
                   help='an incident, a spool or evidence directory, file://DIR or '
                        's3://bucket/prefix')
    p.add_argument('--trust', type=Path, default=None, metavar='DIR',
                   help="the agency's directory: its signed device registry is the only "
                        'thing that says who may sign (without it: integrity only, exit 1)')
    add_source_arguments(p)
    p.add_argument('--json', action='store_true', help='print the full report as JSON')
    p.add_argument('--compact', action='store_true', help='with --json: one line')


# -- the checks ------------------------------------------------------------------------------
@dataclass
class DeviceResult:
    """One device's incidents (integrity) and history (ledger, audit)."""
    device_id: str
    integrity: Any                       # evidence.Report
    history: Any = None                  # history.HistoryReport, None without a trust store
    audit: Any = None                    # signedlog.LogReport or None
    notes: list[str] = field(default_factory=list)
    #: Incident ids -> where they are (a URL or path), for messages.
    where: dict[str, str] = field(default_factory=dict)
    #: Only this incident counts (a single incident was asked for).
    only: str | None = None

    def problems(self) -> list[str]:
        """Every failure as one line naming the incident."""
        out: list[str] = []
        for chk in self.integrity.incidents:
            if self.only is not None and chk.incident_id != self.only and \
                    chk.path.name != self.only:
                continue
            name = self.where.get(chk.path.name, chk.incident_id or chk.path.name)
            out += [f'{name}: {e}' for e in chk.errors]
        out += [f'{self.device_id}: chain: {e}' for e in self.integrity.chain_errors
                if self.only is None or self.only in e]
        if self.history is not None:
            for p in self.history.problems:
                if self.only is not None and p.incident_id not in (None, self.only):
                    continue
                who = p.incident_id or self.device_id
                out.append(f'{self.where.get(who, who)}: {p.code}: {p.message}')
        if self.audit is not None and self.only is None:
            out += [f'{self.device_id}: audit {p.code}: {p.message}'
                    for p in self.audit.problems]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {'device_id': self.device_id, 'ok': not self.problems(),
                'incidents': [c.as_dict() | {'where': self.where.get(c.path.name)}
                              for c in self.integrity.incidents
                              if self.only is None or c.path.name == self.only],
                'chain': {'ok': not self.integrity.chain_errors,
                          'errors': self.integrity.chain_errors},
                'history': self.history.as_dict() if self.history is not None else None,
                'audit': self.audit.as_dict() if self.audit is not None else None,
                'notes': self.notes, 'problems': self.problems()}


@dataclass
class Result:
    source: str
    kind: str                            # incident | evidence | bucket
    trusted: bool
    agency: str | None
    devices: list[DeviceResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: A unit's own evidence directory (where a run may be audited), else None.
    evidence_root: Path | None = None

    def problems(self) -> list[str]:
        out = [p for d in self.devices for p in d.problems()]
        if not self.trusted:
            out.append('no trust store: signatures were checked only against the keys the '
                       'manifests carry (integrity, not origin); pass --trust AGENCY_DIR')
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    @property
    def incidents(self) -> int:
        return sum(len([c for c in d.integrity.incidents
                        if d.only is None or c.path.name == d.only]) for d in self.devices)

    def as_dict(self) -> dict[str, Any]:
        return {'source': self.source, 'kind': self.kind, 'ok': self.ok,
                'trusted': self.trusted, 'agency': self.agency,
                'integrity_ok': all(not c.errors for d in self.devices
                                    for c in d.integrity.incidents) and
                all(not d.integrity.chain_errors for d in self.devices),
                'incidents': self.incidents, 'devices': [d.as_dict() for d in self.devices],
                'bad_files': sorted({str(f) for d in self.devices
                                     for f in d.integrity.bad_files}),
                'notes': self.notes, 'problems': self.problems()}


def parse_witnesses(values: list[str]) -> dict[str | None, Any]:
    from bodycam_ros.core.signedlog import Head
    out: dict[str | None, Any] = {}
    for v in values:
        m = re.fullmatch(r'(?:([^=]+)=)?(\d+):([0-9a-f]{64})', v.strip())
        if not m:
            raise VerifyUsage(f'--witness {v!r}: use [DEVICE=]SEQ:SHA256 (hex)')
        out[m.group(1)] = Head(int(m.group(2)), m.group(3))
    return out


def _witness_for(witnesses: dict[str | None, Any], device: str, devices: int) -> Any:
    if device in witnesses:
        return witnesses[device]
    if None in witnesses:
        if devices > 1:
            raise VerifyUsage('--witness without DEVICE= but the source holds '
                              f'{devices} devices; use DEVICE=SEQ:SHA256')
        return witnesses[None]
    return None


def load_trust_store(agency_dir: Path | None) -> Any:
    if agency_dir is None:
        return None
    from bodycam_ros.core import trust as tr
    try:
        return tr.TrustStore.load(agency_dir)
    except (tr.TrustError, OSError) as exc:
        raise VerifyUsage(f'--trust {agency_dir}: {exc}') from exc


def _registry(store: Any) -> Any:
    from bodycam_ros.commands.audit import _Registry
    return _Registry(store)


def _history(reader: Any, store: Any, allow_empty: bool, witness: Any) -> Any:
    from bodycam_ros.core.history import verify_history
    return verify_history(reader, _registry(store), allow_empty=allow_empty, witness=witness)


def _audit(data: bytes | None, store: Any, source: str) -> Any:
    if data is None or store is None:
        return None
    from bodycam_ros.core.audit import verify_audit_bytes
    return verify_audit_bytes(data, _registry(store), source=source, allow_empty=True)


def _manifest_device(d: Path) -> str | None:
    try:
        v = json.loads((d / 'manifest.json').read_bytes()).get('device_id')
    except (OSError, ValueError, AttributeError):
        return None
    return v if isinstance(v, str) else None


def _incident_dirs(parent: Path) -> list[Path]:
    from bodycam_ros.core import evidence as ev
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith('.')
                  and any((p / m).exists() for m in ev.INCIDENT_MARKS))


def verify_local(path: Path, store: Any, allow_empty: bool,
                 witnesses: dict[str | None, Any]) -> Result:
    """An incident directory, or a unit's evidence/spool directory."""
    from bodycam_ros.core import evidence as ev
    from bodycam_ros.core.history import HistoryError, SpoolReader
    path = path.resolve()
    single = (path / ev.MANIFEST).is_file() or (path / ev.SIGNATURE).is_file()
    root = path.parent.parent if single and path.parent.name == 'spool' else \
        (None if single else path)
    report = ev.verify_tree(path, trust=store) if store is not None else ev.verify_tree(path)
    res = Result(str(path), 'incident' if single else 'evidence', store is not None,
                 store.agency_fingerprint if store is not None else None)
    reader = None
    if root is not None:
        try:
            reader = SpoolReader(root)
        except HistoryError as exc:
            if not single:
                raise VerifyUsage(str(exc)) from exc
    device = None
    if reader is not None:
        from bodycam_ros.core.ledger import LEDGER_FILE
        if (reader.root / LEDGER_FILE).exists() or not single:
            res.evidence_root = reader.root
    ids = [c.path.name for c in report.incidents]
    device = next((d for d in map(_manifest_device, [c.path for c in report.incidents]) if d),
                  None)
    dev = DeviceResult(device or '(unknown device)', report,
                       only=path.name if single else None)
    res.devices.append(dev)
    if store is None:
        return res
    if res.evidence_root is None:
        res.notes.append(f'{path}: no ledger beside this incident: its signature and files '
                         'were checked, its place in the device history was not')
        return res
    assert reader is not None
    dev.history = _history(reader, store, allow_empty, _witness_for(witnesses, device or '', 1))
    if dev.history.device_id:
        dev.device_id = dev.history.device_id
    from bodycam_ros.core.audit import AUDIT_FILE
    audit_file = reader.root / AUDIT_FILE
    if not single:
        dev.audit = _audit(audit_file.read_bytes() if audit_file.exists() else None, store,
                           str(audit_file))
        if dev.audit is None:
            dev.notes.append(f'no {AUDIT_FILE} in {reader.root}')
    if not ids and not single:
        dev.notes.append('no incidents present')
    return res


@contextmanager
def _s3_client(url: Any, args: argparse.Namespace) -> Iterator[Any]:
    import boto3
    from botocore.config import Config

    from bodycam_ros.core.upload.backends import check_endpoint, read_credentials_file
    try:
        check_endpoint(args.endpoint_url, args.allow_insecure_http)
        key = secret = token = ''
        profile = args.profile
        if args.credentials_file:
            key, secret, token = read_credentials_file(args.credentials_file, profile)
            profile = ''
    except ValueError as exc:
        raise VerifyUsage(str(exc)) from exc
    session = boto3.session.Session(aws_access_key_id=key or None,
                                    aws_secret_access_key=secret or None,
                                    aws_session_token=token or None,
                                    region_name=args.region or None,
                                    profile_name=profile or None)
    cfg = Config(signature_version='s3v4',
                 s3={'addressing_style': 'path' if args.endpoint_url else 'auto'})
    client = session.client('s3', endpoint_url=args.endpoint_url or None, config=cfg)
    try:
        yield client
    finally:
        client.close()


class _Bucket:
    """Listing and reading a bucket (``file://`` directory or S3), and incidents made local:
    a file bucket's folders are checked where they are; S3 objects are fetched to a
    temporary directory first."""

    def __init__(self, url: str, args: argparse.Namespace, tmp: Path) -> None:
        from bodycam_ros.core import history as hi
        from bodycam_ros.core.upload.backends import parse_bucket_url
        try:
            self.url = parse_bucket_url(url)
        except ValueError as exc:
            raise VerifyUsage(str(exc)) from exc
        self._args, self._tmp, self.client = args, tmp, None
        if self.url.scheme == 'file':
            assert self.url.path is not None
            self.root = self.url.path.resolve()
            if not self.root.is_dir():
                raise VerifyUsage(f'bucket directory {self.root} does not exist')
            self.prefix = ''
            self.list_keys = hi.file_lister(self.root)
        else:
            self.prefix = self.url.prefix

    def open(self, stack: Any) -> None:
        from bodycam_ros.core import history as hi
        if self.url.scheme == 's3':
            self.client = stack.enter_context(_s3_client(self.url, self._args))
            self.list_keys = hi.s3_lister(self.client, self.url.bucket)

    def reader(self, device: str) -> Any:
        from bodycam_ros.core import history as hi
        if self.client is None:
            return hi.file_bucket_reader(self.root, device)
        return hi.s3_bucket_reader(self.client, self.url.bucket, device, self.prefix)

    def base(self, device: str) -> str:
        return '/'.join(p for p in (self.prefix.strip('/'), device) if p)

    def get(self, key: str) -> bytes | None:
        if self.client is None:
            try:
                return (self.root / key).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        try:
            return self.client.get_object(Bucket=self.url.bucket, Key=key)['Body'].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def incidents(self, device: str) -> dict[str, tuple[Path, str]]:
        """incident folder name -> (local directory, its URL), for one device."""
        base = self.base(device) + '/'
        groups: dict[str, dict[str, str]] = {}
        for key in self.list_keys(base):
            parts = key[len(base):].split('/')
            if len(parts) == 3 and parts[2]:
                groups.setdefault(f'{parts[0]}/{parts[1]}', {})[parts[2]] = key
        out: dict[str, tuple[Path, str]] = {}
        from bodycam_ros.core import evidence as ev
        for rel, files in sorted(groups.items()):
            if not any(m in files for m in ev.INCIDENT_MARKS):
                continue
            name = rel.split('/')[1]
            url = f'{self.url}/{base}{rel}'
            if self.client is None:
                out[name] = (self.root / base / rel, url)
                continue
            local = self._tmp / device / name
            local.mkdir(parents=True, exist_ok=True, mode=0o700)
            for fname, key in files.items():
                data = self.get(key)
                if data is not None:
                    (local / fname).write_bytes(data)
            out[name] = (local, url)
        return out


def verify_bucket(url: str, args: argparse.Namespace, store: Any, tmp: Path,
                  only: str | None = None, only_device: str | None = None) -> Result:
    """Every device under a bucket URL (or one incident of one device)."""
    from contextlib import ExitStack

    from bodycam_ros.core import evidence as ev
    from bodycam_ros.core import history as hi
    from bodycam_ros.core.audit import AUDIT_FILE
    witnesses = parse_witnesses(args.witness)
    b = _Bucket(url, args, tmp)
    res = Result(url, 'bucket', store is not None,
                 store.agency_fingerprint if store is not None else None)
    with ExitStack() as stack:
        b.open(stack)
        devices = [only_device] if only_device else hi.bucket_devices(b.list_keys, b.prefix)
        if not devices and not args.allow_empty:
            res.notes.append(f'{url}: empty bucket')
        for device in devices:
            found = b.incidents(device)
            if only is not None:
                found = {k: v for k, v in found.items() if k == only}
                if not found:
                    raise VerifyUsage(f'{url}: no incident {only} of device {device}')
            dirs = [d for d, _ in found.values()]
            report = ev.verify_dirs(dirs, Path(b.base(device)), trust=store)
            dev = DeviceResult(device, report, where={n: u for n, (_, u) in found.items()},
                               only=only)
            res.devices.append(dev)
            for d in dirs:
                owner = _manifest_device(d)
                if owner is not None and owner != device:
                    dev.integrity.chain_errors.append(
                        f'{d.name}: manifest says device {owner!r} but it is filed under '
                        f'{device!r}')
            if store is None:
                continue
            dev.history = _history(b.reader(device), store, args.allow_empty,
                                   _witness_for(witnesses, device, len(devices)))
            if only is None:
                key = '/'.join(p for p in (b.base(device), AUDIT_FILE) if p)
                dev.audit = _audit(b.get(key), store, f'{b.url}/{key}')
                if dev.audit is None:
                    dev.notes.append(f'no {AUDIT_FILE} in the bucket for {device}')
            for _, (d, u) in found.items():
                extra = d / PROXY_NAME
                if extra.exists():
                    # The uploader's proxy: unsigned, derived; named, never evidence.
                    chk = next(c for c in report.incidents if c.path == d)
                    why = f'{PROXY_NAME}: not listed in the manifest'
                    if why in chk.errors:
                        chk.errors.remove(why)
                        chk.bad_files.remove(extra)
                        dev.notes.append(f'{u}/{PROXY_NAME}: the uploader\'s proxy, not '
                                         'evidence: not checked')
    return res


def verify_source(target: str, args: argparse.Namespace, store: Any, tmp: Path) -> Result:
    if target.startswith(('file://', 's3://')):
        return verify_bucket(target, args, store, tmp)
    path = Path(target)
    if not path.exists():
        raise VerifyUsage(f'{path} does not exist')
    if not path.is_dir():
        raise VerifyUsage(f'{path} is not a directory (give an incident, a spool or an '
                          'evidence directory, or a file:// or s3:// URL)')
    from bodycam_ros.core import evidence as ev
    from bodycam_ros.core.history import HistoryError
    try:
        return verify_local(path, store, args.allow_empty, parse_witnesses(args.witness))
    except (ev.EvidenceError, HistoryError, OSError) as exc:
        raise VerifyUsage(str(exc)) from exc


# -- the audit trail -------------------------------------------------------------------------
def audit_run(action: str, res: Result, key_dir: Path | None, now: float,
              **details: Any) -> str:
    """Log a verify/decrypt run in the unit's audit log when this is a unit's own evidence
    directory and its key is at hand; returns what was done (for the output)."""
    if key_dir is None:
        return 'not audited (no --key-dir): ' + _summary(res)
    if res.evidence_root is None:
        return f'not audited: {res.source} is not a unit evidence directory'
    from bodycam_ros.core import keys
    from bodycam_ros.core.audit import AuditLog, audit_path
    try:
        signer = keys.open_signer(key_dir)
        device = str(keys.read_device_info(key_dir).get('device_id') or '')
    except keys.KeyStoreError as exc:
        raise VerifyUsage(f'--key-dir {key_dir}: {exc}') from exc
    entry = AuditLog(audit_path(res.evidence_root), signer, device).append(
        action, now, target=res.source, ok=res.ok, trusted=res.trusted,
        agency_fingerprint=res.agency, incidents=res.incidents, **details)
    return f'audited as {action} entry {entry.seq} in {audit_path(res.evidence_root)}'


def _summary(res: Result) -> str:
    return (f'checked {res.incidents} incident(s) of {len(res.devices)} device(s) in '
            f'{res.source}: files (SHA-256, size, age structure), manifest signatures' +
            (' against the trust store, ledger and audit chains' if res.trusted else
             ' (integrity only)'))


def _replays(incidents: list) -> list[str]:
    """A line for every incident whose signed manifest says it was made from a replay."""
    out = []
    for c in incidents:
        try:
            replay = json.loads((c.path / 'manifest.json').read_text()).get('replay')
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(replay, dict):
            out.append(f'REPLAY {c.incident_id or c.path.name}: made by replaying '
                       f'{replay.get("bag")} (sha256 {replay.get("sha256")}); NOT field '
                       'evidence')
    return out


def print_result(res: Result, as_json: bool, compact: bool) -> None:
    if as_json:
        print(json.dumps(res.as_dict(), indent=None if compact else 2))
    else:
        for d in res.devices:
            n = len([c for c in d.integrity.incidents if d.only in (None, c.path.name)])
            state = 'ok' if not d.problems() else f'{len(d.problems())} problem(s)'
            head = d.history.ledger.head if d.history is not None else None
            print(f'{d.device_id}: {n} incident(s), ledger head '
                  f'{f"{head.seq}:{head.sha256}" if head else "-"}: {state}')
            for note in d.notes:
                print(f'  note: {note}')
            for line in _replays(d.integrity.incidents):
                print(f'  {line}')
        for note in res.notes:
            print(f'note: {note}')
        print(_summary(res))
        print(('OK' if res.ok else 'FAILED') +
              ('' if res.trusted else ' (untrusted: no --trust)'))
    for f in res.as_dict()['bad_files']:
        print(f'BAD {f}', file=sys.stderr)
    for p in res.problems():
        print(f'BAD {p}', file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    try:
        store = load_trust_store(args.trust)
        with tempfile.TemporaryDirectory(prefix='bodycam-verify-') as tmp:
            res = verify_source(args.path, args, store, Path(tmp))
            shutil.rmtree(tmp, ignore_errors=True)
        said = audit_run('verify_run', res, args.key_dir, time.time())
    except VerifyUsage as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print_result(res, args.json, args.compact)
    print(said, file=sys.stderr)
    if not res.trusted:
        print('error: a trust store is needed to say who signed this evidence: pass --trust '
              'AGENCY_DIR (never "ok" on integrity alone)', file=sys.stderr)
    return 0 if res.ok else 1
