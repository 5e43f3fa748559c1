"""Shared test set-up: an isolated ROS 2 domain per run, real DDS, real data from ../shared.

Set before rclpy loads: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (never multicast on the
network), a ROS_DOMAIN_ID of this run's own, a temporary ROS_HOME for logs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / 'src'
SHARED_DATA = ROOT.parent / 'shared' / 'data'

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 200))
_ros_home = tempfile.mkdtemp(prefix='bodycam-test-roshome-')
os.environ['ROS_HOME'] = _ros_home
os.environ['ROS_LOG_DIR'] = os.path.join(_ros_home, 'log')
# Subprocesses (nodes, the bodycam CLI) import the code under test from src/.
os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [str(SRC), os.environ.get('PYTHONPATH')]))

import rclpy  # noqa: E402  (after the environment above)
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402


def shared_data(*parts: str) -> Path:
    """A file in ../shared/data. Missing data fails in CI and skips elsewhere."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get('CI'):
            pytest.fail(f'missing real data {path}: CI must have ../shared beside the repo')
        pytest.skip(f'no {path} (../shared is not beside this checkout)')
    return path


@pytest.fixture
def ctx() -> Iterator[Context]:
    """An rclpy Context of the test's own, shut down afterwards."""
    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


@pytest.fixture
def executor(ctx: Context) -> Iterator[SingleThreadedExecutor]:
    ex = SingleThreadedExecutor(context=ctx)
    try:
        yield ex
    finally:
        for node in list(ex.get_nodes()):
            close = getattr(node, 'close', None)
            if close is not None:
                close()
            node.destroy_node()
        ex.shutdown()


def spin_until(ex: SingleThreadedExecutor, pred: Callable[[], object],
               timeout_s: float = 5.0) -> bool:
    """Spin until ``pred()`` is truthy or the deadline passes; return the final ``pred()``."""
    end = time.monotonic() + timeout_s
    while not pred() and time.monotonic() < end:
        ex.spin_once(timeout_sec=0.05)
    return bool(pred())


def spin_for(ex: SingleThreadedExecutor, seconds: float) -> None:
    """Keep processing callbacks for a fixed time (collecting a stream's rate, say)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ex.spin_once(timeout_sec=0.02)


class NodeProcess:
    """A node or the CLI in its own process, as launch or ``bodycam run`` would start it."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, 'wb')
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=ROOT)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors='replace')

    def stop(self, sig: int = 2, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start ``python -m MODULE ARGS...`` in its own process; all are stopped at teardown."""
    procs: list[NodeProcess] = []

    def start(module: str, *args: str, env: dict[str, str] | None = None) -> NodeProcess:
        log = tmp_path / f'{module.rsplit(".", 1)[-1]}-{len(procs)}.log'
        p = NodeProcess([sys.executable, '-m', module, *args], log, env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


# ---------------------------------------------------------------- ros2 launch

KIT = ROOT.parent / 'shared' / 'tools' / 'ros2-launch-kit.sh'
KIT_PREFIX = Path(sys.prefix) / 'ros2-kit'


@pytest.fixture(scope='session')
def ros2(tmp_path_factory):
    """Run a command with the launch kit and a fresh colcon install of this package sourced.

    ROS 2 Jazzy's launch, launch_ros and ros2cli have no wheels: KIT installs their vendored
    sources into this virtualenv (idempotent, 1-3 min the first time). One build per session:
    test_launch and test_composed share it."""
    if not KIT.is_file():
        pytest.skip(f'no {KIT} (../shared is absent)')
    kit = subprocess.run(['bash', str(KIT), sys.prefix], capture_output=True, text=True,
                         timeout=900)
    assert kit.returncode == 0, kit.stdout + kit.stderr
    work = tmp_path_factory.mktemp('launch')
    env = {**os.environ, 'AMENT_PREFIX_PATH': sys.prefix,
           'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'}
    build = subprocess.run(
        [shutil.which('colcon', path=env['PATH']), '--log-base', str(work / 'log'), 'build',
         '--base-paths', str(ROOT), '--build-base', str(work / 'build'),
         '--install-base', str(work / 'install')],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    setup = (f'source {KIT_PREFIX}/setup.bash && source {work}/install/local_setup.bash '
             '&& exec "$@"')
    # The nodes must run the colcon-installed package, not src/ (conftest's PYTHONPATH).
    clean = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    clean['PYTHONUNBUFFERED'] = '1'

    def argv(*cmd: str) -> list[str]:
        return ['bash', '-c', setup, 'ros2-env', *cmd]

    def run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(argv(*cmd), capture_output=True, text=True, timeout=timeout,
                              env=clean, stdin=subprocess.DEVNULL)

    run.argv, run.env = argv, clean
    return run
