"""The uploader is the one pruner, and it trusts only the bucket (issue 11).

Disk pressure is real here: a quota (``max_evidence_bytes``, as the recorder's) measured
with the real directory sizes. Deletion goes through ``evidence.prune_incident`` (chain link
in ``pruned.jsonl`` first). S3 cases run against moto in server mode on loopback.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bodycam_ros.core.upload import create_uploader
from bodycam_ros.core.upload.prune import dir_size
from s3util import S3Server, s3_options
from spoolutil import DEVICE, incident_files, make_incident
from test_upload_trust_util import device_signer, evidence_objects, seal_in_ledger

T0 = 1_700_000_000.0
DAY = '2023-11-14'
FAST = dict(base_backoff_s=0.02, max_backoff_s=0.2)


def sealed(ev: Path, *args, **kw) -> Path:
    """An incident as the recorder seals it: numbered, its seal in the signed ledger (a
    delete needs a signed prune record, and that needs the seal)."""
    inc = make_incident(ev, *args, **kw)
    seal_in_ledger(ev, inc)
    return inc


def file_uploader(tmp_path: Path, ev: Path, **kw):
    events: list = []
    up = create_uploader(f'file://{tmp_path / "bucket"}', ev, on_event=events.append,
                         signer=device_signer(), **{**FAST, **kw})
    up.events = events
    return up


def pruned(ev: Path) -> list[str]:
    path = ev / 'pruned.jsonl'
    if not path.exists():
        return []
    return [json.loads(line)['incident_id'] for line in path.read_text().splitlines()]


def kinds(up, name: str) -> list[str]:
    return [e.kind for e in up.events if e.incident_id == name and
            e.kind in ('requeued', 'verified', 'deleted', 'quarantined')]


def test_a_forged_upload_record_deletes_nothing_under_disk_pressure(tmp_path: Path):
    """Reported: {"verified": true} written into a not-yet-uploaded incident's upload.json,
    then disk-pressure pruning deleted it. Now the bucket is asked first: nothing is there,
    so it is kept, queued again, uploaded, and deleted only once the bucket holds it."""
    ev = tmp_path / 'evidence'
    inc = sealed(ev, 'forged', start_time=T0, sensors_size=200_000)
    files = incident_files(inc)
    (inc / 'upload.json').write_text('{"verified": true}')
    bucket = tmp_path / 'bucket'
    # 1 byte of quota: the disk is "full" whatever is deleted, so everything prunable goes.
    up = file_uploader(tmp_path, ev, max_evidence_bytes=1, min_free_bytes=1,
                       prune_check_s=0.0)

    result = up.drain(timeout_s=60)

    assert result.verified == ['forged']
    assert kinds(up, 'forged') == ['requeued', 'verified', 'deleted']
    stored = bucket / DEVICE / DAY / 'forged'
    assert {p.name: p.read_bytes() for p in stored.iterdir()} == files
    assert pruned(ev) == ['forged'] and not inc.exists()
    requeued = next(e.message for e in up.events if e.kind == 'requeued')
    assert 'missing' in requeued


def test_a_forged_record_alone_is_never_deleted_while_the_bucket_is_unreachable(
        tmp_path: Path):
    ev = tmp_path / 'evidence'
    inc = sealed(ev, 'forged', start_time=T0)
    files = incident_files(inc)
    (inc / 'upload.json').write_text('{"verified": true, "verified_at": 0}')
    not_a_dir = tmp_path / 'not-a-dir'
    not_a_dir.write_text('a file where the bucket should be')
    up = create_uploader(f'file://{not_a_dir}', ev, keep_local_s=0.0, signer=device_signer(),
                         **FAST)

    up.drain(timeout_s=10)

    assert incident_files(inc) == files and pruned(ev) == []


def test_disk_pressure_deletes_the_oldest_verified_incidents_until_space_is_back(
        tmp_path: Path):
    ev = tmp_path / 'evidence'
    sizes = {}
    for i, name in enumerate(['c-newest', 'a-oldest', 'b-older', 'd-pending']):
        start = {'a-oldest': T0, 'b-older': T0 + 10, 'c-newest': T0 + 20,
                 'd-pending': T0 - 100}[name]
        make_incident(ev, name, start_time=start, sensors_size=300_000 + i, seed=i)
    seal_in_ledger(ev, *(ev / 'spool' / n for n in ('d-pending', 'a-oldest', 'b-older',
                                                     'c-newest')))   # sealed as they ended
    for name in ('c-newest', 'a-oldest', 'b-older', 'd-pending'):
        sizes[name] = dir_size(ev / 'spool' / name)
    # three uploaded, the fourth (oldest of all) not: it must survive any pressure
    first = file_uploader(tmp_path, ev)
    for name in ('c-newest', 'a-oldest', 'b-older'):
        first.upload_incident(next(i for i in first._scan().pending if i.path.name == name))
    assert not (ev / 'spool' / 'd-pending' / 'upload.json').exists()
    # Room for two more clips needed: the two oldest uploaded ones must go, no more.
    need = sizes['a-oldest'] + sizes['b-older'] - 5000
    quota = dir_size(ev)
    events: list = []
    pruner = create_uploader(f'file://{tmp_path / "bucket"}', ev, on_event=events.append,
                             min_free_bytes=need, max_evidence_bytes=quota,
                             signer=device_signer(), **FAST)

    result = pruner._maybe_prune(force=True)

    assert [n for n, _ in result.deleted] == ['a-oldest', 'b-older']
    assert all('disk pressure' in why for _, why in result.deleted)
    assert pruned(ev) == ['a-oldest', 'b-older']
    assert sorted(p.name for p in (ev / 'spool').iterdir()) == ['c-newest', 'd-pending']
    assert not result.low_disk and pruner.status().pruned_total == 2
    for name in ('a-oldest', 'b-older', 'c-newest'):      # all still in the bucket
        assert (tmp_path / 'bucket' / DEVICE / DAY / name / 'manifest.sig').is_file()


def test_a_damaged_bucket_copy_stops_the_delete_and_the_incident_goes_up_again(
        tmp_path: Path):
    ev = tmp_path / 'evidence'
    inc = sealed(ev, 'inc', start_time=T0)
    files = incident_files(inc)
    assert file_uploader(tmp_path, ev).drain().ok
    stored = tmp_path / 'bucket' / DEVICE / DAY / 'inc'
    (stored / 'sensors.mcap').write_bytes(b'bit rot in the bucket')
    (stored / 'video.mp4').unlink()
    up = file_uploader(tmp_path, ev, keep_local_s=0.0)

    result = up.drain(timeout_s=60)

    assert result.ok and result.verified == ['inc']
    assert kinds(up, 'inc') == ['requeued', 'verified', 'deleted']
    assert {p.name: p.read_bytes() for p in stored.iterdir()} == files
    assert pruned(ev) == ['inc']


def test_no_pruning_configured_deletes_nothing_even_with_a_full_quota(tmp_path: Path):
    ev = tmp_path / 'evidence'
    inc = sealed(ev, 'inc', start_time=T0)
    up = file_uploader(tmp_path, ev, max_evidence_bytes=1)
    assert up.drain().ok
    assert inc.is_dir() and pruned(ev) == []


def test_low_disk_with_nothing_prunable_is_reported(tmp_path: Path):
    ev = tmp_path / 'evidence'
    inc = sealed(ev, 'inc', start_time=T0)
    (inc / 'video.mp4').write_bytes(b'changed')          # quarantined: never deleted
    up = file_uploader(tmp_path, ev, min_free_bytes=1, max_evidence_bytes=1)
    result = up.drain()
    assert set(result.quarantined) == {'inc'} and inc.is_dir()
    st = up.status()
    assert st.low_disk and st.free_bytes is not None and st.free_bytes < 1
    assert any('disk low' in e.message for e in up.events if e.kind == 'warning')


# ------------------------------------------------------------------ S3 (moto on loopback)
@pytest.fixture(scope='module')
def s3() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield server
    finally:
        server.close()


def s3_uploader(s3: S3Server, bucket: str, ev: Path, **kw):
    events: list = []
    up = create_uploader(f's3://{bucket}', ev, proxy=False, on_event=events.append,
                         s3_options=s3_options(s3.url), part_size=5 * 1024 * 1024,
                         signer=device_signer(),
                         multipart_threshold=5 * 1024 * 1024, **{**FAST, **kw})
    up.events = events
    return up


def _drop_object(client, bucket: str, key: str) -> None:
    client.delete_object(Bucket=bucket, Key=key)


def _replace_object(client, bucket: str, key: str) -> None:
    """Same metadata claim, other bytes: the ETag (MD5) and size no longer match."""
    head = client.head_object(Bucket=bucket, Key=key)
    client.put_object(Bucket=bucket, Key=key, Body=b'other bytes',
                      Metadata=head['Metadata'])


def _wrong_sha_metadata(client, bucket: str, key: str) -> None:
    """Same bytes, a SHA-256 in metadata that is not the manifest's."""
    body = client.get_object(Bucket=bucket, Key=key)['Body'].read()
    client.put_object(Bucket=bucket, Key=key, Body=body, Metadata={'sha256': '0' * 64})


@pytest.mark.parametrize('damage', [_drop_object, _replace_object, _wrong_sha_metadata])
def test_s3_copy_is_checked_again_before_each_delete(s3: S3Server, tmp_path: Path, damage):
    bucket = f'prune-{damage.__name__.strip("_").replace("_", "-")}'
    s3.create_bucket(bucket)
    ev = tmp_path / 'evidence'
    inc = sealed(ev, 'inc', start_time=T0)
    files = incident_files(inc)
    assert s3_uploader(s3, bucket, ev).drain().ok
    key = f'{DEVICE}/{DAY}/inc/sensors.mcap'
    damage(s3.client(), bucket, key)

    up = s3_uploader(s3, bucket, ev, keep_local_s=0.0)
    uploads_before = s3.count(bucket, 'PutObject', key)

    assert up.drain().ok

    # the bucket was asked, refuted upload.json; queued, uploaded again, only then deleted
    assert kinds(up, 'inc') == ['requeued', 'verified', 'deleted'] and pruned(ev) == ['inc']
    assert s3.count(bucket, 'PutObject', key) == uploads_before + 1
    stored = {k.rsplit('/', 1)[1]: v for k, v in evidence_objects(s3.objects(bucket)).items()}
    assert stored == files


def test_s3_keep_local_deletes_after_the_remote_verifies(s3: S3Server, tmp_path: Path):
    s3.create_bucket('prune-ok')
    ev = tmp_path / 'evidence'
    inc = sealed(ev, 'inc', start_time=T0)
    files = incident_files(inc)
    up = s3_uploader(s3, 'prune-ok', ev, keep_local_s=0.0)
    assert up.drain().ok
    assert not inc.exists() and pruned(ev) == ['inc']
    stored = {k.rsplit('/', 1)[1]: v
              for k, v in evidence_objects(s3.objects('prune-ok')).items()}
    assert stored == files
