"""Look-back ring and recorder cost at 720p30, 4 Mbit/s, 120 s.

Prints, each against a baseline measured in this run:
  1. memory the ring holds (tracemalloc: every byte the ring keeps alive, Python objects
     included) against bitrate x 120 s of the packets it was fed (target <= 1.15 x);
  2. a ring of raw frames (what a ROS Image snapshot holds) against the H.264 ring;
  3. recorder CPU per second of video: idle (ring only), recording with fsync per fragment,
     recording without fsync (the fsync cost), as a share of one core;
  4. the real recorder node process fed by the real camera node (CPU% from /proc), idle and
     recording, if ``--node`` is given (needs a quiet machine: the camera takes a core).

Run: ``.venv/bin/python -m bench.lookback [--seconds 120] [--node]``.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

W, H, FPS, BITRATE, GOP = 1280, 720, 30, 4_000_000, 30


def encode_loop(seconds: float) -> list[tuple[bytes, bool]]:
    """``seconds`` of the camera's test pattern through the camera's own encoder."""
    from bodycam_ros.core.h264 import H264Encoder
    from bodycam_ros.drivers.camera import TestPatternSource
    import numpy as np
    src, enc = TestPatternSource(W, H, FPS), H264Encoder(W, H, FPS, BITRATE, GOP)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 24, (H, W, 3), dtype=np.uint8)
    out = []
    for i in range(int(seconds * FPS)):
        frame = src.render(i, 1000.0 + i / FPS)
        frame += np.roll(noise, i * 7, axis=1)     # sensor-like noise: a realistic bit rate
        au = enc.encode(frame)
        out.append((au.data, au.is_keyframe))
    return out


def ring_memory(loop: list[tuple[bytes, bool]], seconds: float, pre_event_s: float,
                margin_s: float) -> dict[str, float]:
    from bodycam_ros.core.ring import LookbackRing, VideoPacket
    n = int(seconds * FPS)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ring = LookbackRing(pre_event_s + margin_s, max_bytes=8_000_000_000)
    fed = 0
    for i in range(n):
        data, key = loop[i % len(loop)]
        # A fresh bytes object per packet, as each DDS message brings its own buffer.
        pkt = VideoPacket(1000.0 + i / FPS, bytes(bytearray(data)), key)
        fed += len(data)
        ring.push_video(pkt)
    del pkt
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    st = ring.stats()
    bitrate = fed * 8 / seconds
    return {'held': held, 'payload': st.video_bytes, 'buffered_s': st.buffered_s,
            'bitrate': bitrate, 'floor': bitrate / 8 * pre_event_s}


def recorder_cpu(loop: list[tuple[bytes, bool]], seconds: float, fsync: bool,
                 record: bool) -> dict[str, float]:
    """CPU seconds per second of video through the core recorder (ring, mux, journal)."""
    from bodycam_ros.core import evidence as ev
    from bodycam_ros.core import spool
    from bodycam_ros.core.ring import LookbackRing, VideoPacket
    from bodycam_ros.core.spool import Command, EvidenceStore, Recorder, RecorderConfig

    tmp = Path(tempfile.mkdtemp(prefix='bench-lookback-'))
    orig = spool.os.fsync
    if not fsync:
        spool.os.fsync = lambda fd: None
    try:
        store = EvidenceStore(tmp / 'ev')
        rec = Recorder(store, LookbackRing(10.0, 1 << 30), ev.DeviceKey.load_or_create(
            store.keys), RecorderConfig(pre_event_s=5.0, post_event_s=1.0, min_free_bytes=0))
        rec.start()
        n = int(seconds * FPS)
        imu = bytes(330)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(n):
            t = 1000.0 + i / FPS
            data, key = loop[i % len(loop)]
            rec.on_video(VideoPacket(t, data, key))
            for k in range(3):                         # ~100 Hz IMU
                rec.on_sensor(spool.SensorRecord(t + k / 100, '/imu/data',
                                                 'sensor_msgs/msg/Imu', imu))
            if record and i == 0:
                rec.on_command(Command('start', 'manual', t, str(uuid.uuid4()), t))
        while rec.status().queue_length:
            time.sleep(0.01)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        st = rec.status()
        rec.close()
        return {'cpu_per_video_s': cpu / seconds, 'wall': wall, 'sync_ms': st.sync_ms_mean}
    finally:
        spool.os.fsync = orig
        shutil.rmtree(tmp, ignore_errors=True)


def node_cpu(seconds: float) -> dict[str, float] | None:
    """The real recorder node process fed by the real camera node (720p30, 4 Mbit/s)."""
    import subprocess
    import sys
    env = {**os.environ, 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
           'ROS_DOMAIN_ID': str(150 + os.getpid() % 40),
           'PYTHONPATH': str(Path(__file__).resolve().parents[1] / 'src')}
    tmp = Path(tempfile.mkdtemp(prefix='bench-node-'))
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, '-m', 'bodycam_ros.nodes.camera_node',
                                       '--ros-args', '-p', 'raw_rate:=0.0'], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        rec = subprocess.Popen([sys.executable, '-m', 'bodycam_ros.nodes.recorder_node',
                                '--ros-args', '-p', f'evidence_dir:={tmp}', '-p',
                                'min_free_bytes:=0', '-p', 'pre_event_s:=10.0'], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(rec)
        time.sleep(15.0)                               # start-up and a full look-back
        idle = _cpu_share(rec.pid, seconds)
        _send_start(env)
        time.sleep(2.0)
        recording = _cpu_share(rec.pid, seconds)
        videos = list(tmp.glob('recording/*/video.mp4'))
        size = videos[0].stat().st_size if videos else 0
        return {'idle': idle, 'recording': recording, 'video_bytes': size}
    finally:
        for p in procs:
            p.send_signal(2)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _cpu_share(pid: int, seconds: float) -> float:
    def ticks() -> int:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        return int(fields[11]) + int(fields[12])
    hz = os.sysconf('SC_CLK_TCK')
    t0, c0 = time.monotonic(), ticks()
    time.sleep(seconds)
    return (ticks() - c0) / hz / (time.monotonic() - t0)


def _send_start(env: dict[str, str]) -> None:
    import subprocess
    import sys
    code = (
        'import rclpy, time, uuid\n'
        'from diagnostic_msgs.msg import DiagnosticStatus, KeyValue\n'
        'from bodycam_ros.rosutil import RELIABLE_QOS\n'
        'rclpy.init(); n = rclpy.create_node("bench_cmd")\n'
        'p = n.create_publisher(DiagnosticStatus, "recorder/command", RELIABLE_QOS)\n'
        'end = time.monotonic() + 10\n'
        'while p.get_subscription_count() == 0 and time.monotonic() < end:\n'
        '    rclpy.spin_once(n, timeout_sec=0.05)\n'
        'p.publish(DiagnosticStatus(name="start", values=[KeyValue(key="reason", '
        'value="manual"), KeyValue(key="trigger_time", value=repr(time.time())), '
        'KeyValue(key="command_id", value=str(uuid.uuid4()))]))\n'
        'rclpy.spin_once(n, timeout_sec=0.5); rclpy.shutdown()\n')
    subprocess.run([sys.executable, '-c', code], env=env, check=True, timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=float, default=120.0, help='look-back (pre_event_s)')
    ap.add_argument('--margin', type=float, default=5.0, help='lookback_margin_s')
    ap.add_argument('--node', action='store_true', help='also measure the real node process')
    args = ap.parse_args()

    t0 = time.perf_counter()
    loop = encode_loop(10.0)
    print(f'encoded 10 s of 720p30 test pattern (+noise) in {time.perf_counter() - t0:.1f} s; '
          f'looped to fill the ring')
    feed_s = args.seconds + args.margin + 30.0
    m = ring_memory(loop, feed_s, args.seconds, args.margin)
    raw = W * H * 3 * FPS * (args.seconds + args.margin)
    print(f'stream: {m["bitrate"] / 1e6:.2f} Mbit/s measured (target {BITRATE / 1e6:.0f}); '
          f'ring covers {m["buffered_s"]:.1f} s (pre_event_s {args.seconds:.0f} + margin '
          f'{args.margin:.0f})')
    print(f'ring memory held           {m["held"] / 1e6:8.1f} MB  = '
          f'{m["held"] / m["floor"]:.3f} x bitrate x {args.seconds:.0f} s '
          f'(floor {m["floor"] / 1e6:.1f} MB; target <= 1.15)')
    print(f'  of which packet payload  {m["payload"] / 1e6:8.1f} MB; Python overhead '
          f'{(m["held"] - m["payload"]) / m["payload"] * 100:.2f} %')
    print(f'  against target bitrate   {m["held"] / (BITRATE / 8 * args.seconds):.3f} x '
          f'4 Mbit/s x {args.seconds:.0f} s')
    print(f'raw-frame ring (bgr8)      {raw / 1e9:8.2f} GB  = {raw / m["held"]:.0f} x the '
          'H.264 ring')

    video_s = 30.0
    idle = recorder_cpu(loop, video_s, fsync=True, record=False)
    rec = recorder_cpu(loop, video_s, fsync=True, record=True)
    nosync = recorder_cpu(loop, video_s, fsync=False, record=True)
    print(f'recorder core CPU per second of video (share of one core at 30 fps):')
    print(f'  idle (ring only)         {idle["cpu_per_video_s"] * 100:6.2f} %  (baseline)')
    print(f'  recording, fsync/frag    {rec["cpu_per_video_s"] * 100:6.2f} %  = '
          f'{rec["cpu_per_video_s"] / max(idle["cpu_per_video_s"], 1e-9):.1f} x idle; '
          f'fsync {rec["sync_ms"]:.2f} ms per fragment')
    print(f'  recording, no fsync      {nosync["cpu_per_video_s"] * 100:6.2f} %  -> fsync '
          f'costs {(rec["wall"] - nosync["wall"]) / video_s * 1000:.1f} ms wall per second '
          f'of video ({rec["wall"] / max(nosync["wall"], 1e-9):.2f} x the wall time)')
    if args.node:
        n = node_cpu(10.0)
        if n:
            print(f'recorder node process fed by the camera node: idle {n["idle"] * 100:.1f} % '
                  f'of a core, recording {n["recording"] * 100:.1f} % '
                  f'({n["recording"] / max(n["idle"], 1e-9):.2f} x idle; incident video '
                  f'{n["video_bytes"] / 1e6:.1f} MB written)')


if __name__ == '__main__':
    main()
