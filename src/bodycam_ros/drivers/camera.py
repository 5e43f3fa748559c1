"""Where camera frames come from: a V4L2 device, a video file, a test pattern, or a ROS topic.

Every source has the same small interface (:class:`FrameSource`): ``open()``, ``read()`` ->
``(frame_bgr, capture_time)``, ``close()``, plus ``width``, ``height``, ``fps`` and
``dropped`` (frames the reader was too slow for). Frames are ``height x width x 3`` uint8 BGR
at the configured size whatever the device or file delivers, so the encoder never changes size.

The test pattern burns a frame counter into the picture twice: as text for people, and as
two rows of big black/white blocks (24-bit counter + CRC-8) that survive H.264, so tests and
the live-view latency check read it back from decoded video with :func:`decode_frame_counter`.

The topic source (:class:`TopicSource`) is fed by the camera node's image subscription: it
queues the newest messages and converts them on the capture thread, with cv_bridge where the
node has it and otherwise :func:`image_to_bgr` / :func:`compressed_to_bgr` here (numpy and
OpenCV only). Its size is the first frame's; a frame of another size, an unknown encoding or
an undecodable payload raises :class:`BadFrame` (counted and skipped by the node).

Times: ``read()`` returns the source's own capture time (UNIX s for device, file and test
pattern: used only to estimate dropped frames; the node stamps with its ROS clock) or, for
the topic source, the message's ``header.stamp`` (ROS s). No ROS imports.
"""
from __future__ import annotations

import math
import os
import queue
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

__all__ = ['IMAGE_ENCODINGS', 'BadFrame', 'CameraError', 'DeviceSource', 'EndOfFile',
           'FileSource', 'FrameSource', 'TestPatternSource', 'TopicSource', 'compressed_to_bgr',
           'decode_frame_counter', 'encode_frame_counter', 'image_to_bgr']


class CameraError(Exception):
    """A camera source cannot deliver frames (missing device, unplugged, unreadable file)."""


class EndOfFile(CameraError):
    """A file source without ``loop`` has played its last frame."""


class BadFrame(CameraError):
    """One frame that cannot be used (unknown encoding, wrong size, undecodable): the caller
    counts and skips it; the source stays open."""


class FrameSource(ABC):
    """open / read / close over frames of a fixed size, with a drop counter.

    A frame is BGR ``(h, w, 3)`` uint8, or I420 planes ``(h * 3 / 2, w)`` uint8 from a source
    that has them already (the encoder takes either; see :func:`frame_size`, :func:`to_bgr`).
    """

    kind = 'source'
    #: True when ``read()`` returns ROS time (a message stamp), not the source's own clock.
    stamps_ros_time = False

    def __init__(self, width: int, height: int, fps: float) -> None:
        if width <= 0 or height <= 0:
            raise CameraError(f'frame size {width}x{height} must be positive')
        if not fps > 0:
            raise CameraError(f'fps must be > 0, got {fps}')
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        #: Frames the source produced but the reader never got (it fell behind).
        self.dropped = 0

    @property
    def description(self) -> str:
        """Human-readable name for diagnostics, e.g. ``device /dev/video0``."""
        return self.kind

    @abstractmethod
    def open(self) -> None:
        """Start delivering frames. Raises :class:`CameraError`."""

    @abstractmethod
    def read(self) -> tuple[np.ndarray, float]:
        """Block until the next frame; return it (BGR or I420) and its capture time (UNIX s).

        Raises:
            CameraError: the source failed (:class:`EndOfFile` when a file ended).
        """

    @abstractmethod
    def close(self) -> None:
        """Release the device or file. Safe to call twice or before open."""

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Pacer:
    """Releases frame slots at a fixed rate; a late reader skips the slots it missed.

    Like a real sensor: frame ``i`` exists at ``t0 + i/fps`` whether or not anyone reads it,
    so a reader that falls behind gets the newest frame and the skipped ones are counted.
    """

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._t0 = time.monotonic()
        self._next = 0

    def restart(self) -> None:
        self._t0, self._next = time.monotonic(), 0

    def wait(self) -> tuple[int, int]:
        """Sleep until the next slot is due; return ``(slot_index, slots_skipped)``."""
        due = self._t0 + self._next * self.period
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
            idx = self._next
        else:
            idx = max(self._next, int((now - self._t0) / self.period))
        skipped = idx - self._next
        self._next = idx + 1
        return idx, skipped


# --------------------------------------------------------------------------- device

class DeviceSource(FrameSource):
    """A V4L2 camera through OpenCV (``cv2.VideoCapture(device, cv2.CAP_V4L2)``).

    Asks for MJPG at the configured size and rate (USB cameras give 720p30 only as MJPG) and
    resizes whatever arrives. Dropped frames are estimated from gaps between capture times.
    """

    kind = 'device'

    def __init__(self, device: str, width: int, height: int, fps: float, *,
                 fourcc: str = 'MJPG',
                 capture_factory: Callable[..., Any] = cv2.VideoCapture) -> None:
        super().__init__(width, height, fps)
        self.device, self._fourcc, self._factory = device, fourcc, capture_factory
        self._cap: Any = None
        self._last_t: float | None = None
        self.native_size: tuple[int, int] | None = None

    @property
    def description(self) -> str:
        return f'device {self.device}'

    def open(self) -> None:
        self.close()
        target: int | str = int(self.device) if self.device.isdigit() else self.device
        if isinstance(target, str) and not os.path.exists(target):
            raise CameraError(f'camera {self.device}: no such device (not connected or '
                              'unplugged)')
        cap = self._factory(target, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f'camera {self.device}: V4L2 cannot open it (busy, not a capture '
                              'device, or no permission)')
        if self._fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self._fourcc))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a stale queue
        if hasattr(cv2, 'CAP_PROP_READ_TIMEOUT_MSEC'):
            # An unplugged camera should fail in about a second, not OpenCV's default 10 s.
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(1000, int(3000 / self.fps)))
        self.native_size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self._cap, self._last_t = cap, None

    def read(self) -> tuple[np.ndarray, float]:
        if self._cap is None:
            raise CameraError(f'camera {self.device}: not open')
        if not self._cap.grab():
            raise CameraError(f'camera {self.device}: no frame (unplugged or stalled)')
        t = time.time()
        ok, frame = self._cap.retrieve()
        if not ok or frame is None or frame.ndim != 3 or frame.shape[2] != 3:
            raise CameraError(f'camera {self.device}: undecodable frame')
        if self._last_t is not None:
            gap = (t - self._last_t) * self.fps
            if gap > 1.5:
                self.dropped += int(round(gap)) - 1
        self._last_t = t
        if frame.shape[:2] != (self.height, self.width):
            try:
                frame = cv2.resize(frame, (self.width, self.height),
                                   interpolation=cv2.INTER_AREA)
            except cv2.error as exc:
                raise CameraError(f'camera {self.device}: bad frame {frame.shape}: {exc}') \
                    from exc
        return frame, t

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


# --------------------------------------------------------------------------- file

class FileSource(FrameSource):
    """Any video file PyAV/FFmpeg reads, played at its own frame rate like a live camera.

    ``fps`` is the file's rate (the constructor's ``fps`` is only a fallback when the file
    does not say). With ``loop`` the file restarts seamlessly; without it :meth:`read`
    raises :class:`EndOfFile` after the last frame.
    """

    kind = 'file'

    def __init__(self, path: str | os.PathLike[str], width: int, height: int,
                 fps: float = 30.0, *, loop: bool = True) -> None:
        super().__init__(width, height, fps)
        self.path, self.loop = Path(path), loop
        self._container: av.container.InputContainer | None = None
        self._frames: Any = None
        self._stream: Any = None
        self._t0: float | None = None   # monotonic time of media time 0, set by frame 0
        self._base = 0.0      # media time where the current pass of the file starts
        self._first_pts: float | None = None
        self._last_media = 0.0

    @property
    def description(self) -> str:
        return f'file {self.path}'

    def open(self) -> None:
        self.close()
        if not self.path.is_file():
            raise CameraError(f'video file {self.path}: no such file')
        try:
            self._container = av.open(str(self.path))
            streams = self._container.streams.video
            if not streams:
                raise CameraError(f'video file {self.path}: no video stream')
            self._stream = streams[0]
            self._stream.thread_type = 'AUTO'
        except av.FFmpegError as exc:
            self.close()
            raise CameraError(f'video file {self.path}: {exc}') from exc
        rate = self._stream.average_rate or self._stream.guessed_rate
        if rate and float(rate) > 0:
            self.fps = float(rate)
        self._frames = self._container.decode(self._stream)
        self._t0, self._base, self._first_pts, self._last_media = None, 0.0, None, 0.0

    def _next_frame(self) -> av.VideoFrame:
        assert self._container is not None
        for attempt in range(2):
            try:
                return next(self._frames)
            except StopIteration:
                pass
            except av.FFmpegError as exc:
                raise CameraError(f'video file {self.path}: {exc}') from exc
            if not self.loop or attempt:
                raise EndOfFile(f'video file {self.path}: end of file')
            # Next pass starts one frame after the last frame shown.
            self._base = self._last_media + 1.0 / self.fps
            self._first_pts = None
            try:
                self._container.seek(0)
            except av.FFmpegError as exc:
                raise CameraError(f'video file {self.path}: cannot rewind: {exc}') from exc
            self._frames = self._container.decode(self._stream)
        raise EndOfFile(f'video file {self.path}: no frames')

    def _media_time(self, frame: av.VideoFrame, fallback: float) -> float:
        if frame.pts is None or frame.time_base is None:
            return fallback
        pts = float(frame.pts * frame.time_base)
        if self._first_pts is None:
            self._first_pts = pts
        return self._base + pts - self._first_pts

    def read(self) -> tuple[np.ndarray, float]:
        if self._container is None:
            raise CameraError(f'video file {self.path}: not open')
        period = 1.0 / self.fps
        for skips in range(max(1, int(self.fps)) + 1):
            frame = self._next_frame()
            media = self._media_time(frame, self._last_media + period)
            self._last_media = media
            if self._t0 is None:   # the clock starts when the first frame is ready
                self._t0 = time.monotonic() - media
            lag = time.monotonic() - (self._t0 + media)
            if lag < period:
                break
            if skips == int(self.fps):
                # Decoding alone is slower than real time: show this frame, stop catching up.
                self._t0 += lag
                lag = 0.0
                break
            self.dropped += 1  # its slot has passed while we were busy: skip it, as a camera
        if lag < 0:
            time.sleep(-lag)
        t = time.time()
        try:
            img = frame.to_ndarray(width=self.width, height=self.height, format='bgr24')
        except (av.FFmpegError, ValueError) as exc:
            raise CameraError(f'video file {self.path}: cannot convert frame: {exc}') from exc
        return img, t

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._frames = self._stream = None


# --------------------------------------------------------------------------- test pattern

CODE_BITS = 32          # 24-bit counter + 8-bit CRC
CODE_COLS = 16          # two rows of 16 blocks
CODE_BLOCKS_PER_HEIGHT = 24   # block edge = height / 24: 10 px at 240p, 30 px at 720p
COUNTER_MASK = 0xFFFFFF


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _code_word(counter: int) -> int:
    counter &= COUNTER_MASK
    # XOR so an all-black (or all-white) corner is never a valid code.
    check = _crc8(counter.to_bytes(3, 'big')) ^ 0xA5
    return (counter << 8) | check


def _block_edges(height: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of each code block, MSB first, scaling with the frame height."""
    s = height / CODE_BLOCKS_PER_HEIGHT
    return [(round(r * s), round((r + 1) * s), round(c * s), round((c + 1) * s))
            for r in range(CODE_BITS // CODE_COLS) for c in range(CODE_COLS)]


def encode_frame_counter(frame: np.ndarray, counter: int, on: int = 255, off: int = 0) -> None:
    """Draw ``counter`` (mod 2**24) as black/white blocks in the top-left corner, in place
    (``on``/``off``: the levels of a bit; 235/16 on a video-range Y plane)."""
    word = _code_word(counter)
    for i, (y0, y1, x0, x1) in enumerate(_block_edges(frame.shape[0])):
        frame[y0:y1, x0:x1] = on if (word >> (CODE_BITS - 1 - i)) & 1 else off


def frame_size(frame: np.ndarray) -> tuple[int, int]:
    """(width, height) of a BGR ``(h, w, 3)`` or I420 ``(h * 3 / 2, w)`` frame."""
    if frame.ndim == 2:
        return frame.shape[1], frame.shape[0] * 2 // 3
    return frame.shape[1], frame.shape[0]


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """A BGR frame as is; I420 planes converted (BT.601 video range, as the encoder's)."""
    return frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_YUV2BGR_I420)


def i420_planes(frame: np.ndarray, width: int, height: int) -> tuple[np.ndarray, ...]:
    """Views of the Y, U and V planes of an I420 buffer of ``width`` x ``height``."""
    flat = frame.reshape(-1)
    n, q = width * height, width * height // 4
    return (flat[:n].reshape(height, width),
            flat[n:n + q].reshape(height // 2, width // 2),
            flat[n + q:n + 2 * q].reshape(height // 2, width // 2))


def decode_frame_counter(frame_bgr: np.ndarray) -> int:
    """Read the block-coded frame counter back from a (decoded, possibly rescaled) frame.

    Raises:
        CameraError: no valid code (CRC mismatch): not a test-pattern frame, or too damaged.
    """
    if frame_bgr.ndim not in (2, 3) or frame_bgr.shape[0] < CODE_BLOCKS_PER_HEIGHT * 2:
        raise CameraError(f'frame {frame_bgr.shape} too small for a frame counter')
    gray = frame_bgr if frame_bgr.ndim == 2 else frame_bgr.mean(axis=2, dtype=np.float32)
    word = 0
    for y0, y1, x0, x1 in _block_edges(frame_bgr.shape[0]):
        qy, qx = (y1 - y0) // 4, (x1 - x0) // 4   # centre half: away from blurred edges
        word = (word << 1) | int(gray[y0 + qy:y1 - qy, x0 + qx:x1 - qx].mean() >= 128)
    counter = word >> 8
    if _code_word(counter) != word:
        raise CameraError(f'no valid frame counter code (read {word:08x})')
    return counter


class TestPatternSource(FrameSource):
    """A moving pattern with the wall-clock time and frame number burnt in.

    Cheap at 1080p30: the background (colour bars, a grid, a diagonal ramp) is drawn once at
    twice the width and each frame is a scrolled slice of it plus a few small drawings. The
    frame counter is the frame's slot since :meth:`open` (so dropped frames show as gaps).
    :meth:`read` draws straight into I420 planes, what the encoder takes, so a simulated
    camera spends no CPU on a BGR->YUV conversion a real one would not need either;
    :meth:`render` draws the same picture in BGR.
    """

    kind = 'test_pattern'
    __test__ = False  # not a pytest class, despite the name

    def __init__(self, width: int, height: int, fps: float) -> None:
        super().__init__(width, height, fps)
        if width * 3 < height * 2:
            raise CameraError(f'test pattern {width}x{height}: needs width >= 2/3 height for '
                              'the counter code')
        if width % 2 or height % 2:
            raise CameraError(f'test pattern {width}x{height}: width and height must be even')
        self._bg = self._background(self.width, self.height)
        self._bg_yuv = i420_planes(cv2.cvtColor(self._bg, cv2.COLOR_BGR2YUV_I420),
                                   2 * self.width, self.height)
        self._pacer = _Pacer(self.fps)
        self._open = False
        self._scale = self.height / 720
        self._thick = max(1, round(2 * self._scale))
        # Crosses the frame in ~4 s; even, so the half-width chroma planes scroll with it.
        self._step = 2 * max(1, round(self.width / (8 * self.fps)))
        last = _block_edges(self.height)[-1]
        self._code_box = (0, 0, last[3], last[1])      # (x0, y0, x1, y1) of the counter code

    @staticmethod
    def _background(width: int, height: int) -> np.ndarray:
        bars = np.array([(192, 192, 192), (0, 192, 192), (192, 192, 0), (0, 192, 0),
                         (192, 0, 192), (0, 0, 192), (192, 0, 0), (32, 32, 32)], np.uint8)
        bg = np.empty((height, 2 * width, 3), np.uint8)
        cols = np.arange(2 * width) * len(bars) // width % len(bars)
        bg[:] = bars[cols][None, :, :]
        ramp = (np.arange(2 * width)[None, :] + np.arange(height)[:, None]) % 256
        lower = slice(height * 2 // 3, height)
        bg[lower] = ramp[lower, :, None].astype(np.uint8)
        grid = max(8, height // 12)
        bg[::grid, :] = 255
        bg[:, ::grid] = 255
        return bg

    def open(self) -> None:
        self._pacer.restart()
        self.dropped = 0
        self._open = True

    def read(self) -> tuple[np.ndarray, float]:
        if not self._open:
            raise CameraError('test pattern: not open')
        idx, skipped = self._pacer.wait()
        t = time.time()
        self.dropped += skipped
        return self.render_i420(idx, t), t

    def render(self, counter: int, t: float) -> np.ndarray:
        """The BGR frame for slot ``counter`` captured at UNIX time ``t``."""
        w = self.width
        off = (counter * self._step) % w
        frame = self._bg[:, off:off + w].copy()
        self._draw(frame, counter, t, (255, 255, 255), (0, 0, 0), 255, 0)
        return frame

    def render_i420(self, counter: int, t: float) -> np.ndarray:
        """:meth:`render` as I420 planes ``(h * 3 / 2, w)``, drawn on the Y plane (video
        range: white 235, black 16) with neutral chroma under the drawings."""
        w, h = self.width, self.height
        off = (counter * self._step) % w
        frame = np.empty((h * 3 // 2, w), np.uint8)
        y, u, v = i420_planes(frame, w, h)
        bg_y, bg_u, bg_v = self._bg_yuv
        y[:] = bg_y[:, off:off + w]
        u[:] = bg_u[:, off // 2:off // 2 + w // 2]
        v[:] = bg_v[:, off // 2:off // 2 + w // 2]
        for x0, y0, x1, y1 in self._draw(y, counter, t, 235, 16, 235, 16):
            u[y0 // 2:(y1 + 1) // 2, x0 // 2:(x1 + 1) // 2] = 128
            v[y0 // 2:(y1 + 1) // 2, x0 // 2:(x1 + 1) // 2] = 128
        return frame

    def _draw(self, img: np.ndarray, counter: int, t: float, white, black, on: int,
              off: int) -> list[tuple[int, int, int, int]]:
        """Draw the bouncing box, the counter code and the time stamp onto ``img`` (BGR, or a
        Y plane); return the rectangles drawn, ``(x0, y0, x1, y1)`` end-exclusive."""
        w, h = self.width, self.height
        # A box bouncing vertically, so motion is visible in both axes.
        box = h // 8
        y = int((h - box) * (0.5 + 0.5 * math.sin(counter * 2 * math.pi / (3 * self.fps))))
        cv2.rectangle(img, (w - 2 * box, y), (w - box, y + box), white, -1)
        encode_frame_counter(img, counter, on, off)
        stamp = datetime.fromtimestamp(t).strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]
        y0 = round(2 * h / CODE_BLOCKS_PER_HEIGHT)
        line = round(40 * self._scale) + 4
        x1 = min(w, round(620 * self._scale))
        cv2.rectangle(img, (0, y0), (x1, y0 + 2 * line + 8), black, -1)
        for i, text in enumerate((stamp, f'frame {counter}')):
            cv2.putText(img, text, (8, y0 + (i + 1) * line), cv2.FONT_HERSHEY_SIMPLEX,
                        1.2 * self._scale, white, self._thick, cv2.LINE_AA)
        return [(w - 2 * box, y, w - box + 1, y + box + 1), self._code_box,
                (0, y0, x1 + 1, y0 + 2 * line + 9)]

    def close(self) -> None:
        self._open = False


# --------------------------------------------------------------------------- ROS image topic

#: sensor_msgs/Image encodings :func:`image_to_bgr` converts: name -> (channels, cv2 code).
_BAYER = {'rggb': ('COLOR_BayerRGGB2BGR', 'COLOR_BayerBG2BGR'),
          'bggr': ('COLOR_BayerBGGR2BGR', 'COLOR_BayerRG2BGR'),
          'gbrg': ('COLOR_BayerGBRG2BGR', 'COLOR_BayerGR2BGR'),
          'grbg': ('COLOR_BayerGRBG2BGR', 'COLOR_BayerGB2BGR')}


def _code(*names: str) -> int:
    """The first OpenCV conversion code that exists (OpenCV renamed the Bayer ones in 4.x:
    the old BayerBG2BGR is the RGGB pattern)."""
    for name in names:
        if hasattr(cv2, name):
            return int(getattr(cv2, name))
    raise CameraError(f'OpenCV has none of {names}')


IMAGE_ENCODINGS: dict[str, tuple[int, int | None]] = {
    'bgr8': (3, None), 'rgb8': (3, _code('COLOR_RGB2BGR')),
    'bgra8': (4, _code('COLOR_BGRA2BGR')), 'rgba8': (4, _code('COLOR_RGBA2BGR')),
    'mono8': (1, _code('COLOR_GRAY2BGR')), '8UC1': (1, _code('COLOR_GRAY2BGR')),
    '8UC3': (3, None),
    # ROS 'yuv422' is UYVY (U0 Y0 V0 Y1); 'yuv422_yuy2' and 'yuyv' are YUYV.
    'yuv422': (2, _code('COLOR_YUV2BGR_UYVY')), 'uyvy': (2, _code('COLOR_YUV2BGR_UYVY')),
    'yuv422_yuy2': (2, _code('COLOR_YUV2BGR_YUY2')), 'yuyv': (2, _code('COLOR_YUV2BGR_YUY2')),
    **{f'bayer_{p}8': (1, _code(*names)) for p, names in _BAYER.items()},
}


def image_to_bgr(encoding: str, width: int, height: int, step: int, data: Any,
                 is_bigendian: int = 0) -> np.ndarray:
    """A ``sensor_msgs/Image`` payload as a ``height x width x 3`` uint8 BGR array.

    ``data`` is anything exposing the buffer protocol (rclpy gives an ``array.array``; no
    copy is made before the colour conversion). Row padding (``step`` > width * bytes per
    pixel) is skipped. ``mono16``/``16UC1`` keep their high byte.

    Raises:
        BadFrame: an unknown encoding, a size that does not match the data, or zero size.
    """
    if encoding in ('mono16', '16UC1'):
        if width <= 0 or height <= 0 or step < 2 * width:
            raise BadFrame(f'image {width}x{height} step {step}: bad geometry for {encoding}')
        buf = np.frombuffer(data, np.dtype('>u2' if is_bigendian else '<u2'))
        need = (height - 1) * (step // 2) + width
        if step % 2 or buf.size < need:
            raise BadFrame(f'image {width}x{height} {encoding}: {buf.size * 2} bytes, step '
                           f'{step}')
        rows = np.lib.stride_tricks.as_strided(buf, (height, width), (step, 2))
        return cv2.cvtColor((rows >> 8).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    try:
        channels, code = IMAGE_ENCODINGS[encoding]
    except KeyError:
        raise BadFrame(f'unknown image encoding {encoding!r}; known: '
                       f'{", ".join(sorted(IMAGE_ENCODINGS))}, mono16') from None
    row = width * channels
    if width <= 0 or height <= 0 or step < row:
        raise BadFrame(f'image {width}x{height} {encoding}: step {step} < {row}')
    buf = np.frombuffer(data, np.uint8)
    if buf.size < (height - 1) * step + row:
        raise BadFrame(f'image {width}x{height} {encoding} step {step}: only {buf.size} bytes')
    img = np.lib.stride_tricks.as_strided(buf, (height, width, channels), (step, channels, 1))
    if channels == 1:
        img = img[:, :, 0]
    if code is None:
        return np.ascontiguousarray(img)
    if encoding.startswith('bayer_') or encoding in ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'):
        img = np.ascontiguousarray(img)      # OpenCV wants whole rows for these
    return cv2.cvtColor(img, code)


def compressed_to_bgr(fmt: str, data: Any) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (jpeg or png; ``format`` as image_transport writes
    it, e.g. ``jpeg`` or ``bgr8; jpeg compressed bgr8``) as a BGR array.

    Raises:
        BadFrame: another format (h264 and friends are not images), or undecodable bytes.
    """
    kind = fmt.lower()
    if not any(k in kind for k in ('jpeg', 'jpg', 'png')):
        raise BadFrame(f'compressed image format {fmt!r}: only jpeg or png')
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BadFrame(f'compressed image ({fmt}): {len(data)} bytes do not decode')
    return img


class TopicSource(FrameSource):
    """Frames from a ROS image topic: the node pushes messages, the capture thread reads.

    ``convert(msg) -> (bgr, stamp)`` turns a message into a frame (the node's cv_bridge or
    the numpy path); it runs in :meth:`read`, on the capture thread, so a slow conversion
    drops queued messages (counted in ``dropped``) instead of blocking the executor. The
    size is set by the first frame (cropped to even width/height for yuv420p); a later frame
    of another size raises :class:`BadFrame`. No message for ``timeout_s`` is a
    :class:`CameraError` (reported and retried like an unplugged camera).
    """

    kind = 'topic'
    stamps_ros_time = True

    def __init__(self, topic: str, fps: float, convert: Callable[[Any], tuple[np.ndarray, float]],
                 *, timeout_s: float = 5.0, depth: int = 2) -> None:
        super().__init__(16, 16, fps)
        self.topic, self._convert, self.timeout_s = topic, convert, timeout_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.size: tuple[int, int] | None = None    # (width, height) once the first frame came
        self._open = False

    @property
    def description(self) -> str:
        return f'topic {self.topic}'

    def push(self, msg: Any) -> None:
        """Queue a message (any thread); the oldest queued one goes if the reader is behind."""
        while True:
            try:
                self._queue.put_nowait(msg)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def open(self) -> None:
        self._open = True

    def read(self) -> tuple[np.ndarray, float]:
        if not self._open:
            raise CameraError(f'topic {self.topic}: not open')
        deadline = time.monotonic() + self.timeout_s
        while True:             # short waits, so close() from another thread ends a read fast
            try:
                msg = self._queue.get(timeout=0.2)
                break
            except queue.Empty:
                if not self._open:
                    raise CameraError(f'topic {self.topic}: closed') from None
                if time.monotonic() >= deadline:
                    raise CameraError(f'topic {self.topic}: no image for {self.timeout_s:g} s '
                                      '(is the publisher running, and the topic remapped '
                                      'right?)') from None
        try:
            frame, t = self._convert(msg)
        except (cv2.error, ValueError, TypeError) as exc:
            raise BadFrame(f'topic {self.topic}: cannot convert: {exc}') from exc
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise BadFrame(f'topic {self.topic}: converted frame {frame.shape} {frame.dtype} '
                           'is not 8-bit BGR')
        h, w = frame.shape[:2]
        if h % 2 or w % 2:
            frame = frame[:h - h % 2, :w - w % 2]
            h, w = frame.shape[:2]
        if self.size is None:
            self.size = (w, h)
            self.width, self.height = w, h
        elif self.size != (w, h):
            raise BadFrame(f'topic {self.topic}: frame size {w}x{h} changed from '
                           f'{self.size[0]}x{self.size[1]} (the encoder keeps its size)')
        return frame, t

    def close(self) -> None:
        self._open = False


def open_source(kind: str, *, width: int, height: int, fps: float, device: str = '/dev/video0',
                path: str = '', loop: bool = True, topic: str = 'image_raw',
                convert: Callable[[Any], tuple[np.ndarray, float]] | None = None
                ) -> FrameSource:
    """Build (not open) the source ``kind`` (device | file | test_pattern | topic; a topic
    needs ``convert``, the node's message -> (bgr, stamp) function)."""
    if kind == 'topic':
        if convert is None:
            raise CameraError('topic source needs a message converter')
        return TopicSource(topic, fps, convert)
    if kind == 'device':
        return DeviceSource(device, width, height, fps)
    if kind == 'file':
        return FileSource(path, width, height, fps, loop=loop)
    if kind == 'test_pattern':
        return TestPatternSource(width, height, fps)
    raise CameraError(f'unknown camera source {kind!r}: device, file, test_pattern or topic')
