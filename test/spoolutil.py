"""Sealed incidents for upload tests, laid out exactly as the recorder leaves them.

``evidence_dir/spool/<id>/`` with video.mp4 (real H.264 from PyAV, so proxy transcodes are
real), sensors.mcap (random bytes: the uploader never parses it), manifest.json with the
fields of the common contract, and a real Ed25519 manifest.sig. Written under recording/
first and renamed into the spool, as the recorder seals.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

DEVICE = 'unit-7'


@lru_cache(maxsize=8)
def h264_mp4(seconds: float = 2.0, width: int = 320, height: int = 240, fps: int = 10,
             bitrate: int = 400_000) -> bytes:
    """A real H.264 MP4 (fragmented, like the recorder's) of a moving test pattern."""
    import io

    import av
    buf = io.BytesIO()
    with av.open(buf, 'w', format='mp4',
                 options={'movflags': 'frag_keyframe+empty_moov+default_base_moof'}) as out:
        st = out.add_stream('libx264', rate=fps)
        st.width, st.height, st.pix_fmt = width, height, 'yuv420p'
        st.bit_rate = bitrate
        st.options = {'preset': 'ultrafast', 'g': str(fps), 'bf': '0'}
        st.codec_context.time_base = Fraction(1, fps)
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx % 256, yy % 256, (xx + yy) // 2 % 256], axis=-1).astype(np.uint8)
        rng = np.random.default_rng(1)
        for i in range(int(seconds * fps)):
            img = base + np.array([4 * i % 256, 2 * i % 256, i % 256], dtype=np.uint8)
            img[rng.integers(0, height, 50), rng.integers(0, width, 50)] = 255
            frame = av.VideoFrame.from_ndarray(img, format='rgb24')
            frame.pts = i
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    return buf.getvalue()


@lru_cache(maxsize=1)
def _signing_key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    return Ed25519PrivateKey.generate()


def make_incident(evidence_dir: Path, incident_id: str | None = None, *,
                  reasons: tuple[str, ...] = ('manual',), start_time: float | None = None,
                  video: bytes | None = None, sensors_size: int = 4096,
                  extra: dict[str, bytes] | None = None, device_id: str = DEVICE,
                  seed: int | None = None) -> Path:
    """Seal one incident into ``evidence_dir/spool``; returns its directory."""
    incident_id = incident_id or time.strftime('%Y%m%dT%H%M%SZ', time.gmtime()) + '-' + \
        uuid.uuid4().hex[:6]
    start_time = time.time() - 60 if start_time is None else start_time
    rec = evidence_dir / 'recording' / incident_id
    rec.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    files = {'video.mp4': h264_mp4() if video is None else video,
             'sensors.mcap': rng.integers(0, 256, sensors_size, dtype=np.uint8).tobytes()}
    files.update(extra or {})
    for name, data in files.items():
        (rec / name).write_bytes(data)
    manifest = {
        'incident_id': incident_id, 'device_id': device_id, 'officer_id': 'officer-42',
        'triggers': [{'reason': r, 'time': start_time + 120.0} for r in reasons],
        'start_time': start_time, 'end_time': start_time + 150.0,
        'files': {n: {'sha256': hashlib.sha256(d).hexdigest(), 'size': len(d)}
                  for n, d in files.items()},
        'prev_manifest_sha256': None, 'recovered': False,
    }
    # As the recorder seals: canonical bytes, the device key named in the manifest and
    # exported to keys/ (the uploader checks the signature before trusting any field).
    from cryptography.hazmat.primitives import serialization as ser
    from bodycam_ros.core import evidence as ev
    pub = _signing_key().public_key()
    manifest['device_public_key'] = base64.b64encode(
        pub.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)).decode()
    body = ev.canonical(manifest)
    (rec / 'manifest.json').write_bytes(body)
    (rec / 'manifest.sig').write_bytes(_signing_key().sign(body))
    (evidence_dir / 'keys').mkdir(exist_ok=True)
    (evidence_dir / 'keys' / f'{ev.KEY_NAME}.pub').write_bytes(pub.public_bytes(
        ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    spool = evidence_dir / 'spool'
    spool.mkdir(parents=True, exist_ok=True)
    os.rename(rec, spool / incident_id)
    return spool / incident_id


def incident_files(path: Path) -> dict[str, bytes]:
    """The evidence files of a spool directory (what must arrive in the bucket)."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())
            if p.is_file() and p.name != 'upload.json'}


# -- the recorder's trust set-up (issue 10) -----------------------------------------------------
# make_incident above stays plaintext (format 1 fields): the upload tests use it as is.
def agency_for(tmp_path: Path):
    """A real agency in ``tmp_path/agency`` and its age recipient file (created once):
    (agency_dir, recipient_file, X25519 private key for decrypting)."""
    from bodycam_ros.core import trust
    from bodycam_ros.core.encryption import encode_recipient
    agency = tmp_path / 'agency'
    recipient_file = tmp_path / 'agency_recipient.txt'
    if not (agency / trust.AGENCY_INFO).exists():
        trust.init_agency(agency, time.time(), name='test agency')
        recipient_file.write_text(encode_recipient(trust.load_encryption_public(agency)) + '\n')
    return agency, recipient_file, trust.load_encryption_private(agency, b'')


def recorder_params(tmp_path: Path) -> dict[str, object]:
    """Recorder parameters for a test unit: a key dir beside the evidence (provisioned on first
    run) and encryption to the test agency."""
    _, recipient_file, _ = agency_for(tmp_path)
    return {'key_dir': str(tmp_path / 'keys'), 'provision_on_first_run': True,
            'agency_recipient_file': str(recipient_file)}


def recorder_ros_args(tmp_path: Path) -> list[str]:
    """:func:`recorder_params` as ``-p name:=value`` arguments for a recorder process."""
    out: list[str] = []
    for k, v in recorder_params(tmp_path).items():
        out += ['-p', f'{k}:={str(v).lower() if isinstance(v, bool) else v}']
    return out


def decrypt_file(path: Path, identity, out: Path):
    """Decrypt one ``.age`` evidence file to ``out``; returns encryption.DecryptResult."""
    from bodycam_ros.core.encryption import decrypt
    with open(out, 'wb') as f:
        return decrypt(path, identity, f)


def decrypted_incident(clip: Path, identity, out_dir: Path) -> dict[str, Path]:
    """Every ``*.age`` file of an incident decrypted into ``out_dir`` (name without .age),
    each checked against the manifest's plaintext hash when it has one."""
    manifest = json.loads((clip / 'manifest.json').read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    got = {}
    for name, entry in manifest['files'].items():
        if not name.endswith('.age'):
            continue
        target = out_dir / name[:-4]
        res = decrypt_file(clip / name, identity, target)
        if entry.get('plaintext') is not None:
            assert res.complete
            assert res.plaintext_sha256 == entry['plaintext']['sha256'], name
            assert res.plaintext_bytes == entry['plaintext']['size'], name
        assert res.ciphertext_sha256 == entry['sha256'], name
        got[name[:-4]] = target
    return got
