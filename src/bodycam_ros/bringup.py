"""Bring the node graph up without ``ros2 launch`` (pip-only machines), as launch would.

Each node runs in its own process from the same ``--params-file`` (sections keyed by node
name), exactly like ``launch/sim.launch.py``: a crash in one cannot take the others down, the
camera encoder gets a core of its own, and a dead node is restarted with a back-off.
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

#: Every node of a unit, in start order (sensors first so the recorder sees data at once).
NODES = ('camera', 'imu', 'gps', 'holster', 'trigger_fusion', 'recorder', 'uploader',
         'live_view', 'dispatch_bridge')

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
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    given_up: bool = False


class Supervisor:
    """Starts node processes, restarts crashed ones, and stops them all on request.

    Args:
        restart_limit: restarts allowed per node in any 60 s before it is left down.
    """

    def __init__(self, children: Sequence[Child], log_dir: Path | None = None,
                 restart_limit: int = 5, echo=print) -> None:
        self.children = list(children)
        self._log_dir = log_dir
        self._restart_limit = restart_limit
        self._echo = echo

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        out = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self._log_dir / f'{child.name}.log', 'ab')
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
        last = ('recorder', 'uploader')
        waves = [[c for c in self.children if c.name not in last]] + \
            [[c for c in self.children if c.name == name] for name in last]
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
