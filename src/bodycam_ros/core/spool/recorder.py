"""The recorder's state machine: IDLE -> RECORDING -> POST_ROLL -> sealed.

Callers (the node's callbacks) push video, sensor messages and commands from any thread;
one writer thread alone touches files. Every failure stays with its item: a bad record is
counted and skipped, a clip that cannot be closed is sealed as recovered, a crash-left
incident that cannot be sealed is quarantined, and the recorder goes on recording. It never
deletes evidence: under disk pressure it reports (``disk_low``) and keeps writing.

Every seal and recovery is logged in the signed ledger, and opens, seals, recoveries and
quarantines in the audit log (both optional here, always given by the node). A stop is
refused, from any source, while the weapon is drawn or an officer-down alert is open
(:meth:`Recorder.set_guard`): anyone on the DDS domain can publish ``recorder/command`` and
the wheels' Fast DDS has no DDS Security plugins to stop them.

Time: every decision and record uses ``clock`` (the node's ROS time; sim time under
``use_sim_time``): trigger and stop times, the post-roll deadline, ledger and audit times.
``wall_clock`` is read only to record wall time beside it (the open record pairs the two,
so a manifest made on sim time also says when, on this machine, it was recorded) and to
date quarantine notes; ``time.monotonic`` only paces the writer thread's disk checks.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.signedlog import LogError
from bodycam_ros.core.ring import LookbackRing, SensorRecord, Snapshot, VideoPacket
from bodycam_ros.core.spool.layout import EVENTS
from bodycam_ros.core.spool.seal import Identity, seal
from bodycam_ros.core.spool.store import EvidenceStore
from bodycam_ros.core.spool.writer import IncidentWriter, read_events


class State(str, Enum):
    IDLE = 'IDLE'
    RECORDING = 'RECORDING'
    POST_ROLL = 'POST_ROLL'


@dataclass(frozen=True)
class Command:
    """A ``recorder/command`` as the node decoded it."""
    kind: str                 # start | stop
    reason: str
    trigger_time: float       # ROS s (the sender's node clock); for a stop, when it was decided
    command_id: str
    received: float           # node clock (ROS time) at reception, s


@dataclass(frozen=True)
class RecorderConfig:
    pre_event_s: float = 120.0
    post_event_s: float = 30.0
    fragment_s: float = 1.0
    min_free_bytes: int = 500 << 20      # below it: disk_low (reported, nothing deleted)
    disk_check_s: float = 1.0
    device_id: str = 'unit'
    officer_id: str = 'unassigned'
    software_version: str = '0'
    #: What ``clock`` runs on: 'ros' (system clock = UNIX time) or 'sim' (``/clock``).
    clock: str = 'ros'
    #: Set when the inputs are a replayed bag (``bodycam run --replay``): its path and
    #: SHA-256 go into every manifest, so a replay never passes for field evidence.
    replay_bag: str = ''
    replay_bag_sha256: str = ''


@dataclass(frozen=True)
class RecorderStatus:
    state: State
    incident_id: str
    triggers: tuple[str, ...]
    buffered_s: float
    buffered_bytes: int
    free_bytes: int
    frames: int                  # written to the current incident
    queue_length: int
    pending_bytes: int           # accepted but not yet on disk (disk full)
    sealed: int
    recovered: int
    quarantined: int             # incidents in quarantine/ (they need a human)
    last_sealed: str
    disk_error: str              # '' when fine
    disk_low: bool
    seal_failures: int
    sync_ms_mean: float
    writer_errors: int           # unexpected errors the writer thread survived
    quarantined_now: int = 0     # quarantined by this process (an ERROR until restart)
    refused_stops: int = 0       # stops refused while the weapon was drawn / officer down
    log_errors: int = 0          # ledger or audit appends that failed (see the events)
    lost_frames: int = 0         # video dropped: the disk was full and memory at its cap
    closing: int = 0             # incidents whose close waits for disk space (data in RAM)


@dataclass
class _Counters:
    sealed: int = 0
    recovered: int = 0
    quarantined: int = 0
    quarantined_now: int = 0
    refused_stops: int = 0
    log_errors: int = 0
    seal_failures: int = 0
    internal_errors: int = 0
    last_sealed: str = ''
    disk_error: str = ''
    disk_low: bool = False
    free_bytes: int = -1
    frames: int = 0
    pending: int = 0
    lost_frames: int = 0
    closing: int = 0
    sync_s: float = 0.0
    syncs: int = 0
    events: deque = field(default_factory=lambda: deque(maxlen=100))


class Recorder:
    """IDLE -> RECORDING (start) -> POST_ROLL (stop) -> sealed after ``post_event_s``.

    Callers push video, sensor messages and commands from any thread; a start takes the
    ring's look-back at once (so the clip reaches back ``pre_event_s`` from the trigger
    time, on a keyframe) and every later packet follows it through a queue to the writer
    thread, which alone touches files.
    """

    def __init__(self, store: EvidenceStore, ring: LookbackRing, key: Any,
                 config: RecorderConfig, clock: Callable[[], float] = time.time, *,
                 recipients: Sequence[Any] | None = None, recipient: str = '',
                 ledger: Any = None, audit: Any = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``clock``: ROS time (decisions, stamps); ``wall_clock``: UNIX time recorded beside
        it. ``key``: a ``keys.Signer``. ``recipients``: the agency's X25519 public keys (None:
        plaintext evidence), ``recipient`` their ``age1...`` form for the manifest.
        ``ledger``/``audit``: ``core.ledger.Ledger`` / ``core.audit.AuditLog`` or None."""
        self.store, self.ring, self.key, self.cfg = store, ring, key, config
        self._clock, self._wall = clock, wall_clock
        self._recipients = list(recipients) if recipients else None
        self._encryption = {'scheme': ev.SCHEME_AGE, 'recipient': recipient} \
            if self._recipients else {'scheme': ev.SCHEME_NONE}
        self.ledger, self.audit = ledger, audit
        self._weapon_drawn = False
        self._alert_open = False
        self._ident = Identity(config.device_id, config.officer_id, config.software_version,
                               config.pre_event_s, config.post_event_s,
                               tuple(sorted(self._encryption.items())))
        self._lock = threading.Lock()
        self._state = State.IDLE
        self._incident_id = ''
        self._triggers: list[str] = []
        self._deadline = 0.0
        self._seen_commands: deque[str] = deque(maxlen=256)
        self._jobs: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._c = _Counters()
        self._thread = threading.Thread(target=self._run, name='recorder-writer', daemon=True)
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Recover what a crash left behind, then start writing."""
        for log in (self.ledger, self.audit):
            if log is not None:         # the logs are evidence too: 0600 (signedlog makes 0644)
                os.close(os.open(log.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
                os.chmod(log.path, 0o600)
        self._put('recover', None)
        self._started = True
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Seal an open incident (end_reason shutdown) and stop the writer thread."""
        with self._lock:
            if self._state is not State.IDLE:
                self._state = State.IDLE
                self._put('seal', 'shutdown')
        self._put('quit', None)
        if self._started:
            self._thread.join(timeout_s)

    def events(self) -> list[str]:
        """Lifecycle lines (opened, sealed, recovered, quarantined, disk) since the last
        call."""
        out = []
        while self._c.events:          # popleft: safe against the writer thread appending
            out.append(self._c.events.popleft())
        return out

    # -- input -------------------------------------------------------------------------------
    def on_video(self, pkt: VideoPacket) -> None:
        with self._lock:
            self.ring.push_video(pkt)
            if self._state is not State.IDLE:
                self._put('video', pkt)

    def on_sensor(self, rec: SensorRecord) -> None:
        with self._lock:
            self.ring.push_sensor(rec)
            if self._state is not State.IDLE:
                self._put('sensor', rec)

    def on_command(self, cmd: Command) -> str:
        """Apply a start/stop; returns what happened (for the node's log)."""
        with self._lock:
            if cmd.command_id and cmd.command_id in self._seen_commands:
                return f'duplicate command {cmd.command_id} ignored'
            if cmd.command_id:
                self._seen_commands.append(cmd.command_id)
            record = {'type': 'trigger' if cmd.kind == 'start' else 'stop',
                      'reason': cmd.reason, 'command_id': cmd.command_id,
                      'received': cmd.received}
            if cmd.kind == 'start':
                record['trigger_time'] = cmd.trigger_time
                if self._state is State.IDLE:
                    return self._open(cmd, record)
                self._state = State.RECORDING
                self._triggers.append(cmd.reason)
                self._put('event', record)
                return f'{cmd.reason}: extends incident {self._incident_id}'
            if cmd.kind == 'stop':
                if self._state is State.IDLE:
                    return 'stop while idle ignored'
                guard = self._stop_guard()
                if guard:
                    self._c.refused_stops += 1
                    self._put('event', record | {'type': 'stop_refused', 'why': guard})
                    return (f'REFUSED stop ({cmd.reason}, command {cmd.command_id or "-"}): '
                            f'{guard}; incident {self._incident_id} goes on '
                            f'({self._c.refused_stops} refused so far)')
                stop_t = cmd.trigger_time if 0 < cmd.trigger_time <= cmd.received + 1.0 \
                    else cmd.received
                record['stop_time'] = stop_t
                deadline = stop_t + self.cfg.post_event_s
                if self._state is State.POST_ROLL:
                    self._deadline = max(self._deadline, deadline)
                else:
                    self._state, self._deadline = State.POST_ROLL, deadline
                self._put('event', record)
                return f'stop: incident {self._incident_id} ends at {self._deadline:.3f}'
            return f'unknown command {cmd.kind!r} ignored'

    def set_guard(self, weapon_drawn: bool | None = None,
                  alert_open: bool | None = None) -> None:
        """What the node knows from ``holster/weapon_drawn`` and ``bodycam/alerts``."""
        with self._lock:
            if weapon_drawn is not None:
                self._weapon_drawn = weapon_drawn
            if alert_open is not None:
                self._alert_open = alert_open

    def _stop_guard(self) -> str:
        """Why a stop must be refused now ('' when it may go ahead). Called under the lock."""
        why = [w for w, on in (('weapon drawn', self._weapon_drawn),
                               ('officer-down alert open', self._alert_open)) if on]
        return ' and '.join(why)

    def _open(self, cmd: Command, record: dict[str, Any]) -> str:
        snap = self.ring.snapshot(cmd.trigger_time, self.cfg.pre_event_s)
        self._incident_id = str(uuid.uuid4())
        self._state = State.RECORDING
        self._triggers = [cmd.reason]
        opened = {'type': 'open', 'incident_id': self._incident_id,
                  'device_id': self.cfg.device_id, 'officer_id': self.cfg.officer_id,
                  'software_version': self.cfg.software_version,
                  'pre_event_s': self.cfg.pre_event_s, 'post_event_s': self.cfg.post_event_s,
                  'wall_time': self._wall(), 'ros_time': cmd.received,
                  'clock': self.cfg.clock,
                  'replay': {'bag': self.cfg.replay_bag, 'sha256': self.cfg.replay_bag_sha256}
                  if self.cfg.replay_bag else None,
                  'clip_start': snap.start_t, 'encryption': dict(self._encryption)}
        self._put('open', (self._incident_id, opened, snap, record))
        lookback = (cmd.trigger_time - snap.start_t) if snap.start_t is not None else 0.0
        return (f'{cmd.reason}: incident {self._incident_id} opened, {lookback:.1f} s of '
                f'look-back, {len(snap.video)} packets, {len(snap.sensors)} sensor messages')

    def tick(self, now: float | None = None) -> None:
        """End the post-roll when its time has come (call a few times a second)."""
        now = self._clock() if now is None else now
        with self._lock:
            if self._state is State.POST_ROLL and now >= self._deadline:
                self._state = State.IDLE
                self._put('seal', 'post_roll')

    def status(self) -> RecorderStatus:
        st = self.ring.stats()
        c = self._c
        with self._lock:
            state, incident, triggers = self._state, self._incident_id, tuple(self._triggers)
        return RecorderStatus(
            state, incident if state is not State.IDLE else '', triggers if state is not
            State.IDLE else (), st.buffered_s, st.buffered_bytes, c.free_bytes, c.frames,
            self._jobs.qsize(), c.pending, c.sealed, c.recovered, c.quarantined,
            c.last_sealed, c.disk_error, c.disk_low, c.seal_failures,
            1000.0 * c.sync_s / c.syncs if c.syncs else 0.0, c.internal_errors,
            c.quarantined_now, c.refused_stops, c.log_errors, c.lost_frames, c.closing)

    def _put(self, kind: str, payload: Any) -> None:
        self._jobs.put((kind, payload))

    # -- the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        writer: IncidentWriter | None = None
        retry: list[Path] = []       # closed incidents whose sealing failed (disk full)
        closing: list[IncidentWriter] = []   # close refused by a full disk: bytes in RAM
        dropping = False             # over the memory cap: video dropped to the next keyframe
        next_check = 0.0
        next_retry = 0.0
        while True:
            try:
                kind, payload = self._jobs.get(timeout=0.2)
            except queue.Empty:
                kind, payload = 'idle', None
            try:
                if kind == 'video' and writer is not None:
                    dropping = self._over_cap(writer, closing, payload, dropping)
                    if not dropping:
                        writer.video(payload)
                        self._c.frames = writer.frames
                elif kind == 'sensor' and writer is not None:
                    writer.sensor(payload)
                elif kind == 'event' and writer is not None:
                    writer.event(payload)
                elif kind == 'open':
                    writer = self._open_incident(payload, writer, retry, closing)
                    dropping = False
                elif kind == 'seal' and writer is not None:
                    self._close_and_seal(writer, payload, retry, closing)
                    writer = None
                elif kind == 'recover':
                    self._recover(retry)
                elif kind == 'quit':
                    self._retry_closing(closing, retry, final=True)
                    self._final_retry(retry)
                    return
            except OSError as exc:    # the disk: reported, never fatal, nothing deleted
                self._c.disk_error = f'{exc.strerror or exc} ({kind})'
                self._c.events.append(f'ERROR disk error during {kind}: {exc}')
            except Exception as exc:  # noqa: BLE001 - this thread must outlive any one bug
                self._item_error(kind, exc)
            if writer is not None:
                writer.maybe_sync()
                err = writer.disk_error
                self._c.disk_error = f'{err.strerror or err}' if err else \
                    ('' if not (retry or closing) else self._c.disk_error)
                self._c.sync_s, self._c.syncs = writer.sync_s, writer.syncs
            self._c.pending = (writer.pending_bytes if writer is not None else 0) + \
                sum(w.pending_bytes for w in closing)
            self._c.closing = len(closing)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + self.cfg.disk_check_s
                self._check_disk()
            if (retry or closing) and now >= next_retry:
                next_retry = now + 1.0
                self._retry_closing(closing, retry)
                self._final_retry(retry)

    def _open_incident(self, payload: tuple, writer: IncidentWriter | None,
                       retry: list[Path], closing: list[IncidentWriter]) -> IncidentWriter:
        incident_id, opened, snap, record = payload
        if writer is not None:      # cannot happen via the state machine; seal, never drop
            self._close_and_seal(writer, 'superseded', retry, closing)
        w = IncidentWriter(self.store.recording / incident_id, opened, self.cfg.fragment_s,
                           recipients=self._recipients)
        w.event(record)
        self._write_snapshot(w, snap)
        self._c.frames = w.frames
        self._c.events.append(f'incident {incident_id} opened ({record.get("reason")})')
        self._audit('incident_opened', incident_id=incident_id, reason=record.get('reason'),
                    command_id=record.get('command_id'),
                    encryption=self._encryption['scheme'])
        return w

    def _write_snapshot(self, w: IncidentWriter, snap: Snapshot) -> None:
        """The look-back, item by item: one record that cannot be written is counted and
        skipped; it never costs the incident the rest."""
        items: list[tuple[Callable[[Any], None], Any]] = \
            [(w.sensor, r) for r in snap.sensors] + [(w.video, p) for p in snap.video]
        for write, item in items:
            try:
                write(item)
            except OSError as exc:    # e.g. video.mp4 not creatable: the next keyframe retries
                self._c.disk_error = f'{exc.strerror or exc} (writing the look-back)'
            except Exception as exc:  # noqa: BLE001 - one item, whatever its fault
                self._item_error('open', exc)
        w.sync()

    def _item_error(self, kind: str, exc: BaseException) -> None:
        self._c.internal_errors += 1
        self._c.events.append(f'writer error during {kind}: {type(exc).__name__}: {exc}')

    def _over_cap(self, writer: IncidentWriter, closing: list[IncidentWriter],
                  pkt: VideoPacket, dropping: bool) -> bool:
        """True to drop this packet: the disk refuses bytes and what waits in memory is at
        the cap (the ring's byte limit). Dropped frames are counted in the status and in the
        incident's records (``lost``), never silently; writing resumes on a keyframe."""
        held = writer.pending_bytes + sum(w.pending_bytes for w in closing)
        over = held >= self.ring.max_bytes
        if dropping and not over and pkt.keyframe:
            return False
        if not dropping and not over:
            return False
        self._c.lost_frames += 1
        if not dropping:
            self._c.events.append(f'ERROR disk full and {held} bytes held in memory (cap '
                                  f'{self.ring.max_bytes}): dropping video until space '
                                  'returns; every dropped frame is counted')
        writer.event({'type': 'lost', 'frames': 1, 't': pkt.t, 'why': 'disk full, memory cap'})
        return True

    def _close_and_seal(self, writer: IncidentWriter, reason: str, retry: list[Path],
                        closing: list[IncidentWriter]) -> None:
        try:
            writer.close(reason)
        except OSError as exc:
            # Never abandon: the bytes are in memory and would be lost; the files on disk
            # are not the incident. Closed (and sealed) as soon as space returns.
            self._c.seal_failures += 1
            self._c.disk_error = f'{exc.strerror or exc} (closing {writer.dir.name})'
            self._c.events.append(f'ERROR incident {writer.dir.name}: cannot close: {exc}; '
                                  f'{writer.pending_bytes} bytes held in memory, sealed when '
                                  'space returns')
            if writer not in closing:
                closing.append(writer)
            return
        except Exception as exc:  # noqa: BLE001 - the muxer failed: what is on disk stays
            writer.abandon()
            self._item_error('close', exc)
            self._seal(writer.dir, recovered=True, retry=retry)   # repair what was written
            return
        self._seal(writer.dir, recovered=False, retry=retry)

    def _seal(self, directory: Path, recovered: bool, retry: list[Path]) -> None:
        try:
            target = seal(self.store, directory, self.key, self._ident, recovered,
                          now=self._clock(), wall_now=self._wall())
        except (OSError, ev.EvidenceError) as exc:   # the disk or the store: retried
            self._c.seal_failures += 1
            self._c.disk_error = f'{exc.strerror or exc} (sealing {directory.name})'
            self._c.events.append(f'ERROR incident {directory.name}: sealing failed, will '
                                  'retry: '
                                  f'{exc}')
            if directory not in retry:
                retry.append(directory)
            return
        except Exception as exc:  # noqa: BLE001 - this incident's own fault: set it aside
            if directory in retry:
                retry.remove(directory)
            self._quarantine(directory, exc)
            return
        if directory in retry:
            retry.remove(directory)
        self._c.sealed += 1
        self._c.recovered += int(recovered)
        self._c.last_sealed = target.name
        self._c.events.append(f'incident {target.name} sealed' +
                              (' (recovered)' if recovered else ''))
        self._log_seal(target, recovered)

    def _log_seal(self, target: Path, recovered: bool) -> None:
        """Ledger entry and audit line for a sealed incident (the seal already stands: a
        failure here is reported and healed by :meth:`_ensure_ledger` on the next start)."""
        try:
            data = (target / ev.MANIFEST).read_bytes()
            m = json.loads(data)
            seq, sha = int(m['sequence']), ev.sha256_bytes(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._log_error('ledger', exc)
            return
        now = self._clock()
        if self.ledger is not None:
            try:
                self.ledger.sealed(target.name, seq, sha, now, recovered=recovered)
            except (LogError, OSError) as exc:
                self._log_error('ledger', exc)
        self._audit('incident_recovered' if recovered else 'incident_sealed',
                    incident_id=target.name, sequence=seq, manifest_sha256=sha,
                    encryption=(m.get('encryption') or {}).get('scheme'),
                    incomplete_files=sorted(n for n, e in (m.get('files') or {}).items()
                                            if isinstance(e, dict) and
                                            e.get('complete') is False))

    def _ensure_ledger(self) -> None:
        """The chain head's seal is in the ledger (a crash may have come between them)."""
        if self.ledger is None:
            return
        head = self.store.chain_head()
        if head.sequence < 1:
            return
        recovered = False
        try:
            m = json.loads((self.store.spool / head.incident_id / ev.MANIFEST).read_text())
            recovered = bool(m.get('recovered'))
        except (OSError, ValueError):
            pass
        try:
            if self.ledger.ensure_sealed(head.incident_id, head.sequence, head.sha256,
                                         self._clock(), recovered=recovered) is not None:
                self._c.events.append(f'ledger: logged the seal of {head.incident_id} '
                                      '(missing after a crash)')
        except (LogError, OSError) as exc:
            self._log_error('ledger', exc)

    def _audit(self, action: str, **details: Any) -> None:
        if self.audit is None:
            return
        try:
            self.audit.append(action, self._clock(), **details)
        except (LogError, OSError) as exc:
            self._log_error('audit', exc)

    def _log_error(self, which: str, exc: BaseException) -> None:
        self._c.log_errors += 1
        self._c.events.append(f'{which} append failed: {type(exc).__name__}: {exc}')

    def _retry_closing(self, closing: list[IncidentWriter], retry: list[Path],
                       final: bool = False) -> None:
        """Finish closes the disk refused; seal each once every byte is on disk. ``final``
        (shutdown): what still cannot be written is left for recovery, said loudly."""
        for w in list(closing):
            try:
                w.close('')
            except OSError as exc:
                if final:
                    self._c.events.append(f'ERROR incident {w.dir.name}: shutdown with the '
                                          f'disk full ({exc}): {w.pending_bytes} bytes not '
                                          'written; recovery seals what is on disk')
                    w.abandon()
                    closing.remove(w)
                continue
            closing.remove(w)
            self._seal(w.dir, recovered=False, retry=retry)

    def _final_retry(self, retry: list[Path]) -> None:
        for d in list(retry):
            # A failed close means the video may lack its trailer: seal as recovered.
            self._seal(d, recovered=not (d / EVENTS).exists() or
                       not any(e.get('type') == 'close' for e in read_events(d / EVENTS)),
                       retry=retry)

    def _recover(self, retry: list[Path]) -> None:
        """Seal every crash-left incident on its own: one that fails never blocks the next."""
        self._c.quarantined = len(self.store.quarantined())
        self._ensure_ledger()
        for d in self.store.unsealed():
            self._c.events.append(f'incident {d.name}: unsealed after a crash, recovering')
            self._seal(d, recovered=True, retry=retry)

    def _quarantine(self, directory: Path, exc: BaseException) -> None:
        """Move a hopeless incident aside, kept whole with its reason; count and report it."""
        self._c.seal_failures += 1
        try:
            target = self.store.quarantine_incident(directory, 'seal', exc, self._wall())
        except OSError as qexc:
            self._c.disk_error = f'{qexc.strerror or qexc} (quarantining {directory.name})'
            self._c.events.append(f'incident {directory.name}: cannot be sealed '
                                  f'({type(exc).__name__}: {exc}) nor quarantined: {qexc}')
            return
        self._c.quarantined_now += 1
        self._c.quarantined = len(self.store.quarantined())
        self._audit('incident_quarantined', incident_id=directory.name,
                    error_type=type(exc).__name__, error=str(exc)[:500],
                    quarantine_dir=str(target))
        self._c.events.append(f'incident {directory.name}: quarantined in {target} '
                              f'({type(exc).__name__}: {exc})')

    def _check_disk(self) -> None:
        """Report disk pressure; never delete (the uploader alone prunes, after a remote
        re-verify). The recorder keeps writing as long as the disk takes bytes."""
        try:
            free = self.store.free_bytes()
            low = free < self.cfg.min_free_bytes
            if low and not self._c.disk_low:
                self._c.events.append(f'WARN disk low: {free} bytes free < {self.cfg.min_free_bytes}'
                                      '; recording goes on, nothing is deleted here')
            self._c.disk_low, self._c.free_bytes = low, free
        except OSError as exc:
            self._c.disk_error = f'{exc.strerror or exc} (checking free space)'
