"""Fork node processes from a supervisor that imported their common code once.

Each node of the split graph is its own process with its own DDS participant, so a crash
stays in one node. Started with ``python -m``, each also imports rclpy, the message
packages, NumPy and their type supports on its own: 10-15 MB of private memory a process
before it does anything. Forked from a supervisor that already imported them (and froze
them out of the garbage collector, whose passes would write to every object and copy the
pages), the nodes share those pages copy-on-write, as gunicorn's ``--preload`` and Android's
zygote do.

Forking is safe only before the supervisor starts DDS: Fast DDS's threads and locks would
not survive into the child. So the supervisor forks while it starts the graph, and a node it
restarts later is started with ``python -m`` as before. The child looks like that
command everywhere an operator looks (``ps``, ``/proc/<pid>/cmdline``, ``pkill -f``).
"""
from __future__ import annotations

import ctypes
import gc
import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: Imported before any node process starts its own module: what every node imports first.
PRELOAD_MODULES = ('rclpy', 'rclpy.node', 'rclpy.executors', 'rclpy.experimental',
                   'rclpy.parameter_service', 'rclpy.time_source', 'numpy', 'yaml',
                   'bodycam_ros.rosutil', 'bodycam_ros.wire', 'bodycam_ros.core.messages')
#: Message and service types whose C type supports are loaded before forking (the first
#: type of a package loads its libraries, ~2 MB of relocated pages a process).
PRELOAD_TYPES = {
    'builtin_interfaces.msg': ('Time',),
    'std_msgs.msg': ('Bool', 'Header', 'String'),
    'sensor_msgs.msg': ('CameraInfo', 'CompressedImage', 'Image', 'Imu', 'NavSatFix'),
    'geometry_msgs.msg': ('TwistStamped',),
    'diagnostic_msgs.msg': ('DiagnosticArray',),
    'rcl_interfaces.msg': ('Log', 'ParameterEvent'),
    'rcl_interfaces.srv': ('DescribeParameters', 'GetParameterTypes', 'GetParameters',
                           'ListParameters', 'SetParameters', 'SetParametersAtomically'),
    'rosgraph_msgs.msg': ('Clock',),
    'std_srvs.srv': ('SetBool', 'Trigger'),
}
#: ``BODYCAM_SPAWN``: how ``bodycam run`` starts the split graph's node processes.
SPAWN_ENV = 'BODYCAM_SPAWN'
SPAWN_MODES = ('fork', 'exec')


class SpawnError(ValueError):
    """A bad ``BODYCAM_SPAWN`` value; the message names it."""


def spawn_mode(env: dict[str, str] | None = None) -> str:
    """``fork`` (the default) or ``exec`` from ``BODYCAM_SPAWN``."""
    value = (os.environ if env is None else env).get(SPAWN_ENV, 'fork') or 'fork'
    if value not in SPAWN_MODES:
        raise SpawnError(f'{SPAWN_ENV}={value!r}: expected one of {", ".join(SPAWN_MODES)}')
    return value


_preloaded = False


def preload() -> None:
    """Import :data:`PRELOAD_MODULES` and load :data:`PRELOAD_TYPES`, then freeze every
    object alive so far (:func:`gc.freeze`): collections in the forked nodes never touch
    them, so their pages stay shared. Idempotent; must run before ``rclpy.init``."""
    global _preloaded
    if _preloaded:
        return
    for name in PRELOAD_MODULES:
        importlib.import_module(name)
    from rclpy.type_support import check_for_type_support
    for module, names in PRELOAD_TYPES.items():
        try:
            package = importlib.import_module(module)
        except ImportError:          # an optional package this build lacks
            continue
        for name in names:
            check_for_type_support(getattr(package, name))
    import setproctitle  # noqa: F401 - each child names itself with it
    _register_lttng_fork_hooks()
    gc.collect()
    gc.freeze()
    _preloaded = True


def dds_started() -> bool:
    """Whether this process has an initialised rclpy context (forking is then unsafe)."""
    rclpy = sys.modules.get('rclpy')
    if rclpy is None:
        return False
    from rclpy.utilities import get_default_context
    return get_default_context().ok()


def _register_lttng_fork_hooks() -> None:
    """Let LTTng-UST's listener threads (rcl's tracing, loaded with rclpy) survive a fork.

    rcl links LTTng-UST, which starts two listener threads when it loads. A program that
    forks without exec must call its before/after-fork hooks (``liblttng-ust-fork.so``
    does it for C programs), or the child may inherit one of its locks held. The names
    changed in LTTng-UST 2.13; a build without LTTng has nothing to do.
    """
    lib = next((line.split()[-1] for line in Path('/proc/self/maps').read_text().splitlines()
                if '/liblttng-ust' in line and 'tracepoint' not in line
                and '-fork' not in line), None)
    if lib is None:
        return
    ust = ctypes.CDLL(lib)
    names = [(p + 'before_fork', p + 'after_fork_parent', p + 'after_fork_child')
             for p in ('lttng_ust_', 'ust_')]
    hooks = next(([getattr(ust, n) for n in trio] for trio in names
                  if all(hasattr(ust, n) for n in trio)), None)
    if hooks is None:
        return
    sigset = ctypes.create_string_buffer(128)      # sizeof(sigset_t) on Linux
    before, parent, child = hooks
    os.register_at_fork(before=lambda: before(sigset), after_in_parent=lambda: parent(sigset),
                        after_in_child=lambda: child(sigset))


def _run_module(argv: list[str], log_path: str | None) -> None:
    """The forked child: become ``python -m <module> <args>`` and run its ``main()``."""
    os.setsid()                      # as start_new_session: Ctrl-C reaches the supervisor only
    from bodycam_ros import earlystop
    earlystop.install()              # the supervisor's handlers were inherited: a stop now
    if log_path is not None:         # is recorded and honoured by the node
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    import setproctitle
    setproctitle.setproctitle(' '.join(argv))
    module = argv[2]
    sys.argv = [module, *argv[3:]]
    sys.exit(importlib.import_module(module).main())


class ForkedProcess:
    """A node process forked by :func:`fork`, with the part of :class:`subprocess.Popen`
    the supervisor uses (``poll``, ``wait``, ``send_signal``, ``terminate``, ``kill``)."""

    def __init__(self, process: multiprocessing.process.BaseProcess, args: list[str]) -> None:
        self._process = process
        self.args = args
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork(argv: Sequence[str], log_path: Path | None) -> ForkedProcess:
    """Start ``argv`` (``[python, '-m', module, *args]``) as a fork of this process.

    multiprocessing's fork context does the child's bookkeeping (flushing, exit code from
    ``sys.exit``, joining threads, the after-fork hooks). ``daemon``: if the supervisor
    itself dies, its exit handler sends the nodes SIGTERM, which they treat as a stop.
    """
    if len(argv) < 3 or argv[1] != '-m':
        raise SpawnError(f'cannot fork {list(argv)!r}: expected [python, -m, module, ...]')
    if dds_started():
        raise SpawnError('cannot fork after rclpy.init: DDS threads do not survive a fork')
    args = list(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    process = multiprocessing.get_context('fork').Process(
        target=_run_module, args=(args, None if log_path is None else str(log_path)),
        name=args[2], daemon=True)
    process.start()
    return ForkedProcess(process, args)
