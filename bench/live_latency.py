"""Live view cost and latency at 720p30, against baselines measured in the same run.

Prints:
  1. server CPU per frame to remux into fMP4 and fan out to 5 viewers, against the camera's
     own libx264 encode of the same frame (the cost the camera already pays);
  2. push-to-client latency of fragments over loopback HTTP with 1 and with 5 viewers
     (p50/p99), as frame periods and against the HLS anchor (15 s) and a low-latency
     HLS/DASH anchor (5 s); the browser adds its decode on top (the Chromium test measures
     glass to glass);
  3. how the 5-viewer latency compares with the 1-viewer latency (fan-out cost).

Run: ``.venv/bin/python -m bench.live_latency [--seconds 10]``. Timings taken while other
work runs on the machine are noisy; re-run on a quiet machine for numbers to quote.
"""
from __future__ import annotations

import argparse
import http.client
import statistics
import threading
import time
from pathlib import Path

W, H, FPS, BITRATE, GOP = 1280, 720, 30, 4_000_000, 30
TOKEN = 'bench-token-0123456789abcdef'


def encode(seconds: float) -> tuple[list[bytes], float]:
    """The camera's test pattern through the camera's encoder; returns packets and s/frame."""
    import numpy as np
    from bodycam_ros.core.h264 import H264Encoder
    from bodycam_ros.drivers.camera import TestPatternSource
    src, enc = TestPatternSource(W, H, FPS), H264Encoder(W, H, FPS, BITRATE, GOP)
    noise = np.random.default_rng(0).integers(0, 24, (H, W, 3), dtype=np.uint8)
    frames = [src.render(i, 1000.0 + i / FPS) + np.roll(noise, i * 7, axis=1)
              for i in range(int(seconds * FPS))]
    t0 = time.process_time()
    out = [enc.encode(f).data for f in frames]
    return out, (time.process_time() - t0) / len(frames)


def mux_cost(packets: list[bytes], viewers: int = 5) -> float:
    from bodycam_ros.core.live import LiveStream
    stream = LiveStream(max_queue_s=1e9, max_queue_bytes=1 << 40)
    stream.push(packets[0], 0.0)
    vs = [stream.subscribe(0.1) for _ in range(viewers)]
    t0 = time.process_time()
    for i, p in enumerate(packets[1:], 1):
        stream.push(p, i / FPS)
        if i % 30 == 0:
            for v in vs:
                v.take(0)
    return (time.process_time() - t0) / (len(packets) - 1)


def latency(packets: list[bytes], viewers: int) -> list[float]:
    """Push at 30 fps; each client notes when each fragment's last byte arrives."""
    from bodycam_ros.core.live import LiveServer, LiveState, LiveStream
    from bodycam_ros.core.live.fmp4 import split_boxes
    from bodycam_ros.core.tokens import TokenAuth
    web = Path(__file__).resolve().parents[1] / 'src' / 'bodycam_ros' / 'web'
    stream = LiveStream()
    srv = LiveServer(stream, LiveState(), TokenAuth(TOKEN), web, port=0)
    srv.start()
    pushed: dict[int, float] = {}
    arrivals: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection('127.0.0.1', srv.port, timeout=10)
        conn.request('GET', '/stream.mp4', headers={'Authorization': f'Bearer {TOKEN}'})
        resp, buf, seq = conn.getresponse(), bytearray(), None
        while not stop.is_set():
            chunk = resp.read1(65536)
            if not chunk:
                break
            buf += chunk
            now = time.perf_counter()
            for box in split_boxes(buf):
                if box[4:8] == b'moof':
                    seq = int.from_bytes(box[20:24], 'big')   # mfhd sequence_number
                elif box[4:8] == b'mdat' and seq is not None and seq in pushed:
                    with lock:
                        arrivals.append(now - pushed[seq])
        conn.close()

    stream.push(packets[0], 0.0)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(viewers)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    start = time.perf_counter()
    for i, p in enumerate(packets[1:], 1):
        time.sleep(max(0.0, start + i / FPS - time.perf_counter()))
        # Fragment i-1 is completed by pushing frame i; mfhd counts from 1.
        pushed[i] = time.perf_counter()
        stream.push(p, i / FPS)
    time.sleep(0.3)
    stop.set()
    srv.close()
    return arrivals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=float, default=10.0)
    args = ap.parse_args()
    packets, enc_s = encode(args.seconds)
    mux_s = mux_cost(packets)
    print(f'encode (baseline): {enc_s * 1000:.2f} ms/frame; live remux + 5-viewer fan-out: '
          f'{mux_s * 1000:.3f} ms/frame = {mux_s / enc_s:.3f} x the encode')
    one, five = latency(packets, 1), latency(packets, 5)
    frame = 1.0 / FPS
    for name, lat in (('1 viewer', one), ('5 viewers', five)):
        lat = sorted(lat)
        p50, p99 = statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]
        print(f'{name}: push->client p50 {p50 * 1000:.1f} ms ({p50 / frame:.2f} frame periods), '
              f'p99 {p99 * 1000:.1f} ms; p50 = {p50 / 15.0:.5f} x HLS (15 s), '
              f'{p50 / 5.0:.5f} x LL-HLS (5 s); n={len(lat)}')
    ratio = statistics.median(five) / statistics.median(one)
    print(f'5-viewer / 1-viewer p50 latency: {ratio:.2f} x')
    print('(plus one frame period held by the muxer for the fragment duration, plus browser '
          'decode: see test_live_view_browser for glass to glass)')


if __name__ == '__main__':
    main()
