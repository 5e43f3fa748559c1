"""The field unit's budget: CPU and memory of every process of a real ``bodycam run``.

Starts ``bodycam run`` on simulated sensors (no portal: it is the agency's, not the unit's),
waits for warm-up, then samples every process of the run with psutil for ``--window``
seconds: CPU in cores (CPU time used over the window), RSS, and PSS from
``/proc/<pid>/smaps_rollup`` (shared pages split between the processes that map them, so
PSS adds up to what the unit really holds). Prints a table per node/process and the total,
for each mode (``--modes``): ``exec``, the split graph with every node started by
``python -m`` (the baseline, measured in the same run); ``split``, one process per node
forked from the preloaded supervisor (what ``bodycam run`` does); ``all`` and ``grouped``,
composed; with ratios against the first mode.

Cases (``--cases``, comma-separated):
  idle720    idle at 720p30, no incident                        (targets below)
  record720  recording, the uploader draining a sealed incident (capped at 250 kB/s so it
             lasts the window) and one live viewer on the fMP4 stream
  idle1080   idle at 1080p30
  patrol     the whole scripted patrol (~3.5 min): core-seconds per hour of patrol, the
             energy proxy (CPU time of every process from start to clean stop, per hour)

Targets (issue 14): idle720 <= 0.5 core and <= 300 MB PSS composed, <= 450 MB PSS split;
record720 <= 0.8 core composed.

Run: ``.venv/bin/python -m bench.budget [--window 60] [--warmup 130] [--cases idle720]
[--modes exec,split,all]``. CPU shares are of a shared machine: other load slows the camera
(fewer frames encoded, less CPU) and steals cycles; quote numbers from a quiet machine.
"""
from __future__ import annotations

import argparse
import http.cookiejar
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / 'src'          # --src: measure another checkout's code (a before/after pair)
TARGETS = {('idle720', 'all'): (0.5, 300.0), ('idle720', 'split'): (None, 450.0),
           ('record720', 'all'): (0.8, None)}
#: mode -> (``--composed`` spec, ``BODYCAM_SPAWN``). ``exec`` is the split graph with every
#: node started by ``python -m`` (each imports rclpy & co. itself): the baseline for ``split``,
#: whose nodes ``bodycam run`` forks from its preloaded self.
MODES = {'exec': (None, 'exec'), 'split': (None, 'fork'), 'all': ('all', 'fork'),
         'all-exec': ('all', 'exec'), 'grouped': ('sensors+fusion,recorder+uploader,rest', 'fork')}


def pss_mb(pid: int) -> float:
    """Proportional set size from smaps_rollup [MB] (0 if the process is gone)."""
    try:
        text = Path(f'/proc/{pid}/smaps_rollup').read_text()
    except OSError:
        return 0.0
    m = re.search(r'^Pss:\s+(\d+) kB', text, re.M)
    return int(m.group(1)) / 1024 if m else 0.0


def label(proc: psutil.Process) -> str:
    try:
        cmd = ' '.join(proc.cmdline())
    except psutil.Error:
        return '?'
    if m := re.search(r'bodycam_ros\.nodes\.(\w+)_node', cmd):
        return m.group(1)
    if m := re.search(r'bodycam_ros\.composed --nodes (\S+)', cmd):
        return m.group(1).replace(',', '+')
    if 'bodycam_ros.cli' in cmd or 'bin/bodycam' in cmd:
        return 'bringup (supervisor, status)'
    return os.path.basename(proc.name())


@dataclass
class Row:
    name: str
    cpu0: float
    cpu1: float = 0.0
    rss: list[float] = field(default_factory=list)
    pss: list[float] = field(default_factory=list)


def sample(root: psutil.Process, seconds: float, period_s: float = 1.0) -> dict[int, Row]:
    """CPU time at the start and end of the window, RSS/PSS every period (means)."""
    rows: dict[int, Row] = {}
    end = time.monotonic() + seconds
    while True:
        procs = [root] + root.children(recursive=True)
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu, rss = t.user + t.system, p.memory_info().rss / 2**20
            except psutil.Error:
                continue
            row = rows.setdefault(p.pid, Row(label(p), cpu))
            row.cpu1 = cpu
            row.rss.append(rss)
            row.pss.append(pss_mb(p.pid))
        if time.monotonic() >= end:
            return rows
        time.sleep(period_s)


def write_config(path: Path, width: int, height: int, fps: int, tmp: Path,
                 extra: dict | None = None) -> Path:
    doc = yaml.safe_load((ROOT / 'config' / 'sim.yaml').read_text())
    cam = doc['/**/camera']['ros__parameters']
    cam.update(width=width, height=height, fps=fps)
    doc['/**/live_view']['ros__parameters']['port'] = free_port()
    doc['/**/live_view']['ros__parameters']['token_file'] = str(tmp / 'live_token')
    doc['/**/dispatch_bridge']['ros__parameters']['cad_port'] = free_port()
    doc['/**/recorder']['ros__parameters']['min_free_bytes'] = 0
    doc['/**/uploader']['ros__parameters']['min_free_bytes'] = 0
    for section, values in (extra or {}).items():
        doc[section]['ros__parameters'].update(values)
    (tmp / 'live_token').write_text('budget-bench-token-0123456789abcdef\n')
    os.chmod(tmp / 'live_token', 0o600)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Run:
    """One ``bodycam run`` in a temporary directory with a DDS domain of its own."""

    def __init__(self, composed: str | None, config: Path, tmp: Path, domain: int,
                 extra_args: tuple[str, ...] = (), spawn: str = 'fork') -> None:
        self.env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', BODYCAM_SPAWN=spawn,
                        ROS_DOMAIN_ID=str(domain), ROS_HOME=str(tmp / 'ros'),
                        PYTHONPATH=os.pathsep.join(filter(None, [str(SRC),
                                                                 os.environ.get('PYTHONPATH')])))
        args = [sys.executable, '-m', 'bodycam_ros.cli', 'run', '--config', str(config),
                '--evidence-dir', str(tmp / 'evidence'), '--bucket', f'file://{tmp / "bucket"}',
                '--key-dir', str(tmp / 'keys'), '--agency', str(tmp / 'agency'),
                '--log-dir', str(tmp / 'logs'), *extra_args]
        if '--no-portal' in subprocess.run(args[:4] + ['--help'], capture_output=True,
                                           text=True, env=self.env).stdout:
            args.append('--no-portal')
        if composed:
            args += ['--composed', composed]
        self.out = tmp / 'run.out'
        self._out = open(self.out, 'w')
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=tmp)
        self.ps = psutil.Process(self.proc.pid)

    def output(self) -> str:
        return self.out.read_text()

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match | None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and self.proc.poll() is None:
            if m := re.search(pattern, self.output(), re.M):
                return m
            time.sleep(0.5)
        return re.search(pattern, self.output(), re.M)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', *args],
                              capture_output=True, text=True, env=self.env, timeout=timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
        try:
            code = self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._out.close()
        return code


def viewer(url: str, stop: threading.Event, got: list[int]) -> None:
    """One live viewer: the signed link for a session cookie, then the fMP4 stream."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(url, timeout=10).read()
    base = url.split('?')[0].rstrip('/')
    with opener.open(f'{base}/stream.mp4', timeout=10) as stream:
        while not stop.is_set():
            chunk = stream.read1(65536)
            if not chunk:
                return
            got[0] += len(chunk)


def measure(case: str, mode: str, args: argparse.Namespace, domain: int) -> dict[int, Row]:
    width, height = (1920, 1080) if case == 'idle1080' else (1280, 720)
    extra = {}
    if case == 'record720':
        extra = {'/**/recorder': {'post_event_s': 1.0},
                 '/**/uploader': {'bandwidth_bps': 250_000}}
    with tempfile.TemporaryDirectory(prefix=f'budget-{case}-{mode}-') as d:
        tmp = Path(d)
        config = write_config(tmp / 'unit.yaml', width, height, 30, tmp, extra)
        run_args = ('--quiet',) if case == 'patrol' else ()
        run_args += ('--scenario', 'patrol') if case == 'patrol' else ()
        composed, spawn = MODES[mode]
        run = Run(composed, config, tmp, domain, run_args, spawn)
        stop_view, got = threading.Event(), [0]
        try:
            if case == 'patrol':
                return _sample_until_exit(run)
            if not run.wait_for(r'^live view: (\S+)', 60):
                raise RuntimeError(f'{case}/{mode}: no start:\n{run.output()[-3000:]}')
            time.sleep(args.warmup)
            if case == 'record720':
                for action in ('start', 'stop', 'start'):
                    r = run.cli('trigger', action, '--timeout', '60')
                    if r.returncode != 0:
                        raise RuntimeError(f'trigger {action}: {r.stdout}{r.stderr}')
                    time.sleep(15.0 if action == 'start' else 4.0)
                url = re.search(r'^live view: (\S+)', run.output(), re.M).group(1)
                threading.Thread(target=viewer, args=(url, stop_view, got), daemon=True).start()
                time.sleep(3.0)
            rows = sample(run.ps, args.window)
            rates = re.findall(r'^camera/h264 ([\d.]+) Hz \| imu/data ([\d.]+) Hz',
                               run.output(), re.M)[-int(args.window):]
            if rates:    # a loaded machine encodes fewer frames, and spends less CPU on them
                print(f'  camera {statistics.fmean(float(c) for c, _ in rates):.1f} fps, '
                      f'imu {statistics.fmean(float(i) for _, i in rates):.1f} Hz '
                      '(status line, mean over the window)', flush=True)
            if case == 'record720':
                print(f'  ({mode}: viewer received {got[0] / 2**20:.1f} MB; '
                      f'{len(list((tmp / "bucket").rglob("*")))} bucket entries)', flush=True)
            return rows
        finally:
            stop_view.set()
            code = run.stop()
            if code != 0:
                print(f'  {case}/{mode}: bodycam run exited {code}', flush=True)


def _sample_until_exit(run: Run) -> dict[int, Row]:
    """Every process from start to the run's own end (the scripted patrol ends itself)."""
    rows: dict[int, Row] = {}
    while run.proc.poll() is None:
        for p in [run.ps] + run.ps.children(recursive=True):
            try:
                t = p.cpu_times()
                rows.setdefault(p.pid, Row(label(p), 0.0)).cpu1 = t.user + t.system
            except psutil.Error:
                continue
        time.sleep(0.5)
    rows[-1] = Row('wall', 0.0, time.monotonic() - run.t0)
    return rows


def table(rows: dict[int, Row], window: float) -> tuple[list[tuple], tuple]:
    by_name: dict[str, list[float]] = {}
    for r in rows.values():
        agg = by_name.setdefault(r.name, [0.0, 0.0, 0.0])
        agg[0] += (r.cpu1 - r.cpu0) / window
        agg[1] += statistics.fmean(r.rss) if r.rss else 0.0
        agg[2] += statistics.fmean(r.pss) if r.pss else 0.0
    lines = sorted(((n, *v) for n, v in by_name.items()), key=lambda x: -x[1])
    total = ('total', *(sum(x[i] for x in lines) for i in (1, 2, 3)))
    return lines, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--window', type=float, default=60.0)
    ap.add_argument('--warmup', type=float, default=130.0,
                    help='seconds before sampling; the default fills the 2-minute look-back, '
                         'which is part of the unit\'s steady state (~65 MB at 4 Mbit/s)')
    ap.add_argument('--cases', default='idle720,record720,idle1080,patrol')
    ap.add_argument('--modes', default='exec,split,all,grouped',
                    help=f'the first is the baseline of the ratios; any of {", ".join(MODES)}')
    ap.add_argument('--src', type=Path, default=SRC,
                    help='the src/ directory whose bodycam_ros to run (default this checkout)')
    args = ap.parse_args()
    globals()['SRC'] = args.src.resolve()
    domain = 150 + os.getpid() % 50
    print(f'bench.budget: window {args.window:g} s after {args.warmup:g} s warm-up, '
          f'{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}', flush=True)
    fails = []
    for case in args.cases.split(','):
        base: tuple | None = None
        base_mode = ''
        for mode in args.modes.split(','):
            composed, spawn = MODES[mode]
            what = f'composed {composed}' if composed else f'one process per node, {spawn}'
            print(f'\n== {case} / {mode} ({what})', flush=True)
            rows = measure(case, mode, args, domain)
            domain += 1
            if case == 'patrol':
                wall = rows.pop(-1).cpu1
                cpu_s = sum(r.cpu1 for r in rows.values())
                print(f'  patrol: {wall:.0f} s wall, {cpu_s:.0f} core-s -> '
                      f'{cpu_s / wall * 3600:.0f} core-s per hour of patrol '
                      f'({cpu_s / wall:.3f} cores mean)', flush=True)
                continue
            lines, total = table(rows, args.window)
            print(f'  {"process":<44} {"cores":>6} {"RSS MB":>8} {"PSS MB":>8}')
            for name, cpu, rss, pss in lines + [total]:
                print(f'  {name[:44]:<44} {cpu:6.3f} {rss:8.0f} {pss:8.0f}')
            if base is None:
                base, base_mode = total, mode
            else:
                print(f'  vs {base_mode}: cores {total[1] / base[1]:.2f}x, '
                      f'PSS {total[3] / base[3]:.2f}x')
            cpu_max, pss_max = TARGETS.get((case, mode), (None, None))
            for what, value, limit in (('cores', total[1], cpu_max), ('PSS MB', total[3], pss_max)):
                if limit is not None:
                    ok = value <= limit
                    print(f'  target {what} <= {limit:g}: {value:.3f} {"met" if ok else "MISSED"}')
                    if not ok:
                        fails.append(f'{case}/{mode} {what}')
    print('\nbench.budget: ' + ('all targets met' if not fails else 'missed: ' + ', '.join(fails)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
