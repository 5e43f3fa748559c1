"""Replaying a rosbag2 into the graph: what to play, on which topic, with which QoS, and when.

Pure (no ROS): reads rosbag2 MCAP and sqlite3 bags with ``rosbags`` (a directory with
``metadata.yaml``, a bare ``.mcap`` such as an incident's ``sensors.mcap``, or a bare
``.db3`` from before metadata files existed), normalises legacy type names
(``sensor_msgs/Imu`` -> ``sensor_msgs/msg/Imu``), filters and remaps topics, and computes the
playback schedule. ``bodycam replay`` (commands/replay.py) does the publishing.

Timing: a message recorded at bag time ``t`` is due ``(t - t_first) / rate`` seconds after
playback starts; ``/clock`` carries the bag time reached so far, never past the next message
that has not been published yet (so a node's clock never runs ahead of its input when the
player falls behind at a high rate).
"""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import NamedTuple

__all__ = ['GRAPH_INPUTS', 'GRAPH_OUTPUTS', 'Bag', 'BagMessage', 'BagTopic', 'PlayTopic',
           'Plan', 'QosKind', 'ReplayError', 'bag_sha256', 'clock_ns', 'due_s',
           'graph_relative', 'normalize_type', 'parse_remap', 'plan', 'qos_kind']


class ReplayError(ValueError):
    """A bag, topic, remap or rate that cannot be replayed; the message names it."""


class QosKind(str, Enum):
    """What the graph's subscribers expect on a topic (rosutil's profiles)."""
    SENSOR = 'sensor'        # best effort: imu, gps, images
    LATCHED = 'latched'      # reliable, transient local: holster, dispatch, alerts
    RELIABLE = 'reliable'    # commands, triggers
    VIDEO = 'video'          # camera/h264


#: Topics the graph consumes from its sensors (relative names) and the QoS it expects.
GRAPH_INPUTS: dict[str, QosKind] = {
    'imu/data': QosKind.SENSOR,
    'gps/fix': QosKind.SENSOR,
    'gps/vel': QosKind.SENSOR,
    'holster/weapon_drawn': QosKind.LATCHED,
    'dispatch/destination': QosKind.LATCHED,
    'camera/h264': QosKind.VIDEO,
}
#: What the graph itself decides or reports: a bag's copies are evidence of the ORIGINAL
#: run and are never fed back in by default (they would drive the recorder directly).
GRAPH_OUTPUTS: dict[str, QosKind] = {
    'bodycam/triggers': QosKind.RELIABLE,
    'bodycam/alerts': QosKind.LATCHED,
    'recorder/command': QosKind.RELIABLE,
    'recorder/status': QosKind.SENSOR,
    'uploader/status': QosKind.SENSOR,
    'bodycam/peer_alert': QosKind.LATCHED,
    'diagnostics': QosKind.RELIABLE,
    'clock': QosKind.SENSOR,
}
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
_TYPE = re.compile(r'^([A-Za-z][\w]*)/(?:(msg)/)?([A-Za-z][\w]*)$')
_TOPIC = re.compile(r'^/?[A-Za-z~{][\w/{}~]*$')


def normalize_type(name: str) -> str:
    """The ROS 2 type name: ``sensor_msgs/Imu`` (Crystal/Dashing bags) -> ``sensor_msgs/msg/Imu``.

    Raises:
        ReplayError: not a message type name (services, actions and junk are refused).
    """
    m = _TYPE.match(name.strip())
    if not m:
        raise ReplayError(f'message type {name!r} is not pkg/msg/Name or legacy pkg/Name')
    return f'{m.group(1)}/msg/{m.group(3)}'


def graph_relative(topic: str) -> str | None:
    """The graph topic (relative name) a bag topic carries, namespace ignored, else None.

    ``/imu/data`` and ``/unit_a/imu/data`` are both ``imu/data``.
    """
    name = '/' + topic.strip('/')
    for rel in (*GRAPH_INPUTS, *GRAPH_OUTPUTS):
        if name == '/' + rel or name.endswith('/' + rel):
            return rel
    return None


def qos_kind(topic: str, msgtype: str = '') -> QosKind:
    """The QoS the graph expects on ``topic``; sensors (and unknown topics) best effort.

    Images are offered reliable: a reliable offer matches best-effort subscribers too, and a
    reliable one (a camera ``source: topic``) then gets every frame of a 1 MB raw image,
    whose fragments best effort loses on a loaded machine (measured here: 1 in 3 runs).
    """
    rel = graph_relative(topic)
    if rel is not None:
        return {**GRAPH_INPUTS, **GRAPH_OUTPUTS}[rel]
    return QosKind.VIDEO if msgtype in IMAGE_TYPES else QosKind.SENSOR


def parse_remap(text: str) -> tuple[str, str]:
    """``FROM:=TO`` (as ``ros2 bag play --remap``) -> absolute (FROM, TO)."""
    src, sep, dst = text.partition(':=')
    if not sep or not _TOPIC.match(src) or not _TOPIC.match(dst):
        raise ReplayError(f'remap {text!r} is not FROM:=TO with two topic names')
    return '/' + src.strip('/'), '/' + dst.strip('/')


def due_s(t_ns: int, first_ns: int, rate: float) -> float:
    """Seconds after playback starts at which a message of bag time ``t_ns`` is published."""
    return (t_ns - first_ns) / 1e9 / rate


def clock_ns(first_ns: int, elapsed_s: float, rate: float, next_ns: int | None) -> int:
    """The ``/clock`` value ``elapsed_s`` into playback: bag time reached, capped at the next
    unpublished message (``None`` at the end of the bag)."""
    t = first_ns + int(round(elapsed_s * rate * 1e9))
    return t if next_ns is None else min(t, next_ns)


def check_rate(rate: float) -> float:
    if not (rate > 0.0 and math.isfinite(rate)):
        raise ReplayError(f'rate {rate!r} must be a finite number > 0 (1 = recorded speed)')
    return float(rate)


def bag_sha256(path: Path) -> str:
    """SHA-256 of a bag file; of a bag directory, over its files' names and hashes in order.

    What a replayed incident's manifest names, so the exact input can be found again.
    """
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    if not path.is_dir():
        raise ReplayError(f'bag {str(path)!r} does not exist')
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob('*') if p.is_file()):
        h.update(f'{f.relative_to(path).as_posix()}\0{_file_sha256(f)}\n'.encode())
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class BagTopic:
    name: str           # as recorded
    msgtype: str        # normalised: pkg/msg/Name
    bag_type: str       # as the bag spells it (legacy bags: pkg/Name)
    count: int


class BagMessage(NamedTuple):
    topic: str          # as recorded
    t_ns: int           # bag (receive) time
    data: bytes         # CDR


class Bag:
    """A rosbag2 opened for reading: a directory, a bare ``.mcap`` or a bare ``.db3``.

    Use as a context manager; :meth:`messages` yields in bag-time order.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ReplayError(f'bag {str(self.path)!r} does not exist')
        if self.path.is_file() and self.path.suffix not in ('.mcap', '.db3'):
            raise ReplayError(f'bag {str(self.path)!r}: expected a rosbag2 directory, '
                              'a .mcap or a .db3 file')
        self._reader = None
        self.topics: list[BagTopic] = []
        self.start_ns = self.end_ns = 0

    def __enter__(self) -> Bag:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        from rosbags.rosbag2 import Reader, ReaderError
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except (ReaderError, FileNotFoundError, OSError, ValueError) as exc:
            self._reader = None
            raise ReplayError(f'bag {str(self.path)!r} is not a readable rosbag2: '
                              f'{exc}') from exc
        topics: dict[str, BagTopic] = {}
        for c in self._reader.connections:
            try:
                msgtype = normalize_type(c.msgtype)
            except ReplayError:
                msgtype = c.msgtype          # kept; plan() skips it with the reason
            old = topics.get(c.topic)
            count = c.msgcount + (old.count if old else 0)
            topics[c.topic] = BagTopic(c.topic, msgtype, c.msgtype, count)
        self.topics = sorted(topics.values(), key=lambda t: t.name)
        self.start_ns, self.end_ns = self._reader.start_time, self._reader.end_time

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    def messages(self, topics: Iterable[str] = (), start_ns: int | None = None
                 ) -> Iterator[BagMessage]:
        """Messages of ``topics`` (all if empty) at or after ``start_ns``, in time order."""
        if self._reader is None:
            raise ReplayError(f'bag {str(self.path)!r} is not open')
        wanted = set(topics)
        conns = [c for c in self._reader.connections if not wanted or c.topic in wanted]
        if wanted and not conns:
            return
        for conn, t, data in self._reader.messages(conns, start=start_ns):
            yield BagMessage(conn.topic, t, bytes(data))


@dataclass(frozen=True)
class PlayTopic:
    src: str            # in the bag
    dst: str            # published on
    msgtype: str        # pkg/msg/Name
    qos: QosKind
    count: int


@dataclass(frozen=True)
class Plan:
    play: tuple[PlayTopic, ...]
    skipped: tuple[tuple[str, str], ...]    # (bag topic, why)

    def by_src(self) -> dict[str, PlayTopic]:
        return {p.src: p for p in self.play}


def plan(topics: Sequence[BagTopic], *, include: Sequence[str] = (),
         remap: Sequence[tuple[str, str]] = (), inputs_only: bool = False,
         namespace: str = '', known_type=lambda _t: True) -> Plan:
    """Which bag topics to play, where, and with which QoS.

    Args:
        include: play only these bag topics (leading '/' optional); empty = all.
        remap: (FROM, TO) pairs, applied to the bag name before anything else.
        inputs_only: play only the graph's sensor inputs (``bodycam run --replay``), each
            moved under ``namespace``; the bag's triggers, alerts and commands are skipped.
        known_type: whether this machine has a Python class for a type (``pkg.msg``).
    """
    want = {'/' + t.strip('/') for t in include}
    remaps = dict(remap)
    missing = want - {t.name for t in topics}
    if missing:
        raise ReplayError(f'topic(s) {", ".join(sorted(missing))} not in the bag; it has '
                          f'{", ".join(t.name for t in topics) or "none"}')
    play, skipped = [], []
    for t in topics:
        if want and t.name not in want:
            skipped.append((t.name, 'not in --topics'))
            continue
        if not _TYPE.match(t.bag_type.strip()):
            skipped.append((t.name, f'type {t.bag_type!r} is not a message type'))
            continue
        if not known_type(t.msgtype):
            skipped.append((t.name, f'unknown type {t.bag_type!r} (no Python package '
                                    f'{t.msgtype.split("/")[0]} here)'))
            continue
        dst = remaps.get(t.name, t.name)
        rel = graph_relative(dst)
        if inputs_only:
            if rel is None or rel not in GRAPH_INPUTS:
                if t.msgtype in IMAGE_TYPES and t.name not in remaps:
                    dst = '/' + t.name.strip('/')     # the camera subscribes to it as is
                elif t.msgtype not in IMAGE_TYPES:
                    why = 'graph output (recorded trigger/alert/command)' if rel else \
                        'not a graph input'
                    skipped.append((t.name, why))
                    continue
            else:
                dst = '/' + '/'.join(filter(None, (namespace.strip('/'), rel)))
        play.append(PlayTopic(t.name, dst, t.msgtype, qos_kind(dst, t.msgtype), t.count))
    return Plan(tuple(play), tuple(skipped))
