"""Composed mode: several nodes in one process, as `bodycam run --composed` and the `composed`
launch argument run them; a crashed group is restarted and the evidence survives."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from bodycam_ros import bringup
from conftest import ROOT


def test_groups_from_a_spec():
    names = list(bringup.NODES)
    assert bringup.parse_groups('all', names) == [tuple(bringup.close_order(names))]
    groups = bringup.parse_groups('sensors+fusion,recorder+uploader,rest', names)
    assert groups == [('camera', 'imu', 'gps', 'holster', 'trigger_fusion'),
                      ('recorder', 'uploader'), ('live_view', 'dispatch_bridge')]
    # Unnamed nodes without `rest` run alone; nodes not running are dropped.
    assert bringup.parse_groups('imu+gps', ['imu', 'gps', 'holster']) == \
        [('imu', 'gps'), ('holster',)]
    # The recorder stops after what feeds it, the uploader last, whatever the spec's order.
    assert bringup.parse_groups('uploader+recorder+camera', ['camera', 'recorder', 'uploader']) \
        == [('camera', 'recorder', 'uploader')]
    with pytest.raises(bringup.GroupError, match="'camra'"):
        bringup.parse_groups('camra+imu', names)
    with pytest.raises(bringup.GroupError, match="'imu' is in two groups"):
        bringup.parse_groups('sensors,imu', names)


def test_group_argv_never_renames_nodes():
    argv = bringup.group_argv(('recorder', 'uploader'), [Path('a.yaml')], 'unit_a')
    assert argv[1:5] == ['-m', 'bodycam_ros.composed', '--nodes', 'recorder,uploader']
    assert not any('__node' in a for a in argv) and argv[-2:] == ['-r', '__ns:=/unit_a']
    assert bringup.group_argv(('imu',), [Path('a.yaml')]) == bringup.node_argv('imu',
                                                                              [Path('a.yaml')])
    r = subprocess.run([sys.executable, '-m', 'bodycam_ros.composed', '--nodes', 'imu,gps',
                        '--ros-args', '-r', '__node:=x'], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and '__node:=' in r.stdout


def _config(tmp_path: Path) -> Path:
    """sim.yaml with a small camera (this machine is shared) and free ports."""
    doc = yaml.safe_load((ROOT / 'config' / 'sim.yaml').read_text())
    doc['/**/camera']['ros__parameters'].update(width=320, height=240, bitrate=300000,
                                                raw_rate=1.0)
    doc['/**/recorder']['ros__parameters'].update(min_free_bytes=0, status_period_s=0.2)
    doc['/**/uploader']['ros__parameters'].update(min_free_bytes=0)
    doc['/**/live_view']['ros__parameters'].update(port=0)
    doc['/**/dispatch_bridge']['ros__parameters'].update(cad_port=0)
    path = tmp_path / 'unit.yaml'
    path.write_text(yaml.safe_dump(doc))
    return path


def _wait(pred, timeout_s: float, step_s: float = 0.2):
    end = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value or time.monotonic() > end:
            return value
        time.sleep(step_s)


def test_kill_9_of_the_recorder_group_while_recording_loses_no_evidence(start_process,
                                                                        tmp_path: Path):
    """The group holding the recorder (and the uploader) dies by SIGKILL in the middle of an
    incident: the supervisor restarts the group, the restarted recorder recovers and seals
    the crash-left incident, `bodycam verify --trust` passes, and on Ctrl-C every node of
    every group closes cleanly."""
    evidence, agency = tmp_path / 'evidence', tmp_path / 'agency'
    run = start_process('bodycam_ros.cli', 'run', '--config', str(_config(tmp_path)),
                        '--composed', 'sensors+fusion,recorder+uploader,rest',
                        '--evidence-dir', str(evidence), '--bucket', f'file://{tmp_path / "b"}',
                        '--key-dir', str(tmp_path / 'keys'), '--agency', str(agency),
                        '--log-dir', str(tmp_path / 'logs'), '--no-portal')
    trig = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'trigger', 'start',
                           '--timeout', '90'], capture_output=True, text=True, timeout=120)
    assert trig.returncode == 0, trig.stdout + trig.stderr + run.output()
    recording = evidence / 'recording'
    assert _wait(lambda: any(recording.glob('*/video.mp4.age')), 60), run.output()
    incident = next(recording.glob('*/video.mp4.age')).parent.name
    time.sleep(3.0)                                         # a few fragments into it

    group = next(p for p in psutil.Process(run.proc.pid).children(recursive=True)
                 if 'composed --nodes recorder,uploader' in ' '.join(p.cmdline()))
    group.kill()
    assert _wait(lambda: 'recorder+uploader: exited -9; restarting' in run.output(), 30), \
        run.output()
    sealed = evidence / 'spool' / incident
    assert _wait(lambda: (sealed / 'manifest.sig').is_file(), 90), run.output()[-3000:]
    manifest = json.loads((sealed / 'manifest.json').read_text())
    assert manifest['recovered'] is True, manifest

    assert run.stop(signal.SIGINT, timeout_s=90) == 0, run.output()[-3000:]
    out = run.output()
    assert 'unclean exits' not in out, out[-3000:]
    logs = {p.name: p.read_text() for p in (tmp_path / 'logs').glob('*.log')}
    assert set(logs) == {'camera+imu+gps+holster+trigger_fusion.log', 'recorder+uploader.log',
                         'live_view+dispatch_bridge.log'}, set(logs)
    for name in bringup.NODES:                  # every node of every group stopped in order
        assert any(re.search(rf'\[{name}\]: SIGINT: stopping', t) for t in logs.values()), name
    verify = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'verify', '--trust',
                             str(agency), str(sealed)], capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.slow
def test_ros2_launch_composed_all_runs_every_node_in_one_process(ros2, tmp_path: Path):
    """The `composed` launch argument: `ros2 launch ... composed:=all` starts one
    composed_node process holding every node, each under its own name and params section,
    and Ctrl-C stops it with exit 0."""
    import test_launch
    params = test_launch._params(tmp_path)
    log = open(tmp_path / 'launch.log', 'w')
    launch = subprocess.Popen(ros2.argv('ros2', 'launch', 'bodycam_ros', 'sim.launch.py',
                                        f'params_file:={params}', 'composed:=all'),
                              stdout=log, stderr=subprocess.STDOUT, env=ros2.env,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def nodes() -> set[str]:
            r = ros2('ros2', 'node', 'list', '--no-daemon')
            return set(r.stdout.split())
        assert _wait(lambda: test_launch.NODE_NAMES <= nodes(), 120, 2.0), \
            (tmp_path / 'launch.log').read_text()[-3000:]
        text = (tmp_path / 'launch.log').read_text()
        assert len(re.findall(r'\[composed_node-\d+\]: process started', text)) == 1, text
        assert not re.search(r'\[\w+_node-\d+\]: process started', text.replace(
            'composed_node', '')), text
    finally:
        import os
        os.killpg(launch.pid, signal.SIGINT)
        code = launch.wait(90)
        log.close()
    text = (tmp_path / 'launch.log').read_text()
    assert code == 0 and 'process has finished cleanly' in text, text[-3000:]


def test_nodes_spin_the_events_executor_unless_told_otherwise(monkeypatch, ctx, start_process):
    """Issue 14: rclpy's EventsExecutor by default (``BODYCAM_EXECUTOR=single`` switches
    back); a wrong value is a clear exit 2 naming the variable, not a traceback."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.experimental import EventsExecutor  # noqa: F401  (Jazzy's rclpy has it)

    from bodycam_ros.rosutil import EXECUTOR_ENV, ParameterError, make_executor
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    assert type(make_executor(ctx)).__name__ == 'EventsExecutor'
    monkeypatch.setenv(EXECUTOR_ENV, 'single')
    assert isinstance(make_executor(ctx), SingleThreadedExecutor)
    monkeypatch.setenv(EXECUTOR_ENV, 'multi')
    with pytest.raises(ParameterError, match=EXECUTOR_ENV):
        make_executor(ctx)
    bad = start_process('bodycam_ros.nodes.holster_node', env={EXECUTOR_ENV: 'multi'})
    assert bad.proc.wait(60) == 2 and f"{EXECUTOR_ENV}='multi'" in bad.output(), bad.output()
