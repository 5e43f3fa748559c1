"""Agency portal, seal to visible (issue 12 item 7): the 5-minute 720p clip over the 10 Mbit/s
uplink bench.upload uses, from the seal until the portal lists the incident, shows it
verified, and serves the first byte of its decrypted video.

    .venv/bin/python -m bench.portal_visible [--clip-s 300] [--rate-mbit 10] [--poll 1.0]

The unit is the real recorder as the node builds it (device key, ledger, audit log, age
encryption to the agency as it writes), fed 720p30 H.264 at 4 Mbit/s from the camera's own
encoder (10 s of a moving noisy pattern encoded once, then repeated with new stamps, so x264
really spends the bitrate); a manual start, a stop after ``--clip-s``. Its uploader drains to
moto S3 in server mode behind ``s3util.FaultProxy`` capped at ``--rate-mbit`` (as
bench.upload). The portal indexes the same bucket straight from moto (the agency's own link),
polling every ``--poll`` s, under uvicorn on loopback; a logged-in client polls
``/api/incidents`` and asks for ``video.mp4`` as soon as the incident is listed.

There is no 360p proxy for this evidence: the recorder encrypts to the agency as it writes, so
the uploader holds ciphertext only and cannot transcode (it says so once); the first picture
is the decrypted full clip. Baseline, measured in the same run: the time the link needs for
the bytes the unit had to send (every object the uploader put) at the full link rate.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / 'src'), str(ROOT / 'test')]

W, H, FPS, BITRATE = 1280, 720, 30, 4_000_000


def packets_720p(seconds: float, t0: float, unit_s: int = 10):
    """``seconds`` of 720p30 access units from the camera's encoder (``core.h264``): ``unit_s``
    seconds encoded, then repeated with new capture times (each unit starts on an IDR)."""
    import numpy as np

    from bodycam_ros.core.h264 import H264Encoder
    from bodycam_ros.core.ring import VideoPacket
    enc = H264Encoder(W, H, FPS, BITRATE, FPS)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx % 256, yy % 256, (xx + yy) // 2 % 256], -1).astype(np.uint8)
    noise = rng.integers(0, 40, (H, W, 3), dtype=np.uint8)
    unit = []
    for i in range(unit_s * FPS):
        au = enc.encode(base + np.roll(noise, 7 * i, axis=1) + np.uint8(i % 256))
        unit.append((au.data, au.is_keyframe))
    enc.close()
    assert unit[0][1], 'the encoded unit does not start on a keyframe'
    for k in range(int(round(seconds * FPS))):
        data, key = unit[k % len(unit)]
        yield VideoPacket(t0 + k / FPS, data, key)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--clip-s', type=float, default=300.0, help='clip length (default 300)')
    ap.add_argument('--rate-mbit', type=float, default=10.0, help='uplink limit (default 10)')
    ap.add_argument('--poll', type=float, default=1.0, help='portal indexer poll (default 1 s)')
    args = ap.parse_args()

    import requests
    from portalutil import DEVICE, Server
    from s3util import REGION, FaultProxy, S3Server, credentials_file, s3_options
    from test_evidence import fix_record
    from test_evidence_trust import unit

    from bodycam_ros.core import trust
    from bodycam_ros.core.spool import Command
    from bodycam_ros.core.upload import create_uploader
    from bodycam_ros.portal.app import Portal, PortalConfig

    rate = args.rate_mbit * 1e6 / 8
    work = Path(tempfile.mkdtemp(prefix='bench-portal-visible-'))
    s3 = S3Server()
    link = FaultProxy(('127.0.0.1', s3.port), rate_bps=rate)
    s3.create_bucket('visible')
    try:
        print(f'link: {args.rate_mbit:g} Mbit/s = {rate / 1e6:.3f} MB/s (loopback proxy in front '
              'of moto in server mode); portal polls the bucket every '
              f'{args.poll:g} s', flush=True)
        store, rec, signer = unit(work, pre_event_s=1.0, post_event_s=0.5)
        trust.register_device(work / 'agency', signer.public_key_bytes(), DEVICE, time.time(),
                              passphrase=b'')
        marks: dict[str, float] = {}
        put: dict[str, int] = {}
        notes: list[str] = []

        def on_event(e) -> None:
            if e.kind == 'object':            # "<key> (<n> bytes ...)"
                key = e.message.split()[0]
                put[key] = int(e.message.split('(')[1].split()[0])
            elif e.kind == 'verified':
                marks.setdefault('uploaded', time.monotonic())
            elif e.kind in ('info', 'warning', 'error'):
                notes.append(f'{e.kind}: {e.message}')

        up = create_uploader('s3://visible', work / 'ev', proxy=True, on_event=on_event,
                             poll_s=0.1, s3_options=s3_options(link.url),
                             key_dir=work / 'keys', device_id=DEVICE)
        cred = credentials_file(work / 'aws-credentials')
        portal = Portal(PortalConfig(
            bucket='s3://visible', agency_dir=work / 'agency', state_dir=work / 'portal',
            poll_s=args.poll, s3={'endpoint_url': s3.url, 'region': REGION,
                                  'credentials_file': cred, 'allow_insecure_http': True}))
        with Server(portal) as srv:
            s = requests.Session()
            r = s.post(srv.url + '/api/login', json={'user': 'admin',
                                                     'password': portal.admin_password})
            assert r.status_code == 200, r.text
            up.start()
            # -- the unit records and seals ---------------------------------------------------
            t = time.monotonic()
            rec.start()
            t0, start_at = 1_750_000_000.0, 2.0
            stop_at = start_at + args.clip_s
            for i, p in enumerate(packets_720p(stop_at + 2.0, t0)):
                rec.on_video(p)
                if i % 3 == 0:
                    rec.on_sensor(fix_record(p.t, i))
                if i == int(start_at * FPS):
                    rec.on_command(Command('start', 'manual', p.t, str(uuid.uuid4()), p.t))
                elif i == int(stop_at * FPS):
                    rec.on_command(Command('stop', 'manual', p.t, str(uuid.uuid4()), p.t))
                rec.tick(p.t)
                if rec.status().sealed:
                    break
            seal = time.monotonic()
            rec.close()
            assert rec.status().sealed == 1, rec.events()
            sealed = store.sealed()[0]
            size = sum(f.stat().st_size for f in sealed.path.iterdir() if f.is_file())
            print(f'recorded and sealed {args.clip_s:.0f} s of 720p30 ({size / 1e6:.1f} MB '
                  f'encrypted) in {seal - t:.0f} s', flush=True)
            up.nudge()
            # -- the agency side: listed, verified, first decrypted byte ----------------------
            iid = sealed.path.name
            video: dict[str, float | int | str] = {}

            def first_byte() -> None:
                while 'first_byte' not in video and time.monotonic() - seal < 3600:
                    r = s.get(srv.url + f'/api/incidents/{iid}/video.mp4', stream=True,
                              headers={'Range': 'bytes=0-'}, timeout=600)
                    if r.status_code == 206 and r.raw.read(1):
                        video['first_byte'] = time.monotonic()
                        video['size'] = int(r.headers['content-range'].rsplit('/', 1)[1])
                    else:
                        video['last_error'] = f'{r.status_code} {r.text[:200]}'
                        time.sleep(0.2)
                    r.close()

            fetcher = threading.Thread(target=first_byte, daemon=True)
            while time.monotonic() - seal < 3600 and 'verified' not in marks:
                got = s.get(srv.url + '/api/incidents', params={'per_page': 5},
                            timeout=60).json()
                mine = [i for i in got['items'] if i['incident_id'] == iid]
                if mine and 'listed' not in marks:
                    marks['listed'] = time.monotonic()
                    fetcher.start()
                if mine and mine[0]['verified']:
                    marks['verified'] = time.monotonic()
                time.sleep(0.05)
            fetcher.join(3600)
            up.stop()
        assert 'verified' in marks and 'first_byte' in video, (marks, video, notes)
        sent = sum(put.values())
        link_s = sent / rate
        print(f'uploader: {len(put)} objects, {sent / 1e6:.1f} MB; '
              f'{"; ".join(n for n in notes if "proxy" in n) or "no proxy note"}', flush=True)
        print(f'baseline: the link alone for those bytes at {args.rate_mbit:g} Mbit/s: '
              f'{link_s:.1f} s', flush=True)
        rows = [('uploader: incident verified in the bucket', marks['uploaded']),
                ('portal: listed', marks['listed']),
                ('portal: listed and verified', marks['verified']),
                (f'portal: first byte of the decrypted video.mp4 '
                 f'({int(video["size"]) / 1e6:.1f} MB)', float(video['first_byte']))]
        print(f'  {"seal ->":58s} {"s":>7s} {"/link":>7s}')
        for name, at in rows:
            print(f'  {name:58s} {at - seal:7.1f} {(at - seal) / link_s:7.2f}')
        v = float(video['first_byte']) - seal
        print(f'summary: link_s={link_s:.1f} listed_s={marks["listed"] - seal:.1f} '
              f'verified_s={marks["verified"] - seal:.1f} first_video_byte_s={v:.1f} '
              f'({v / 60:.1f} min; proxy: none, encrypted)', flush=True)
        return 0
    finally:
        link.close()
        s3.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
