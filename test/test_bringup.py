"""`bodycam run` as a user runs it: the whole graph on simulated sensors, over real DDS."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bodycam_ros import bringup
from bodycam_ros.commands.run import embedded_trust
from conftest import spin_until

STATUS = re.compile(r'camera/h264 (?P<cam>[\d.]+) Hz \| imu/data (?P<imu>[\d.]+) Hz \| '
                    r'gps/fix (?P<gps>[\d.]+) Hz \| holster (?P<holster>\S+)')


def _rates(output: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in STATUS.finditer(output)]


def _check_steady(out: str) -> None:
    # The last status lines hold 5 s windows of steady state.
    steady = _rates(out)[-3:]
    assert steady, f'no status line in:\n{out}'
    for r in steady:
        assert 27.0 <= float(r['cam']) <= 33.0, r       # config: fps 30
        assert 90.0 <= float(r['imu']) <= 110.0, r      # config: rate 100
        assert 0.8 <= float(r['gps']) <= 1.2, r         # 1 Hz receiver
        assert r['holster'] in ('holstered', 'DRAWN'), r
    assert 'unclean exits' not in out


def test_split_and_composed_runs_bring_up_every_node_at_its_rate(start_process, tmp_path: Path):
    """The split graph (a process per node) and, at the same time in a DDS domain of its own,
    the composed one (issue 14: `--composed all`, every node in one process): all nodes up
    at their rates, a clean stop. The rates come from the nodes' own diagnostics counters,
    so this also checks the status line without a video subscription."""
    split, composed = tmp_path / 'split', tmp_path / 'composed'
    runs = {}
    for d, extra, env in (
            (split, ('--portal-state', str(split / 'portal'), '--portal-port', '0'), None),
            (composed, ('--composed', 'all', '--no-portal'),
             {'ROS_DOMAIN_ID': str((int(os.environ['ROS_DOMAIN_ID']) + 101) % 232)})):
        runs[d] = start_process('bodycam_ros.cli', 'run', '--duration', '25',
                                '--evidence-dir', str(d / 'evidence'),
                                '--bucket', f'file://{d / "bucket"}', '--key-dir', str(d / 'keys'),
                                '--agency', str(d / 'agency'), '--log-dir', str(d / 'logs'),
                                *extra, env=env)
    for d, run in runs.items():
        assert run.proc.wait(90) == 0, run.output()
        _check_steady(run.output())

    out = runs[split].output()
    for name in bringup.NODES:
        assert name in out.splitlines()[0], f'{name} not started: {out.splitlines()[0]}'
    # The embedded default: a device key outside the evidence and a demo agency, made on
    # first use; --evidence-dir reached the recorder (it wins over the config file).
    assert (split / 'keys' / 'device_ed25519.pub').is_file()
    assert not (split / 'evidence' / 'keys').exists()
    assert (split / 'agency' / 'agency.json').is_file() and 'DEMO agency' in out
    assert (split / 'evidence' / 'ledger.jsonl').is_file()
    logs = list((split / 'logs').glob('*.log'))
    assert {p.stem for p in logs} == set(bringup.NODES)
    # The local portal (issue 12): its URL and first admin password, a child stopped cleanly.
    assert re.search(r'^portal: http://127\.0\.0\.1:\d+/$', out, re.M), out
    assert re.search(r'^portal: admin password: \S{12,}$', out, re.M), out
    assert (split / 'portal' / 'portal.db').is_file()

    logs = list((composed / 'logs').glob('*.log'))
    assert len(logs) == 1 and all(f'[{n}]' in logs[0].read_text() for n in bringup.NODES)


def test_overrides_win_over_the_config_file(tmp_path: Path):
    import yaml
    path = bringup.write_overrides(tmp_path / 'o.yaml', {'bucket': 'file:///x'}, ['uploader'])
    assert yaml.safe_load(path.read_text()) == \
        {'/**/uploader': {'ros__parameters': {'bucket': 'file:///x'}}}
    argv = bringup.node_argv('uploader', [Path('a.yaml'), path], 'unit_a')
    assert argv[-6:] == ['--params-file', 'a.yaml', '--params-file', str(path),
                         '-r', '__ns:=/unit_a']


def test_ctrl_c_stops_every_node_cleanly(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, '-m', 'bodycam_ros.cli', 'run', '--quiet',
                             '--nodes', 'imu,gps,holster', '--log-dir', str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(4.0)  # let the nodes come up; there is no topic to wait on from here
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert 'bodycam: stopping' in out and 'unclean exits' not in out


def test_ctrl_c_while_the_graph_is_still_starting_stops_cleanly(tmp_path: Path):
    """SIGINT right after the 'starting' line lands while children, the monitor and the
    portal are still coming up: it must stop what was started, exit 0, orphan nothing."""
    proc = subprocess.Popen([sys.executable, '-m', 'bodycam_ros.cli', 'run', '--quiet',
                             '--no-portal', '--nodes', 'imu,gps,holster',
                             '--log-dir', str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = proc.stdout.readline()
    assert first.startswith('bodycam: starting'), first
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, first + out
    assert 'bodycam: stopping' in out and 'unclean exits' not in out
    assert 'Traceback' not in out
    for node in ('imu', 'gps', 'holster'):
        log = (tmp_path / f'{node}.log').read_text(errors='replace')
        assert 'Traceback' not in log, log


def test_unknown_node_is_a_clear_error():
    r = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'run', '--nodes', 'camra'],
                       capture_output=True, text=True)
    assert r.returncode == 2 and 'unknown node(s) camra' in r.stderr


def test_supervisor_restarts_a_crashed_node(tmp_path: Path):
    child = bringup.Child('sleeper', [sys.executable, '-c', 'import time; time.sleep(60)'])
    sup = bringup.Supervisor([child], log_dir=tmp_path)
    sup.start()
    first = child.proc
    first.kill()
    first.wait()
    events = sup.poll()
    assert events == ['sleeper: exited -9; restarting']
    assert child.proc is not first and child.proc.poll() is None
    assert sup.stop()['sleeper'] is not None  # stopped, not left running


def test_supervisor_leaves_a_misconfigured_node_down(tmp_path: Path):
    child = bringup.Child('bad', [sys.executable, '-c', 'raise SystemExit(2)'])
    sup = bringup.Supervisor([child], log_dir=tmp_path)
    sup.start()
    child.proc.wait()
    assert 'configuration error' in sup.poll()[0]
    assert child.given_up and sup.poll() == []


# ---------------------------------------------------------------- shutdown, however it comes

def _wait(pred, timeout_s: float, step_s: float = 0.1) -> bool:
    end = time.monotonic() + timeout_s
    while not pred() and time.monotonic() < end:
        time.sleep(step_s)
    return bool(pred())


def test_sigint_while_messages_pour_in_exits_0_every_time(start_process, tmp_path: Path):
    """Issue 11.1: rclpy's KeyboardInterrupt landing inside ``take_message`` (while it builds
    the Python message) surfaced as ``RuntimeError: Unable to convert call argument '0'``
    and exit 1: 3 stops in 4 under this flood of 1000-value statuses on the old main. A
    stop must be clean whenever the signal comes."""
    import threading

    import rclpy
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
    from rclpy.context import Context

    from bodycam_ros.rosutil import SENSOR_QOS
    ctx = Context()
    rclpy.init(context=ctx)
    flood = rclpy.create_node('flood', context=ctx)
    pub = flood.create_publisher(DiagnosticStatus, 'recorder/status', SENSOR_QOS)
    msg = DiagnosticStatus(name='recorder', message='IDLE',
                           values=[KeyValue(key=f'k{i}', value=str(i)) for i in range(1000)])
    done = threading.Event()

    def pour() -> None:
        while not done.is_set():
            pub.publish(msg)

    pourer = threading.Thread(target=pour, daemon=True)
    pourer.start()
    try:
        argv = bringup.node_argv('trigger_fusion', [Path('config/sim.yaml')])
        for i in range(6):
            node = start_process(argv[2], *argv[3:])
            assert _wait(lambda: pub.get_subscription_count() > 0, 30), node.output()
            time.sleep(0.5 + 0.13 * i)           # in the thick of it, at varying phases
            code = node.stop(signal.SIGINT)
            assert code == 0 and 'Traceback' not in node.output(), \
                f'stop {i}: exit {code}\n{node.output()[-2500:]}'
    finally:
        done.set()
        pourer.join(5)
        flood.destroy_node()
        rclpy.try_shutdown(context=ctx)


@pytest.mark.parametrize('signals', ['sigint_twice', 'storm_during_close'])
def test_second_signal_during_shutdown_still_seals_and_uploads(start_process, tmp_path: Path,
                                                                signals: str):
    """Issue 11.2: ``ros2 launch`` with stdin not a terminal sends each node a second SIGINT,
    which landed in close(): exit -2, a KeyboardInterrupt traceback, the open incident left
    unsealed, nothing uploaded. Now: every node exits 0, the recorder seals, the uploader
    drains it. ``storm_during_close`` keeps sending SIGTERM and SIGINT every 20 ms until
    every node is gone, so some surely land inside close()."""
    evidence, bucket = tmp_path / 'evidence', tmp_path / 'bucket'
    # The device key and a demo agency with the unit registered, as `bodycam run` makes them.
    trust, _ = embedded_trust(tmp_path / 'agency', tmp_path / 'keys', Path('config/sim.yaml'),
                              evidence)
    overrides = bringup.write_overrides(tmp_path / 'overrides.yaml', {
        'evidence_dir': str(evidence), 'bucket': f'file://{bucket}', 'min_free_bytes': 0,
        'width': 320, 'height': 240, 'bitrate': 300000, 'raw_rate': 0.0,
        'status_period_s': 0.2, **trust})
    names = ('camera', 'trigger_fusion', 'recorder', 'uploader')
    procs = {}
    for name in names:
        argv = bringup.node_argv(name, [Path('config/sim.yaml'), overrides])
        procs[name] = start_process(argv[2], *argv[3:])
    trig = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'trigger', 'start',
                           '--timeout', '60'], capture_output=True, text=True, timeout=90)
    assert trig.returncode == 0, trig.stdout + trig.stderr
    recording = evidence / 'recording'
    assert _wait(lambda: any(recording.glob('*/video.mp4.age')), 30), \
        procs['recorder'].output()
    incident = next(recording.glob('*/video.mp4.age')).parent.name
    time.sleep(2.0)                                       # a few fragments into it

    for p in procs.values():
        p.proc.send_signal(signal.SIGINT)
    if signals == 'sigint_twice':
        time.sleep(0.01)
        for p in procs.values():
            p.proc.send_signal(signal.SIGINT)
    else:
        end, k = time.monotonic() + 40, 0
        while time.monotonic() < end and any(p.proc.poll() is None for p in procs.values()):
            for p in procs.values():
                if p.proc.poll() is None:
                    p.proc.send_signal(signal.SIGTERM if k % 2 else signal.SIGINT)
            k += 1
            time.sleep(0.02)
    for name, p in procs.items():
        code = p.stop(timeout_s=40)
        assert code == 0 and 'Traceback' not in p.output(), \
            f'{name} exited {code}:\n{p.output()[-2500:]}'
    assert not recording.exists() or not any(recording.iterdir())
    sealed = evidence / 'spool' / incident
    assert (sealed / 'manifest.sig').is_file()
    verify = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'verify', '--trust',
                             str(tmp_path / 'agency'), str(sealed)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    upload = json.loads((sealed / 'upload.json').read_text())
    assert upload['verified'] is True, upload


def test_live_view_waits_for_a_taken_port_and_logs_its_url(ctx, executor, start_process,
                                                           tmp_path: Path):
    """Issue 11.9: port in use was exit 2, and launch respawned live_view every 2 s forever;
    the URL with its token was printed only by ``bodycam run``. Now: an ERROR diagnostic and
    a retry, then the node logs a signed URL that opens the page."""
    import socket
    import urllib.error
    import urllib.request

    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.node import Node

    from bodycam_ros.rosutil import RELIABLE_QOS
    squatter = socket.socket()
    squatter.bind(('127.0.0.1', 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    diags: list[DiagnosticStatus] = []
    probe = Node('live_probe', context=ctx)
    probe.create_subscription(DiagnosticArray, '/diagnostics', lambda m: diags.extend(
        s for s in m.status if s.name.endswith('live_view')), RELIABLE_QOS)
    executor.add_node(probe)
    live = start_process('bodycam_ros.nodes.live_view_node', '--ros-args', '-p', f'port:={port}',
                         '-p', 'retry_s:=0.5', env={'BODYCAM_LIVE_TOKEN': 'x' * 32})
    assert spin_until(executor, lambda: any(d.level == DiagnosticStatus.ERROR for d in diags),
                      30), live.output()
    spin_until(executor, lambda: False, 3.0)
    assert live.proc.poll() is None, f'live_view exited {live.proc.returncode}:\n{live.output()}'
    assert f'127.0.0.1:{port}' in next(d.message for d in diags
                                       if d.level == DiagnosticStatus.ERROR)
    squatter.close()
    url_re = re.compile(rf'live view: (http://127\.0\.0\.1:{port}/\?\S*sig=\S+)')
    assert spin_until(executor, lambda: url_re.search(live.output()), 20), live.output()
    url = url_re.search(live.output()).group(1)
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with browser.open(url, timeout=10) as page:     # the signed link earns a session cookie
        assert page.status == 200 and b'<html' in page.read().lower()
    try:
        urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=10)
        raise AssertionError('the page opened without a token')
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    assert spin_until(executor, lambda: diags[-1].level != DiagnosticStatus.ERROR, 10)
    assert live.stop() == 0, live.output()



def test_status_line_rate_ignores_republished_counters():
    """A republished status (same count, stamped when sent) must not drag the rate down:
    composed in CI, the camera's republish and its report timer swapped order once and the
    status line read 25.0 fps for a 30 fps camera. A stalled counter reads 0 once stale."""
    from bodycam_ros.monitor import CounterRate
    meter = CounterRate(window_s=5.0, stale_s=3.0)
    t = 100.0
    for i in range(12):                        # a report each second at 30 fps ...
        meter.sample(30 * i, t + i, now=i)
        meter.sample(30 * i, t + i + 0.9, now=i + 0.9)     # ... republished 0.9 s later
    assert meter.rate(now=11.95) == pytest.approx(30.0)
    assert meter.rate(now=11.0 + 3.5) == 0.0   # nothing new for 3.5 s: stalled
