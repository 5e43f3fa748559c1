"""The fleet over real processes (issue 13): a real ``bodycam portal`` over TLS and a unit
graph subset from ``bodycam run --portal URL`` (test-pattern camera, GPS, holster sim,
trigger_fusion, recorder, portal_link) over Fast DDS on loopback.

The unit is listed online; its relayed live.mp4 decodes with ffprobe and two viewers cost
the unit one stream (its own byte counters); a weapon draw reaches /api/alerts within 2 s
and the dispatch webhook; a dispatch POST arrives on the unit's ``dispatch/destination``; a
unit registered with another agency is refused and audited; the portal killed and restarted:
the unit reconnects, and recording went on meanwhile.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import NavSatFix
from std_srvs.srv import SetBool

from bodycam_ros.core import keys, trust
from bodycam_ros.paths import config_file
from bodycam_ros.rosutil import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS
from portalutil import free_port
from webhook_receiver import Receiver, make_ca

DEVICE = 'fleet-unit'
pytestmark = pytest.mark.skipif(not shutil.which('ffprobe'), reason='ffprobe not installed')


def wait_until(pred, timeout_s: float = 30.0, step_s: float = 0.05):
    end = time.monotonic() + timeout_s
    while not (got := pred()) and time.monotonic() < end:
        time.sleep(step_s)
    return got


class Probe:
    """The test's own rclpy node, spun in a thread: the unit's diagnostics, recorder status,
    dispatch destination, and the holster sim's set_drawn service."""

    def __init__(self, ctx, executor) -> None:
        self.node = Node('fleet_probe', context=ctx)
        self.link: dict[str, str] = {}
        self.recorder: list[tuple[float, dict[str, str]]] = []
        self.dest: list[NavSatFix] = []
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._diag, RELIABLE_QOS)
        self.node.create_subscription(DiagnosticStatus, 'recorder/status', self._rec, SENSOR_QOS)
        self.node.create_subscription(NavSatFix, 'dispatch/destination', self.dest.append,
                                      LATCHED_QOS)
        self.set_drawn = self.node.create_client(SetBool, 'holster/set_drawn')
        executor.add_node(self.node)
        self._ex, self._stop = executor, threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self._ex.spin_once(timeout_sec=0.05)

    def _diag(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name == 'portal_link':            # not /foreign/portal_link
                self.link = {kv.key: kv.value for kv in st.values}

    def _rec(self, msg: DiagnosticStatus) -> None:
        self.recorder.append((time.time(), {kv.key: kv.value for kv in msg.values}))

    def draw(self, drawn: bool) -> None:
        assert self.set_drawn.wait_for_service(30.0), 'no holster/set_drawn service'
        fut = self.set_drawn.call_async(SetBool.Request(data=drawn))
        assert wait_until(fut.done, 10.0) and fut.result().success

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.node.destroy_node()


def _config(tmp_path: Path) -> Path:
    """sim.yaml with a smaller camera (a loaded CI machine encodes it in time) and a
    one-second GOP."""
    doc = yaml.safe_load(Path(config_file('sim.yaml')).read_text())
    doc['/**']['ros__parameters']['device_id'] = DEVICE
    doc['/**/camera']['ros__parameters'].update(width=640, height=360, fps=15, gop=15,
                                                bitrate=800000)
    path = tmp_path / 'unit.yaml'
    path.write_text(yaml.safe_dump(doc))
    return path


def _portal(start_process, tmp_path, agency, ca, port, hook):
    p = start_process('bodycam_ros.cli', 'portal', '--bucket', f'file://{tmp_path / "bucket"}',
                      '--agency', str(agency), '--state-dir', str(tmp_path / 'state'),
                      '--port', str(port), '--tls-cert', str(ca.cert_file),
                      '--tls-key', str(ca.key_file), '--link-heartbeat', '2',
                      '--dispatch-webhook', hook, '--allow-insecure-http')
    assert wait_until(lambda: 'portal: https://' in p.output(), 60), p.output()
    return p


def _ffprobe_frames(path: Path) -> int:
    out = subprocess.run(['ffprobe', '-v', 'error', '-count_frames', '-select_streams', 'v:0',
                          '-show_entries', 'stream=nb_read_frames,codec_name,width',
                          '-of', 'default=nw=1', str(path)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r'nb_read_frames=(\d+)', out.stdout)
    assert m and 'codec_name=h264' in out.stdout and 'width=640' in out.stdout, \
        out.stdout + out.stderr
    return int(m.group(1))


def test_fleet_end_to_end(start_process, tmp_path, ctx, executor):
    (tmp_path / 'bucket').mkdir()
    signer = keys.FileSigner.create(tmp_path / 'keys', DEVICE)
    agency = tmp_path / 'agency'
    trust.init_agency(agency, time.time(), name='our agency')
    trust.register_device(agency, signer.public_key_bytes(), DEVICE, time.time(),
                          passphrase=b'')
    other = tmp_path / 'other-agency'            # another agency's unit, its key registered
    trust.init_agency(other, time.time(), name='another agency')
    foreign = keys.FileSigner.create(tmp_path / 'foreign-keys', 'foreign-unit')
    trust.register_device(other, foreign.public_key_bytes(), 'foreign-unit', time.time(),
                          passphrase=b'')
    ca = make_ca(tmp_path / 'tls')
    hook = Receiver().start()
    port = free_port()
    url = f'https://127.0.0.1:{port}'
    portal = _portal(start_process, tmp_path, agency, ca, port, hook.url)
    password = re.search(r'admin password: (\S+)', portal.output()).group(1)
    probe = Probe(ctx, executor)
    unit = start_process(
        'bodycam_ros.cli', 'run', '--config', str(_config(tmp_path)), '--scenario', 'idle',
        '--nodes', 'camera,gps,holster,trigger_fusion,recorder', '--no-portal', '--quiet',
        '--portal', url, '--portal-ca-file', str(ca.ca_file),
        '--evidence-dir', str(tmp_path / 'evidence'), '--key-dir', str(tmp_path / 'keys'),
        '--agency', str(agency), '--log-dir', str(tmp_path / 'logs'))
    s = requests.Session()
    s.trust_env = False           # else REQUESTS_CA_BUNDLE wins over s.verify
    s.verify = str(ca.ca_file)
    r = s.post(url + '/api/login', json={'user': 'admin', 'password': password}, timeout=30)
    s.headers['X-CSRF-Token'] = r.json()['csrf']
    try:
        # -- listed online, over wss, with its state -----------------------------------------
        def unit_row():
            rows = {u['device_id']: u for u in s.get(url + '/api/units', timeout=10).json()}
            u = rows.get(DEVICE)
            # Position (gps) and storage (the recorder's status) arrive on their own clocks.
            return u if u and u['online'] and u['position'] and \
                u['storage'].get('free_bytes') is not None else None
        u = wait_until(unit_row, 120, 0.25)
        assert u, (unit.output()[-3000:], (tmp_path / 'logs' / 'portal_link.log').read_text()
                   if (tmp_path / 'logs' / 'portal_link.log').exists() else '')
        assert u['officer_id'] == 'sim-officer' and u['recording'] is False
        assert u['storage']['free_bytes'] > 0 and not u['streaming']
        assert wait_until(lambda: probe.link.get('connected') == 'True', 30), probe.link
        assert probe.link['url'].startswith('wss://') and probe.link['bytes_video'] == '0'

        # -- another agency's unit: refused, audited -----------------------------------------
        start_process('bodycam_ros.nodes.portal_link_node', '--ros-args', '-r',
                      '__ns:=/foreign', '-p', f'portal_url:={url}', '-p',
                      f'portal_ca_file:={ca.ca_file}', '-p',
                      f'key_dir:={tmp_path / "foreign-keys"}', '-p', 'device_id:=foreign-unit')

        def refused():
            rows = s.get(url + '/api/audit', params={'action': 'unit_refused'}, timeout=10)
            return [r for r in rows.json()['items']
                    if r['details'].get('device_id') == 'foreign-unit']
        rows = wait_until(refused, 60, 0.25)
        assert rows and rows[0]['status'] == 4401 and 'not registered' in \
            rows[0]['details']['reason'], rows
        assert 'foreign-unit' not in {u['device_id'] for u in s.get(url + '/api/units').json()}

        # -- two viewers, one stream from the unit -------------------------------------------
        got: dict[int, bytes] = {}

        def watch(i: int, seconds: float = 6.0) -> None:
            buf = bytearray()
            with s.get(f'{url}/api/units/{DEVICE}/live.mp4', stream=True, timeout=30) as resp:
                assert resp.status_code == 200, resp.text
                end = time.monotonic() + seconds
                for chunk in resp.iter_content(65536):
                    buf += chunk
                    if time.monotonic() > end:
                        break
            got[i] = bytes(buf)
        viewers = [threading.Thread(target=watch, args=(i,)) for i in (0, 1)]
        for t in viewers:
            t.start()
        both = wait_until(lambda: [x for x in s.get(url + '/api/units').json()
                                   if x['device_id'] == DEVICE and x['viewers'] == 2], 20)
        assert both, 'two viewers never watched at once'
        for t in viewers:
            t.join(60)
        for i, data in got.items():
            assert data[4:8] == b'ftyp', data[:16]
            (tmp_path / f'live{i}.mp4').write_bytes(data)
            assert _ffprobe_frames(tmp_path / f'live{i}.mp4') > 10
        # the unit streamed once: one generation, and it sent less than the viewers received
        assert wait_until(lambda: probe.link.get('streaming') == 'False', 20), probe.link
        sent = int(probe.link['bytes_video'])
        assert probe.link['generations'] == '1', probe.link
        assert 0 < sent < 0.75 * (len(got[0]) + len(got[1])), (sent, len(got[0]), len(got[1]))
        watched = s.get(url + '/api/audit', params={'action': 'live_view'}).json()['items']
        assert len(watched) == 2 and {r['details']['device_id'] for r in watched} == {DEVICE}

        # -- weapon drawn: an alert within 2 s, forwarded to the dispatch webhook ------------
        t0 = time.time()
        probe.draw(True)

        def drawn():
            return [a for a in s.get(url + '/api/alerts', timeout=10).json()
                    if a['kind'] == 'weapon_drawn' and a['unit_state'] == 'raised']
        alerts = wait_until(drawn, 10, 0.02)
        seen_after = time.time() - t0
        assert alerts, s.get(url + '/api/alerts').json()
        a = alerts[0]
        assert seen_after <= 2.0, f'alert shown {seen_after:.2f} s after the draw'
        assert a['device_id'] == DEVICE and a['officer_id'] == 'sim-officer'
        assert a['position'] and a['status'] == 'open' and a['time'] >= t0 - 1
        print(f'weapon drawn -> /api/alerts in {seen_after:.3f} s (unit->portal '
              f'{a["latency_s"]:.3f} s)')
        assert hook.wait_for(lambda got: any(g['body']['type'] == 'weapon_drawn'
                                             and g['body']['source'] == 'portal'
                                             for g in got), 15), hook.got
        r = s.post(f'{url}/api/alerts/{a["id"]}/ack', timeout=10)
        assert r.status_code == 200 and r.json()['ack_by'] == 'admin', r.text
        assert s.post(f'{url}/api/alerts/{a["id"]}/ack', timeout=10).status_code == 409
        acks = s.get(url + '/api/audit', params={'action': 'alert_ack'}).json()['items']
        assert acks and acks[0]['details']['alert_id'] == a['id']

        # -- the draw starts recording; the unit streams while it records --------------------
        assert wait_until(lambda: probe.link.get('streaming') == 'True', 30), probe.link
        assert wait_until(lambda: (unit_row() or {}).get('recording'), 20)

        # -- dispatch from the portal lands on dispatch/destination --------------------------
        r = s.post(f'{url}/api/units/{DEVICE}/dispatch',
                   json={'latitude': 40.758, 'longitude': -73.9855}, timeout=30)
        assert r.status_code == 200 and r.json()['delivered'], r.text
        assert wait_until(lambda: any(abs(d.latitude - 40.758) < 1e-9 and
                                      abs(d.longitude + 73.9855) < 1e-9 for d in probe.dest),
                          10), [(d.latitude, d.longitude) for d in probe.dest]
        assert s.post(f'{url}/api/units/{DEVICE}/dispatch', json={'latitude': 91,
                      'longitude': 0}, timeout=10).status_code == 400
        assert s.post(f'{url}/api/units/nobody/dispatch', json={'latitude': 1,
                      'longitude': 0}, timeout=10).status_code == 404

        # -- cut the link: kill the portal, restart it; the unit reconnects ------------------
        connects = int(probe.link['connects'])
        portal.proc.kill()
        portal.proc.wait(10)
        cut = time.time()
        assert wait_until(lambda: probe.link.get('connected') == 'False', 30), probe.link
        time.sleep(3.0)                                  # the unit is offline a while
        portal = _portal(start_process, tmp_path, agency, ca, port, hook.url)
        back = wait_until(lambda: int(probe.link.get('connects', 0)) > connects, 60, 0.2)
        assert back, (probe.link, (tmp_path / 'logs' / 'portal_link.log').read_text()[-2000:])
        assert wait_until(unit_row, 30)
        during = [v for t, v in probe.recorder if cut < t < cut + 3.0]
        assert during and all(v['state'] == 'RECORDING' for v in during), during[-3:]
        incident = during[-1]['incident_id']
        print('unit link counters:', {k: probe.link.get(k) for k in (
            'bytes_sent', 'bytes_video', 'bytes_state', 'bytes_heartbeat', 'idle_s', 'stream_s',
            'idle_bytes_per_hour', 'stream_bytes_per_minute', 'wire_bytes_sent')})
    finally:
        probe.close()
        assert unit.stop() == 0, unit.output()[-3000:]
        hook.stop()
    log = (tmp_path / 'logs' / 'portal_link.log').read_text()
    assert 'Traceback' not in log, log[-3000:]
    # recording went on while the portal was down: the sealed incident spans the cut
    import json
    manifest = json.loads((tmp_path / 'evidence' / 'spool' / incident / 'manifest.json')
                          .read_text())
    video = manifest['video']
    assert manifest['frame_count'] > 0 and video['first_stamp'] < cut, manifest
    assert video['last_stamp'] > cut + 3.0, video      # frames from the whole outage
