"""A durable, ordered outbox for dispatch events, and the courier that delivers it.

Nothing is lost while dispatch is unreachable: an event is on disk (written to a temporary
file, fsynced, renamed into ``pending/``) before :meth:`Outbox.put` returns. The courier
delivers in order, retrying with exponential backoff and jitter; every attempt carries the
event's ``Idempotency-Key`` so a receiver that saw a request whose answer was lost can drop
the repeat. Delivered ids are kept in ``delivered.log`` so an event re-announced after a
restart (a latched alert) is not queued twice. No ROS imports.

No single event can stop the others:

* officer-down events go first (among themselves in order): they never wait behind a
  weapon or incident event that dispatch is slow to take;
* a pending file that does not load (zero bytes, torn, not an event) is moved to
  ``quarantine/`` with a ``<name>.reason.json`` beside it at start-up, and the rest is kept;
* an event the receiver rejects for itself (a 4xx other than the retryable ones in
  :data:`RETRY_4XX`) is moved to ``quarantine/`` with the reply, and the queue goes on.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from bodycam_ros.core.fsio import fsync_dir, write_atomic

__all__ = ['PRIORITY_KINDS', 'RETRY_4XX', 'Backoff', 'Courier', 'CourierStats', 'DeliveryError',
           'Event', 'Outbox', 'OutboxError', 'RejectedError', 'Transport', 'WebhookTransport']

#: Kinds delivered before any other pending event.
PRIORITY_KINDS = frozenset({'officer_down'})
#: 4xx replies that say nothing against the event itself, so it is retried: timeout, too
#: many requests, and the ones that mean the whole link is misconfigured (credentials, URL,
#: method, proxy): dead-lettering every officer-down alert while a token is renewed would
#: lose them. Any other 4xx is a verdict on this one event.
RETRY_4XX = frozenset({401, 403, 404, 405, 407, 408, 421, 425, 429})
#: Most of a receiver's reply kept in a dead letter.
MAX_REPLY = 4096


class OutboxError(Exception):
    """The outbox directory is unusable (permissions, disk full, corrupt state)."""


class DeliveryError(Exception):
    """One delivery attempt failed; the courier will retry. The message says why."""


class RejectedError(DeliveryError):
    """The receiver refused this event for good (e.g. HTTP 400/422): retrying cannot help."""

    def __init__(self, message: str, status: int = 0, reply: str = '') -> None:
        super().__init__(message)
        self.status, self.reply = status, reply


@dataclass(frozen=True)
class Event:
    seq: int             # position in this outbox, strictly increasing
    event_id: str        # idempotency key, stable across retries and restarts
    kind: str            # officer_down | weapon_drawn | incident_started | incident_sealed
    body: dict[str, Any]  # the JSON document delivered

    def payload(self) -> bytes:
        return json.dumps({**self.body, 'event_id': self.event_id, 'seq': self.seq,
                           'type': self.kind}, sort_keys=True).encode()


class Outbox:
    """Events in ``directory``: ``pending/<seq>.json``, ``delivered.log``, ``quarantine/``.

    Order: :data:`PRIORITY_KINDS` first, then by ``seq``. Thread-safe. ``keep_ids`` bounds
    how many delivered ids are remembered for de-duplication; ``clock`` stamps quarantine
    reasons and events whose body has no usable ``queued_at``.
    """

    def __init__(self, directory: str | os.PathLike[str], keep_ids: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self._pending_dir = self.dir / 'pending'
        self._quarantine_dir = self.dir / 'quarantine'
        self._log_path = self.dir / 'delivered.log'
        self._keep = keep_ids
        self._clock = clock
        self._lock = threading.RLock()   # RLock: len() works inside ``changed``
        self.changed = threading.Condition(self._lock)
        self._queue: list[Event] = []
        self._queued_at: dict[str, float] = {}    # event id -> when it was stored
        self._peeked = ''                         # id of the event last handed out by peek()
        #: Problems met since start (quarantined files, unreadable entries), newest last.
        self.problems: list[str] = []
        try:
            self._pending_dir.mkdir(parents=True, exist_ok=True)
            self._quarantine_dir.mkdir(exist_ok=True)
            os.chmod(self.dir, 0o700)
            self._delivered: dict[str, int] = {}
            last_seq = 0
            if self._log_path.exists():
                for line in self._log_path.read_text(errors='replace').splitlines():
                    seq, _, eid = line.partition(' ')
                    if seq.isdigit() and eid:
                        self._delivered[eid] = int(seq)
                        last_seq = max(last_seq, int(seq))
            self._dead_ids = self._read_dead_ids()
            for path in sorted(self._pending_dir.glob('*.json')):
                if path.stem.isdigit():   # a quarantined name's seq is never handed out again
                    last_seq = max(last_seq, int(path.stem))
                ev = self._load_or_quarantine(path)
                if ev is not None:
                    self._queue.append(ev)
            for tmp in self._pending_dir.glob('.tmp-*'):
                tmp.unlink()   # a write torn by a crash before its rename: never acknowledged
        except OSError as exc:
            raise OutboxError(f'outbox {self.dir}: {exc}') from exc
        self._queue.sort(key=self._order)
        self._pending_ids = {e.event_id for e in self._queue}
        self._seq = max([last_seq] + [e.seq for e in self._queue])

    @staticmethod
    def _order(ev: Event) -> tuple[bool, int]:
        return ev.kind not in PRIORITY_KINDS, ev.seq

    @staticmethod
    def _parse(path: Path, data: bytes) -> Event:
        """One pending file as an :class:`Event`; ValueError naming what is wrong."""
        if not data:
            raise ValueError('empty file')
        d = json.loads(data)
        if not isinstance(d, dict):
            raise ValueError(f'not a JSON object but {type(d).__name__}')
        seq, eid, kind, body = (d.get(k) for k in ('seq', 'event_id', 'kind', 'body'))
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ValueError(f'seq {seq!r} is not a positive integer')
        if path.stem != f'{seq:012d}':
            raise ValueError(f'seq {seq} does not match the file name')
        if not isinstance(eid, str) or not eid:
            raise ValueError(f'event_id {eid!r} is not a non-empty string')
        if not isinstance(kind, str) or not kind:
            raise ValueError(f'kind {kind!r} is not a non-empty string')
        if not isinstance(body, dict):
            raise ValueError(f'body is {type(body).__name__}, not an object')
        return Event(seq, eid, kind, body)

    def _load_or_quarantine(self, path: Path) -> Event | None:
        try:
            data = path.read_bytes()
            ev = self._parse(path, data)
            if ev.event_id in self._queued_at:
                raise ValueError(f'event_id {ev.event_id} is already pending')
        except (ValueError, RecursionError) as exc:   # JSON and UnicodeDecode errors included
            self._quarantine(path, {'reason': 'corrupt', 'detail': f'{exc}'[:500]})
            return None
        self._queued_at[ev.event_id] = self._stored_at(ev, path.stat().st_mtime)
        return ev

    @staticmethod
    def _stored_at(ev: Event, fallback: float) -> float:
        q = ev.body.get('queued_at')
        if isinstance(q, (int, float)) and not isinstance(q, bool) and math.isfinite(q):
            return float(q)
        return fallback

    def _quarantine(self, path: Path, reason: dict[str, Any]) -> bool:
        """Move ``path`` into ``quarantine/`` with ``<name>.reason.json`` beside it.

        The reason is written first: a crash in between leaves the event pending, never a
        moved event without its reason. An OSError (read-only disk) leaves the file where it
        is, not queued, and is recorded in :attr:`problems`.
        """
        qdir = self._quarantine_dir
        name, n = path.name, 0
        while (qdir / name).exists() or (qdir / f'{name}.reason.json').exists():
            n += 1
            name = f'{path.stem}-{n}{path.suffix}'
        doc = {**reason, 'file': name, 'source': f'pending/{path.name}', 'at': self._clock()}
        try:
            write_atomic(qdir / f'{name}.reason.json',
                         json.dumps(doc, sort_keys=True, indent=1).encode(), mode=0o600)
            os.replace(path, qdir / name)
            fsync_dir(self._pending_dir)
            fsync_dir(qdir)
        except OSError as exc:
            self.problems.append(f'cannot quarantine {path.name} ({reason["reason"]}): {exc}')
            return False
        self.problems.append(f'quarantined {path.name}: {reason["reason"]}: '
                             f'{reason.get("detail", "")}')
        del self.problems[:-20]
        if 'event_id' in reason:
            self._dead_ids.add(str(reason['event_id']))
        return True

    def _read_dead_ids(self) -> set[str]:
        ids = set()
        for p in self._quarantine_dir.glob('*.reason.json'):
            try:
                eid = json.loads(p.read_bytes()).get('event_id')
            except (ValueError, AttributeError, OSError):
                continue
            if isinstance(eid, str):
                ids.add(eid)
        return ids

    @property
    def quarantined(self) -> int:
        """Events and files in ``quarantine/`` (an operator empties it after a look)."""
        try:
            return sum(1 for _ in self._quarantine_dir.glob('*.reason.json'))
        except OSError:
            return 0

    def put(self, event_id: str, kind: str, body: dict[str, Any]) -> Event | None:
        """Store an event durably; None if this id is already pending or delivered.

        Raises:
            OutboxError: the event could not be written (it is then not queued).
        """
        with self._lock:
            if event_id in self._pending_ids or event_id in self._delivered or \
                    event_id in self._dead_ids:
                return None
            ev = Event(self._seq + 1, event_id, kind, body)
            path = self._pending_dir / f'{ev.seq:012d}.json'
            tmp = self._pending_dir / f'.tmp-{ev.seq:012d}'
            try:
                with open(tmp, 'w') as f:
                    json.dump({'seq': ev.seq, 'event_id': event_id, 'kind': kind,
                               'body': body}, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                fsync_dir(self._pending_dir)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise OutboxError(f'cannot store event {kind} in {self.dir}: {exc}') from exc
            self._seq = ev.seq
            self._queue.append(ev)
            self._queue.sort(key=self._order)   # stable, nearly sorted: cheap
            self._pending_ids.add(event_id)
            self._queued_at[event_id] = self._stored_at(ev, self._clock())
            self.changed.notify_all()
            return ev

    def peek(self) -> Event | None:
        """The event to deliver next: the oldest officer-down one, else the oldest.

        It stays acknowledgeable (:meth:`ack`, :meth:`reject`) while in flight even if an
        officer-down event is queued ahead of it meanwhile.
        """
        with self._lock:
            self._peeked = self._queue[0].event_id if self._queue else ''
            return self._queue[0] if self._queue else None

    def get(self, event_id: str) -> Event | None:
        with self._lock:
            return next((e for e in self._queue if e.event_id == event_id), None)

    def events(self) -> list[Event]:
        """Pending events in delivery order."""
        with self._lock:
            return list(self._queue)

    def _check_head(self, ev: Event, what: str) -> None:
        """``ev`` must be the head, or the event last handed out by :meth:`peek`."""
        if ev.event_id not in self._pending_ids or not (
                self._queue[0].event_id == ev.event_id or self._peeked == ev.event_id):
            raise OutboxError(f'{what} of {ev.event_id} which is not the head of the queue')

    def _drop_head(self, ev: Event) -> None:
        self._queue = [e for e in self._queue if e.event_id != ev.event_id]
        self._pending_ids.discard(ev.event_id)
        self._queued_at.pop(ev.event_id, None)

    def reject(self, ev: Event, detail: str, status: int = 0, reply: str = '') -> None:
        """The receiver refused the head event for good: dead-letter it into ``quarantine/``
        with the reply, so the events after it go on."""
        with self._lock:
            self._check_head(ev, 'reject')
            path = self._pending_dir / f'{ev.seq:012d}.json'
            if not self._quarantine(path, {
                    'reason': 'rejected', 'detail': detail, 'http_status': status,
                    'reply': reply[:MAX_REPLY], 'event_id': ev.event_id, 'kind': ev.kind,
                    'seq': ev.seq}):
                raise OutboxError(self.problems[-1])
            self._drop_head(ev)

    def ack(self, ev: Event) -> None:
        """Mark the head event delivered: remember its id, then remove its file."""
        with self._lock:
            self._check_head(ev, 'ack')
            try:
                with open(self._log_path, 'a') as f:
                    f.write(f'{ev.seq} {ev.event_id}\n')
                    f.flush()
                    os.fsync(f.fileno())
                (self._pending_dir / f'{ev.seq:012d}.json').unlink(missing_ok=True)
            except OSError as exc:
                raise OutboxError(f'cannot record delivery of {ev.event_id}: {exc}') from exc
            self._drop_head(ev)
            self._delivered[ev.event_id] = ev.seq
            if len(self._delivered) > 2 * self._keep:
                self._compact()

    def _compact(self) -> None:
        keep = sorted(self._delivered.items(), key=lambda kv: kv[1])[-self._keep:]
        self._delivered = dict(keep)
        tmp = self.dir / '.delivered.tmp'
        with open(tmp, 'w') as f:
            f.writelines(f'{seq} {eid}\n' for eid, seq in keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._log_path)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def oldest_age_s(self, now: float | None = None) -> float:
        """Seconds the longest-waiting pending event has waited, 0 if empty.

        From the body's ``queued_at`` where it is a finite number, else from when the event
        was stored (the file's mtime after a restart).
        """
        with self._lock:
            if not self._queued_at:
                return 0.0
            oldest = min(self._queued_at.values())
        return max(0.0, (self._clock() if now is None else now) - oldest)


class Transport(Protocol):
    name: str

    def send(self, ev: Event) -> None:
        """Deliver one event or raise :class:`DeliveryError`."""


class WebhookTransport:
    """POSTs events as JSON to an HTTPS URL.

    The server's certificate is always verified, with its host name: against the system CAs,
    or only against ``ca_file`` (PEM) when one is given. ``http://`` is refused unless
    ``allow_insecure_http`` (tests, a loopback receiver): an officer-down alert carries the
    officer's position and the bearer token.

    Success is any 2xx, or 409 (the receiver already has this idempotency key). A 4xx not
    in :data:`RETRY_4XX` raises :class:`RejectedError` with the reply (the receiver refuses
    this event). Everything else (connection refused, timeout, a certificate that does not
    verify, 5xx, 3xx, auth/URL 4xx) is retried: an officer-down alert must not be dropped
    because dispatch is misconfigured for a while.
    """

    def __init__(self, url: str, *, token: str = '', timeout_s: float = 5.0,
                 ca_file: str = '', allow_insecure_http: bool = False,
                 user_agent: str = 'bodycam-dispatch-bridge/1') -> None:
        parts = urlsplit(url)
        if parts.scheme not in ('http', 'https') or not parts.hostname:
            raise ValueError(f'webhook URL must be https://host/path, got {url!r}')
        if parts.scheme == 'http' and not allow_insecure_http:
            raise ValueError(f'webhook URL {url!r} is plain http: use https, or set '
                             'allow_insecure_http')
        self.name = f'webhook {parts.scheme}://{parts.hostname}:{parts.port or ""}{parts.path}'
        self._parts, self._token, self._timeout = parts, token, timeout_s
        self._ua = user_agent
        self._ctx = None
        if parts.scheme == 'https':
            try:
                ctx = ssl.create_default_context(cafile=ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f'webhook CA file {ca_file!r}: {exc}') from exc
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            # create_default_context already sets both; stated so no edit can drop them.
            ctx.verify_mode, ctx.check_hostname = ssl.CERT_REQUIRED, True
            self._ctx = ctx
        elif ca_file:
            raise ValueError(f'a webhook CA file ({ca_file}) was given for a plain http URL')

    def send(self, ev: Event) -> None:
        p = self._parts
        path = (p.path or '/') + (f'?{p.query}' if p.query else '')
        headers = {'Content-Type': 'application/json', 'Idempotency-Key': ev.event_id,
                   'X-Bodycam-Event': ev.kind, 'X-Bodycam-Seq': str(ev.seq),
                   'User-Agent': self._ua}
        if self._token:
            headers['Authorization'] = f'Bearer {self._token}'
        if p.scheme == 'https':
            conn = http.client.HTTPSConnection(p.hostname, p.port, timeout=self._timeout,
                                               context=self._ctx)
        else:
            conn = http.client.HTTPConnection(p.hostname, p.port, timeout=self._timeout)
        try:
            conn.request('POST', path, body=ev.payload(), headers=headers)
            resp = conn.getresponse()
            reply = resp.read(MAX_REPLY)
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryError(f'{type(exc).__name__}: {exc}') from exc
        finally:
            conn.close()
        if 200 <= resp.status < 300 or resp.status == 409:
            return
        text = reply.decode('utf-8', 'replace')
        if 400 <= resp.status < 500 and resp.status not in RETRY_4XX:
            raise RejectedError(f'HTTP {resp.status} {resp.reason}', resp.status, text)
        raise DeliveryError(f'HTTP {resp.status} {resp.reason}')


class Backoff:
    """Exponential backoff with equal jitter: delay n is in [d/2, d], d = min(max, base·2ⁿ)."""

    def __init__(self, base_s: float = 0.25, max_s: float = 10.0,
                 rng: random.Random | None = None) -> None:
        if not 0 < base_s <= max_s:
            raise ValueError(f'backoff needs 0 < base_s <= max_s, got {base_s}, {max_s}')
        self.base_s, self.max_s, self._rng = base_s, max_s, rng or random.Random()

    def delay(self, failures: int) -> float:
        d = min(self.max_s, self.base_s * 2 ** min(failures - 1, 30))
        return d / 2 + self._rng.uniform(0, d / 2)


@dataclass(frozen=True)
class CourierStats:
    transport: str
    pending: int
    delivered: int
    attempts: int
    failures_in_row: int
    last_error: str
    oldest_age_s: float
    rejected: int = 0          # dead-lettered by this courier since start
    quarantined: int = 0       # everything in quarantine/ now
    last_rejection: str = ''


class Courier:
    """One thread delivering one outbox through one transport, in order, until stopped."""

    def __init__(self, outbox: Outbox, transport: Transport, backoff: Backoff | None = None,
                 on_delivered: Callable[[Event, float], None] | None = None,
                 on_rejected: Callable[[Event, str], None] | None = None) -> None:
        self.outbox, self.transport = outbox, transport
        self.backoff = backoff or Backoff()
        self._on_delivered = on_delivered
        self._on_rejected = on_rejected
        self.rejected = 0
        self.last_rejection = ''
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f'courier {transport.name}',
                                        daemon=True)
        self.delivered = self.attempts = self.failures_in_row = 0
        self.last_error = ''

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.outbox.changed:
                self.outbox.changed.wait_for(lambda: len(self.outbox) or
                                             self._stop.is_set(), 1.0)
            ev = self.outbox.peek()
            if ev is None or self._stop.is_set():
                continue
            self.attempts += 1
            try:
                self.transport.send(ev)
            except RejectedError as exc:
                self._dead_letter(ev, exc)
                continue
            except DeliveryError as exc:
                self.failures_in_row += 1
                self.last_error = str(exc)
                self._stop.wait(self.backoff.delay(self.failures_in_row))
                continue
            self.failures_in_row = 0
            self.last_error = ''
            try:
                self.outbox.ack(ev)
            except OutboxError as exc:   # delivered but not recorded: a retry would repeat it
                self.last_error = str(exc)
                self._stop.wait(1.0)
                continue
            self.delivered += 1
            if self._on_delivered is not None:
                self._on_delivered(ev, time.time())

    def _dead_letter(self, ev: Event, exc: RejectedError) -> None:
        why = f'event #{ev.seq} {ev.kind} rejected by {self.transport.name}: {exc}' + \
            (f': {exc.reply[:200]}' if exc.reply else '')
        try:
            self.outbox.reject(ev, str(exc), exc.status, exc.reply)
        except OutboxError as oexc:   # cannot move it aside: retry it like any failure
            self.failures_in_row += 1
            self.last_error = f'{why}; {oexc}'
            self._stop.wait(self.backoff.delay(self.failures_in_row))
            return
        self.failures_in_row = 0
        self.rejected += 1
        self.last_error = ''
        self.last_rejection = why
        if self._on_rejected is not None:
            self._on_rejected(ev, why)

    def stats(self) -> CourierStats:
        return CourierStats(self.transport.name, len(self.outbox), self.delivered, self.attempts,
                            self.failures_in_row, self.last_error, self.outbox.oldest_age_s(),
                            self.rejected, self.outbox.quarantined, self.last_rejection)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with self.outbox.changed:
            self.outbox.changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
