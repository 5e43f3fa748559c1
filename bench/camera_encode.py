"""Camera capture-and-encode throughput vs a bare PyAV encode loop, same frames, same run.

    .venv/bin/python -m bench.camera_encode            # all cores, then pinned to core 0
    .venv/bin/python -m bench.camera_encode --cpu 0    # one pinned run only

For 720p30 and 1080p30 settings it measures frames/s of
  bare PyAV     ``codec.encode(VideoFrame.from_ndarray(bgr))`` (PyAV/swscale converts)
  bare+cv2      the same loop with OpenCV's BGR->I420 (the conversion H264Encoder uses)
  node          ``CameraNode.process(frame, t)``: the node's exact per-frame path (encode,
                message, publish on camera/h264 with no subscriber), same pre-made frames
  node+pattern  the same with ``TestPatternSource.render`` drawing each frame live (the
                sim camera's whole cost)
and the ratio node / best bare loop. Floors: >= 30 fps at 720p on one core; ratio >= 0.8.

``--topic`` measures ``source: topic`` instead, at 720p: per incoming encoding (bgr8, rgb8,
mono8, yuv422, bayer_rggb8 as sensor_msgs/Image, jpeg as CompressedImage) the node's exact
per-frame path (``_convert`` on the capture thread's side, numpy/OpenCV here, then
``process``) against ``process`` on ready BGR frames (the device/test-pattern path) in the
same run: ms per frame for the conversion alone and for the whole path, and the ratio of
the topic path's frame rate to the device path's.
Rounds are interleaved and the best of each is kept, so other load on the machine hurts all
variants alike; still, re-run on a quiet machine before trusting absolute numbers.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 200))
os.environ.setdefault('ROS_HOME', tempfile.mkdtemp(prefix='bench-camera-'))

SIZES = {'720p': (1280, 720), '1080p': (1920, 1080)}
FPS, BITRATE, GOP = 30, 4_000_000, 30


def bare_loop(frames, width: int, height: int, cv2_convert: bool) -> float:
    """fps of a minimal PyAV libx264 loop with the same encoder settings."""
    import av
    import cv2
    ctx = av.CodecContext.create('libx264', 'w')
    ctx.width, ctx.height, ctx.pix_fmt = width, height, 'yuv420p'
    ctx.time_base, ctx.framerate = Fraction(1, FPS), Fraction(FPS)
    ctx.gop_size, ctx.max_b_frames, ctx.bit_rate = GOP, 0, BITRATE
    kbps = BITRATE // 1000
    ctx.options = {'preset': 'ultrafast', 'tune': 'zerolatency', 'x264-params':
                   f'keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=0:repeat-headers=1:'
                   f'vbv-maxrate={kbps}:vbv-bufsize={kbps}'}
    ctx.open()
    t0 = time.perf_counter()
    for i, f in enumerate(frames):
        if cv2_convert:
            vf = av.VideoFrame.from_numpy_buffer(cv2.cvtColor(f, cv2.COLOR_BGR2YUV_I420),
                                                 format='yuv420p')
        else:
            vf = av.VideoFrame.from_ndarray(f, format='bgr24')
        vf.pts = i
        for pkt in ctx.encode(vf):
            bytes(pkt)
    return len(frames) / (time.perf_counter() - t0)


def node_loop(frames, width: int, height: int, render: bool) -> float:
    """fps of CameraNode.process over the frames (or over live-rendered test pattern)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from bodycam_ros.drivers.camera import TestPatternSource
    from bodycam_ros.nodes.camera_node import CameraNode
    ctx = Context()
    rclpy.init(context=ctx)
    node = CameraNode(capture=False, context=ctx, parameter_overrides=[
        Parameter('source', value='test_pattern'), Parameter('width', value=width),
        Parameter('height', value=height), Parameter('fps', value=FPS),
        Parameter('bitrate', value=BITRATE), Parameter('gop', value=GOP),
        Parameter('raw_rate', value=0.0)])
    src = TestPatternSource(width, height, FPS)
    try:
        node.process(frames[0], time.time())   # encoder opened outside the timing
        t0 = time.perf_counter()
        for i, f in enumerate(frames):
            t = time.time()
            if not node.process(src.render(i, t) if render else f, t):
                raise RuntimeError('camera node refused a frame')
        fps = len(frames) / (time.perf_counter() - t0)
    finally:
        node.close()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    return fps


TOPIC_ENCODINGS = ('bgr8', 'rgb8', 'mono8', 'yuv422', 'bayer_rggb8', 'jpeg')


def as_message(bgr, enc: str, t: float):
    """A frame as a camera driver publishes it in ``enc`` (Image, or CompressedImage jpeg)."""
    import array

    import cv2
    import numpy as np
    from sensor_msgs.msg import CompressedImage, Image

    from bodycam_ros.nodes.camera_node import stamp_of
    h, w = bgr.shape[:2]
    if enc == 'jpeg':
        msg = CompressedImage(format='jpeg', data=array.array(
            'B', cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()))
    else:
        if enc == 'bgr8':
            data, step = bgr, w * 3
        elif enc == 'rgb8':
            data, step = bgr[:, :, ::-1], w * 3
        elif enc == 'mono8':
            data, step = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), w
        elif enc == 'yuv422':          # UYVY from I420 chroma
            i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
            u = np.repeat(i420[h:h + h // 4].reshape(h // 2, w // 2), 2, axis=0)
            v = np.repeat(i420[h + h // 4:].reshape(h // 2, w // 2), 2, axis=0)
            data = np.empty((h, w * 2), np.uint8)
            data[:, 0::4], data[:, 1::4], data[:, 2::4], data[:, 3::4] = \
                u, i420[:h, 0::2], v, i420[:h, 1::2]
            step = w * 2
        else:                          # bayer_rggb8
            data = np.empty((h, w), np.uint8)
            data[0::2, 0::2], data[0::2, 1::2] = bgr[0::2, 0::2, 2], bgr[0::2, 1::2, 1]
            data[1::2, 0::2], data[1::2, 1::2] = bgr[1::2, 0::2, 1], bgr[1::2, 1::2, 0]
            step = w
        msg = Image(height=h, width=w, encoding=enc, step=step,
                    data=array.array('B', np.ascontiguousarray(data).tobytes()))
    msg.header.stamp = stamp_of(t)
    return msg


def topic_table(n: int, rounds: int) -> str:
    """``source: topic`` vs the device path at 720p, same frames, same run."""
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from bodycam_ros.drivers.camera import TestPatternSource
    from bodycam_ros.nodes.camera_node import CameraNode
    width, height = SIZES['720p']
    src = TestPatternSource(width, height, FPS)
    frames = [src.render(i, time.time()) for i in range(n)]
    msgs = {enc: [as_message(f, enc, 1.0 + i / FPS) for i, f in enumerate(frames)]
            for enc in TOPIC_ENCODINGS}
    ctx = Context()
    rclpy.init(context=ctx)

    def camera(source: str, transport: str = 'raw') -> CameraNode:
        return CameraNode(capture=False, context=ctx, parameter_overrides=[
            Parameter('source', value=source), Parameter('image_transport', value=transport),
            Parameter('width', value=width), Parameter('height', value=height),
            Parameter('fps', value=FPS), Parameter('bitrate', value=BITRATE),
            Parameter('gop', value=GOP), Parameter('raw_rate', value=0.0)])

    def device_path() -> float:
        node = camera('test_pattern')
        try:
            node.process(frames[0], 1.0)
            t0 = time.perf_counter()
            for i, f in enumerate(frames):
                node.process(f, 1.0 + i / FPS)
            return (time.perf_counter() - t0) / n
        finally:
            node.close()
            node.destroy_node()

    def topic_path(enc: str) -> tuple[float, float]:
        node = camera('topic', 'compressed' if enc == 'jpeg' else 'raw')
        try:
            t0 = time.perf_counter()
            for m in msgs[enc]:
                node._convert(m)
            conv = (time.perf_counter() - t0) / n
            node.process(*node._convert(msgs[enc][0]))
            t0 = time.perf_counter()
            for m in msgs[enc]:
                node.process(*node._convert(m))
            return conv, (time.perf_counter() - t0) / n
        finally:
            node.close()
            node.destroy_node()

    best_dev = float('inf')
    best: dict[str, tuple[float, float]] = {}
    try:
        for _ in range(rounds):
            best_dev = min(best_dev, device_path())
            for enc in TOPIC_ENCODINGS:
                conv, whole = topic_path(enc)
                c0, w0 = best.get(enc, (float('inf'), float('inf')))
                best[enc] = (min(c0, conv), min(w0, whole))
    finally:
        rclpy.try_shutdown(context=ctx)
    lines = [f'source topic at 720p ({n} frames, best of {rounds}); device path '
             f'(process on BGR) {1000 * best_dev:.2f} ms/frame = {1 / best_dev:.1f} fps',
             f'{"encoding":<13}{"convert ms":>11}{"convert+encode ms":>19}{"fps":>8}'
             f'{"topic/device fps":>18}']
    for enc, (conv, whole) in best.items():
        lines.append(f'{enc:<13}{1000 * conv:>11.2f}{1000 * whole:>19.2f}{1 / whole:>8.1f}'
                     f'{best_dev / whole:>18.2f}')
    return '\n'.join(lines)


def measure(name: str, n: int, rounds: int) -> dict[str, float]:
    from bodycam_ros.drivers.camera import TestPatternSource
    width, height = SIZES[name]
    src = TestPatternSource(width, height, FPS)
    frames = [src.render(i, time.time()) for i in range(n)]
    best: dict[str, float] = {}
    variants = {
        'bare PyAV': lambda: bare_loop(frames, width, height, cv2_convert=False),
        'bare+cv2': lambda: bare_loop(frames, width, height, cv2_convert=True),
        'node': lambda: node_loop(frames, width, height, render=False),
        'node+pattern': lambda: node_loop(frames, width, height, render=True),
    }
    for _ in range(rounds):
        for key, run in variants.items():
            best[key] = max(best.get(key, 0.0), run())
    return best


def table(label: str, results: dict[str, dict[str, float]]) -> str:
    cols = ['bare PyAV', 'bare+cv2', 'node', 'node+pattern']
    lines = [f'{"cpus":<8}{"size":<7}' + ''.join(f'{c:>14}' for c in cols)
             + f'{"node/bare":>11}{"pattern/bare":>14}  floor']
    for size, r in results.items():
        base = max(r['bare PyAV'], r['bare+cv2'])
        ratio, ratio_p = r['node'] / base, r['node+pattern'] / base
        floor = []
        if size == '720p' and label != 'all':
            floor.append('>=30fps ' + ('ok' if r['node+pattern'] >= 30 else 'MISS'))
        floor.append('ratio>=0.8 ' + ('ok' if ratio >= 0.8 else 'MISS'))
        lines.append(f'{label:<8}{size:<7}' + ''.join(f'{r[c]:>14.1f}' for c in cols)
                     + f'{ratio:>11.2f}{ratio_p:>14.2f}  ' + ', '.join(floor))
    return '\n'.join(lines)


def run(label: str, n: int, rounds: int) -> str:
    results = {size: measure(size, n if size == '720p' else n * 2 // 3, rounds)
               for size in SIZES}
    return table(label, results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cpu', type=int, help='pin this process to one core and run once')
    ap.add_argument('--frames', type=int, default=150, help='frames per 720p run')
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds, best kept')
    ap.add_argument('--topic', action='store_true', help='measure source: topic (720p) only')
    args = ap.parse_args(argv)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'src')
    sys.path.insert(0, src)
    if args.topic:
        print(topic_table(args.frames, args.rounds), flush=True)
        return 0
    if args.cpu is not None:
        # Before any encoder exists: x264 sizes its thread pool from this affinity.
        os.sched_setaffinity(0, {args.cpu})
        print(run(f'cpu{args.cpu}', args.frames, args.rounds), flush=True)
        return 0
    print(f'camera encode, {FPS} fps settings, {BITRATE // 1000} kbit/s, gop {GOP}; '
          f'{os.cpu_count()} cores; fps = frames/s, best of {args.rounds} rounds', flush=True)
    print(run('all', args.frames, args.rounds), flush=True)
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [
        src, os.environ.get('PYTHONPATH')]))}
    pinned = subprocess.run([sys.executable, '-m', 'bench.camera_encode', '--cpu', '0',
                             '--frames', str(args.frames), '--rounds', str(args.rounds)],
                            env=env, cwd=os.path.dirname(src), capture_output=True, text=True,
                            check=False)
    rows = pinned.stdout.strip().splitlines()
    print('\n'.join(rows[1:]) if pinned.returncode == 0 else pinned.stdout + pinned.stderr)
    return pinned.returncode


if __name__ == '__main__':
    sys.exit(main())
