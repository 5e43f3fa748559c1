"""Real evidence for the portal tests: the recorder seals encrypted incidents for a unit the
test agency registered, and the real uploader puts them into a file:// bucket."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

DEVICE = 'unit-t'


def unit_with_bucket(tmp_path: Path, incidents: int = 3, t0: float = 1000.0):
    """(agency_dir, bucket_dir, evidence_dir, recorder pieces) with ``incidents`` uploaded."""
    from test_evidence_trust import record, unit

    from bodycam_ros.core import trust
    from bodycam_ros.core.upload import create_uploader
    from spoolutil import agency_for
    agency, _, _ = agency_for(tmp_path)
    store, rec, signer = unit(tmp_path)
    if trust.TrustStore.load(agency).lookup(DEVICE) is None:
        trust.register_device(agency, signer.public_key_bytes(), DEVICE, time.time(),
                              passphrase=b'')
    rec.start()
    record(rec, incidents, t0=t0)
    rec.close()
    bucket = tmp_path / 'bucket'
    upload(tmp_path, bucket)
    return agency, bucket, store.root


def upload(tmp_path: Path, bucket: Path) -> None:
    from bodycam_ros.core.upload import create_uploader
    up = create_uploader(f'file://{bucket}', tmp_path / 'ev', proxy=False,
                         key_dir=tmp_path / 'keys', device_id=DEVICE)
    try:
        res = up.drain(fail_fast=True, max_failures=2)
        assert res.ok, res
    finally:
        up.backend.close()


def incident_dirs(bucket: Path) -> list[Path]:
    """Incident folders in the bucket, oldest (lowest sequence) first."""
    dirs = [p.parent for p in bucket.glob('*/*/*/manifest.json')]
    return sorted(dirs, key=lambda d: json.loads((d / 'manifest.json').read_text())['sequence'])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Server:
    """The portal's Starlette app under a real uvicorn on loopback, in a thread."""

    def __init__(self, portal) -> None:
        import uvicorn
        self.portal = portal
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.server = uvicorn.Server(uvicorn.Config(portal.app(), host='127.0.0.1',
                                                    port=self.port, log_level='warning',
                                                    lifespan='on'))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started and time.monotonic() < end:
            time.sleep(0.02)
        assert self.server.started, 'uvicorn did not start'
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.portal.close()
