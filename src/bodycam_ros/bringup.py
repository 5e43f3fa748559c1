"""Bring the node graph up without ``ros2 launch`` (pip-only machines), as launch would.

Each node runs in its own process from the same ``--params-file`` (sections keyed by node
name), exactly like ``launch/sim.launch.py``: a crash in one cannot take the others down, the
camera encoder gets a core of its own, and a dead node is restarted with a back-off. With
``--composed`` several nodes share one process (:mod:`bodycam_ros.composed`): the same
params file, one Python and one DDS participant's worth of memory instead of several, and
the supervisor restarts the whole group if it dies. ``bodycam run`` forks the node processes
from itself after importing what they share (:mod:`bodycam_ros.prefork`; ``BODYCAM_SPAWN=exec``
starts each with ``python -m`` instead), so they share those pages.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bodycam_ros import prefork

#: Every node of a unit, in start order (sensors first so the recorder sees data at once).
NODES = ('camera', 'imu', 'gps', 'holster', 'trigger_fusion', 'recorder', 'uploader',
         'live_view', 'dispatch_bridge')
#: Nodes started only when asked for: ``portal_link`` needs a portal URL (``--portal``).
OPTIONAL_NODES = ('portal_link',)

#: A scenario starts this long after the graph is launched, so every node is up at t=0.
SCENARIO_LEAD_S = 3.0


def available_nodes(names: Sequence[str] = NODES) -> list[str]:
    """The nodes of ``names`` whose module exists in this build."""
    return [n for n in names if importlib.util.find_spec(f'bodycam_ros.nodes.{n}_node')]


def node_argv(name: str, params_files: Sequence[Path], namespace: str = '') -> list[str]:
    """The command line that starts one node, as ``ros2 run`` plus launch arguments would.

    Later params files win, so the run's overrides file goes last.
    """
    argv = [sys.executable, '-m', f'bodycam_ros.nodes.{name}_node', '--ros-args']
    for path in params_files:
        argv += ['--params-file', str(path)]
    if namespace:
        argv += ['-r', f'__ns:=/{namespace.strip("/")}']
    return argv


#: Names a ``--composed`` spec may use for several nodes at once.
GROUP_ALIASES = {'sensors': ('camera', 'imu', 'gps', 'holster'), 'fusion': ('trigger_fusion',),
                 'evidence': ('recorder', 'uploader')}


class GroupError(ValueError):
    """A ``--composed`` spec that names an unknown node or names one twice."""


def close_order(names: Sequence[str]) -> list[str]:
    """``names`` in the order to start and to stop: the recorder after everything that feeds
    it (it seals what it holds), the uploader last (it drains what was just sealed)."""
    last = ('recorder', 'uploader')
    ordered = [n for n in NODES if n in names and n not in last]
    ordered += [n for n in names if n not in NODES and n not in last]
    return ordered + [n for n in last if n in names]


def parse_groups(spec: str, names: Sequence[str]) -> list[tuple[str, ...]]:
    """Split the running ``names`` into processes from a ``--composed`` spec.

    ``all`` (or an empty spec) is one process; otherwise comma-separated groups of
    ``+``-joined node names or aliases (``sensors``, ``fusion``, ``evidence``), and ``rest``
    for every node no group named, e.g. ``sensors+fusion,recorder+uploader,rest``. A node
    no group names and no ``rest`` covers runs in its own process. Nodes not in ``names``
    (not running) are dropped; empty groups vanish.

    Raises:
        GroupError: an unknown name, or a node in two groups.
    """
    spec = spec.strip()
    if spec in ('', 'all'):
        return [tuple(close_order(names))]
    groups: list[list[str]] = []
    seen: set[str] = set()
    rest_at: int | None = None
    for part in spec.split(','):
        group: list[str] = []
        for token in filter(None, (t.strip() for t in part.split('+'))):
            if token == 'rest':
                rest_at = len(groups)
                continue
            members = GROUP_ALIASES.get(token, (token,))
            for m in members:
                if m not in NODES:
                    raise GroupError(f'--composed: unknown node or group {token!r}; known: '
                                     f'{", ".join(NODES + tuple(GROUP_ALIASES))}, rest, all')
                if m in seen:
                    raise GroupError(f'--composed: node {m!r} is in two groups')
                seen.add(m)
                group.append(m)
        groups.append(group)
    leftover = [n for n in names if n not in seen]
    if rest_at is not None:
        groups[rest_at] += leftover
    else:
        groups += [[n] for n in leftover]
    return [tuple(close_order(g)) for g in ([n for n in g if n in names] for g in groups) if g]


def group_argv(nodes: Sequence[str], params_files: Sequence[Path],
               namespace: str = '') -> list[str]:
    """The command line of one process: a plain node alone, or a composed group."""
    if len(nodes) == 1:
        return node_argv(nodes[0], params_files, namespace)
    argv = node_argv(nodes[0], params_files, namespace)
    return argv[:2] + ['bodycam_ros.composed', '--nodes', ','.join(nodes)] + argv[3:]


def children(names: Sequence[str], params_files: Sequence[Path], namespace: str = '',
             composed: str | None = None) -> list[Child]:
    """One :class:`Child` per node (``composed`` None) or per group of a ``--composed`` spec."""
    groups = [(n,) for n in names] if composed is None else parse_groups(composed, names)
    return [Child('+'.join(g), group_argv(g, params_files, namespace), nodes=g) for g in groups]


def write_overrides(path: Path, overrides: Mapping[str, object],
                    names: Sequence[str] = NODES) -> Path:
    """Write run-time overrides as a params file with a section per node.

    A ``-p key:=value`` on the command line is a wildcard and loses to a ``/**/<node>``
    section of the config that sets the same key; a node-keyed section in a later params
    file wins, under any namespace.
    """
    import yaml
    doc = {f'/**/{name}': {'ros__parameters': dict(overrides)} for name in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=True))
    return path


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | prefork.ForkedProcess | None = None
    restarts: list[float] = field(default_factory=list)
    given_up: bool = False
    nodes: tuple[str, ...] = ()      # the nodes this process runs (default: just ``name``)

    def __post_init__(self) -> None:
        self.nodes = tuple(self.nodes) or (self.name,)


class Supervisor:
    """Starts node processes, restarts crashed ones, and stops them all on request.

    Args:
        restart_limit: restarts allowed per node in any 60 s before it is left down.
    """

    def __init__(self, children: Sequence[Child], log_dir: Path | None = None,
                 restart_limit: int = 5, echo=print, spawn: str = 'exec') -> None:
        self.children = list(children)
        self._log_dir = log_dir
        self._restart_limit = restart_limit
        self._echo = echo
        self._spawn_mode = spawn
        self._forking = False

    def start(self) -> None:
        """Start every child; with ``spawn='fork'`` as forks of this process after
        :func:`prefork.preload` (call before this process starts rclpy)."""
        self._forking = self._spawn_mode == 'fork'
        if self._forking:
            prefork.preload()
        try:
            for child in self.children:
                self._spawn(child)
        finally:
            self._forking = False   # a restart comes after our own rclpy.init: exec

    def _spawn(self, child: Child) -> None:
        log = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log = self._log_dir / f'{child.name}.log'
        if self._forking:
            child.proc = prefork.fork(child.argv, log)
            return
        out = open(log, 'ab') if log is not None else None
        # A new process group: Ctrl-C in the terminal reaches only us, and we stop the
        # children in order (recorder last) instead of all at once.
        child.proc = subprocess.Popen(child.argv, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        if out is not None:
            out.close()

    def poll(self) -> list[str]:
        """Restart children that exited; return a line for each event worth printing."""
        events = []
        now = time.monotonic()
        for child in self.children:
            if child.given_up or child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            child.restarts = [t for t in child.restarts if now - t < 60.0]
            if code == 2:  # bad parameters: restarting cannot help
                child.given_up = True
                events.append(f'{child.name}: exited with a configuration error (code 2); '
                              'see its log')
            elif len(child.restarts) >= self._restart_limit:
                child.given_up = True
                events.append(f'{child.name}: exited {code}; {self._restart_limit} restarts in '
                              '60 s, leaving it down')
            else:
                child.restarts.append(now)
                events.append(f'{child.name}: exited {code}; restarting')
                self._spawn(child)
        return events

    def stop(self, timeout_s: float = 15.0) -> dict[str, int | None]:
        """SIGINT the children in three waves: the rest, then the recorder (it seals what it
        holds), then the uploader (it drains what was just sealed)."""
        def wave(child: Child) -> int:   # a composed group stops with its latest node
            return max(('recorder', 'uploader').index(n) + 1
                       if n in ('recorder', 'uploader') else 0 for n in child.nodes)
        waves = [[c for c in self.children if wave(c) == w] for w in range(3)]
        for wave in waves:
            for child in wave:
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + timeout_s
            for child in wave:
                if child.proc is None:
                    continue
                try:
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.proc.terminate()
                    try:
                        child.proc.wait(3.0)
                    except subprocess.TimeoutExpired:
                        child.proc.kill()
                        child.proc.wait()
        return {c.name: (c.proc.returncode if c.proc else None) for c in self.children}


def ros_env_defaults() -> None:
    """Safe defaults for a pip-only machine: never multicast onto the network."""
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
