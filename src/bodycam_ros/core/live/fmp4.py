"""Annex B access units to fragmented MP4 in memory, for Media Source Extensions.

The camera's H.264 is remuxed, never re-encoded: PyAV's mp4 muxer with ``empty_moov`` builds
the init segment (``ftyp`` + ``moov``, avcC taken from the first keyframe's SPS/PPS) and, with
``frag_every_frame``, one ``moof`` + ``mdat`` per frame so a browser can show a frame as soon
as it arrives. The muxer writes a frame's fragment when the next frame comes in (it needs the
duration), so live view lags the camera by one frame period on top of transport.

PyAV loads with the first muxer: a live view nobody watches never imports it.
"""
from __future__ import annotations

import io
import math
import struct
from fractions import Fraction
from typing import TYPE_CHECKING, NamedTuple

from bodycam_ros.core.h264 import NAL_IDR, NAL_SPS, EncoderError, iter_nal_units

if TYPE_CHECKING:
    import av

__all__ = ['AccessUnit', 'Fragment', 'FragmentMuxer', 'LiveError', 'SpsChanged',
           'check_stamp', 'codec_string', 'inspect_access_unit', 'split_boxes']

#: MP4 media time base: 90 kHz, as RTP and MPEG-TS use for video.
TIME_BASE = Fraction(1, 90_000)
MOVFLAGS = 'empty_moov+default_base_moof+frag_keyframe+frag_every_frame'
#: A capture stamp further than this from the stream's first one is not a clock step but a
#: bad stamp (the 90 kHz pts would leave int64 long before, at ~3e9 years).
MAX_STAMP_SPAN_S = 1e9


class LiveError(Exception):
    """Live view input or set-up is unusable; the message says what and why."""


class SpsChanged(LiveError):
    """A keyframe with another SPS than the init segment's: the caller needs a new muxer."""


class Fragment(NamedTuple):
    """One ``moof`` + ``mdat`` pair holding one frame."""
    data: bytes
    keyframe: bool   # a decoder (a new or resynchronising viewer) can start here
    seq: int         # fragment number within this muxer, from 0
    stamp: float     # capture time of the frame (UNIX s)


def split_boxes(buf: bytearray) -> list[bytes]:
    """Remove and return every complete top-level ISO BMFF box at the start of ``buf``."""
    boxes = []
    while len(buf) >= 8:
        size, = struct.unpack_from('>I', buf, 0)
        if size == 1:
            if len(buf) < 16:
                break
            size, = struct.unpack_from('>Q', buf, 8)
        if size < 8:
            raise LiveError(f'bad MP4 box size {size} (type {bytes(buf[4:8])!r})')
        if len(buf) < size:
            break
        boxes.append(bytes(buf[:size]))
        del buf[:size]
    return boxes


def codec_string(sps: bytes) -> str:
    """RFC 6381 codec string (``avc1.PPCCLL``) from an SPS NAL unit (header byte first)."""
    if len(sps) < 4 or sps[0] & 0x1F != NAL_SPS:
        raise LiveError(f'not an SPS NAL unit: {sps[:4].hex()}')
    return f'avc1.{sps[1]:02x}{sps[2]:02x}{sps[3]:02x}'


class AccessUnit(NamedTuple):
    """What the muxer needs to know of one access unit before muxing it."""
    keyframe: bool
    sps: bytes | None      # the keyframe's SPS NAL unit (header byte first), if it has one


def inspect_access_unit(annexb: bytes) -> AccessUnit:
    """Parse one Annex B access unit far enough to mux it.

    Raises:
        LiveError: not Annex B, or no NAL unit in it.
    """
    try:
        nals = list(iter_nal_units(annexb))
    except EncoderError as exc:
        raise LiveError(str(exc)) from exc
    if not nals:
        raise LiveError(f'no NAL unit in an access unit of {len(annexb)} bytes')
    key = any(n.type == NAL_IDR for n in nals)
    sps = next((n.data for n in nals if n.type == NAL_SPS), None) if key else None
    return AccessUnit(key, sps)


def check_stamp(stamp: float, t0: float | None) -> None:
    """Raise :class:`LiveError` for a capture stamp the 90 kHz timeline cannot hold."""
    if not math.isfinite(stamp) or (t0 is not None and abs(stamp - t0) > MAX_STAMP_SPAN_S):
        raise LiveError(f'capture stamp {stamp!r} is not usable (stream began at {t0!r})')


class _Sink(io.RawIOBase):
    """Where the muxer writes: bytes collect until complete boxes can be split off."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.buf += b
        return len(b)


class FragmentMuxer:
    """Muxes one H.264 stream into an init segment plus one fragment per frame.

    Frames before the first keyframe are skipped (nothing can decode them). A keyframe whose
    SPS differs from the init segment's (the camera restarted with another size) raises
    :class:`LiveError` with ``restart`` semantics: the caller builds a new muxer.
    """

    def __init__(self) -> None:
        self._sink = _Sink()
        self._out: av.container.OutputContainer | None = None
        self._stream = None
        self._sps: bytes | None = None
        self._t0: float | None = None
        self._last_pts = -1
        self._pending: list[tuple[bool, float]] = []   # (keyframe, stamp) of muxed frames
        self._seq = 0
        self.init_segment: bytes | None = None
        self.codec: str | None = None
        self.skipped = 0
        self.width = self.height = 0
        self.last_keyframe = False   # whether the last access unit fed was a keyframe

    @property
    def sps(self) -> bytes | None:
        return self._sps

    def feed(self, annexb: bytes, stamp: float) -> list[Fragment]:
        """Mux one access unit captured at ``stamp``; return the fragments now complete.

        Raises:
            LiveError: the bytes are not Annex B H.264, the SPS changed, or FFmpeg refused.
        """
        check_stamp(stamp, self._t0)
        key, sps = inspect_access_unit(annexb)
        self.last_keyframe = key
        if self._out is None:
            if not key or sps is None:
                self.skipped += 1
                return []
            self._open(sps, stamp, annexb)
        elif sps is not None and sps != self._sps:
            raise SpsChanged('SPS changed (new frame size or profile): a new init segment is '
                             'needed')
        pts = round((stamp - self._t0) / TIME_BASE) if self._t0 is not None else 0
        pts = max(pts, self._last_pts + 1)   # stamps must rise strictly; a clock step is clamped
        self._last_pts = pts
        import av
        pkt = av.Packet(annexb)
        pkt.pts = pkt.dts = pts
        pkt.time_base = TIME_BASE
        pkt.stream = self._stream
        pkt.is_keyframe = key
        self._pending.append((key, stamp))
        try:
            self._out.mux(pkt)
        except (av.FFmpegError, ValueError) as exc:
            self._pending.pop()
            raise LiveError(f'mp4 muxer refused a frame: {exc}') from exc
        return self._collect()

    def _open(self, sps: bytes, stamp: float, keyframe: bytes) -> None:
        # Codec parameters (size, profile, avcC) from the keyframe's own SPS/PPS, parsed by
        # FFmpeg's raw H.264 demuxer: a template stream, so no encoder is ever opened.
        codec = codec_string(sps)   # first: a bad SPS must not leave a half-open muxer
        import av
        try:
            probe = av.open(io.BytesIO(keyframe), format='h264', mode='r')
        except (av.FFmpegError, ValueError) as exc:
            raise LiveError(f'first keyframe is not parseable H.264: {exc}') from exc
        try:
            template = probe.streams.video[0]
            if not template.codec_context.width:
                raise LiveError('first keyframe has no usable SPS (frame size unknown)')
            self.width, self.height = template.codec_context.width, template.codec_context.height
            self._out = av.open(self._sink, 'w', format='mp4',
                                options={'movflags': MOVFLAGS, 'flush_packets': '1'})
            self._stream = self._out.add_stream_from_template(template)
            self._stream.time_base = TIME_BASE
        except (av.FFmpegError, ValueError) as exc:
            raise LiveError(f'cannot open the fragmented MP4 muxer: {exc}') from exc
        finally:
            probe.close()
        self._sps, self._t0 = sps, stamp
        self.codec = codec

    def _collect(self) -> list[Fragment]:
        frags: list[Fragment] = []
        boxes = split_boxes(self._sink.buf)
        i = 0
        while i < len(boxes):
            kind = boxes[i][4:8]
            if kind == b'ftyp' and i + 1 < len(boxes) and boxes[i + 1][4:8] == b'moov':
                self.init_segment = boxes[i] + boxes[i + 1]
                i += 2
            elif kind == b'moof':
                if i + 1 >= len(boxes):   # mdat not flushed yet: put the moof back
                    self._sink.buf[:0] = boxes[i]
                    break
                key, stamp = self._pending.pop(0)
                frags.append(Fragment(boxes[i] + boxes[i + 1], key, self._seq, stamp))
                self._seq += 1
                i += 2
            elif kind in (b'ftyp', b'moov') and i + 1 >= len(boxes):
                self._sink.buf[:0] = b''.join(boxes[i:])
                break
            else:
                i += 1   # styp, sidx, mfra: not needed by MSE
        return frags

    def close(self) -> None:
        """Release FFmpeg's muxer; the last frame's fragment is not emitted."""
        out, self._out = self._out, None
        if out is not None:
            import av
            try:
                out.close()
            except (av.FFmpegError, ValueError, OSError):
                pass   # closing an in-memory live stream: nothing to lose
