"""camera node: frames from a device, file, test pattern or ROS image topic, H.264 on the unit.

Publishes ``camera/h264`` (one Annex B access unit per message, stamped at capture),
``camera/image_raw`` (bgr8, at ``raw_rate`` for live view) and ``camera/camera_info``.
Capture and encoding run on a thread of their own so the executor (diagnostics, parameter
services) stays responsive; libx264 releases the GIL while it encodes. A camera that is
missing or unplugged is an ERROR diagnostic and is retried every ``retry_s``; the node lives on.

``source: topic`` takes frames from ``image_topic`` (remappable): ``sensor_msgs/Image``
(bgr8, rgb8, bgra8, rgba8, mono8, mono16, yuv422/uyvy, yuv422_yuy2/yuyv, bayer_*8) with
``image_transport: raw``, or ``sensor_msgs/CompressedImage`` (jpeg, png) with
``image_transport: compressed``; sensor-data QoS, so usb_cam, v4l2_camera, a RealSense,
Gazebo through ros_gz_bridge or a bag all fit. Frames go through the same encoder path as a
device's. Conversion uses cv_bridge where it imports, numpy/OpenCV otherwise. The first frame
sets the size; a frame of another size, an unknown encoding or bad bytes is counted
(``bad_frames``), reported as ERROR and dropped.

Time: ``camera/h264`` stamps are ROS time: a topic frame keeps its ``header.stamp`` (the
node clock when it is zero); other sources are stamped with the node clock at capture (the
clock as the frame is read, less the frame's age by the source's wall clock; sim time under
``use_sim_time``, where nothing is published before the first ``/clock``).
``time.monotonic`` only paces image_raw/camera_info and measures rates.
"""
from __future__ import annotations

import array
import sys
import threading
import time

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.exceptions import InvalidHandle
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from bodycam_ros.core.h264 import EncoderError, H264Encoder
from bodycam_ros.drivers.camera import (BadFrame, CameraError, EndOfFile, FrameSource,
                                        TopicSource, compressed_to_bgr, frame_size,
                                        image_to_bgr, open_source, to_bgr)
from bodycam_ros.rosutil import (ERROR, OK, SENSOR_QOS, VIDEO_QOS, WARN, Diagnostics,
                                 ParameterError, declare, run_node)

SOURCES = ('device', 'file', 'test_pattern', 'topic')
TRANSPORTS = ('raw', 'compressed')
#: Horizontal field of view assumed for camera_info when the lens is not calibrated.
DEFAULT_HFOV_DEG = 90.0


def stamp_of(t: float) -> Time:
    """ROS seconds -> builtin_interfaces/Time."""
    sec = int(t)
    return Time(sec=sec, nanosec=min(999_999_999, int(round((t - sec) * 1e9))))


def _cv_bridge():
    """A CvBridge where cv_bridge imports (ROS machines), else None (numpy path)."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return None
    return CvBridge()


def camera_info(width: int, height: int, hfov_deg: float = DEFAULT_HFOV_DEG) -> CameraInfo:
    """Plausible pinhole intrinsics (no distortion) for an uncalibrated camera of this size."""
    fx = (width / 2) / np.tan(np.radians(hfov_deg) / 2)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    return CameraInfo(width=width, height=height, distortion_model='plumb_bob',
                      d=[0.0] * 5, k=[fx, 0.0, cx, 0.0, fx, cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[fx, 0.0, cx, 0.0, 0.0, fx, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


class CameraNode(Node):
    """The camera. ``capture=False`` builds it without the capture thread, so a caller (the
    benchmark) can push frames through :meth:`process`, the exact per-frame path."""

    def __init__(self, *, capture: bool = True, **kw) -> None:
        super().__init__('camera', **kw)
        p = self._declare_all()
        self._p = p
        self._bridge = _cv_bridge() if p['source'] == 'topic' else None
        self._source: FrameSource = open_source(
            p['source'], width=p['width'], height=p['height'], fps=p['fps'],
            device=p['device'], path=p['path'], loop=p['loop'],
            topic=self.resolve_topic_name(p['image_topic']), convert=self._convert)
        self._encoder: H264Encoder | None = None
        self._info = camera_info(p['width'], p['height'])
        self._info.header.frame_id = p['frame_id']

        self._pub_h264 = self.create_publisher(CompressedImage, 'camera/h264', VIDEO_QOS)
        self._pub_raw = self.create_publisher(Image, 'camera/image_raw', SENSOR_QOS)
        self._pub_info = self.create_publisher(CameraInfo, 'camera/camera_info', SENSOR_QOS)
        if isinstance(self._source, TopicSource):
            in_type = Image if p['image_transport'] == 'raw' else CompressedImage
            self.create_subscription(in_type, p['image_topic'], self._source.push, SENSOR_QOS)
        self._diag = Diagnostics(self, hardware_id=self._source.description)

        # Written by the capture thread, read by the 1 Hz report; ints and floats only.
        self._lock = threading.Lock()
        self._level, self._message = OK, 'starting'
        self.captured = self.encoded = self.keyframes = self.errors = self.retries = 0
        self.bad_frames = 0
        self._bad_reported = 0       # bad_frames at the last report (ERROR while it grows)
        self._encode_s_total = 0.0
        self._last_error = ''
        self._streaming_since: float | None = None
        self._window = (time.monotonic(), 0, 0.0)   # (t, encoded, encode seconds) at last report
        raw_rate = p['raw_rate']
        self._raw_period = 1.0 / raw_rate if raw_rate > 0 else 0.0
        self._info_period = self._raw_period or 1.0   # camera_info at least once a second
        self._next_raw = self._next_info = 0.0

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture_loop, name='camera-capture',
                                        daemon=True)
        self.create_timer(1.0, self._report)
        if capture:
            self._thread.start()

    # ------------------------------------------------------------------ parameters

    def _declare_all(self) -> dict:
        def d(name, default, description, **kw):
            return declare(self, name, default, description, **kw)

        p = {
            'source': d('source', 'test_pattern', 'frame source: device (V4L2), file, '
                        'test_pattern, topic (a ROS image topic)', choices=SOURCES),
            'image_topic': d('image_topic', 'image', 'image topic to encode (source=topic; '
                             'remappable)'),
            'image_transport': d('image_transport', 'raw', 'raw: sensor_msgs/Image, '
                                 'compressed: sensor_msgs/CompressedImage jpeg/png '
                                 '(source=topic)', choices=TRANSPORTS),
            'device': d('device', '/dev/video0', 'V4L2 device path (source=device)'),
            'path': d('path', '', 'video file to play as the camera (source=file)'),
            'loop': d('loop', True, 'restart the file at its end (source=file)'),
            'width': d('width', 1280, 'frame width [px], even', min_value=16, max_value=7680),
            'height': d('height', 720, 'frame height [px], even', min_value=16,
                        max_value=4320),
            'fps': d('fps', 30, 'frame rate [Hz] (file: the file\'s own rate wins; topic: '
                     'its expected rate, for the encoder\'s rate control)',
                     min_value=1, max_value=120),
            'bitrate': d('bitrate', 4_000_000, 'H.264 target bit rate [bit/s]',
                         min_value=100_000, max_value=50_000_000),
            'gop': d('gop', 30, 'keyframe interval [frames], fixed', min_value=1,
                     max_value=600),
            'encoder_threads': d('encoder_threads', 1, 'x264 threads (slices of each frame); '
                                 '1 costs the least CPU per frame, more cut the wait for a '
                                 'frame on a slow core; 0 = one per core',
                                 min_value=0, max_value=16),
            'raw_rate': d('raw_rate', 2.0, 'camera/image_raw rate [Hz], 0 disables',
                          min_value=0.0, max_value=120.0),
            'frame_id': d('frame_id', 'camera_optical_frame', 'header.frame_id (REP 103 '
                          'optical frame)'),
            'retry_s': d('retry_s', 2.0, 'reopen period while the camera is missing [s]',
                         min_value=0.05, max_value=300.0),
        }
        for name in ('width', 'height'):
            if p[name] % 2:
                raise ParameterError(f'parameter {self.get_name()}.{name}={p[name]} is invalid; '
                                     'allowed an even number (yuv420p)')
        if p['source'] == 'file' and not p['path']:
            raise ParameterError(f'parameter {self.get_name()}.path is empty; allowed a video '
                                 'file path when source=file')
        if p['source'] == 'topic' and self.resolve_topic_name(p['image_topic']) in (
                self.resolve_topic_name(t) for t in ('camera/image_raw', 'camera/h264')):
            raise ParameterError(f'parameter {self.get_name()}.image_topic='
                                 f'{p["image_topic"]!r} is invalid; allowed any image topic '
                                 'but this node\'s own output')
        if p['source'] == 'test_pattern' and p['width'] * 3 < p['height'] * 2:
            raise ParameterError(f'parameter {self.get_name()}.width={p["width"]} is invalid; '
                                 'allowed >= 2/3 of height for the test pattern')
        return p

    # ------------------------------------------------------------------ capture thread

    def _capture_loop(self) -> None:
        try:
            self._capture()
        except Exception as exc:  # noqa: BLE001 - last guard of a thread: report, never vanish
            self.get_logger().fatal(f'capture thread stopped: {exc!r}')
            with self._lock:
                self.errors += 1
                self._last_error = repr(exc)
            self._set_state(ERROR, f'capture stopped: {exc!r}')
            raise

    def _capture(self) -> None:
        opened = False
        while not self._stop.is_set():
            if not opened:
                try:
                    self._source.open()
                except CameraError as exc:
                    self._fail(exc)
                    self._stop.wait(self._p['retry_s'])
                    continue
                opened = True
                self._set_state(OK, 'streaming')
            try:
                frame, t = self._source.read()
            except BadFrame as exc:
                self._bad_frame(exc)
                continue
            except EndOfFile:
                self._source.close()
                self._set_state(WARN, 'end of file')
                self.get_logger().warning(f'{self._source.description}: end of file')
                return
            except CameraError as exc:
                self._source.close()
                opened = False
                self._fail(exc)
                self._stop.wait(self._p['retry_s'])
                continue
            self.captured += 1
            if not self._source.stamps_ros_time or t <= 0.0:
                # The capture time on the node clock: now, less the frame's age by the
                # source's own (wall) clock, so conversion and resizing add no jitter.
                age = time.time() - t if not self._source.stamps_ros_time else 0.0
                t = self._now() - min(max(age, 0.0), 1.0)
            if t <= 0.0:
                continue                # sim time before the first /clock: nothing to stamp
            if not self.process(frame, t):
                return
        self._source.close()

    def _now(self) -> float:
        """The node clock (ROS time) in seconds; 0 while sim time has had no /clock."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _convert(self, msg: Image | CompressedImage) -> tuple[np.ndarray, float]:
        """An input message as (BGR frame, stamp in ROS s); cv_bridge when it imported.

        Raises:
            BadFrame: an encoding or format neither path knows, or undecodable bytes.
        """
        t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        bridge = self._bridge
        if bridge is not None:
            try:
                if isinstance(msg, CompressedImage):
                    return bridge.compressed_imgmsg_to_cv2(msg, 'bgr8'), t
                return bridge.imgmsg_to_cv2(msg, 'bgr8'), t
            except Exception as exc:  # noqa: BLE001 - CvBridgeError and whatever cv2 raised
                raise BadFrame(f'cv_bridge: {type(exc).__name__}: {exc}') from exc
        if isinstance(msg, CompressedImage):
            return compressed_to_bgr(msg.format, msg.data), t
        return image_to_bgr(msg.encoding, msg.width, msg.height, msg.step, msg.data,
                            msg.is_bigendian), t

    def _bad_frame(self, exc: CameraError) -> None:
        with self._lock:
            self.bad_frames += 1
            self._last_error = str(exc)
        self.get_logger().error(f'frame dropped: {exc} ({self.bad_frames} so far)',
                                throttle_duration_sec=5.0)
        if self.bad_frames == 1:
            self._report()

    def _make_encoder(self, width: int, height: int) -> bool:
        """Create the encoder at the first frame's size, once the source's rate is known;
        False if libx264 cannot open."""
        if self._encoder is None:
            try:
                self._encoder = H264Encoder(width, height, self._source.fps,
                                            self._p['bitrate'], self._p['gop'],
                                            threads=self._p['encoder_threads'])
                if (width, height) != (self._info.width, self._info.height):
                    self._info = camera_info(width, height)     # a topic's own size
                    self._info.header.frame_id = self._p['frame_id']
            except EncoderError as exc:
                self._source.close()
                self.errors += 1
                self._last_error = str(exc)
                self.get_logger().error(f'encoder: {exc}')
                self._set_state(ERROR, f'encoder unavailable: {exc}')
                return False
        return True

    def process(self, frame: np.ndarray, t: float) -> bool:
        """Encode and publish one captured frame (h264; image_raw and camera_info when due).

        Returns False when the node is going down (or the encoder cannot open).
        """
        if self._encoder is None and not self._make_encoder(*frame_size(frame)):
            return False
        assert self._encoder is not None
        try:
            t0 = time.perf_counter()
            au = self._encoder.encode(frame)
            self._encode_s_total += time.perf_counter() - t0
        except EncoderError as exc:
            with self._lock:
                self.errors += 1
                self._last_error = str(exc)
            self.get_logger().error(f'encoder: {exc}', throttle_duration_sec=5.0)
            return True
        self.encoded += 1
        self.keyframes += au.is_keyframe
        stamp = stamp_of(t)
        # array.array, not bytes: rclpy checks a bytes value byte by byte in Python.
        msg = CompressedImage(format='h264', data=array.array('B', au.data))
        msg.header = Header(stamp=stamp, frame_id=self._p['frame_id'])
        if not self._safe_publish(self._pub_h264, msg):
            return False
        now = time.monotonic()
        if self._raw_period and now >= self._next_raw:
            self._next_raw = max(self._next_raw + self._raw_period, now)
            if self._pub_raw.get_subscription_count():   # 2.7 MB at 720p: only if wanted
                self._publish_raw(frame, stamp)
        if now >= self._next_info:
            self._next_info = max(self._next_info + self._info_period, now)
            self._info.header.stamp = stamp
            self._safe_publish(self._pub_info, self._info)
        return True

    def _publish_raw(self, frame: np.ndarray, stamp: Time) -> None:
        frame = to_bgr(frame)
        h, w = frame.shape[:2]
        msg = Image(height=h, width=w, encoding='bgr8', is_bigendian=0, step=w * 3,
                    data=array.array('B', frame.tobytes()))
        msg.header = Header(stamp=stamp, frame_id=self._p['frame_id'])
        self._safe_publish(self._pub_raw, msg)

    def _safe_publish(self, pub, msg) -> bool:
        if self._stop.is_set() or not self.context.ok():
            return False
        try:
            pub.publish(msg)
        except (InvalidHandle, _rclpy.RCLError):
            if self._stop.is_set() or not self.context.ok():
                return False  # shutting down under us: the SIGINT path, not an error
            raise
        return True

    # ------------------------------------------------------------------ status

    def _fail(self, exc: CameraError) -> None:
        with self._lock:
            self.errors += 1
            self.retries += 1
            self._last_error = str(exc)
        self.get_logger().error(f'{exc}; retrying every {self._p["retry_s"]:g} s',
                                throttle_duration_sec=10.0)
        self._set_state(ERROR, f'camera unavailable: {exc}')

    def _set_state(self, level: int, message: str) -> None:
        with self._lock:
            changed = (level, message) != (self._level, self._message)
            self._level, self._message = level, message
            if level == OK and self._streaming_since is None:
                self._streaming_since = time.monotonic()
            elif level != OK:
                self._streaming_since = None
        if changed:
            self._report()

    @property
    def dropped(self) -> int:
        return self._source.dropped

    def _report(self) -> None:
        size = (self._encoder.width, self._encoder.height) if self._encoder is not None else \
            (self._p['width'], self._p['height'])
        enc_w, enc_h = size
        with self._lock:
            now, enc, enc_s = time.monotonic(), self.encoded, self._encode_s_total
            t0, enc0, enc_s0 = self._window
            self._window = (now, enc, enc_s)
            n = enc - enc0
            fps = n / (now - t0) if now > t0 else 0.0
            level, message = self._level, self._message
            bad, self._bad_reported = self.bad_frames - self._bad_reported, self.bad_frames
            if bad and level == OK:
                level, message = ERROR, f'{bad} bad frame(s) dropped: {self._last_error}'
            elif (level == OK and self._streaming_since is not None
                    and now - self._streaming_since > 3.0 and fps < 0.8 * self._source.fps):
                level, message = WARN, f'low frame rate {fps:.1f} < {self._source.fps:g} fps'
            self._diag.set(
                level, message, source=self._source.description, frames_captured=self.captured,
                frames_encoded=enc, dropped_frames=self._source.dropped, keyframes=self.keyframes,
                fps=fps, encode_ms=1000 * (enc_s - enc_s0) / n if n else 0.0,
                width=enc_w, height=enc_h, bitrate=self._p['bitrate'],
                gop=self._p['gop'], errors=self.errors, retries=self.retries,
                bad_frames=self.bad_frames,
                last_error=self._last_error)

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Stop the capture thread, then release the source and the encoder."""
        self._stop.set()
        if isinstance(self._source, TopicSource):
            self._source.close()        # thread-safe: ends a read waiting for a message
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        self._source.close()
        if self._encoder is not None:
            self._encoder.close()


def main(args=None) -> int:
    return run_node(lambda: CameraNode(), args)


if __name__ == '__main__':
    sys.exit(main())
