"""verify_history: a device's ledger against the incidents present, attacked as someone
holding the storage card (and the bucket) would. Real keys, real files, a real S3 API server.

Every attack here passed ``bodycam verify`` on the main of issue 10 (see the issue); each
test names the problem code and the incident it must report.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from ledgerutil import DAY, DEVICE, Signer, Trust, Unit, lines

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.history import (HistoryError, SpoolReader, bucket_devices,
                                      file_bucket_reader, file_lister, s3_bucket_reader,
                                      s3_lister, verify_history)
from bodycam_ros.core.ledger import Ledger


def codes(rep) -> set[str]:
    return {p.code for p in rep.problems}


def named(rep, code: str) -> list[tuple[str | None, int | None]]:
    return [(p.incident_id, p.sequence) for p in rep.problems if p.code == code]


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    u = Unit(tmp_path / 'evidence', Signer())
    for _ in range(3):
        u.seal()
    return u


@pytest.fixture
def trust(unit: Unit) -> Trust:
    return Trust().register(unit.signer)


@pytest.fixture
def bucket(unit: Unit, tmp_path: Path) -> Path:
    b = tmp_path / 'bucket'
    for iid in unit.ids:
        unit.upload(iid, b)
    return b


def local(unit: Unit, trust: Trust, **kw):
    return verify_history(SpoolReader(unit.root), trust, **kw)


def test_three_incidents_verify_on_the_unit_and_in_the_bucket(unit, trust, bucket) -> None:
    rep = local(unit, trust)
    assert rep.ok, rep.problems
    assert rep.counts == {'ledger_entries': 6, 'sealed': 3, 'uploaded': 3, 'pruned': 0,
                          'present': 3, 'checked': 3}
    assert rep.device_id == DEVICE
    rep = verify_history(file_bucket_reader(bucket, DEVICE), trust)
    assert rep.ok, rep.problems
    assert rep.as_dict()['counts']['checked'] == 3
    assert SpoolReader(unit.spool).source == SpoolReader(unit.root).source


def test_newest_deleted_and_chain_head_rewritten(unit: Unit, trust: Trust) -> None:
    newest = unit.ids[-1]
    shutil.rmtree(unit.spool / newest)
    sha = unit.manifest_sha(unit.ids[1])
    ev.ChainHead(sha, 2, unit.ids[1]).write(unit.root / ev.CHAIN_HEAD)
    rep = local(unit, trust)
    assert named(rep, 'missing_incident') == [(newest, 3)]


def test_newest_deleted_with_its_ledger_line_only_a_witness_catches(unit, trust, tmp_path):
    """Honest about the gap: cut from the end of everything the unit holds, the history is
    a valid shorter one. The ledger copy in the bucket (or the portal's record) is the
    outside witness that catches it."""
    unit.upload_ledger(tmp_path / 'bucket')
    witness = verify_history(file_bucket_reader(tmp_path / 'bucket', DEVICE), trust).ledger.head
    shutil.rmtree(unit.spool / unit.ids[-1])
    unit.ledger.path.write_bytes(b''.join(lines(unit.ledger.path)[:-1]))
    assert local(unit, trust).ok
    rep = local(unit, trust, witness=witness)
    assert codes(rep) == {'behind_witness'}
    assert rep.problems[0].entry == 3


def test_middle_deleted_and_a_prune_line_appended(unit: Unit, trust: Trust) -> None:
    middle = unit.ids[1]
    sha = unit.manifest_sha(middle)
    shutil.rmtree(unit.spool / middle)
    with open(unit.root / ev.PRUNED_LOG, 'a') as f:     # the attack of issue 10
        f.write(json.dumps({'incident_id': middle, 'sequence': 2, 'manifest_sha256': sha,
                            'pruned_time': 1.0}) + '\n')
    rep = local(unit, trust)
    assert named(rep, 'missing_incident') == [(middle, 2)]


def test_middle_deleted_and_a_forged_signed_prune_appended(unit: Unit, trust: Trust,
                                                           tmp_path: Path) -> None:
    middle = unit.ids[1]
    sha = unit.manifest_sha(middle)
    shutil.rmtree(unit.spool / middle)
    forger = Ledger(unit.ledger.path, Signer(), DEVICE)     # a key of the attacker's own
    forger.pruned(middle, 2, sha, now=9.0, bucket='file:///nowhere', verified_at=1.0,
                  objects={'manifest.json': {'key': 'k', 'sha256': sha}})
    rep = local(unit, trust)
    assert {'unregistered_signer', 'mixed_keys', 'missing_incident'} <= codes(rep)
    assert named(rep, 'missing_incident') == [(middle, 2)]
    assert [p.entry for p in rep.problems if p.code == 'unregistered_signer'] == [4]


def test_prune_after_a_verified_upload_is_fine_locally_but_not_gone_from_the_bucket(
        unit: Unit, trust: Trust, bucket: Path) -> None:
    first = unit.ids[0]
    record = unit.upload(first, bucket)
    unit.prune(first, record)
    unit.upload_ledger(bucket)
    rep = local(unit, trust)
    assert rep.ok, rep.problems
    assert rep.counts['pruned'] == 1 and rep.counts['present'] == 2
    assert verify_history(file_bucket_reader(bucket, DEVICE), trust).ok
    shutil.rmtree(bucket / DEVICE / DAY / first)
    rep = verify_history(file_bucket_reader(bucket, DEVICE), trust)
    assert named(rep, 'missing_incident') == [(first, 1)]
    assert 'pruned from the unit but not in' in rep.problems[0].message


def test_bucket_must_hold_what_the_ledger_says_was_uploaded(unit, trust, bucket) -> None:
    pending = unit.seal()                      # sealed after the others, not uploaded yet
    unit.upload_ledger(bucket)
    rep = verify_history(file_bucket_reader(bucket, DEVICE), trust)
    assert rep.ok, rep.problems
    assert [(w.code, w.incident_id) for w in rep.warnings] == [('not_uploaded_yet',
                                                                pending.name)]
    newest = unit.ids[2]                       # uploaded, then deleted from the bucket
    shutil.rmtree(bucket / DEVICE / DAY / newest)
    rep = verify_history(file_bucket_reader(bucket, DEVICE), trust)
    assert named(rep, 'missing_incident') == [(newest, 3)]


def test_a_prune_logged_before_its_upload_verified_is_no_proof(unit: Unit, trust: Trust,
                                                               tmp_path: Path) -> None:
    first = unit.ids[0]
    record = unit.upload(first, tmp_path / 'bucket')
    unit.prune(first, record | {'verified_at': unit.clock.t + 3600})
    rep = local(unit, trust)
    assert named(rep, 'bad_prune') == [(first, 1)]
    assert named(rep, 'missing_incident') == [(first, 1)]


def test_video_and_key_replaced_everything_resigned(unit: Unit, trust: Trust) -> None:
    """The attacker re-signs every manifest and rewrites the whole ledger with a key of their
    own, and leaves its public half in keys/ beside the evidence: never trusted."""
    attacker = Signer()
    (unit.root / 'keys').mkdir()
    (unit.root / 'keys' / f'{ev.KEY_NAME}.pub').write_bytes(b'attacker key')
    unit.ledger.path.unlink()
    (unit.root / ev.CHAIN_HEAD).unlink()
    forged = Unit(unit.root.parent / 'forged', attacker)
    for iid in unit.ids:
        shutil.rmtree(unit.spool / iid)
    for _ in range(3):
        forged.seal()
    for iid in forged.ids:
        shutil.copytree(forged.spool / iid, unit.spool / iid)
    shutil.copyfile(forged.ledger.path, unit.ledger.path)
    rep = local(unit, trust)
    assert 'unregistered_signer' in codes(rep)
    assert not rep.ok
    # With the attacker's key registered (a trust store that trusts what it finds) it would pass:
    assert local(unit, Trust().register(attacker)).ok


def test_one_incident_resigned_with_another_key(unit: Unit, trust: Trust) -> None:
    middle = unit.ids[1]
    other = Signer()
    shutil.rmtree(unit.root / 'keys', ignore_errors=True)
    d = unit.spool / middle
    (d / 'video.mp4').write_bytes(b'forged video')
    m = json.loads((d / ev.MANIFEST).read_bytes())
    m['files']['video.mp4'] = {'sha256': hashlib.sha256(b'forged video').hexdigest(), 'size': 12}
    m['device_public_key'] = ev.public_key_field(other.device_key())
    ev.sign_into(d, m, other.device_key())
    rep = local(unit, trust)
    for code in ('manifest_mismatch', 'bad_signature', 'foreign_key'):
        assert named(rep, code) == [(middle, 2)], (code, rep.problems)


def test_mixed_keys_in_one_chain(unit: Unit, trust: Trust) -> None:
    second = Signer()                  # a second key, registered to this very device
    trust.register(second)
    unit.ledger = Ledger(unit.ledger.path, second, DEVICE, wall_clock=unit.clock)
    unit.seal(signer=second)
    rep = local(unit, trust)
    assert codes(rep) >= {'mixed_keys'}
    assert [p.entry for p in rep.problems if p.code == 'mixed_keys'] == [4]
    assert named(rep, 'not_in_ledger') == [(unit.ids[3], 4)]


def test_everything_deleted(unit: Unit, trust: Trust) -> None:
    for iid in unit.ids:
        shutil.rmtree(unit.spool / iid)
    unit.ledger.path.unlink()
    (unit.root / ev.CHAIN_HEAD).unlink()
    rep = local(unit, trust)
    assert codes(rep) == {'empty_history'}
    assert local(unit, trust, allow_empty=True).ok


def test_incidents_without_a_ledger(unit: Unit, trust: Trust) -> None:
    unit.ledger.path.unlink()
    rep = local(unit, trust)
    assert 'no_ledger' in codes(rep)
    assert sorted(named(rep, 'not_in_ledger')) == [(iid, i + 1) for i, iid in enumerate(unit.ids)]


def test_torn_last_ledger_line(unit: Unit, trust: Trust) -> None:
    data = unit.ledger.path.read_bytes()
    unit.ledger.path.write_bytes(data[:-25])
    rep = local(unit, trust)
    assert 'torn_tail' in codes(rep)
    assert named(rep, 'not_in_ledger') == [(unit.ids[2], 3)]


def test_flipped_bytes(unit: Unit, trust: Trust) -> None:
    path = unit.ledger.path
    data = bytearray(path.read_bytes())
    at = data.index(unit.ids[1].encode()) + 3
    data[at] ^= 0x01                                   # in the seal of the middle incident
    path.write_bytes(bytes(data))
    rep = local(unit, trust)
    assert 'bad_signature' in codes(rep) and 'chain_broken' in codes(rep)
    assert named(rep, 'not_in_ledger') == [(unit.ids[1], 2)]
    assert named(rep, 'sequence_missing') == [(None, 2)]

    path.write_bytes(bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]))
    assert local(unit, trust).ok
    mpath = unit.spool / unit.ids[2] / ev.MANIFEST
    m = bytearray(mpath.read_bytes())
    m[10] ^= 0x20
    mpath.write_bytes(bytes(m))
    rep = local(unit, trust)
    assert named(rep, 'manifest_mismatch')[0] == (unit.ids[2], 3)


def test_an_incident_from_another_agency_added_to_the_bucket(unit, trust, bucket,
                                                             tmp_path: Path) -> None:
    stranger = Unit(tmp_path / 'stranger', Signer(), device_id='unit-99')
    stranger.seal()
    stranger.upload(stranger.ids[0], bucket)               # its own device prefix
    shutil.copytree(stranger.spool / stranger.ids[0],      # and slipped in among ours
                    bucket / DEVICE / DAY / 'slipped-in')
    assert bucket_devices(file_lister(bucket)) == [DEVICE, 'unit-99']
    rep = verify_history(file_bucket_reader(bucket, DEVICE), trust)
    assert named(rep, 'not_in_ledger') == [('slipped-in', 1)]
    rep = verify_history(file_bucket_reader(bucket, 'unit-99'), trust)
    assert 'unregistered_signer' in codes(rep)


def test_a_middle_incident_deleted_from_s3(unit: Unit, trust: Trust, bucket: Path) -> None:
    from s3util import S3Server
    server = S3Server()
    try:
        client = server.client()
        client.create_bucket(Bucket='evidence')
        for p in sorted(bucket.rglob('*')):
            if p.is_file():
                client.put_object(Bucket='evidence', Key='agency/' +
                                  p.relative_to(bucket).as_posix(), Body=p.read_bytes())
        assert bucket_devices(s3_lister(client, 'evidence'), 'agency') == [DEVICE]
        rep = verify_history(s3_bucket_reader(client, 'evidence', DEVICE, 'agency'), trust)
        assert rep.ok, rep.problems
        assert rep.source == 's3://evidence/agency'
        middle = unit.ids[1]
        for name in ('manifest.json', 'manifest.sig', 'video.mp4', 'sensors.mcap'):
            client.delete_object(Bucket='evidence', Key=f'agency/{DEVICE}/{DAY}/{middle}/{name}')
        rep = verify_history(s3_bucket_reader(client, 'evidence', DEVICE, 'agency'), trust)
        assert named(rep, 'missing_incident') == [(middle, 2)]
    finally:
        server.close()


def test_not_an_evidence_directory(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match='not an evidence directory'):
        SpoolReader(tmp_path)
