"""The portal link (issue 13): protocol pieces, and the unit's client against a real portal
(Starlette under uvicorn on loopback, the agency trust store on disk, real Ed25519 keys).
Processes and DDS: test_fleet_api.py."""
from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import requests

from bodycam_ros.core import keys, trust
from bodycam_ros.core import portal_link as pl
from bodycam_ros.nodes.portal_link_node import PortalClient
from bodycam_ros.portal.app import Portal, PortalConfig
from bodycam_ros.portal.fleet import FleetConfig
from portalutil import Server


# ----------------------------------------------------------------------------- pure protocol
def test_origin_and_link_url():
    assert pl.origin_of('https://Portal.Example:443/x') == 'https://portal.example'
    assert pl.origin_of('wss://10.0.0.1:8443/api/link') == 'https://10.0.0.1:8443'
    assert pl.origin_of('http://127.0.0.1:80') == 'http://127.0.0.1'
    assert pl.link_url('https://p.example:8443/') == 'wss://p.example:8443/api/link'
    assert pl.link_url('https://p.example/agency') == 'wss://p.example/agency/api/link'
    with pytest.raises(pl.LinkError, match='not TLS'):
        pl.link_url('http://127.0.0.1:8443')
    assert pl.link_url('http://127.0.0.1:1', allow_insecure=True) == 'ws://127.0.0.1:1/api/link'
    with pytest.raises(pl.LinkError, match='ftp://x'):
        pl.origin_of('ftp://x')


def test_auth_message_binds_nonce_device_and_origin():
    n = bytes(32)
    m = pl.auth_message(n, 'unit-a', 'https://p')
    assert m.startswith(pl.AUTH_CONTEXT) and m.endswith(b'unit-a\nhttps://p')
    assert m != pl.auth_message(n, 'unit-a', 'https://q')
    assert m != pl.auth_message(b'\1' * 32, 'unit-a', 'https://p')
    with pytest.raises(pl.LinkError, match='nonce is 3 bytes'):
        pl.auth_message(b'abc', 'unit-a', 'https://p')


def test_messages_round_trip_and_reject_bad_values():
    s = pl.UnitState('off-1', 'RECORDING', 'inc-1', ('holster',), (), pl.Position(1.5, 2.5, 3.0),
                     10 ** 9, True, 5.0)
    assert pl.UnitState.parse(pl.decode(pl.encode(s.message()))) == s
    a = pl.AlertMsg('a1', 'officer_down', 'raised', 1e9, 'off', pl.Position(1.0, 2.0), 'i', 'x')
    assert pl.AlertMsg.parse(pl.decode(pl.encode(a.message_dict()))) == a
    with pytest.raises(pl.LinkError, match="'tea'"):
        pl.AlertMsg.parse({**a.message_dict(), 'kind': 'tea'})
    d = pl.DispatchMsg('d1', 40.0, -74.0)
    assert pl.DispatchMsg.parse(d.message()) == d
    with pytest.raises(pl.LinkError, match='latitude 91'):
        pl.DispatchMsg.parse({**d.message(), 'latitude': 91})
    with pytest.raises(pl.LinkError, match='not JSON'):
        pl.decode('{')
    f = pl.pack_video(pl.VIDEO_FRAGMENT, True, 3, 7, 12.5, b'moof')
    assert pl.unpack_video(f) == pl.VideoFrame(pl.VIDEO_FRAGMENT, True, 3, 7, 12.5, b'moof')
    with pytest.raises(pl.LinkError, match='kind 9'):
        pl.unpack_video(b'\x09' + f[1:])


def test_coalescer_sends_changes_at_most_each_interval_and_heartbeats_otherwise():
    c = pl.StateCoalescer(min_interval_s=1.0, heartbeat_s=15.0, position_min_m=10.0)
    s = pl.UnitState('o', 'IDLE', position=pl.Position(40.0, -74.0))
    assert c.due(s, 0.0)['type'] == 'state'
    assert c.due(s, 0.5) is None
    rec = pl.UnitState('o', 'RECORDING', position=pl.Position(40.0, -74.0))
    assert c.due(rec, 0.5) is None            # rate-limited, not lost:
    assert c.due(rec, 1.0)['recorder_state'] == 'RECORDING'
    jitter = pl.UnitState('o', 'RECORDING', position=pl.Position(40.00003, -74.0))  # ~3 m
    assert c.due(jitter, 3.0) is None
    moved = pl.UnitState('o', 'RECORDING', position=pl.Position(40.0002, -74.0))    # ~22 m
    assert c.due(moved, 4.0)['type'] == 'state'
    assert c.due(moved, 18.9) is None and c.due(moved, 19.0) == {'type': 'hb', 't': 19.0}


def test_reconnect_backoff_grows_with_jitter_and_resets():
    r = pl.Reconnect(0.5, 30.0, rng=random.Random(1))
    delays = [r.next_delay() for _ in range(12)]
    assert all(0.1 <= d <= 30.0 for d in delays)
    assert max(delays[:2]) <= 1.0 and max(delays[-4:]) > 5.0
    assert len({round(d, 6) for d in delays}) == len(delays)      # jittered
    assert 15.0 <= r.next_delay(refused=True) <= 30.0
    r.connected()
    assert r.next_delay() <= 0.5


# ----------------------------------------------------------------------------- a real portal
def _agency(path: Path, *devices: tuple[str, keys.FileSigner]) -> Path:
    trust.init_agency(path, time.time(), name=path.name)
    for device_id, signer in devices:
        trust.register_device(path, signer.public_key_bytes(), device_id, time.time(),
                              passphrase=b'')
    return path


def _portal(tmp_path: Path, agency: Path, **fleet) -> tuple[Server, str]:
    (tmp_path / 'bucket').mkdir(exist_ok=True)
    portal = Portal(PortalConfig(bucket=f'file://{tmp_path / "bucket"}', agency_dir=agency,
                                 state_dir=tmp_path / 'state', poll_s=5.0,
                                 fleet=FleetConfig(**fleet)))
    return Server(portal), portal.admin_password


def _login(url: str, password: str) -> requests.Session:
    s = requests.Session()
    r = s.post(url + '/api/login', json={'user': 'admin', 'password': password}, timeout=30)
    assert r.status_code == 200, r.text
    s.headers['X-CSRF-Token'] = r.json()['csrf']
    return s


def wait_until(pred, timeout_s: float = 15.0):
    end = time.monotonic() + timeout_s
    while not (got := pred()) and time.monotonic() < end:
        time.sleep(0.05)
    return got


@pytest.fixture
def signers(tmp_path):
    return {n: keys.FileSigner.create(tmp_path / f'keys-{n}', n) for n in ('unit-a', 'unit-b')}


def _client(url: str, signer, device_id: str, **kw) -> PortalClient:
    return PortalClient(url, signer, device_id, 'officer-1', allow_insecure=True,
                        reconnect_base_s=0.1, reconnect_max_s=1.0, **kw)


def test_registered_unit_is_listed_online_and_a_foreign_one_refused_and_audited(tmp_path,
                                                                                  signers):
    ours = _agency(tmp_path / 'agency', ('unit-a', signers['unit-a']))
    _agency(tmp_path / 'other', ('unit-b', signers['unit-b']))     # another agency's unit
    srv, pw = _portal(tmp_path, ours)
    with srv:
        s = _login(srv.url, pw)
        good = _client(srv.url, signers['unit-a'], 'unit-a')
        bad = _client(srv.url, signers['unit-b'], 'unit-b')
        # unit-b claims unit-a's id: its key is not the one registered for unit-a
        liar = _client(srv.url, signers['unit-b'], 'unit-a')
        for c in (good, bad, liar):
            c.start()
        try:
            good.set_state(recorder_state='IDLE', position=pl.Position(40.7, -74.0, 1.0),
                           free_bytes=5 * 10 ** 9, triggers=('dispatch_proximity',))

            def listed():
                units = {u['device_id']: u for u in s.get(srv.url + '/api/units').json()}
                u = units.get('unit-a')
                return units if u and u['online'] and u['position'] else None
            units = wait_until(listed)
            assert units, s.get(srv.url + '/api/units').json()
            u = units['unit-a']
            assert u['officer_id'] == 'officer-1' and u['registered'] and not u['recording']
            assert u['position']['latitude'] == 40.7 and u['storage']['free_bytes'] == 5e9
            assert u['triggers'] == ['dispatch_proximity'] and u['last_seen'] > 0
            assert 'unit-b' not in units
            assert wait_until(lambda: bad.refusals >= 1 and liar.refusals >= 1)
            assert '4401' in bad.last_error and 'not registered' in bad.last_error
            assert '4401' in liar.last_error and 'does not verify' in liar.last_error
            assert not bad.connected and good.connected
            audit = s.get(srv.url + '/api/audit', params={'action': 'unit_refused'}).json()
            who = {(r['details']['device_id'], r['status']) for r in audit['items']}
            assert ('unit-b', 4401) in who and ('unit-a', 4401) in who
            ok = s.get(srv.url + '/api/audit', params={'action': 'unit_connected'}).json()
            assert [r['details']['device_id'] for r in ok['items']] == ['unit-a']
        finally:
            for c in (good, bad, liar):
                c.stop()


def test_a_unit_that_dialed_another_origin_is_refused(tmp_path, signers):
    ours = _agency(tmp_path / 'agency', ('unit-a', signers['unit-a']))
    srv, pw = _portal(tmp_path, ours)
    with srv:
        # localhost resolves to this portal, but the unit signs for "localhost", which is not
        # the address the portal listens on nor a configured --public-url: refused
        c = _client(f'http://localhost:{srv.port}', signers['unit-a'], 'unit-a')
        c.start()
        try:
            assert wait_until(lambda: c.refusals >= 1), c.last_error
            assert '4403' in c.last_error
        finally:
            c.stop()


def test_offline_while_recording_raises_an_alert_and_ack_is_audited(tmp_path, signers):
    ours = _agency(tmp_path / 'agency', ('unit-a', signers['unit-a']))
    srv, pw = _portal(tmp_path, ours)
    with srv:
        s = _login(srv.url, pw)
        c = _client(srv.url, signers['unit-a'], 'unit-a', stream_while_recording=False)
        c.set_state(recorder_state='RECORDING', incident_id='inc-7',
                    position=pl.Position(40.7, -74.0))
        c.start()
        try:
            assert wait_until(lambda: [u for u in s.get(srv.url + '/api/units').json()
                                       if u['online'] and u['recording']])
            assert s.get(srv.url + '/api/alerts').json() == []
        finally:
            c.stop()                          # the link goes away while the unit records
        alerts = wait_until(lambda: s.get(srv.url + '/api/alerts').json())
        assert len(alerts) == 1, alerts
        a = alerts[0]
        assert a['kind'] == 'offline_while_recording' and a['status'] == 'open'
        assert a['device_id'] == 'unit-a' and a['incident_id'] == 'inc-7'
        assert a['position'] == {'latitude': 40.7, 'longitude': -74.0}
        u = [u for u in s.get(srv.url + '/api/units').json() if u['device_id'] == 'unit-a'][0]
        assert not u['online'] and u['recording'] and u['last_seen'] > 0   # last known state
        # roles: an auditor may not see the fleet; a dispatcher may ack, once
        for name, role in (('aud', 'auditor'), ('disp', 'dispatcher')):
            r = s.post(srv.url + '/api/users', json={'user': name, 'role': role,
                                                      'password': 'p' * 12})
            assert r.status_code == 201, r.text
        aud = requests.Session()
        aud.post(srv.url + '/api/login', json={'user': 'aud', 'password': 'p' * 12})
        assert aud.get(srv.url + '/api/alerts').status_code == 403
        disp = requests.Session()
        csrf = disp.post(srv.url + '/api/login', json={'user': 'disp', 'password': 'p' * 12}
                         ).json()['csrf']
        assert disp.post(f'{srv.url}/api/alerts/{a["id"]}/ack').status_code == 403   # no CSRF
        r = disp.post(f'{srv.url}/api/alerts/{a["id"]}/ack', headers={'X-CSRF-Token': csrf})
        assert r.status_code == 200 and r.json()['ack_by'] == 'disp', r.text
        assert disp.get(srv.url + '/api/alerts', params={'status': 'open'}).json() == []
        rows = s.get(srv.url + '/api/audit', params={'action': 'alert_ack'}).json()['items']
        assert rows[0]['user'] == 'disp' and rows[0]['details']['alert_id'] == a['id']
        # a dispatch to the offline unit is queued, not lost
        r = disp.post(f'{srv.url}/api/units/unit-a/dispatch', json={'latitude': 1.5,
                      'longitude': 2.5}, headers={'X-CSRF-Token': csrf})
        assert r.status_code == 202 and r.json()['queued'], r.text
        got = []
        c2 = _client(srv.url, signers['unit-a'], 'unit-a', on_dispatch=got.append)
        c2.start()
        try:
            assert wait_until(lambda: got), 'the queued dispatch never reached the unit'
            assert (got[0].latitude, got[0].longitude) == (1.5, 2.5) and got[0].by == 'disp'
        finally:
            c2.stop()
