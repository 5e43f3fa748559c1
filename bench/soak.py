"""Soak benchmark: an 8-hour shift compressed into minutes, with everything going wrong.

The whole unit runs as ``bodycam run`` (every node its own process, the supervisor restarts
the dead) on simulated sensors without a script, uploading to a real S3 API server (moto,
versioned bucket, so a second write of any key is a second version) through a TCP proxy.
Time is compressed: 10 s look-back, 5 s post-roll, a 640x360 camera. Meanwhile, from
outside the graph, at random (seeded) times:

* the officer presses start/stop over the ``bodycam/*_recording`` services, or draws and
  holsters the weapon (``holster/set_drawn``), every 20-40 s;
* a random node is SIGKILLed every 60-90 s (recorder and uploader first, then all the others);
* the network is cut: random connection resets (mid-request and after the server acted) all
  the time, plus outage windows in which every connection dies;
* the disk fills up: the evidence directory sits on a small tmpfs (root only) and a filler
  file takes every free byte for a window.

Every node process is sampled every 5 s (RSS, open fds, CPU) and so is the disk. At the end
the graph is stopped with SIGINT, the spool drained with ``bodycam upload --once``, the bucket
checked with ``bodycam verify --trust``, and the unit's signed ledger and audit log compared
with what the bucket holds:

* lost: an incident the recorder opened or sealed that is neither verified in the bucket nor
  still on the unit, or that is there but holds no evidence at all (must be 0);
* duplicated: an incident object written more than once (more than one version; the ledger
  and audit copies are rewritten by design and not counted) (must be 0);
* RSS slope per node in MB/h (least squares within each process lifetime, after warm-up),
  max open fds, the disk high-water mark, and how many kills, cuts, outages, full-disk
  windows and triggers there were.

Exit 1 when anything was lost or duplicated or the bucket does not verify.

    .venv/bin/python -m bench.soak [--minutes 10] [--seed 1]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / 'src'), str(ROOT / 'test')]

MiB = 1024 * 1024
BUCKET = 'soak'
NODES = ('camera', 'imu', 'gps', 'holster', 'trigger_fusion', 'recorder', 'uploader',
         'live_view', 'dispatch_bridge')
#: Rewritten after every incident by design: many versions are expected.
MUTABLE_KEYS = ('ledger.jsonl', 'audit.jsonl')
SUPERVISOR = '(bodycam run)'


@dataclass
class Plan:
    """What happens and how often (seconds of compressed shift)."""
    minutes: float = 10.0
    seed: int = 1
    trigger_every: tuple[float, float] = (20.0, 40.0)
    hold: tuple[float, float] = (5.0, 30.0)
    draw_p: float = 0.25
    kill_every: tuple[float, float] = (60.0, 90.0)
    outage_every: tuple[float, float] = (120.0, 200.0)
    outage_len: tuple[float, float] = (15.0, 45.0)
    full_every: tuple[float, float] = (150.0, 240.0)
    full_len: tuple[float, float] = (20.0, 40.0)
    cut_per_mib: float = 0.3
    reply_cut_p: float = 0.002
    sample_s: float = 5.0
    warmup_s: float = 60.0
    disk_mib: int = 96
    width: int = 640
    height: int = 360
    fps: int = 15
    bitrate: int = 1_000_000
    pre_event_s: float = 10.0
    post_event_s: float = 5.0


class SoakError(RuntimeError):
    """The soak could not be set up or the graph did not come up (names what)."""


# -- the network ---------------------------------------------------------------------------------
def outage_proxy(upstream: tuple[str, int], plan: Plan):
    """A FaultProxy (random resets) that also cuts every connection during an outage."""
    from s3util import FaultProxy

    class OutageProxy(FaultProxy):
        outage = False
        outage_cuts = 0

        def _should_cut(self, n: int, up: bool) -> bool:
            if self.outage:
                self.outage_cuts += 1
                return True
            return super()._should_cut(n, up)

    return OutageProxy(upstream, cut_per_mib=plan.cut_per_mib, reply_cut_p=plan.reply_cut_p,
                       seed=plan.seed)


# -- the disk ------------------------------------------------------------------------------------
class Disk:
    """The evidence directory on a tmpfs of ``size_mib`` (root), else a plain directory."""

    def __init__(self, base: Path, size_mib: int) -> None:
        self.mount = base / 'disk'
        self.mount.mkdir(mode=0o700)
        self.mounted = False
        self.note = ''
        if os.geteuid() == 0:
            r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size_mib}m,mode=0700',
                                'tmpfs', str(self.mount)], capture_output=True, text=True)
            self.mounted = r.returncode == 0
            if not self.mounted:
                self.note = f'no tmpfs ({r.stderr.strip()}): no full-disk windows'
        else:
            self.note = 'not root: no tmpfs, no full-disk windows'
        self.evidence = self.mount / 'evidence'
        self.filler = self.mount / 'filler.bin'
        self.full_windows = 0
        self.full_s = 0.0
        self.evidence_hw = self.fs_hw = 0
        self._full_since: float | None = None

    def used(self) -> int:
        """Bytes used on the filesystem (filler included)."""
        st = os.statvfs(self.mount)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def evidence_bytes(self) -> int:
        """Bytes the evidence directory takes (allocated blocks)."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.evidence):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    def sample(self) -> None:
        """Track the high-water marks (the filesystem's only outside full-disk windows)."""
        self.evidence_hw = max(self.evidence_hw, self.evidence_bytes())
        if self.mounted and not self.full:
            self.fs_hw = max(self.fs_hw, self.used())

    def fill(self) -> int:
        """Take every free byte; returns how many were taken."""
        if not self.mounted or self._full_since is not None:
            return 0
        n = 0
        block = b'\0' * MiB
        with open(self.filler, 'wb', buffering=0) as f:
            for size in (MiB, 4096, 1):
                chunk = block[:size]
                while True:
                    try:
                        f.write(chunk)
                        n += size
                    except OSError:
                        break
        self.full_windows += 1
        self._full_since = time.monotonic()
        return n

    def free_up(self) -> None:
        if self._full_since is None:
            return
        self.filler.unlink(missing_ok=True)
        self.full_s += time.monotonic() - self._full_since
        self._full_since = None

    @property
    def full(self) -> bool:
        return self._full_since is not None

    def close(self) -> None:
        self.free_up()
        if self.mounted:
            subprocess.run(['umount', '-l', str(self.mount)], check=False)
            self.mounted = False


# -- the officer ---------------------------------------------------------------------------------
@dataclass
class OfficerLog:
    starts: int = 0          # manual starts accepted
    draws: int = 0           # weapon draws accepted by the holster
    stops: int = 0           # stops accepted
    refused: int = 0         # stops refused (weapon drawn, officer down)
    unanswered: int = 0      # calls that got no answer in time (node killed, restarting)
    given_up: int = 0        # a stop never accepted within its deadline
    recording: bool = False
    events: list[tuple[float, str]] = field(default_factory=list)


class Officer(threading.Thread):
    """Presses the buttons from outside the graph, over the same services as
    ``bodycam trigger``, with its own rclpy context (only this thread touches it)."""

    def __init__(self, plan: Plan, done: threading.Event, namespace: str = '') -> None:
        super().__init__(name='officer', daemon=True)
        self.plan = plan
        self.done = done
        self.namespace = namespace
        self.rng = random.Random(plan.seed * 7919 + 1)
        self.log = OfficerLog()
        #: header stamps of every camera/h264 message this process received
        self.stamps: list[float] = []
        #: set once the graph is down: stop listening
        self.quit = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported in the table
            self.error = exc

    def _run(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        from std_srvs.srv import SetBool, Trigger

        from bodycam_ros.commands.trigger import SERVICES

        from sensor_msgs.msg import CompressedImage

        from bodycam_ros.rosutil import VIDEO_QOS

        ctx = Context()
        rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node('soak_officer', namespace=self.namespace, context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        # The baseline for "frames missing from an incident": what the camera published.
        node.create_subscription(
            CompressedImage, 'camera/h264',
            lambda m: self.stamps.append(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9),
            VIDEO_QOS)

        def wait(seconds: float) -> bool:
            """Spin (camera stamps keep coming) for ``seconds``; True when told to stop."""
            end = time.monotonic() + seconds
            while not self.done.is_set() and time.monotonic() < end:
                ex.spin_once(timeout_sec=min(0.1, max(0.0, end - time.monotonic())))
            return self.done.is_set()
        start = node.create_client(Trigger, SERVICES['start'])
        stop = node.create_client(Trigger, SERVICES['stop'])
        draw = node.create_client(SetBool, 'holster/set_drawn')

        def call(client, req) -> bool | None:
            """True/False: accepted/refused; None: nobody answered in time."""
            if not client.wait_for_service(timeout_sec=5.0):
                return None
            fut = client.call_async(req)
            ex.spin_until_future_complete(fut, timeout_sec=10.0)
            if not fut.done() or fut.result() is None:
                return None
            return bool(fut.result().success)

        def until_accepted(client, req, what: str, deadline_s: float) -> bool:
            end = time.monotonic() + deadline_s
            while not self.done.is_set() and time.monotonic() < end:
                ok = call(client, req)
                if ok:
                    self.log.events.append((time.time(), what))
                    return True
                if ok is None:
                    self.log.unanswered += 1
                else:
                    self.log.refused += 1
                wait(2.0)
            return False

        try:
            while not wait(self.rng.uniform(*self.plan.trigger_every)):
                hold = self.rng.uniform(*self.plan.hold)
                if self.rng.random() < self.plan.draw_p:
                    if not until_accepted(draw, SetBool.Request(data=True), 'draw', 30.0):
                        continue
                    self.log.draws += 1
                    self.log.recording = True
                    wait(hold)
                    until_accepted(draw, SetBool.Request(data=False), 'holster', 60.0)
                    wait(0.5)                              # the holster's debounce
                else:
                    if not until_accepted(start, Trigger.Request(), 'start', 30.0):
                        continue
                    self.log.starts += 1
                    self.log.recording = True
                    wait(hold)
                if self.done.is_set():
                    break
                if until_accepted(stop, Trigger.Request(), 'stop', 60.0):
                    self.log.stops += 1
                    self.log.recording = False
                elif not self.done.is_set():
                    self.log.given_up += 1
            while not self.quit.is_set():        # camera stamps until the graph is down
                ex.spin_once(timeout_sec=0.1)
        finally:
            ex.shutdown()
            node.destroy_node()
            rclpy.try_shutdown(context=ctx)


# -- sampling ------------------------------------------------------------------------------------
@dataclass
class Sample:
    t: float          # seconds since the run started
    pid: int
    rss: int
    fds: int
    cpu: float        # percent of one core since the last sample of this pid


class Sampler:
    """RSS, fds and CPU of every node process (children of ``bodycam run``) and of the
    supervisor itself, by node name and process lifetime."""

    def __init__(self, run_pid: int, t0: float) -> None:
        import psutil
        self._psutil = psutil
        self.run = psutil.Process(run_pid)
        self.t0 = t0
        self.samples: dict[str, list[Sample]] = {}
        self.started: dict[int, float] = {}     # pid -> first seen (s since t0)
        self._procs: dict[int, object] = {}

    def nodes(self) -> dict[str, object]:
        """Live node processes by name."""
        out = {}
        try:
            children = self.run.children()
        except self._psutil.Error:
            return out
        for p in children:
            try:
                cmd = p.cmdline()
            except self._psutil.Error:
                continue
            # Joined: a node forked by `bodycam run` has its command line as one process
            # title (setproctitle), not as separate arguments.
            if m := re.search(r'-m bodycam_ros\.nodes\.(\w+)_node\b', ' '.join(cmd)):
                out[m.group(1)] = p
        return out

    def sample(self) -> None:
        now = time.monotonic() - self.t0
        procs = dict(self.nodes())
        procs[SUPERVISOR] = self.run
        for name, p in procs.items():
            cached = self._procs.setdefault(p.pid, p)
            try:
                with cached.oneshot():
                    # a node's own helpers count as the node; the supervisor is only itself
                    tree = [cached] + (cached.children(recursive=True)
                                       if name != SUPERVISOR else [])
                    rss = sum(q.memory_info().rss for q in tree)
                    fds = sum(q.num_fds() for q in tree)
                    cpu = cached.cpu_percent(None)
            except self._psutil.Error:
                continue
            self.started.setdefault(p.pid, now)
            self.samples.setdefault(name, []).append(Sample(now, p.pid, rss, fds, cpu))


def pooled_slope(samples: list[Sample], started: dict[int, float],
                 warmup_s: float) -> tuple[float | None, float]:
    """Least-squares RSS slope [MB/h] within each process lifetime after its warm-up, pooled
    (each lifetime keeps its own offset: a restart is not a leak), and the seconds covered."""
    by_pid: dict[int, list[Sample]] = {}
    for s in samples:
        if s.t - started.get(s.pid, s.t) >= warmup_s:
            by_pid.setdefault(s.pid, []).append(s)
    num = den = covered = 0.0
    for run in by_pid.values():
        if len(run) < 3:
            continue
        mt = sum(s.t for s in run) / len(run)
        mr = sum(s.rss for s in run) / len(run)
        num += sum((s.t - mt) * (s.rss - mr) for s in run)
        den += sum((s.t - mt) ** 2 for s in run)
        covered += run[-1].t - run[0].t
    if den <= 0:
        return None, covered
    return num / den * 3600 / 1e6, covered


# -- the chaos schedule --------------------------------------------------------------------------
def schedule(plan: Plan, duration_s: float) -> list[tuple[float, str, float]]:
    """(time, what, length) of every kill, outage and full-disk window, from the seed."""
    rng = random.Random(plan.seed)
    events: list[tuple[float, str, float]] = []
    t = rng.uniform(*plan.kill_every) / 2
    while t < duration_s - 20:
        events.append((t, 'kill', 0.0))
        t += rng.uniform(*plan.kill_every)
    for what, every, length in (('outage', plan.outage_every, plan.outage_len),
                                ('full', plan.full_every, plan.full_len)):
        t = rng.uniform(*every) / 2
        while t < duration_s - 30:
            n = rng.uniform(*length)
            events.append((t, what, min(n, duration_s - 20 - t)))
            t += n + rng.uniform(*every)
    return sorted(events)


def kill_order(seed: int) -> Callable[[], str]:
    """Recorder and uploader first (the ones that hold evidence), then every node in a fresh
    random order, again and again."""
    rng = random.Random(seed * 31 + 5)
    queue = ['recorder', 'uploader']

    def nxt() -> str:
        if not queue:
            rest = list(NODES)
            rng.shuffle(rest)
            queue.extend(rest)
        return queue.pop(0)
    return nxt


# -- the unit's own account ----------------------------------------------------------------------
def read_log(path: Path, kind: str) -> list:
    """The entries of a signed log (ledger or audit); signatures are checked by verify."""
    from bodycam_ros.core.signedlog import parse_line, split_lines
    try:
        lines, _tail = split_lines(path.read_bytes())
    except FileNotFoundError:
        return []
    out = []
    for i, raw in enumerate(lines, 1):
        try:
            out.append(parse_line(raw, kind, i))
        except Exception as exc:  # noqa: BLE001 - a damaged line is itself a finding
            out.append(exc)
    return out


def coverage(client, stamps: list[float], fps: float) -> tuple[list[dict], list[str]]:
    """What each incident in the bucket holds, from its signed manifest, against what the
    camera published (``stamps``, received by the officer's node): frames the camera sent
    inside the incident's video span that are not in it (``missing``), before its first
    frame within the look-back (``head``), after its last frame within the post-roll
    (``tail``). Returns the rows and a finding for each incident that lost more than a
    second of video."""
    import bisect
    stamps = sorted(stamps)

    def between(a: float, b: float, lo_open: bool = False) -> int:
        lo = bisect.bisect_right(stamps, a) if lo_open else bisect.bisect_left(stamps, a)
        return max(0, bisect.bisect_right(stamps, b) - lo)

    rows, findings = [], []
    for page in client.get_paginator('list_objects_v2').paginate(Bucket=BUCKET):
        for o in page.get('Contents', []):
            if not o['Key'].endswith('/manifest.json'):
                continue
            m = json.loads(client.get_object(Bucket=BUCKET, Key=o['Key'])['Body'].read())
            v = m.get('video') or {}
            frames = v.get('frame_count') if v.get('frame_count') is not None \
                else v.get('frames_synced')
            first, last = v.get('first_stamp'), v.get('last_stamp')
            trig = [t['time'] for t in m.get('triggers') or [] if 'time' in t]
            stops = [t['time'] for t in m.get('stops') or [] if 'time' in t]
            pre, post = m.get('pre_event_s') or 0.0, m.get('post_event_s') or 0.0
            row = {'incident_id': m.get('incident_id'), 'sequence': m.get('sequence'),
                   'reasons': sorted({str(t.get('reason')) for t in m.get('triggers') or []}),
                   'end_reason': m.get('end_reason'), 'recovered': m.get('recovered'),
                   'frames': frames, 'published': None, 'missing': None, 'head': None,
                   'tail': None,
                   'span_s': (last - first) if first is not None and last is not None
                   else None,
                   'incomplete_files': sorted(n for n, f in (m.get('files') or {}).items()
                                              if f.get('complete') is False),
                   # sealed, signed and uploaded, but holding no evidence at all
                   'hollow': not any(_holds_data(f) for f in (m.get('files') or {}).values())}
            if first is not None and last is not None and stamps:
                row['published'] = between(first, last)
                row['missing'] = max(0, row['published'] - (frames or 0))
                if trig:
                    row['head'] = between(min(trig) - pre, first - 1e-6)
                if stops and row['end_reason'] == 'post_roll':
                    row['tail'] = between(last, max(stops) + post, lo_open=True)
            rows.append(row)
            if row['hollow']:
                findings.append(f'incident {row["incident_id"]} (seq {row["sequence"]}, '
                                f'{row["end_reason"]}) was sealed with no evidence in it: '
                                f'files {_sizes(m)}, triggers {m.get("triggers")}')
            lost_frames = (row['missing'] or 0) + (row['tail'] or 0)
            if lost_frames > fps:
                findings.append(
                    f'incident {row["incident_id"]} (seq {row["sequence"]}, '
                    f'{row["end_reason"]}): {lost_frames} of the camera\'s frames '
                    f'({lost_frames / fps:.1f} s) are not in it: {row["missing"]} inside its '
                    f'{row["span_s"]:.1f} s span, {row["tail"] or 0} of its post-roll')
    rows.sort(key=lambda r: r['sequence'] or 0)
    return rows, findings


def _holds_data(entry: dict) -> bool:
    """A manifest file entry with at least one payload byte (an age file: a whole chunk)."""
    if entry.get('scheme') == 'age-v1' or 'chunks' in entry:
        return bool(entry.get('chunks'))
    return bool(entry.get('size'))


def _sizes(m: dict) -> dict[str, int]:
    return {n: f.get('size') for n, f in (m.get('files') or {}).items()}


def duplicates(s3) -> tuple[dict[str, int], int]:
    """Incident objects written more than once (stored versions, and successful
    PutObject/CompleteMultipartUpload requests the server saw), and all such writes."""
    duplicated = {k: n for k, n in s3.versions(BUCKET).items()
                  if n > 1 and not k.endswith(MUTABLE_KEYS)}
    writes: dict[str, int] = {}
    for r in s3.log(BUCKET):
        if r.op in ('PutObject', 'CompleteMultipartUpload') and 200 <= r.status < 300 and \
                not r.key.endswith(MUTABLE_KEYS):
            writes[r.key] = writes.get(r.key, 0) + 1
    for k, n in writes.items():
        if n > 1:
            duplicated[k] = max(duplicated.get(k, 0), n)
    return duplicated, sum(writes.values())


def node_stats(sampler: Sampler, kills: dict[str, int],
               warmup_s: float) -> dict[str, dict[str, float | int | None]]:
    """Per node: kills, lifetimes, RSS (first, last, max, slope), fds, mean CPU."""
    nodes: dict[str, dict[str, float | int | None]] = {}
    for name in (*NODES, SUPERVISOR):
        ss = sampler.samples.get(name, [])
        if not ss:
            continue
        slope, covered = pooled_slope(ss, sampler.started, warmup_s)
        nodes[name] = {
            'kills': kills.get(name, 0),
            'lifetimes': len({s.pid for s in ss}),
            'rss_first_mb': ss[0].rss / 1e6, 'rss_last_mb': ss[-1].rss / 1e6,
            'rss_max_mb': max(s.rss for s in ss) / 1e6,
            'rss_slope_mb_h': slope, 'slope_covered_s': covered,
            'fds_max': max(s.fds for s in ss), 'fds_last': ss[-1].fds,
            'cpu_mean_pct': sum(s.cpu for s in ss[1:]) / max(1, len(ss) - 1),
        }
    return nodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def write_config(path: Path, plan: Plan, endpoint: str, creds: Path) -> None:
    """config/sim.yaml with the shift compressed and the uploader pointed at the proxy."""
    import yaml
    doc = yaml.safe_load((ROOT / 'config' / 'sim.yaml').read_text())

    def section(node: str) -> dict:
        return doc.setdefault(f'/**/{node}', {}).setdefault('ros__parameters', {})
    section('camera').update(width=plan.width, height=plan.height, fps=plan.fps,
                             gop=plan.fps, bitrate=plan.bitrate, raw_rate=1.0)
    floor = max(MiB, plan.disk_mib * MiB // 12)
    section('recorder').update(pre_event_s=plan.pre_event_s, post_event_s=plan.post_event_s,
                               max_buffer_bytes=20_000_000, min_free_bytes=floor)
    section('uploader').update(
        endpoint_url=endpoint, allow_insecure_http=True, region='us-east-1',
        credentials_file=str(creds), object_lock_mode='off', part_size=5 * MiB,
        multipart_threshold=5 * MiB, max_backoff_s=15.0,
        # disk pressure: verified incidents go (oldest first) below a third of the disk free
        min_free_bytes=plan.disk_mib * MiB // 3)
    section('live_view').update(port=free_port())
    section('dispatch_bridge').update(cad_port=0)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# -- the run -------------------------------------------------------------------------------------
@dataclass
class Report:
    minutes: float
    seed: int
    lost: list[str]
    duplicated: dict[str, int]
    bucket_ok: bool
    bucket_problems: list[str]
    counts: dict[str, int | float]
    nodes: dict[str, dict[str, float | int | None]]
    disk: dict[str, int | float | str]
    findings: list[str]
    work: str
    incidents: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.duplicated or not self.bucket_ok)


def run(plan: Plan, work: Path, echo: Callable[[str], None] = print,
        keep_evidence: bool = False) -> Report:
    from s3util import ACCESS_KEY, SECRET_KEY, S3Server, credentials_file

    # A DDS domain of our own (tests use 1-200), set before this process loads rclpy.
    os.environ.setdefault('ROS_DOMAIN_ID', str(201 + os.getpid() % 31))
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT / 'src'),
                                                      env.get('PYTHONPATH')]))
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['ROS_HOME'] = str(work / 'ros_home')
    env['ROS_LOG_DIR'] = str(work / 'ros_home' / 'log')
    env.pop('AWS_ACCESS_KEY_ID', None)
    env.pop('AWS_SECRET_ACCESS_KEY', None)
    duration = plan.minutes * 60.0
    findings: list[str] = []

    s3 = S3Server()
    s3.create_bucket(BUCKET, versioning=True)
    proxy = outage_proxy(('127.0.0.1', s3.port), plan)
    creds = credentials_file(work / 'credentials', ACCESS_KEY, SECRET_KEY)
    disk = Disk(work, plan.disk_mib)
    if disk.note:
        echo(f'soak: {disk.note}')
    config = work / 'soak.yaml'
    write_config(config, plan, proxy.url, creds)
    logs = work / 'logs'
    keys, agency = work / 'keys', work / 'agency'
    out = open(work / 'run.out', 'wb')
    argv = [sys.executable, '-m', 'bodycam_ros.cli', 'run', '--config', str(config),
            '--evidence-dir', str(disk.evidence), '--bucket', f's3://{BUCKET}',
            '--log-dir', str(logs), '--key-dir', str(keys), '--agency', str(agency),
            '--no-portal', '--quiet']
    echo(f'soak: {plan.minutes:g} min, seed {plan.seed}, work dir {work}')
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
    t0 = time.monotonic()
    done = threading.Event()
    officer = Officer(plan, done)
    sampler = Sampler(proc.pid, t0)
    events = schedule(plan, duration)
    ends: list[tuple[float, str]] = []
    next_kill = kill_order(plan.seed)
    kills: dict[str, int] = {}
    outages = 0
    stop_code: int | None = None
    try:
        # Wait for the graph before the shift begins (a loaded machine starts slowly).
        deadline = time.monotonic() + 120
        while len(sampler.nodes()) < len(NODES):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SoakError(f'the graph did not come up: {sorted(sampler.nodes())} of '
                                f'{NODES}; see {work / "run.out"} and {logs}')
            time.sleep(0.5)
        officer.start()
        t0 = sampler.t0 = time.monotonic()
        next_sample = 0.0
        last_report = 0.0
        while True:
            now = time.monotonic() - t0
            if now >= duration:
                break
            if proc.poll() is not None:
                findings.append(f'bodycam run exited early with {proc.returncode} at '
                                f'{now:.0f} s')
                break
            while ends and ends[0][0] <= now:
                _, what = ends.pop(0)
                if what == 'outage':
                    proxy.outage = False
                else:
                    disk.free_up()
            while events and events[0][0] <= now:
                _, what, length = events.pop(0)
                if what == 'kill':
                    name = next_kill()
                    p = sampler.nodes().get(name)
                    if p is None:                 # restarting: the next one instead
                        events.insert(0, (now + 3.0, 'kill', 0.0))
                        continue
                    os.kill(p.pid, signal.SIGKILL)
                    kills[name] = kills.get(name, 0) + 1
                    echo(f'soak: {now:5.0f} s  kill -9 {name} (pid {p.pid})'
                         f'{" while recording" if officer.log.recording else ""}')
                elif what == 'outage':
                    proxy.outage = True
                    outages += 1
                    echo(f'soak: {now:5.0f} s  network outage for {length:.0f} s')
                elif what == 'full' and disk.mounted:
                    n = disk.fill()
                    echo(f'soak: {now:5.0f} s  disk full for {length:.0f} s '
                         f'(filler {n / MiB:.1f} MiB)')
                if what != 'kill':
                    ends.append((now + length, what))
                    ends.sort()
            if now >= next_sample:
                sampler.sample()
                disk.sample()
                next_sample = now + plan.sample_s
            if now - last_report >= 60:
                last_report = now
                echo(f'soak: {now:5.0f} s  starts {officer.log.starts} draws '
                     f'{officer.log.draws} stops {officer.log.stops}  uploads '
                     f'{s3.count(BUCKET, "PutObject", ok=True)} puts  cuts {proxy.cuts}')
            time.sleep(0.2)
    finally:
        done.set()
        proxy.outage = False
        disk.free_up()
        if proc.poll() is None:
            echo('soak: stopping the graph (SIGINT)')
            proc.send_signal(signal.SIGINT)
            try:
                stop_code = proc.wait(180)
            except subprocess.TimeoutExpired:
                findings.append('bodycam run did not stop within 180 s of SIGINT; killed')
                proc.kill()
                proc.wait()
                for p in sampler.nodes().values():
                    p.kill()
        else:
            stop_code = proc.returncode
        out.close()
        officer.quit.set()
        if officer.is_alive():     # not started if the graph never came up
            officer.join(30)
    run_out = (work / 'run.out').read_text(errors='replace')
    if stop_code not in (0, None):
        findings.append(f'bodycam run exited {stop_code}: ' + ' | '.join(
            line for line in run_out.splitlines() if 'unclean' in line or 'leaving' in line))
    for line in run_out.splitlines():
        if 'leaving it down' in line or 'configuration error' in line:
            findings.append(f'supervisor: {line.strip()}')
    if officer.error is not None:
        findings.append(f'officer thread failed: {officer.error!r}')

    # Drain what is left, straight to the server (the network is back).
    up = subprocess.run(
        [sys.executable, '-m', 'bodycam_ros.cli', 'upload', '--once', '--quiet',
         '--bucket', f's3://{BUCKET}', '--endpoint-url', s3.url, '--allow-insecure-http',
         '--region', 'us-east-1', '--credentials-file', str(creds), '--object-lock-mode',
         'off', '--part-size', '5', '--evidence-dir', str(disk.evidence),
         '--key-dir', str(keys)], env=env, cwd=work, capture_output=True, text=True,
        timeout=600)
    (work / 'upload-once.out').write_text(up.stdout + up.stderr)
    if up.returncode != 0:
        findings.append(f'bodycam upload --once exited {up.returncode}: '
                        f'{(up.stdout + up.stderr).strip().splitlines()[-3:]}')
    ver = subprocess.run(
        [sys.executable, '-m', 'bodycam_ros.cli', 'verify', f's3://{BUCKET}', '--trust',
         str(agency), '--endpoint-url', s3.url, '--allow-insecure-http', '--region',
         'us-east-1', '--credentials-file', str(creds), '--json'],
        env=env, cwd=work, capture_output=True, text=True, timeout=600)
    (work / 'verify.json').write_text(ver.stdout + ver.stderr)
    try:
        verdict = json.loads(ver.stdout)
    except ValueError:
        verdict = {'ok': False, 'devices': [], 'problems': [
            f'verify exited {ver.returncode} without JSON: {ver.stderr.strip()[-300:]}']}

    # The unit's own account against the bucket's.
    from bodycam_ros.core import audit as audit_mod
    from bodycam_ros.core import ledger as ledger_mod
    from bodycam_ros.core.spool.layout import QUARANTINE, RECORDING, SPOOL
    ev = disk.evidence
    ledger = read_log(ev / ledger_mod.LEDGER_FILE, ledger_mod.KIND)
    audit = read_log(ev / audit_mod.AUDIT_FILE, audit_mod.KIND)
    for e in ledger + audit:
        if isinstance(e, Exception):
            findings.append(f'unreadable log line: {e}')
    ledger = [e for e in ledger if not isinstance(e, Exception)]
    audit = [e for e in audit if not isinstance(e, Exception)]
    sealed = {e.data.get('incident_id') for e in ledger if e.event in ledger_mod.SEALS}
    recovered = {e.data.get('incident_id') for e in ledger if e.event == ledger_mod.RECOVERED}
    pruned = {e.data.get('incident_id') for e in ledger if e.event == ledger_mod.PRUNED}
    opened = {e.data.get('incident_id') for e in audit if e.event == 'incident_opened'}
    on_unit = {p.name for p in (ev / SPOOL).glob('*') if p.is_dir()} \
        if (ev / SPOOL).is_dir() else set()
    unsealed = {p.name for p in (ev / RECORDING).glob('*') if p.is_dir()} \
        if (ev / RECORDING).is_dir() else set()
    quarantined = {p.name.removesuffix('.json') for p in (ev / QUARANTINE).glob('*')} \
        if (ev / QUARANTINE).is_dir() else set()
    in_bucket: set[str] = set()
    bad_in_bucket: set[str] = set()
    for dev in verdict.get('devices', []):
        for inc in dev.get('incidents', []):
            (in_bucket if inc.get('ok') else bad_in_bucket).add(inc.get('incident_id'))
    missing = (sealed - in_bucket - on_unit) | (opened - sealed - quarantined - unsealed)
    pending = sorted(sealed - in_bucket)
    if pending:
        findings.append(f'sealed but not verified in the bucket after the drain: {pending}')
    if unsealed:
        findings.append(f'left unsealed in recording/ after the stop: {sorted(unsealed)}')
    if quarantined:
        findings.append(f'quarantined: {sorted(quarantined)}')
    if pruned & on_unit:
        findings.append(f'the ledger says pruned but the incident is still on the unit: '
                        f'{sorted(pruned & on_unit)}')

    incidents, gaps = coverage(s3.client(), officer.stamps, plan.fps)
    findings += gaps
    hollow = {r['incident_id'] for r in incidents if r['hollow']}
    lost = sorted(missing | hollow)
    duplicated, writes = duplicates(s3)
    nodes = node_stats(sampler, kills, min(plan.warmup_s, duration / 5))
    tracebacks = {}
    for log in sorted(logs.glob('*.log')):
        n = log.read_text(errors='replace').count('Traceback (most recent call last)')
        if n:
            tracebacks[log.stem] = n
    if tracebacks:
        findings.append(f'tracebacks in node logs: {tracebacks} (see {logs})')

    counts = {
        'opened': len(opened), 'sealed': len(sealed), 'recovered': len(recovered),
        'lost_missing': len(missing), 'lost_hollow': len(hollow),
        'pruned': len(pruned), 'in_bucket_verified': len(in_bucket),
        'bad_in_bucket': len(bad_in_bucket), 'on_unit': len(on_unit),
        'manual_starts': officer.log.starts, 'weapon_draws': officer.log.draws,
        'stops': officer.log.stops, 'stops_refused': officer.log.refused,
        'calls_unanswered': officer.log.unanswered, 'stops_given_up': officer.log.given_up,
        'kills': sum(kills.values()), 'connection_cuts': proxy.cuts, 'outages': outages,
        'outage_cuts': proxy.outage_cuts, 'full_disk_windows': disk.full_windows,
        'full_disk_s': round(disk.full_s, 1), 'connections': proxy.connections,
        'object_writes': writes, 'run_exit': stop_code if stop_code is not None
        else -1, 'upload_once_exit': up.returncode, 'verify_exit': ver.returncode,
    }
    disk_info: dict[str, int | float | str] = {
        'size_mib': plan.disk_mib if disk.mounted else 0,
        'evidence_high_water_mib': round(disk.evidence_hw / MiB, 1),
        'fs_high_water_mib_outside_full_windows': round(disk.fs_hw / MiB, 1),
        'evidence_end_mib': round(disk.evidence_bytes() / MiB, 1),
        'note': disk.note,
    }
    # Keep the unit's account for a post-mortem before the tmpfs goes.
    for name in (ledger_mod.LEDGER_FILE, audit_mod.AUDIT_FILE):
        if (ev / name).exists():
            shutil.copy2(ev / name, work / name)
    if (ev / QUARANTINE).is_dir():
        shutil.copytree(ev / QUARANTINE, work / 'quarantine', dirs_exist_ok=True)
    if keep_evidence:
        shutil.copytree(ev, work / 'evidence', dirs_exist_ok=True, symlinks=True)
    disk.close()
    proxy.close()
    s3.close()
    return Report(plan.minutes, plan.seed, lost, duplicated,
                  bool(verdict.get('ok')), list(verdict.get('problems', []))[:20], counts,
                  nodes, disk_info, findings, str(work), incidents)



def table(rep: Report) -> str:
    lines = [f'soak: {rep.minutes:g} min (standing for an 8 h shift), seed {rep.seed}, '
             f'work dir {rep.work}', '']
    c = rep.counts
    lines += [f'lost incidents:      {len(rep.lost)}  (neither in the bucket nor on the unit '
              f'{c["lost_missing"]}, sealed with no evidence in them {c["lost_hollow"]})  '
              f'{rep.lost if rep.lost else ""}',
              f'duplicated uploads:  {len(rep.duplicated)}  '
              f'{rep.duplicated if rep.duplicated else ""}',
              f'bucket verifies:     {"yes" if rep.bucket_ok else "NO"}',
              '']
    lines += ['incidents: opened {opened}, sealed {sealed} (recovered {recovered}), verified '
              'in bucket {in_bucket_verified}, bad in bucket {bad_in_bucket}, pruned '
              '{pruned}, still on unit {on_unit}'.format(**c),
              'officer:   starts {manual_starts}, weapon draws {weapon_draws}, stops {stops}, '
              'refused {stops_refused}, unanswered calls {calls_unanswered}, stops given up '
              '{stops_given_up}'.format(**c),
              'chaos:     kills {kills}, connection cuts {connection_cuts} ({outages} outages, '
              '{outage_cuts} outage cuts, {connections} connections), full-disk windows '
              '{full_disk_windows} ({full_disk_s} s)'.format(**c),
              'exits:     bodycam run {run_exit}, upload --once {upload_once_exit}, verify '
              '{verify_exit}; object writes {object_writes}'.format(**c),
              'disk:      ' + ', '.join(f'{k} {v}' for k, v in rep.disk.items() if v != ''),
              '']
    lines.append(f'{"node":16} {"kills":>5} {"lives":>5} {"RSS MB":>7} {"max":>7} '
                 f'{"slope MB/h":>10} {"over s":>6} {"fds max":>7} {"CPU %":>6}')
    for name, n in rep.nodes.items():
        slope = n['rss_slope_mb_h']
        lines.append(f'{name:16} {n["kills"]:5d} {n["lifetimes"]:5d} {n["rss_last_mb"]:7.1f} '
                     f'{n["rss_max_mb"]:7.1f} '
                     f'{("%+10.1f" % slope) if slope is not None else "       n/a"} '
                     f'{n["slope_covered_s"]:6.0f} {n["fds_max"]:7d} {n["cpu_mean_pct"]:6.1f}')
    if rep.incidents:
        lines += ['', 'incidents in the bucket (frames: recorded / published by the camera '
                  'in its span; missing inside, before it in the look-back, after it in the '
                  'post-roll):',
                  f'{"seq":>4} {"incident":8} {"end":9} {"span s":>6} {"frames":>6} '
                  f'{"publ.":>6} {"missing":>7} {"head":>5} {"tail":>5}  reasons']

        def f(x, w, fmt='d'):
            return f'{x:{w}{fmt}}' if isinstance(x, (int, float)) else f'{"-":>{w}}'
        for r in rep.incidents:
            lines.append(f'{r["sequence"] or 0:4d} {str(r["incident_id"])[:8]:8} '
                         f'{str(r["end_reason"]):9} {f(r["span_s"], 6, ".1f")} '
                         f'{f(r["frames"], 6)} {f(r["published"], 6)} {f(r["missing"], 7)} '
                         f'{f(r["head"], 5)} {f(r["tail"], 5)}  '
                         f'{",".join(r["reasons"])}'
                         f'{"  recovered" if r["recovered"] else ""}'
                         f'{"  HOLLOW" if r["hollow"] else ""}'
                         + (f'  incomplete {",".join(r["incomplete_files"])}'
                            if r['incomplete_files'] else ''))
    if rep.bucket_problems:
        lines += ['', 'bucket problems:'] + [f'  {p}' for p in rep.bucket_problems]
    if rep.findings:
        lines += ['', 'findings:'] + [f'  {f}' for f in rep.findings]
    lines += ['', 'FAIL' if rep.failed else 'PASS: nothing lost, nothing duplicated']
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--minutes', type=float, default=10.0,
                    help='length of the compressed shift (default 10, standing for 8 h)')
    ap.add_argument('--seed', type=int, default=1, help='chaos schedule seed (default 1)')
    ap.add_argument('--disk-mib', type=int, default=96,
                    help='tmpfs size for the evidence directory (default 96 MiB)')
    ap.add_argument('--json', type=Path, default=None, help='also write the report here')
    ap.add_argument('--keep', action='store_true',
                    help='keep the work dir (logs, ledger, verify output) even on PASS, '
                    'with a copy of the evidence directory')
    args = ap.parse_args(argv)
    plan = Plan(minutes=args.minutes, seed=args.seed, disk_mib=args.disk_mib)
    work = Path(tempfile.mkdtemp(prefix='bodycam-soak-'))
    rep = run(plan, work, keep_evidence=args.keep)
    print(table(rep), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rep.__dict__, indent=2, default=str))
    if not rep.failed and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if rep.failed else 0


if __name__ == '__main__':
    sys.exit(main())
