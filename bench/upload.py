"""Upload benchmark: goodput through a bandwidth-limited link, seal-to-verified latency.

Against a real S3 API server on loopback (moto in server mode) behind a TCP proxy that caps
the uplink at ``--rate-mbit`` (default 10 Mbit/s, the top of an LTE uplink):

1. goodput: evidence bytes verified per second / the link limit (floor 0.85);
2. a sealed 5-minute 720p clip (4 Mbit/s H.264): time from seal until its 360p proxy is
   viewable, and until the whole incident is verified, each against the time the link
   needs for those bytes at full rate (the baseline measured in the same run is the link).

    .venv/bin/python -m bench.upload [--clip-s 300] [--rate-mbit 10]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / 'src'), str(ROOT / 'test')]

MiB = 1024 * 1024


def clip_720p(seconds: float, bitrate: int = 4_000_000, fps: int = 30) -> bytes:
    """A ``seconds``-long 720p30 H.264 fragmented MP4 at ``bitrate``.

    10 s are encoded (moving noisy pattern, so x264 really spends the bitrate) and remuxed
    end to end without re-encoding; only the timestamps move.
    """
    import av
    import numpy as np
    w, h, unit_s = 1280, 720, 10
    enc = io.BytesIO()
    with av.open(enc, 'w', format='mp4') as out:
        st = out.add_stream('libx264', rate=fps)
        st.width, st.height, st.pix_fmt, st.bit_rate = w, h, 'yuv420p', bitrate
        st.options = {'preset': 'ultrafast', 'g': str(fps), 'bf': '0'}
        st.codec_context.time_base = Fraction(1, fps)
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx % 256, yy % 256, (xx + yy) // 2 % 256], -1).astype(np.uint8)
        noise = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
        for i in range(unit_s * fps):
            img = base + np.roll(noise, 7 * i, axis=1) + np.uint8(i % 256)
            frame = av.VideoFrame.from_ndarray(img, format='rgb24')
            frame.pts = i
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    enc.seek(0)
    loops = max(1, round(seconds / unit_s))
    result = io.BytesIO()
    with av.open(enc) as src:
        packets = [p for p in src.demux(src.streams.video[0]) if p.size]
        vin = src.streams.video[0]
        with av.open(result, 'w', format='mp4',
                     options={'movflags': 'frag_keyframe+empty_moov+default_base_moof'}) as dst:
            vout = dst.add_stream_from_template(vin)
            span = unit_s * fps * int(1 / (vin.time_base * fps))   # ticks per loop
            for n in range(loops):
                for p in packets:
                    p.pts, p.dts = p.pts + (span if n else 0), p.dts + (span if n else 0)
                    p.stream = vout
                    dst.mux(p)
    return result.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--clip-s', type=float, default=300.0, help='clip length (default 300)')
    ap.add_argument('--rate-mbit', type=float, default=10.0, help='link limit (default 10)')
    ap.add_argument('--goodput-mib', type=float, default=24.0,
                    help='bytes for the goodput run (default 24 MiB)')
    args = ap.parse_args()

    from bodycam_ros.core.upload import create_uploader
    from s3util import FaultProxy, S3Server, s3_options
    from spoolutil import make_incident

    rate = args.rate_mbit * 1e6 / 8
    work = Path(tempfile.mkdtemp(prefix='bench-upload-'))
    s3 = S3Server()
    link = FaultProxy(('127.0.0.1', s3.port), rate_bps=rate)
    try:
        print(f'link: {args.rate_mbit:g} Mbit/s = {rate / 1e6:.3f} MB/s (loopback proxy in front '
              'of moto in server mode)', flush=True)

        # -- 1. goodput: one incident, one large file in 8 MiB parts -------------------------
        s3.create_bucket('goodput')
        ev = work / 'goodput'
        make_incident(ev, 'goodput', extra={'blob.bin': os.urandom(int(args.goodput_mib * MiB))},
                      sensors_size=1024)
        up = create_uploader('s3://goodput', ev, proxy=False, s3_options=s3_options(link.url))
        size = sum(f.stat().st_size for f in (ev / 'spool' / 'goodput').iterdir())
        t0 = time.monotonic()
        res = up.drain()
        dt = time.monotonic() - t0
        assert res.ok, res
        goodput = size / dt
        # Baseline in the same run: one plain boto3 PUT of the same bytes over the same link
        # (no parts, no checksums of ours, no verification).
        blob = (ev / 'spool' / 'goodput' / 'blob.bin').read_bytes()
        import boto3
        from botocore.config import Config
        plain = boto3.client('s3', endpoint_url=link.url, region_name='us-east-1',
                             aws_access_key_id='x', aws_secret_access_key='y',
                             config=Config(s3={'addressing_style': 'path'}))
        t0 = time.monotonic()
        plain.put_object(Bucket='goodput', Key='baseline.bin', Body=blob)
        base = len(blob) / (time.monotonic() - t0)
        print(f'baseline: one plain boto3 PUT of {len(blob) / MiB:.1f} MiB: {base / 1e6:.3f} MB/s'
              f' = {base / rate:.3f} of the link', flush=True)
        print(f'goodput: {size / MiB:.1f} MiB verified in {dt:.1f} s = {goodput / 1e6:.3f} MB/s'
              f'  ratio to the link {goodput / rate:.3f} (floor 0.85), to the plain PUT '
              f'{goodput / base:.3f}', flush=True)

        # -- 2. a sealed 5-minute 720p clip, proxy first --------------------------------------
        t = time.monotonic()
        video = clip_720p(args.clip_s)
        print(f'clip: {args.clip_s:.0f} s 720p30, {len(video) / 1e6:.1f} MB '
              f'({len(video) * 8 / args.clip_s / 1e6:.2f} Mbit/s), made in '
              f'{time.monotonic() - t:.0f} s', flush=True)
        s3.create_bucket('clip')
        ev = work / 'clip'
        (ev / 'spool').mkdir(parents=True)
        marks: dict[str, float] = {}
        sizes: dict[str, int] = {}
        done = threading.Event()

        def on_event(e) -> None:
            now = time.monotonic()
            if e.kind == 'proxy':
                marks['transcode_s'] = float(e.message.rsplit('in ', 1)[1].split()[0])
            elif e.kind == 'object' and e.message.split()[0].endswith('/proxy.mp4'):
                sizes['proxy'] = int(e.message.split('(')[1].split()[0])
            elif e.kind == 'proxy_ready':
                marks['proxy'] = now
            elif e.kind == 'verified':
                marks['verified'] = now
                done.set()
            elif e.kind == 'error':
                print(f'  error: {e.message}', flush=True)

        up = create_uploader('s3://clip', ev, proxy=True, on_event=on_event, poll_s=0.1,
                             s3_options=s3_options(link.url))
        up.start()
        seal = time.monotonic()
        inc = make_incident(ev, 'clip', video=video, reasons=('officer_down',))
        up.nudge()
        done.wait(args.clip_s * 4 + 600)
        up.stop()
        assert 'verified' in marks, 'clip never verified'
        total = sum(f.stat().st_size for f in inc.iterdir() if f.name != 'upload.json') + \
            sizes.get('proxy', 0)
        ideal_proxy = sizes.get('proxy', 0) / rate
        ideal_all = total / rate
        t_tx = marks.get('transcode_s', float('nan'))
        t_proxy = marks['proxy'] - seal
        t_all = marks['verified'] - seal
        floor = t_tx + ideal_proxy      # transcode, then the proxy alone on the link
        print(f'proxy: {sizes.get("proxy", 0) / 1e6:.1f} MB 360p, transcoded in {t_tx:.1f} s, '
              f'viewable {t_proxy:.1f} s after seal (transcode + link alone {floor:.1f} s; '
              f'ratio {t_proxy / floor:.2f})', flush=True)
        print(f'clip: verified {t_all:.1f} s after seal = {t_all / 60:.1f} min '
              f'(link alone {ideal_all:.1f} s; ratio {t_all / ideal_all:.2f})', flush=True)
        print(f'summary: goodput/limit={goodput / rate:.3f} goodput/plain_put={goodput / base:.3f}'
              f' proxy_s={t_proxy:.1f} clip_s={t_all:.1f} clip/link={t_all / ideal_all:.2f}',
              flush=True)
        return 0 if goodput / rate >= 0.85 else 1
    finally:
        link.close()
        s3.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
