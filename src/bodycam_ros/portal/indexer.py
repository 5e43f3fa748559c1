"""The indexer: watches the bucket, verifies what arrives, remembers what it has seen.

Every ``poll_s`` it lists the bucket once. A device whose objects changed (a new incident, a
new ledger, an object rewritten in place) is checked again:

* its history with ``core.history.verify_history`` against the agency trust store, with the
  ledger head the portal recorded earlier as ``witness``: the outside witness of issue 10, so
  the newest incidents cut from unit *and* bucket together (ledger rewritten) are caught;
* each incident whose objects changed: the manifest's signature by the device's registered
  key (``core.trust``), its canonical form, and every file's size and SHA-256 against it;
* incidents the index holds that are gone from the bucket stay listed, ``verified: false``,
  with the reason: the portal's own record is the witness.

The head is recorded only from a ledger that verifies, so a cut can never become the new
normal.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bodycam_ros.core import evidence as ev
from bodycam_ros.core import ledger as lg
from bodycam_ros.core.history import ObjectReader, verify_history
from bodycam_ros.core.signedlog import Head
from bodycam_ros.portal.bucket import Bucket, Obj
from bodycam_ros.portal.db import Database

log = logging.getLogger('bodycam.portal.indexer')
PROXY = 'proxy.mp4'
_IGNORED = frozenset({ev.UPLOAD_MARK, PROXY})
_INCIDENT_COLUMNS = (
    'incident_id, device_id, officer_id, sequence, start_time, end_time, sort_time, '
    'key_prefix, triggers, reasons, manifest, manifest_sha256, listing, has_proxy, present, '
    'verified, problems, verification, indexed_at, checked_at')


class TrustView:
    """``core.trust.TrustStore`` through the ``core.signedlog.TrustStore`` protocol."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def device_for_key(self, public_key_raw: bytes) -> str | None:
        dev = self.store.by_public_key(bytes(public_key_raw))
        return dev.device_id if dev is not None and dev.active else None


def load_trust(agency_dir: Path) -> Any:
    from bodycam_ros.core import trust
    return trust.TrustStore.load(agency_dir)


def _digest(items: list[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps(sorted(items)).encode()).hexdigest()


@dataclass
class DeviceObjects:
    device_id: str
    files: dict[str, Obj] = field(default_factory=dict)                   # ledger, audit
    incidents: dict[str, dict[str, Obj]] = field(default_factory=dict)    # id -> name -> obj
    prefixes: dict[str, str] = field(default_factory=dict)                # id -> key prefix

    def listing(self) -> str:
        return _digest([(o.key, o.tag) for o in self.files.values()] +
                       [(o.key, o.tag) for f in self.incidents.values() for o in f.values()])


def group(objs: list[Obj]) -> dict[str, DeviceObjects]:
    out: dict[str, DeviceObjects] = {}
    for o in objs:
        parts = o.key.split('/')
        if len(parts) == 2:
            out.setdefault(parts[0], DeviceObjects(parts[0])).files[parts[1]] = o
        elif len(parts) == 4 and all(parts):
            dev = out.setdefault(parts[0], DeviceObjects(parts[0]))
            dev.incidents.setdefault(parts[2], {})[parts[3]] = o
            dev.prefixes[parts[2]] = '/'.join(parts[:3])
    return out


@dataclass
class Check:
    """One verification aspect in words."""
    ok: bool
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {'ok': self.ok, 'text': self.text}


class Indexer:
    """Polls the bucket in a thread (:meth:`start`) or once (:meth:`poll`)."""

    def __init__(self, db: Database, bucket: Bucket, agency_dir: Path,
                 poll_s: float = 1.0) -> None:
        self.db, self.bucket, self.agency_dir, self.poll_s = db, bucket, agency_dir, poll_s
        self._trust: Any = None
        self._trust_tag: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0
        self.last_error = ''
        self.last_poll_s = 0.0

    # -- the loop --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name='portal-indexer', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.poll()
                self.last_error = ''
            except Exception as exc:  # noqa: BLE001 - a bad poll must not end the indexer
                if str(exc) != self.last_error:
                    log.error('indexer: %s', exc, exc_info=True)
                self.last_error = str(exc)
            self.last_poll_s = time.monotonic() - t0
            self._stop.wait(max(0.05, self.poll_s - self.last_poll_s))

    def trust(self) -> Any:
        """The trust store, reloaded when ``devices.json`` changes (a device registered or
        revoked: every device is checked again)."""
        from bodycam_ros.core import trust as tr
        st = (self.agency_dir / tr.REGISTRY).stat()
        tag = (st.st_mtime_ns, st.st_size)
        if tag != self._trust_tag:
            self._trust = load_trust(self.agency_dir)
            if self._trust_tag is not None:
                self.db.execute("UPDATE devices SET listing = ''")
            self._trust_tag = tag
        return self._trust

    def poll(self, now: float | None = None) -> int:
        """One pass; returns how many devices were checked again."""
        self.polls += 1
        store = self.trust()
        devices = group(self.bucket.list())
        known = {r[0]: r for r in self.db.query(
            'SELECT device_id, listing, witness_seq, witness_sha256 FROM devices')}
        for dev_id in known:
            if dev_id not in devices:
                devices[dev_id] = DeviceObjects(dev_id)     # everything deleted: still checked
        changed = 0
        for dev_id, objs in sorted(devices.items()):
            listing = objs.listing()
            row = known.get(dev_id)
            if row is not None and row[1] == listing:
                continue
            witness = Head(int(row[2]), row[3]) if row and row[2] is not None else None
            self.check_device(objs, store, witness, listing,
                              time.time() if now is None else now)
            changed += 1
        return changed

    # -- one device ------------------------------------------------------------------------
    def check_device(self, objs: DeviceObjects, store: Any, witness: Head | None, listing: str,
                     now: float) -> None:
        dev_id = objs.device_id
        keys = {o.key: o for o in objs.files.values()}
        keys.update({o.key: o for f in objs.incidents.values() for o in f.values()})
        reader = ObjectReader(lambda p: [k for k in keys if k.startswith(p)],
                              lambda k: self.bucket.get(k) if k in keys else None,
                              dev_id, source=f'{self.bucket.url}/{dev_id}')
        rep = verify_history(reader, TrustView(store), allow_empty=True, witness=witness)
        device_problems = [f'{p.code}: {p.message}' for p in rep.problems
                           if p.incident_id is None]
        by_incident: dict[str, list[str]] = {}
        for p in rep.problems:
            if p.incident_id is not None:
                by_incident.setdefault(p.incident_id, []).append(f'{p.code}: {p.message}')
        ledger_events = self._ledger_events(rep)
        old = {r[0]: r for r in self.db.query(
            'SELECT incident_id, listing, verification, problems, present, manifest, verified '
            'FROM incidents WHERE device_id = ?', (dev_id,))}
        rows: list[tuple[Any, ...]] = []
        for iid, files in sorted(objs.incidents.items()):
            if ev.MANIFEST not in files:
                continue                      # still arriving: the manifest is uploaded last
            inc_listing = _digest([(o.key, o.tag) for o in files.values()])
            prev = old.get(iid)
            rows.append(self._incident_row(
                dev_id, iid, objs.prefixes[iid], files, inc_listing, store, rep,
                by_incident.get(iid, []), device_problems, ledger_events.get(iid, []),
                prev, now))
        gone = [r for iid, r in old.items()
                if iid not in objs.incidents or ev.MANIFEST not in objs.incidents[iid]]
        with self.db.transaction():
            for row in rows:
                self._upsert(row)
            for r in gone:
                verification = json.loads(r[2])
                problems = [p for p in json.loads(r[3]) if not p.startswith('missing_from_')]
                problems.insert(0, 'missing_from_bucket: the portal indexed this incident '
                                'but it is gone from the bucket')
                problems += [f'device history: {p}' for p in device_problems
                             if f'device history: {p}' not in problems]
                verification['present'] = {'ok': False, 'text': 'gone from the bucket after '
                                            'the portal indexed it'}
                self.db.execute('UPDATE incidents SET present = 0, verified = 0, problems = ?, '
                                'verification = ?, checked_at = ? WHERE incident_id = ?',
                                (json.dumps(problems), json.dumps(verification), now, r[0]))
                self.db.execute('UPDATE incident_reasons SET verified = 0 WHERE incident_id = ?',
                                (r[0],))
                if r[6]:
                    bump_counts(self.db, [('verified', '1')], -1)
                    bump_counts(self.db, [('verified', '0')], 1)
            head = rep.ledger.head
            wseq, wsha = (witness.seq, witness.sha256) if witness else (None, None)
            if rep.ok and head is not None and (witness is None or head.seq >= witness.seq):
                wseq, wsha = head.seq, head.sha256
            max_seq = max((e.data.get('sequence', 0) for e in rep.ledger.entries
                           if e.event in lg.SEALS and isinstance(e.data.get('sequence'), int)),
                          default=None)
            self.db.execute('DELETE FROM devices WHERE device_id = ?', (dev_id,))
            self.db.execute(
                'INSERT INTO devices (device_id, witness_seq, witness_sha256, max_sequence, '
                'ledger_ok, problems, report, listing, checked_at) '
                'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
                (dev_id, wseq, wsha, max_seq, int(rep.ok), json.dumps(device_problems),
                 json.dumps(rep.as_dict()), listing, now))

    @staticmethod
    def _ledger_events(rep: Any) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for e in rep.ledger.entries:
            iid = e.data.get('incident_id') if isinstance(e.data, dict) else None
            if isinstance(iid, str):
                out.setdefault(iid, []).append({'entry': e.seq, 'event': e.event,
                                                'time': e.wall_time,
                                                'sequence': e.data.get('sequence')})
        return out

    def _incident_row(self, dev_id: str, iid: str, prefix: str, files: dict[str, Obj],
                      listing: str, store: Any, rep: Any, hist: list[str],
                      device_problems: list[str], ledger_events: list[dict[str, Any]],
                      prev: tuple[Any, ...] | None, now: float) -> tuple[Any, ...]:
        data = self.bucket.get(files[ev.MANIFEST].key) or b''
        try:
            manifest = json.loads(data)
            if not isinstance(manifest, dict):
                raise ValueError('not an object')
        except ValueError as exc:
            manifest = {'incident_id': iid, 'device_id': dev_id, 'unreadable': str(exc)}
        old_v = json.loads(prev[2]) if prev is not None else {}
        if prev is not None and prev[1] == listing and 'files' in old_v and \
                'signature' in old_v:
            sig_check, dev_check = Check(**old_v['signature']), \
                Check(**old_v['registered_device'])
            file_check, form_check = Check(**old_v['files']), Check(**old_v['manifest'])
        else:
            sig_check, dev_check = self._signature(dev_id, data, files, store, manifest)
            form_check = self._form(data, manifest, iid, dev_id)
            file_check = self._files(files, manifest)
        seq = manifest.get('sequence')
        chain_bad = [p for p in hist if p.startswith(('chain_broken', 'manifest_mismatch',
                                                      'duplicate_'))]
        chain_check = Check(not chain_bad, '; '.join(chain_bad) or (
            f'sequence {seq} of device {dev_id}; ' + (
                'the first incident (genesis link)' if seq == 1 else
                f'links to sequence {seq - 1 if isinstance(seq, int) else "?"} '
                f'({manifest.get("prev_incident_id")}) by its manifest hash')))
        led_bad = [p for p in hist if p not in chain_bad] + \
            [f'device history: {p}' for p in device_problems]
        events = ', '.join(f'{e["event"]} at entry {e["entry"]}' for e in ledger_events)
        ledger_check = Check(not led_bad, '; '.join(led_bad) or (
            f'ledger of {dev_id}: {events or "no entry yet"}; the ledger verifies '
            f'({len(rep.ledger.entries)} entries)'))
        verification = {'signature': sig_check.as_dict(),
                        'registered_device': dev_check.as_dict(),
                        'manifest': form_check.as_dict(), 'files': file_check.as_dict(),
                        'chain_position': chain_check.as_dict(),
                        'ledger': ledger_check.as_dict(),
                        'present': {'ok': True, 'text': 'in the bucket'},
                        'ledger_events': ledger_events}
        problems: list[str] = []
        for name in ('signature', 'registered_device', 'manifest', 'files'):
            c = verification[name]
            if not c['ok']:
                problems.append(f'{name}: {c["text"]}')
        problems += chain_bad + led_bad
        triggers = [{'reason': str(t.get('reason')), 'time': t.get('time')}
                    for t in manifest.get('triggers') or [] if isinstance(t, dict)]
        start, end = manifest.get('start_time'), manifest.get('end_time')
        sort_time = next((float(x) for x in (start, manifest.get('opened_time'),
                                             manifest.get('sealed_time'))
                          if isinstance(x, (int, float))), now)
        reasons = sorted({t['reason'] for t in triggers})
        indexed_at = now
        if prev is not None:
            row = self.db.one('SELECT indexed_at FROM incidents WHERE incident_id = ?', (iid,))
            indexed_at = float(row[0]) if row else now
        return (iid, dev_id, str(manifest.get('officer_id') or ''),
                seq if isinstance(seq, int) else None,
                start if isinstance(start, (int, float)) else None,
                end if isinstance(end, (int, float)) else None, sort_time, prefix,
                json.dumps(triggers), ','.join(reasons), data.decode('utf-8', 'replace'),
                hashlib.sha256(data).hexdigest(), listing, int(PROXY in files), 1,
                int(not problems), json.dumps(problems), json.dumps(verification),
                indexed_at, now)

    def _upsert(self, row: tuple[Any, ...]) -> None:
        upsert_incident(self.db, row)

    def _signature(self, dev_id: str, data: bytes, files: dict[str, Obj], store: Any,
                   manifest: dict[str, Any]) -> tuple[Check, Check]:
        from bodycam_ros.core import trust as tr
        dev = store.lookup(dev_id)
        if dev is None:
            dev_check = Check(False, f'device {dev_id!r} is not registered with this agency')
        elif not dev.active:
            dev_check = Check(False, f'device {dev_id!r} was revoked at {dev.revoked_at}: '
                              f'{dev.revoke_reason or "no reason given"}')
        else:
            dev_check = Check(True, f'device {dev_id!r} registered with this agency at '
                              f'{dev.registered_at} (key {dev.fingerprint[:16]})')
        sig_obj = files.get(ev.SIGNATURE)
        if sig_obj is None:
            return Check(False, 'manifest.sig is missing'), dev_check
        try:
            sig = self.bucket.get(sig_obj.key) or b''
            d = store.verify_signature(dev_id, data, sig)
            named = manifest.get('device_public_key')
            if named and named != base64.b64encode(d.public_key).decode():
                return Check(False, 'the manifest names another key than the registered one'
                             ), dev_check
            return Check(True, f'Ed25519 signature valid, by the registered key of {dev_id!r} '
                         f'({d.fingerprint[:16]})'), dev_check
        except tr.TrustError as exc:
            return Check(False, str(exc)), dev_check

    @staticmethod
    def _form(data: bytes, manifest: dict[str, Any], iid: str, dev_id: str) -> Check:
        if 'unreadable' in manifest:
            return Check(False, f'manifest.json is not JSON: {manifest["unreadable"]}')
        bad = []
        if ev.canonical(manifest) != data:
            bad.append('manifest.json is not in canonical form (edited after sealing)')
        if manifest.get('incident_id') != iid:
            bad.append(f'manifest incident_id {manifest.get("incident_id")!r} is not the '
                       f'folder {iid!r}')
        if manifest.get('device_id') != dev_id:
            bad.append(f'manifest device_id {manifest.get("device_id")!r} is not the folder '
                       f'{dev_id!r}')
        return Check(not bad, '; '.join(bad) or f'{manifest.get("format")}, canonical')

    def _files(self, files: dict[str, Obj], manifest: dict[str, Any]) -> Check:
        listed = manifest.get('files')
        if not isinstance(listed, dict):
            return Check(False, 'the manifest has no files table')
        bad = []
        for name, entry in sorted(listed.items()):
            obj = files.get(name)
            if obj is None:
                bad.append(f'{name} is missing')
                continue
            if not isinstance(entry, dict):
                bad.append(f'{name}: bad manifest entry')
                continue
            if obj.size != entry.get('size'):
                bad.append(f'{name}: size {obj.size} != {entry.get("size")} in the manifest')
                continue
            if sha256_object(self.bucket, obj.key) != entry.get('sha256'):
                bad.append(f'{name}: SHA-256 does not match the manifest (altered)')
        for name in files:
            if name not in listed and name not in _IGNORED and name not in ev.UNLISTED_OK:
                bad.append(f'{name} is not listed in the manifest')
        n = len(listed)
        return Check(not bad, '; '.join(bad) or f'{n} file(s): size and SHA-256 match the '
                     'signed manifest (ciphertext as stored)')


def sha256_object(bucket: Bucket, key: str) -> str:
    path = bucket.local_path(key)
    h = hashlib.sha256()
    if path is not None:
        with open(path, 'rb') as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()
    h.update(bucket.get(key) or b'')
    return h.hexdigest()


def count_keys(device_id: str, officer_id: str, verified: int, reasons: str
               ) -> list[tuple[str, str]]:
    """The ``incident_counts`` rows one incident counts in."""
    return [('', ''), ('unit', device_id), ('officer', officer_id),
            ('verified', str(int(verified)))] + \
        [('reason', r) for r in reasons.split(',') if r]


def bump_counts(db: Database, keys: list[tuple[str, str]], delta: int) -> None:
    """Add ``delta`` to each count (in the caller's transaction, so a count never disagrees
    with the rows it counts)."""
    db.executemany('INSERT INTO incident_counts (dim, value, n) VALUES (?, ?, ?) '
                   'ON CONFLICT (dim, value) DO UPDATE SET n = incident_counts.n + excluded.n',
                   [(d, v, delta) for d, v in keys])


def upsert_incident(db: Database, row: tuple[Any, ...]) -> None:
    """Insert or replace one incident row and its reasons, and keep ``incident_counts``
    (within the caller's transaction)."""
    iid, dev, officer, reasons, sort_time, verified = row[0], row[1], row[2], row[9], \
        row[6], row[15]
    old = db.one('SELECT device_id, officer_id, verified, reasons FROM incidents '
                 'WHERE incident_id = ?', (iid,))
    if old is not None:
        bump_counts(db, count_keys(*old), -1)
    bump_counts(db, count_keys(dev, officer, verified, reasons), 1)
    db.execute('DELETE FROM incidents WHERE incident_id = ?', (iid,))
    db.execute('DELETE FROM incident_reasons WHERE incident_id = ?', (iid,))
    db.execute(f'INSERT INTO incidents ({_INCIDENT_COLUMNS}) VALUES '
               f'({", ".join("?" * 20)})', row)
    if reasons:
        db.executemany('INSERT INTO incident_reasons (incident_id, reason, sort_time, '
                       'device_id, officer_id, verified) VALUES (?, ?, ?, ?, ?, ?)',
                       [(iid, r, sort_time, dev, officer, verified)
                        for r in reasons.split(',')])
