"""`bodycam run` as a user runs it: the whole graph on simulated sensors, over real DDS."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bodycam_ros import bringup

STATUS = re.compile(r'camera/h264 (?P<cam>[\d.]+) Hz \| imu/data (?P<imu>[\d.]+) Hz \| '
                    r'gps/fix (?P<gps>[\d.]+) Hz \| holster (?P<holster>\S+)')


def _rates(output: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in STATUS.finditer(output)]


def test_run_brings_up_every_node_at_its_rate(start_process, tmp_path: Path):
    run = start_process('bodycam_ros.cli', 'run', '--duration', '25',
                        '--evidence-dir', str(tmp_path / 'evidence'),
                        '--bucket', f'file://{tmp_path / "bucket"}',
                        '--log-dir', str(tmp_path / 'logs'))
    assert run.proc.wait(90) == 0, run.output()
    out = run.output()
    for name in bringup.NODES:
        assert name in out.splitlines()[0], f'{name} not started: {out.splitlines()[0]}'
    # The last status lines hold 5 s windows of steady state.
    steady = _rates(out)[-3:]
    assert steady, f'no status line in:\n{out}'
    for r in steady:
        assert 27.0 <= float(r['cam']) <= 33.0, r       # config: fps 30
        assert 90.0 <= float(r['imu']) <= 110.0, r      # config: rate 100
        assert 0.8 <= float(r['gps']) <= 1.2, r         # 1 Hz receiver
        assert r['holster'] in ('holstered', 'DRAWN'), r
    assert 'unclean exits' not in out
    # --evidence-dir reached the recorder (it wins over the config file): the device key
    # is made on its first start.
    assert (tmp_path / 'evidence' / 'keys' / 'device_ed25519.pub').is_file()
    logs = list((tmp_path / 'logs').glob('*.log'))
    assert {p.stem for p in logs} == set(bringup.NODES)


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
