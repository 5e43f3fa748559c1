"""H.264 for the camera: a zero-latency libx264 encoder and Annex B helpers.

The camera node encodes on the unit (raw 720p30 does not survive DDS between processes, see
DESIGN.md) and every consumer (recorder, live view, tests) handles the same bitstream: Annex B,
one access unit per frame, SPS/PPS in front of every IDR, no B-frames, keyframes exactly every
``gop`` frames. The NAL helpers here are what those consumers use to find keyframes without
decoding. No ROS imports.
"""
from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:     # PyAV, OpenCV and NumPy load only in the encoder: the recorder and
    import av         # the live view need just the NAL helpers below (~40 MB less each)
    import numpy as np

__all__ = ['AccessUnit', 'EncoderError', 'H264Encoder', 'NalUnit', 'NAL_IDR', 'NAL_NON_IDR',
           'NAL_SEI', 'NAL_SPS', 'NAL_PPS', 'NAL_AUD', 'has_parameter_sets', 'is_keyframe',
           'iter_nal_units', 'nal_types']

NAL_NON_IDR, NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD = 1, 5, 6, 7, 8, 9


class EncoderError(Exception):
    """Encoding failed or a buffer is not an H.264 Annex B stream; the message says which."""


class AccessUnit(NamedTuple):
    """One encoded frame: Annex B bytes ready for ``CompressedImage.data``."""
    data: bytes
    pts: int            # frame number in the encoder's 1/fps time base
    is_keyframe: bool   # IDR (preceded by SPS/PPS)


class NalUnit(NamedTuple):
    type: int    # nal_unit_type, low 5 bits of the header byte
    data: bytes  # the NAL unit without its start code, header byte first


# --------------------------------------------------------------------------- Annex B helpers

def iter_nal_units(annexb: bytes) -> Iterator[NalUnit]:
    """Yield the NAL units of an Annex B buffer (3- or 4-byte start codes).

    Raises:
        EncoderError: bytes before the first start code (not Annex B, e.g. AVCC/MP4 framing).
    """
    buf = bytes(annexb)
    start = buf.find(b'\x00\x00\x01')
    if start < 0:
        if buf.strip(b'\x00'):
            raise EncoderError(f'no Annex B start code in {len(buf)} bytes '
                               f'(starts {buf[:8].hex()})')
        return
    if buf[:start].strip(b'\x00'):
        raise EncoderError(f'{start} bytes before the first start code: not Annex B '
                           f'(starts {buf[:8].hex()})')
    pos = start + 3
    while pos <= len(buf):
        nxt = buf.find(b'\x00\x00\x01', pos)
        end = len(buf) if nxt < 0 else nxt
        # trailing_zero_8bits and the leading zero of a 4-byte start code belong to no NAL;
        # a NAL never ends in 0x00 (rbsp_stop_one_bit), so stripping them is exact.
        nal = buf[pos:end].rstrip(b'\x00')
        if nal:
            yield NalUnit(nal[0] & 0x1F, nal)
        if nxt < 0:
            break
        pos = nxt + 3


def nal_types(annexb: bytes) -> list[int]:
    """The nal_unit_type of every NAL unit in order, e.g. ``[7, 8, 6, 5]`` for a keyframe."""
    return [n.type for n in iter_nal_units(annexb)]


def is_keyframe(annexb: bytes) -> bool:
    """True if the access unit holds an IDR slice (a decoder can start here)."""
    return NAL_IDR in nal_types(annexb)


def has_parameter_sets(annexb: bytes) -> bool:
    """True if the access unit carries both an SPS and a PPS (self-contained keyframe)."""
    types = nal_types(annexb)
    return NAL_SPS in types and NAL_PPS in types


# --------------------------------------------------------------------------- encoder

class H264Encoder:
    """libx264 through PyAV, tuned for a live camera.

    ``ultrafast`` + ``zerolatency`` (no lookahead, no frame threads, no B-frames) so each
    :meth:`encode` returns its own frame's access unit at once; ``keyint = min-keyint = gop``
    with ``scenecut=0`` so IDRs are exactly periodic (the recorder cuts clips on them);
    ``repeat-headers`` so each IDR is decodable on its own; VBV max rate = ``bitrate`` with a
    one-second buffer keeps the rate near constant for upload and live view.

    Encoding runs on the calling thread; the codec releases the GIL while it works.
    """

    def __init__(self, width: int, height: int, fps: float, bitrate: int, gop: int, *,
                 threads: int = 0) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise EncoderError(f'frame size {width}x{height}: width and height must be even '
                               'and positive for yuv420p')
        if not fps > 0:
            raise EncoderError(f'fps must be > 0, got {fps}')
        if bitrate < 10_000:
            raise EncoderError(f'bitrate {bitrate} bit/s is below 10000')
        if gop < 1:
            raise EncoderError(f'gop must be >= 1 frame, got {gop}')
        self.width, self.height, self.gop, self.bitrate = width, height, gop, bitrate
        self.fps = Fraction(fps).limit_denominator(1001)
        kbps = max(10, bitrate // 1000)
        import av
        params = (f'keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1:'
                  f'vbv-maxrate={kbps}:vbv-bufsize={kbps}:colormatrix=smpte170m:range=tv')
        try:
            ctx = av.CodecContext.create('libx264', 'w')
            ctx.width, ctx.height, ctx.pix_fmt = width, height, 'yuv420p'
            ctx.time_base, ctx.framerate = 1 / self.fps, self.fps
            ctx.gop_size, ctx.max_b_frames, ctx.bit_rate = gop, 0, bitrate
            ctx.thread_count = threads
            ctx.options = {'preset': 'ultrafast', 'tune': 'zerolatency', 'x264-params': params}
            ctx.open()
        except (av.FFmpegError, ValueError) as exc:
            raise EncoderError(f'cannot open libx264 at {width}x{height}: {exc}') from exc
        self._ctx: av.VideoCodecContext | None = ctx
        self._pts = 0

    def encode(self, frame: np.ndarray | av.VideoFrame) -> AccessUnit:
        """Encode one BGR frame (``HxWx3 uint8``), I420 planes (``(H*3/2)xW uint8``) or
        VideoFrame; return its access unit.

        Raises:
            EncoderError: wrong frame size/type, the encoder is closed, libx264 failed, or it
                did not return exactly one packet for this frame (latency would creep in).
        """
        if self._ctx is None:
            raise EncoderError('encoder is closed')
        import av
        import cv2
        import numpy as np
        if isinstance(frame, np.ndarray):
            if frame.dtype == np.uint8 and frame.shape == (self.height, self.width, 3):
                # OpenCV's BGR->I420 (BT.601 limited range, same as swscale's) is ~3x faster
                # than PyAV's reformat, and from_numpy_buffer wraps the planes without a copy.
                yuv = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)
            elif frame.dtype == np.uint8 and frame.shape == (self.height * 3 // 2, self.width):
                yuv = np.ascontiguousarray(frame)   # I420 planes already
            else:
                raise EncoderError(f'frame {frame.shape} {frame.dtype}: expected '
                                   f'({self.height}, {self.width}, 3) uint8 BGR or '
                                   f'({self.height * 3 // 2}, {self.width}) uint8 I420')
            vf = av.VideoFrame.from_numpy_buffer(yuv, format='yuv420p')
        elif isinstance(frame, av.VideoFrame):
            if (frame.width, frame.height) != (self.width, self.height):
                raise EncoderError(f'frame {frame.width}x{frame.height}: expected '
                                   f'{self.width}x{self.height}')
            vf = frame
        else:
            raise EncoderError(f'cannot encode {type(frame).__name__}: need a numpy BGR '
                               'array or av.VideoFrame')
        vf.pts, vf.time_base = self._pts, self._ctx.time_base
        try:
            packets = self._ctx.encode(vf)
        except (av.FFmpegError, ValueError) as exc:
            raise EncoderError(f'libx264 failed on frame {self._pts}: {exc}') from exc
        if len(packets) != 1:
            raise EncoderError(f'libx264 returned {len(packets)} packets for frame {self._pts}; '
                               'expected exactly one (zero-latency)')
        pkt = packets[0]
        self._pts += 1
        return AccessUnit(bytes(pkt), int(pkt.pts if pkt.pts is not None else self._pts - 1),
                          bool(pkt.is_keyframe))

    @property
    def frames(self) -> int:
        """Frames encoded so far."""
        return self._pts

    def flush(self) -> list[AccessUnit]:
        """Drain the encoder (empty with zero-latency settings) and close it."""
        if self._ctx is None:
            return []
        import av
        try:
            rest = [AccessUnit(bytes(p), int(p.pts or 0), bool(p.is_keyframe))
                    for p in self._ctx.encode(None)]
        except (av.FFmpegError, ValueError) as exc:
            raise EncoderError(f'libx264 flush failed: {exc}') from exc
        finally:
            self._ctx = None
        return rest

    def close(self) -> None:
        """Release the codec; further :meth:`encode` calls raise. Safe to call twice."""
        self._ctx = None  # PyAV frees the x264 context when the last reference goes

    def __enter__(self) -> H264Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
