"""Cost of encrypting evidence at rest (age v1) against a plain write + SHA-256, same run.

    .venv/bin/python -m bench.encryption [--seconds 120] [--mbit 4.2] [--rounds 5]

The camera's 720p30 stream is ~4.2 Mbit/s as fragmented MP4. The bench writes ``--seconds``
of that many bytes (incompressible, so no layer can shortcut them) in the recorder's pattern:
one write per access unit (PyAV muxes with ``flush_packets``), an fsync once per video second
(one per fragment). Variants, to real files in a temporary directory:

  baseline   buffered file write + SHA-256 of the bytes (what the recorder does today)
  age        AgeWriter: ChaCha20-Poly1305 per 64 KiB chunk, SHA-256 of plaintext and of
             ciphertext (the manifest signs both), durable_flush once per second
  decrypt    the agency side: decrypt() of the age file into a file

CPU is process time (user + system), so waiting on the disk is not counted. Rounds are
interleaved and the best of each variant is kept. Printed: CPU-seconds per second of video
(= fraction of one core), the ratio age / baseline, and the byte overhead (header + 16-byte
payload nonce + 16 bytes per 64 KiB chunk).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / 'src')]

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from bodycam_ros.core.encryption import CHUNK, AgeWriter, decrypt, payload_overhead  # noqa: E402

FPS = 30


def frames_of(seconds: float, mbit: float) -> list[bytes]:
    """Per-frame writes totalling ``mbit`` Mbit/s; a keyframe each second is 5x a P-frame."""
    per_s = int(mbit * 1e6 / 8)
    unit = per_s / (FPS - 1 + 5)
    sizes = [round(unit * (5 if i % FPS == 0 else 1)) for i in range(FPS)]
    blob = os.urandom(max(sizes))
    return [blob[:sizes[i % FPS]] for i in range(int(seconds * FPS))]


def run_baseline(path: Path, frames: list[bytes]) -> float:
    t0 = time.process_time()
    h = hashlib.sha256()
    with open(path, 'wb') as f:
        for i, fr in enumerate(frames, 1):
            f.write(fr)
            h.update(fr)
            if i % FPS == 0:
                f.flush()
                os.fsync(f.fileno())
        f.flush()
        os.fsync(f.fileno())
    h.hexdigest()
    return time.process_time() - t0


def run_age(path: Path, frames: list[bytes], recipient) -> tuple[float, AgeWriter]:
    t0 = time.process_time()
    w = AgeWriter(path, [recipient])
    for i, fr in enumerate(frames, 1):
        w.write(fr)
        if i % FPS == 0:
            w.durable_flush()
    w.close()
    w.plaintext_sha256(), w.ciphertext_sha256()
    return time.process_time() - t0, w


def run_decrypt(path: Path, out: Path, identity) -> float:
    t0 = time.process_time()
    with open(out, 'wb') as f:
        res = decrypt(path, identity, f)
    assert res.complete
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=float, default=120.0, help='video seconds per round')
    ap.add_argument('--mbit', type=float, default=4.2, help='video bitrate [Mbit/s]')
    ap.add_argument('--rounds', type=int, default=5)
    args = ap.parse_args()
    frames = frames_of(args.seconds, args.mbit)
    total = sum(map(len, frames))
    key = X25519PrivateKey.generate()
    best = {'baseline': float('inf'), 'age': float('inf'), 'decrypt': float('inf')}
    with tempfile.TemporaryDirectory(prefix='bench-enc-', dir=os.environ.get('BENCH_DIR')) as d:
        tmp = Path(d)
        for r in range(args.rounds):
            for p in tmp.iterdir():
                p.unlink()
            best['baseline'] = min(best['baseline'], run_baseline(tmp / 'plain.mp4', frames))
            cpu, w = run_age(tmp / 'video.mp4.age', frames, key.public_key())
            best['age'] = min(best['age'], cpu)
            best['decrypt'] = min(best['decrypt'],
                                  run_decrypt(tmp / 'video.mp4.age', tmp / 'out.mp4', key))
        size = (tmp / 'video.mp4.age').stat().st_size
    assert size == w.header_size + total + payload_overhead(total)
    per_s = {k: v / args.seconds for k, v in best.items()}
    over = size - total
    print(f'encryption at rest (age v1, X25519 + ChaCha20-Poly1305, {CHUNK // 1024} KiB chunks): '
          f'{args.seconds:.0f} s of 720p30 at {args.mbit} Mbit/s = {total / 1e6:.1f} MB, '
          f'best of {args.rounds}')
    print(f'  baseline (write + sha256)  {per_s["baseline"] * 1e3:7.2f} ms CPU per video second')
    print(f'  age (encrypt + 2x sha256)  {per_s["age"] * 1e3:7.2f} ms CPU per video second  '
          f'ratio {best["age"] / best["baseline"]:.2f}x baseline, '
          f'+{(per_s["age"] - per_s["baseline"]) * 100:.3f} % of one core')
    print(f'  decrypt (agency side)      {per_s["decrypt"] * 1e3:7.2f} ms CPU per video second '
          f'({total / best["decrypt"] / 1e6:.0f} MB/s)')
    print(f'  bytes: +{over} ({over / total * 100:.4f} %): header {w.header_size} B '
          f'(1 recipient), nonce 16 B, 16 B x {(over - w.header_size - 16) // 16} chunks; '
          f'{over / args.seconds:.0f} B per video second')


if __name__ == '__main__':
    main()
