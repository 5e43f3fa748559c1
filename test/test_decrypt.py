"""``bodycam decrypt``: the agency reads real recorder incidents (age-encrypted), from the
unit's spool and from a bucket, only after they verify against its trust store; ffprobe
plays what comes out and its hashes are the signed ones. A SIGKILLed recording decrypts,
repairs and plays too."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from bodycam_ros.core import evidence as ev
from bodycam_ros.core import keys, trust
from bodycam_ros.core.sidecar import read_mcap
from conftest import ROOT
from test_mp4 import ffprobe_frames, frame_counters
from test_verify_trust import DEVICE, bucket_dir, cli, flip, ids, made, u, upload  # noqa: F401


def decrypt(target: Path | str, agency: Path, out: Path, *args: str
            ) -> subprocess.CompletedProcess:
    return cli('decrypt', str(target), '--agency', str(agency), '--out', str(out), *args)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_decrypt_from_the_spool_and_the_bucket_plays_and_matches_the_manifest(
        u: Path, tmp_path: Path):
    first = ids(u)[0]
    clip = u / 'ev' / 'spool' / first
    m = json.loads((clip / ev.MANIFEST).read_text())
    upload(u, u / 'bucket')
    sources = {'spool': clip, 'bucket': f'file://{bucket_dir(u / "bucket", first)}'}
    for label, src in sources.items():
        out = tmp_path / label
        r = decrypt(src, u / 'agency', out, '--key-dir', str(u / 'keys'))
        assert r.returncode == 0, r.stdout + r.stderr
        for name in ('video.mp4', 'sensors.mcap'):
            plain = m['files'][f'{name}.age']['plaintext']
            assert (sha(out / name), (out / name).stat().st_size) == \
                (plain['sha256'], plain['size']), (label, name)
            assert (out / name).stat().st_mode & 0o077 == 0
        assert ffprobe_frames(out / 'video.mp4') == m['frame_count'] > 0
        counters = frame_counters(out / 'video.mp4')
        assert counters == list(range(counters[0], counters[0] + len(counters)))
        fixes = [x for x in read_mcap(out / 'sensors.mcap') if x[0] == '/gps/fix']
        assert len(fixes) == m['gps_track']['fixes'] > 0
        report = json.loads((out / 'decrypt-report.json').read_text())
        assert report['incident_id'] == first and not report['failed']
        assert report['files']['video.mp4.age']['matches_manifest'] is True
        assert report['verified']['trusted'] is True
    # The run on the unit's own spool is in its audit log; the bucket run is not the unit's.
    audit = [json.loads(x) for x in (u / 'ev' / 'audit.jsonl').read_text().splitlines()]
    runs = [e for e in audit if e['event'] == 'decrypt_run']
    assert len(runs) == 1 and runs[0]['data']['incident_id'] == first
    assert runs[0]['data']['target'] == str(clip)


def test_nothing_is_decrypted_from_evidence_that_does_not_verify(u: Path, tmp_path: Path):
    clip = u / 'ev' / 'spool' / ids(u)[1]
    flip(clip / 'video.mp4.age', 5000)
    r = decrypt(clip, u / 'agency', tmp_path / 'out')
    assert r.returncode == 1 and f'{clip.name}: video.mp4.age: SHA-256' in r.stderr, r.stderr
    assert 'nothing decrypted' in r.stderr and not (tmp_path / 'out').exists()
    # Another agency cannot decrypt (nor trust) it either.
    other = tmp_path / 'other'
    trust.init_agency(other, time.time())
    r = decrypt(u / 'ev' / 'spool' / ids(u)[0], other, tmp_path / 'out2')
    assert r.returncode == 1 and 'is not registered' in r.stderr, r.stderr


def test_a_sigkilled_incident_decrypts_repairs_and_plays(tmp_path: Path):
    from test_evidence_trust import CRASHER, unit
    from spoolutil import agency_for
    agency_for(tmp_path)
    proc = subprocess.Popen([sys.executable, '-c', CRASHER, str(tmp_path)], cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        incident = proc.stdout.readline().strip()
    finally:
        proc.kill()                               # SIGKILL mid-recording
        proc.wait(10)
    assert incident, proc.stderr.read()
    signer = keys.open_signer(tmp_path / 'keys')
    trust.register_device(tmp_path / 'agency', signer.public_key_bytes(), DEVICE,
                          time.time(), passphrase=b'')
    store, rec, _ = unit(tmp_path)                # the restarted recorder seals it as found
    rec.start()
    clip = tmp_path / 'ev' / 'spool' / incident
    deadline = time.monotonic() + 60
    while not (clip / ev.SIGNATURE).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    rec.close()
    m = json.loads((clip / ev.MANIFEST).read_text())
    assert m['recovered'] and m['files']['video.mp4.age']['plaintext'] is None
    out = tmp_path / 'out'
    r = decrypt(clip, tmp_path / 'agency', out)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / 'decrypt-report.json').read_text())
    assert report['recovered_incident'] and not report['failed']
    video = report['recovered']['video']
    assert video['playable'] and video['output'] == 'video.mp4' and video['fragments'] >= 3
    assert (out / 'video.original.mp4').stat().st_size == \
        video['bytes_kept'] + video['bytes_dropped']
    frames = ffprobe_frames(out / 'video.mp4')
    assert frames >= 3 * 30                       # all but the last fragment and age chunk
    assert frame_counters(out / 'video.mp4') == list(range(frames))
    e = report['files']['video.mp4.age']
    assert e['complete'] is False and e['chunks'] == m['files']['video.mp4.age']['chunks']
    sensors = report['recovered']['sensors']
    assert sensors['output'] == 'sensors.mcap' and sensors['records'] >= 20
    fixes = [x for x in read_mcap(out / 'sensors.mcap') if x[0] == '/gps/fix']
    assert len(fixes) == sensors['messages']['/gps/fix'] > 0
