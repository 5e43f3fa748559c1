"""GPS sources and the gps node: real logs, a real gpsd (gpsfake), real DDS.

The serial receiver is the edge of the world: it is played by a pseudo-terminal that
pyserial opens like a USB-serial device, fed with a real receiver log.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import NavSatFix, NavSatStatus

from conftest import shared_data, spin_until

from bodycam_ros.core import scenario
from bodycam_ros.core.nmea import CovarianceType, FixStatus, iter_fixes
from bodycam_ros.drivers.gps import (GpsdSource, GpsSource, GpsSourceError, NmeaFileSource,
                                     SerialNmeaSource, SourceState)
from bodycam_ros.nodes.gps_node import GpsNode
from bodycam_ros.rosutil import RELIABLE_QOS, SENSOR_QOS

NMEA = ('gps', 'nmea')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], object], timeout_s: float) -> bool:
    """For the plain-thread source tests (no executor): poll with a short Event wait."""
    ev, end = threading.Event(), time.monotonic() + timeout_s
    while not pred() and time.monotonic() < end:
        ev.wait(0.02)
    return bool(pred())


class Collector:
    """Runs a source's generator on a thread, as the node does, and keeps what it yields."""

    def __init__(self, source: GpsSource) -> None:
        self.source, self.fixes, self.states = source, [], []
        source.on_status = self.states.append
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for fix in self.source.fixes(self.stop):
            self.fixes.append(fix)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5.0)
        assert not self.thread.is_alive(), 'source did not stop within 5 s'


@pytest.fixture
def collect() -> Iterator[Callable[[GpsSource], Collector]]:
    made: list[Collector] = []

    def start(source: GpsSource) -> Collector:
        made.append(Collector(source))
        return made[-1]

    yield start
    for c in made:
        c.close()


# --------------------------------------------------------------------------- serial

def test_serial_source_reads_a_receiver_on_a_pty(collect):
    log = shared_data(*NMEA, 'haicom-305N.log')
    master, slave = os.openpty()
    try:
        c = collect(SerialNmeaSource(os.ttyname(slave), 4800, idle_flush_s=0.1))
        assert wait_for(lambda: c.source.status.state is SourceState.RUNNING, 5.0)
        os.write(master, log.read_bytes())
        expected = list(iter_fixes(log.open('rb')))
        # The last epoch is closed by the idle line, not by a following sentence.
        assert wait_for(lambda: len(c.fixes) >= len(expected), 10.0), len(c.fixes)
        assert c.fixes == expected
        assert c.source.stats.comments == 10 and c.source.stats.checksum_failures == 0
    finally:
        os.close(master)
        os.close(slave)


def test_missing_serial_port_is_a_named_error_and_retried(collect):
    src = SerialNmeaSource('/dev/ttyBODYCAM_MISSING', 9600, retry_s=0.1)
    with pytest.raises(GpsSourceError, match='/dev/ttyBODYCAM_MISSING.*no such device'):
        src.open()
    c = collect(src)
    assert wait_for(lambda: src.retries >= 3, 5.0)
    assert src.status.state is SourceState.ERROR and 'ttyBODYCAM_MISSING' in src.status.message
    assert c.thread.is_alive() and c.fixes == []


# --------------------------------------------------------------------------- gpsd

@pytest.fixture
def gpsfake() -> Iterator[Callable[[int, str], subprocess.Popen]]:
    """Start Debian's gpsfake (a real gpsd fed from a log) on a loopback port."""
    exe = shutil.which('gpsfake')
    if exe is None:
        if os.environ.get('CI'):
            pytest.fail('gpsfake missing: install gpsd and gpsd-clients')
        pytest.skip('gpsfake not installed (Debian: gpsd, gpsd-clients)')
    procs: list[subprocess.Popen] = []

    def start(port: int, log: str) -> subprocess.Popen:
        # Looping (no -1): gpsd only opens the fake device once a client watches, so the
        # first sentences of a single pass may be lost; the test matches fixes by time.
        p = subprocess.Popen([exe, '-P', str(port), '-q', '-c', '0.01', log],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        procs.append(p)
        return p

    yield start
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(3.0)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_gpsd_source_against_real_gpsd(gpsfake, collect):
    """Unreachable first (ERROR, retried), then gpsd comes up: the log's fixes arrive."""
    log = shared_data(*NMEA, 'quectel-L70.log')
    truth = {f.time: f for f in iter_fixes(log.open())}
    port = free_port()
    c = collect(GpsdSource('127.0.0.1', port, retry_s=0.2))
    assert wait_for(lambda: c.source.retries >= 1, 5.0)
    assert c.states[0].state is SourceState.ERROR and 'unreachable' in c.states[0].message

    fake = gpsfake(port, str(log))
    timed = lambda: [f for f in c.fixes if f.time in truth]  # noqa: E731
    assert wait_for(lambda: len({f.time for f in timed()}) >= 12, 20.0), c.fixes
    assert c.source.status.state is SourceState.RUNNING
    for f in timed():
        ref = truth[f.time]
        assert (f.lat, f.lon) == pytest.approx((ref.lat, ref.lon), abs=1e-8)
        assert f.status is FixStatus.DGPS and f.speed_mps == pytest.approx(ref.speed_mps,
                                                                          abs=1e-3)
    last = timed()[-1]
    # gpsd's SKY gives the GSA/GGA dops; its GST report gives 1-sigma errors of a recent epoch.
    assert last.hdop == 0.94 and last.satellites == 8
    assert last.covariance_type is CovarianceType.DIAGONAL_KNOWN
    assert 6.0 <= last.lat_std_m <= 6.8 and 6.8 <= last.lon_std_m <= 7.2
    assert last.alt == pytest.approx(ref.alt, abs=0.11)   # altHAE, as NavSatFix wants
    assert c.source.stats.malformed == 0

    # gpsd goes away (daemon restart, crash): ERROR, then the source reconnects by itself.
    fake.send_signal(signal.SIGTERM)
    fake.wait(5.0)
    assert wait_for(lambda: c.source.status.state is SourceState.ERROR, 5.0)
    n = len(c.fixes)
    gpsfake(port, str(log))
    assert wait_for(lambda: len(c.fixes) >= n + 3, 20.0)
    assert c.source.status.state is SourceState.RUNNING
    assert all(f.time in truth for f in c.fixes[n:] if not math.isnan(f.time))


def test_gpsd_reports_parse_without_raising():
    src = GpsdSource()
    assert src.handle(b'not json') is None and src.handle(b'[1, 2]') is None
    assert src.handle(b'{"class":"TPV","mode":"x"}') is None
    assert src.stats.malformed == 3
    fix = src.handle(b'{"class":"TPV","mode":1}')
    assert fix is not None and fix.status is FixStatus.NO_FIX and math.isnan(fix.time)
    fix = src.handle(b'{"class":"TPV","mode":3,"status":4,"time":"2024-01-01T00:00:01.500Z",'
                     b'"lat":1.5,"lon":2.5,"altMSL":10,"geoidSep":20,"speed":1,"track":90}')
    assert fix.status is FixStatus.RTK and fix.time == 1704067201.5 and fix.alt == 30.0
    assert fix.velocity_enu[:2] == pytest.approx((1.0, 0.0))
    assert fix.covariance_type is CovarianceType.UNKNOWN      # no SKY/GST yet


# --------------------------------------------------------------------------- file

def test_file_pacing_clamps_long_gaps():
    log = shared_data(*NMEA, 'nl2008u.log')
    fixes = list(iter_fixes(log.open()))
    utc_gaps = [b.time - a.time for a, b in zip(fixes, fixes[1:])]
    assert max(utc_gaps) > 600                      # the log jumps over trimmed segments
    src = NmeaFileSource(log, speed=2.0, max_gap_s=5.0)
    paced = [src.gap_s(a, b) for a, b in zip(fixes, fixes[1:])]
    assert paced == [min(g, 5.0) / 2.0 for g in utc_gaps]
    assert src.gap_s(None, fixes[0]) == 0.0
    with pytest.raises(GpsSourceError, match='no NMEA log'):
        NmeaFileSource(log.with_name('missing.log'))


def test_file_source_loops_and_ends(collect):
    log = shared_data(*NMEA, 'nl2008u.log')
    looping = collect(NmeaFileSource(log, speed=200.0, max_gap_s=1.0, loop=True))
    once = collect(NmeaFileSource(log, speed=200.0, max_gap_s=1.0))
    assert wait_for(lambda: len(looping.fixes) >= 20, 5.0)
    assert looping.source.passes >= 2
    assert looping.fixes[:9] == looping.fixes[9:18] == list(iter_fixes(log.open()))
    assert wait_for(lambda: once.source.status.state is SourceState.ENDED, 5.0)
    assert len(once.fixes) == 9
    once.thread.join(2.0)
    assert not once.thread.is_alive()          # the generator returned at the end of the log


# --------------------------------------------------------------------------- node over DDS

class Probe:
    def __init__(self, ctx) -> None:
        self.node = Node('gps_probe', context=ctx)
        self.fixes: list[NavSatFix] = []
        self.vels: list[TwistStamped] = []
        self.diags: list[DiagnosticStatus] = []
        self.node.create_subscription(NavSatFix, 'gps/fix', self.fixes.append, SENSOR_QOS)
        self.node.create_subscription(TwistStamped, 'gps/vel', self.vels.append, SENSOR_QOS)
        self.node.create_subscription(
            DiagnosticArray, '/diagnostics',
            lambda m: self.diags.extend(s for s in m.status if s.name == 'gps'), RELIABLE_QOS)

    def last_diag(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.diags[-1].values} if self.diags else {}


def start_node(ctx, executor, **params) -> tuple[GpsNode, Probe]:
    probe = Probe(ctx)       # subscriptions first, so the first fixes are not missed
    executor.add_node(probe.node)
    node = GpsNode(context=ctx, parameter_overrides=[Parameter(k, value=v)
                                                     for k, v in params.items()])
    executor.add_node(node)
    return node, probe


def stamp_s(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def test_node_replays_haicom_with_no_fix_start(ctx, executor):
    log = shared_data(*NMEA, 'haicom-305N.log')
    expected = list(iter_fixes(log.open()))
    node, probe = start_node(ctx, executor, source='file', path=str(log), speed=25.0)
    assert spin_until(executor, lambda: len(probe.fixes) >= len(expected) - 1, 10.0), \
        len(probe.fixes)
    spin_until(executor, lambda: probe.last_diag().get('source_state') == 'ended', 3.0)
    got = probe.fixes
    skipped = len(expected) - len(got)    # best effort: at most the very first may be lost
    assert skipped <= 1
    for msg, fix in zip(got, expected[skipped:]):
        assert msg.status.status == int(fix.status)
        assert msg.status.service == NavSatStatus.SERVICE_GPS
        assert msg.header.frame_id == 'gps_link'
        if fix.has_fix:
            assert (msg.latitude, msg.longitude) == (fix.lat, fix.lon)
            assert msg.position_covariance_type == NavSatFix.COVARIANCE_TYPE_APPROXIMATED
    statuses = [m.status.status for m in got]
    assert statuses[:6 - skipped] == [NavSatStatus.STATUS_NO_FIX] * (6 - skipped)
    assert statuses[6 - skipped:] == [NavSatStatus.STATUS_FIX] * 68
    # Velocity only for epochs with a fix, ENU: the walker's fastest epoch matches its RMC.
    assert len(probe.vels) >= 67
    fastest = max(probe.vels, key=lambda v: math.hypot(v.twist.linear.x, v.twist.linear.y))
    assert math.hypot(fastest.twist.linear.x, fastest.twist.linear.y) == pytest.approx(
        2.67, abs=0.01)
    d = probe.last_diag()
    assert probe.diags[-1].level == DiagnosticStatus.WARN and 'end of' in probe.diags[-1].message
    assert int(d['fixes_published']) == len(expected) and int(d['comment_lines']) == 10
    assert int(d['checksum_failures']) == 0 and int(d['sentences_parsed']) == 246
    assert float(d['gnss_time']) == pytest.approx(expected[-1].time)
    assert float(d['last_hdop']) == pytest.approx(expected[-1].hdop)


def test_node_native_pacing_is_the_receivers_1hz(ctx, executor):
    log = shared_data(*NMEA, 'quectel-L70.log')
    expected = list(iter_fixes(log.open()))
    node, probe = start_node(ctx, executor, source='file', path=str(log))
    assert spin_until(executor, lambda: len(probe.fixes) >= 4, 6.0)
    got = probe.fixes[:4]
    gaps = [stamp_s(b) - stamp_s(a) for a, b in zip(got, got[1:])]
    assert all(0.85 < g < 1.15 for g in gaps), gaps
    assert [(m.latitude, m.longitude) for m in got] == [(f.lat, f.lon) for f in expected[:4]]
    m = got[0]
    assert m.status.status == NavSatStatus.STATUS_SBAS_FIX       # DGPS
    assert m.position_covariance_type == NavSatFix.COVARIANCE_TYPE_DIAGONAL_KNOWN
    assert list(m.position_covariance) == pytest.approx([51.84, 0, 0, 0, 46.24, 0, 0, 0, 196])
    assert m.altitude == pytest.approx(1084.9)
    assert abs(stamp_s(m) - time.time()) < 5.0      # stamped on reception, not in 2022


def test_node_sim_source_follows_the_scenario(ctx, executor):
    start = time.time() - 20.0                      # patrol: driving north at 20 m/s
    node, probe = start_node(ctx, executor, source='sim', scenario='patrol',
                             scenario_start=start)
    assert spin_until(executor, lambda: probe.fixes and probe.vels, 4.0)
    msg = probe.fixes[0]
    truth = scenario.get('patrol').gps_at(round(stamp_s(msg)) - start)
    assert (msg.latitude, msg.longitude) == pytest.approx((truth.lat, truth.lon), abs=1e-9)
    assert msg.status.status == NavSatStatus.STATUS_FIX
    assert msg.position_covariance_type == NavSatFix.COVARIANCE_TYPE_APPROXIMATED
    v = probe.vels[0].twist.linear
    assert (v.x, v.y) == pytest.approx((0.0, 20.0), abs=1e-9)


@pytest.mark.parametrize('source', ['serial', 'gpsd'])
def test_node_missing_device_is_error_and_node_stays_up(ctx, executor, source):
    params = {'serial': {'port': '/dev/ttyBODYCAM_MISSING'},
              'gpsd': {'gpsd_port': free_port()}}[source]
    node, probe = start_node(ctx, executor, source=source, retry_s=0.2, **params)
    assert spin_until(executor, lambda: any(d.level == DiagnosticStatus.ERROR
                                            for d in probe.diags), 5.0)
    err = next(d for d in probe.diags if d.level == DiagnosticStatus.ERROR)
    assert ('ttyBODYCAM_MISSING' if source == 'serial' else 'unreachable') in err.message
    assert spin_until(executor, lambda: int(probe.last_diag().get('retries', 0)) >= 4, 5.0)
    assert probe.diags[-1].level == DiagnosticStatus.ERROR and not probe.fixes
    assert node._thread.is_alive()


@pytest.mark.parametrize('args, name', [
    (['-p', 'source:=bogus'], 'gps.source'),
    (['-p', 'baud:=12'], 'gps.baud'),
    (['-p', 'source:=file', '-p', 'path:=/nonexistent/x.log'], 'gps.path'),
    (['-p', 'source:=sim', '-p', 'scenario:=nope'], 'gps.scenario'),
    (['-p', "gpsd_port:='2947'"], 'gps.gpsd_port'),
])
def test_bad_parameter_exits_2(start_process, args, name):
    p = start_process('bodycam_ros.nodes.gps_node', '--ros-args', *args)
    assert p.proc.wait(30) == 2
    assert name in p.output()


def test_sim_config_over_dds_and_sigint_exits_0(ctx, executor, start_process):
    probe = Probe(ctx)
    executor.add_node(probe.node)
    p = start_process('bodycam_ros.nodes.gps_node', '--ros-args', '--params-file',
                      'config/sim.yaml')
    assert spin_until(executor, lambda: probe.fixes or p.proc.poll() is not None, 20.0), \
        p.output()
    assert probe.fixes and p.proc.poll() is None, p.output()
    origin = scenario.get('idle').origin       # sim.yaml: source sim, default scenario idle
    assert probe.fixes[0].latitude == pytest.approx(origin[0], abs=1e-3)
    code = p.stop(signal.SIGINT)
    out = p.log_path.read_text(errors='replace')    # the log file is closed by stop()
    assert code == 0, out
    assert 'Traceback' not in out



def test_field_config_without_gpsd_is_error_and_node_stays_up(ctx, executor, start_process):
    """config/bodycam.yaml (source gpsd) on a machine where gpsd is not running."""
    probe = Probe(ctx)
    executor.add_node(probe.node)
    p = start_process('bodycam_ros.nodes.gps_node', '--ros-args', '--params-file',
                      'config/bodycam.yaml', '-p', f'gpsd_port:={free_port()}',
                      '-p', 'retry_s:=0.5')
    assert spin_until(executor, lambda: any(d.level == DiagnosticStatus.ERROR
                                            for d in probe.diags)
                      or p.proc.poll() is not None, 20.0), p.output()
    assert p.proc.poll() is None, p.output()
    err = next(d for d in probe.diags if d.level == DiagnosticStatus.ERROR)
    assert 'unreachable' in err.message and probe.last_diag()['source'] == 'gpsd'
    code = p.stop(signal.SIGINT)
    assert code == 0, p.log_path.read_text(errors='replace')
