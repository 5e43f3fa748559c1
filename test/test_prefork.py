"""``bodycam run`` forks the split graph's nodes from its preloaded self (issue 14).

What an operator checks: every node is still its own process, in its own session, named by
its own command line (``ps``, ``pkill -f``); it shares the preloaded pages with the
supervisor; a node killed with -9 is restarted (with ``python -m``: the supervisor runs
DDS by then) and publishes again; Ctrl-C stops everything with exit 0.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bodycam_ros import prefork

NODES = ('imu', 'gps', 'holster')
STATUS = re.compile(r'^(?:bodycam: final )?camera/h264 \S+ Hz \| imu/data (?P<imu>[\d.]+) Hz \| '
                    r'gps/fix (?P<gps>[\d.]+) Hz', re.M)


def _wait(pred, timeout_s: float, step_s: float = 0.2):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if value := pred():
            return value
        time.sleep(step_s)
    return pred()


def _nodes(sup: psutil.Process) -> dict[str, psutil.Process]:
    found = {}
    for p in sup.children():
        try:
            m = re.search(r'-m bodycam_ros\.nodes\.(\w+)_node --ros-args', ' '.join(p.cmdline()))
        except psutil.Error:
            continue
        if m:
            found[m.group(1)] = p
    return found


def _shared_dirty_mb(pid: int) -> float:
    text = Path(f'/proc/{pid}/smaps_rollup').read_text()
    return int(re.search(r'^Shared_Dirty:\s+(\d+) kB', text, re.M).group(1)) / 1024


def _steady(run, since: int) -> dict[str, str] | None:
    """A status line after offset ``since`` with the IMU at its rate and GPS fixes coming."""
    for m in STATUS.finditer(run.output()[since:]):
        if 90.0 <= float(m['imu']) <= 110.0 and float(m['gps']) >= 0.8:
            return m.groupdict()
    return None


def test_forked_nodes_share_the_preload_and_restart_by_exec(start_process, tmp_path: Path):
    logs = tmp_path / 'logs'
    run = start_process('bodycam_ros.cli', 'run', '--no-portal', '--nodes', ','.join(NODES),
                        '--log-dir', str(logs), env={prefork.SPAWN_ENV: 'fork'})
    assert _wait(lambda: _steady(run, 0), 60), run.output()
    sup = psutil.Process(run.proc.pid)
    nodes = _nodes(sup)
    assert set(nodes) == set(NODES), [p.cmdline() for p in sup.children()]
    forked = {}
    for name, p in nodes.items():
        cmd = ' '.join(p.cmdline())
        assert cmd.startswith(f'{sys.executable} -m bodycam_ros.nodes.{name}_node --ros-args '
                              '--params-file '), cmd
        assert os.getsid(p.pid) == p.pid != os.getsid(sup.pid)   # Ctrl-C reaches only us
        forked[name] = _shared_dirty_mb(p.pid)

    nodes['gps'].kill()
    assert _wait(lambda: 'gps: exited -9; restarting' in run.output(), 10), run.output()
    since = len(run.output())
    gps = _wait(lambda: _nodes(sup).get('gps'), 10)
    assert gps is not None and gps.pid != nodes['gps'].pid
    # Started again as `python -m` (the supervisor has DDS threads now: no fork), and fixes
    # flow again.
    assert gps.cmdline()[:3] == [sys.executable, '-m', 'bodycam_ros.nodes.gps_node']
    assert _wait(lambda: _steady(run, since), 30), run.output()[since:]
    execd = _shared_dirty_mb(gps.pid)
    # The forked nodes hold the supervisor's preloaded imports as shared pages; a node
    # started by exec shares only DDS's shared-memory segments.
    assert min(forked.values()) > 3 * execd + 4.0, (forked, execd)

    assert run.stop(signal.SIGINT, 60) == 0, run.output()
    out = run.output()
    assert 'bodycam: stopping' in out and 'unclean exits' not in out, out
    for name in NODES:
        log = (logs / f'{name}.log').read_text(errors='replace')
        assert 'SIGINT: stopping' in log and 'Traceback' not in log, log


def test_a_bad_spawn_mode_is_a_clear_error(tmp_path: Path):
    r = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'run', '--no-portal',
                        '--nodes', 'holster', '--log-dir', str(tmp_path)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, prefork.SPAWN_ENV: 'thread'})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "BODYCAM_SPAWN='thread': expected one of fork, exec" in r.stderr


def test_fork_refuses_what_it_cannot_start_as_a_node():
    try:
        prefork.fork([sys.executable, '-c', 'pass'], None)
    except prefork.SpawnError as exc:
        assert '[python, -m, module, ...]' in str(exc)
    else:
        raise AssertionError('fork of a non -m command line was accepted')
