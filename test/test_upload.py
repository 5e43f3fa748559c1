"""Uploader core against the local directory bucket: layout, order, record, retention,
proxy, bandwidth cap, bad spool entries. (S3: test_upload_s3.py; the node: test_upload_node.py.)
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bodycam_ros.core.upload import (Backoff, BucketMissingError, UploadConfig, Uploader,
                                     create_uploader, make_proxy, parse_bucket_url, scan_spool)
from bodycam_ros.core.upload.backends import FileBackend
from conftest import ROOT
from spoolutil import DEVICE, h264_mp4, incident_files, make_incident
from uploadutil import resign
from test_upload_trust_util import device_signer, seal_in_ledger

DAY = 86400.0


def test_file_bucket_holds_every_file_under_device_date_incident(tmp_path: Path):
    ev, bucket = tmp_path / 'evidence', tmp_path / 'bucket'
    start = 1_700_000_000.0          # 2023-11-14 UTC
    inc = make_incident(ev, 'inc-1', start_time=start)
    manifest_before = (inc / 'manifest.json').read_bytes()
    mtime_before = (inc / 'manifest.json').stat().st_mtime_ns

    result = create_uploader(f'file://{bucket}', ev).drain()

    assert result.ok and result.verified == ['inc-1']
    prefix = bucket / DEVICE / '2023-11-14' / 'inc-1'
    assert {p.name: p.read_bytes() for p in prefix.iterdir()} == incident_files(inc)
    record = json.loads((inc / 'upload.json').read_text())
    assert record['verified'] is True and record['bucket'] == f'file://{bucket}'
    assert set(record['objects']) == {'video.mp4', 'sensors.mcap', 'manifest.json',
                                      'manifest.sig'}
    assert record['objects']['video.mp4']['key'] == f'{DEVICE}/2023-11-14/inc-1/video.mp4'
    assert record['manifest_mismatch'] == [] and record['missing'] == []
    assert abs(record['verified_at'] - time.time()) < 60
    # the signed manifest is never touched; the work files are gone
    assert (inc / 'manifest.json').read_bytes() == manifest_before
    assert (inc / 'manifest.json').stat().st_mtime_ns == mtime_before
    assert not (ev / 'upload' / 'inc-1').exists()
    # a second pass has nothing to do
    again = create_uploader(f'file://{bucket}', ev).drain()
    assert again.ok and again.verified == []


def test_officer_down_and_weapon_incidents_go_first_then_oldest(tmp_path: Path):
    ev = tmp_path / 'evidence'
    t0 = 1_700_000_000.0
    make_incident(ev, 'manual-old', reasons=('manual',), start_time=t0)
    make_incident(ev, 'fight-older', reasons=('fight',), start_time=t0 - 500)
    make_incident(ev, 'holster-new', reasons=('holster',), start_time=t0 + 900)
    make_incident(ev, 'down-mid', reasons=('fight', 'officer_down'), start_time=t0 + 300)
    order = []
    up = create_uploader(f'file://{tmp_path / "bucket"}', ev,
                         on_event=lambda e: order.append(e.incident_id)
                         if e.kind == 'verified' else None)
    assert up.drain().ok
    assert order == ['down-mid', 'holster-new', 'fight-older', 'manual-old']


def test_manifest_is_uploaded_last_so_its_presence_means_complete(tmp_path: Path):
    ev = tmp_path / 'evidence'
    make_incident(ev, 'inc', extra={'notes.txt': b'x' * 10})
    objects = []
    up = create_uploader(f'file://{tmp_path / "bucket"}', ev,
                         on_event=lambda e: objects.append(e.message.split()[0].rsplit('/', 1)[1])
                         if e.kind == 'object' else None)
    assert up.drain().ok
    assert objects[-2:] == ['manifest.json', 'manifest.sig']
    assert set(objects) == {'video.mp4', 'sensors.mcap', 'notes.txt', 'manifest.json',
                            'manifest.sig'}


def test_unsealed_and_unreadable_entries_are_quarantined_and_the_rest_uploads(tmp_path: Path):
    ev = tmp_path / 'evidence'
    good = make_incident(ev, 'good')
    unsealed = ev / 'spool' / 'unsealed'
    unsealed.mkdir()
    (unsealed / 'video.mp4').write_bytes(b'partial')
    (unsealed / 'manifest.json').write_text('{}')          # no manifest.sig yet
    broken = ev / 'spool' / 'broken'
    broken.mkdir()
    (broken / 'manifest.json').write_text('{"incident_id": ')
    (broken / 'manifest.sig').write_bytes(b'sig')
    events = []
    up = create_uploader(f'file://{tmp_path / "bucket"}', ev, on_event=events.append)

    result = up.drain()

    assert result.verified == ['good'] and not result.failed and not result.remaining
    assert not result.ok                       # someone has to look at the two bad ones
    assert (good / 'upload.json').is_file()
    assert not (unsealed / 'upload.json').exists() and not (broken / 'upload.json').exists()
    assert up.status().quarantined == 2
    assert set(result.quarantined) == {'unsealed', 'broken'}
    invalid = {e.incident_id: e.message for e in events if e.kind == 'quarantined'}
    assert invalid['unsealed'].startswith('not_sealed:')
    assert 'manifest.sig missing' in invalid['unsealed']
    assert invalid['broken'].startswith('manifest_unreadable:')
    assert 'unreadable manifest.json' in invalid['broken']


def test_keep_local_zero_deletes_the_local_copy_only_after_verification(tmp_path: Path):
    ev = tmp_path / 'evidence'
    inc = make_incident(ev, 'inc')
    files = incident_files(inc)
    bad_bucket = tmp_path / 'not-a-dir'
    bad_bucket.write_text('a file where the bucket should be')

    failed = create_uploader(f'file://{bad_bucket}', ev, keep_local_s=0.0).drain()
    assert not failed.ok and 'cannot create the bucket directory' in failed.error
    assert incident_files(inc) == files and not (inc / 'upload.json').exists()

    bucket = tmp_path / 'bucket'
    seal_in_ledger(ev, inc)                  # a delete needs its signed prune record
    files = incident_files(inc)
    manifest_sha = __import__('hashlib').sha256((inc / 'manifest.json').read_bytes()).hexdigest()
    assert create_uploader(f'file://{bucket}', ev, keep_local_s=0.0,
                           signer=device_signer()).drain().ok
    assert not inc.exists() and list((ev / 'spool').iterdir()) == []
    # logged like the recorder's disk policy does, so the hash chain still verifies
    (line,) = (ev / 'pruned.jsonl').read_text().splitlines()
    assert json.loads(line)['incident_id'] == 'inc'
    assert json.loads(line)['manifest_sha256'] == manifest_sha
    stored = next(bucket.glob(f'{DEVICE}/*/inc'))
    assert {p.name: p.read_bytes() for p in stored.iterdir()} == files


def test_keep_local_default_keeps_verified_incidents(tmp_path: Path):
    ev = tmp_path / 'evidence'
    inc = make_incident(ev, 'inc')
    assert create_uploader(f'file://{tmp_path / "bucket"}', ev).drain().ok
    assert (inc / 'video.mp4').is_file() and (inc / 'upload.json').is_file()


def test_proxy_is_a_360p_h264_clip_beside_the_evidence(tmp_path: Path):
    ev = tmp_path / 'evidence'
    video = h264_mp4(seconds=2.0, width=1280, height=720, fps=30, bitrate=2_000_000)
    make_incident(ev, 'inc', video=video, start_time=1_700_000_000.0)
    events = []
    up = create_uploader(f'file://{tmp_path / "bucket"}', ev, proxy=True,
                         on_event=events.append)
    assert up.drain().ok
    assert [e.kind for e in events if e.kind in ('proxy', 'proxy_ready')] == \
        ['proxy', 'proxy_ready']
    proxy = tmp_path / 'bucket' / DEVICE / '2023-11-14' / 'inc' / 'proxy.mp4'
    probe = json.loads(subprocess.run(
        ['ffprobe', '-v', 'error', '-of', 'json', '-show_streams', '-show_format', str(proxy)],
        capture_output=True, text=True, check=True).stdout)
    stream = probe['streams'][0]
    assert (stream['codec_name'], stream['width'], stream['height']) == ('h264', 640, 360)
    assert eval(stream['avg_frame_rate']) <= 15.5
    assert abs(float(probe["format"]["duration"]) - 2.0) < 0.3
    assert proxy.stat().st_size < len(video) / 3
    record = json.loads((ev / 'spool' / 'inc' / 'upload.json').read_text())
    assert record['proxy']['key'].endswith('/inc/proxy.mp4') and 'proxy.mp4' not in \
        record['objects']


def test_proxy_of_a_truncated_recording_keeps_what_decodes(tmp_path: Path):
    """A power cut leaves a fragmented MP4 cut mid-fragment: the proxy has what came before."""
    video = h264_mp4(seconds=4.0, width=640, height=480, fps=10)
    src = tmp_path / 'cut.mp4'
    src.write_bytes(video[:int(len(video) * 0.6)])
    info = make_proxy(src, tmp_path / 'proxy.mp4')
    assert info.height == 360 and 1.0 < info.duration_s < 3.5
    out = subprocess.run(['ffprobe', '-v', 'error', '-count_frames', '-select_streams', 'v:0',
                          '-show_entries', 'stream=nb_read_frames', '-of', 'csv=p=0',
                          str(tmp_path / 'proxy.mp4')], capture_output=True, text=True,
                         check=True).stdout
    assert int(out.strip()) == info.frames


def test_proxy_of_the_real_recording(tmp_path: Path):
    from conftest import shared_data
    src = shared_data('video', 'one-by-one-person-detection.mp4')
    cut = tmp_path / 'first-part.mp4'
    # Real camera footage (Intel IoT sample video, CC BY 4.0), first 20 s remuxed as is.
    subprocess.run(['ffmpeg', '-v', 'error', '-i', str(src), '-t', '20', '-c', 'copy', str(cut)],
                   check=True)
    info = make_proxy(cut, tmp_path / 'proxy.mp4')
    assert (info.width, info.height) == (640, 360)
    assert abs(info.duration_s - 20.0) < 0.5


def test_bandwidth_cap_paces_the_upload(tmp_path: Path):
    ev = tmp_path / 'evidence'
    size = 1_500_000
    make_incident(ev, 'inc', extra={'blob.bin': os.urandom(size)})
    cap = 1_000_000.0
    up = create_uploader(f'file://{tmp_path / "bucket"}', ev, bandwidth_bps=cap)
    total = sum(len(b) for b in incident_files(ev / 'spool' / 'inc').values())
    t0 = time.monotonic()
    assert up.drain().ok
    elapsed = time.monotonic() - t0
    # The token bucket allows a 0.25 s burst; it can never go faster than that.
    assert elapsed >= total / cap - 0.25 - 0.05, f'{total} bytes in {elapsed:.2f} s'


def test_backoff_grows_exponentially_with_jitter_and_a_ceiling():
    b = Backoff(base_s=1.0, max_s=30.0, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(10)]
    for n, d in enumerate(delays):
        ceiling = min(30.0, 2.0 ** n)
        assert ceiling / 2 <= d <= ceiling
    assert len({round(d, 6) for d in delays[5:]}) > 1      # jittered, not lock-step
    b.reset()
    assert b.next_delay() <= 1.0


@pytest.mark.parametrize('url,kind,where', [
    ('file://var/bucket', 'file', 'var/bucket'),
    ('file:///var/lib/bodycam/bucket', 'file', '/var/lib/bodycam/bucket'),
    ('s3://evidence', 's3', ''),
    ('s3://evidence/fleet/a/', 's3', 'fleet/a'),
])
def test_bucket_urls(url: str, kind: str, where: str):
    parsed = parse_bucket_url(url)
    assert parsed.scheme == kind
    assert (str(parsed.path) if kind == 'file' else parsed.prefix) == where


@pytest.mark.parametrize('url,message', [
    ('ftp://x/y', 'use file://DIR or s3://bucket/prefix'),
    ('s3://', 'no bucket name'),
    ('s3://AKIA:secret@bucket', 'must not contain credentials'),
    ('file://', 'needs a directory'),
])
def test_bad_bucket_urls_say_why(url: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_bucket_url(url)


def test_scan_reads_iso_start_times_and_ignores_work_files(tmp_path: Path):
    ev = tmp_path / 'evidence'
    inc = make_incident(ev, 'inc')
    resign(inc, start_time='2024-02-29T23:59:30Z')
    (inc / '.video.mp4.tmp').write_bytes(b'junk')
    scan = scan_spool(ev)
    (found,) = scan.pending
    assert found.key_prefix('fleet') == f'fleet/{DEVICE}/2024-02-29/inc'
    assert '.video.mp4.tmp' not in {f.name for f in found.files}


def test_cli_upload_once_to_a_file_bucket(tmp_path: Path):
    ev = tmp_path / 'evidence'
    for i in range(3):
        make_incident(ev, f'inc-{i}', start_time=1_700_000_000.0 + i)
    bucket = tmp_path / 'bucket'
    out = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'upload', '--once',
                          '--bucket', f'file://{bucket}', '--evidence-dir', str(ev)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '3 incident(s) verified' in out.stdout
    assert '100.0%' in out.stdout                      # the final progress line
    assert len(list(bucket.glob(f'{DEVICE}/2023-11-14/*/manifest.sig'))) == 3


def test_uploader_rejects_s3_parts_below_the_minimum(tmp_path: Path):
    class FakeS3(FileBackend):
        supports_multipart = True
    with pytest.raises(ValueError, match='S3 minimum'):
        Uploader(FakeS3(tmp_path), UploadConfig(evidence_dir=tmp_path, part_size=1024))


def test_unwritable_bucket_is_a_bucket_error(tmp_path: Path):
    (tmp_path / 'file').write_text('x')
    with pytest.raises(BucketMissingError, match='cannot create'):
        FileBackend(tmp_path / 'file' / 'bucket').check()


def test_a_damaged_state_file_costs_nothing_but_a_question_to_the_store(tmp_path: Path):
    ev = tmp_path / 'evidence'
    make_incident(ev, 'inc')
    work = ev / 'upload' / 'inc'
    work.mkdir(parents=True)
    (work / 'state.json').write_text(json.dumps({'bucket': f'file://{tmp_path / "bucket"}',
                                                 'objects': {'video.mp4': {'digest': 7}}}))
    events = []
    up = create_uploader(f'file://{tmp_path / "bucket"}', ev, on_event=events.append,
                         base_backoff_s=0.01, max_backoff_s=0.05)
    assert up.drain().ok
    assert any('was damaged' in e.message for e in events if e.kind == 'warning')
    assert not [e for e in events if e.kind == 'error']
    assert (ev / 'spool' / 'inc' / 'upload.json').is_file()
