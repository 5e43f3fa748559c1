"""Sealing: ``recording/<id>`` becomes a signed, hash-chained ``spool/<id>``.

Each step is safe to repeat after a crash. The manifest format is documented in
``core.evidence``. Encrypted incidents (``*.age``): the unit cannot decrypt, so a crash-left
file is sealed exactly as found (``plaintext`` null, ``complete`` false) and the agency
repairs after decrypting. Plaintext incidents: recovery never writes the clip a crash left:
when its tail is torn, the clip is renamed ``video.original.mp4`` (bytes untouched) and the
complete fragments are copied into a new ``video.mp4``; the manifest hashes both.

Time: the caller passes the seal's ROS and wall times; this module reads no clock. Stamps
in the lifecycle records are ROS time (the recorder's node clock; sim time under
``use_sim_time``), the open record pairs ROS and wall time once, and the manifest keeps
both where they differ (``clock``: ``ros`` or ``sim``; see ``core.evidence``).
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bodycam_ros.core import encryption
from bodycam_ros.core import evidence as ev
from bodycam_ros.core.fsio import fsync_dir
from bodycam_ros.core.mp4 import Mp4Error, probe, repair
from bodycam_ros.core.sidecar import JournalRead, SidecarError, read_journal, write_mcap
from bodycam_ros.core.spool.layout import (AGE, EVENTS, JOURNAL, JOURNAL_AGE, SENSORS,
                                           SENSORS_AGE, SENSORS_UNREADABLE, VIDEO, VIDEO_AGE,
                                           VIDEO_ORIGINAL, WORK_FILES)
from bodycam_ros.core.spool.store import EvidenceStore
from bodycam_ros.core.spool.writer import read_events


#: ``clock`` values: ROS time from the system clock (UNIX time), or from ``/clock``.
CLOCK_ROS, CLOCK_SIM = 'ros', 'sim'


class SealError(ValueError):
    """An incident whose records cannot become a manifest (a value no signed JSON can hold)."""


@dataclass(frozen=True)
class Identity:
    device_id: str
    officer_id: str
    software_version: str
    pre_event_s: float
    post_event_s: float
    #: The manifest's ``encryption`` for an incident whose open record does not say.
    encryption: tuple[tuple[str, str], ...] = (('scheme', ev.SCHEME_NONE),)


def _empty_reason(video: dict[str, Any], events: list[dict[str, Any]],
                  closed: dict[str, Any] | None, recovered: bool) -> str | None:
    """Why an incident holds no video (None when it does): never an unexplained empty."""
    if video.get('frame_count', 0):
        return None
    if not events:
        return 'no lifecycle records on disk (crash or full disk before the first write)'
    if closed is not None and not closed.get('frames') and not recovered:
        return 'no video frame arrived while the incident was open'
    if any(e.get('type') == 'lost' for e in events):
        return 'every frame was dropped: disk full with the memory cap reached'
    return 'recovered without any complete video fragment on disk'


def seal(store: EvidenceStore, directory: Path, key: Any, ident: Identity,
         recovered: bool, *, now: float, wall_now: float) -> Path:
    """Turn ``recording/<id>`` into a signed, chained ``spool/<id>``; return the new path.

    Steps, each safe to repeat after a crash: (0) read the lifecycle records (a bad one
    raises before any file is touched), (1) plaintext: repair the video into a copy if
    recovering, journal -> sensors.mcap; encrypted: measure the age files, drop the journal
    when the MCAP is complete, (2) manifest + signature (``key``: a ``keys.Signer``),
    (3) chain head (the commit point), (4) drop work files, (5) rename into the spool.
    ``now``: the recorder's ROS time, ``wall_now``: the wall clock (UNIX s), both at the seal.

    Raises:
        OSError: the disk (retry later). SealError, ValueError: this incident's own records
            cannot be sealed (quarantine it).
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
    meta = _lifecycle(events, opened, directory)
    incident_id = meta['incident_id']

    enc = opened.get('encryption') if isinstance(opened.get('encryption'), dict) else None
    if enc is None:
        enc = dict(ident.encryption)
        if any(p.name.endswith(AGE) for p in directory.iterdir()):
            enc = {'scheme': ev.SCHEME_AGE, 'recipient': dict(ident.encryption).get('recipient')}
    if enc.get('scheme') == ev.SCHEME_AGE:
        video, sensors, gps, start_t, end_t, files, recovery = _encrypted(
            directory, events, closed, vstart, recovered)
        enc = {'scheme': ev.SCHEME_AGE, 'recipient': enc.get('recipient')}
    else:
        video, sensors, gps, start_t, end_t, files, recovery = _plaintext(
            directory, closed, vstart, recovered)
        enc = {'scheme': ev.SCHEME_NONE}

    ros_minus_wall = meta['ros_minus_wall']
    sim = meta['clock'] == CLOCK_SIM
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
        'device_key_sha256': ev.sha256_bytes(key.public_key_bytes()),
        'encryption': enc,
        'triggers': meta['triggers'],
        'stops': meta['stops'],
        'pre_event_s': opened.get('pre_event_s', ident.pre_event_s),
        'post_event_s': opened.get('post_event_s', ident.post_event_s),
        'clock': meta['clock'],
        'start_time': start_t,
        'end_time': end_t,
        'start_ros_time': start_t,
        'end_ros_time': end_t,
        'start_iso': _iso(start_t),
        'end_iso': _iso(end_t),
        'wall_start_time': _wall(start_t, ros_minus_wall) if sim else None,
        'wall_end_time': _wall(end_t, ros_minus_wall) if sim else None,
        'opened_time': opened.get('wall_time'),
        'opened_ros_time': opened.get('ros_time'),
        'sealed_time': round(wall_now, 6),
        'sealed_ros_time': round(now, 6),
        'end_reason': closed.get('reason') if closed and not recovered else 'recovered',
        'frame_count': video.get('frame_count', 0),
        # Frames the recorder dropped (disk full with its memory cap reached): counted here.
        'lost_frames': sum(int(e.get('frames') or 0) for e in events if e.get('type') == 'lost'),
        'empty_reason': _empty_reason(video, events, closed, recovered),
        'video': video,
        'sensors': sensors,
        'gps_track': gps,
        'files': files,
        'recovered': bool(recovered),
        'recovery': recovery,
        'replay': opened.get('replay'),
    }
    sha = ev.sign_into(directory, manifest, key)
    os.chmod(directory, 0o700)
    ev.ChainHead(sha, head.sequence + 1, incident_id).write(store.chain_head_path)
    return _finish(store, directory)


def _plaintext(directory: Path, closed: dict[str, Any] | None,
               vstart: dict[str, Any] | None, recovered: bool) -> tuple:
    """Format-1 style files: repair the clip into a copy, the journal into sensors.mcap."""
    recovery: dict[str, Any] | None = None
    video: dict[str, Any] = {'present': False, 'frame_count': 0}
    vpath = directory / VIDEO
    if vpath.exists() or (directory / VIDEO_ORIGINAL).exists():
        if recovered or closed is None:
            recovery = _repair_video(directory)
            info = None
            if recovery['video_playable']:
                try:
                    info = probe(vpath)
                except Mp4Error as exc:
                    recovery['video_playable'] = False
                    recovery['video_error'] = str(exc)
            first_t = _number(vstart.get('t')) if vstart else None
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
            os.replace(jpath, directory / SENSORS_UNREADABLE)
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

    files = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name not in WORK_FILES and not path.name.startswith('.'):
            digest, size = ev.sha256_file(path)
            files[path.name] = {'sha256': digest, 'size': size,
                                'complete': path.name not in (VIDEO_ORIGINAL,
                                                              SENSORS_UNREADABLE)}
    return video, sensors, gps, start_t, end_t, files, recovery


def _encrypted(directory: Path, events: list[dict[str, Any]], closed: dict[str, Any] | None,
               vstart: dict[str, Any] | None, recovered: bool) -> tuple:
    """Age files as found: ciphertext hashes always, plaintext hashes only from the close
    record of a file whose ciphertext is still exactly what the writer closed."""
    closed_files = (closed or {}).get('files')
    closed_files = closed_files if isinstance(closed_files, dict) else {}

    def known(name: str) -> dict[str, Any] | None:
        info = closed_files.get(name)
        path = directory / name
        if not isinstance(info, dict) or not path.is_file():
            return None
        digest, size = ev.sha256_file(path)
        return info if (info.get('sha256'), info.get('size')) == (digest, size) else None

    recovery: dict[str, Any] | None = None
    if known(SENSORS_AGE) is not None:
        # The MCAP holds every message: the crash-safe journal has done its job.
        (directory / JOURNAL_AGE).unlink(missing_ok=True)
    files: dict[str, Any] = {}
    incomplete = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name in WORK_FILES or path.name.startswith('.'):
            continue
        digest, size = ev.sha256_file(path)
        entry: dict[str, Any] = {'sha256': digest, 'size': size}
        if path.name.endswith(AGE):
            info = known(path.name)
            chunks, torn = _chunks(path, size, complete=info is not None)
            entry.update({
                'plaintext': None if info is None else {
                    'name': path.name[:-len(AGE)], 'sha256': info['plaintext_sha256'],
                    'size': info['plaintext_size']},
                'chunks': chunks, 'torn_bytes': torn, 'complete': info is not None})
        else:                       # not written by this recorder: hashed, never judged
            entry['complete'] = False
        if not entry['complete']:
            incomplete.append(path.name)
        files[path.name] = entry
    if incomplete:
        recovery = {'encrypted': True, 'incomplete_files': incomplete,
                    'note': 'sealed as found: the unit cannot decrypt; the agency decrypts '
                            'every complete age chunk and repairs'}

    video: dict[str, Any] = {'present': False, 'frame_count': 0}
    if (directory / VIDEO_AGE).exists():
        if closed is not None and known(VIDEO_AGE) is not None:
            video = {'present': True, 'frame_count': closed.get('frames', 0),
                     'keyframes': closed.get('keyframes', 0), 'width': closed.get('width'),
                     'height': closed.get('height'), 'first_stamp': closed.get('first_t'),
                     'last_stamp': closed.get('last_t')}
        else:
            synced = next((e for e in reversed(events) if e.get('type') == 'synced'), {})
            video = {'present': True, 'frame_count': None, 'keyframes': None,
                     'width': vstart.get('width') if vstart else None,
                     'height': vstart.get('height') if vstart else None,
                     'first_stamp': _number(vstart.get('t')) if vstart else None,
                     'last_stamp': _number(synced.get('last_t')),
                     'frames_synced': synced.get('frames')}
        video['codec'] = 'h264'
        video['container'] = 'fragmented mp4'
    bag = (closed or {}).get('sensors') if known(SENSORS_AGE) is not None else None
    if isinstance(bag, dict):
        sensors = {k: bag.get(k) for k in ('messages', 'skipped_types', 'first_stamp',
                                           'last_stamp')}
        gps = bag.get('gps') if isinstance(bag.get('gps'), dict) else {'fixes': 0}
    else:
        sensors = {'messages': {}, 'first_stamp': None, 'last_stamp': None}
        gps = {'fixes': None}          # unknown: in the encrypted journal
    start_t = video.get('first_stamp')
    if start_t is None:
        start_t = _number(sensors.get('first_stamp'))
    ends = [t for t in (video.get('last_stamp'), _number(sensors.get('last_stamp')))
            if t is not None]
    end_t = max(ends) if ends else None
    return video, sensors, gps, start_t, end_t, files, recovery


def _chunks(path: Path, size: int, complete: bool) -> tuple[int, int]:
    """(whole age chunks incl. a final one when complete, torn bytes after them)."""
    try:
        lay = encryption.scan(path)
    except encryption.AgeError:
        return 0, size               # the header itself was cut: nothing decrypts
    if complete:
        return lay.full_chunks + 1, 0
    whole, torn = divmod(lay.size - lay.header_size - encryption.NONCE, encryption.CHUNK_CT)
    return whole, torn


def _lifecycle(events: list[dict[str, Any]], opened: dict[str, Any],
               directory: Path) -> dict[str, Any]:
    """The manifest fields taken from ``incident.jsonl``, checked before any file is touched:
    a value canonical JSON cannot hold (NaN, a string clock) raises SealError here."""
    triggers = [{'reason': e.get('reason'), 'time': e.get('trigger_time'),
                 'command_id': e.get('command_id'), 'received_time': e.get('received')}
                for e in events if e.get('type') == 'trigger']
    stops = [{'time': e.get('stop_time'), 'command_id': e.get('command_id'),
              'received_time': e.get('received')} for e in events if e.get('type') == 'stop']
    # Message stamps are ROS time; the open record pairs ROS and wall clocks once.
    try:
        ros_minus_wall = float(opened.get('ros_time', 0.0)) - \
            float(opened.get('wall_time', 0.0)) if opened else 0.0
    except (TypeError, ValueError) as exc:
        raise SealError(f'{directory.name}: open record clocks {opened.get("ros_time")!r}, '
                        f'{opened.get("wall_time")!r}: {exc}') from exc
    if not math.isfinite(ros_minus_wall):
        raise SealError(f'{directory.name}: open record clocks are not finite')
    clock = opened.get('clock', CLOCK_ROS)        # older open records: the system clock
    if clock not in (CLOCK_ROS, CLOCK_SIM):
        raise SealError(f'{directory.name}: open record clock {clock!r} is not '
                        f'{CLOCK_ROS!r} or {CLOCK_SIM!r}')
    incident_id = opened.get('incident_id', directory.name)
    if incident_id != directory.name:
        raise SealError(f'{directory.name}: open record names incident {incident_id!r}')
    fields = {'triggers': triggers, 'stops': stops, 'opened': opened}
    try:
        ev.canonical(fields)
    except (TypeError, ValueError) as exc:
        raise SealError(f'{directory.name}: {EVENTS} holds a value no manifest can: '
                        f'{exc}') from exc
    return {'incident_id': incident_id, 'triggers': triggers, 'stops': stops,
            'ros_minus_wall': ros_minus_wall, 'clock': clock}


def _repair_video(directory: Path) -> dict[str, Any]:
    """Make ``video.mp4`` end on a complete fragment without writing the crash's bytes.

    A torn clip is renamed ``video.original.mp4`` (one atomic rename: the bytes are never
    opened for writing) and its complete fragments copied into a new ``video.mp4``. Safe to
    repeat: if the original already exists it is the source.
    """
    vpath, original = directory / VIDEO, directory / VIDEO_ORIGINAL
    source = original if original.exists() else vpath
    tmp = directory / f'.{VIDEO}.repaired'
    rep = repair(source, tmp)
    out: dict[str, Any] = {'video_dropped_bytes': rep.dropped_bytes,
                           'video_fragments': rep.fragments, 'video_playable': rep.playable,
                           'video_original': None}
    if source == vpath and (not rep.playable or rep.dropped_bytes == 0):
        tmp.unlink(missing_ok=True)       # nothing to cut: the clip stays as it is
        return out
    if source == vpath:
        os.replace(vpath, original)
        fsync_dir(directory)
    out['video_original'] = VIDEO_ORIGINAL
    if rep.playable:
        os.replace(tmp, vpath)
    fsync_dir(directory)
    return out


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


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
    fsync_dir(store.spool)
    fsync_dir(store.recording)
    return target
