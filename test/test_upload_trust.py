"""The uploader's side of issue 10: the bucket alone proves a device's history is complete.

Incidents come from the real recorder core (``core.spool.Recorder``: age-encrypted format 2,
device key in a key_dir outside the evidence, signed ledger and audit log); the uploader opens
the same key_dir; a real agency trust store (``core.trust``) registers the device; the check is
``core.history.verify_history`` over the bucket (file:// here, S3 in test_upload_trust_s3.py).
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from bodycam_ros.commands.audit import load_trust
from bodycam_ros.core import history, keys, trust
from bodycam_ros.core.audit import AuditLog, audit_path, verify_audit_bytes
from bodycam_ros.core.ledger import Ledger, ledger_path
from bodycam_ros.core.upload import create_uploader
from bodycam_ros.core.upload import prune as prune_mod
from spoolutil import agency_for, make_incident

DEVICE_ID = 'unit-1'
FAST = dict(base_backoff_s=0.02, max_backoff_s=0.2)
REASONS = ('manual', 'officer_down', 'weapon_drawn')


def record_unit(tmp_path: Path, reasons=REASONS, encrypted: bool = True):
    """Seal one incident per reason with the real recorder core; returns (evidence dir,
    key dir, trust store, incident ids in sequence order)."""
    from bodycam_ros.core.encryption import encode_recipient
    from bodycam_ros.core.ring import LookbackRing
    from bodycam_ros.core.spool import Command, EvidenceStore, Recorder, RecorderConfig
    from test_mp4 import encode_clip

    root, key_dir = tmp_path / 'evidence', tmp_path / 'keys'
    store = EvidenceStore(root)
    signer = keys.FileSigner.create(key_dir, DEVICE_ID, None, root)
    agency, _, _ = agency_for(tmp_path)
    trust.register_device(agency, signer.public_key_bytes(), DEVICE_ID, time.time(),
                          passphrase=b'')
    kw: dict = {}
    if encrypted:
        pub = trust.load_encryption_public(agency)
        kw = dict(recipients=[pub], recipient=encode_recipient(pub))
    rec = Recorder(store, LookbackRing(keep_s=3.0, max_bytes=1 << 26), signer,
                   RecorderConfig(pre_event_s=1.0, post_event_s=0.4, min_free_bytes=0,
                                  device_id=DEVICE_ID),
                   ledger=Ledger(ledger_path(root), signer, DEVICE_ID),
                   audit=AuditLog(audit_path(root), signer, DEVICE_ID), **kw)
    rec.start()
    frames = 60
    for i, p in enumerate(encode_clip(frames * len(reasons))):
        rec.on_video(p)
        k = i % frames
        if k == frames // 2:
            rec.on_command(Command('start', reasons[i // frames], p.t, str(uuid.uuid4()), p.t))
        elif k == frames * 3 // 4:
            rec.on_command(Command('stop', 'manual', p.t, str(uuid.uuid4()), p.t))
        rec.tick(p.t)
    rec.close()
    assert rec.status().sealed == len(reasons)
    seq = {}
    for d in (root / 'spool').iterdir():
        seq[json.loads((d / 'manifest.json').read_text())['sequence']] = d.name
    return root, key_dir, load_trust(agency), [seq[n] for n in sorted(seq)]


def uploader(bucket: str, root: Path, key_dir: Path | None, **kw):
    events: list = []
    up = create_uploader(bucket, root, on_event=events.append, proxy=kw.pop('proxy', False),
                         key_dir=key_dir,
                         device_key=key_dir / 'device_ed25519.pub' if key_dir else None,
                         **{**FAST, **kw})
    up.events = events
    return up


def bucket_history(bucket: Path, store) -> history.HistoryReport:
    return history.verify_history(history.file_bucket_reader(bucket, DEVICE_ID), store)


def test_three_incidents_in_a_file_bucket_verify_and_a_cut_middle_one_is_named(
        tmp_path: Path):
    """On main the bucket held the incidents but no ledger: the history check said
    ``no_ledger`` (nothing vouches it is complete). Now the bucket's ledger and audit log
    verify against the agency's trust store, and a deleted middle incident is named."""
    root, key_dir, store, ids = record_unit(tmp_path)
    bucket = tmp_path / 'bucket'
    up = uploader(f'file://{bucket}', root, key_dir)

    result = up.drain(timeout_s=60)

    assert result.ok, result
    rep = bucket_history(bucket, store)
    assert rep.ok, rep.as_dict()
    assert rep.counts['uploaded'] == 3 and rep.counts['checked'] == 3, rep.counts
    remote_ledger = (bucket / DEVICE_ID / 'ledger.jsonl').read_bytes()
    assert remote_ledger == (root / 'ledger.jsonl').read_bytes()
    events = [json.loads(line)['event'] for line in remote_ledger.splitlines()]
    assert events.count('sealed') == 3 and events.count('uploaded') == 3
    audit = verify_audit_bytes((bucket / DEVICE_ID / 'audit.jsonl').read_bytes(), store)
    assert audit.ok, audit.as_dict()
    uploaded = [e for e in audit.entries if e.event == 'incident_uploaded']
    assert sorted(e.data['incident_id'] for e in uploaded) == sorted(ids)
    assert all(e.data['bucket'] == f'file://{bucket}' for e in uploaded)
    # the encrypted evidence went up as opaque bytes, exactly as sealed
    for iid in ids:
        local = root / 'spool' / iid
        remote = next(bucket.glob(f'{DEVICE_ID}/*/{iid}'))
        assert {p.name: p.read_bytes() for p in remote.iterdir()} == \
            {p.name: p.read_bytes() for p in local.iterdir() if p.name != 'upload.json'}
        assert (remote / 'video.mp4.age').is_file()

    shutil.rmtree(next(bucket.glob(f'{DEVICE_ID}/*/{ids[1]}')))

    rep = bucket_history(bucket, store)
    assert not rep.ok
    missing = [p for p in rep.problems if p.code == 'missing_incident']
    assert [p.incident_id for p in missing] == [ids[1]], rep.as_dict()
    assert ids[1] in missing[0].message and missing[0].sequence == 2


def test_pruning_logs_the_signed_prune_record_before_the_delete(tmp_path: Path, monkeypatch):
    """The prune record is the proof a verifier accepts for the gap: it must be on disk
    before the delete starts. Observed at the moment ``evidence.prune_incident`` is called
    (the real one runs); afterwards the unit and the bucket histories both pass."""
    root, key_dir, store, ids = record_unit(tmp_path)
    bucket = tmp_path / 'bucket'
    seen: dict[str, list[str]] = {}
    real = prune_mod.ev.prune_incident

    def observed(evidence_root, path, incident_id, sequence, manifest_sha256):
        lines = (root / 'ledger.jsonl').read_text().splitlines()
        seen[path.name] = [json.loads(x)['event'] for x in lines
                           if json.loads(x)['data'].get('incident_id') == path.name]
        assert path.is_dir()
        return real(evidence_root, path, incident_id, sequence, manifest_sha256)

    monkeypatch.setattr(prune_mod.ev, 'prune_incident', observed)
    up = uploader(f'file://{bucket}', root, key_dir, keep_local_s=0.0)

    result = up.drain(timeout_s=60)

    assert result.ok, result
    assert sorted(seen) == sorted(ids)
    for iid in ids:            # sealed, uploaded, then pruned: all before the delete began
        assert seen[iid] == ['sealed', 'uploaded', 'pruned'], (iid, seen[iid])
    assert list((root / 'spool').iterdir()) == []
    unit = history.verify_history(history.SpoolReader(root), store)
    assert unit.ok and unit.counts['pruned'] == 3, unit.as_dict()
    rep = bucket_history(bucket, store)
    assert rep.ok and rep.counts['pruned'] == 3, rep.as_dict()
    remote_audit = verify_audit_bytes((bucket / DEVICE_ID / 'audit.jsonl').read_bytes(), store)
    pruned = [e for e in remote_audit.entries if e.event == 'incident_pruned']
    assert sorted(e.data['incident_id'] for e in pruned) == sorted(ids)
    for e in pruned:           # the remote proof: which bucket, which objects, when checked
        assert e.data['bucket'] == f'file://{bucket}'
        assert {'manifest.json', 'manifest.sig', 'video.mp4.age'} <= set(e.data['objects'])
        assert e.data['bucket_checked_at'] >= e.data['verified_at']


def test_without_a_device_key_it_uploads_warns_once_and_never_prunes(tmp_path: Path):
    ev = tmp_path / 'evidence'
    incs = [make_incident(ev, f'inc-{i}', start_time=1_700_000_000.0 + i, seed=i)
            for i in range(2)]
    bucket = tmp_path / 'bucket'
    up = uploader(f'file://{bucket}', ev, None, keep_local_s=0.0, min_free_bytes=1,
                  max_evidence_bytes=1, prune_check_s=0.0)

    assert up.drain(timeout_s=60).ok
    make_incident(ev, 'inc-2', start_time=1_700_000_010.0)
    assert up.drain(timeout_s=60).ok

    assert all(i.is_dir() for i in incs) and (ev / 'spool' / 'inc-2').is_dir()
    assert not (ev / 'pruned.jsonl').exists() and not (ev / 'ledger.jsonl').exists()
    warnings = [e.message for e in up.events
                if e.kind == 'warning' and e.message.startswith('no device signing key')]
    assert len(warnings) == 1 and 'never pruning' in warnings[0], warnings
    # The disk-pressure pass says why each incident stays (no prune record can be signed).
    kept = [e.message for e in up.events if e.kind == 'warning' and 'disk' in e.message]
    assert any('no prune record can be signed' in m for m in kept), kept
    assert len(list(bucket.glob('unit-7/*/*/manifest.sig'))) == 3


def test_an_uploaded_entry_waits_for_the_recorders_seal(tmp_path: Path):
    """The recorder moves an incident into the spool before it logs the seal: an upload that
    wins that race is logged once the seal is there, never before it."""
    from test_upload_trust_util import device_signer
    from uploadutil import resign
    ev = tmp_path / 'evidence'
    inc = make_incident(ev, 'inc', start_time=1_700_000_000.0)
    resign(inc, sequence=1)                     # numbered, but not in the ledger yet
    up = create_uploader(f'file://{tmp_path / "bucket"}', ev, signer=device_signer(),
                         device_id='unit-7', **FAST)
    assert up.drain(timeout_s=30).ok
    assert not (ev / 'ledger.jsonl').exists()   # nothing logged ahead of the seal

    ledger = Ledger(ledger_path(ev), device_signer(), 'unit-7')
    ledger.sealed('inc', 1, json.loads((inc / 'upload.json').read_text())['manifest_sha256'],
                  time.time())
    assert up.drain(timeout_s=30).ok
    assert [e.event for e in ledger.entries()] == ['sealed', 'uploaded']
    assert (tmp_path / 'bucket' / 'unit-7' / 'ledger.jsonl').read_bytes() == \
        (ev / 'ledger.jsonl').read_bytes()


@pytest.mark.parametrize('encrypted', [True, False], ids=['age', 'plaintext'])
def test_no_proxy_for_encrypted_incidents_said_once(tmp_path: Path, encrypted: bool):
    root, key_dir, store, ids = record_unit(tmp_path, reasons=('manual', 'manual'),
                                            encrypted=encrypted)
    bucket = tmp_path / 'bucket'
    up = uploader(f'file://{bucket}', root, key_dir, proxy=True)

    assert up.drain(timeout_s=120).ok

    said = [e for e in up.events if e.kind == 'info' and 'no proxy' in e.message]
    proxies = sorted(bucket.glob(f'{DEVICE_ID}/*/*/proxy.mp4'))
    errors = [e for e in up.events if e.kind in ('error', 'warning')]
    assert errors == [], errors
    if encrypted:
        assert len(said) == 1 and 'encrypted' in said[0].message
        assert proxies == []
        for iid in ids:
            record = json.loads((root / 'spool' / iid / 'upload.json').read_text())
            assert record['encrypted'] is True and record['proxy'] is None
            assert record['proxy_error'] is None
    else:
        assert said == [] and len(proxies) == 2
