"""Trigger fusion: the policy (pure) and the real node over DDS, as the recorder, the
dispatcher's console and the officer's buttons see it."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Imu, NavSatFix, NavSatStatus
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from bodycam_ros.core import messages as m
from bodycam_ros.core import scenario
from bodycam_ros.core.detectors import Source, TriggerState
from bodycam_ros.core.fusion import (CommandKind, Fusion, FusionError, Health, Level)
from bodycam_ros.core.geodesy import offset
from bodycam_ros.nodes.trigger_fusion_node import TriggerFusionNode
from bodycam_ros.rosutil import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS, ParameterError
from bodycam_ros.wire import from_status
from conftest import ROOT, spin_for, spin_until

DEST = (38.60, -121.49)


# =============================================================================== policy

def st(source: Source, active: bool, since: float | None = None, **values) -> TriggerState:
    return TriggerState(source, active, since, 1.0, 'msg', dict(values))


def idle_except(*active: TriggerState) -> list[TriggerState]:
    by = {s.source: s for s in active}
    return [by.get(src, st(src, False)) for src in Source]


def ids():
    n = iter(range(1000))
    return lambda: f'id-{next(n)}'


def test_each_new_activation_starts_once_with_its_reason_and_time():
    f = Fusion(new_id=ids())
    assert f.observe(idle_except(), 0.0) == []
    (cmd,) = f.observe(idle_except(st(Source.HOLSTER, True, 10.0)), 10.1)
    assert (cmd.kind, cmd.reason, cmd.trigger_time, cmd.command_id) == \
        (CommandKind.START, 'holster', 10.0, 'id-0')
    assert f.observe(idle_except(st(Source.HOLSTER, True, 10.0)), 11.0) == []   # still the same
    both = f.observe(idle_except(st(Source.HOLSTER, True, 10.0),
                                 st(Source.FIGHT, True, 12.0)), 13.0)
    assert [c.reason for c in both] == ['fight']                 # any trigger starts
    assert f.observe(idle_except(st(Source.FIGHT, True, 12.0)), 14.0) == []
    again = f.observe(idle_except(st(Source.HOLSTER, True, 20.0)), 20.0)
    assert [c.reason for c in again] == ['holster']              # re-activated after clearing
    refire = f.observe(idle_except(st(Source.HOLSTER, True, 25.0)), 25.0)
    assert [c.trigger_time for c in refire] == [25.0]            # re-fired with a later since
    assert f.starts == 4 and f.recording


def test_no_auto_stop_by_default_and_auto_stop_after_everything_cleared():
    never = Fusion()
    never.observe(idle_except(st(Source.FOOT_PURSUIT, True, 0.0)), 0.0)
    assert never.observe(idle_except(), 1.0) == [] and never.observe(idle_except(), 1e6) == []
    f = Fusion(auto_stop_s=30.0)
    f.observe(idle_except(st(Source.FOOT_PURSUIT, True, 0.0)), 0.0)
    assert f.observe(idle_except(), 10.0) == []
    f.observe(idle_except(st(Source.FIGHT, True, 20.0)), 20.0)      # a new trigger: timer resets
    assert f.observe(idle_except(), 30.0) == [] and f.observe(idle_except(), 59.0) == []
    (stop,) = f.observe(idle_except(), 60.5)
    assert (stop.kind, stop.reason) == (CommandKind.STOP, 'auto_stop') and not f.recording
    assert f.observe(idle_except(), 200.0) == []                    # once
    with pytest.raises(FusionError, match='auto_stop_s'):
        Fusion(auto_stop_s=-1.0)


def test_manual_stop_is_refused_while_drawn_or_down_and_accepted_otherwise():
    f = Fusion()
    drawn = idle_except(st(Source.HOLSTER, True, 1.0), st(Source.MANUAL, True, 0.0))
    d = f.request_stop(2.0, drawn)
    assert not d.accepted and 'weapon drawn' in d.message and d.command is None
    down = idle_except(st(Source.OFFICER_DOWN, True, 1.0))
    d = f.request_stop(2.0, down)
    assert not d.accepted and 'officer-down' in d.message
    pursuit = idle_except(st(Source.FOOT_PURSUIT, True, 1.0))
    f.observe(pursuit, 1.0)
    d = f.request_stop(3.0, pursuit)
    assert d.accepted and d.command.kind is CommandKind.STOP and d.command.reason == 'manual'
    assert f.observe(pursuit, 4.0) == []     # the officer's stop covers the ongoing pursuit


def test_levels_ok_warn_error_stale_in_fixed_order():
    states = idle_except(st(Source.FIGHT, True, 5.0, energy_g=0.8))
    health = {Source.FIGHT: Health(stale=True), Source.FOOT_PURSUIT: Health(fault='IMU dead'),
              Source.HOLSTER: Health(stale=True)}
    out = Fusion.statuses(states, health)
    assert [s.source.value for s in out] == ['holster', 'dispatch_proximity', 'fight',
                                              'foot_pursuit', 'officer_down', 'manual']
    levels = {s.source: s.level for s in out}
    assert levels[Source.FIGHT] is Level.WARN            # active beats stale
    assert levels[Source.FOOT_PURSUIT] is Level.ERROR
    assert levels[Source.HOLSTER] is Level.STALE
    assert levels[Source.MANUAL] is Level.OK
    fight = next(s for s in out if s.source is Source.FIGHT)
    assert fight.values['since'] == 5.0 and fight.values['energy_g'] == 0.8
    assert fight.values['confidence'] == 1.0


# ================================================================================ node

class Probe(Node):
    """The rest of the unit: sensors in, recorder/console/officer out."""

    def __init__(self, ctx) -> None:
        super().__init__('fusion_probe', context=ctx)
        self.commands: list[DiagnosticStatus] = []
        self.triggers: list[DiagnosticArray] = []
        self.alerts: list[DiagnosticStatus] = []
        self.create_subscription(DiagnosticStatus, 'recorder/command', self.commands.append,
                                 RELIABLE_QOS)
        self.create_subscription(DiagnosticArray, 'bodycam/triggers', self.triggers.append,
                                 RELIABLE_QOS)
        self.create_subscription(DiagnosticStatus, 'bodycam/alerts', self.alerts.append,
                                 LATCHED_QOS)
        self.imu = self.create_publisher(Imu, 'imu/data', SENSOR_QOS)
        self.fix = self.create_publisher(NavSatFix, 'gps/fix', SENSOR_QOS)
        self.holster = self.create_publisher(Bool, 'holster/weapon_drawn', LATCHED_QOS)
        self.dispatch = self.create_publisher(NavSatFix, 'dispatch/destination', LATCHED_QOS)
        self.buttons = {n: self.create_client(Trigger, f'bodycam/{n}')
                        for n in ('start_recording', 'stop_recording', 'cancel_alert')}

    def level(self, source: str) -> int | None:
        for arr in reversed(self.triggers):
            for s in arr.status:
                if s.name == f'trigger/{source}':
                    return s.level
        return None

    def values(self, source: str) -> dict[str, str]:
        for arr in reversed(self.triggers):
            for s in arr.status:
                if s.name == f'trigger/{source}':
                    return {kv.key: kv.value for kv in s.values}
        return {}

    def starts(self) -> list[str]:
        return [reason(c) for c in self.commands if c.name == 'start']

    def send_fix(self, north_of_dest_m: float, status: int = NavSatStatus.STATUS_FIX,
                 var_m2: float = 9.0) -> None:
        lat, lon = offset(*DEST, north_of_dest_m, 0.0)
        msg = NavSatFix(latitude=lat, longitude=lon, status=NavSatStatus(status=status))
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.position_covariance = [var_m2, 0.0, 0.0, 0.0, var_m2, 0.0, 0.0, 0.0, 4 * var_m2]
        msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_APPROXIMATED
        self.fix.publish(msg)

    def send_imu(self, accel) -> None:
        msg = Imu()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z = accel
        self.imu.publish(msg)


def reason(cmd: DiagnosticStatus) -> str:
    return next(kv.value for kv in cmd.values if kv.key == 'reason')


def call(executor, probe: Probe, name: str) -> Trigger.Response:
    client = probe.buttons[name]
    assert client.wait_for_service(timeout_sec=5.0)
    fut = client.call_async(Trigger.Request())
    assert spin_until(executor, fut.done)
    return fut.result()


@pytest.fixture
def graph(ctx, executor):
    def make(**params) -> Probe:
        defaults = {'publish_period_s': 0.2, 'imu_stale_s': 0.5, 'gps_stale_s': 2.0}
        node = TriggerFusionNode(context=ctx, parameter_overrides=[
            Parameter(k, value=v) for k, v in {**defaults, **params}.items()])
        probe = Probe(ctx)
        executor.add_node(node)
        executor.add_node(probe)
        assert spin_until(executor, lambda: probe.triggers), 'no bodycam/triggers'
        return probe
    return make


def test_draw_starts_recording_and_a_manual_stop_is_refused_until_holstered(graph, executor):
    probe = graph(holster_clear_s=0.3)
    assert probe.level('holster') == DiagnosticStatus.STALE     # no holster state yet
    probe.holster.publish(Bool(data=False))
    assert spin_until(executor, lambda: probe.level('holster') == DiagnosticStatus.OK)
    t_draw = time.time()
    probe.holster.publish(Bool(data=True))
    assert spin_until(executor, lambda: probe.starts() == ['holster'], 3.0), probe.commands
    cmd = probe.commands[-1]
    vals = {kv.key: kv.value for kv in cmd.values}
    assert abs(float(vals['trigger_time']) - t_draw) < 1.0 and len(vals['command_id']) == 36
    assert spin_until(executor, lambda: probe.level('holster') == DiagnosticStatus.WARN)

    resp = call(executor, probe, 'stop_recording')
    assert not resp.success and 'weapon drawn' in resp.message
    assert not [c for c in probe.commands if c.name == 'stop']

    probe.holster.publish(Bool(data=False))
    assert spin_until(executor, lambda: probe.level('holster') == DiagnosticStatus.OK, 3.0)
    resp = call(executor, probe, 'stop_recording')
    assert resp.success
    assert spin_until(executor, lambda: [c.name for c in probe.commands] == ['start', 'stop'])
    assert reason(probe.commands[-1]) == 'manual'
    # What goes on the wire is what the recorder's decoder takes, and the triggers decode too.
    start, stop = (m.decode_command(from_status(c)) for c in probe.commands)
    assert (start.kind, start.reason, stop.kind, stop.reason) == \
        (m.CommandKind.START, m.Reason.HOLSTER, m.CommandKind.STOP, m.Reason.MANUAL)
    assert abs(start.trigger_time - t_draw) < 1.0
    reports = [m.decode_trigger(from_status(st)) for st in probe.triggers[-1].status]
    assert [r.source.value for r in reports] == [s.value for s in Source]


def test_manual_start_and_stop_services(graph, executor):
    probe = graph()
    resp = call(executor, probe, 'start_recording')
    assert resp.success and 'started' in resp.message
    assert spin_until(executor, lambda: probe.starts() == ['manual'])
    assert spin_until(executor, lambda: probe.level('manual') == DiagnosticStatus.WARN)
    assert call(executor, probe, 'start_recording').message.startswith('already')
    assert call(executor, probe, 'stop_recording').success
    assert spin_until(executor, lambda: probe.level('manual') == DiagnosticStatus.OK)
    assert [c.name for c in probe.commands] == ['start', 'stop']


def test_dispatch_proximity_crossing_and_clearing(graph, executor):
    probe = graph(radius_m=1000.0, hysteresis_m=50.0, max_accuracy_m=20.0)
    dest = NavSatFix(latitude=DEST[0], longitude=DEST[1],
                     status=NavSatStatus(status=NavSatStatus.STATUS_FIX))
    probe.dispatch.publish(dest)
    for d in (1500.0, 1200.0, 1010.0):
        probe.send_fix(d)
        spin_for(executor, 0.3)
    assert probe.starts() == [] and probe.level('dispatch_proximity') == DiagnosticStatus.OK
    probe.send_fix(900.0, var_m2=900.0)          # inside, but 42 m accuracy: ignored
    spin_for(executor, 0.5)
    assert probe.starts() == []
    probe.send_fix(990.0)
    assert spin_until(executor, lambda: probe.starts() == ['dispatch_proximity'])
    assert spin_until(executor, lambda: probe.level('dispatch_proximity') ==
                      DiagnosticStatus.WARN)
    assert float(probe.values('dispatch_proximity')['distance_m']) == pytest.approx(990, abs=1)
    probe.send_fix(1040.0)                       # inside the hysteresis band: stays active
    spin_for(executor, 0.5)
    assert probe.level('dispatch_proximity') == DiagnosticStatus.WARN
    probe.dispatch.publish(NavSatFix(status=NavSatStatus(status=NavSatStatus.STATUS_NO_FIX)))
    assert spin_until(executor, lambda: probe.level('dispatch_proximity') ==
                      DiagnosticStatus.OK)
    assert probe.values('dispatch_proximity')['distance_m'] == 'nan'


def test_officer_down_alert_with_last_position_then_cancelled(graph, executor):
    probe = graph(down_hold_s=3.0, dismiss_s=1.0, officer_id='officer-17', unit_id='unit_t')
    probe.send_fix(250.0)
    t0 = time.time()
    seq = [(0.0, scenario.Activity.STILL), (1.5, scenario.Activity.FALLING),
           (2.0, scenario.Activity.LYING)]

    def publish_due(state={'k': 0}) -> None:
        # The IMU at 100 Hz: every sample due since the last call, stamped now.
        now = time.time() - t0
        while state['k'] / 100.0 <= now:
            t = state['k'] / 100.0
            act_start, act = [s for s in seq if s[0] <= t][-1]
            probe.send_imu(scenario.synth_imu(act, t - act_start, t).accel)
            state['k'] += 1

    timer = probe.create_timer(0.02, publish_due)
    assert spin_until(executor, lambda: probe.level('officer_down') == DiagnosticStatus.WARN,
                      12.0), probe.values('officer_down')
    assert probe.starts() == ['officer_down']
    down_t = time.time() - t0
    assert 2.0 + 3.0 <= down_t <= 2.0 + 3.0 + 3.0
    assert probe.values('officer_down')['phase'] == 'pending'
    assert spin_until(executor, lambda: probe.alerts, 5.0)
    alert = {kv.key: kv.value for kv in probe.alerts[-1].values}
    assert probe.alerts[-1].name == 'alert/officer_down'
    assert probe.alerts[-1].level == DiagnosticStatus.ERROR and alert['state'] == 'raised'
    lat, lon = offset(*DEST, 250.0, 0.0)
    assert (float(alert['latitude']), float(alert['longitude'])) == pytest.approx((lat, lon))
    assert alert['officer_id'] == 'officer-17' and alert['unit_id'] == 'unit_t'
    decoded = m.decode_alert(from_status(probe.alerts[-1]))
    assert decoded.raised and decoded.latitude == pytest.approx(lat)
    assert decoded.get('after_impact') == 'true'
    assert abs(float(alert['stamp']) - time.time()) < 3.0 and alert['after_impact'] == 'true'

    # The alert is latched: a console that joins late still sees it.
    late = []
    probe.create_subscription(DiagnosticStatus, 'bodycam/alerts', late.append, LATCHED_QOS)
    assert spin_until(executor, lambda: late)
    assert not call(executor, probe, 'stop_recording').success     # alert open: refused
    resp = call(executor, probe, 'cancel_alert')
    assert resp.success
    assert spin_until(executor, lambda: probe.alerts[-1].level == DiagnosticStatus.OK)
    cancelled = {kv.key: kv.value for kv in probe.alerts[-1].values}
    assert cancelled['state'] == 'cancelled' and cancelled['alert_id'] == alert['alert_id']
    assert not call(executor, probe, 'cancel_alert').success        # nothing open any more
    probe.destroy_timer(timer)


def test_no_data_is_stale_and_a_dead_imu_is_a_fault(graph, executor):
    probe = graph()
    assert spin_until(executor, lambda: probe.level('fight') == DiagnosticStatus.STALE)
    for src in ('holster', 'dispatch_proximity', 'foot_pursuit', 'officer_down'):
        assert probe.level(src) == DiagnosticStatus.STALE, src
    assert probe.level('manual') == DiagnosticStatus.OK
    end = time.time() + 2.0
    while time.time() < end:                     # a sensor stuck at zero
        probe.send_imu((0.0, 0.0, 0.0))
        spin_for(executor, 0.01)
    assert spin_until(executor, lambda: probe.level('fight') == DiagnosticStatus.ERROR, 2.0)
    arr = probe.triggers[-1]
    fault = next(s for s in arr.status if s.name == 'trigger/officer_down')
    assert 'IMU' in fault.message


def test_bad_parameter_is_named(ctx):
    with pytest.raises(ParameterError, match='down_hold_s'):
        TriggerFusionNode(context=ctx, parameter_overrides=[Parameter('down_hold_s', value=1.0)])


def test_bad_parameter_exits_2_in_its_own_process(start_process):
    p = start_process('bodycam_ros.nodes.trigger_fusion_node', '--ros-args',
                      '-p', 'dismiss_s:=-5.0')
    assert p.proc.wait(30) == 2
    assert 'dismiss_s' in p.output()


# ================================================================================= CLI

def bodycam_trigger(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'trigger', *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_bodycam_trigger_command(ctx, start_process):
    node = start_process('bodycam_ros.nodes.trigger_fusion_node', '--ros-args',
                         '-r', '__ns:=/unit_c')
    r = bodycam_trigger('start', '--namespace', 'unit_c')
    assert r.returncode == 0 and 'accepted' in r.stdout, r.stderr
    holster_node = Node('holster_stand_in', namespace='unit_c', context=ctx)
    pub = holster_node.create_publisher(Bool, 'holster/weapon_drawn', LATCHED_QOS)
    pub.publish(Bool(data=True))                 # latched: the node gets it when it matches
    deadline = time.time() + 20.0
    while True:
        r = bodycam_trigger('stop', '--namespace', 'unit_c')
        if r.returncode == 1 or time.time() > deadline:
            break
    assert r.returncode == 1 and 'REFUSED' in r.stdout and 'weapon drawn' in r.stdout
    r = bodycam_trigger('cancel', '--namespace', 'unit_c')
    assert r.returncode == 1 and 'no officer-down' in r.stdout
    r = bodycam_trigger('stop', '--namespace', 'nobody_here', '--timeout', '1')
    assert r.returncode == 3 and 'no /nobody_here/bodycam/stop_recording' in r.stderr
    holster_node.destroy_node()
    assert node.stop() == 0
