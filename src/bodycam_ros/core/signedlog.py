"""Append-only, hash-chained, Ed25519-signed JSON-lines logs: the mechanics the evidence
ledger (``core.ledger``) and the unit's audit log (``core.audit``) share.

One entry per line, canonical compact JSON (sorted keys, ASCII, no spaces)::

    {"data":{...},"device_id":"unit-7","event":"sealed","key":"<b64 raw Ed25519 public key>",
     "log":"bodycam-ledger/1","prev":"<hex SHA-256 of the previous line>","ros_time":12.5,
     "seq":1,"sig":"<b64 Ed25519 signature>","wall_time":1718000000.25}

``sig`` signs the canonical JSON of the entry without ``sig``; ``prev`` is the SHA-256 of the
previous line's bytes (without its newline), ``GENESIS`` for the first. ``log`` names the kind,
so a ledger line cannot be replayed into an audit log. Every process that appends (recorder,
uploader, live view, the CLI) takes an exclusive ``flock`` on the file, reads the tail and
appends one fsync'd line, so the chain never forks.

A line without its newline is a torn write (a power cut). Verifying reports it as a problem.
The next append keeps the torn bytes in ``<name>.torn-<offset>``, truncates them and logs a
signed ``log_repaired`` entry naming their SHA-256: never dropped silently, never accepted.

Who may sign is decided only by the trust store, never by the key written in the entry.
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bodycam_ros.core.fsio import append_durable, fsync_dir, write_atomic

GENESIS = '0' * 64
REPAIRED = 'log_repaired'
KEY_ROTATED = 'key_rotated'
_FIELDS = frozenset({'data', 'device_id', 'event', 'key', 'log', 'prev', 'ros_time', 'seq',
                     'sig', 'wall_time'})
_TAIL_CHUNK = 64 * 1024


class LogError(RuntimeError):
    """A signed log that cannot be appended to or read."""


class Signer(Protocol):
    """The device's signing key (a file key, or a PKCS#11 token that never lets it out)."""

    def public_key_bytes(self) -> bytes: ...   # 32 raw Ed25519 bytes
    def sign(self, data: bytes) -> bytes: ...  # 64-byte Ed25519 signature


class TrustStore(Protocol):
    """The agency's registry: which device a public key belongs to (None: unknown/revoked)."""

    def device_for_key(self, public_key_raw: bytes) -> str | None: ...


def canonical_line(entry: Mapping[str, Any]) -> bytes:
    """The one byte form an entry is written, hashed and signed in (no newline)."""
    return json.dumps(entry, sort_keys=True, separators=(',', ':'), ensure_ascii=True,
                      allow_nan=False).encode('ascii')


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode('ascii')


def signature_ok(public_raw: bytes, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def fingerprint(public_raw: bytes) -> str:
    """Short name of a key in messages: the first 16 hex digits of its SHA-256."""
    return sha256_hex(public_raw)[:16]


@dataclass(frozen=True)
class Head:
    """The newest entry of a log: what an outside witness records and later checks."""
    seq: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {'seq': self.seq, 'sha256': self.sha256}


@dataclass(frozen=True)
class Entry:
    """One parsed line. ``sha256`` is over the line's bytes: the next entry's ``prev``."""
    line: int
    seq: int
    prev: str
    event: str
    ros_time: float
    wall_time: float
    device_id: str
    key: bytes
    data: dict[str, Any]
    sig: bytes
    sha256: str

    def signed_bytes(self, kind: str) -> bytes:
        return canonical_line({'data': self.data, 'device_id': self.device_id,
                               'event': self.event, 'key': b64(self.key), 'log': kind,
                               'prev': self.prev, 'ros_time': self.ros_time, 'seq': self.seq,
                               'wall_time': self.wall_time})


@dataclass(frozen=True)
class Problem:
    """One thing wrong, by code (stable, for programs) and message (for people).

    ``entry`` is the log entry's seq (or its line number when unreadable, see ``line``);
    ``incident_id``/``sequence`` name the incident when the problem is about one.
    """
    code: str
    message: str
    entry: int | None = None
    line: int | None = None
    incident_id: str | None = None
    sequence: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (('code', self.code), ('message', self.message),
                                  ('entry', self.entry), ('line', self.line),
                                  ('incident_id', self.incident_id),
                                  ('sequence', self.sequence)) if v is not None}


@dataclass
class LogReport:
    """What :func:`verify_log` found. ``ok`` means no problems; warnings never fail."""
    source: str
    kind: str
    entries: list[Entry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    device_id: str | None = None
    keys: list[bytes] = field(default_factory=list)
    #: Lines not validly signed by the chain's registered key (unreadable, bad signature,
    #: unregistered, mixed or foreign key; reported once per key, marked on every line):
    #: nothing in them may be relied on. A chain break alone does not make a line suspect.
    suspect: set[int] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def head(self) -> Head | None:
        return Head(self.entries[-1].seq, self.entries[-1].sha256) if self.entries else None

    def add(self, code: str, message: str, **where: Any) -> None:
        self.problems.append(Problem(code, message, **where))

    def as_dict(self) -> dict[str, Any]:
        head = self.head
        return {'source': self.source, 'log': self.kind, 'ok': self.ok,
                'device_id': self.device_id, 'entries': len(self.entries),
                'head': head.as_dict() if head else None,
                'keys': [fingerprint(k) for k in self.keys],
                'problems': [p.as_dict() for p in self.problems],
                'warnings': [w.as_dict() for w in self.warnings]}


# -- parsing ------------------------------------------------------------------------------------
def parse_line(raw: bytes, kind: str, line: int) -> Entry:
    """One line (without its newline) as an :class:`Entry`; signature not checked here.

    Raises:
        LogError: not a canonical entry of this kind (names the line and why).
    """
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LogError(f'line {line}: not JSON ({exc})') from None
    if not isinstance(d, dict):
        raise LogError(f'line {line}: not a JSON object')
    if set(d) != _FIELDS:
        raise LogError(f'line {line}: fields {sorted(set(d) ^ _FIELDS)} wrong')
    if d['log'] != kind:
        raise LogError(f'line {line}: a {d["log"]!r} entry, not {kind!r}')
    try:
        if canonical_line(d) != raw:
            raise LogError(f'line {line}: not in canonical form (edited)')
    except ValueError as exc:
        raise LogError(f'line {line}: {exc}') from None
    seq, prev, data = d['seq'], d['prev'], d['data']
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise LogError(f'line {line}: bad seq {seq!r}')
    if not isinstance(prev, str) or len(prev) != 64:
        raise LogError(f'line {line}: bad prev {prev!r}')
    if not isinstance(data, dict) or not isinstance(d['event'], str) or \
            not isinstance(d['device_id'], str):
        raise LogError(f'line {line}: bad event, device_id or data')
    times = (d['ros_time'], d['wall_time'])
    if not all(isinstance(t, float) and math.isfinite(t) for t in times):
        raise LogError(f'line {line}: bad ros_time/wall_time {times!r}')
    try:
        key = base64.b64decode(d['key'], validate=True)
        sig = base64.b64decode(d['sig'], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise LogError(f'line {line}: key or sig is not base64') from None
    if len(key) != 32 or len(sig) != 64:
        raise LogError(f'line {line}: key {len(key)} bytes / sig {len(sig)} bytes')
    if b64(key) != d['key'] or b64(sig) != d['sig']:      # base64 ignores stray pad bits
        raise LogError(f'line {line}: key or sig is not canonical base64')
    return Entry(line, seq, prev, d['event'], times[0], times[1], d['device_id'], key, data,
                 sig, sha256_hex(raw))


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """(complete lines without newlines, torn tail or b'')."""
    if not data:
        return [], b''
    *lines, tail = data.split(b'\n')
    return lines, tail


def complete_bytes(path: Path) -> bytes:
    """The log's complete lines (a consistent prefix), what the uploader should upload: a
    reader racing an append never ships half a line. Empty when the file does not exist."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return b''
    return data[:data.rfind(b'\n') + 1]


# -- verification -------------------------------------------------------------------------------
def verify_log(data: bytes, kind: str, trust: TrustStore, source: str = '') -> LogReport:
    """Check a whole log: every line canonical and signed, seq and prev unbroken, one key
    per chain (a signed ``key_rotated`` hands over to the next), every key registered in
    ``trust`` for the device the entries name. An empty log verifies with no entries: the
    caller decides whether empty is allowed."""
    rep = LogReport(source, kind)
    lines, tail = split_lines(data)
    if tail:
        rep.add('torn_tail', f'line {len(lines) + 1} has no newline: a torn write of '
                f'{len(tail)} bytes (power cut or cut copy); not accepted', line=len(lines) + 1)
    prev_sha, expect = GENESIS, 1
    chain_key: bytes | None = None
    handover: bytes | None = None
    flagged: set[tuple[str, bytes]] = set()
    for i, raw in enumerate(lines, start=1):
        try:
            e = parse_line(raw, kind, i)
        except LogError as exc:
            rep.add('bad_entry', str(exc), line=i)
            rep.suspect.add(i)
            prev_sha, expect, handover = sha256_hex(raw), expect + 1, None
            continue
        where = {'entry': e.seq, 'line': i}
        if e.seq != expect:
            what = (f'entries {expect}..{e.seq - 1} are missing' if e.seq > expect
                    else 'seq goes backwards')
            rep.add('entry_gap', f'entry {e.seq} at line {i} where {expect} was due: {what}',
                    **where)
        if e.prev != prev_sha:
            rep.add('chain_broken', f'entry {e.seq} (line {i}): prev does not match the '
                    'line before it (an entry was removed, inserted or altered)', **where)
        if not signature_ok(e.key, e.sig, e.signed_bytes(kind)):
            rep.add('bad_signature', f'entry {e.seq} (line {i}): signature does not match '
                    f'(altered, or not signed by key {fingerprint(e.key)})', **where)
            rep.suspect.add(i)
        if e.key not in rep.keys:
            rep.keys.append(e.key)
        registered = trust.device_for_key(e.key)
        if registered is None or registered != e.device_id:
            rep.suspect.add(i)
        if registered is None and ('unreg', e.key) not in flagged:
            flagged.add(('unreg', e.key))
            rep.add('unregistered_signer', f'entry {e.seq}: key {fingerprint(e.key)} is not '
                    'registered (or revoked) in the trust store', **where)
        elif registered is not None and registered != e.device_id and \
                ('dev', e.key) not in flagged:
            flagged.add(('dev', e.key))
            rep.add('device_mismatch', f'entry {e.seq}: names device {e.device_id!r} but key '
                    f'{fingerprint(e.key)} is registered to {registered!r}', **where)
        if rep.device_id is None:
            rep.device_id = e.device_id
        elif e.device_id != rep.device_id:
            rep.suspect.add(i)
        if e.device_id != rep.device_id and ('devid', e.key) not in flagged:
            flagged.add(('devid', e.key))
            rep.add('mixed_devices', f'entry {e.seq}: device {e.device_id!r} in the log of '
                    f'{rep.device_id!r}', **where)
        if chain_key is None or e.key == chain_key:
            chain_key = chain_key or e.key
        elif e.key == handover:
            chain_key = e.key
        else:
            rep.suspect.add(i)
        if e.key != chain_key and ('mixed', e.key) not in flagged:
            flagged.add(('mixed', e.key))
            rep.add('mixed_keys', f'entry {e.seq}: signed by key {fingerprint(e.key)} but the '
                    f'chain is signed by {fingerprint(chain_key)} with no signed handover',
                    **where)
        handover = None
        if e.event == KEY_ROTATED:
            try:
                handover = base64.b64decode(str(e.data.get('new_key')), validate=True)
            except (binascii.Error, ValueError):
                rep.add('bad_entry', f'entry {e.seq}: key_rotated without a base64 new_key',
                        **where)
        if e.event == REPAIRED:
            rep.warnings.append(Problem(
                'repaired_tail', f'entry {e.seq}: a torn write of {e.data.get("size")} bytes '
                f'was set aside as {e.data.get("saved_as")} (sha256 {e.data.get("sha256")})',
                entry=e.seq, line=i))
        rep.entries.append(e)
        prev_sha, expect = e.sha256, e.seq + 1
    return rep


def check_witness(rep: LogReport, witness: Head) -> None:
    """Fail ``rep`` unless its log holds the entry an outside witness saw (a bucket copy, the
    portal): the only way to catch the newest entries cut from every copy the unit holds."""
    for e in rep.entries:
        if e.seq == witness.seq:
            if e.sha256 != witness.sha256:
                rep.add('witness_mismatch', f'entry {e.seq} differs from the one the witness '
                        'recorded (history rewritten)', entry=e.seq, line=e.line)
            return
    rep.add('behind_witness', f'the log ends before entry {witness.seq}, which an outside '
            'witness saw: newest entries were cut', entry=witness.seq)


# -- appending ----------------------------------------------------------------------------------
def _read_tail(fd: int, size: int) -> tuple[bytes, int]:
    """(last complete line without newline or b'', offset where a torn tail starts)."""
    pos, buf = size, b''
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        os.lseek(fd, pos, os.SEEK_SET)
        buf = os.read(fd, step) + buf
        nl = buf.rfind(b'\n')
        if nl < 0:
            continue
        torn_at = pos + nl + 1
        start = buf.rfind(b'\n', 0, nl)
        while start < 0 and pos > 0:           # the last complete line began further back
            step = min(_TAIL_CHUNK, pos)
            pos -= step
            os.lseek(fd, pos, os.SEEK_SET)
            chunk = os.read(fd, step)
            buf, nl = chunk + buf, nl + len(chunk)
            start = buf.rfind(b'\n', 0, nl)
        return buf[start + 1:nl], torn_at
    return b'', 0


class SignedLog:
    """One device's chained, signed log file; safe to append from several processes.

    Args:
        path: the JSON-lines file (created on the first append).
        kind: the ``log`` value, e.g. ``bodycam-ledger/1``.
        signer: the device key; its public key is read once.
        device_id: the unit, as registered in the agency's trust store.
        wall_clock: wall time source for ``wall_time`` (injectable for tests).
    """

    def __init__(self, path: Path, kind: str, signer: Signer, device_id: str, *,
                 mode: int = 0o644, wall_clock: Callable[[], float] = time.time) -> None:
        if not device_id:
            raise LogError('device_id is empty')
        self.path = Path(path)
        self.kind = kind
        self.device_id = device_id
        self._signer = signer
        self._key = bytes(signer.public_key_bytes())
        if len(self._key) != 32:
            raise LogError(f'signer public key is {len(self._key)} bytes, not 32 (Ed25519)')
        self._mode = mode
        self._wall = wall_clock

    @property
    def public_key(self) -> bytes:
        return self._key

    def append(self, event: str, now: float, data: Mapping[str, Any]) -> Entry:
        """Sign and durably append one entry; returns it once it is on disk.

        Args:
            event: what happened.
            now: the caller's clock (ROS time), seconds.
            data: JSON-serialisable details.

        Raises:
            LogError: bad arguments, or the last line is not an entry (nothing to chain onto).
        """
        if not event or not isinstance(event, str):
            raise LogError(f'event must be a non-empty string, not {event!r}')
        if not math.isfinite(float(now)):
            raise LogError(f'now is not finite: {now!r}')
        body = dict(data)
        try:
            canonical_line(body)
        except (TypeError, ValueError) as exc:
            raise LogError(f'{event}: details are not JSON-serialisable: {exc}') from None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self._mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if created:
                fsync_dir(self.path.parent)
            size = os.fstat(fd).st_size
            last, torn_at = _read_tail(fd, size)
            seq, prev = self._after(last)
            if torn_at < size:
                entry = self._set_aside(fd, torn_at, size, seq, prev, float(now))
                seq, prev = entry.seq + 1, entry.sha256
            return self._write(event, float(now), body, seq, prev)
        finally:
            os.close(fd)          # releases the flock

    def _after(self, last: bytes) -> tuple[int, str]:
        if not last:
            return 1, GENESIS
        try:
            d = json.loads(last)
            seq = d['seq']
            if not isinstance(seq, int) or d.get('log') != self.kind:
                raise ValueError(f'seq {seq!r}, log {d.get("log")!r}')
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise LogError(f'{self.path}: last line is not a {self.kind} entry ({exc}); '
                           'refusing to chain onto it') from None
        return seq + 1, sha256_hex(last)

    def _set_aside(self, fd: int, torn_at: int, size: int, seq: int, prev: str,
                   now: float) -> Entry:
        os.lseek(fd, torn_at, os.SEEK_SET)
        torn = os.read(fd, size - torn_at)
        keep = self.path.with_name(f'{self.path.name}.torn-{torn_at}')
        write_atomic(keep, torn, mode=self._mode)
        os.ftruncate(fd, torn_at)
        os.fsync(fd)
        return self._write(REPAIRED, now, {'offset': torn_at, 'size': len(torn),
                                           'sha256': sha256_hex(torn),
                                           'saved_as': keep.name}, seq, prev)

    def _write(self, event: str, now: float, data: dict[str, Any], seq: int,
               prev: str) -> Entry:
        wall = float(self._wall())
        unsigned = {'data': data, 'device_id': self.device_id, 'event': event,
                    'key': b64(self._key), 'log': self.kind, 'prev': prev, 'ros_time': now,
                    'seq': seq, 'wall_time': wall}
        sig = bytes(self._signer.sign(canonical_line(unsigned)))
        if len(sig) != 64:
            raise LogError(f'signer returned {len(sig)} bytes, not a 64-byte Ed25519 signature')
        line = canonical_line(unsigned | {'sig': b64(sig)})
        append_durable(self.path, line + b'\n', mode=self._mode)
        return parse_line(line, self.kind, 0)

    def entries(self) -> list[Entry]:
        """Parse every complete line (no trust decisions: use :func:`verify_log`).

        Raises:
            LogError: a line is not an entry.
        """
        lines, _ = split_lines(complete_bytes(self.path))
        return [parse_line(raw, self.kind, i) for i, raw in enumerate(lines, start=1)]

    def head(self) -> Head | None:
        """The newest complete entry, read from the tail of the file."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            last, _ = _read_tail(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        if not last:
            return None
        return Head(parse_line(last, self.kind, 0).seq, sha256_hex(last))
