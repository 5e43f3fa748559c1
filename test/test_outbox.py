"""Dispatch outbox and courier: durable, ordered, exactly-once delivery to a loopback webhook."""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from bodycam_ros.core.dispatch import (Assignment, DispatchError, EventPolicy, PeerAlert,
                                       PeerAlerts, parse_assignment)
from bodycam_ros.core.outbox import (Backoff, Courier, Outbox, OutboxError,
                                     WebhookTransport)
from webhook_receiver import Receiver, make_ca

OUTAGE_S = float(os.environ.get('BODYCAM_TEST_OUTAGE_S', '8'))


def test_outbox_survives_reopen_in_order_without_duplicates(tmp_path: Path) -> None:
    box = Outbox(tmp_path / 'ob')
    a = box.put('id-a', 'officer_down', {'n': 1})
    b = box.put('id-b', 'weapon_drawn', {'n': 2})
    assert box.put('id-a', 'officer_down', {'n': 1}) is None, 'same id queued twice'
    assert (a.seq, b.seq) == (1, 2)
    (tmp_path / 'ob' / 'pending' / '.tmp-000000000009').write_text('{torn')   # crash debris
    box = Outbox(tmp_path / 'ob')            # a restart: the same queue, in order
    assert len(box) == 2 and box.peek().event_id == 'id-a'
    assert not list((tmp_path / 'ob' / 'pending').glob('.tmp-*'))
    box.ack(box.peek())
    with pytest.raises(OutboxError, match='not the head'):
        box.ack(a)
    box = Outbox(tmp_path / 'ob')
    assert box.peek().event_id == 'id-b'
    assert box.put('id-a', 'officer_down', {}) is None, 'delivered ids are remembered'
    assert box.put('id-c', 'officer_down', {}).seq == 3, 'sequence continues after restart'
    assert oct((tmp_path / 'ob').stat().st_mode & 0o777) == '0o700'


def test_outbox_forgets_only_beyond_keep_ids(tmp_path: Path) -> None:
    box = Outbox(tmp_path / 'ob', keep_ids=5)
    for i in range(20):
        box.ack(box.put(f'id-{i}', 'officer_down', {}))
    box = Outbox(tmp_path / 'ob', keep_ids=5)
    assert box.put('id-19', 'officer_down', {}) is None
    assert box.put('id-21', 'officer_down', {}).seq == 21


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    b = Backoff(0.25, 4.0, random.Random(1))
    d = [b.delay(n) for n in range(1, 10)]
    assert 0.125 <= d[0] <= 0.25 and 0.5 <= d[2] <= 1.0
    assert all(2.0 <= x <= 4.0 for x in d[5:]) and len(set(d)) == len(d)


def test_webhook_gets_alert_fast_with_idempotency_key_and_token(tmp_path: Path) -> None:
    """Over TLS, as deployed: the token never crosses in clear."""
    ca = make_ca(tmp_path / 'tls')
    rx = Receiver(tls=ca).start()
    box = Outbox(tmp_path / 'ob')
    courier = Courier(box, WebhookTransport(rx.url, token='dispatch-secret-123456',
                                            ca_file=str(ca.ca_file)))
    courier.start()
    try:
        lat = []
        for i in range(20):
            t0 = time.time()
            box.put(f'alert-{i}', 'officer_down', {'i': i})
            assert rx.wait_for(lambda g: len(g) == i + 1, 5.0)
            lat.append(rx.got[-1]['t'] - t0)
    finally:
        courier.stop()
        rx.stop()
    assert [g['key'] for g in rx.got] == [f'alert-{i}' for i in range(20)]
    assert [g['body']['seq'] for g in rx.got] == list(range(1, 21))
    assert rx.got[0]['auth'] == 'Bearer dispatch-secret-123456'
    assert rx.got[0]['body']['type'] == 'officer_down'
    assert max(lat) < 1.0, lat
    assert len(box) == 0


def test_webhook_down_then_back_gets_every_event_once_in_order(tmp_path: Path) -> None:
    """Outage length: BODYCAM_TEST_OUTAGE_S (default 8 s; the issue's two minutes = 120)."""
    rx = Receiver().start()
    port = rx.port
    box = Outbox(tmp_path / 'ob')
    courier = Courier(box, WebhookTransport(rx.url, timeout_s=1.0, allow_insecure_http=True),
                      Backoff(0.1, 2.0))
    courier.start()
    try:
        box.put('before', 'officer_down', {})
        assert rx.wait_for(lambda g: len(g) == 1, 5.0)
        rx.stop()
        t_down = time.monotonic()
        n = 0
        while time.monotonic() - t_down < OUTAGE_S:
            box.put(f'during-{n}', 'officer_down' if n % 2 else 'incident_started', {'n': n})
            n += 1
            time.sleep(OUTAGE_S / 10)
        assert courier.failures_in_row >= 3 and 'Connection refused' in courier.last_error
        # A restart of the bridge during the outage loses nothing either.
        courier.stop()
        box = Outbox(tmp_path / 'ob')
        courier = Courier(box, WebhookTransport(f'http://127.0.0.1:{port}/hook', timeout_s=1.0,
                                                allow_insecure_http=True), Backoff(0.1, 2.0))
        courier.start()
        rx = Receiver(port).start()
        t_up = time.monotonic()
        assert rx.wait_for(lambda g: len(g) >= n, 10.0), f'{len(rx.got)} of {n} after outage'
        caught_up = time.monotonic() - t_up
        box.put('after', 'officer_down', {})
        assert rx.wait_for(lambda g: len(g) == n + 1, 5.0)
        assert not rx.wait_for(lambda g: len(g) > n + 1, 0.5), 'a duplicate arrived'
    finally:
        courier.stop()
        rx.stop()
    keys = [g['key'] for g in rx.got]
    down_first = sorted(range(n), key=lambda i: (i % 2 == 0, i))   # odd i: officer_down
    assert keys == [f'during-{i}' for i in down_first] + ['after'], \
        'each once, officer-down first, each kind in order'
    assert caught_up < 2.0 + 1.0, f'took {caught_up:.1f} s to resume after the outage'


def test_server_errors_are_retried_not_dropped(tmp_path: Path) -> None:
    rx = Receiver(status=503).start()
    box = Outbox(tmp_path / 'ob')
    courier = Courier(box, WebhookTransport(rx.url, allow_insecure_http=True), Backoff(0.05, 0.2))
    courier.start()
    try:
        box.put('x', 'officer_down', {})
        assert rx.wait_for(lambda g: len(g) >= 3, 5.0)
        assert len(box) == 1 and 'HTTP 503' in courier.last_error
        rx.status = 409   # "already have it": counts as delivered
        assert rx.wait_for(lambda g: len(g) >= 4, 5.0)
        deadline = time.monotonic() + 2
        while len(box) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(box) == 0 and {g['key'] for g in rx.got} == {'x'}
    finally:
        courier.stop()
        rx.stop()
    with pytest.raises(ValueError, match='http'):
        WebhookTransport('ftp://example/x')


# --------------------------------------------------------------------------- isolation

def _reasons(box_dir: Path) -> list[dict]:
    return [json.loads(p.read_text())
            for p in sorted((box_dir / 'quarantine').glob('*.reason.json'))]


def test_corrupt_or_empty_pending_files_are_quarantined_and_the_rest_kept(tmp_path: Path) -> None:
    box = Outbox(tmp_path / 'ob')
    for i in range(3):
        box.put(f'id-{i}', 'officer_down', {'i': i})
    pending = tmp_path / 'ob' / 'pending'
    (pending / '000000000002.json').write_bytes(b'')                  # zero bytes
    (pending / '000000000010.json').write_text('{"seq": 10, "event')  # torn / garbage
    (pending / '000000000011.json').write_text('[1, 2]')              # not an object
    (pending / '000000000012.json').write_text(json.dumps(            # seq != file name
        {'seq': 3, 'event_id': 'x', 'kind': 'officer_down', 'body': {}}))
    box = Outbox(tmp_path / 'ob')                                     # must not raise
    assert [box.peek().event_id, len(box)] == ['id-0', 2]
    assert box.quarantined == 4
    reasons = _reasons(tmp_path / 'ob')
    assert sorted(r['file'] for r in reasons) == ['000000000002.json', '000000000010.json',
                                                    '000000000011.json', '000000000012.json']
    assert {r['reason'] for r in reasons} == {'corrupt'}
    assert all(r['detail'] and r['at'] > 0 for r in reasons)
    assert sorted(p.name for p in pending.glob('*.json')) == ['000000000001.json',
                                                              '000000000003.json']
    assert box.put('id-new', 'weapon_drawn', {}).seq == 13, 'a quarantined seq is not reused'
    assert Outbox(tmp_path / 'ob').quarantined == 4, 'counted from disk after a restart'


def test_oldest_age_with_a_bad_queued_at_is_a_number(tmp_path: Path) -> None:
    box = Outbox(tmp_path / 'ob')
    box.put('a', 'weapon_drawn', {'queued_at': 'yesterday'})
    box.put('b', 'weapon_drawn', {'queued_at': float('nan')})
    box.put('c', 'weapon_drawn', {'queued_at': 1000.0})
    assert box.oldest_age_s(now=1010.0) == 10.0
    assert Outbox(tmp_path / 'ob').oldest_age_s(now=1010.0) == 10.0
    bad = Outbox(tmp_path / 'ob2')
    bad.put('a', 'weapon_drawn', {'queued_at': 'yesterday'})
    assert 0.0 <= bad.oldest_age_s() < 5.0, 'falls back to when it was stored'


def test_officer_down_is_never_queued_behind_other_events(tmp_path: Path) -> None:
    box = Outbox(tmp_path / 'ob')
    box.put('w', 'weapon_drawn', {})
    box.put('s', 'incident_started', {})
    box.put('d1', 'officer_down', {'state': 'raised'})
    box.put('d2', 'officer_down', {'state': 'cancelled'})
    assert box.peek().event_id == 'd1'
    with pytest.raises(OutboxError, match='not the head'):
        box.ack(box.get('w'))
    box.ack(box.peek())
    assert box.peek().event_id == 'd2', 'officer-down events keep their own order'
    box.ack(box.peek())
    assert [box.peek().event_id, len(box)] == ['w', 2]
    # Live: dispatch keeps failing the incident event; officer-down still goes through at once.
    rx = Receiver(status=lambda b: (503, b'') if b['type'] != 'officer_down' else (200, b''))
    rx.start()
    courier = Courier(box, WebhookTransport(rx.url, allow_insecure_http=True), Backoff(0.05, 0.2))
    courier.start()
    try:
        assert rx.wait_for(lambda g: len(g) >= 3, 5.0)
        t0 = time.time()
        box.put('d3', 'officer_down', {})
        assert rx.wait_for(lambda g: any(x['key'] == 'd3' for x in g), 2.0), \
            'officer-down waited behind a failing event'
        got = next(x for x in rx.got if x['key'] == 'd3')
        assert got['t'] - t0 < 1.0
    finally:
        courier.stop()
        rx.stop()
    assert [e.event_id for e in box.events()] == ['w', 's']


def test_rejected_event_is_dead_lettered_and_the_queue_goes_on(tmp_path: Path) -> None:
    def status(body: dict) -> tuple[int, bytes]:
        if body['type'] == 'incident_started':
            return 422, b'{"error": "unknown incident schema"}'
        if body.get('n') == 1 and sum(1 for g in rx.got if g['body'].get('n') == 1) <= 2:
            return 429, b'slow down'        # 408/429: retried, not rejected
        return 200, b''

    rx = Receiver(status=status).start()
    box = Outbox(tmp_path / 'ob')
    rejected = []
    courier = Courier(box, WebhookTransport(rx.url, allow_insecure_http=True), Backoff(0.05, 0.2),
                      on_rejected=lambda ev, why: rejected.append((ev.event_id, why)))
    courier.start()
    try:
        box.put('bad', 'incident_started', {'n': 0})
        box.put('next', 'weapon_drawn', {'n': 1})
        box.put('down', 'officer_down', {'n': 2})
        assert rx.wait_for(lambda g: {x['key'] for x in g} >= {'bad', 'next', 'down'}, 5.0)
        deadline = time.monotonic() + 3
        while len(box) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        courier.stop()
        rx.stop()
    assert len(box) == 0, [e.event_id for e in box.events()]
    assert [g['key'] for g in rx.got].count('bad') == 1, 'a rejection is not retried'
    assert [g['key'] for g in rx.got].count('next') == 3, '429 is retried'
    assert courier.rejected == 1 and box.quarantined == 1 and courier.delivered == 2
    assert rejected and rejected[0][0] == 'bad' and 'HTTP 422' in rejected[0][1]
    (r,) = _reasons(tmp_path / 'ob')
    assert (r['reason'], r['http_status'], r['event_id'], r['kind']) == \
        ('rejected', 422, 'bad', 'incident_started')
    assert 'unknown incident schema' in r['reply']
    moved = json.loads((tmp_path / 'ob' / 'quarantine' / r['file']).read_text())
    assert moved['event_id'] == 'bad', 'the event itself is kept beside its reason'
    assert Outbox(tmp_path / 'ob').put('bad', 'incident_started', {}) is None, \
        'a dead-lettered id is not queued again by a re-announcement'


# --------------------------------------------------------------------------- dispatch core

def test_cad_assignment_parsing() -> None:
    a = parse_assignment(b'{"latitude": 38.6, "longitude": -121.5, "assignment_id": "c-1"}')
    assert a == Assignment('c-1', 38.6, -121.5, received_at=a.received_at)
    assert parse_assignment(b'{"clear": true}').clear
    for bad, field in ((b'[1]', 'object'), (b'{"latitude": 91, "longitude": 0}', 'latitude'),
                       (b'{"latitude": 1, "longitude": "x"}', 'longitude'),
                       (b'{"latitude": 1}', 'longitude'), (b'nope', 'JSON'),
                       (b'{"latitude": NaN, "longitude": 0}', 'latitude')):
        with pytest.raises(DispatchError, match=field):
            parse_assignment(bad)


def test_event_policy_ids_are_stable_and_edges_only() -> None:
    p = EventPolicy('unit_a', 'off-1', clock=lambda: 100.0)
    p.position = (38.0, -121.0)
    v = {'alert_id': 'a1', 'state': 'raised', 'stamp': '99.5', 'latitude': '38.5',
         'longitude': '-121.5', 'officer_id': 'off-9'}
    e1, = p.on_alert(v)
    e2, = p.on_alert(v)
    assert e1.event_id == e2.event_id, 'a re-delivered latched alert keeps its id'
    assert e1.body['position'] == {'latitude': 38.5, 'longitude': -121.5}
    assert e1.body['officer_id'] == 'off-9' and e1.body['unit_id'] == 'unit_a'
    assert e1.body['time'] == 99.5 and e1.body['time_iso'].endswith('Z')
    assert p.on_alert({**v, 'state': 'cancelled'})[0].event_id != e1.event_id
    assert [e.kind for e in p.on_triggers([('holster', 1, 'drawn')])] == ['weapon_drawn']
    assert p.on_triggers([('holster', 1, 'drawn')]) == []
    assert p.on_recorder('IDLE', '', '') == []
    started = p.on_recorder('RECORDING', 'inc-1', '')
    assert [e.kind for e in started] == ['incident_started']
    assert started[0].body['incident_id'] == 'inc-1'
    assert p.on_recorder('POST_ROLL', 'inc-1', '') == []
    p.on_triggers([('holster', 0, 'holstered')])
    drawn, = p.on_triggers([('holster', 1, 'drawn')])
    assert drawn.body['incident_id'] == 'inc-1', 'events carry the incident being recorded'
    assert [e.kind for e in p.on_recorder('IDLE', '', 'inc-1')] == ['incident_sealed']
    quiet = EventPolicy('u', 'o', forward=['officer_down'])
    assert quiet.on_triggers([('holster', 1, '')]) == [] and quiet.on_recorder('IDLE', '', '') \
        == [] and quiet.on_recorder('RECORDING', 'i', '') == []
    with pytest.raises(DispatchError, match='unknown'):
        EventPolicy('u', 'o', forward=['coffee'])


def test_peer_alerts_distance_radius_and_own_echo() -> None:
    peers = PeerAlerts('unit_b', radius_m=500.0)
    peers.own_alert_ids.add('mine')
    far = PeerAlert('a1', 'raised', 'unit_a', 'off-a', 38.5816, -121.4944, 1.0)
    assert peers.on_alert(PeerAlert('mine', 'raised', 'x', '', 0, 0, 1)) is None
    assert peers.on_alert(PeerAlert('m2', 'raised', 'unit_b', '', 0, 0, 1)) is None
    d = peers.on_alert(far)
    assert d.distance_m is None and not d.start_recording, 'no own fix yet'
    d, = peers.on_fix(38.5816 + 0.0036, -121.4944)     # ~400 m north
    assert 395 < d.distance_m < 405 and d.start_recording
    d, = peers.on_fix(38.5816 + 0.0036, -121.4944)
    assert not d.start_recording, 'only once per alert'
    bad = peers.on_alert(PeerAlert('a2', 'raised', 'unit_c', '', 123.0, 0.0, 1.0))
    assert bad.distance_m is None and not bad.start_recording, 'bad latitude never triggers'
