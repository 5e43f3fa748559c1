"""``bodycam report``: one incident as one offline HTML file (issue 12), opened from file://
in Debian's headless Chromium with the network switched off.

The evidence is real: the recorder seals encrypted incidents (video, IMU, GPS, an alert) for a
registered unit and the uploader puts them into a file:// bucket (test_portal_browser)."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from test_live_view_browser import CHROMEDRIVER, CHROMIUM, chromium
from test_portal_browser import FRAME, SHOTS, manifests, not_blank, record_incidents, wait

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()) and not os.environ.get('CI'),
    reason='Debian chromium + chromium-driver not installed (scripts/install-test-deps.sh)')


@pytest.fixture(scope='module')
def recorded(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp('report-unit')
    record_incidents(base, 2, t0=1_700_000_000.0)
    return base


def report(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, 'PYTHONPATH': str(ROOT / 'src')}
    t = time.monotonic()
    r = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'report', *args],
                       capture_output=True, text=True, env=env, timeout=120)
    print(f'bodycam report {args[0][-40:]}: {time.monotonic() - t:.1f} s')
    return r


@pytest.fixture
def offline(tmp_path):
    """Chromium with every network request failing (DevTools offline emulation)."""
    driver = chromium(tmp_path)
    driver.execute_cdp_cmd('Network.enable', {})
    driver.execute_cdp_cmd('Network.emulateNetworkConditions', {
        'offline': True, 'latency': 0, 'downloadThroughput': -1, 'uploadThroughput': -1})
    yield driver
    driver.quit()


def no_external_reference(html: str) -> None:
    refs = re.findall(r'''(?:src|href|url)\s*[=(]\s*["']?([^"')\s>]+)''', html)
    assert not [r for r in refs if re.match(r'(https?:)?//', r)], refs


def open_report(driver, path: Path) -> None:
    driver.get(path.as_uri())
    wait(driver, 'return document.body.dataset.ready', 30, 'report ready')


def plays(driver) -> float:
    driver.execute_script("document.getElementById('video').play()")
    first = wait(driver, "const v = document.getElementById('video'); "
                 "return v.currentTime > 0.3 && v.currentTime", 30, 'video playing')
    return wait(driver, f"const v = document.getElementById('video'); "
                f"return v.currentTime > {first} + 0.3 && v.currentTime", 30, 'time advancing')


def drawn(driver) -> dict[str, int]:
    return driver.execute_script(
        "return Object.fromEntries(['plot-speed', 'plot-accel', 'plot-tilt', 'track'].map(id => "
        "{const p = document.querySelector('#' + id + ' polyline'); "
        "return [id, p ? p.getAttribute('points').trim().split(/\\s+/).length : 0];}))")


def test_a_bucket_incident_is_one_file_that_plays_offline(recorded, tmp_path, offline):
    m = manifests(recorded / 'bucket')
    newest = max(m.values(), key=lambda x: x['sequence'])
    inc = next((recorded / 'bucket').glob(f'*/*/{newest["incident_id"]}'))
    out = tmp_path / 'view' / 'incident.html'
    r = report(f'file://{inc}', '--agency', str(recorded / 'agency'), '--out', str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f'{newest["incident_id"]} verified' in r.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ['incident.html']   # one file
    assert out.stat().st_mode & 0o777 == 0o600
    html = out.read_text()
    no_external_reference(html)
    assert '<script src=' not in html and '<link ' not in html    # all inline
    driver = offline
    open_report(driver, out)
    assert plays(driver) > 0.6
    frame = base64.b64decode(driver.execute_script(FRAME).split(',', 1)[1])
    assert not_blank(frame) > 10.0
    assert driver.execute_script('return document.getElementById("video").src')\
        .startswith('blob:')
    kinds = driver.execute_script("return [...document.querySelectorAll('#timeline g.event')]"
                                  ".map(g => g.getAttribute('class'))")
    assert {'event trigger', 'event stop', 'event alert'} <= set(kinds), kinds
    driver.execute_script("const v = document.getElementById('video'); v.pause(); "
                          "v.currentTime = 0")
    driver.find_element('css selector', '#events button.trigger').click()
    trig = newest['triggers'][0]
    expected = trig.get('received_time', trig['time']) - newest['video']['first_stamp']
    got = wait(driver, "const v = document.getElementById('video'); "
               "return !v.seeking && v.currentTime > 0.5 && v.currentTime", 20, 'seek')
    assert abs(got - expected) < 0.15, (got, expected)
    pts = drawn(driver)
    assert pts['plot-accel'] > 100 and pts['plot-tilt'] > 100, pts
    assert pts['plot-speed'] >= 10 and pts['track'] >= 10, pts
    assert driver.find_element('id', 'verdict').text.startswith('✓ Verified')
    assert 'holds' in driver.find_element('css selector', '#checks li[data-check="ledger"]').text
    assert 'Offline report' in driver.find_element('id', 'report-banner').text
    assert not driver.find_element('id', 'export').is_displayed()
    # Nothing was fetched but the page itself and the blob it made.
    names = driver.execute_script("return performance.getEntriesByType('resource')"
                                  ".map(e => e.name)")
    assert all(n.startswith(('blob:', 'data:', 'file:')) for n in names), names
    SHOTS.mkdir(parents=True, exist_ok=True)
    h = driver.execute_script('return document.documentElement.scrollHeight')
    png = driver.execute_cdp_cmd('Page.captureScreenshot', {
        'format': 'png', 'captureBeyondViewport': True,
        'clip': {'x': 0, 'y': 0, 'width': 1400, 'height': h, 'scale': 1}})['data']
    (SHOTS / 'report.png').write_bytes(base64.b64decode(png))


def test_a_big_video_is_linked_beside_the_report_and_plays(recorded, tmp_path, offline):
    spool = recorded / 'ev' / 'spool'
    inc = sorted(spool.iterdir())[0]
    out = tmp_path / 'r.html'
    r = report(str(inc), '--agency', str(recorded / 'agency'), '--out', str(out),
               '--embed-max-mb', '0')
    assert r.returncode == 0, r.stdout + r.stderr       # the unit's ledger sits beside spool/
    video = tmp_path / 'r.video.mp4'
    m = json.loads((inc / 'manifest.json').read_text())
    import hashlib
    assert hashlib.sha256(video.read_bytes()).hexdigest() == \
        m['files']['video.mp4.age']['plaintext']['sha256']
    html = out.read_text()
    assert '"href": "r.video.mp4"' in html and '"base64"' not in html
    assert video.stat().st_mode & 0o777 == 0o600
    open_report(offline, out)
    assert offline.execute_script('return document.getElementById("video").src')\
        .endswith('/r.video.mp4')
    assert plays(offline) > 0.6


def test_a_tampered_or_unvouched_incident_reports_not_verified_with_the_reason(
        recorded, tmp_path, offline):
    alone = tmp_path / 'alone'
    src = sorted((recorded / 'ev' / 'spool').iterdir())[0]
    shutil.copytree(src, alone / src.name)
    out = tmp_path / 'alone.html'
    r = report(str(alone / src.name), '--agency', str(recorded / 'agency'), '--out', str(out))
    assert r.returncode == 1 and 'no_ledger' in r.stderr, r.stdout + r.stderr
    open_report(offline, out)
    verdict = offline.find_element('id', 'verdict').text
    assert verdict.startswith('✗ Not verified') and 'no ledger.jsonl' in verdict, verdict
    assert 'bodycam-report-' not in out.read_text()        # no staging path leaks into it
    # A flipped byte: not verified, named, and the video is refused, not played.
    bucket = tmp_path / 'bucket'
    shutil.copytree(recorded / 'bucket', bucket)
    inc = next(p for p in bucket.glob('*/*/*') if p.name == src.name)
    with open(inc / 'video.mp4.age', 'r+b') as f:
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 0x01]))
    out = tmp_path / 'tampered.html'
    r = report(f'file://{inc}', '--agency', str(recorded / 'agency'), '--out', str(out))
    assert r.returncode == 1 and 'video.mp4.age' in r.stderr, r.stdout + r.stderr
    open_report(offline, out)
    files = offline.find_element('css selector', '#checks li[data-check="files"]')
    assert files.get_attribute('class') == 'bad' and 'SHA-256' in files.text, files.text
    assert 'video refused' in offline.find_element('id', 'video-source').text


def test_bad_inputs_exit_2_naming_them(recorded, tmp_path):
    r = report(str(tmp_path / 'nowhere'), '--agency', str(recorded / 'agency'))
    assert r.returncode == 2 and 'nowhere' in r.stderr
    r = report(str(tmp_path), '--agency', str(tmp_path / 'no-agency'))
    assert r.returncode == 2 and 'no-agency' in r.stderr
    r = report('s3://b/unit-t/2024-01-01/x', '--agency', str(recorded / 'agency'))
    assert r.returncode == 2 and 's3://' in r.stderr
