"""Two units in one ROS domain (namespaces unit_a and unit_b): when unit_a's officer is down,
unit_b gets the alert with unit_a's position and the distance to it, and, being within
peer_trigger_radius_m, starts recording too (its real recorder goes to RECORDING)."""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import NavSatFix, NavSatStatus

from bodycam_ros.core.scenario import offset
from bodycam_ros.rosutil import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS
from conftest import spin_for, spin_until
from spoolutil import recorder_ros_args

A_POS = (38.5816, -121.4944)
B_POS = offset(*A_POS, 300.0, 400.0)    # 500 m from unit_a


def values(msg: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.values}


def test_unit_b_gets_unit_a_officer_down_and_starts_recording(ctx, executor, start_process,
                                                              tmp_path) -> None:
    for unit, radius in (('unit_a', 1000.0), ('unit_b', 1000.0)):
        start_process('bodycam_ros.nodes.dispatch_bridge_node', '--ros-args',
                      '-r', f'__ns:=/{unit}', '-p', 'source:=none',
                      '-p', f'outbox_dir:={tmp_path / unit / "outbox"}',
                      '-p', f'peer_trigger_radius_m:={radius}')
    recorder_b = start_process('bodycam_ros.nodes.recorder_node', '--ros-args',
                               '-r', '__ns:=/unit_b',
                               '-p', f'evidence_dir:={tmp_path / "unit_b" / "evidence"}',
                               '-p', 'pre_event_s:=2.0', '-p', 'post_event_s:=2.0',
                               *recorder_ros_args(tmp_path / 'unit_b'))
    probe = Node('probe', context=ctx)
    executor.add_node(probe)
    fixes = {u: probe.create_publisher(NavSatFix, f'/{u}/gps/fix', SENSOR_QOS)
             for u in ('unit_a', 'unit_b')}
    alert_a = probe.create_publisher(DiagnosticStatus, '/unit_a/bodycam/alerts', LATCHED_QOS)
    peer = {u: [] for u in ('unit_a', 'unit_b')}
    cmds = {u: [] for u in ('unit_a', 'unit_b')}
    rec_b: list[DiagnosticStatus] = []
    for u in peer:
        probe.create_subscription(DiagnosticStatus, f'/{u}/bodycam/peer_alert',
                                  peer[u].append, LATCHED_QOS)
        probe.create_subscription(DiagnosticStatus, f'/{u}/recorder/command', cmds[u].append,
                                  RELIABLE_QOS)
    probe.create_subscription(DiagnosticStatus, '/unit_b/recorder/status', rec_b.append,
                              SENSOR_QOS)

    def publish_fixes() -> None:
        for u, (lat, lon) in (('unit_a', A_POS), ('unit_b', B_POS)):
            fixes[u].publish(NavSatFix(latitude=lat, longitude=lon, status=NavSatStatus(
                status=NavSatStatus.STATUS_FIX)))

    # Both bridges and unit_b's recorder up, both units have a position.
    # (recorder/command is reliable but not latched: wait until unit_b's bridge and recorder
    # have both announced their ends of it, as a unit that has been running would have.)
    assert spin_until(executor, lambda: rec_b and probe.count_subscribers('/unit_b/gps/fix')
                      and probe.count_subscribers('/unit_a/gps/fix')
                      and probe.count_subscribers('/unit_a/bodycam/alerts')
                      and probe.count_publishers('/unit_b/recorder/command') >= 1
                      and probe.count_subscribers('/unit_b/recorder/command') >= 2, 30.0), \
        recorder_b.output()
    spin_for(executor, 1.0)
    assert rec_b[-1].message == 'IDLE'
    for _ in range(3):
        publish_fixes()
        spin_for(executor, 0.2)

    t_raise = time.time()
    alert_a.publish(DiagnosticStatus(
        name='alert/officer_down', level=DiagnosticStatus.ERROR, message='officer down',
        values=[KeyValue(key=k, value=v) for k, v in dict(
            alert_id='alert-a-1', state='raised', officer_id='officer-a', unit_id='unit_a',
            latitude=repr(A_POS[0]), longitude=repr(A_POS[1]), stamp=repr(t_raise)).items()]))

    assert spin_until(executor, lambda: peer['unit_b'], 5.0), 'unit_b never got the alert'
    v = values(peer['unit_b'][-1])
    assert (v['unit_id'], v['officer_id'], v['state']) == ('unit_a', 'officer-a', 'raised')
    assert (float(v['latitude']), float(v['longitude'])) == A_POS
    assert abs(float(v['distance_m']) - 500.0) < 5.0, v['distance_m']
    assert spin_until(executor, lambda: cmds['unit_b'], 3.0), 'unit_b never asked to record'
    cmd = values(cmds['unit_b'][-1])
    assert cmds['unit_b'][-1].name == 'start' and cmd['reason'] == 'peer_alert'
    assert spin_until(executor, lambda: rec_b[-1].message == 'RECORDING', 5.0), \
        recorder_b.output()
    assert 'peer_alert' in values(rec_b[-1]).get('triggers', '')
    # unit_a hears its own alert echoed on the shared topic and ignores it.
    spin_for(executor, 0.5)
    assert peer['unit_a'] == [] and cmds['unit_a'] == []
    assert len(cmds['unit_b']) == 1, 'one alert starts one recording'
