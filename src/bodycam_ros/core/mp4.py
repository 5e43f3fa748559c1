"""H.264 access units into fragmented MP4, remuxed with PyAV (never re-encoded).

Fragmented MP4 (``empty_moov``: the header carries no sample table) means the file is
playable up to its last complete fragment however the writer dies; with a fragment cut at
every keyframe and at least every ``fragment_s`` seconds a crash loses at most one fragment.
:func:`repair` copies everything up to the last complete fragment into a new file, so
players see a clean clip while the file as the crash left it stays untouched as evidence.
"""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from bodycam_ros.core.ring import VideoPacket

#: MP4 timescale for video: the usual 90 kHz clock.
TIMESCALE = 90_000


class Mp4Error(RuntimeError):
    """Video that cannot be muxed or read (no keyframe, no SPS, not an MP4...)."""


class Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


@dataclass(frozen=True)
class Mp4Info:
    frames: int
    keyframes: int
    duration_s: float
    width: int
    height: int


@dataclass(frozen=True)
class RepairReport:
    size_before: int
    size_after: int
    fragments: int          # complete moof+mdat pairs kept
    playable: bool          # ftyp and moov complete

    @property
    def dropped_bytes(self) -> int:
        return self.size_before - self.size_after


class Fmp4Writer:
    """Writes one incident's video as fragmented MP4 to ``sink`` (anything with ``write``).

    The sink is written only through PyAV's muxer and is never seeked, so it can be a
    buffering wrapper that survives ENOSPC (see ``spool.DurableFile``). The stream's codec
    parameters come from the first keyframe's in-band SPS/PPS (the camera repeats them
    before every IDR), so no extradata is built by hand.
    """

    def __init__(self, sink: Sink, fragment_s: float = 1.0) -> None:
        if not 0.05 <= fragment_s <= 10.0:
            raise Mp4Error(f'fragment_s must be in [0.05, 10], got {fragment_s}')
        self._sink = sink
        self._fragment_s = fragment_s
        self._out: Any = None
        self._stream: Any = None
        self._t0: float | None = None
        self._last_pts = -1
        self._last_dt = 1.0 / 30
        self._last_t: float | None = None
        self._frag_t: float | None = None
        self.frames = 0
        self.keyframes = 0
        self.skipped = 0            # non-keyframes before the first keyframe
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.width = 0
        self.height = 0

    @property
    def started(self) -> bool:
        return self._out is not None

    def write(self, pkt: VideoPacket) -> bool:
        """Mux one access unit. Returns True when a fragment boundary was passed (the
        previous fragment is now in the sink: the moment to fsync)."""
        if self._out is None:
            if not pkt.keyframe:
                self.skipped += 1
                return False
            self._open(pkt)
        import av
        pts = round((pkt.t - self._t0) * TIMESCALE)
        if pts <= self._last_pts:      # equal or backwards stamps: keep decode order valid
            pts = self._last_pts + 1
        if self._last_t is not None and pkt.t > self._last_t:
            self._last_dt = min(pkt.t - self._last_t, 1.0)
        packet = av.Packet(pkt.data)
        packet.stream = self._stream
        packet.time_base = Fraction(1, TIMESCALE)
        packet.pts = packet.dts = pts
        packet.duration = max(1, round(self._last_dt * TIMESCALE))
        packet.is_keyframe = pkt.keyframe
        try:
            self._out.mux(packet)
        except av.FFmpegError as exc:
            raise Mp4Error(f'muxing the packet at t={pkt.t:.3f} failed: {exc}') from exc
        self._last_pts = pts
        self._last_t = pkt.t
        self.frames += 1
        self.keyframes += int(pkt.keyframe)
        self.last_t = pkt.t
        # movenc writes the pending fragment when the packet that starts the next one
        # arrives: on each keyframe (frag_keyframe) or after fragment_s (frag_duration).
        if self._frag_t is None:
            self._frag_t = pkt.t
            return False
        if pkt.keyframe or pkt.t - self._frag_t >= self._fragment_s:
            self._frag_t = pkt.t
            return True
        return False

    def _open(self, first: VideoPacket) -> None:
        import av
        try:
            probe = av.open(io.BytesIO(first.data), format='h264', mode='r')
        except av.FFmpegError as exc:
            raise Mp4Error(f'first keyframe is not parseable H.264 Annex B: {exc}') from exc
        template = probe.streams.video[0]
        if not template.codec_context.width:
            probe.close()
            raise Mp4Error('first keyframe carries no SPS (width unknown); the camera must '
                           'repeat SPS/PPS before every IDR')
        self.width = template.codec_context.width
        self.height = template.codec_context.height
        frag_us = str(int(self._fragment_s * 1e6))
        self._out = av.open(self._sink, mode='w', format='mp4', options={
            'movflags': 'frag_keyframe+empty_moov+default_base_moof',
            'frag_duration': frag_us,
            'flush_packets': '1',
        })
        self._stream = self._out.add_stream_from_template(template)
        self._stream.time_base = Fraction(1, TIMESCALE)
        probe.close()
        self._t0 = first.t
        self.first_t = first.t

    def close(self) -> None:
        """Write the last fragment and the trailer."""
        if self._out is not None:
            self._out.close()
            self._out = None


def _boxes(f: io.BufferedReader, size: int):
    """Top-level boxes as (type, start, end); stops at the first incomplete box."""
    pos = 0
    while pos + 8 <= size:
        f.seek(pos)
        head = f.read(16)
        length, kind = struct.unpack('>I4s', head[:8])
        if length == 1:
            if len(head) < 16:
                return
            length = struct.unpack('>Q', head[8:16])[0]
        elif length == 0:
            length = size - pos
        if length < 8 or pos + length > size:
            return
        yield kind.decode('latin-1'), pos, pos + length
        pos += length


def scan(path: Path) -> RepairReport:
    """What :func:`repair` would keep of ``path``; reads only."""
    size = path.stat().st_size
    with open(path, 'rb') as f:
        boxes = list(_boxes(f, size))
    kinds = [k for k, _, _ in boxes]
    if 'ftyp' not in kinds or 'moov' not in kinds:
        return RepairReport(size, size, 0, False)
    keep = 0
    fragments = 0
    pending_moof = False
    for kind, _start, end in boxes:
        if kind == 'moof':
            pending_moof = True
            continue
        if kind == 'mdat':
            if pending_moof:
                fragments += 1
            pending_moof = False
        keep = end
    return RepairReport(size, keep, fragments, True)


def repair(src: Path, dst: Path) -> RepairReport:
    """Copy ``src`` up to its last complete fragment into ``dst`` (fsynced); ``src`` is never
    written: after a crash it is evidence as found.

    Without a complete header (``playable`` False) there is no frame to save and ``dst`` is
    not created.
    """
    rep = scan(src)
    if not rep.playable:
        return rep
    left = rep.size_after
    with open(src, 'rb') as fin, open(dst, 'wb') as fout:
        while left > 0:
            block = fin.read(min(left, 1 << 20))
            if not block:            # shrank under us: keep what was read, say so
                raise Mp4Error(f'{src} shrank to {rep.size_after - left} bytes while copied')
            fout.write(block)
            left -= len(block)
        fout.flush()
        os.fsync(fout.fileno())
    return rep


def probe(path: Path) -> Mp4Info:
    """Count the samples of an MP4 without decoding (for manifests of recovered clips).

    Raises:
        Mp4Error: whatever is wrong with the file (the only error it raises: a recovered
            clip may hold any bytes).
    """
    import av
    try:
        # metadata_errors: a handler name or tag in a damaged header need not be UTF-8.
        with av.open(str(path), metadata_errors='replace') as c:
            if not c.streams.video:
                raise Mp4Error(f'{path}: no video stream')
            s = c.streams.video[0]
            ctx = s.codec_context
            if ctx is None:
                raise Mp4Error(f'{path}: video stream with an unknown codec')
            frames = keys = 0
            first = last = None
            for p in c.demux(s):
                if p.size == 0:
                    continue
                frames += 1
                keys += int(p.is_keyframe)
                ts = p.pts if p.pts is not None else p.dts
                if ts is not None:
                    first = ts if first is None else min(first, ts)
                    end = ts + (p.duration or 0)
                    last = end if last is None else max(last, end)
            tb = s.time_base or Fraction(1, TIMESCALE)
            duration = float((last - first) * tb) if frames and first is not None else 0.0
            return Mp4Info(frames, keys, duration, ctx.width, ctx.height)
    except (av.FFmpegError, IndexError, UnicodeDecodeError, ValueError,
            OverflowError, ZeroDivisionError) as exc:
        raise Mp4Error(f'{path}: not a readable MP4: {type(exc).__name__}: {exc}') from exc
