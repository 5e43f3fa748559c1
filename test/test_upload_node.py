"""The uploader node over real DDS: status topics, diagnostics, shutdown drain, bad params."""
from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter

from bodycam_ros.nodes.uploader_node import UploaderNode
from bodycam_ros.rosutil import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS
from conftest import spin_until
from s3util import REGION, SECRET_KEY, S3Server, credentials_file, wait_for
from spoolutil import DEVICE, incident_files, make_incident


def values(msg: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.values}


def node_with(ctx, **params) -> UploaderNode:
    return UploaderNode(context=ctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in {'poll_s': 0.2, 'max_backoff_s': 1.0, **params}.items()])


def test_node_uploads_what_the_recorder_seals_and_reports_status(ctx, executor, tmp_path: Path):
    ev, bucket = tmp_path / 'evidence', tmp_path / 'bucket'
    executor.add_node(node_with(ctx, evidence_dir=str(ev), bucket=f'file://{bucket}'))
    probe = Node('probe', context=ctx)
    executor.add_node(probe)
    status: list[DiagnosticStatus] = []
    diags: list[DiagnosticStatus] = []
    probe.create_subscription(DiagnosticStatus, 'uploader/status', status.append, SENSOR_QOS)
    probe.create_subscription(DiagnosticArray, '/diagnostics',
                              lambda m: diags.extend(s for s in m.status
                                                     if s.name == 'uploader'), RELIABLE_QOS)
    nudge = probe.create_publisher(DiagnosticStatus, 'recorder/status', SENSOR_QOS)
    assert spin_until(executor, lambda: status, 10), 'no uploader/status'
    assert values(status[-1])['queue_length'] == '0'

    inc = make_incident(ev, 'inc-1', start_time=1_700_000_000.0, reasons=('officer_down',))
    nudge.publish(DiagnosticStatus(message='IDLE'))
    assert spin_until(executor, lambda: (inc / 'upload.json').exists(), 15)
    assert spin_until(executor, lambda: values(status[-1]).get('verified_total') == '1', 5)

    last = values(status[-1])
    assert last['queue_length'] == '0' and last['bytes_pending'] == '0'
    assert last['last_error'] == '' and last['bucket'] == f'file://{bucket}'
    assert set(last) >= {'queue_length', 'bytes_pending', 'current_incident', 'rate_bps',
                         'last_error'}
    assert status[-1].level == DiagnosticStatus.OK
    assert diags and diags[-1].level == DiagnosticStatus.OK
    stored = bucket / DEVICE / '2023-11-14' / 'inc-1'
    assert {p.name: p.read_bytes() for p in stored.iterdir()} == incident_files(inc)


def test_node_quarantines_a_damaged_incident_as_error_and_uploads_the_rest(ctx, executor,
                                                                           tmp_path: Path):
    """One damaged incident: ERROR on uploader/status and /diagnostics, with the count and
    the reason; it is kept as found; the urgent good one and the routine one go up."""
    ev, bucket = tmp_path / 'evidence', tmp_path / 'bucket'
    bad = make_incident(ev, 'bad', start_time=1_700_000_000.0, reasons=('officer_down',))
    with open(bad / 'video.mp4', 'r+b') as f:
        f.write(b'\0' * 64)
    before = incident_files(bad)
    make_incident(ev, 'down', start_time=1_700_000_100.0, reasons=('officer_down',))
    make_incident(ev, 'routine', start_time=1_700_000_000.0)
    executor.add_node(node_with(ctx, evidence_dir=str(ev), bucket=f'file://{bucket}',
                                min_free_bytes=0))
    probe = Node('probe', context=ctx)
    executor.add_node(probe)
    status: list[DiagnosticStatus] = []
    diags: list[DiagnosticStatus] = []
    probe.create_subscription(DiagnosticStatus, 'uploader/status', status.append, LATCHED_QOS)
    probe.create_subscription(DiagnosticArray, '/diagnostics',
                              lambda m: diags.extend(s for s in m.status
                                                     if s.name == 'uploader'), RELIABLE_QOS)

    assert spin_until(executor, lambda: status and values(status[-1]).get('verified_total')
                      == '2', 20), [values(s) for s in status[-3:]]
    assert spin_until(executor, lambda: diags and diags[-1].level == DiagnosticStatus.ERROR, 5)
    last = values(status[-1])
    assert status[-1].level == DiagnosticStatus.ERROR
    assert last['quarantined'] == '1' and last['quarantine_reason'] == 'bad: file_mismatch'
    assert '1 incident(s) quarantined' in status[-1].message
    assert last['queue_length'] == '0'
    assert incident_files(bad) == before and not (bad / 'upload.json').exists()
    record = json.loads((ev / 'quarantine' / 'bad.json').read_text())
    assert record['reason'] == 'file_mismatch'
    assert sorted(p.name for p in (bucket / DEVICE / '2023-11-14').iterdir()) == \
        ['down', 'routine']


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.close()


def test_node_reports_a_missing_bucket_as_error_and_keeps_evidence(s3, ctx, executor,
                                                                   tmp_path: Path):
    ev = tmp_path / 'evidence'
    inc = make_incident(ev, 'inc-1')
    before = incident_files(inc)
    creds = credentials_file(tmp_path / 'aws_credentials')
    executor.add_node(node_with(ctx, evidence_dir=str(ev), bucket='s3://missing-bucket',
                                endpoint_url=s3.url, region=REGION, allow_insecure_http=True,
                                credentials_file=str(creds), part_size=5 * 1024 * 1024))
    probe = Node('probe', context=ctx)
    executor.add_node(probe)
    status: list[DiagnosticStatus] = []
    probe.create_subscription(DiagnosticStatus, 'uploader/status', status.append, LATCHED_QOS)
    assert spin_until(executor, lambda: status and status[-1].level ==
                      DiagnosticStatus.ERROR, 15), [s.message for s in status]
    assert "bucket 'missing-bucket' does not exist" in status[-1].message
    assert 'does not exist' in values(status[-1])['last_error']
    assert values(status[-1])['queue_length'] == '1'
    assert SECRET_KEY not in status[-1].message + values(status[-1])['last_error']
    assert incident_files(inc) == before and not (inc / 'upload.json').exists()

    s3.create_bucket('missing-bucket')      # someone fixes it: the node recovers by itself
    assert spin_until(executor, lambda: (inc / 'upload.json').exists(), 20)
    assert spin_until(executor, lambda: status[-1].level == DiagnosticStatus.OK, 5)


def test_node_uploads_the_incident_sealed_during_shutdown(start_process, tmp_path: Path):
    """bodycam run stops recorder and uploader together; the recorder seals its last clip as
    it exits, and the uploader still gets it into the bucket before it exits."""
    ev, bucket = tmp_path / 'evidence', tmp_path / 'bucket'
    proc = start_process('bodycam_ros.nodes.uploader_node', '--ros-args',
                         '-p', f'evidence_dir:={ev}', '-p', f'bucket:=file://{bucket}')
    # an incident still being recorded when the stop comes
    recording = ev / 'recording' / 'last'
    recording.mkdir(parents=True)
    assert wait_for(lambda: 'uploading' in proc.output(), 30), proc.output()
    proc.proc.send_signal(signal.SIGINT)
    assert wait_for(lambda: "stopping: uploading what is sealed" in proc.output(), 10)
    recording.rmdir()                       # the recorder seals only now
    make_incident(ev, 'last', start_time=1_700_000_000.0)
    assert proc.proc.wait(20) == 0, proc.output()
    assert '1 verified this run, 0 left' in proc.output()
    record = json.loads((ev / 'spool' / 'last' / 'upload.json').read_text())
    assert record['verified'] is True
    assert (bucket / DEVICE / '2023-11-14' / 'last' / 'manifest.sig').is_file()


@pytest.mark.parametrize('arg,message', [
    ('part_size:=1000', 'uploader.part_size'),
    ("bucket:='ftp://somewhere'", 'uploader.bucket'),
    ('proxy:=maybe', 'uploader.proxy'),
    ("keep_local_s:=-5.0", 'uploader.keep_local_s'),
    ('min_free_bytes:=-1', 'uploader.min_free_bytes'),
])
def test_bad_parameters_exit_2_naming_the_parameter(start_process, tmp_path: Path, arg: str,
                                                    message: str):
    proc = start_process('bodycam_ros.nodes.uploader_node', '--ros-args', '-p', arg,
                         '-p', f'evidence_dir:={tmp_path}')
    assert proc.proc.wait(30) == 2
    assert message in proc.output()


def test_s3_part_size_below_5_mib_is_refused(start_process, tmp_path: Path):
    proc = start_process('bodycam_ros.nodes.uploader_node', '--ros-args',
                         '-p', "bucket:='s3://b'", '-p', 'part_size:=1048576')
    assert proc.proc.wait(30) == 2
    assert 'uploader.part_size' in proc.output() and '5 MiB' in proc.output()
