"""imu: sources (pure pacing, a fake IIO sysfs tree) and the node over real DDS.

Replays of the real SisFall and UMAFall trials are checked against the loaded recording
sample by sample: the subscriber must get the trial's own values, at its true rate, with the
trial's own spacing in the stamps.
"""
from __future__ import annotations

import math
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Imu

from bodycam_ros.core.imu_formats import G, ImuRecording, load_sisfall, load_umafall
from bodycam_ros.drivers.imu import (IioImuSource, ImuSourceError, RecordingImuSource,
                                     SimImuSource, find_iio_device, parse_axis_map)
from bodycam_ros.nodes.imu_node import ImuNode
from bodycam_ros.rosutil import ERROR, OK, RELIABLE_QOS, WARN
from conftest import shared_data, spin_for, spin_until

SISFALL_D07 = ('imu', 'sisfall', 'D07_SA01_R01.txt')   # stands still, sits, gets up: 12 s
UMAFALL_WALK = ('imu', 'umafall', 'UMAFall_Subject_02_ADL_Walking_1_2016-06-13_20-27-49.csv')
#: Best effort like SENSOR_QOS, but deep enough to take a 50 Hz tick's batch of 4 at 200 Hz
#: while the test's executor is busy: we count every sample.
DEEP_SENSOR_QOS = QoSProfile(depth=400, reliability=ReliabilityPolicy.BEST_EFFORT)


def stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def accel(msg: Imu) -> tuple[float, float, float]:
    a = msg.linear_acceleration
    return (a.x, a.y, a.z)


class Probe(Node):
    def __init__(self, ctx) -> None:
        super().__init__('probe', context=ctx)
        self.imu: list[tuple[float, Imu]] = []       # (receive time, msg)
        self.diag: list[DiagnosticStatus] = []
        self.create_subscription(Imu, 'imu/data',
                                 lambda m: self.imu.append((time.monotonic(), m)),
                                 DEEP_SENSOR_QOS)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, RELIABLE_QOS)

    def _on_diag(self, arr: DiagnosticArray) -> None:
        self.diag += [s for s in arr.status if s.name == 'imu']

    def last_diag(self) -> dict[str, str]:
        s = self.diag[-1]
        return {'level': s.level, 'message': s.message, **{kv.key: kv.value for kv in s.values}}

    def rate(self, seconds: float, ex) -> float:
        """Messages per second received over a window that starts now."""
        n0 = len(self.imu)
        spin_for(ex, seconds)
        return (len(self.imu) - n0) / seconds


def imu_node(ctx, **params) -> ImuNode:
    return ImuNode(context=ctx, parameter_overrides=[Parameter(k, value=v)
                                                     for k, v in params.items()])


def check_matches_recording(msgs: list[Imu], rec: ImuRecording) -> None:
    """Every received sample is a row of the recording, in order, stamped at its spacing."""
    table = np.hstack([rec.accel, rec.gyro])
    idx, j = [], 0
    for m in msgs:   # raw values repeat when still: match in order, accel and gyro together
        w = m.angular_velocity
        hits = np.flatnonzero(np.all(np.abs(table[j:] - (*accel(m), w.x, w.y, w.z)) < 1e-9,
                                     axis=1))
        assert hits.size, f'sample {len(idx)} is not in the recording after row {j}'
        idx.append(j + int(hits[0]))
        j = idx[-1] + 1
    st = np.array([stamp(m) for m in msgs])
    np.testing.assert_allclose(np.diff(st), np.diff(rec.t[idx]), atol=2e-6)
    m0 = msgs[0]
    assert m0.header.frame_id == 'imu_link'
    assert m0.orientation_covariance[0] == -1.0
    assert m0.linear_acceleration_covariance[0] > 0 and m0.angular_velocity_covariance[0] > 0
    w = m0.angular_velocity
    np.testing.assert_allclose((w.x, w.y, w.z), rec.gyro[idx[0]], atol=1e-9)


# --------------------------------------------------------------------------- sources (pure)

def test_sim_source_paces_samples_by_the_callers_clock() -> None:
    src = SimImuSource('idle', scenario_start=1000.0, rate_hz=100.0)
    src.start(1000.0)
    got = src.poll(1000.0) + src.poll(1000.5) + src.poll(1001.0)
    assert len(got) == 101
    assert np.allclose(np.diff([r.t for r in got]), 0.01)
    # Idle starts still and upright: gravity on +z.
    assert np.allclose(np.mean([r.accel for r in got], axis=0), (0, 0, G), atol=0.05)
    # A caller that stalls for 5 s gets only the last second, the rest is counted.
    late = src.poll(1006.0)
    assert len(late) == 101 and late[0].t == pytest.approx(1005.0) and src.skipped_late == 399
    with pytest.raises(ImuSourceError, match='unknown scenario'):
        SimImuSource('nope')


def test_recording_source_true_rate_loop_and_end() -> None:
    rec = load_sisfall(shared_data(*SISFALL_D07))
    once = RecordingImuSource(rec, loop=False, max_backlog_s=100.0)
    once.start(0.0)
    assert len(once.poll(1.0)) == 201           # t = 0 .. 1.0 s at 200 Hz
    rest = once.poll(11.5) + once.poll(30.0)
    assert len(rest) == len(rec) - 201 and once.finished and once.poll(40.0) == []
    assert rest[-1].accel == tuple(rec.accel[-1])
    # A stalled caller skips ahead instead of bursting: only the last second comes out.
    stalled = RecordingImuSource(rec)
    stalled.start(0.0)
    got = stalled.poll(5.0)
    assert len(got) == 201 and got[0].t == 4.0 and stalled.skipped_late == 800

    looped = RecordingImuSource(rec, loop=True, max_backlog_s=100.0)
    looped.start(0.0)
    got = looped.poll(12.0) + looped.poll(24.0 + 0.0025)
    assert len(got) == 2 * len(rec) + 1 and not looped.finished and looped.laps_done == 2
    t = np.array([r.t for r in got])
    assert np.allclose(np.diff(t), 0.005)        # seamless across the lap boundary


# --------------------------------------------------------------------------- IIO (fake sysfs)

def fake_iio(root: Path, name: str = 'iio:device0', *, accel=(10, -20, 512),
             accel_scale='0.019154', gyro=(100, 0, -100), gyro_scale='0.001065',
             extra: dict[str, str] | None = None) -> Path:
    """A sysfs-like IIO device directory, laid out as drivers/iio writes it (the world's edge)."""
    dev = root / name
    dev.mkdir(parents=True, exist_ok=True)
    files = {'name': 'mpu6050', 'in_accel_scale': accel_scale, 'in_anglvel_scale': gyro_scale,
             'sampling_frequency': '200'}
    files.update({f'in_accel_{a}_raw': str(v) for a, v in zip('xyz', accel)})
    if gyro is not None:
        files.update({f'in_anglvel_{a}_raw': str(v) for a, v in zip('xyz', gyro)})
    else:
        del files['in_anglvel_scale']
    files.update(extra or {})
    for k, v in files.items():
        (dev / k).write_text(v + '\n')
    return dev


def test_iio_reads_raw_times_scale_plus_offset_and_maps_axes(tmp_path: Path) -> None:
    dev = fake_iio(tmp_path, extra={'in_accel_offset': '2', 'in_accel_z_scale': '0.0191'})
    src = IioImuSource(str(dev), rate_hz=100.0)
    r = src.read_once()
    np.testing.assert_allclose(r.accel, ((10 + 2) * 0.019154, (-20 + 2) * 0.019154,
                                         (512 + 2) * 0.0191))
    np.testing.assert_allclose(r.gyro, (0.1065, 0.0, -0.1065))
    # The raw file is re-read on every sample.
    (dev / 'in_accel_x_raw').write_text('-100\n')
    assert src.read_once().accel[0] == pytest.approx(-98 * 0.019154)
    src.close()
    # Axis map: body x = -sensor y, body y = sensor x, body z = sensor z.
    mapped = IioImuSource(str(dev), axis_map='-y,x,z').read_once()
    np.testing.assert_allclose(mapped.accel, (18 * 0.019154, -98 * 0.019154, 514 * 0.0191))


def test_iio_mount_matrix_lookup_by_name_and_errors(tmp_path: Path) -> None:
    fake_iio(tmp_path / 'bus', 'iio:device0', accel=(0, 0, 0), gyro=None,
             extra={'name': 'adc128'})
    dev = fake_iio(tmp_path / 'bus', 'iio:device3', accel=(0, 512, 0), gyro=None,
                   extra={'in_accel_mount_matrix': '0, -1, 0; 1, 0, 0; 0, 0, 1'})
    assert find_iio_device('mpu6050', root=tmp_path / 'bus') == dev
    assert find_iio_device('iio:device3', root=tmp_path / 'bus') == dev
    assert find_iio_device('', root=tmp_path / 'bus') == tmp_path / 'bus' / 'iio:device0'
    src = IioImuSource('mpu6050', root=tmp_path / 'bus')
    r = src.read_once()
    assert r.gyro is None
    np.testing.assert_allclose(r.accel, (-512 * 0.019154, 0.0, 0.0), atol=1e-12)
    with pytest.raises(ImuSourceError, match='no IIO device'):
        IioImuSource('bmi160', root=tmp_path / 'bus')
    with pytest.raises(ImuSourceError, match='does not exist'):
        IioImuSource(str(tmp_path / 'nowhere'))
    (dev / 'in_accel_mount_matrix').write_text('1, 0; 0, 1\n')
    with pytest.raises(ImuSourceError, match='3x3'):
        IioImuSource(str(dev))
    for bad, match in (('x,y', 'need 3'), ('x,x,z', 'exactly once'), ('-x,y,z', 'mirrors'),
                       ('x,y,w', 'not one of')):
        with pytest.raises(ImuSourceError, match=match):
            parse_axis_map(bad)


def test_iio_thread_delivers_at_rate(tmp_path: Path) -> None:
    src = IioImuSource(str(fake_iio(tmp_path)), rate_hz=200.0)
    src.start(time.time())
    time.sleep(1.0)   # the reader thread's own pace is what is measured here
    got = src.poll(time.time())
    src.close()
    assert 170 <= len(got) <= 205, len(got)
    assert np.median(np.diff([r.t for r in got])) == pytest.approx(0.005, abs=0.001)


# --------------------------------------------------------------------------- node over DDS

def test_node_replays_sisfall_at_its_true_rate(ctx, executor, start_process) -> None:
    path = shared_data(*SISFALL_D07)
    rec = load_sisfall(path)
    proc = start_process('bodycam_ros.nodes.imu_node', '--ros-args', '-p', 'source:=recording',
                         '-p', f'path:={path}')
    probe = Probe(ctx)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.imu, 15.0), proc.output()
    rate = probe.rate(2.0, executor)
    assert rate == pytest.approx(200.0, rel=0.10)
    msgs = [m for _, m in probe.imu]
    check_matches_recording(msgs, rec)
    # D07 stands, sits and gets up slowly: |a| stays near 1 g throughout.
    assert np.mean([np.linalg.norm(accel(m)) for m in msgs]) == pytest.approx(G, rel=0.05)
    assert spin_until(executor, lambda: probe.diag and
                      int(probe.last_diag()['samples_published']) > 0)
    d = probe.last_diag()
    assert d['level'] == OK and d['source'] == 'recording' and d['label'] == 'D07'
    assert proc.stop(signal.SIGINT) == 0


def test_node_replays_umafall_waist_tag(ctx, executor) -> None:
    rec = load_umafall(shared_data(*UMAFALL_WALK))
    node = imu_node(ctx, source='recording', path=str(shared_data(*UMAFALL_WALK)),
                    format='umafall')
    probe = Probe(ctx)
    executor.add_node(node)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.imu, 10.0)
    assert probe.rate(3.0, executor) == pytest.approx(20.0, rel=0.10)
    msgs = [m for _, m in probe.imu]
    check_matches_recording(msgs, rec)
    norms = [np.linalg.norm(accel(m)) for m in msgs]
    assert np.mean(norms) == pytest.approx(G, rel=0.10)   # walking: 1 g on average
    assert np.mean([accel(m)[2] for m in msgs]) > 0.85 * G  # upright: z up


def test_sim_source_streams_the_scenario(ctx, executor) -> None:
    node = imu_node(ctx, source='sim', rate=100.0, scenario='idle')
    probe = Probe(ctx)
    executor.add_node(node)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.imu, 10.0)
    assert probe.rate(2.0, executor) == pytest.approx(100.0, rel=0.10)
    a = np.array([accel(m) for _, m in probe.imu])
    np.testing.assert_allclose(a.mean(axis=0), (0, 0, G), atol=0.05)


def test_corrupt_recording_lines_are_counted_and_never_published(ctx, executor,
                                                                 tmp_path: Path) -> None:
    src = shared_data(*SISFALL_D07)
    lines = src.read_text().splitlines(keepends=True)[:400]
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if i % 40 == 39:
            out += ['nan, nan, nan,   1,   2,   3,   4,   5,   6;\r\n', 'garbage\r\n',
                    '  1,  2,  3,  4,  inf,  6,  7,  8,  9;\r\n']
    bad = tmp_path / 'D07_corrupt.txt'
    bad.write_text(''.join(out))
    node = imu_node(ctx, source='recording', path=str(bad))
    probe = Probe(ctx)
    executor.add_node(node)
    executor.add_node(probe)
    assert spin_until(executor, lambda: node.published == 400, 10.0)
    assert spin_until(executor, lambda: probe.diag and
                      probe.last_diag()['message'] == 'recording finished', 5.0)
    d = probe.last_diag()
    assert (d['dropped_nan'], d['skipped_lines'], d['samples_published']) == ('20', '10', '400')
    assert d['level'] == WARN
    vals = np.array([accel(m) for _, m in probe.imu])
    assert len(vals) > 300 and np.isfinite(vals).all()


def test_non_finite_samples_from_a_source_are_dropped_and_counted(ctx, executor) -> None:
    """Whatever a driver hands over, NaN/inf never reaches the topic."""
    n = 60
    acc = np.tile([0.0, 0.0, G], (n, 1))
    gyr = np.zeros((n, 3))
    acc[5, 0] = np.nan
    acc[17, 2] = -np.inf
    gyr[30, 1] = np.nan
    rec = ImuRecording(t=np.arange(n) / 200.0, accel=acc, gyro=gyr, rate_hz=200.0,
                       label='synthetic', is_fall=False, path='synthetic')
    node = ImuNode(RecordingImuSource(rec), context=ctx)
    probe = Probe(ctx)
    executor.add_node(node)
    executor.add_node(probe)
    assert spin_until(executor, lambda: node.published + node.dropped_nan == n, 5.0)
    spin_for(executor, 0.3)
    assert node.published == n - 3 and node.dropped_nan == 3
    got = np.array([accel(m) + (m.angular_velocity.x, m.angular_velocity.y,
                                m.angular_velocity.z) for _, m in probe.imu])
    assert len(got) > 0 and np.isfinite(got).all()


def test_missing_recording_is_an_error_then_recovers(ctx, executor, tmp_path: Path) -> None:
    path = tmp_path / 'later' / 'D07_SA01_R01.txt'
    node = imu_node(ctx, source='recording', path=str(path), retry_s=0.2)
    probe = Probe(ctx)
    executor.add_node(node)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.diag and probe.last_diag()['level'] == ERROR)
    assert 'No such file' in probe.last_diag()['message']
    spin_for(executor, 0.5)                      # alive, retrying, publishing nothing
    assert not probe.imu and node.reopens >= 1
    path.parent.mkdir()
    shutil.copy(shared_data(*SISFALL_D07), path)
    assert spin_until(executor, lambda: len(probe.imu) > 20, 5.0)
    assert spin_until(executor, lambda: probe.last_diag()['level'] == OK, 3.0)


def test_node_streams_an_iio_device_and_waits_for_a_missing_one(ctx, executor,
                                                                tmp_path: Path) -> None:
    dev = tmp_path / 'iio:device1'
    node = imu_node(ctx, source='iio', iio_device=str(dev), rate=100.0, axis_map='-y,x,z',
                    retry_s=0.2)
    probe = Probe(ctx)
    executor.add_node(node)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.diag and probe.last_diag()['level'] == ERROR)
    assert 'does not exist' in probe.last_diag()['message']
    fake_iio(tmp_path, 'iio:device1', accel=(0, -512, 10), gyro=(0, 0, 1000),
             accel_scale='0.019154', gyro_scale='0.001065')   # plugged in late
    assert spin_until(executor, lambda: len(probe.imu) > 50, 5.0)
    m = probe.imu[-1][1]
    np.testing.assert_allclose(accel(m), (512 * 0.019154, 0.0, 10 * 0.019154), atol=1e-9)
    assert m.angular_velocity.z == pytest.approx(1.065)
    assert probe.rate(2.0, executor) == pytest.approx(100.0, rel=0.10)


def test_bad_parameters_exit_2_naming_the_parameter(start_process) -> None:
    cases = [('source:=bogus', 'imu.source'), ('rate:=0.0', 'imu.rate'),
             ('axis_map:=x,x,z', 'imu.axis_map'), ('rate:=fast', 'imu.rate'),
             ('source:=recording', 'imu.path')]
    procs = [(start_process('bodycam_ros.nodes.imu_node', '--ros-args', '-p', param), match)
             for param, match in cases]   # side by side: each is a Python + rclpy start-up
    for proc, match in procs:
        assert proc.proc.wait(60) == 2, proc.output()
        assert match in proc.output(), proc.output()


def test_sigint_and_sigterm_exit_0(ctx, executor, start_process) -> None:
    probe = Probe(ctx)
    executor.add_node(probe)
    a = start_process('bodycam_ros.nodes.imu_node', '--ros-args', '-p', 'source:=sim')
    assert spin_until(executor, lambda: probe.imu, 15.0), a.output()
    assert a.stop(signal.SIGINT) == 0
    b = start_process('bodycam_ros.nodes.imu_node', '--ros-args', '-p', 'source:=sim',
                      '-p', 'rate:=10.0', '-p', 'frame_id:=imu_b')
    assert spin_until(executor, lambda: probe.imu[-1][1].header.frame_id == 'imu_b',
                      15.0), b.output()
    assert b.stop(signal.SIGTERM) == 0
    assert math.isfinite(stamp(probe.imu[-1][1]))
