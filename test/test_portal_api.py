"""The agency portal's API over real evidence (issue 12), on SQLite and on a real PostgreSQL.

The recorder seals encrypted incidents for a unit the test agency registered; the real
uploader puts them into a file:// bucket; the portal runs under a real uvicorn on loopback
and is driven over HTTP."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import requests
from pgutil import PgServer
from portalutil import DEVICE, Server, incident_dirs, unit_with_bucket

from bodycam_ros.portal.app import Portal, PortalConfig
from bodycam_ros.portal.db import SCHEMA_VERSION

ENDPOINTS = ['/api/me', '/api/incidents', '/api/incidents/x', '/api/incidents/x/video.mp4',
             '/api/incidents/x/sensors.json', '/api/incidents/x/export.zip', '/api/audit',
             '/api/audit/export', '/api/users', '/api/devices', '/api/status', '/',
             '/api/nothing-here']


@pytest.fixture(scope='session')
def pg():
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture(scope='module')
def recorded(tmp_path_factory):
    """Three incidents of one unit, uploaded: (tmp dir holding agency, keys, ev, bucket)."""
    base = tmp_path_factory.mktemp('unit')
    unit_with_bucket(base, 3)
    return base


@pytest.fixture(params=['sqlite', 'postgresql'])
def database(request) -> str:
    if request.param == 'sqlite':
        return ''
    return request.getfixturevalue('pg').new_database()


@pytest.fixture
def world(recorded, tmp_path):
    """A private copy of the unit's world (bucket, agency, keys, evidence) for one test."""
    for name in ('agency', 'bucket', 'keys', 'ev'):
        shutil.copytree(recorded / name, tmp_path / name, symlinks=True)
    shutil.copy(recorded / 'agency_recipient.txt', tmp_path / 'agency_recipient.txt')
    return tmp_path


def start(world: Path, database: str, poll_s: float = 0.3, **cfg) -> tuple[Server, str]:
    portal = Portal(PortalConfig(bucket=f'file://{world / "bucket"}', agency_dir=world / 'agency',
                                 database=database, state_dir=world / 'state', poll_s=poll_s,
                                 **cfg))
    return Server(portal), portal.admin_password


def login(url: str, user: str, password: str) -> requests.Session:
    s = requests.Session()
    r = s.post(url + '/api/login', json={'user': user, 'password': password}, timeout=30)
    assert r.status_code == 200, r.text
    s.headers['X-CSRF-Token'] = r.json()['csrf']
    cookie = r.headers['set-cookie'].lower()
    assert 'httponly' in cookie and 'samesite=strict' in cookie
    return s


def wait_listed(s: requests.Session, url: str, n: int, timeout_s: float = 30.0,
                **params) -> dict:
    end = time.monotonic() + timeout_s
    while True:
        got = s.get(url + '/api/incidents', params=params, timeout=30).json()
        if got['total'] >= n or time.monotonic() > end:
            return got
        time.sleep(0.1)


def wait_until(pred, timeout_s: float = 30.0):
    end = time.monotonic() + timeout_s
    while not (got := pred()) and time.monotonic() < end:
        time.sleep(0.1)
    return got


def test_incidents_listed_verified_newest_first_and_filtered(world, database):
    srv, pw = start(world, database)
    with srv:
        s = login(srv.url, 'admin', pw)
        got = wait_listed(s, srv.url, 3)
        assert got['total'] == 3 and got['page'] == 1, got
        items = got['items']
        assert [i['sequence'] for i in items] == [3, 2, 1]
        for i in items:
            assert i['verified'] is True and i['verify_problems'] == [], i
            assert i['device_id'] == DEVICE and i['officer_id'] is not None
            assert i['start_time'] < i['end_time']
            assert [t['reason'] for t in i['triggers']] == ['manual'] and i['triggers'][0]['time']
        q = lambda **p: s.get(srv.url + '/api/incidents', params=p, timeout=30).json()  # noqa
        assert q(unit=DEVICE)['total'] == 3 and q(unit='unit-x')['total'] == 0
        assert q(reason='manual')['total'] == 3 and q(reason='weapon_drawn')['total'] == 0
        assert q(verified='true')['total'] == 3 and q(verified='false')['total'] == 0
        officer = items[0]['officer_id']
        assert q(officer=officer)['total'] == 3 and q(officer='nobody')['total'] == 0
        page2 = q(per_page=2, page=2)
        assert [i['sequence'] for i in page2['items']] == [1] and page2['total'] == 3
        mid = items[1]['start_time']
        assert [i['sequence'] for i in q(date_from=mid)['items']] == [3, 2]
        assert [i['sequence'] for i in q(date_to=mid - 0.001)['items']] == [1]
        day = items[0]['start_iso'][:10]
        assert q(date_from=day, date_to=day)['total'] == 3
        r = s.get(srv.url + '/api/incidents', params={'date_from': 'yesterday'}, timeout=30)
        assert r.status_code == 400 and 'date_from' in r.json()['error']
        d = s.get(srv.url + f'/api/incidents/{items[0]["incident_id"]}', timeout=30).json()
        v = d['verification']
        assert all(v[k]['ok'] for k in ('signature', 'registered_device', 'chain_position',
                                        'ledger', 'files')), v
        assert 'registered key' in v['signature']['text'] and 'sequence 3' in \
            v['chain_position']['text']
        assert [c['action'] for c in d['custody'] if c['source'] == 'unit ledger'] == \
            ['sealed', 'uploaded']
        assert any(c['action'] == 'incident_view' and c['user'] == 'admin'
                   for c in d['custody'])
        assert d['triggers'][0]['offset_s'] is not None and d['stops']
        status = s.get(srv.url + '/api/status', timeout=30).json()
        assert status['schema_version'] == SCHEMA_VERSION and status['incidents'] == 3



def test_cursor_pages_walk_both_ways_and_totals_say_when_they_are_estimates(world, database):
    """Keyset pages: ``next``/``prev`` cursors walk the list one way and back, with filters;
    ``page=`` stops at max_offset; totals come from the indexer's counts, an exact count
    below count_exact_max, or an estimate labelled as one."""
    srv, pw = start(world, database, max_offset=1, count_exact_max=1)
    with srv:
        s = login(srv.url, 'admin', pw)
        wait_listed(s, srv.url, 3)
        q = lambda **p: s.get(srv.url + '/api/incidents', params=p, timeout=30)  # noqa: E731
        first = q(per_page=1).json()
        assert first['page'] == 1 and first['prev'] is None and first['next']
        seqs, pages, got = [], [], first
        while True:
            seqs += [i['sequence'] for i in got['items']]
            pages.append(got)
            if not got['next']:
                break
            got = q(per_page=1, after=got['next']).json()
            assert got['page'] is None and got['total'] == 3, got
        assert seqs == [3, 2, 1] and pages[-1]['prev'], pages
        back = []
        got = pages[-1]
        while got['prev']:
            got = q(per_page=1, before=got['prev']).json()
            back += [i['sequence'] for i in got['items']]
        assert back == [2, 3] and got['next'], back
        two = q(per_page=2, unit=DEVICE, reason='manual').json()
        assert [i['sequence'] for i in two['items']] == [3, 2] and two['next']
        rest = q(per_page=2, unit=DEVICE, reason='manual', after=two['next']).json()
        assert [i['sequence'] for i in rest['items']] == [1] and rest['next'] is None
        assert q(per_page=1, page=2).json()['items'][0]['sequence'] == 2
        r = q(per_page=1, page=3)
        assert r.status_code == 400 and 'next' in r.json()['error'], r.text
        for bad in ('nonsense', 'W10', first['next'][:-3]):
            r = q(after=bad)
            assert r.status_code == 400 and 'cursor' in r.json()['error'], (bad, r.text)
        assert q(after=first['next'], before=first['next']).status_code == 400
        # Totals: unfiltered and one filter from the counts (exact); two filters over
        # count_exact_max (1 here) are estimated from the counts and say so.
        for params, total, estimate in (({}, 3, False), ({'verified': 'true'}, 3, False),
                                        ({'reason': 'manual'}, 3, False),
                                        ({'unit': 'nobody'}, 0, False),
                                        ({'unit': DEVICE, 'reason': 'nothing'}, 0, False),
                                        ({'unit': DEVICE, 'verified': 'true'}, 3, True),
                                        ({'date_from': '500'}, 3, True),
                                        ({'date_to': '500'}, 0, False)):
            got = q(**params).json()
            assert (got['total'], got['total_is_estimate']) == (total, estimate), (params, got)
        rows = srv.portal.db.query('SELECT dim, value, n FROM incident_counts')
        assert ('', '', 3) in rows and ('unit', DEVICE, 3) in rows and \
            ('verified', '1', 3) in rows and ('reason', 'manual', 3) in rows, rows


def test_migration_3_counts_what_a_version_2_portal_indexed(tmp_path, database):
    """An index written by a schema-2 portal (no counts) upgrades in place: migration 3 counts
    its rows, and the list's totals are right from the first request."""
    from bodycam_ros.portal.db import Database, migrate
    from bodycam_ros.portal.indexer import _INCIDENT_COLUMNS
    db = Database(database or str(tmp_path / 'v2.db'))
    assert migrate(db, 0.0, upto=2) == [1, 2]
    rows = [(f'i{k}', f'unit-{k % 2}', f'officer-{k % 3}', k, 1000.0 + k, 1100.0 + k,
             1000.0 + k, f'unit-{k % 2}/d/i{k}', '[]', 'fight,manual' if k % 2 else 'manual',
             '{}', '0' * 64, '', 0, 1, int(k != 3), '[]', '{}', 0.0, 0.0) for k in range(5)]
    db.executemany(f'INSERT INTO incidents ({_INCIDENT_COLUMNS}) VALUES '
                   f'({", ".join("?" * 20)})', rows)
    db.executemany('INSERT INTO incident_reasons (incident_id, reason, sort_time, device_id, '
                   'officer_id, verified) VALUES (?, ?, ?, ?, ?, ?)',
                   [(r[0], reason, r[6], r[1], r[2], r[15]) for r in rows
                    for reason in r[9].split(',')])
    assert migrate(db, 0.0) == [3]
    counts = {(d, v): n for d, v, n in db.query('SELECT dim, value, n FROM incident_counts')}
    assert counts == {('', ''): 5, ('unit', 'unit-0'): 3, ('unit', 'unit-1'): 2,
                      ('officer', 'officer-0'): 2, ('officer', 'officer-1'): 2,
                      ('officer', 'officer-2'): 1, ('verified', '1'): 4, ('verified', '0'): 1,
                      ('reason', 'manual'): 5, ('reason', 'fight'): 2}, counts
    db.close()

def test_video_decrypts_to_the_signed_plaintext_with_range(world, database):
    from test_mp4 import ffprobe_frames
    srv, pw = start(world, database)
    with srv:
        s = login(srv.url, 'admin', pw)
        item = wait_listed(s, srv.url, 3)['items'][0]
        iid = item['incident_id']
        manifest = json.loads(next(d for d in incident_dirs(world / 'bucket')
                                   if d.name == iid).joinpath('manifest.json').read_text())
        plain = manifest['files']['video.mp4.age']['plaintext']
        full = s.get(srv.url + f'/api/incidents/{iid}/video.mp4', timeout=60)
        assert full.status_code == 200 and full.headers['content-type'] == 'video/mp4'
        assert hashlib.sha256(full.content).hexdigest() == plain['sha256']
        assert len(full.content) == plain['size'] and full.headers['accept-ranges'] == 'bytes'
        part = s.get(srv.url + f'/api/incidents/{iid}/video.mp4',
                     headers={'Range': 'bytes=100-1099'}, timeout=60)
        assert part.status_code == 206
        assert part.headers['content-range'] == f'bytes 100-1099/{plain["size"]}'
        assert part.content == full.content[100:1100]
        (world / 'v.mp4').write_bytes(full.content)
        assert ffprobe_frames(world / 'v.mp4') == manifest['frame_count']
        sens = s.get(srv.url + f'/api/incidents/{iid}/sensors.json', timeout=60).json()
        assert set(sens) >= {'t0', 'speed', 'accel', 'tilt', 'track'}
        assert len(sens['track']) == manifest['gps_track']['fixes'] and \
            len(sens['track']) <= 2000
        lat, lon = sens['track'][0][1:]
        assert abs(lat - manifest['gps_track']['first']['latitude']) < 1e-6
        assert abs(lon - manifest['gps_track']['first']['longitude']) < 1e-6
        rows = s.get(srv.url + '/api/audit', params={'incident': iid}, timeout=30).json()
        acts = [r['action'] for r in rows['items']]
        assert acts.count('video') == 1 and 'sensors' in acts, acts   # one viewing, one row


def test_a_flipped_byte_in_the_bucket_shows_not_verified_with_the_reason(world, database):
    srv, pw = start(world, database)
    with srv:
        s = login(srv.url, 'admin', pw)
        mid = wait_listed(s, srv.url, 3)['items'][1]
        assert mid['verified'] is True
        target = next(d for d in incident_dirs(world / 'bucket')
                      if d.name == mid['incident_id']) / 'video.mp4.age'
        with open(target, 'r+b') as f:
            f.seek(5000)
            b = f.read(1)
            f.seek(5000)
            f.write(bytes([b[0] ^ 0x01]))
        got = wait_until(lambda: s.get(srv.url + '/api/incidents', timeout=30,
                                       params={'verified': 'false'}).json()['items'])
        assert [i['incident_id'] for i in got] == [mid['incident_id']]
        assert any('video.mp4.age' in p and 'SHA-256' in p for p in got[0]['verify_problems'])
        assert s.get(srv.url + '/api/incidents', params={'verified': 'true'},
                     timeout=30).json()['total'] == 2
        assert s.get(srv.url + '/api/incidents', params={'verified': 'false'},
                     timeout=30).json()['total'] == 1
        r = s.get(srv.url + f'/api/incidents/{mid["incident_id"]}/video.mp4', timeout=60)
        assert r.status_code == 409 and 'SHA-256' in r.json()['error']


def test_everything_but_login_answers_401_without_a_session(world, database):
    srv, _ = start(world, database)
    with srv:
        for path in ENDPOINTS:
            r = requests.get(srv.url + path, timeout=30, allow_redirects=False)
            assert r.status_code == 401, (path, r.status_code)
        for path in ('/api/logout', '/api/users', '/api/password'):
            assert requests.post(srv.url + path, json={}, timeout=30).status_code == 401, path
        assert requests.get(srv.url + '/login', timeout=30).status_code in (200, 404)
        r = requests.post(srv.url + '/api/login', json={'user': 'admin', 'password': 'x' * 12},
                          timeout=30)
        assert r.status_code == 401
        rows = [r for r in srv.portal.db.query('SELECT action, status FROM audit')]
        assert ('unauthenticated', 401) in rows and ('login_failed', 401) in rows


def test_roles_auditor_cannot_export_supervisor_cannot_read_the_audit(world, database):
    srv, pw = start(world, database)
    with srv:
        admin = login(srv.url, 'admin', pw)
        for name, role in (('sue', 'supervisor'), ('al', 'auditor')):
            r = admin.post(srv.url + '/api/users', json={'user': name, 'role': role,
                                                          'password': f'{name}-password-1'},
                           timeout=30)
            assert r.status_code == 201, r.text
        iid = wait_listed(admin, srv.url, 3)['items'][0]['incident_id']
        al = login(srv.url, 'al', 'al-password-1')
        sue = login(srv.url, 'sue', 'sue-password-1')
        assert al.get(srv.url + f'/api/incidents/{iid}/export.zip', timeout=60).status_code == 403
        assert al.get(srv.url + f'/api/incidents/{iid}/video.mp4', timeout=60).status_code == 403
        assert al.post(srv.url + '/api/users', json={'user': 'x', 'role': 'admin',
                                                     'password': 'p' * 12},
                       timeout=30).status_code == 403
        assert al.get(srv.url + '/api/audit', timeout=30).status_code == 200
        assert sue.get(srv.url + '/api/audit', timeout=30).status_code == 403
        assert sue.get(srv.url + '/api/audit/export', timeout=30).status_code == 403
        r = sue.get(srv.url + f'/api/incidents/{iid}/export.zip', timeout=120)
        assert r.status_code == 200 and r.headers['content-type'] == 'application/zip'
        z = zipfile.ZipFile(io.BytesIO(r.content))
        names = set(z.namelist())
        assert {'README.txt', 'verify.json', 'custody.json', 'decrypted/video.mp4',
                'decrypted/sensors.mcap', 'trust/devices.json',
                f'evidence/{DEVICE}/ledger.jsonl'} <= names, names
        m = json.loads(next(z.read(n) for n in names if n.endswith(f'{iid}/manifest.json')))
        assert any(n.endswith(f'{iid}/manifest.sig') for n in names)
        for name in ('video.mp4', 'sensors.mcap'):
            assert hashlib.sha256(z.read(f'decrypted/{name}')).hexdigest() == \
                m['files'][f'{name}.age']['plaintext']['sha256']
        assert not any('encryption_x25519.key' in n or 'signing_ed25519.key' in n
                       for n in names)
        assert 'bodycam verify' in z.read('README.txt').decode()
        assert any(c['action'] == 'export' and c['user'] == 'sue'
                   for c in json.loads(z.read('custody.json')))
        rows = al.get(srv.url + '/api/audit', params={'action': 'forbidden'}, timeout=30).json()
        who = {(r['user'], r['details']['path'].rsplit('/', 1)[-1]) for r in rows['items']}
        assert ('al', 'export.zip') in who and ('sue', 'audit') in who


def test_state_changes_without_the_csrf_token_are_403(world, database):
    srv, pw = start(world, database)
    with srv:
        s = login(srv.url, 'admin', pw)
        token = s.headers.pop('X-CSRF-Token')
        body = {'user': 'bob', 'role': 'supervisor', 'password': 'bob-password-1'}
        assert s.post(srv.url + '/api/users', json=body, timeout=30).status_code == 403
        assert s.post(srv.url + '/api/users', json=body, headers={'X-CSRF-Token': 'forged'},
                      timeout=30).status_code == 403
        assert s.post(srv.url + '/api/logout', timeout=30).status_code == 403
        assert s.get(srv.url + '/api/me', timeout=30).json()['csrf'] == token
        assert s.post(srv.url + '/api/users', json=body, headers={'X-CSRF-Token': token},
                      timeout=30).status_code == 201
        assert s.post(srv.url + '/api/logout', headers={'X-CSRF-Token': token},
                      timeout=30).status_code == 200
        assert s.get(srv.url + '/api/me', timeout=30).status_code == 401
        acts = [r[0] for r in srv.portal.db.query('SELECT action FROM audit ORDER BY seq')]
        assert acts.count('csrf_rejected') == 3 and 'user_created' in acts


def test_login_rate_limit_per_user_and_address(world, database):
    srv, pw = start(world, database)
    with srv:
        for _ in range(5):
            r = requests.post(srv.url + '/api/login', json={'user': 'admin', 'password': 'no'},
                              timeout=30)
            assert r.status_code == 401
        r = requests.post(srv.url + '/api/login', json={'user': 'admin', 'password': pw},
                          timeout=30)
        assert r.status_code == 429 and int(r.headers['retry-after']) > 0
        r = requests.post(srv.url + '/api/login', json={'user': 'other', 'password': 'no'},
                          timeout=30)
        assert r.status_code == 401           # another user from this address is not locked
        acts = [r[0] for r in srv.portal.db.query('SELECT action FROM audit')]
        assert acts.count('login_failed') == 6 and acts.count('login_rate_limited') == 1


def test_an_audit_row_edited_through_sql_breaks_the_chain(world, database):
    srv, pw = start(world, database)
    with srv:
        s = login(srv.url, 'admin', pw)
        iid = wait_listed(s, srv.url, 1)['items'][0]['incident_id']
        s.get(srv.url + f'/api/incidents/{iid}', timeout=30)
        r = s.get(srv.url + '/api/audit/export', timeout=30)
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert r.headers['x-audit-chain'] == 'ok' and lines[-1]['chain']['ok'], lines[-1]
        assert [x['seq'] for x in lines[:-1]] == list(range(1, len(lines)))
        view = next(x for x in lines[:-1] if x.get('action') == 'incident_view')
        db = srv.portal.db
        db.execute('UPDATE audit SET user_name = ? WHERE seq = ?', ('nobody', view['seq']))
        r = s.get(srv.url + '/api/audit/export', timeout=30)
        chain = json.loads(r.text.splitlines()[-1])['chain']
        assert r.headers['x-audit-chain'] == 'broken' and not chain['ok']
        assert any(f'seq {view["seq"]}: hash' in p for p in chain['problems']), chain
        assert not s.get(srv.url + '/api/audit', timeout=30).json()['chain']['ok']


def test_the_newest_incident_cut_from_the_bucket_is_caught_by_the_recorded_witness(
        world, database):
    from bodycam_ros.core.history import file_bucket_reader, verify_history
    from bodycam_ros.core.trust import TrustStore
    from bodycam_ros.portal.indexer import TrustView
    srv, pw = start(world, database)
    bucket = world / 'bucket'
    with srv:
        s = login(srv.url, 'admin', pw)
        newest = wait_listed(s, srv.url, 3)['items'][0]
        dev = wait_until(lambda: [d for d in s.get(srv.url + '/api/devices', timeout=30)
                                  .json()['items'] if d['witness']['seq']])
        assert dev[0]['ledger_ok'] and dev[0]['witness']['seq'] == 6, dev
        # The attacker with the bucket: the newest incident and its ledger entry go.
        shutil.rmtree(next(d for d in incident_dirs(bucket) if d.name == newest['incident_id']))
        ledger = bucket / DEVICE / 'ledger.jsonl'
        ledger.write_bytes(b''.join(ledger.read_bytes().splitlines(keepends=True)[:5]))
        trust = TrustView(TrustStore.load(world / 'agency'))
        alone = verify_history(file_bucket_reader(bucket, DEVICE), trust)
        assert alone.ok, alone.as_dict()          # the bucket alone cannot tell
        # The indexer may first see the shortened ledger (the incident unverified, still
        # present), then the missing objects: wait for both (CI on PostgreSQL saw the first).
        def unverified() -> list[dict]:
            return s.get(srv.url + '/api/incidents', timeout=30,
                         params={'verified': 'false'}).json()['items']
        got = wait_until(lambda: [i for i in unverified()
                                  if i['incident_id'] == newest['incident_id']
                                  and i['present'] is False])
        assert got, unverified()
        cut = got[0]

        def totals() -> dict[str, int]:
            return {v: s.get(srv.url + '/api/incidents', params={'verified': v}, timeout=30)
                    .json()['total'] for v in ('true', 'false', '')}
        want = {'true': 0, 'false': 3, '': 3}           # the cut taints the whole history
        assert wait_until(lambda: totals() == want), totals()
        assert any(p.startswith('missing_from_bucket') for p in cut['verify_problems'])
        assert any('behind_witness' in p for p in cut['verify_problems']), cut
        devs = s.get(srv.url + '/api/devices', timeout=30).json()['items']
        assert not devs[0]['ledger_ok'] and devs[0]['witness']['seq'] == 6
        assert any('behind_witness' in p for p in devs[0]['problems'])


def test_a_new_incident_is_indexed_within_5_s_of_landing(world, database):
    from portalutil import upload
    from test_evidence_trust import record, unit
    srv, pw = start(world, database, poll_s=1.0)
    with srv:
        s = login(srv.url, 'admin', pw)
        assert wait_listed(s, srv.url, 3)['total'] == 3
        _, rec, _ = unit(world)
        rec.start()
        record(rec, 1, t0=2000.0)
        rec.close()
        upload(world, world / 'bucket')
        landed = time.monotonic()
        got = wait_listed(s, srv.url, 4, timeout_s=30)
        took = time.monotonic() - landed
        assert got['total'] == 4 and took <= 5.0, took
        newest = got['items'][0]
        assert newest['sequence'] == 4
        # Until the ledger naming it arrives an incident may show unverified; it settles.
        assert wait_until(lambda: s.get(srv.url + '/api/incidents', timeout=30).json()
                          ['items'][0]['verified'], 10), newest
