"""A durable, ordered outbox for dispatch events, and the courier that delivers it.

Nothing is lost while dispatch is unreachable: an event is on disk (written to a temporary
file, fsynced, renamed into ``pending/``) before :meth:`Outbox.put` returns. The courier
delivers strictly in order, head of line first, retrying with exponential backoff and jitter;
every attempt carries the event's ``Idempotency-Key`` so a receiver that saw a request whose
answer was lost can drop the repeat. Delivered ids are kept in ``delivered.log`` so an event
re-announced after a restart (a latched alert) is not queued twice. No ROS imports.
"""
from __future__ import annotations

import http.client
import json
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

from bodycam_ros.core.fsio import fsync_dir

__all__ = ['Backoff', 'Courier', 'CourierStats', 'DeliveryError', 'Event', 'Outbox',
           'OutboxError', 'Transport', 'WebhookTransport']


class OutboxError(Exception):
    """The outbox directory is unusable (permissions, disk full, corrupt state)."""


class DeliveryError(Exception):
    """One delivery attempt failed; the courier will retry. The message says why."""


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
    """FIFO of events in ``directory``: ``pending/<seq>.json`` plus ``delivered.log``.

    Thread-safe. ``keep_ids`` bounds how many delivered ids are remembered for de-duplication.
    """

    def __init__(self, directory: str | os.PathLike[str], keep_ids: int = 10_000) -> None:
        self.dir = Path(directory)
        self._pending_dir = self.dir / 'pending'
        self._log_path = self.dir / 'delivered.log'
        self._keep = keep_ids
        self._lock = threading.RLock()   # RLock: len() works inside ``changed``
        self.changed = threading.Condition(self._lock)
        try:
            self._pending_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.dir, 0o700)
            self._delivered: dict[str, int] = {}
            last_seq = 0
            if self._log_path.exists():
                for line in self._log_path.read_text().splitlines():
                    seq, _, eid = line.partition(' ')
                    if seq.isdigit() and eid:
                        self._delivered[eid] = int(seq)
                        last_seq = max(last_seq, int(seq))
            self._queue: list[Event] = []
            for path in sorted(self._pending_dir.glob('*.json')):
                self._queue.append(self._load(path))
            for tmp in self._pending_dir.glob('.tmp-*'):
                tmp.unlink()   # a write torn by a crash before its rename: never acknowledged
        except OSError as exc:
            raise OutboxError(f'outbox {self.dir}: {exc}') from exc
        self._pending_ids = {e.event_id for e in self._queue}
        self._seq = max([last_seq] + [e.seq for e in self._queue])

    @staticmethod
    def _load(path: Path) -> Event:
        try:
            d = json.loads(path.read_text())
            return Event(int(d['seq']), str(d['event_id']), str(d['kind']), dict(d['body']))
        except (ValueError, KeyError, TypeError) as exc:
            raise OutboxError(f'corrupt outbox entry {path}: {exc}') from exc

    def put(self, event_id: str, kind: str, body: dict[str, Any]) -> Event | None:
        """Store an event durably; None if this id is already pending or delivered.

        Raises:
            OutboxError: the event could not be written (it is then not queued).
        """
        with self._lock:
            if event_id in self._pending_ids or event_id in self._delivered:
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
            self._pending_ids.add(event_id)
            self.changed.notify_all()
            return ev

    def peek(self) -> Event | None:
        with self._lock:
            return self._queue[0] if self._queue else None

    def ack(self, ev: Event) -> None:
        """Mark the head event delivered: remember its id, then remove its file."""
        with self._lock:
            if not self._queue or self._queue[0].event_id != ev.event_id:
                raise OutboxError(f'ack of {ev.event_id} which is not the head of the queue')
            try:
                with open(self._log_path, 'a') as f:
                    f.write(f'{ev.seq} {ev.event_id}\n')
                    f.flush()
                    os.fsync(f.fileno())
                (self._pending_dir / f'{ev.seq:012d}.json').unlink(missing_ok=True)
            except OSError as exc:
                raise OutboxError(f'cannot record delivery of {ev.event_id}: {exc}') from exc
            self._queue.pop(0)
            self._pending_ids.discard(ev.event_id)
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
        """Seconds the head event has waited (from its body's ``queued_at``), 0 if empty."""
        with self._lock:
            if not self._queue:
                return 0.0
            queued = self._queue[0].body.get('queued_at')
        return max(0.0, (now or time.time()) - float(queued)) if queued else 0.0


class Transport(Protocol):
    name: str

    def send(self, ev: Event) -> None:
        """Deliver one event or raise :class:`DeliveryError`."""


class WebhookTransport:
    """POSTs events as JSON to an HTTP(S) URL.

    Success is any 2xx, or 409 (the receiver already has this idempotency key). Everything
    else (connection refused, timeout, 5xx, 4xx) is retried: an officer-down alert must not
    be dropped because dispatch is misconfigured for a while.
    """

    def __init__(self, url: str, *, token: str = '', timeout_s: float = 5.0,
                 ca_file: str = '', user_agent: str = 'bodycam-dispatch-bridge/1') -> None:
        parts = urlsplit(url)
        if parts.scheme not in ('http', 'https') or not parts.hostname:
            raise ValueError(f'webhook URL must be http(s)://host/path, got {url!r}')
        self.name = f'webhook {parts.scheme}://{parts.hostname}:{parts.port or ""}{parts.path}'
        self._parts, self._token, self._timeout = parts, token, timeout_s
        self._ua = user_agent
        self._ctx = None
        if parts.scheme == 'https':
            self._ctx = ssl.create_default_context(cafile=ca_file or None)

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
            resp.read(65536)
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryError(f'{type(exc).__name__}: {exc}') from exc
        finally:
            conn.close()
        if not (200 <= resp.status < 300 or resp.status == 409):
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


class Courier:
    """One thread delivering one outbox through one transport, in order, until stopped."""

    def __init__(self, outbox: Outbox, transport: Transport, backoff: Backoff | None = None,
                 on_delivered: Callable[[Event, float], None] | None = None) -> None:
        self.outbox, self.transport = outbox, transport
        self.backoff = backoff or Backoff()
        self._on_delivered = on_delivered
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

    def stats(self) -> CourierStats:
        return CourierStats(self.transport.name, len(self.outbox), self.delivered, self.attempts,
                            self.failures_in_row, self.last_error, self.outbox.oldest_age_s())

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with self.outbox.changed:
            self.outbox.changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
