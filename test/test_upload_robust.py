"""One bad incident never stops the uploader (issue 11): it is quarantined by reason, kept as
found, reported, and every other incident goes up, urgent ones first.

Real files, real Ed25519 signatures, the local directory bucket, and the real CLI.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bodycam_ros.core.upload import create_uploader
from conftest import ROOT
from spoolutil import DEVICE, incident_files, make_incident
from uploadutil import resign
from test_upload_trust_util import device_signer, seal_in_ledger

T0 = 1_700_000_000.0
FAST = dict(base_backoff_s=0.02, max_backoff_s=0.2)


def spool_with_goods(ev: Path, n: int = 3) -> list[str]:
    seal_in_ledger(ev, *(make_incident(ev, f'good-{i}', start_time=T0 + i, seed=i)
                         for i in range(n)))
    return [f'good-{i}' for i in range(n)]


def uploader(tmp_path: Path, ev: Path, **kw):
    events: list = []
    up = create_uploader(f'file://{tmp_path / "bucket"}', ev, on_event=events.append,
                         **{'signer': device_signer(), **FAST, **kw})
    up.events = events
    return up


def assert_quarantined(ev: Path, name: str, reason: str, before: dict[str, bytes]) -> dict:
    """Kept exactly as found, no upload mark, and a record outside the incident."""
    inc = ev / 'spool' / name
    assert incident_files(inc) == before
    assert not (inc / 'upload.json').exists()
    record = json.loads((ev / 'quarantine' / f'{name}.json').read_text())
    assert record['incident'] == name and record['reason'] == reason
    assert abs(record['time'] - time.time()) < 120 and record['message']
    assert not any(p.name.startswith('quarantine') for p in inc.iterdir())
    return record


@pytest.mark.parametrize('start_time,reason', [
    (1e300, 'bad_start_time'),                  # OverflowError in the queue on main
    (float('nan'), 'bad_start_time'),
    (-1e18, 'bad_start_time'),
    ('9999999-01-01', 'bad_start_time'),
])
def test_an_urgent_incident_with_an_impossible_start_time_is_quarantined(
        tmp_path: Path, start_time, reason: str):
    ev = tmp_path / 'evidence'
    goods = spool_with_goods(ev)
    bad = make_incident(ev, 'bad', reasons=('officer_down',), start_time=T0)
    resign(bad, start_time=start_time)       # signed: a recorder bug, not tampering
    before = incident_files(bad)
    up = uploader(tmp_path, ev)

    result = up.drain(timeout_s=60)

    assert sorted(result.verified) == goods and not result.failed and not result.error
    assert set(result.quarantined) == {'bad'} and result.quarantined['bad'].startswith(reason)
    assert_quarantined(ev, 'bad', reason, before)
    assert up.status().quarantined == 1 and up.status().quarantine_reason == f'bad: {reason}'


def test_a_nan_start_time_does_not_make_the_uploader_yield_over_and_over(tmp_path: Path):
    """On main: 11,580 upload-and-yield cycles in 8 s and 0 incidents verified."""
    ev = tmp_path / 'evidence'
    goods = spool_with_goods(ev)
    bad = make_incident(ev, 'bad', reasons=('officer_down',), start_time=T0)
    resign(bad, start_time=float('nan'))
    up = uploader(tmp_path, ev)
    up.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and up.status().verified_total < 3:
            time.sleep(0.05)
    finally:
        up.stop()
    assert up.status().verified_total == 3
    assert all((ev / 'spool' / g / 'upload.json').is_file() for g in goods)
    assert [e for e in up.events if e.kind == 'yield'] == []
    assert [e.incident_id for e in up.events if e.kind == 'quarantined'] == ['bad']


@pytest.mark.parametrize('state', [
    {'objects': []},                                       # AttributeError on main
    {'objects': {'video.mp4': []}},
    {'objects': {'video.mp4': {'key': 7, 'digest': 'x', 'parts': [1]}}},
    {'objects': {'video.mp4': {'key': 'k', 'uploaded': True, 'digest': {
        'size': 1, 'mtime_ns': 1, 'sha256': 'zz', 'md5': 'y', 'part_size': 1,
        'parts': [[0, 1, 'q', 'r']]}}}},
    {'objects': None, 'careful': 'yes'},
    [1, 2, 3],
])
def test_a_damaged_state_json_does_not_block_the_incidents_after_it(tmp_path: Path, state):
    ev = tmp_path / 'evidence'
    goods = spool_with_goods(ev)
    make_incident(ev, 'first', reasons=('holster',), start_time=T0 - 100)
    work = ev / 'upload' / 'first'
    work.mkdir(parents=True)
    if isinstance(state, dict):
        state = {'bucket': f'file://{tmp_path / "bucket"}', **state}
    (work / 'state.json').write_text(json.dumps(state))
    up = uploader(tmp_path, ev)

    result = up.drain(timeout_s=60)

    assert result.ok, result
    assert result.verified == ['first', *goods]             # urgent first, then oldest
    stored = tmp_path / 'bucket' / DEVICE / '2023-11-14' / 'first'
    assert {p.name: p.read_bytes() for p in stored.iterdir()} == \
        incident_files(ev / 'spool' / 'first')


def test_a_local_file_that_no_longer_matches_the_signed_manifest_is_never_uploaded_or_pruned(
        tmp_path: Path):
    """On main it went up "as found", was marked verified, and keep_local_s deleted it."""
    ev = tmp_path / 'evidence'
    goods = spool_with_goods(ev)
    bad = make_incident(ev, 'bad', start_time=T0 - 50)
    with open(bad / 'video.mp4', 'r+b') as f:
        f.seek(500)
        f.write(b'edited')
    before = incident_files(bad)
    up = uploader(tmp_path, ev, keep_local_s=0.0)

    result = up.drain(timeout_s=60)

    assert sorted(result.verified) == goods
    record = assert_quarantined(ev, 'bad', 'file_mismatch', before)
    assert record['details'] == ['video.mp4: SHA-256 does not match the manifest']
    assert not (tmp_path / 'bucket' / DEVICE / '2023-11-14' / 'bad').exists()
    # the good ones verified and (keep_local_s=0) were pruned; the bad one stays
    assert sorted(p.name for p in (ev / 'spool').iterdir()) == ['bad']


def _forge_fields(inc: Path) -> None:
    """Promote a routine clip to officer-down without the device key."""
    manifest = json.loads((inc / 'manifest.json').read_text())
    manifest['triggers'] = [{'reason': 'officer_down', 'time': T0}]
    (inc / 'manifest.json').write_text(json.dumps(manifest, sort_keys=True, indent=2) + '\n')


def _sign_with_another_key(inc: Path) -> None:
    body = (inc / 'manifest.json').read_bytes()
    (inc / 'manifest.sig').write_bytes(Ed25519PrivateKey.generate().sign(body))


def _truncate_signature(inc: Path) -> None:
    (inc / 'manifest.sig').write_bytes((inc / 'manifest.sig').read_bytes()[:40])


@pytest.mark.parametrize('damage', [_forge_fields, _sign_with_another_key, _truncate_signature])
def test_a_manifest_whose_signature_does_not_hold_is_not_trusted(tmp_path: Path, damage):
    ev = tmp_path / 'evidence'
    goods = spool_with_goods(ev)
    bad = make_incident(ev, 'bad', start_time=T0 - 50)
    damage(bad)
    before = incident_files(bad)
    up = uploader(tmp_path, ev)

    result = up.drain(timeout_s=60)

    assert result.verified == goods     # the forged "officer_down" did not jump the queue
    assert_quarantined(ev, 'bad', 'bad_signature', before)
    assert not (tmp_path / 'bucket' / DEVICE / '2023-11-14' / 'bad').exists()


def test_urgent_incidents_are_never_queued_behind_a_broken_one(tmp_path: Path):
    ev = tmp_path / 'evidence'
    make_incident(ev, 'routine', reasons=('manual',), start_time=T0 - 1000)
    broken = make_incident(ev, 'broken-down', reasons=('officer_down',), start_time=T0 - 500)
    (broken / 'sensors.mcap').unlink()
    make_incident(ev, 'holster', reasons=('holster',), start_time=T0)
    up = uploader(tmp_path, ev)

    result = up.drain(timeout_s=60)

    assert result.verified == ['holster', 'routine']
    assert [(e.kind, e.incident_id) for e in up.events
            if e.kind in ('verified', 'quarantined')] == \
        [('quarantined', 'broken-down'), ('verified', 'holster'), ('verified', 'routine')]
    assert result.quarantined['broken-down'].startswith('file_mismatch')


def test_a_quarantine_is_kept_across_restarts_and_released_once_the_evidence_is_restored(
        tmp_path: Path):
    ev = tmp_path / 'evidence'
    bad = make_incident(ev, 'bad', start_time=T0)
    original = (bad / 'sensors.mcap').read_bytes()
    (bad / 'sensors.mcap').write_bytes(original[:100])
    first = uploader(tmp_path, ev)
    assert set(first.drain().quarantined) == {'bad'}

    # a restart: the record is found, the incident is not checked or reported again
    second = uploader(tmp_path, ev)
    again = second.drain()
    assert set(again.quarantined) == {'bad'} and again.verified == []
    assert [e for e in second.events if e.kind == 'quarantined'] == []
    assert second.status().quarantined == 1

    (bad / 'sensors.mcap').write_bytes(original)        # restored from a backup
    third = uploader(tmp_path, ev)
    done = third.drain()
    assert done.ok and done.verified == ['bad']
    assert not (ev / 'quarantine' / 'bad.json').exists()
    assert third.status().quarantined == 0
    assert [e.kind for e in third.events if e.kind in ('released', 'verified')] == \
        ['released', 'verified']


def test_cli_upload_once_uploads_the_good_names_the_damaged_and_exits_non_zero(tmp_path: Path):
    ev = tmp_path / 'evidence'
    goods = spool_with_goods(ev)
    bad = make_incident(ev, 'damaged', reasons=('officer_down',), start_time=T0 + 10)
    with open(bad / 'video.mp4', 'r+b') as f:
        f.seek(2000)
        f.write(b'\0' * 16)
    bucket = tmp_path / 'bucket'
    out = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'upload', '--once',
                          '--bucket', f'file://{bucket}', '--evidence-dir', str(ev)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert '3 incident(s) verified' in out.stdout
    assert 'quarantined damaged' in out.stderr and 'file_mismatch' in out.stderr
    assert str(ev / 'quarantine' / 'damaged.json') in out.stderr
    assert sorted(p.parent.name for p in bucket.glob(f'{DEVICE}/*/*/manifest.sig')) == goods


def test_the_configured_device_key_is_the_one_trusted_and_a_new_key_rechecks(tmp_path: Path):
    """Manifests must be signed by the recorder's key (key_dir/device_ed25519.pub); a
    manifest's own device_public_key is not enough. Fixing the configured key releases."""
    from cryptography.hazmat.primitives import serialization as ser
    ev = tmp_path / 'evidence'
    inc = make_incident(ev, 'inc', start_time=T0)
    before = incident_files(inc)
    other = tmp_path / 'other' / 'device_ed25519.pub'
    other.parent.mkdir()
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    wrong = uploader(tmp_path, ev, device_key=other)
    assert set(wrong.drain().quarantined) == {'inc'}
    assert_quarantined(ev, 'inc', 'bad_signature', before)

    right = uploader(tmp_path, ev, device_key=ev / 'keys' / 'device_ed25519.pub')
    result = right.drain()
    assert result.ok and result.verified == ['inc']
    record = json.loads((inc / 'upload.json').read_text())
    assert record['signature_key'] == 'device'


@pytest.mark.parametrize('encrypted', [False, True], ids=['plaintext', 'age'])
def test_incidents_the_real_recorder_seals_pass_the_checks_upload_and_prune(
        tmp_path: Path, encrypted: bool):
    """The checks against what core.spool really writes (format 2, key in key_dir, age):
    nothing of a sound incident is quarantined; keep_local_s 0 prunes after the bucket
    copy verifies; the officer-down clip goes first."""
    import uuid

    from bodycam_ros.core import keys, trust
    from bodycam_ros.core.encryption import encode_recipient
    from bodycam_ros.core.ring import LookbackRing
    from bodycam_ros.core.audit import AuditLog, audit_path
    from bodycam_ros.core.ledger import Ledger, ledger_path
    from bodycam_ros.core.spool import Command, EvidenceStore, Recorder, RecorderConfig
    from spoolutil import agency_for
    from test_mp4 import encode_clip

    root = tmp_path / 'evidence'
    store = EvidenceStore(root)
    signer = keys.FileSigner.create(tmp_path / 'keys', 'unit-1', None, root)
    kw: dict = {}
    if encrypted:
        agency, _, _ = agency_for(tmp_path)
        pub = trust.load_encryption_public(agency)
        kw = dict(recipients=[pub], recipient=encode_recipient(pub))
    kw.update(ledger=Ledger(ledger_path(root), signer, 'unit-1'),
              audit=AuditLog(audit_path(root), signer, 'unit-1'))
    rec = Recorder(store, LookbackRing(keep_s=3.0, max_bytes=1 << 26), signer,
                   RecorderConfig(pre_event_s=1.0, post_event_s=0.4, min_free_bytes=0,
                                  device_id='unit-1'), **kw)
    rec.start()
    frames = 60
    for i, p in enumerate(encode_clip(frames * 2)):
        rec.on_video(p)
        k = i % frames
        if k == frames // 2:
            reason = 'manual' if i < frames else 'officer_down'
            rec.on_command(Command('start', reason, p.t, str(uuid.uuid4()), p.t))
        elif k == frames * 3 // 4:
            rec.on_command(Command('stop', 'manual', p.t, str(uuid.uuid4()), p.t))
        rec.tick(p.t)
    rec.close()
    assert rec.status().sealed == 2
    sealed = {json.loads((d / 'manifest.json').read_text())['triggers'][0]['reason']: d.name
              for d in (root / 'spool').iterdir()}
    up = uploader(tmp_path, root, device_key=tmp_path / 'keys' / 'device_ed25519.pub',
                  keep_local_s=0.0, signer=signer)

    result = up.drain(timeout_s=60)

    assert result.ok, result
    assert result.verified == [sealed['officer_down'], sealed['manual']]
    assert list((root / 'spool').iterdir()) == []
    assert [json.loads(line)['incident_id'] for line in
            (root / 'pruned.jsonl').read_text().splitlines()] == result.verified
