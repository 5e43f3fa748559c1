"""The incident's sensor sidecar: a crash-proof journal while recording, rosbag2 MCAP when sealed.

MCAP writers buffer a chunk (rosbags: 1 MB, minutes of IMU) and write the index at close, so
a killed writer leaves an unreadable or short file. While an incident records, messages go to
an append-only journal instead: each record length-prefixed and CRC-checked, flushed and
fsynced with every video fragment, so a crash keeps all but the last second and a torn tail is
detected, not misread. Sealing converts the journal with rosbags' rosbag2 writer into
``sensors.mcap`` (ros2 profile, CDR, the rosbag2 metadata record inside), which ``ros2 bag
info``, rosbags and Foxglove read as a plain file.
"""
from __future__ import annotations

import math
import os
import shutil
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bodycam_ros.core.ring import SensorRecord

MAGIC = b'BCSJ1\n'
_HEAD = struct.Struct('<II')      # payload length, crc32(payload)
_FIXED = struct.Struct('<dHH')    # t, len(topic), len(msgtype)
#: The smallest record: header and fixed fields (a pad record with no data).
PAD_MIN = _HEAD.size + _FIXED.size
NAVSATFIX = 'sensor_msgs/msg/NavSatFix'
EARTH_RADIUS_M = 6_371_008.8


class SidecarError(RuntimeError):
    """A journal or bag that cannot be written or read."""


class Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


def encode(rec: SensorRecord) -> bytes:
    """One journal record."""
    topic, msgtype = rec.topic.encode(), rec.msgtype.encode()
    payload = b''.join((_FIXED.pack(rec.t, len(topic), len(msgtype)), topic, msgtype, rec.data))
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


class JournalWriter:
    """Appends records to a journal through ``sink`` (durability is the sink's business)."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._sink.write(MAGIC)
        self.messages = 0

    def write(self, rec: SensorRecord) -> None:
        self._sink.write(encode(rec))
        self.messages += 1

    def pad(self, size: int) -> None:
        """One filler record of exactly ``size`` bytes (>= PAD_MIN), skipped by readers.

        An age writer keeps its last 64 KiB chunk in RAM until more bytes follow; padding the
        journal one byte past a chunk boundary at each sync puts every real record on disk.
        """
        if size < PAD_MIN:
            raise SidecarError(f'pad record of {size} bytes < {PAD_MIN}')
        self._sink.write(encode(SensorRecord(0.0, '', '', bytes(size - PAD_MIN))))


@dataclass
class JournalRead:
    records: list[SensorRecord]
    torn_bytes: int = 0        # bytes after the last intact record (a crash's torn write)


def read_journal(path: Path) -> JournalRead:
    """All intact records; a torn or corrupt tail ends the read and is counted, not raised."""
    buf = path.read_bytes()
    if not buf.startswith(MAGIC):
        if len(buf) < len(MAGIC) and MAGIC.startswith(buf):
            return JournalRead([], len(buf))
        raise SidecarError(f'{path}: not a sensor journal')
    pos = len(MAGIC)
    out: list[SensorRecord] = []
    while pos + _HEAD.size <= len(buf):
        length, crc = _HEAD.unpack_from(buf, pos)
        body = buf[pos + _HEAD.size: pos + _HEAD.size + length]
        if len(body) < length or zlib.crc32(body) != crc or length < _FIXED.size:
            break
        t, lt, lm = _FIXED.unpack_from(body, 0)
        o = _FIXED.size
        topic = body[o:o + lt].decode()
        msgtype = body[o + lt:o + lt + lm].decode()
        if topic or msgtype:                   # '' / '': a pad record (JournalWriter.pad)
            out.append(SensorRecord(t, topic, msgtype, bytes(body[o + lt + lm:])))
        pos += _HEAD.size + length
    return JournalRead(out, len(buf) - pos)


@dataclass
class GpsSummary:
    """What the manifest says about where the incident happened."""
    fixes: int = 0
    no_fix: int = 0
    first: dict | None = None
    last: dict | None = None
    bbox: dict | None = None
    distance_m: float = 0.0
    _prev: tuple[float, float] | None = field(default=None, repr=False)

    def add(self, t: float, lat: float, lon: float, alt: float, has_fix: bool) -> None:
        if not has_fix or not (math.isfinite(lat) and math.isfinite(lon)):
            self.no_fix += 1
            return
        self.fixes += 1
        point = {'time': round(t, 3), 'latitude': lat, 'longitude': lon,
                 'altitude': alt if math.isfinite(alt) else None}
        if self.first is None:
            self.first = point
            self.bbox = {'min_latitude': lat, 'max_latitude': lat,
                         'min_longitude': lon, 'max_longitude': lon}
        self.last = point
        b = self.bbox
        assert b is not None
        b['min_latitude'] = min(b['min_latitude'], lat)
        b['max_latitude'] = max(b['max_latitude'], lat)
        b['min_longitude'] = min(b['min_longitude'], lon)
        b['max_longitude'] = max(b['max_longitude'], lon)
        if self._prev is not None:
            self.distance_m += haversine_m(*self._prev, lat, lon)
        self._prev = (lat, lon)

    def as_dict(self) -> dict:
        return {'fixes': self.fixes, 'no_fix': self.no_fix, 'first': self.first,
                'last': self.last, 'bbox': self.bbox, 'distance_m': round(self.distance_m, 2)}


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


@dataclass
class BagReport:
    messages: dict[str, int]          # per topic
    skipped: dict[str, int]           # per msgtype the typestore does not know
    gps: GpsSummary
    start_t: float | None
    end_t: float | None


def _typestore():
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_JAZZY)


def write_mcap(records: Iterable[SensorRecord], out: Path) -> BagReport:
    """Write ``records`` as a rosbag2 MCAP file at ``out`` (replacing a stale one) and
    summarise them. Atomic: the file appears complete or not at all; fsynced."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = _typestore()
    work = out.parent / f'.{out.stem}.bag'
    if work.exists():
        shutil.rmtree(work)
    report = BagReport({}, {}, GpsSummary(), None, None)
    writer = Writer(work, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    conns = {}
    try:
        for rec in records:
            key = (rec.topic, rec.msgtype)
            conn = conns.get(key)
            if conn is None:
                if rec.msgtype not in ts.fielddefs:
                    report.skipped[rec.msgtype] = report.skipped.get(rec.msgtype, 0) + 1
                    continue
                conn = conns[key] = writer.add_connection(rec.topic, rec.msgtype, typestore=ts)
            writer.write(conn, int(rec.t * 1e9), rec.data)
            report.messages[rec.topic] = report.messages.get(rec.topic, 0) + 1
            report.start_t = rec.t if report.start_t is None else min(report.start_t, rec.t)
            report.end_t = rec.t if report.end_t is None else max(report.end_t, rec.t)
            if rec.msgtype == NAVSATFIX:
                _add_fix(ts, report.gps, rec)
    finally:
        writer.close()
    produced = work / f'{work.name}.mcap'
    with open(produced, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(produced, out)
    shutil.rmtree(work)
    return report


def _add_fix(ts, gps: GpsSummary, rec: SensorRecord) -> None:
    try:
        fix = ts.deserialize_cdr(rec.data, NAVSATFIX)
    except (ValueError, IndexError, struct.error, UnicodeDecodeError):
        # A corrupt sample must not stop sealing; it is counted instead.
        gps.no_fix += 1
        return
    gps.add(rec.t, fix.latitude, fix.longitude, fix.altitude, fix.status.status >= 0)


def read_mcap(path: Path) -> Iterator[tuple[str, str, int, object]]:
    """(topic, msgtype, timestamp_ns, message) for every message, via rosbags."""
    from rosbags.rosbag2 import Reader

    ts = _typestore()
    with Reader(path) as reader:
        for conn, stamp, data in reader.messages():
            yield conn.topic, conn.msgtype, stamp, ts.deserialize_cdr(data, conn.msgtype)


class _NoClose:
    """Hands a sink to rosbags' MCAP storage, which closes its file when done: here the
    caller closes it (an age writer's final chunk is the caller's decision)."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        return len(data)

    def tell(self) -> int:
        return int(self._sink.tell())      # type: ignore[attr-defined]

    def close(self) -> None:
        pass


class McapStream:
    """A rosbag2 MCAP written straight into ``sink`` as messages arrive (no file of its own).

    ``sink`` needs ``write`` and ``tell`` (a ``core.encryption.AgeWriter``: the plaintext MCAP
    never touches the disk). rosbags' writer buffers a chunk (1 MB) and writes the index at
    :meth:`close`, so this stream alone is not crash-safe: the recorder keeps the journal
    beside it. ``work`` is a scratch directory for rosbags' ``metadata.yaml`` (deleted at
    close; the same metadata is inside the MCAP). The summary for the manifest
    (:class:`BagReport`) is kept as messages pass.
    """

    def __init__(self, sink: Sink, work: Path) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self._ts = _typestore()
        self._work = work
        if work.exists():
            shutil.rmtree(work)
        writer_cls = type('_StreamWriter', (Writer,), {
            'STORAGE_PLUGINS': {**Writer.STORAGE_PLUGINS,
                                StoragePlugin.MCAP: _storage_factory(sink)}})
        self._writer = writer_cls(work, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._conns: dict[tuple[str, str], object] = {}
        self.report = BagReport({}, {}, GpsSummary(), None, None)
        self.closed = False

    def write(self, rec: SensorRecord) -> None:
        report = self.report
        key = (rec.topic, rec.msgtype)
        conn = self._conns.get(key)
        if conn is None:
            if rec.msgtype not in self._ts.fielddefs:
                report.skipped[rec.msgtype] = report.skipped.get(rec.msgtype, 0) + 1
                return
            conn = self._conns[key] = self._writer.add_connection(rec.topic, rec.msgtype,
                                                                  typestore=self._ts)
        self._writer.write(conn, int(rec.t * 1e9), rec.data)
        report.messages[rec.topic] = report.messages.get(rec.topic, 0) + 1
        report.start_t = rec.t if report.start_t is None else min(report.start_t, rec.t)
        report.end_t = rec.t if report.end_t is None else max(report.end_t, rec.t)
        if rec.msgtype == NAVSATFIX:
            _add_fix(self._ts, report.gps, rec)

    def close(self) -> BagReport:
        """Write the last chunk, the index and the footer into the sink (not closing it)."""
        if not self.closed:
            self.closed = True
            self._writer.close()
            shutil.rmtree(self._work, ignore_errors=True)
        return self.report


def _header_bytes() -> bytes:
    """The MCAP magic and header record exactly as rosbags' McapWriter writes them."""
    from importlib.metadata import version
    from io import BytesIO

    from rosbags.rosbag2.storage_mcap import write_record, write_string
    out, rec = BytesIO(), BytesIO()
    out.write(b'\x89MCAP\x30\r\n')
    write_string(rec, 'ros2')
    write_string(rec, f'rosbags-{version("rosbags")}')
    write_record(out, 0x01, rec)
    return out.getvalue()


def _storage_factory(sink: Sink) -> type:
    """A rosbags storage plugin class that writes the MCAP into ``sink`` instead of a file.

    rosbags' ``McapWriter.__init__`` opens ``<bag>/<bag>.mcap`` itself; this one sets up the
    same state (rosbags 0.11, pinned) around the sink, so no plaintext byte reaches the disk.
    """
    from collections import defaultdict
    from io import BytesIO

    from rosbags.rosbag2.enums import CompressionMode
    from rosbags.rosbag2.storage_mcap import McapWriter, PendingChunk

    class SinkMcapWriter(McapWriter):
        def __init__(self, path: Path, compression: CompressionMode) -> None:
            if compression != CompressionMode.NONE:
                raise SidecarError(f'a streamed MCAP is not compressed (got {compression})')
            self.path = path / f'{path.name}.mcap'      # named in metadata, never created
            self.bio = _NoClose(sink)                  # type: ignore[assignment]
            self.bio.write(_header_bytes())
            self.schemas = []
            self.channels = []
            self.chunks = []
            self.chunk = PendingChunk(2**63 - 1, 0, BytesIO(), defaultdict(list))
            self.compression = ''
            self.compressor = lambda x: x
            self.message_start_time = 2**63 - 1
            self.message_end_time = 0
            self.channel_stats = {}

    return SinkMcapWriter
