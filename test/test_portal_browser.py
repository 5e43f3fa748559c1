"""The agency portal's pages in a real browser (Debian's headless Chromium), issue 12.

The recorder seals real encrypted incidents (test-pattern video, IMU, GPS fixes and velocity,
an officer-down alert) for a unit the test agency registered; the real uploader puts them into
a file:// bucket; ``bodycam portal`` runs as a user starts it (a subprocess) and indexes them.
Chromium logs in as admin through the login page and checks what a supervisor would see."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT
from test_live_view_browser import CHROMEDRIVER, CHROMIUM, chromium

SHOTS = Path(os.environ.get('BODYCAM_SHOTS', '/tmp/bodycam-portal-shots'))
FPS = 30
SECONDS = 10
START_S, STOP_S, ALERT_S = 4.0, 7.0, 5.5     # into each block of SECONDS

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()) and not os.environ.get('CI'),
    reason='Debian chromium + chromium-driver not installed (scripts/install-test-deps.sh)')


# ------------------------------------------------------------------ the evidence

def sensor_records(t: float, k: int):
    """What the recorder's sensor subscriptions would hand it at time ``t`` (frame ``k``):
    IMU every frame, a GPS fix and velocity every 10th frame (a walk around a block), the
    officer-down alert once."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
    from geometry_msgs.msg import TwistStamped
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Imu, NavSatFix, NavSatStatus

    from bodycam_ros.core.ring import SensorRecord

    def stamp(msg):
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int(t % 1 * 1e9)
        return msg
    s = (k % (SECONDS * FPS)) / FPS
    imu = stamp(Imu())
    tilt = math.radians(80.0 if s > ALERT_S else 10.0 + 5 * math.sin(s))   # down after the alert
    g = 9.81 + (6.0 * math.sin(9 * s) if START_S <= s <= ALERT_S else 0.3 * math.sin(3 * s))
    imu.linear_acceleration.x, imu.linear_acceleration.z = g * math.sin(tilt), g * math.cos(tilt)
    out = [SensorRecord(t, '/imu/data', 'sensor_msgs/msg/Imu', serialize_message(imu))]
    if k % 10 == 0:
        ang = s / SECONDS * 1.5 * math.pi
        fix = stamp(NavSatFix(latitude=38.5816 + 4e-4 * math.sin(ang),
                              longitude=-121.4944 + 5e-4 * (1 - math.cos(ang)), altitude=9.0))
        fix.status.status = NavSatStatus.STATUS_FIX
        vel = stamp(TwistStamped())
        vel.twist.linear.x = 1.5 + (2.5 if START_S <= s <= ALERT_S else 0.0)
        out += [SensorRecord(t, '/gps/fix', 'sensor_msgs/msg/NavSatFix', serialize_message(fix)),
                SensorRecord(t, '/gps/vel', 'geometry_msgs/msg/TwistStamped',
                             serialize_message(vel))]
    if abs(s - ALERT_S) < 0.5 / FPS:
        alert = DiagnosticStatus(level=DiagnosticStatus.ERROR, name='officer_down',
                                 message='OFFICER DOWN',
                                 values=[KeyValue(key='latitude', value='38.58')])
        out.append(SensorRecord(t, '/bodycam/alerts', 'diagnostic_msgs/msg/DiagnosticStatus',
                                serialize_message(alert)))
    return out


def record_incidents(base: Path, n: int, t0: float) -> None:
    """``n`` incidents: manual start at START_S, stop at STOP_S of each SECONDS block."""
    from test_evidence_trust import unit
    from test_mp4 import encode_clip

    from bodycam_ros.core import trust
    from bodycam_ros.core.spool import Command
    from portalutil import DEVICE, upload
    from spoolutil import agency_for
    agency, _, _ = agency_for(base)
    store, rec, signer = unit(base, pre_event_s=2.5, post_event_s=1.0)
    if trust.TrustStore.load(agency).lookup(DEVICE) is None:
        trust.register_device(agency, signer.public_key_bytes(), DEVICE, time.time(),
                              passphrase=b'')
    rec.start()
    block = SECONDS * FPS
    for i, p in enumerate(encode_clip(block * n, t0=t0)):
        rec.on_video(p)
        for r in sensor_records(p.t, i):
            rec.on_sensor(r)
        if i % block == int(START_S * FPS):
            rec.on_command(Command('start', 'manual', p.t, str(uuid.uuid4()), p.t))
        elif i % block == int(STOP_S * FPS):
            rec.on_command(Command('stop', 'manual', p.t, str(uuid.uuid4()), p.t))
        rec.tick(p.t)
    rec.close()
    assert rec.status().sealed == n, rec.events()
    upload(base, base / 'bucket')


@pytest.fixture(scope='module')
def recorded(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp('browser-unit')
    t = time.monotonic()
    record_incidents(base, 2, t0=1_700_000_000.0)
    print(f'recorded and uploaded 2 incidents in {time.monotonic() - t:.1f} s')
    return base


@pytest.fixture
def world(recorded, tmp_path) -> Path:
    for name in ('agency', 'bucket'):
        shutil.copytree(recorded / name, tmp_path / name)
    return tmp_path


class PortalProcess:
    """``bodycam portal`` as a user starts it: its printed URL and admin password."""

    def __init__(self, world: Path) -> None:
        env = {**os.environ, 'PYTHONPATH': str(ROOT / 'src'), 'PYTHONUNBUFFERED': '1'}
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'bodycam_ros.cli', 'portal', '--bucket',
             f'file://{world / "bucket"}', '--agency', str(world / 'agency'), '--state-dir',
             str(world / 'state'), '--port', '0', '--poll', '0.3'],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=world)
        self.lines: list[str] = []
        end = time.monotonic() + 60
        while time.monotonic() < end and not any('admin password' in ln for ln in self.lines):
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip('\n'))
        url = next((ln for ln in self.lines if ln.startswith('portal: http')), None)
        assert url and any('admin password' in ln for ln in self.lines), self.lines
        self.url = url.split(' ', 1)[1].rstrip('/')
        self.password = next(ln for ln in self.lines if 'admin password' in ln).split(': ')[-1]

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        out = self.proc.communicate(timeout=60)[0]
        assert self.proc.returncode == 0, out
        return out


@pytest.fixture
def portal(world):
    p = PortalProcess(world)
    yield p
    p.stop()


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


# ------------------------------------------------------------------ helpers

def wait(driver, js: str, timeout_s: float = 60.0, what: str = ''):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = driver.execute_script(js)
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f'timed out: {what or js}\n{driver.execute_script(ERRORS)}')


ERRORS = "const e = document.getElementById('error'); return e ? e.textContent : ''"


def log_in(driver, url: str, user: str, password: str) -> None:
    driver.get(url + '/')
    wait(driver, "return location.pathname === '/login' && document.readyState === 'complete' "
         "&& document.getElementById('user')", 20, 'sent to the login page')
    driver.find_element('id', 'user').send_keys(user)
    driver.find_element('id', 'password').send_keys(password)
    driver.find_element('id', 'submit').click()
    wait(driver, "return location.pathname === '/' && document.body.dataset.loaded", 30,
         'the incident list after login')


def listed(driver, n: int, timeout_s: float = 60.0) -> list[dict]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#incidents tbody tr')].map(r => ({"
            "id: r.dataset.incident, verified: r.dataset.verified, "
            "text: r.querySelector('.verification').textContent}))")
        if len(rows) >= n:
            return rows
        time.sleep(0.5)                   # the page refreshes itself every 10 s
        driver.refresh()
        wait(driver, 'return document.body.dataset.loaded', 30)
    raise AssertionError(f'fewer than {n} incidents listed')


def manifests(bucket: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in bucket.glob('*/*/*/manifest.json')}


def not_blank(png: bytes) -> float:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    return float(img.std())


FRAME = '''
const v = document.getElementById('video');
const c = document.createElement('canvas');
c.width = v.videoWidth; c.height = v.videoHeight;
c.getContext('2d').drawImage(v, 0, 0);
return c.toDataURL('image/png');
'''


def shot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    import base64
    h = driver.execute_script('return document.documentElement.scrollHeight')
    png = driver.execute_cdp_cmd('Page.captureScreenshot', {
        'format': 'png', 'captureBeyondViewport': True,
        'clip': {'x': 0, 'y': 0, 'width': 1400, 'height': h, 'scale': 1}})['data']
    path.write_bytes(base64.b64decode(png))
    return path


# ------------------------------------------------------------------ tests

def test_admin_lists_plays_seeks_and_sees_plots_track_words_and_audit(world, portal, browser):
    import base64
    driver = browser
    t0 = time.monotonic()
    log_in(driver, portal.url, 'admin', portal.password)
    rows = listed(driver, 2)
    m = manifests(world / 'bucket')
    newest = max(m.values(), key=lambda x: x['sequence'])
    assert [r['id'] for r in rows] == [newest['incident_id'],
                                       min(m.values(), key=lambda x: x['sequence'])['incident_id']]
    assert all(r['verified'] == 'true' and 'verified' in r['text'] and 'not' not in r['text']
               for r in rows), rows
    # Open the newest incident from the list.
    driver.find_element('css selector', f'tr[data-incident="{newest["incident_id"]}"] a').click()
    wait(driver, 'return document.body.dataset.ready', 60, 'incident page ready')
    # The video plays: time advances and the frame is not blank.
    driver.execute_script("document.getElementById('video').play()")
    first = wait(driver, "const v = document.getElementById('video'); "
                 "return v.currentTime > 0.3 && v.currentTime", 30, 'video playing')
    later = wait(driver, f"const v = document.getElementById('video'); "
                 f"return v.currentTime > {first} + 0.3 && v.currentTime", 30, 'time advancing')
    assert later > first
    frame = base64.b64decode(driver.execute_script(FRAME).split(',', 1)[1])
    assert not_blank(frame) > 10.0, 'the decoded frame is blank'
    label = driver.find_element('id', 'video-source').text
    assert 'full clip' in label and 'signed hashes' in label, label
    # Clicking the trigger seeks to event time - the video's first frame time.
    driver.execute_script("document.getElementById('video').pause()")
    trig = newest['triggers'][0]
    expected = trig.get('received_time', trig['time']) - newest['video']['first_stamp']
    assert 1.0 < expected < newest['video'].get('duration_s', 99), expected
    driver.execute_script("document.getElementById('video').currentTime = 0")
    driver.find_element('css selector', '#events button.trigger').click()
    got = wait(driver, "const v = document.getElementById('video'); "
               "return !v.seeking && v.currentTime > 0.5 && v.currentTime", 20, 'seek')
    assert abs(got - expected) < 0.15, (got, expected)
    # The same through the marker on the timeline, and the timeline holds the alert and stop.
    kinds = driver.execute_script("return [...document.querySelectorAll('#timeline g.event')]"
                                  ".map(g => g.getAttribute('class'))")
    assert {'event trigger', 'event stop', 'event alert'} <= set(kinds), kinds
    # Plots and the GPS track are drawn with points.
    pts = driver.execute_script(
        "return Object.fromEntries(['plot-speed', 'plot-accel', 'plot-tilt', 'track'].map(id => "
        "{const p = document.querySelector('#' + id + ' polyline'); "
        "return [id, p ? p.getAttribute('points').trim().split(/\\s+/).length : 0];}))")
    assert pts['plot-accel'] > 100 and pts['plot-tilt'] > 100, pts
    assert pts['plot-speed'] >= 10 and pts['track'] >= 10, pts
    scale = driver.find_element('css selector', '#track .scale-bar text').text
    assert scale.endswith(' m') or scale.endswith(' km'), scale
    # Verification in words.
    checks = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#checks li')].map(li => "
        "[li.dataset.check, li.className + ': ' + li.textContent]))")
    for key in ('signature', 'registered_device', 'chain_position', 'ledger'):
        assert checks[key].startswith('ok: '), checks
    assert 'holds' in checks['signature'] and 'registered key' in checks['signature'], checks
    assert 'sequence 2' in checks['chain_position'], checks
    assert driver.find_element('id', 'verdict').text.startswith('✓ Verified')
    custody = driver.execute_script("return [...document.querySelectorAll('#custody tbody tr')]"
                                    ".map(r => r.dataset.action)")
    assert 'sealed' in custody and 'uploaded' in custody and 'incident_view' in custody, custody
    assert driver.find_element('id', 'export').is_displayed()
    driver.execute_script('window.scrollTo(0, 0)')
    page = shot(driver, 'incident.png')
    assert not_blank(page.read_bytes()) > 10.0
    # The view and the playback appear in the audit log page.
    driver.get(portal.url + '/audit')
    wait(driver, 'return document.body.dataset.ready', 30, 'audit page')
    acts = driver.execute_script(
        "return [...document.querySelectorAll('#audit tbody tr')].map(r => "
        "[r.dataset.action, r.dataset.user, r.textContent])")
    mine = [a for a in acts if newest['incident_id'] in a[2] and a[1] == 'admin']
    assert {'incident_view', 'video'} <= {a[0] for a in mine}, acts
    assert 'hash chain intact' in driver.find_element('id', 'chain').text
    shot(driver, 'audit.png')
    print(f'browser flow {time.monotonic() - t0:.1f} s')


def test_a_tampered_incident_shows_not_verified_with_the_reason(world, portal, browser):
    driver = browser
    m = manifests(world / 'bucket')
    oldest = min(m.values(), key=lambda x: x['sequence'])
    target = next((world / 'bucket').glob(f'*/*/{oldest["incident_id"]}')) / 'video.mp4.age'
    log_in(driver, portal.url, 'admin', portal.password)
    listed(driver, 2)
    with open(target, 'r+b') as f:
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 0x01]))
    # The verification filter, as a user sets it in the form.
    from selenium.webdriver.support.ui import Select
    end = time.monotonic() + 60
    while True:
        Select(driver.find_element('id', 'f-verified')).select_by_value('false')
        driver.find_element('css selector', '#filters button[type=submit]').click()
        time.sleep(0.5)
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#incidents tbody tr')].map(r => "
            "[r.dataset.incident, r.querySelector('.verification').textContent])")
        if rows or time.monotonic() > end:
            break
    assert [r[0] for r in rows] == [oldest['incident_id']], rows
    assert 'not verified' in rows[0][1] and 'video.mp4.age' in rows[0][1], rows
    assert 'verified=false' in driver.current_url
    driver.find_element('css selector', f'tr[data-incident="{oldest["incident_id"]}"] a').click()
    wait(driver, 'return document.body.dataset.ready', 60, 'incident page ready')
    verdict = driver.find_element('id', 'verdict').text
    assert verdict.startswith('✗ Not verified') and 'SHA-256' in verdict, verdict
    files = driver.find_element('css selector', '#checks li[data-check="files"]')
    assert files.get_attribute('class') == 'bad' and 'FAILS' in files.text and \
        'video.mp4.age' in files.text, files.text
    wait(driver, "return document.getElementById('video-source').textContent"
         ".includes('video refused')", 30, 'the refused video says why')
    assert 'SHA-256' in driver.find_element('id', 'video-source').text
    shot(driver, 'tampered.png')



def reloaded(driver, before: str, what: str) -> str:
    """Wait until the list page has loaded again after ``before`` (its load stamp)."""
    return wait(driver, f"const l = document.body.dataset.loaded; return l && l !== '{before}' "
                "&& l", 30, what)


def rows_shown(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#incidents tbody tr')]"
                                 ".map(r => r.dataset.incident)")


def test_older_and_newer_follow_the_list_cursors(world, portal, browser):
    """The list pages with the API's keyset cursors: Older continues after the last row,
    Newer comes back, the filters and page size stay in the address bar."""
    driver = browser
    log_in(driver, portal.url, 'admin', portal.password)
    listed(driver, 2)
    m = sorted(manifests(world / 'bucket').values(), key=lambda x: -x['sequence'])
    driver.get(portal.url + '/?per_page=1&verified=true')
    stamp = wait(driver, 'return document.body.dataset.loaded', 30, 'first page')
    assert rows_shown(driver) == [m[0]['incident_id']]
    assert driver.find_element('id', 'page-info').text.startswith('page 1 of 2 · 2 incidents')
    assert not driver.find_element('id', 'prev').is_enabled()
    driver.find_element('id', 'next').click()
    stamp = reloaded(driver, stamp, 'the older page')
    assert rows_shown(driver) == [m[1]['incident_id']], rows_shown(driver)
    assert 'after=' in driver.current_url and 'verified=true' in driver.current_url
    assert driver.find_element('id', 'page-info').text.startswith('page 2 of 2')
    assert not driver.find_element('id', 'next').is_enabled()
    driver.find_element('id', 'prev').click()
    reloaded(driver, stamp, 'the newer page')
    assert rows_shown(driver) == [m[0]['incident_id']]
    assert 'after=' not in driver.current_url and 'before=' not in driver.current_url


def test_admin_creates_a_supervisor_who_cannot_see_users_or_audit(world, portal, browser):
    """The users page (admin API only): an admin creates a supervisor and sets a password;
    the supervisor logs in, has no Users or Audit link, and both pages refuse them."""
    driver = browser
    log_in(driver, portal.url, 'admin', portal.password)
    nav = driver.execute_script("return [...document.querySelectorAll('header nav a')]"
                                ".map(a => a.textContent)")
    assert 'Users' in nav and 'Audit log' in nav, nav
    driver.find_element('link text', 'Users').click()
    wait(driver, "return location.pathname === '/users' && document.body.dataset.ready", 30,
         'users page')
    users = lambda: driver.execute_script(  # noqa: E731
        "return Object.fromEntries([...document.querySelectorAll('#users tbody tr')]"
        ".map(r => [r.dataset.user, r.dataset.role]))")
    assert users() == {'admin': 'admin'}, users()
    from selenium.webdriver.support.ui import Select
    driver.find_element('id', 'new-user').send_keys('sue')
    Select(driver.find_element('id', 'new-role')).select_by_value('supervisor')
    driver.find_element('id', 'new-password').send_keys('short')
    driver.find_element('id', 'create-submit').click()      # the browser's minlength holds it
    driver.execute_script("document.getElementById('new-password').removeAttribute('minlength')")
    driver.find_element('id', 'create-submit').click()
    wait(driver, "return !document.getElementById('error').classList.contains('hidden')", 20,
         'the server refuses a short password')
    assert '10 characters' in driver.find_element('id', 'error').text
    pw = driver.find_element('id', 'new-password')
    pw.clear()
    pw.send_keys('sue-password-1')
    driver.find_element('id', 'create-submit').click()
    wait(driver, "return document.querySelector('#users tr[data-user=\"sue\"]')", 20,
         'sue listed')
    assert users() == {'admin': 'admin', 'sue': 'supervisor'}, users()
    assert 'created sue (supervisor)' in driver.find_element('id', 'notice').text
    row = driver.find_element('css selector', '#users tr[data-user="sue"]')
    row.find_element('css selector', 'input.new-password').send_keys('sue-password-2')
    row.find_element('css selector', 'button[type=submit]').click()
    wait(driver, "return document.getElementById('notice').textContent"
         ".includes('password of sue set')", 20, 'password set')
    shot(driver, 'users.png')
    driver.find_element('id', 'logout').click()
    wait(driver, "return location.pathname === '/login'", 20, 'logged out')
    log_in(driver, portal.url, 'sue', 'sue-password-2')
    assert driver.find_element('id', 'who').text == 'sue (supervisor)'
    nav = driver.execute_script("return [...document.querySelectorAll('header nav a')]"
                                ".map(a => a.textContent)")
    assert 'Users' not in nav and 'Audit log' not in nav, nav
    for path, words in (('/users', 'may not manage users'), ('/audit', 'may not read')):
        driver.get(portal.url + path)
        wait(driver, "return !document.getElementById('error').classList.contains('hidden')",
             20, f'{path} refuses a supervisor')
        assert words in driver.find_element('id', 'error').text
        assert not driver.execute_script(
            "return document.querySelectorAll('tbody tr').length"), path
    status = driver.execute_async_script(
        "const done = arguments[0]; Promise.all(['/api/users', '/api/audit'].map(p => "
        "fetch(p, {credentials: 'same-origin'}).then(r => r.status))).then(done)")
    assert status == [403, 403], status

def test_bodycam_run_incident_is_listed_verified_and_plays_in_its_portal(tmp_path, browser):
    """Issue 12, done when: after `bodycam run` the incident is listed verified in the portal
    the run started, its video plays in Chromium, and the view is in the audit log."""
    import re
    import threading
    import yaml
    cfg = yaml.safe_load((ROOT / 'config' / 'sim.yaml').read_text())
    cfg['/**/recorder']['ros__parameters'].update(pre_event_s=4.0, post_event_s=2.0)
    (tmp_path / 'sim.yaml').write_text(yaml.safe_dump(cfg))
    env = {**os.environ, 'PYTHONPATH': str(ROOT / 'src'), 'PYTHONUNBUFFERED': '1'}
    run = subprocess.Popen(
        [sys.executable, '-m', 'bodycam_ros.cli', 'run', '--quiet', '--duration', '300',
         '--config', str(tmp_path / 'sim.yaml'), '--evidence-dir', str(tmp_path / 'ev'),
         '--bucket', f'file://{tmp_path / "bucket"}', '--key-dir', str(tmp_path / 'keys'),
         '--agency', str(tmp_path / 'agency'), '--portal-state', str(tmp_path / 'portal'),
         '--portal-port', '0', '--log-dir', str(tmp_path / 'logs')],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
        start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(run.stdout), daemon=True)
    reader.start()

    def printed(pattern: str, timeout_s: float = 180.0) -> re.Match:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for ln in list(lines):
                if (m := re.match(pattern, ln)):
                    return m
            time.sleep(0.2)
        raise AssertionError(f'no {pattern!r} in:\n' + '\n'.join(lines))

    def trigger(what: str) -> None:
        r = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'trigger', what,
                            '--timeout', '120'], capture_output=True, text=True, env=env,
                           timeout=150, cwd=ROOT)
        assert r.returncode == 0, r.stdout + r.stderr

    try:
        url = printed(r'portal: (http://127\.0\.0\.1:\d+)/$').group(1)
        password = printed(r'portal: admin password: (\S+)$').group(1)
        trigger('start')
        time.sleep(5.0)
        trigger('stop')
        t0 = time.monotonic()
        log_in(browser, url, 'admin', password)
        rows = listed(browser, 1, timeout_s=120)
        print(f'stop to listed in the portal: {time.monotonic() - t0:.1f} s')
        assert rows[0]['verified'] == 'true', rows
        browser.find_element('css selector', f'tr[data-incident="{rows[0]["id"]}"] a').click()
        wait(browser, 'return document.body.dataset.ready', 90, 'incident page ready')
        browser.execute_script("document.getElementById('video').play()")
        wait(browser, "const v = document.getElementById('video'); return v.currentTime > 1.0",
             60, 'the run\'s video playing')
        assert [e for e in browser.execute_script(
            "return [...document.querySelectorAll('#events button')].map(b => b.className)")
            if e == 'trigger'], 'no trigger on the timeline'
        shot(browser, 'run-incident.png')
        browser.get(url + '/audit')
        wait(browser, 'return document.body.dataset.ready', 30, 'audit page')
        acts = browser.execute_script("return [...document.querySelectorAll('#audit tbody tr')]"
                                      ".map(r => r.dataset.action)")
        assert 'incident_view' in acts and 'video' in acts, acts
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(120)
        reader.join(10)
    out = '\n'.join(lines)
    assert run.returncode == 0 and 'unclean exits' not in out, out
