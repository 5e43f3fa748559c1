"""Uploader against a real S3 API server on loopback (moto in server mode, over sockets).

What moto 5.2.5 cannot do (measured): it ignores Content-MD5 and x-amz-checksum-sha256.
So these tests show the *client* catching corruption (part ETag != its MD5), and never claim
the server rejected a bad checksum. Request counts are taken on the server side.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bodycam_ros.core.upload import create_uploader
from conftest import ROOT
from s3util import ACCESS_KEY, REGION, SECRET_KEY, FaultProxy, Fault, S3Server, s3_options
from spoolutil import DEVICE, h264_mp4, incident_files, make_incident
from test_upload_trust_util import evidence_objects

PART = 5 * 1024 * 1024
DAY = '2023-11-14'
T0 = 1_700_000_000.0
FAST = dict(base_backoff_s=0.02, max_backoff_s=0.2)


@pytest.fixture(scope='module')
def s3() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield server
    finally:
        server.close()


def uploader(s3: S3Server, bucket: str, ev: Path, endpoint: str | None = None, **kw):
    events = []
    up = create_uploader(f's3://{bucket}', ev, proxy=kw.pop('proxy', False),
                         on_event=events.append,
                         s3_options=s3_options(endpoint or s3.url),
                         part_size=PART, multipart_threshold=PART, **{**FAST, **kw})
    up.events = events
    return up


def expected_objects(ev: Path, prefix: str = '') -> dict[str, bytes]:
    out = {}
    for inc in sorted((ev / 'spool').iterdir()):
        for name, data in incident_files(inc).items():
            key = f'{DEVICE}/{DAY}/{inc.name}/{name}'
            out[f'{prefix}/{key}' if prefix else key] = data
    return out


def cli(ev: Path, bucket: str, endpoint: str, access: str = ACCESS_KEY,
        secret: str = SECRET_KEY) -> tuple[list[str], dict[str, str]]:
    """argv and environment of ``bodycam upload --once`` for a loopback endpoint."""
    argv = [sys.executable, '-m', 'bodycam_ros.cli', 'upload', '--once', '--no-proxy',
            '--bucket', f's3://{bucket}', '--endpoint-url', endpoint, '--region', REGION,
            '--evidence-dir', str(ev), '--part-size', '5', '--max-backoff', '1', '--retries', '3',
            '--allow-insecure-http']
    env = {**os.environ, 'AWS_ACCESS_KEY_ID': access, 'AWS_SECRET_ACCESS_KEY': secret,
           'AWS_CONFIG_FILE': '/dev/null', 'AWS_SHARED_CREDENTIALS_FILE': '/dev/null'}
    return argv, env


def run_cli(ev: Path, bucket: str, endpoint: str, **kw) -> subprocess.CompletedProcess:
    argv, env = cli(ev, bucket, endpoint, **kw)
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_upload_and_verify_single_put_and_multipart(s3: S3Server, tmp_path: Path):
    s3.create_bucket('verify-me')
    ev = tmp_path / 'evidence'
    big = os.urandom(2 * PART + 4321)
    inc = make_incident(ev, 'inc', start_time=T0, extra={'big.bin': big})
    up = uploader(s3, 'verify-me', ev, proxy=True)

    assert up.drain().ok

    prefix = f'{DEVICE}/{DAY}/inc'
    stored = s3.objects('verify-me')
    assert {k: v for k, v in stored.items() if not k.endswith('proxy.mp4')} == \
        expected_objects(ev)
    assert f'{prefix}/proxy.mp4' in stored
    key = f'{prefix}/big.bin'
    assert s3.count('verify-me', 'CreateMultipartUpload', key) == 1
    assert [s3.count('verify-me', 'UploadPart', key, part=n) for n in (1, 2, 3)] == \
        [1, 1, 1]
    assert s3.count('verify-me', 'CompleteMultipartUpload', key) == 1
    assert s3.count('verify-me', 'PutObject', f'{prefix}/video.mp4') == 1
    # the uploader's own verification: one HEAD per object after the upload
    assert s3.count('verify-me', 'HeadObject', key, ok=True) == 1
    head = s3.client().head_object(Bucket='verify-me', Key=key)
    assert head['Metadata']['sha256'] == __import__('hashlib').sha256(big).hexdigest()
    record = json.loads((inc / 'upload.json').read_text())
    assert record['verified'] is True and record['bucket'] == 's3://verify-me'
    assert record['objects']['big.bin']['etag'].endswith('-3')
    # moto computes a composite SHA-256 for multipart objects itself: recorded and checked
    assert record['objects']['big.bin']['checksum_sha256']
    assert record['proxy']['key'] == f'{prefix}/proxy.mp4'
    kinds = [e.kind for e in up.events]
    assert kinds.index('proxy_ready') < kinds.index('verified')  # viewable before the rest
    assert s3.open_uploads('verify-me') == []


def test_proxy_goes_up_at_the_first_part_boundary_after_its_transcode(s3: S3Server,
                                                                       tmp_path: Path):
    """The link carries evidence while the proxy transcodes; once the proxy exists it
    overtakes the evidence at the next part boundary, so administration sees it soonest."""
    s3.create_bucket('proxy-first')
    ev = tmp_path / 'evidence'
    make_incident(ev, 'inc', start_time=T0, extra={'big.bin': os.urandom(2 * PART + 10)},
                  video=h264_mp4(seconds=2.0, width=1280, height=720, fps=30))
    pause = s3.add_fault(Fault('UploadPart', 'pause', part=2))
    up = uploader(s3, 'proxy-first', ev, proxy=True)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(up.drain()))
    worker.start()
    try:
        assert pause.held.wait(30)
        assert _wait(lambda: (ev / 'upload' / 'inc' / 'proxy.mp4').is_file(), 60)
    finally:
        pause.release.set()
        worker.join(60)
    assert result and result[0].ok
    ops = [(r.op, r.key.rsplit('/', 1)[1], r.part) for r in s3.log('proxy-first')
           if r.op in ('UploadPart', 'PutObject')]
    big = [i for i, o in enumerate(ops) if o[1] == 'big.bin']
    proxy = ops.index(('PutObject', 'proxy.mp4', None))
    assert big[1] < proxy < big[2], ops      # between part 2 and part 3
    assert [ops[i][2] for i in big] == [1, 2, 3]
    kinds = [e.kind for e in up.events]
    assert kinds.index('proxy_ready') < kinds.index('verified')


def test_killed_mid_multipart_resumes_without_resending_finished_parts(s3: S3Server,
                                                                       tmp_path: Path):
    s3.create_bucket('resume')
    ev = tmp_path / 'evidence'
    big = os.urandom(3 * PART + 1234)            # four parts
    make_incident(ev, 'inc', start_time=T0, extra={'big.bin': big})
    key = f'{DEVICE}/{DAY}/inc/big.bin'
    hold = s3.add_fault(Fault('UploadPart', 'hold', part=3))
    argv, env = cli(ev, 'resume', s3.url)
    first = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        assert hold.held.wait(60), 'part 3 never reached the server'
        state = json.loads((ev / 'upload' / 'inc' / 'state.json').read_text())
        assert sorted(state['objects']['big.bin']['parts']) == ['1', '2']
        first.kill()                              # SIGKILL: no clean-up code runs
        first.wait(10)
    finally:
        hold.release.set()
        if first.poll() is None:
            first.kill()

    out = run_cli(ev, 'resume', s3.url)

    assert out.returncode == 0, out.stdout + out.stderr
    ok_parts = [s3.count('resume', 'UploadPart', key, part=n, ok=True) for n in (1, 2, 3, 4)]
    assert ok_parts == [1, 1, 1, 1]
    # parts 1 and 2 were finished before the kill: never sent again
    assert [s3.count('resume', 'UploadPart', key, part=n) for n in (1, 2)] == [1, 1]
    assert s3.count('resume', 'CreateMultipartUpload', key) == 1
    assert s3.count('resume', 'ListParts', key) == 1    # asked the server what it has
    assert s3.objects('resume')[key] == big
    assert s3.open_uploads('resume') == []
    assert not (ev / 'upload' / 'inc').exists()


def test_connections_cut_mid_part_still_upload_each_object_once(s3: S3Server, tmp_path: Path):
    s3.create_bucket('cuts', versioning=True)
    ev = tmp_path / 'evidence'
    big = os.urandom(2 * PART + 777)
    make_incident(ev, 'inc', start_time=T0, extra={'big.bin': big})
    # upstream byte offsets that fall inside part bodies (the small files come first)
    proxy = FaultProxy(('127.0.0.1', s3.port), cut_at=[PART // 2, 2 * PART, 3 * PART])
    try:
        up = uploader(s3, 'cuts', ev, endpoint=proxy.url)
        result = up.drain(max_failures=10)
    finally:
        proxy.close()
    assert result.ok, result
    assert proxy.cuts == 3
    assert evidence_objects(s3.objects('cuts')) == expected_objects(ev)
    assert set(s3.versions('cuts').values()) == {1}      # no object written twice
    assert s3.open_uploads('cuts') == []
    errors = [e.message for e in up.events if e.kind == 'error']
    assert len(errors) == 3 and all('network' in m for m in errors)


def test_corruption_in_transit_is_caught_by_the_client_and_resent(s3: S3Server, tmp_path: Path):
    s3.create_bucket('corrupt')
    ev = tmp_path / 'evidence'
    big = os.urandom(PART + 999)
    make_incident(ev, 'inc', start_time=T0, extra={'big.bin': big})
    prefix = f'{DEVICE}/{DAY}/inc'
    s3.add_fault(Fault('UploadPart', 'corrupt', part=2))
    s3.add_fault(Fault('PutObject', 'corrupt'))      # the first single PUT (sensors.mcap)
    up = uploader(s3, 'corrupt', ev)

    assert up.drain().ok

    assert evidence_objects(s3.objects('corrupt')) == expected_objects(ev)
    assert s3.count('corrupt', 'UploadPart', f'{prefix}/big.bin', part=2) == 2
    assert s3.count('corrupt', 'UploadPart', f'{prefix}/big.bin', part=1) == 1
    assert s3.count('corrupt', 'PutObject', f'{prefix}/sensors.mcap') == 2
    errors = [e.message for e in up.events if e.kind == 'error']
    assert len(errors) == 2 and all('corrupted in transit' in m for m in errors)


def test_wrong_credentials_fail_clearly_and_keep_the_evidence(s3: S3Server, tmp_path: Path):
    s3.create_bucket('creds')
    good_key, good_secret = s3.iam_user_keys('bodycam-unit-7')
    ev = tmp_path / 'evidence'
    inc = make_incident(ev, 'inc', start_time=T0)
    before = incident_files(inc)
    s3.set_auth(True)
    try:
        out = run_cli(ev, 'creds', s3.url, access='AKIAWRONGWRONGWRONG1', secret='wrong')
        assert out.returncode == 1, out.stdout + out.stderr
        assert 'credentials rejected' in out.stderr and 'InvalidAccessKeyId' in out.stderr
        assert 'wrong' not in out.stderr.replace('AKIAWRONGWRONGWRONG1', '')  # no secret
        assert incident_files(inc) == before and not (inc / 'upload.json').exists()
        assert s3.count('creds', 'PutObject') == 0

        out = run_cli(ev, 'creds', s3.url, access=good_key, secret=good_secret)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        s3.set_auth(False)
    assert json.loads((inc / 'upload.json').read_text())['verified'] is True
    assert evidence_objects(s3.objects('creds')) == expected_objects(ev)


def test_missing_bucket_fails_clearly_and_keeps_the_evidence(s3: S3Server, tmp_path: Path):
    ev = tmp_path / 'evidence'
    inc = make_incident(ev, 'inc', start_time=T0)
    before = incident_files(inc)
    out = run_cli(ev, 'no-such-bucket', s3.url)
    assert out.returncode == 1
    assert "bucket 'no-such-bucket' does not exist" in out.stderr
    assert incident_files(inc) == before and not (inc / 'upload.json').exists()


def test_urgent_incident_takes_over_at_a_part_boundary(s3: S3Server, tmp_path: Path):
    s3.create_bucket('preempt')
    ev = tmp_path / 'evidence'
    make_incident(ev, 'routine', reasons=('manual',), start_time=T0,
                  extra={'big.bin': os.urandom(2 * PART + 5)})
    key = f'{DEVICE}/{DAY}/routine/big.bin'
    pause = s3.add_fault(Fault('UploadPart', 'pause', part=2))
    up = uploader(s3, 'preempt', ev, poll_s=0.05)
    up.start()
    try:
        assert pause.held.wait(30)
        make_incident(ev, 'down', reasons=('officer_down',), start_time=T0 + 10)
        pause.release.set()
        assert _wait(lambda: all((ev / 'spool' / i / 'upload.json').exists()
                                 for i in ('routine', 'down')), 60)
    finally:
        pause.release.set()
        up.stop()
    at = {i: json.loads((ev / 'spool' / i / 'upload.json').read_text())['verified_at']
          for i in ('routine', 'down')}
    assert at['down'] < at['routine']
    assert any(e.kind == 'yield' for e in up.events)
    assert [s3.count('preempt', 'UploadPart', key, part=n) for n in (1, 2, 3)] == [1, 1, 1]
    assert evidence_objects(s3.objects('preempt')) == expected_objects(ev)


def test_fifty_incidents_under_random_faults_none_lost_none_duplicated(s3: S3Server,
                                                                       tmp_path: Path):
    s3.create_bucket('fleet', versioning=True)
    ev = tmp_path / 'evidence'
    for i in range(50):
        extra = {'big.bin': os.urandom(PART + 1000 * i)} if i % 25 == 3 else None
        make_incident(ev, f'inc-{i:02d}', start_time=T0 + i, seed=i, extra=extra,
                      reasons=('officer_down',) if i % 10 == 0 else ('fight',))
    s3.random_error_p = 0.02                       # 500/503 before the store sees it
    proxy = FaultProxy(('127.0.0.1', s3.port), cut_per_mib=0.3, reply_cut_p=0.02, seed=5)
    try:
        up = uploader(s3, 'fleet/units', ev, endpoint=proxy.url)
        result = up.drain(max_failures=25)
    finally:
        s3.random_error_p = 0.0
        proxy.close()
    assert result.ok, result
    assert len(result.verified) == 50
    errors = [e for e in up.events if e.kind == 'error']
    assert proxy.cuts >= 5 and len(errors) >= 10, (proxy.cuts, len(errors))
    stored = s3.objects('fleet')
    assert stored == expected_objects(ev, prefix='units')        # 0 lost, 0 extra
    assert set(s3.versions('fleet').values()) == {1}             # 0 duplicated
    assert s3.open_uploads('fleet') == []
    assert all(json.loads((p / 'upload.json').read_text())['verified']
               for p in (ev / 'spool').iterdir())


def _wait(pred, timeout_s: float) -> bool:
    from s3util import wait_for
    return wait_for(pred, timeout_s, 0.05)
