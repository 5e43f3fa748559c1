"""The look-back ring: the last ``keep_s`` seconds of encoded video and sensor messages.

Holds compressed H.264 access units (never raw frames: 120 s of 720p30 is ~60 MB encoded
against ~10 GB raw) grouped by GOP, so eviction drops whole GOPs and any clip cut from the
ring starts on a keyframe. Sensor messages (already serialised CDR) are kept for the same
window. Pure Python, no clock of its own: every time is the caller's (message stamps, seconds).
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field


class RingError(ValueError):
    """A ring set up with impossible bounds."""


@dataclass(frozen=True, slots=True)
class VideoPacket:
    """One H.264 access unit (Annex B) as the camera published it."""
    t: float            # capture time [s], the message's header.stamp
    data: bytes
    keyframe: bool


@dataclass(frozen=True, slots=True)
class SensorRecord:
    """One serialised ROS message for the sidecar bag."""
    t: float            # receive time [s] (rosbag2 log time)
    topic: str          # fully resolved topic, e.g. /imu/data
    msgtype: str        # ROS type name, e.g. sensor_msgs/msg/Imu
    data: bytes         # CDR, as rclpy.serialization.serialize_message gives it


@dataclass(slots=True)
class Gop:
    """A keyframe and the packets that depend on it."""
    packets: list[VideoPacket] = field(default_factory=list)
    nbytes: int = 0

    @property
    def t0(self) -> float:
        return self.packets[0].t


@dataclass(frozen=True)
class RingStats:
    buffered_s: float       # newest packet time - oldest keyframe time
    buffered_bytes: int     # video + sensor payload bytes held
    video_bytes: int
    sensor_bytes: int
    gops: int
    packets: int
    sensor_messages: int
    dropped_orphans: int    # packets before the first keyframe (undecodable, not kept)
    evicted_for_bytes: int  # GOPs evicted early because of max_bytes


@dataclass(frozen=True)
class Snapshot:
    """What an incident takes from the ring at its start."""
    start_t: float | None              # clip start: the chosen keyframe's time (None: no video)
    video: list[VideoPacket]
    sensors: list[SensorRecord]        # oldest first; latched states first of all


class LookbackRing:
    """Whole GOPs covering at least ``keep_s`` seconds, and never more than ``max_bytes``.

    Args:
        keep_s: seconds of history to keep behind the newest packet (pre_event_s plus a
            margin for trigger latency).
        max_bytes: hard bound on video bytes; the oldest GOPs go first, the newest GOP is
            always kept.
        max_sensor_bytes: hard bound on buffered sensor payloads.
        latched_topics: state topics (holster, dispatch, alerts) whose latest message is kept
            whatever its age, so every incident starts with the current state.

    Thread-safe: the node's callbacks push, the recorder takes snapshots.
    """

    def __init__(self, keep_s: float, max_bytes: int, max_sensor_bytes: int = 64 << 20,
                 latched_topics: Iterable[str] = ()) -> None:
        if keep_s < 0:
            raise RingError(f'keep_s must be >= 0, got {keep_s}')
        if max_bytes <= 0 or max_sensor_bytes <= 0:
            raise RingError(f'byte bounds must be > 0, got {max_bytes}, {max_sensor_bytes}')
        self.keep_s = keep_s
        self.max_bytes = max_bytes
        self.max_sensor_bytes = max_sensor_bytes
        self._gops: collections.deque[Gop] = collections.deque()
        self._video_bytes = 0
        self._packets = 0
        self._sensors: collections.deque[SensorRecord] = collections.deque()
        self._sensor_bytes = 0
        self._latched_topics = set(latched_topics)
        self._latched: dict[str, SensorRecord] = {}
        self._orphans = 0
        self._evicted_for_bytes = 0
        self._lock = threading.Lock()

    # -- input -------------------------------------------------------------------------------
    def push_video(self, pkt: VideoPacket) -> None:
        with self._lock:
            if pkt.keyframe:
                self._gops.append(Gop())
            elif not self._gops:
                self._orphans += 1
                return
            gop = self._gops[-1]
            gop.packets.append(pkt)
            gop.nbytes += len(pkt.data)
            self._video_bytes += len(pkt.data)
            self._packets += 1
            self._evict_video(pkt.t)

    def push_sensor(self, rec: SensorRecord) -> None:
        with self._lock:
            if rec.topic in self._latched_topics:
                self._latched[rec.topic] = rec
            self._sensors.append(rec)
            self._sensor_bytes += len(rec.data)
            horizon = rec.t - self.keep_s
            if self._gops:
                # Never drop sensor data the oldest buffered keyframe still covers.
                horizon = min(horizon, self._gops[0].t0)
            while self._sensors and (self._sensors[0].t < horizon or
                                     self._sensor_bytes > self.max_sensor_bytes):
                old = self._sensors.popleft()
                self._sensor_bytes -= len(old.data)

    def _evict_video(self, newest_t: float) -> None:
        gops = self._gops
        # The second-oldest GOP alone still reaches back keep_s: the oldest is not needed.
        while len(gops) > 1 and gops[1].t0 <= newest_t - self.keep_s:
            self._drop_oldest()
        while len(gops) > 1 and self._video_bytes > self.max_bytes:
            self._drop_oldest()
            self._evicted_for_bytes += 1

    def _drop_oldest(self) -> None:
        gop = self._gops.popleft()
        self._video_bytes -= gop.nbytes
        self._packets -= len(gop.packets)

    # -- output ------------------------------------------------------------------------------
    def snapshot(self, trigger_t: float, pre_event_s: float) -> Snapshot:
        """The clip for a trigger: from the last keyframe at or before ``trigger_t -
        pre_event_s`` (or the oldest buffered keyframe when less is buffered) to now."""
        target = trigger_t - pre_event_s
        with self._lock:
            start_gop = 0
            for i, gop in enumerate(self._gops):
                if gop.t0 <= target:
                    start_gop = i
                else:
                    break
            video = [p for gop in list(self._gops)[start_gop:] for p in gop.packets]
            start_t = video[0].t if video else None
            since = start_t if start_t is not None else target
            sensors = [r for r in self._sensors if r.t >= since]
            first = {id(r) for r in sensors}
            latched = sorted((r for r in self._latched.values() if id(r) not in first),
                             key=lambda r: r.t)
        return Snapshot(start_t, video, latched + sensors)

    def stats(self) -> RingStats:
        with self._lock:
            span = 0.0
            if self._gops:
                span = self._gops[-1].packets[-1].t - self._gops[0].t0
            return RingStats(span, self._video_bytes + self._sensor_bytes, self._video_bytes,
                             self._sensor_bytes, len(self._gops), self._packets,
                             len(self._sensors), self._orphans, self._evicted_for_bytes)
