"""Server-side decryption for playback, with a cache in the portal's state directory.

An age-encrypted file is decrypted with the agency's X25519 key (``core.encryption``); the
ciphertext hash and the plaintext hash are both checked against the signed manifest before a
byte is served, so a file altered in the bucket never plays as evidence. A crash-left video
(``complete: false``) keeps every authenticated chunk and is repaired to its last whole
fragment (``core.mp4.repair``). Plaintext incidents (``scheme: none``) are checked the same
way and copied. The cache lives in ``state/cache/<incident>/`` (0700), keyed by the manifest's
SHA-256: it holds plaintext evidence, so the state directory belongs where the agency key
does.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bodycam_ros.portal.bucket import Bucket


class PlaybackError(RuntimeError):
    """Evidence that cannot be served: missing, or its bytes disagree with the manifest."""


MAX_POINTS = 2000


class EvidenceCache:
    def __init__(self, state_dir: Path, bucket: Bucket, agency_dir: Path) -> None:
        self.root = Path(state_dir) / 'cache'
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        self.bucket, self.agency_dir = bucket, agency_dir
        self._identity: Any = None
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def identity(self) -> Any:
        """The agency's X25519 key, loaded from the agency directory on first use."""
        if self._identity is None:
            from bodycam_ros.core import trust
            self._identity = trust.load_encryption_private(self.agency_dir)
        return self._identity

    def use_identity(self, identity: Any) -> None:
        """Decrypt with this key instead (one already unlocked, e.g. after a passphrase)."""
        self._identity = identity

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def incident_dir(self, incident_id: str, manifest_sha256: str) -> Path:
        """The incident's plaintext cache folder (0700), keyed by its manifest."""
        d = self.root / f'{incident_id}-{manifest_sha256[:16]}'
        d.mkdir(exist_ok=True, mode=0o700)
        return d

    def plaintext(self, incident_id: str, key_prefix: str, manifest: dict[str, Any],
                  manifest_sha256: str, name: str) -> Path:
        """The checked plaintext of ``name`` (``video.mp4``, ``sensors.mcap``)."""
        files = manifest.get('files') or {}
        stored = f'{name}.age' if f'{name}.age' in files else name
        entry = files.get(stored)
        if not isinstance(entry, dict):
            raise PlaybackError(f'{incident_id} has no {name}')
        out_dir = self.incident_dir(incident_id, manifest_sha256)
        target = out_dir / name
        with self._lock(f'{incident_id}/{name}'):
            if target.exists():
                return target
            key = f'{key_prefix}/{stored}'
            src = self.bucket.local_path(key)
            tmp_src = None
            if src is None:
                tmp_src = out_dir / f'.{stored}.download'
                self.bucket.download(key, tmp_src)
                src = tmp_src
            try:
                self._decrypt_checked(src, stored, entry, target, out_dir)
            finally:
                if tmp_src is not None:
                    tmp_src.unlink(missing_ok=True)
        return target

    def _decrypt_checked(self, src: Path, stored: str, entry: dict[str, Any], target: Path,
                         out_dir: Path) -> None:
        part = out_dir / f'.{target.name}.part'
        if not stored.endswith('.age'):
            digest = _sha256(src)
            if digest != entry.get('sha256'):
                raise PlaybackError(f'{stored}: SHA-256 does not match the signed manifest')
            shutil.copyfile(src, part)
            os.replace(part, target)
            return
        from bodycam_ros.core.encryption import AgeError, decrypt
        if _sha256(src) != entry.get('sha256'):       # say "altered" before "undecryptable"
            raise PlaybackError(f'{stored}: ciphertext SHA-256 does not match the signed '
                                'manifest (altered in the bucket)')
        try:
            with open(part, 'wb') as f:
                res = decrypt(src, self.identity(), f)
        except AgeError as exc:
            part.unlink(missing_ok=True)
            raise PlaybackError(f'{stored}: does not decrypt with the agency key: {exc}') from exc
        if res.ciphertext_sha256 != entry.get('sha256'):
            part.unlink(missing_ok=True)
            raise PlaybackError(f'{stored}: ciphertext SHA-256 does not match the signed '
                                'manifest (altered in the bucket)')
        plain = entry.get('plaintext')
        if isinstance(plain, dict):
            if not res.complete or res.plaintext_sha256 != plain.get('sha256'):
                part.unlink(missing_ok=True)
                raise PlaybackError(f'{stored}: decrypted SHA-256 does not match the signed '
                                    'plaintext hash')
        elif target.suffix == '.mp4':
            from bodycam_ros.core.mp4 import repair      # crash-left: keep whole fragments
            fixed = out_dir / f'.{target.name}.repaired'
            repair(part, fixed)
            os.replace(fixed, part)
        os.replace(part, target)

    def sensors(self, incident_id: str, key_prefix: str, manifest: dict[str, Any],
                manifest_sha256: str) -> dict[str, Any]:
        """Plot series from the decrypted ``sensors.mcap`` (cached as JSON)."""
        out_dir = self.incident_dir(incident_id, manifest_sha256)
        cached = out_dir / 'sensors.json'
        if cached.exists():
            return json.loads(cached.read_text())
        mcap = self.plaintext(incident_id, key_prefix, manifest, manifest_sha256,
                              'sensors.mcap')
        video = manifest.get('video') or {}
        t0 = video.get('first_stamp') or (manifest.get('sensors') or {}).get('first_stamp')
        data = series(_read(mcap), t0)
        tmp = out_dir / '.sensors.json.part'
        tmp.write_text(json.dumps(data))
        os.replace(tmp, cached)
        return data


def _read(mcap: Path) -> Iterable[tuple[str, str, int, Any]]:
    """rosbags wants the bag's directory or file; the evidence is one .mcap file."""
    from bodycam_ros.core.sidecar import read_mcap
    return read_mcap(mcap)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _thin(points: list[list[float]], n: int = MAX_POINTS) -> list[list[float]]:
    if len(points) <= n:
        return points
    step = math.ceil(len(points) / n)
    return points[::step]


def series(messages: Iterable[tuple[str, str, int, Any]], t0: float | None) -> dict[str, Any]:
    """speed (m/s), |a| (m/s^2), body tilt from vertical (deg), track (lat, lon), alerts;
    t in seconds from ``t0`` (the video's first frame stamp when known)."""
    speed: list[list[float]] = []
    fix_speed: list[list[float]] = []
    accel: list[list[float]] = []
    tilt: list[list[float]] = []
    track: list[list[float]] = []
    alerts: list[dict[str, Any]] = []
    last_fix: tuple[float, float, float] | None = None
    first: float | None = None
    for topic, msgtype, stamp_ns, msg in messages:
        t = stamp_ns / 1e9
        if first is None:
            first = t
        base = t0 if t0 is not None else first
        rt = round(t - base, 3)
        if msgtype == 'sensor_msgs/msg/Imu':
            a = msg.linear_acceleration
            mag = math.sqrt(a.x * a.x + a.y * a.y + a.z * a.z)
            if math.isfinite(mag):
                accel.append([rt, round(mag, 3)])
                if mag > 1e-6:
                    tilt.append([rt, round(math.degrees(math.acos(max(-1.0, min(1.0,
                                                                     a.z / mag)))), 2)])
        elif msgtype == 'geometry_msgs/msg/TwistStamped':
            v = msg.twist.linear
            s = math.hypot(v.x, v.y)
            if math.isfinite(s):
                speed.append([rt, round(s, 3)])
        elif msgtype == 'sensor_msgs/msg/NavSatFix':
            if msg.status.status < 0 or not (math.isfinite(msg.latitude) and
                                             math.isfinite(msg.longitude)):
                continue
            track.append([rt, round(msg.latitude, 7), round(msg.longitude, 7)])
            if last_fix is not None and rt > last_fix[0]:
                from bodycam_ros.core.sidecar import haversine_m
                d = haversine_m(last_fix[1], last_fix[2], msg.latitude, msg.longitude)
                fix_speed.append([rt, round(d / (rt - last_fix[0]), 3)])
            last_fix = (rt, msg.latitude, msg.longitude)
        elif msgtype == 'diagnostic_msgs/msg/DiagnosticStatus' and topic.endswith('alerts'):
            level = msg.level if isinstance(msg.level, int) else int.from_bytes(
                bytes(msg.level), 'little')
            alerts.append({'t': rt, 'level': level, 'name': msg.name, 'message': msg.message,
                           'values': {kv.key: kv.value for kv in msg.values}})
    return {'t0': t0 if t0 is not None else first,
            'speed': _thin(speed or fix_speed), 'speed_source': 'gps/vel' if speed else 'fixes',
            'accel': _thin(accel), 'tilt': _thin(tilt), 'track': _thin(track),
            'alerts': alerts[:500]}
