"""Real signed histories for the ledger, audit and history tests.

A unit is an evidence directory with ``spool/<id>/`` incidents whose manifests are canonical,
chained by sequence and signed with a real Ed25519 key (``evidence.sign_into``), and a
``ledger.jsonl`` written by :class:`core.ledger.Ledger` with the same key. ``upload`` copies an
incident into a ``file://`` bucket in the uploader's layout and returns the record the
uploader would have written (``upload.json``), with the SHA-256 of each stored object.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.ledger import Ledger, bucket_key

DEVICE = 'unit-7'
DAY = '2024-06-01'


class Signer:
    """A file key, as the Signer protocol asks: raw public bytes and sign()."""

    def __init__(self, private: Ed25519PrivateKey | None = None) -> None:
        self.private = private or Ed25519PrivateKey.generate()

    def public_key_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                      serialization.PublicFormat.Raw)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def device_key(self) -> ev.DeviceKey:
        return ev.DeviceKey(self.private, self.public_key_bytes())


class Trust:
    """The agency's registry, as the TrustStore protocol asks."""

    def __init__(self, keys: dict[bytes, str] | None = None) -> None:
        self.keys = dict(keys or {})

    def register(self, signer: Signer, device_id: str = DEVICE) -> Trust:
        self.keys[signer.public_key_bytes()] = device_id
        return self

    def device_for_key(self, public_key_raw: bytes) -> str | None:
        return self.keys.get(bytes(public_key_raw))


class Clock:
    """A wall clock that only moves when told (entries get distinct, ordered times)."""

    def __init__(self, t: float = 1_717_200_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@dataclass
class Unit:
    root: Path
    signer: Signer
    device_id: str = DEVICE
    clock: Clock = field(default_factory=Clock)
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / 'spool').mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.root / 'ledger.jsonl', self.signer, self.device_id,
                             wall_clock=self.clock)

    @property
    def spool(self) -> Path:
        return self.root / 'spool'

    def seal(self, recovered: bool = False, signer: Signer | None = None,
             log: bool = True) -> Path:
        """One more incident, chained and signed, and its ledger entry."""
        signer = signer or self.signer
        head = ev.ChainHead.read(self.root / ev.CHAIN_HEAD)
        seq = head.sequence + 1
        iid = f'20240601T1200{seq:02d}Z-{seq:06x}'
        d = self.spool / iid
        d.mkdir()
        files = {'video.mp4': hashlib.sha256(iid.encode()).digest() * 64,
                 'sensors.mcap': bytes(range(256)) * 4}
        for name, data in files.items():
            (d / name).write_bytes(data)
        manifest = {
            'format': ev.FORMAT, 'incident_id': iid, 'sequence': seq,
            'prev_manifest_sha256': head.sha256, 'prev_incident_id': head.incident_id or None,
            'device_id': self.device_id, 'officer_id': 'officer-42',
            'device_public_key': ev.public_key_field(signer.device_key()),
            'start_time': 1_717_243_200.0 + 600 * seq, 'recovered': recovered,
            'files': {n: {'sha256': hashlib.sha256(b).hexdigest(), 'size': len(b)}
                      for n, b in files.items()},
        }
        sha = ev.sign_into(d, manifest, signer.device_key())
        ev.ChainHead(sha, seq, iid).write(self.root / ev.CHAIN_HEAD)
        if log:
            self.ledger.sealed(iid, seq, sha, now=100.0 * seq, recovered=recovered)
        self.ids.append(iid)
        return d

    def manifest_sha(self, iid: str) -> str:
        return ev.sha256_bytes((self.spool / iid / ev.MANIFEST).read_bytes())

    def upload(self, iid: str, bucket: Path) -> dict:
        """Copy one incident into a file:// bucket, log it uploaded, upload the ledger (as the
        uploader should); returns the upload record."""
        dst = bucket / self.device_id / DAY / iid
        dst.mkdir(parents=True, exist_ok=True)
        objects = {}
        for p in sorted((self.spool / iid).iterdir()):
            shutil.copyfile(p, dst / p.name)
            data = (dst / p.name).read_bytes()
            objects[p.name] = {'key': f'{self.device_id}/{DAY}/{iid}/{p.name}',
                               'sha256': hashlib.sha256(data).hexdigest(), 'size': len(data),
                               'etag': hashlib.md5(data).hexdigest()}
        record = {'verified': True, 'bucket': f'file://{bucket}', 'incident_id': iid,
                  'objects': objects, 'verified_at': self.clock()}
        seq = self.ids.index(iid) + 1
        self.ledger.uploaded_from_record(iid, seq, self.manifest_sha(iid), record,
                                         now=500.0 + seq)
        self.upload_ledger(bucket)
        return record

    def upload_ledger(self, bucket: Path) -> None:
        key = bucket / bucket_key(self.device_id)
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(self.ledger.snapshot())

    def prune(self, iid: str, record: dict) -> None:
        """Log the prune with its proof, then delete the local copy (as the uploader does)."""
        seq = self.ids.index(iid) + 1
        self.ledger.pruned_after_upload(iid, seq, self.manifest_sha(iid), record,
                                        now=1000.0 + seq)
        shutil.rmtree(self.spool / iid)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)
