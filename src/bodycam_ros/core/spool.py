"""The evidence store and the recorder that fills it.

Layout under ``evidence_dir`` (the uploader reads ``spool/``; nothing else writes here)::

    recording/<incident_id>/   in progress: video.mp4, sensors.journal, incident.jsonl
    spool/<incident_id>/       sealed: video.mp4, sensors.mcap, manifest.json, manifest.sig
    keys/device_ed25519        the signing key (0600) and device_ed25519.pub
    chain_head                 the newest sealed manifest's hash and sequence
    pruned.jsonl               incidents deleted after a verified upload (chain links)

An incident moves recording -> sealed (one atomic rename) -> uploaded (``upload.json`` by the
uploader) -> prunable. Only uploaded incidents are ever deleted, oldest first, and only when
free space falls below the floor. :class:`Recorder` runs the IDLE / RECORDING / POST_ROLL
cycle; all file I/O happens on its own writer thread so ROS callbacks never wait on a disk.
"""
from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.mp4 import Fmp4Writer, Mp4Error, probe, repair
from bodycam_ros.core.ring import LookbackRing, SensorRecord, Snapshot, VideoPacket
from bodycam_ros.core.sidecar import (JournalRead, JournalWriter, SidecarError,
                                      read_journal, write_mcap)

VIDEO = 'video.mp4'
SENSORS = 'sensors.mcap'
JOURNAL = 'sensors.journal'
EVENTS = 'incident.jsonl'
#: Files that exist only while an incident records; sealing folds them into the manifest.
WORK_FILES = (JOURNAL, EVENTS)


class SpoolError(RuntimeError):
    """The evidence store cannot be used (layout, permissions, a corrupt incident)."""


# -- durable append-only files ----------------------------------------------------------------
class DurableFile:
    """An append-only file that never drops accepted bytes, even on a full disk.

    ``write`` always accepts; bytes the OS refuses (ENOSPC, EIO...) stay in memory and are
    retried by the next write or :meth:`sync`. The muxer writing through it therefore never
    sees an error mid-fragment, and nothing already on disk is touched.
    """

    CHUNK = 1 << 20

    def __init__(self, path: Path, write: Callable[[int, bytes], int] | None = None,
                 fsync: Callable[[int], None] | None = None) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._write, self._fsync = write or os.write, fsync or os.fsync
        self._pending = bytearray()
        self.error: OSError | None = None
        self.on_disk = os.fstat(self._fd).st_size
        self._synced = self.on_disk

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    @property
    def dirty(self) -> bool:
        return bool(self._pending) or self._synced != self.on_disk

    def write(self, data: bytes) -> int:
        self._pending += data
        self._drain()
        return len(data)

    def _drain(self) -> bool:
        while self._pending:
            try:
                n = self._write(self._fd, bytes(self._pending[:self.CHUNK]))
            except OSError as exc:
                self.error = exc
                return False
            del self._pending[:n]
            self.on_disk += n
        self.error = None
        return True

    def sync(self) -> bool:
        """Drain and fsync; True when every accepted byte is durable."""
        if not self._drain():
            return False
        if self._synced != self.on_disk:
            try:
                self._fsync(self._fd)
            except OSError as exc:
                self.error = exc
                return False
            self._synced = self.on_disk
        return True

    def close(self) -> None:
        """Sync and close; raises the disk's error if bytes are still pending."""
        if self._fd < 0:
            return
        if not self.sync():
            assert self.error is not None
            raise self.error
        os.close(self._fd)
        self._fd = -1

    def abandon(self) -> None:
        """Close without syncing (shutdown with a full disk: recovery takes what is there)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


# -- the store --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SealedIncident:
    incident_id: str
    path: Path
    sequence: int
    sealed_time: float
    uploaded: bool
    size: int


def dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


class EvidenceStore:
    """The evidence directory: layout, the chain head, sealing commits, disk pressure.

    Args:
        root: the evidence directory.
        quota_bytes: if > 0, evidence may use at most this much (e.g. a share of an SD card);
            free space is then the smaller of the disk's and the quota's.
        disk_free: how free bytes are measured (the filesystem by default).
    """

    def __init__(self, root: Path, quota_bytes: int = 0,
                 disk_free: Callable[[Path], int] | None = None) -> None:
        self.root = Path(root)
        self.recording = self.root / 'recording'
        self.spool = self.root / 'spool'
        self.keys = self.root / 'keys'
        self.quota_bytes = quota_bytes
        self._disk_free = disk_free or (lambda p: shutil.disk_usage(p).free)
        for d in (self.root, self.recording, self.spool):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_fd = -1

    def lock(self) -> None:
        """Claim the store for this process (released when it exits, however it exits).

        Two recorders on one store would each take the other's open incident for a crashed
        one and seal it under their feet.

        Raises:
            SpoolError: another live process holds the store.
        """
        import fcntl
        fd = os.open(self.root / '.recorder.lock', os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(f'{self.root} is in use by another recorder process') from None
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)   # closing the descriptor releases the flock
            self._lock_fd = -1

    @property
    def chain_head_path(self) -> Path:
        return self.root / ev.CHAIN_HEAD

    def chain_head(self) -> ev.ChainHead:
        return ev.ChainHead.read(self.chain_head_path)

    def free_bytes(self) -> int:
        free = self._disk_free(self.root)
        if self.quota_bytes > 0:
            free = min(free, self.quota_bytes - dir_size(self.root))
        return free

    def unsealed(self) -> list[Path]:
        return sorted((p for p in self.recording.iterdir() if p.is_dir()),
                      key=lambda p: (p.stat().st_mtime, p.name))

    def sealed(self) -> list[SealedIncident]:
        """Sealed incidents, oldest (lowest sequence) first."""
        out = []
        for d in self.spool.iterdir():
            if not d.is_dir() or d.name.startswith('.'):
                continue
            try:
                m = json.loads((d / ev.MANIFEST).read_text())
                seq, sealed_t = int(m['sequence']), float(m.get('sealed_time', 0.0))
            except (OSError, ValueError, KeyError, TypeError):
                continue   # half-copied or foreign: never a candidate for deletion
            out.append(SealedIncident(d.name, d, seq, sealed_t, self.uploaded(d), dir_size(d)))
        return sorted(out, key=lambda s: s.sequence)

    @staticmethod
    def uploaded(directory: Path) -> bool:
        """The uploader's mark: ``upload.json`` with ``"verified": true``."""
        try:
            return json.loads((directory / ev.UPLOAD_MARK).read_text()).get('verified') is True
        except (OSError, ValueError, AttributeError):
            return False

    def prune(self, min_free: int) -> list[str]:
        """Delete uploaded incidents, oldest first, until ``min_free`` bytes are free.

        Each deletion is logged (with its chain link) in ``pruned.jsonl`` first, so the
        chain of what remains still verifies. Never touches anything not uploaded.
        """
        removed: list[str] = []
        for inc in self.sealed():
            if self.free_bytes() >= min_free:
                break
            if not inc.uploaded:
                continue
            sha = ev.sha256_bytes((inc.path / ev.MANIFEST).read_bytes())
            ev.prune_incident(self.root, inc.path, inc.incident_id, inc.sequence, sha)
            removed.append(inc.incident_id)
        return removed


# -- one incident being written ---------------------------------------------------------------
class IncidentWriter:
    """The files of one incident in ``recording/``; used only by the writer thread."""

    def __init__(self, directory: Path, open_record: dict[str, Any], fragment_s: float) -> None:
        directory.mkdir(parents=True, exist_ok=False)
        ev.fsync_dir(directory.parent)
        self.dir = directory
        self._fragment_s = fragment_s
        self._events = DurableFile(directory / EVENTS)
        self._journal_file = DurableFile(directory / JOURNAL)
        self._journal = JournalWriter(self._journal_file)
        self._video_file: DurableFile | None = None
        self._mp4: Fmp4Writer | None = None
        self._last_sync = time.monotonic()
        self.sync_s = 0.0            # time spent in fsync (for the benchmark)
        self.syncs = 0
        self.video_errors = 0
        self.event(open_record)

    @property
    def frames(self) -> int:
        return self._mp4.frames if self._mp4 else 0

    @property
    def pending_bytes(self) -> int:
        files = [self._events, self._journal_file, self._video_file]
        return sum(f.pending_bytes for f in files if f is not None)

    @property
    def disk_error(self) -> OSError | None:
        for f in (self._video_file, self._journal_file, self._events):
            if f is not None and f.error is not None:
                return f.error
        return None

    def event(self, record: dict[str, Any]) -> None:
        """Append one lifecycle record (open, trigger, stop, close) durably."""
        self._events.write((json.dumps(record, sort_keys=True) + '\n').encode())
        self._events.sync()

    def video(self, pkt: VideoPacket) -> None:
        if self._mp4 is None:
            if not pkt.keyframe:
                return
            self._video_file = DurableFile(self.dir / VIDEO)
            self._mp4 = Fmp4Writer(self._video_file, self._fragment_s)
        first = not self._mp4.started
        try:
            boundary = self._mp4.write(pkt)
        except Mp4Error:
            self.video_errors += 1
            return
        if first and self._mp4.started:
            self.event({'type': 'video_start', 't': pkt.t, 'width': self._mp4.width,
                        'height': self._mp4.height})
        if boundary:
            self.sync()

    def sensor(self, rec: SensorRecord) -> None:
        self._journal.write(rec)

    def maybe_sync(self) -> None:
        """Bounded loss without video too: sync at least every fragment_s."""
        if time.monotonic() - self._last_sync >= self._fragment_s:
            self.sync()

    def sync(self) -> None:
        t0 = time.perf_counter()
        dirty = [f for f in (self._video_file, self._journal_file) if f is not None and f.dirty]
        for f in dirty:
            f.sync()
        if dirty:
            self.sync_s += time.perf_counter() - t0
            self.syncs += 1
        self._last_sync = time.monotonic()

    def close(self, end_reason: str) -> None:
        """Finish the MP4 (last fragment, trailer) and make everything durable.

        Raises OSError when the disk still refuses bytes; then nothing is lost: the files
        stay as they are in recording/ and sealing is retried (or done by recovery)."""
        if self._mp4 is not None:
            mp4 = self._mp4
            if mp4.started:
                mp4.close()
            self.event({'type': 'close', 'reason': end_reason, 'frames': mp4.frames,
                        'keyframes': mp4.keyframes, 'first_t': mp4.first_t,
                        'last_t': mp4.last_t, 'width': mp4.width, 'height': mp4.height})
            self._mp4 = None
        else:
            self.event({'type': 'close', 'reason': end_reason, 'frames': 0})
        for f in (self._video_file, self._journal_file, self._events):
            if f is not None:
                f.close()

    def abandon(self) -> None:
        for f in (self._video_file, self._journal_file, self._events):
            if f is not None:
                f.abandon()


# -- sealing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    device_id: str
    officer_id: str
    software_version: str
    pre_event_s: float
    post_event_s: float


def read_events(path: Path) -> list[dict[str, Any]]:
    """Lifecycle records; a torn last line (crash mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors='replace').splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def seal(store: EvidenceStore, directory: Path, key: ev.DeviceKey, ident: Identity,
         recovered: bool) -> Path:
    """Turn ``recording/<id>`` into a signed, chained ``spool/<id>``; return the new path.

    Steps, each safe to repeat after a crash: (1) repair the video if recovering, (2)
    journal -> sensors.mcap, (3) manifest + signature, (4) chain head (the commit point),
    (5) drop work files, (6) rename into the spool.
    """
    head = store.chain_head()
    manifest_path = directory / ev.MANIFEST
    if manifest_path.exists():
        if ev.sha256_bytes(manifest_path.read_bytes()) == head.sha256:
            return _finish(store, directory)   # committed before a crash: only move it
        for name in (ev.MANIFEST, ev.SIGNATURE):
            (directory / name).unlink(missing_ok=True)
    for tmp in directory.glob('.*'):           # half-written temp files of an interrupted seal
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()

    events = read_events(directory / EVENTS)
    opened = next((e for e in events if e.get('type') == 'open'), {})
    closed = next((e for e in reversed(events) if e.get('type') == 'close'), None)
    vstart = next((e for e in events if e.get('type') == 'video_start'), None)
    incident_id = opened.get('incident_id', directory.name)
    recovery: dict[str, Any] | None = None

    video: dict[str, Any] = {'present': False, 'frame_count': 0}
    vpath = directory / VIDEO
    if vpath.exists():
        if recovered or closed is None:
            rep = repair(vpath)
            recovery = {'video_dropped_bytes': rep.dropped_bytes,
                        'video_fragments': rep.fragments, 'video_playable': rep.playable}
            info = None
            if rep.playable:
                try:
                    info = probe(vpath)
                except Mp4Error:
                    recovery['video_playable'] = False
            first_t = vstart['t'] if vstart else None
            video = {'present': True, 'frame_count': info.frames if info else 0,
                     'keyframes': info.keyframes if info else 0,
                     'width': info.width if info else None,
                     'height': info.height if info else None,
                     'first_stamp': first_t,
                     'last_stamp': (first_t + info.duration_s) if (first_t is not None and
                                                                    info) else None}
        else:
            video = {'present': True, 'frame_count': closed.get('frames', 0),
                     'keyframes': closed.get('keyframes', 0), 'width': closed.get('width'),
                     'height': closed.get('height'), 'first_stamp': closed.get('first_t'),
                     'last_stamp': closed.get('last_t')}
        video['codec'] = 'h264'
        video['container'] = 'fragmented mp4'

    sensors: dict[str, Any] = {'messages': {}}
    gps: dict[str, Any] = {'fixes': 0}
    jpath = directory / JOURNAL
    start_t = video.get('first_stamp')
    end_t = video.get('last_stamp')
    if jpath.exists():
        try:
            jr = read_journal(jpath)
        except SidecarError:
            # Not ours to judge or drop: keep the bytes as they are, hashed and signed.
            os.replace(jpath, directory / 'sensors.unreadable')
            jr = JournalRead([], 0)
            recovery = (recovery or {}) | {'sensor_journal_unreadable': True}
        if jr.torn_bytes:
            recovery = (recovery or {}) | {'sensor_journal_torn_bytes': jr.torn_bytes}
        if jr.records:
            bag = write_mcap(jr.records, directory / SENSORS)
            sensors = {'messages': bag.messages, 'skipped_types': bag.skipped,
                       'first_stamp': bag.start_t, 'last_stamp': bag.end_t}
            gps = bag.gps.as_dict()
            if start_t is None:
                start_t = bag.start_t
            end_t = max(t for t in (end_t, bag.end_t) if t is not None)

    triggers = [{'reason': e.get('reason'), 'time': e.get('trigger_time'),
                 'command_id': e.get('command_id'), 'received_time': e.get('received')}
                for e in events if e.get('type') == 'trigger']
    stops = [{'time': e.get('stop_time'), 'command_id': e.get('command_id'),
              'received_time': e.get('received')} for e in events if e.get('type') == 'stop']
    # Message stamps are ROS time; the open record pairs ROS and wall clocks once.
    ros_minus_wall = float(opened.get('ros_time', 0.0)) - float(opened.get('wall_time', 0.0)) \
        if opened else 0.0
    files = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name not in WORK_FILES and not path.name.startswith('.'):
            digest, size = ev.sha256_file(path)
            files[path.name] = {'sha256': digest, 'size': size}
    manifest = {
        'format': ev.FORMAT,
        'incident_id': incident_id,
        'sequence': head.sequence + 1,
        'prev_manifest_sha256': head.sha256,
        'prev_incident_id': head.incident_id or None,
        'device_id': opened.get('device_id', ident.device_id),
        'officer_id': opened.get('officer_id', ident.officer_id),
        'software': {'name': 'bodycam_ros',
                     'version': opened.get('software_version', ident.software_version)},
        'device_public_key': ev.public_key_field(key),
        'device_key_sha256': key.fingerprint,
        'triggers': triggers,
        'stops': stops,
        'pre_event_s': opened.get('pre_event_s', ident.pre_event_s),
        'post_event_s': opened.get('post_event_s', ident.post_event_s),
        'start_time': _wall(start_t, ros_minus_wall),
        'end_time': _wall(end_t, ros_minus_wall),
        'start_ros_time': start_t,
        'end_ros_time': end_t,
        'start_iso': _iso(_wall(start_t, ros_minus_wall)),
        'end_iso': _iso(_wall(end_t, ros_minus_wall)),
        'opened_time': opened.get('wall_time'),
        'sealed_time': time.time(),
        'end_reason': closed.get('reason') if closed and not recovered else 'recovered',
        'frame_count': video.get('frame_count', 0),
        'video': video,
        'sensors': sensors,
        'gps_track': gps,
        'files': files,
        'recovered': bool(recovered),
        'recovery': recovery,
    }
    sha = ev.sign_into(directory, manifest, key)
    ev.ChainHead(sha, head.sequence + 1, incident_id).write(store.chain_head_path)
    return _finish(store, directory)


def _wall(t: float | None, ros_minus_wall: float) -> float | None:
    return None if t is None else round(t - ros_minus_wall, 6)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t)) + f'.{int(t % 1 * 1000):03d}Z'


def _finish(store: EvidenceStore, directory: Path) -> Path:
    for name in WORK_FILES:
        (directory / name).unlink(missing_ok=True)
    target = store.spool / directory.name
    os.replace(directory, target)
    ev.fsync_dir(store.spool)
    ev.fsync_dir(store.recording)
    return target


# -- the recorder -----------------------------------------------------------------------------
class State(str, Enum):
    IDLE = 'IDLE'
    RECORDING = 'RECORDING'
    POST_ROLL = 'POST_ROLL'


@dataclass(frozen=True)
class Command:
    """A ``recorder/command`` as the node decoded it."""
    kind: str                 # start | stop
    reason: str
    trigger_time: float       # UNIX s; for a stop, when the trigger ended
    command_id: str
    received: float           # node clock (ROS time) at reception, s


@dataclass(frozen=True)
class RecorderConfig:
    pre_event_s: float = 120.0
    post_event_s: float = 30.0
    fragment_s: float = 1.0
    min_free_bytes: int = 500 << 20
    disk_check_s: float = 1.0
    device_id: str = 'unit'
    officer_id: str = 'unassigned'
    software_version: str = '0'


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
    pruned: int
    last_sealed: str
    disk_error: str              # '' when fine
    disk_low: bool
    seal_failures: int
    sync_ms_mean: float
    writer_errors: int           # unexpected errors the writer thread survived


@dataclass
class _Counters:
    sealed: int = 0
    recovered: int = 0
    pruned: int = 0
    seal_failures: int = 0
    internal_errors: int = 0
    last_sealed: str = ''
    disk_error: str = ''
    disk_low: bool = False
    free_bytes: int = -1
    frames: int = 0
    pending: int = 0
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

    def __init__(self, store: EvidenceStore, ring: LookbackRing, key: ev.DeviceKey,
                 config: RecorderConfig, clock: Callable[[], float] = time.time) -> None:
        self.store, self.ring, self.key, self.cfg = store, ring, key, config
        self._clock = clock
        self._ident = Identity(config.device_id, config.officer_id, config.software_version,
                               config.pre_event_s, config.post_event_s)
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
        """Lifecycle lines (opened, sealed, recovered, pruned, disk) since the last call."""
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

    def _open(self, cmd: Command, record: dict[str, Any]) -> str:
        snap = self.ring.snapshot(cmd.trigger_time, self.cfg.pre_event_s)
        self._incident_id = str(uuid.uuid4())
        self._state = State.RECORDING
        self._triggers = [cmd.reason]
        opened = {'type': 'open', 'incident_id': self._incident_id,
                  'device_id': self.cfg.device_id, 'officer_id': self.cfg.officer_id,
                  'software_version': self.cfg.software_version,
                  'pre_event_s': self.cfg.pre_event_s, 'post_event_s': self.cfg.post_event_s,
                  'wall_time': time.time(), 'ros_time': cmd.received,
                  'clip_start': snap.start_t}
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
            self._jobs.qsize(), c.pending, c.sealed, c.recovered, c.pruned, c.last_sealed,
            c.disk_error, c.disk_low, c.seal_failures,
            1000.0 * c.sync_s / c.syncs if c.syncs else 0.0, c.internal_errors)

    def _put(self, kind: str, payload: Any) -> None:
        self._jobs.put((kind, payload))

    # -- the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        writer: IncidentWriter | None = None
        retry: list[Path] = []       # closed incidents whose sealing failed (disk full)
        next_check = 0.0
        next_retry = 0.0
        while True:
            try:
                kind, payload = self._jobs.get(timeout=0.2)
            except queue.Empty:
                kind, payload = 'idle', None
            try:
                if kind == 'video' and writer is not None:
                    writer.video(payload)
                    self._c.frames = writer.frames
                elif kind == 'sensor' and writer is not None:
                    writer.sensor(payload)
                elif kind == 'event' and writer is not None:
                    writer.event(payload)
                elif kind == 'open':
                    writer = self._open_incident(payload, writer, retry)
                elif kind == 'seal' and writer is not None:
                    self._close_and_seal(writer, payload, retry)
                    writer = None
                elif kind == 'recover':
                    self._recover(retry)
                elif kind == 'quit':
                    self._final_retry(retry)
                    return
            except OSError as exc:    # the disk: reported, never fatal, nothing deleted
                self._c.disk_error = f'{exc.strerror or exc} ({kind})'
                self._c.events.append(f'disk error during {kind}: {exc}')
            except Exception as exc:  # noqa: BLE001 - this thread must outlive any one bug
                self._c.internal_errors += 1
                self._c.events.append(f'writer error during {kind}: {type(exc).__name__}: '
                                      f'{exc}')
            if writer is not None:
                writer.maybe_sync()
                self._c.pending = writer.pending_bytes
                err = writer.disk_error
                self._c.disk_error = f'{err.strerror or err}' if err else \
                    ('' if not retry else self._c.disk_error)
                self._c.sync_s, self._c.syncs = writer.sync_s, writer.syncs
            now = time.monotonic()
            if now >= next_check:
                next_check = now + self.cfg.disk_check_s
                self._check_disk()
            if retry and now >= next_retry:
                next_retry = now + 5.0
                self._final_retry(retry)

    def _open_incident(self, payload: tuple, writer: IncidentWriter | None,
                       retry: list[Path]) -> IncidentWriter:
        incident_id, opened, snap, record = payload
        if writer is not None:      # cannot happen via the state machine; seal, never drop
            self._close_and_seal(writer, 'superseded', retry)
        w = IncidentWriter(self.store.recording / incident_id, opened, self.cfg.fragment_s)
        w.event(record)
        self._write_snapshot(w, snap)
        self._c.frames = w.frames
        self._c.events.append(f'incident {incident_id} opened ({record.get("reason")})')
        return w

    @staticmethod
    def _write_snapshot(w: IncidentWriter, snap: Snapshot) -> None:
        for rec in snap.sensors:
            w.sensor(rec)
        for pkt in snap.video:
            w.video(pkt)
        w.sync()

    def _close_and_seal(self, writer: IncidentWriter, reason: str, retry: list[Path]) -> None:
        try:
            writer.close(reason)
        except OSError as exc:
            writer.abandon()
            self._c.seal_failures += 1
            self._c.disk_error = f'{exc.strerror or exc} (closing {writer.dir.name})'
            retry.append(writer.dir)
            return
        self._seal(writer.dir, recovered=False, retry=retry)

    def _seal(self, directory: Path, recovered: bool, retry: list[Path]) -> None:
        try:
            target = seal(self.store, directory, self.key, self._ident, recovered)
        except (OSError, ev.EvidenceError) as exc:
            self._c.seal_failures += 1
            self._c.disk_error = f'{exc.strerror or exc} (sealing {directory.name})'
            self._c.events.append(f'incident {directory.name}: sealing failed, will retry: '
                                  f'{exc}')
            if directory not in retry:
                retry.append(directory)
            return
        if directory in retry:
            retry.remove(directory)
        self._c.sealed += 1
        self._c.recovered += int(recovered)
        self._c.last_sealed = target.name
        self._c.events.append(f'incident {target.name} sealed' +
                              (' (recovered)' if recovered else ''))

    def _final_retry(self, retry: list[Path]) -> None:
        for d in list(retry):
            # A failed close means the video may lack its trailer: seal as recovered.
            self._seal(d, recovered=not (d / EVENTS).exists() or
                       not any(e.get('type') == 'close' for e in read_events(d / EVENTS)),
                       retry=retry)

    def _recover(self, retry: list[Path]) -> None:
        for d in self.store.unsealed():
            self._c.events.append(f'incident {d.name}: unsealed after a crash, recovering')
            self._seal(d, recovered=True, retry=retry)

    def _check_disk(self) -> None:
        try:
            free = self.store.free_bytes()
            if free < self.cfg.min_free_bytes:
                pruned = self.store.prune(self.cfg.min_free_bytes)
                self._c.pruned += len(pruned)
                for inc in pruned:
                    self._c.events.append(f'incident {inc} deleted (uploaded; disk pressure)')
                free = self.store.free_bytes() if pruned else free
            low = free < self.cfg.min_free_bytes
            if low and not self._c.disk_low:
                self._c.events.append(f'disk low: {free} bytes free < {self.cfg.min_free_bytes};'
                                      ' no uploaded incident left to delete')
            self._c.disk_low, self._c.free_bytes = low, free
        except OSError as exc:
            self._c.disk_error = f'{exc.strerror or exc} (checking free space)'
