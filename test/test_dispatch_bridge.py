"""dispatch_bridge over DDS: officer-down alerts reach a loopback webhook within 1 s, survive
an outage exactly once and in order; CAD assignments come in over authenticated HTTP."""
from __future__ import annotations

import json
import math
import os
import statistics
import time
import urllib.error
import urllib.request
import uuid

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import NavSatFix, NavSatStatus

from bodycam_ros.nodes.dispatch_bridge_node import DispatchBridgeNode
from bodycam_ros.rosutil import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS
from conftest import spin_for, spin_until
from webhook_receiver import Receiver

#: The issue asks for a two-minute outage; CI runs a short one. BODYCAM_TEST_OUTAGE_S=120
#: reproduces the full one.
OUTAGE_S = float(os.environ.get('BODYCAM_TEST_OUTAGE_S', '8'))
CAD_TOKEN = 'cad-test-token-0123456789'


def alert(state: str = 'raised', alert_id: str | None = None, **extra) -> DiagnosticStatus:
    """An officer-down alert exactly as trigger_fusion publishes it on bodycam/alerts."""
    values = dict(alert_id=alert_id or str(uuid.uuid4()), state=state, officer_id='officer-17',
                  unit_id='unit_t', latitude='38.5816', longitude='-121.4944',
                  stamp=repr(time.time()), incident_id='inc-42', **extra)
    return DiagnosticStatus(name='alert/officer_down',
                            level=DiagnosticStatus.ERROR if state == 'raised'
                            else DiagnosticStatus.OK, message=f'officer down {state}',
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])


def bridge(ctx, tmp_path, **params) -> DispatchBridgeNode:
    from rclpy.parameter import Parameter
    overrides = [Parameter(k, value=v) for k, v in {
        'source': 'none', 'outbox_dir': str(tmp_path / 'outbox'), 'retry_base_s': 0.1,
        'retry_max_s': 1.0, 'webhook_timeout_s': 1.0,
        # loopback receivers over plain http; TLS is tested in test_dispatch_tls.py
        'allow_insecure_http': True, **params}.items()]
    return DispatchBridgeNode(context=ctx, parameter_overrides=overrides)


def test_officer_down_reaches_webhook_within_1s_with_full_details(ctx, executor,
                                                                   tmp_path) -> None:
    rx = Receiver().start()
    try:
        executor.add_node(bridge(ctx, tmp_path, dispatch_webhook=rx.url, officer_id='officer-17'))
        probe = Node('probe', context=ctx)
        executor.add_node(probe)
        pub = probe.create_publisher(DiagnosticStatus, 'bodycam/alerts', LATCHED_QOS)
        fix = probe.create_publisher(NavSatFix, 'gps/fix', SENSOR_QOS)
        spin_for(executor, 0.5)
        fix.publish(NavSatFix(latitude=38.6, longitude=-121.5,
                              status=NavSatStatus(status=NavSatStatus.STATUS_FIX)))
        lat, ids = [], []
        for i in range(30):
            a = alert()
            ids.append(a.values[0].value)
            t0 = time.time()
            pub.publish(a)
            assert spin_until(executor, lambda: len(rx.got) == i + 1, 5.0), f'alert {i} lost'
            lat.append(rx.got[-1]['t'] - t0)
        # The same latched alert seen again (a restart, a late subscriber) is not re-sent.
        pub.publish(a)
        spin_for(executor, 0.5)
    finally:
        rx.stop()
    assert len(rx.got) == 30
    body = rx.got[0]['body']
    assert body['type'] == 'officer_down' and body['state'] == 'raised'
    assert (body['officer_id'], body['unit_id'], body['incident_id']) == \
        ('officer-17', 'unit_t', 'inc-42')
    assert body['position'] == {'latitude': 38.5816, 'longitude': -121.4944}
    assert abs(body['time'] - time.time()) < 30 and body['time_iso'].endswith('Z')
    assert [g['body']['alert_id'] for g in rx.got] == ids
    assert len({g['key'] for g in rx.got}) == 30
    p99 = sorted(lat)[int(0.99 * (len(lat) - 1))]
    print(f'\nalert -> webhook latency: p50 {statistics.median(lat) * 1000:.0f} ms, '
          f'p99 {p99 * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms (n={len(lat)})')
    assert p99 < 1.0


def test_webhook_outage_every_event_once_in_order(ctx, executor, tmp_path) -> None:
    rx = Receiver().start()
    port = rx.port
    node = bridge(ctx, tmp_path, dispatch_webhook=rx.url, retry_max_s=2.0)
    executor.add_node(node)
    probe = Node('probe', context=ctx)
    executor.add_node(probe)
    alerts = probe.create_publisher(DiagnosticStatus, 'bodycam/alerts', LATCHED_QOS)
    triggers = probe.create_publisher(DiagnosticArray, 'bodycam/triggers', RELIABLE_QOS)
    diag = []
    probe.create_subscription(DiagnosticArray, '/diagnostics',
                              lambda m: diag.extend(m.status), RELIABLE_QOS)
    spin_for(executor, 0.5)
    rx.stop()
    sent = []
    t_end = time.monotonic() + OUTAGE_S
    holster = False
    while time.monotonic() < t_end:
        a = alert('raised' if len(sent) % 3 != 2 else 'cancelled', alert_id=f'a{len(sent)}')
        alerts.publish(a)
        sent.append(('officer_down', f'a{len(sent)}'))
        holster = not holster
        triggers.publish(DiagnosticArray(status=[DiagnosticStatus(
            name='trigger/holster', level=DiagnosticStatus.WARN if holster else
            DiagnosticStatus.OK, message='weapon drawn' if holster else 'holstered')]))
        if holster:
            sent.append(('weapon_drawn', None))
        spin_for(executor, min(1.0, OUTAGE_S / 8))
    assert spin_until(executor, lambda: any(
        'unreachable' in s.message for s in diag if s.name.endswith('dispatch_bridge')), 3.0)
    rx = Receiver(port).start()
    try:
        assert spin_until(executor, lambda: len(rx.got) >= len(sent), 10.0), \
            f'{len(rx.got)} of {len(sent)} delivered after the outage'
        spin_for(executor, 1.0)
    finally:
        rx.stop()
    got = [(g['body']['type'], g['body'].get('alert_id')) for g in rx.got]
    # Officer-down events are never queued behind anything: all of them first, in order.
    expected = sorted(sent, key=lambda e: e[0] != 'officer_down')
    assert got == expected, 'each exactly once, officer-down first, each kind in order'
    for kind in ('officer_down', 'weapon_drawn'):
        seqs = [g['body']['seq'] for g in rx.got if g['body']['type'] == kind]
        assert seqs == sorted(seqs)
    assert len({g['key'] for g in rx.got}) == len(rx.got)


def test_bridge_starts_past_corrupt_pending_files_and_reports_them(ctx, executor,
                                                                    tmp_path) -> None:
    """A zero-byte or torn pending file (power cut, bad disk) used to stop the bridge from
    starting at all, so officer-down alerts stopped. Now it is quarantined with its reason,
    the other events go out, and /diagnostics says ERROR until someone looks."""
    pending = tmp_path / 'outbox' / 'pending'
    pending.mkdir(parents=True)
    (pending / '000000000001.json').write_bytes(b'')
    (pending / '000000000002.json').write_text(json.dumps({
        'seq': 2, 'event_id': 'kept', 'kind': 'incident_started', 'body': {'queued_at': 'x'}}))
    (pending / '000000000003.json').write_text('{"seq": 3, "ev')
    rx = Receiver().start()
    try:
        node = bridge(ctx, tmp_path, dispatch_webhook=rx.url)
        executor.add_node(node)
        probe = Node('probe', context=ctx)
        executor.add_node(probe)
        diag = []
        probe.create_subscription(DiagnosticArray, '/diagnostics',
                                  lambda m: diag.extend(m.status), RELIABLE_QOS)
        pub = probe.create_publisher(DiagnosticStatus, 'bodycam/alerts', LATCHED_QOS)
        spin_for(executor, 0.5)
        pub.publish(alert())
        assert spin_until(executor, lambda: {g['body']['type'] for g in rx.got} ==
                          {'officer_down', 'incident_started'}, 5.0), rx.got
        assert spin_until(executor, lambda: any(
            s.name.endswith('dispatch_bridge') and s.level == DiagnosticStatus.ERROR
            for s in diag), 3.0)
    finally:
        rx.stop()
    st = [s for s in diag if s.name.endswith('dispatch_bridge')][-1]
    v = {kv.key: kv.value for kv in st.values}
    assert v['quarantined'] == '2' and 'quarantine' in st.message
    reasons = sorted((tmp_path / 'outbox' / 'quarantine').glob('*.reason.json'))
    assert [json.loads(r.read_text())['reason'] for r in reasons] == ['corrupt', 'corrupt']


def _post(url: str, body: dict | None, token: str | None, method: str = 'POST'):
    req = urllib.request.Request(url, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={'Content-Type': 'application/json',
                                          **({'Authorization': f'Bearer {token}'}
                                             if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b'{}')


def test_cad_http_intake_publishes_destination(ctx, executor, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv('BODYCAM_CAD_TOKEN', CAD_TOKEN)
    node = bridge(ctx, tmp_path, source='http', cad_port=0)
    executor.add_node(node)
    probe = Node('probe', context=ctx)
    executor.add_node(probe)
    dest: list[NavSatFix] = []
    probe.create_subscription(NavSatFix, 'dispatch/destination', dest.append, LATCHED_QOS)
    url = f'http://127.0.0.1:{node._cad.port}/dispatch'
    assert _post(url, {'latitude': 38.6, 'longitude': -121.5}, None)[0] == 401
    assert _post(url, {'latitude': 38.6, 'longitude': -121.5}, 'wrong-token-0123456789')[0] == 401
    code, doc = _post(url, {'latitude': 95.0, 'longitude': 0}, CAD_TOKEN)
    assert code == 400 and 'latitude' in doc['error']
    spin_for(executor, 0.3)
    assert dest == [], 'rejected requests publish nothing'
    code, doc = _post(url, {'latitude': 38.6, 'longitude': -121.5, 'assignment_id': 'cad-9'},
                      CAD_TOKEN)
    assert code == 202 and doc['assignment_id'] == 'cad-9'
    assert spin_until(executor, lambda: dest, 3.0)
    assert (dest[-1].latitude, dest[-1].longitude) == (38.6, -121.5)
    assert dest[-1].status.status == NavSatStatus.STATUS_FIX
    assert _post(url, None, CAD_TOKEN, 'DELETE')[0] == 202
    assert spin_until(executor, lambda: dest[-1].status.status == NavSatStatus.STATUS_NO_FIX, 3)
    assert math.isnan(dest[-1].latitude)


@pytest.mark.parametrize('param, value, needle', [
    ('forward_events', "['officer_down', 'coffee']", 'forward_events'),
    ('dispatch_webhook', 'ftp://dispatch.example/x', 'dispatch_webhook'),
    ('source', 'carrier_pigeon', 'source'),
])
def test_bad_parameters_exit_2_naming_the_parameter(start_process, tmp_path, param, value,
                                                    needle) -> None:
    p = start_process('bodycam_ros.nodes.dispatch_bridge_node', '--ros-args', '-p',
                      f'outbox_dir:={tmp_path / "ob"}', '-p', f'{param}:={value}')
    assert p.proc.wait(30) == 2
    assert needle in p.output()


def test_sim_source_publishes_the_scenario_dispatch(ctx, executor, tmp_path) -> None:
    from bodycam_ros.core.scenario import PATROL
    node = bridge(ctx, tmp_path, source='sim', scenario='patrol',
                  scenario_start=time.time() - PATROL.dispatch_at_s + 1.0)
    executor.add_node(node)
    probe = Node('probe', context=ctx)
    executor.add_node(probe)
    dest: list[NavSatFix] = []
    probe.create_subscription(NavSatFix, 'dispatch/destination', dest.append, LATCHED_QOS)
    assert spin_until(executor, lambda: dest, 3.0)
    assert dest[-1].status.status == NavSatStatus.STATUS_NO_FIX, 'no dispatch yet'
    assert spin_until(executor, lambda: dest[-1].status.status == NavSatStatus.STATUS_FIX, 3.0)
    assert (dest[-1].latitude, dest[-1].longitude) == PATROL.destination
