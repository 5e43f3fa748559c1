"""camera: frame sources, and the node over real DDS (in-process and as its own process).

The stream a subscriber receives is decoded back (PyAV, and ffprobe as an independent reader)
and compared with what the source produced: the real sample video frame by frame, or the test
pattern's block-coded frame counter.
"""
from __future__ import annotations

import array
import signal
import subprocess
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from bodycam_ros.core.h264 import EncoderError, H264Encoder, has_parameter_sets, is_keyframe
from bodycam_ros.drivers.camera import (BadFrame, CameraError, DeviceSource, EndOfFile,
                                        FileSource, TestPatternSource, compressed_to_bgr,
                                        decode_frame_counter, image_to_bgr, to_bgr)
from bodycam_ros.nodes.camera_node import CameraNode, stamp_of
from bodycam_ros.rosutil import ERROR, OK, RELIABLE_QOS, SENSOR_QOS, VIDEO_QOS, WARN
from conftest import shared_data, spin_for, spin_until

W, H = 320, 240
VIDEO = ('video', 'one-by-one-person-detection.mp4')   # 768x432, 10 fps, 139.4 s (real)


def file_frames(path: Path, n: int) -> list[np.ndarray]:
    """The first ``n`` frames of a video, decoded straight from the file at W x H."""
    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            out.append(f.to_ndarray(width=W, height=H, format='bgr24'))
            if len(out) == n:
                break
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-9)))


def decode(units: list[bytes]) -> list[np.ndarray]:
    dec = av.CodecContext.create('h264', 'r')
    frames = []
    for u in units:
        frames += [f.to_ndarray(format='bgr24') for f in dec.decode(av.Packet(u))]
    return frames + [f.to_ndarray(format='bgr24') for f in dec.decode(None)]


def from_first_keyframe(msgs: list[CompressedImage]) -> list[CompressedImage]:
    for i, m in enumerate(msgs):
        if is_keyframe(bytes(m.data)):
            return msgs[i:]
    raise AssertionError(f'no keyframe in {len(msgs)} messages')


def stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


class Probe(Node):
    """Subscribes to everything the camera publishes."""

    def __init__(self, ctx) -> None:
        super().__init__('probe', context=ctx)
        self.h264: list[CompressedImage] = []
        self.received: list[float] = []
        self.raw: list[Image] = []
        self.info: list[CameraInfo] = []
        self.diag: list = []
        self.create_subscription(CompressedImage, 'camera/h264', self._on_h264, VIDEO_QOS)
        self.create_subscription(Image, 'camera/image_raw', self.raw.append, SENSOR_QOS)
        self.create_subscription(CameraInfo, 'camera/camera_info', self.info.append, SENSOR_QOS)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, RELIABLE_QOS)

    def _on_h264(self, msg: CompressedImage) -> None:
        self.h264.append(msg)
        self.received.append(time.monotonic())

    def _on_diag(self, arr: DiagnosticArray) -> None:
        self.diag += [s for s in arr.status if s.name == 'camera']

    def last_diag(self) -> tuple[bytes, str, dict[str, str]] | None:
        if not self.diag:
            return None
        s = self.diag[-1]
        return s.level, s.message, {kv.key: kv.value for kv in s.values}


def camera(ctx, **params) -> CameraNode:
    return CameraNode(context=ctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in ({'width': W, 'height': H} | params).items()])


# ------------------------------------------------------------------ sources (no ROS)

def test_test_pattern_counts_frames_and_skips_what_a_slow_reader_missed():
    src = TestPatternSource(W, H, 50)
    with src:
        got = [src.read() for _ in range(10)]
        counters = [decode_frame_counter(to_bgr(f)) for f, _ in got]
        # Consecutive unless the reader was late for a slot; then the gap is counted.
        gaps = np.diff(counters)
        assert (gaps >= 1).all() and int((gaps - 1).sum()) == src.dropped <= 3, counters
        period = np.diff([t for _, t in got]) / gaps
        assert abs(np.median(period) - 0.02) < 0.005, period
        before = src.dropped
        time.sleep(0.2)   # a capture loop that stalls for 10 frame periods
        frame, _ = src.read()
        jump = decode_frame_counter(to_bgr(frame)) - counters[-1]
        assert jump >= 10 and src.dropped - before == jump - 1, (jump, src.dropped)


def test_test_pattern_reads_as_i420_the_picture_the_bgr_path_would_encode():
    """The simulated camera draws straight into I420 (no BGR->YUV conversion a frame): what
    the encoder gets must be the same picture the BGR path would have given it."""
    src = TestPatternSource(1280, 720, 30)
    for i in (0, 7, 45, 1000):
        i420 = src.render_i420(i, 1.7e9 + i / 30)
        assert i420.shape == (1080, 1280) and i420.dtype == np.uint8
        via_bgr = cv2.cvtColor(src.render(i, 1.7e9 + i / 30), cv2.COLOR_BGR2YUV_I420)
        diff = np.abs(i420.astype(np.int16) - via_bgr)
        # Rounding of the drawings' anti-aliased edges only: the planes agree almost
        # everywhere, and the burnt-in counter reads back.
        assert diff.mean() < 0.5 and (diff > 8).mean() < 0.002, (i, diff.mean())
        assert decode_frame_counter(to_bgr(i420)) == i
    enc = H264Encoder(1280, 720, 30, 2_000_000, 30)
    units = [enc.encode(src.render_i420(i, 0.0)).data for i in range(3)]
    assert decode_frame_counter(decode(units)[-1]) == 2
    with pytest.raises(EncoderError, match=r'\(1080, 1280\) uint8 I420'):
        enc.encode(np.zeros((1000, 1280), np.uint8))


def test_frame_counter_is_not_read_from_an_ordinary_picture():
    frame = file_frames(shared_data(*VIDEO), 1)[0]
    with pytest.raises(CameraError, match='no valid frame counter'):
        decode_frame_counter(frame)
    with pytest.raises(CameraError):
        decode_frame_counter(np.zeros((H, W, 3), np.uint8))


def test_file_source_plays_real_video_at_its_rate_resized():
    path = shared_data(*VIDEO)
    expect = file_frames(path, 8)
    with FileSource(path, W, H, fps=30, loop=True) as src:
        assert src.fps == pytest.approx(10.0)
        got = [src.read() for _ in range(8)]
    assert all(f.shape == (H, W, 3) for f, _ in got)
    assert min(psnr(f, e) for (f, _), e in zip(got, expect)) > 40
    assert np.median(np.diff([t for _, t in got])) == pytest.approx(0.1, abs=0.02)


@pytest.fixture
def short_clip(tmp_path) -> Path:
    """The first 10 frames (1 s) of the real video, stream-copied (no re-encode)."""
    out = tmp_path / 'short.mp4'
    subprocess.run(['ffmpeg', '-v', 'error', '-i', str(shared_data(*VIDEO)), '-frames:v', '10',
                    '-c', 'copy', '-an', str(out)], check=True, timeout=30)
    return out


def test_file_source_ends_or_loops(short_clip):
    with FileSource(short_clip, W, H, loop=False) as src:
        n = 0
        with pytest.raises(EndOfFile, match='end of file'):
            while True:
                src.read()
                n += 1
    assert n == 10 and src.dropped == 0
    with FileSource(short_clip, W, H, loop=True) as src:
        got = [src.read() for _ in range(13)]
    first = file_frames(short_clip, 3)
    for k in range(3):   # frames 10..12 are the clip's frames 0..2 again
        assert psnr(got[10 + k][0], first[k]) > 40
    gaps = np.diff([t for _, t in got])
    assert gaps.max() < 0.2, 'the loop restarts without a pause'


def test_missing_device_and_file_raise_clear_errors(tmp_path):
    with pytest.raises(CameraError, match='/dev/video99: no such device'):
        DeviceSource('/dev/video99', W, H, 30).open()
    with pytest.raises(CameraError, match='no such file'):
        FileSource(tmp_path / 'nope.mp4', W, H).open()


class FakeCapture:
    """The edge of the world: a V4L2 camera delivering 640x480 until it is unplugged."""

    def __init__(self, target, api) -> None:
        self.frames = 3
        self.props = {}

    def isOpened(self) -> bool:
        return True

    def set(self, prop, value) -> bool:
        self.props[prop] = value
        return True

    def get(self, prop) -> float:
        return {3: 640.0, 4: 480.0}.get(prop, 0.0)

    def grab(self) -> bool:
        self.frames -= 1
        return self.frames >= 0

    def retrieve(self):
        return True, np.full((480, 640, 3), 77, np.uint8)

    def release(self) -> None:
        pass


def test_device_source_resizes_and_reports_unplug(tmp_path):
    dev = tmp_path / 'video0'
    dev.touch()
    with DeviceSource(str(dev), W, H, 30, capture_factory=FakeCapture) as src:
        assert src.native_size == (640, 480)
        frame, t = src.read()
        assert frame.shape == (H, W, 3) and abs(t - time.time()) < 1
        src.read(), src.read()
        with pytest.raises(CameraError, match='unplugged'):
            src.read()


# ------------------------------------------------------------------ node, in-process

def test_node_streams_real_video_that_decodes_back_frame_by_frame(ctx, executor, tmp_path):
    path = shared_data(*VIDEO)
    gop = 5
    probe = Probe(ctx)
    executor.add_node(probe)
    node = camera(ctx, source='file', path=str(path), gop=gop, bitrate=1_000_000, raw_rate=0.0)
    executor.add_node(node)
    assert spin_until(executor, lambda: len(probe.h264) >= 32, timeout_s=15), \
        f'{len(probe.h264)} messages'
    msgs = from_first_keyframe(probe.h264)

    assert all(m.format == 'h264' and m.header.frame_id == 'camera_optical_frame' for m in msgs)
    # The count fits the time: 10 fps by capture stamp, and as received.
    stamps = np.array([stamp(m) for m in probe.h264])
    gaps = np.diff(stamps)
    assert np.median(gaps) == pytest.approx(0.1, abs=0.005) and gaps.max() < 0.3, gaps
    assert stamps[-1] - stamps[0] == pytest.approx(0.1 * (len(stamps) - 1), abs=0.15)
    span = probe.received[-1] - probe.received[0]
    assert abs(len(probe.h264) - 1 - span * 10) <= 3, (len(probe.h264), span)
    assert abs(stamps[-1] - time.time()) < 1.0, 'stamp is the capture time'
    # Fixed GOP with SPS/PPS on every keyframe, and only there.
    keys = [i for i, m in enumerate(msgs) if is_keyframe(bytes(m.data))]
    assert keys == list(range(0, len(msgs), gop))
    assert [has_parameter_sets(bytes(m.data)) for m in msgs] == [i % gop == 0
                                                                  for i in range(len(msgs))]
    # Decoded frames are the file's frames, in order, none missing or repeated.
    frames = decode([bytes(m.data) for m in msgs])
    assert len(frames) == len(msgs) and frames[0].shape == (H, W, 3)
    reference = file_frames(path, len(probe.h264) + 40)
    start = int(np.argmax([psnr(frames[0], r) for r in reference[:-len(frames)]]))
    scores = [psnr(f, reference[start + k]) for k, f in enumerate(frames)]
    assert min(scores) > 30, f'frame {int(np.argmin(scores))} does not match: {min(scores):.1f} dB'
    # ffprobe, an independent reader, agrees on the written stream.
    out_file = tmp_path / 'camera.h264'
    out_file.write_bytes(b''.join(bytes(m.data) for m in msgs))
    res = subprocess.run(['ffprobe', '-v', 'error', '-count_frames', '-select_streams', 'v:0',
                          '-show_entries', 'stream=codec_name,width,height,nb_read_frames,'
                          'has_b_frames', '-of', 'csv=p=0', str(out_file)],
                         capture_output=True, text=True, timeout=30, check=True)
    assert res.stdout.strip() == f'h264,{W},{H},0,{len(msgs)}', res.stdout + res.stderr
    assert node.dropped == 0


def test_node_test_pattern_counters_are_consecutive(ctx, executor):
    probe = Probe(ctx)
    executor.add_node(probe)
    node = camera(ctx, source='test_pattern', fps=30, gop=15, bitrate=500_000, raw_rate=5.0)
    executor.add_node(node)
    assert spin_until(executor, lambda: len(probe.h264) >= 60 and len(probe.raw) >= 3
                      and probe.info, timeout_s=15), (len(probe.h264), len(probe.raw))
    msgs = from_first_keyframe(probe.h264)
    counters = [decode_frame_counter(f) for f in decode([bytes(m.data) for m in msgs])]
    assert len(counters) == len(msgs)
    # Reliable QoS, one process: nothing lost in transport. A gap may only be a frame the
    # capture loop itself dropped (counted by the node), never a duplicate.
    gaps = np.diff(counters)
    assert (gaps >= 1).all(), counters
    assert int((gaps - 1).sum()) <= node.dropped, (counters, node.dropped)
    # The counter and the capture stamp tell the same time.
    elapsed = stamp(msgs[-1]) - stamp(msgs[0])
    assert abs((counters[-1] - counters[0]) / 30 - elapsed) < 0.05
    # image_raw is the same picture at the reduced rate, with the h264 stamp of that frame.
    by_stamp = {stamp(m): c for m, c in zip(msgs, counters)}
    matched = [r for r in probe.raw if stamp(r) in by_stamp]
    assert matched, 'image_raw stamps are h264 capture stamps'
    for raw in matched:
        assert (raw.encoding, raw.width, raw.height, raw.step) == ('bgr8', W, H, W * 3)
        img = np.frombuffer(bytes(raw.data), np.uint8).reshape(H, W, 3)
        assert decode_frame_counter(img) == by_stamp[stamp(raw)]
    raw_rate = (len(probe.raw) - 1) / (stamp(probe.raw[-1]) - stamp(probe.raw[0]))
    assert 3.5 < raw_rate < 6.5, raw_rate
    info = probe.info[-1]
    assert (info.width, info.height, info.header.frame_id) == (W, H, 'camera_optical_frame')
    fx, cx, cy = info.k[0], info.k[2], info.k[5]
    assert fx == info.k[4] > 0 and abs(cx - (W - 1) / 2) < 1 and abs(cy - (H - 1) / 2) < 1
    assert spin_until(executor, lambda: int(probe.last_diag()[2]['frames_encoded'])
                      >= len(msgs), timeout_s=3), 'diagnostics report once a second'
    level, _, values = probe.last_diag()
    assert level == OK
    assert 25 < float(values['fps']) < 35
    assert values['dropped_frames'] == str(node.dropped)
    assert values['source'] == 'test_pattern' and float(values['encode_ms']) > 0


def test_source_that_appears_late_is_picked_up_then_ends_with_warn(ctx, executor, short_clip):
    """Missing input is an ERROR retried every retry_s; once it exists the node streams it,
    and a file without loop ends in WARN 'end of file' with the node still alive."""
    late = short_clip.with_name('late.mp4')
    probe = Probe(ctx)
    executor.add_node(probe)
    executor.add_node(camera(ctx, source='file', path=str(late), loop=False, retry_s=0.2))
    assert spin_until(executor, lambda: probe.last_diag() and probe.last_diag()[0] == ERROR,
                      timeout_s=10), probe.last_diag()
    assert 'no such file' in probe.last_diag()[1]
    short_clip.rename(late)   # the "camera" is plugged in
    assert spin_until(executor, lambda: probe.last_diag()[0] == WARN, timeout_s=10), \
        probe.last_diag()
    levels = [s.level for s in probe.diag]
    assert OK in levels[levels.index(ERROR):], 'streaming (OK) between missing and end'
    assert probe.last_diag()[1] == 'end of file'
    values = probe.last_diag()[2]
    assert values['frames_captured'] == values['frames_encoded'] == '10'
    assert int(values['retries']) >= 1 and 'no such file' in values['last_error']
    assert len(probe.h264) >= 9   # the first may go out before discovery completes
    reports = len(probe.diag)
    spin_for(executor, 1.2)   # the node is alive and keeps reporting
    assert len(probe.diag) > reports and probe.diag[-1].message == 'end of file'


# ------------------------------------------------------------------ node as a process

def test_missing_device_is_an_error_retried_while_the_node_lives(ctx, executor, start_process):
    proc = start_process('bodycam_ros.nodes.camera_node', '--ros-args', '-p', 'source:=device',
                         '-p', 'device:=/dev/video99', '-p', 'retry_s:=0.3')
    probe = Probe(ctx)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.last_diag() and
                      int(probe.last_diag()[2]['retries']) >= 3, timeout_s=20), proc.output()
    level, message, values = probe.last_diag()
    assert level == ERROR and '/dev/video99' in message and 'no such device' in message
    assert values['frames_captured'] == '0'
    assert proc.proc.poll() is None, 'the node must keep running'
    assert proc.stop(signal.SIGINT) == 0, proc.log_path.read_text()


@pytest.mark.parametrize('arg, name', [('fps:=0', 'fps'), ('source:=foo', 'source'),
                                       ('width:=321', 'width'), ('fps:=29.97', 'fps'),
                                       ('encoder_threads:=-1', 'encoder_threads')])
def test_bad_parameter_exits_2_naming_it(start_process, arg, name):
    proc = start_process('bodycam_ros.nodes.camera_node', '--ros-args', '-p', arg)
    assert proc.proc.wait(timeout=30) == 2, proc.output()
    assert f'camera.{name}' in proc.output()


def test_sigint_while_streaming_720p_exits_0(ctx, executor, start_process):
    proc = start_process('bodycam_ros.nodes.camera_node', '--ros-args',
                         '--params-file', 'config/sim.yaml', '-p', 'raw_rate:=10.0')
    probe = Probe(ctx)
    executor.add_node(probe)
    assert spin_until(executor, lambda: len(probe.h264) >= 40, timeout_s=20), proc.output()
    frame = decode([bytes(m.data) for m in from_first_keyframe(probe.h264)])[0]
    assert frame.shape == (720, 1280, 3)
    decode_frame_counter(frame)
    t0 = time.monotonic()
    assert proc.stop(signal.SIGINT) == 0, proc.log_path.read_text()
    assert time.monotonic() - t0 < 5
    assert 'Traceback' not in proc.log_path.read_text()


# ------------------------------------------------------------------ source: topic

#: Encodings a probe publishes as sensor_msgs/Image, with the PSNR floor (dB) their
#: conversion back to BGR must keep vs the source (mono8: vs the source's grey).
TOPIC_ENCODINGS = ('bgr8', 'rgb8', 'mono8', 'yuv422', 'yuv422_yuy2', 'bayer_rggb8',
                   'bayer_bggr8', 'bayer_gbrg8', 'bayer_grbg8')
SIM_T0 = 978_307_200.0           # 2001-01-01: a stamp no wall clock gives today


def grey_bgr(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def encode_as(bgr: np.ndarray, enc: str) -> tuple[bytes, int]:
    """A BGR frame as a camera driver would send it in ``enc``: (data, step).

    YUV 4:2:2 is BT.601 limited range (what V4L2 cameras give), chroma from OpenCV's I420.
    Bayer keeps one colour per pixel in the named 2x2 order."""
    h, w = bgr.shape[:2]
    if enc == 'bgr8':
        return bgr.tobytes(), w * 3
    if enc == 'rgb8':
        return np.ascontiguousarray(bgr[:, :, ::-1]).tobytes(), w * 3
    if enc == 'mono8':
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).tobytes(), w
    if enc in ('yuv422', 'yuv422_yuy2'):
        i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
        y = i420[:h]
        u = np.repeat(i420[h:h + h // 4].reshape(h // 2, w // 2), 2, axis=0)
        v = np.repeat(i420[h + h // 4:].reshape(h // 2, w // 2), 2, axis=0)
        out = np.empty((h, w * 2), np.uint8)
        order = (u, y[:, 0::2], v, y[:, 1::2]) if enc == 'yuv422' else \
            (y[:, 0::2], u, y[:, 1::2], v)
        for k, plane in enumerate(order):
            out[:, k::4] = plane
        return out.tobytes(), w * 2
    if enc.startswith('bayer_'):
        idx = {'b': 0, 'g': 1, 'r': 2}
        out = np.empty((h, w), np.uint8)
        for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            out[dy::2, dx::2] = bgr[dy::2, dx::2, idx[enc[6 + k]]]
        return out.tobytes(), w
    raise ValueError(enc)


def image_msg(bgr: np.ndarray, enc: str, t: float) -> Image:
    data, step = encode_as(bgr, enc)
    msg = Image(height=bgr.shape[0], width=bgr.shape[1], encoding=enc, is_bigendian=0,
                step=step, data=array.array('B', data))
    msg.header.stamp = stamp_of(t)
    msg.header.frame_id = 'sim_camera'
    return msg


def reference(bgr: np.ndarray, enc: str) -> np.ndarray:
    return grey_bgr(bgr) if enc == 'mono8' else bgr


def test_image_conversions_of_real_frames_every_encoding_and_padding():
    frames = file_frames(shared_data(*VIDEO), 3)
    for enc in TOPIC_ENCODINGS:
        for f in frames:
            data, step = encode_as(f, enc)
            got = image_to_bgr(enc, W, H, step, data)
            assert got.shape == (H, W, 3) and got.dtype == np.uint8, enc
            floor = 100.0 if enc in ('bgr8', 'rgb8', 'mono8') else \
                40.0 if enc.startswith('yuv') else 30.0
            assert psnr(got, reference(f, enc)) > floor, enc
    # Rows padded to a 64-byte step (as some drivers do) are skipped, not read as pixels.
    pad = 64 - (W * 3) % 64
    padded = np.zeros((H, W * 3 + pad), np.uint8)
    padded[:, :W * 3] = frames[0].reshape(H, W * 3)
    assert np.array_equal(image_to_bgr('bgr8', W, H, W * 3 + pad, padded.tobytes()), frames[0])
    with pytest.raises(BadFrame, match="unknown image encoding 'nv21_weird'"):
        image_to_bgr('nv21_weird', W, H, W, bytes(W * H))
    with pytest.raises(BadFrame, match='only 100 bytes'):
        image_to_bgr('bgr8', W, H, W * 3, bytes(100))
    ok, jpg = cv2.imencode('.jpg', frames[0], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert psnr(compressed_to_bgr('jpeg', jpg.tobytes()), frames[0]) > 30
    ok, png = cv2.imencode('.png', frames[0])
    assert np.array_equal(compressed_to_bgr('bgr8; png compressed bgr8', png.tobytes()),
                          frames[0])
    with pytest.raises(BadFrame, match='do not decode'):
        compressed_to_bgr('jpeg', b'\xff\xd8 not a jpeg')
    with pytest.raises(BadFrame, match="'h264'"):
        compressed_to_bgr('h264', b'\0\0\0\1')


def run_topic_camera(ctx, executor, msgs: list, transport: str, in_type: type,
                     period_s: float = 0.12) -> tuple[CameraNode, Probe]:
    """A camera on ``source: topic`` and a probe publishing ``msgs`` (paced) into it."""
    probe = Probe(ctx)
    executor.add_node(probe)
    node = camera(ctx, source='topic', image_topic='/sim/camera/image',
                  image_transport=transport, fps=10, gop=5, raw_rate=0.0)
    executor.add_node(node)
    pub = probe.create_publisher(in_type, '/sim/camera/image', SENSOR_QOS)
    assert spin_until(executor, lambda: pub.get_subscription_count() > 0, 10.0)
    for msg in msgs:
        pub.publish(msg)
        spin_for(executor, period_s)
    last = stamp(msgs[-1])
    assert spin_until(executor, lambda: probe.h264 and stamp(probe.h264[-1]) >= last - 0.5,
                      15.0), f'{len(probe.h264)} of {len(msgs)} frames came out'
    return node, probe


def check_stream(probe: Probe, sent: dict[float, np.ndarray], floor_by_stamp: dict[float, float]
                 ) -> dict[float, float]:
    """Every camera/h264 message carries a sent stamp; decoded, each is the sent frame's size
    and above its PSNR floor. Returns PSNR by stamp."""
    msgs = from_first_keyframe(probe.h264)
    stamps = [round(stamp(m), 6) for m in msgs]
    assert set(stamps) <= set(sent), 'camera/h264 stamps are the incoming header stamps'
    keys = [i for i, m in enumerate(msgs) if is_keyframe(bytes(m.data))]
    assert all(has_parameter_sets(bytes(msgs[i].data)) for i in keys)   # SPS/PPS on each IDR
    assert all(m.format == 'h264' for m in msgs)
    frames = decode([bytes(m.data) for m in msgs])
    assert len(frames) == len(msgs)
    out = {}
    for t, f in zip(stamps, frames):
        assert f.shape == (H, W, 3)
        out[t] = psnr(f, sent[t])
        assert out[t] > floor_by_stamp[t], (t, out[t])
    return out


def test_topic_source_encodes_every_image_encoding_from_dds(ctx, executor):
    frames = file_frames(shared_data(*VIDEO), 6)
    msgs, sent, floors, enc_of = [], {}, {}, {}
    for k, enc in enumerate(TOPIC_ENCODINGS * 1):
        for j in range(5):                          # 5 real frames in each encoding
            t = round(SIM_T0 + 0.1 * len(msgs), 6)
            f = frames[(k + j) % len(frames)]
            msgs.append(image_msg(f, enc, t))
            sent[t], floors[t], enc_of[t] = reference(f, enc), 30.0, enc
    node, probe = run_topic_camera(ctx, executor, msgs, 'raw', Image)
    got = check_stream(probe, sent, floors)
    by_enc = {}
    for t, p in got.items():
        by_enc.setdefault(enc_of[t], []).append(p)
    assert set(by_enc) == set(TOPIC_ENCODINGS) - {enc_of[min(sent)]} or \
        set(by_enc) == set(TOPIC_ENCODINGS), sorted(by_enc)      # before the first IDR
    print({e: round(min(p), 1) for e, p in by_enc.items()})
    assert node.bad_frames == 0     # (errors may count a wait for the first image: retried)

    # A bad encoding and a frame of another size: counted, ERROR, dropped; the stream goes on.
    pub = probe.create_publisher(Image, '/sim/camera/image', SENSOR_QOS)
    assert spin_until(executor, lambda: pub.get_subscription_count() > 0, 10.0)
    bad = image_msg(frames[0], 'bgr8', SIM_T0 + 100.0)
    bad.encoding = 'nv21_weird'
    small = cv2.resize(frames[0], (W // 2, H // 2))
    after = SIM_T0 + 100.2
    for msg in (bad, image_msg(small, 'bgr8', SIM_T0 + 100.1), image_msg(frames[1], 'rgb8',
                                                                         after)):
        pub.publish(msg)
        spin_for(executor, 0.2)
    assert spin_until(executor, lambda: node.bad_frames >= 2, 10.0), node.bad_frames
    assert spin_until(executor, lambda: round(stamp(probe.h264[-1]), 6) == after, 10.0)

    def reported():
        d = probe.last_diag()
        return d is not None and int(d[2].get('bad_frames', 0)) >= 2 and d
    assert spin_until(executor, reported, 5.0)
    errors = [s.message for s in probe.diag if s.level == ERROR and 'bad frame' in s.message]
    assert errors and any('nv21_weird' in m or 'size' in m for m in errors), errors


def test_topic_source_encodes_compressed_jpeg_and_png(ctx, executor):
    frames = file_frames(shared_data(*VIDEO), 6)
    msgs, sent, floors = [], {}, {}
    for i in range(16):
        f = frames[i % len(frames)]
        fmt = 'png' if i % 4 == 3 else 'jpeg'
        ok, buf = cv2.imencode(f'.{"png" if fmt == "png" else "jpg"}', f,
                               [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == 'jpeg' else [])
        t = round(SIM_T0 + 0.1 * i, 6)
        msg = CompressedImage(format=fmt, data=array.array('B', buf.tobytes()))
        msg.header.stamp = stamp_of(t)
        msgs.append(msg)
        sent[t], floors[t] = f, 30.0
    node, probe = run_topic_camera(ctx, executor, msgs, 'compressed', CompressedImage)
    got = check_stream(probe, sent, floors)
    assert len(got) >= 8, len(got)
    assert node.bad_frames == 0
