"""What every bodycam node shares: QoS profiles, validated parameters, diagnostics, main().

Kept small on purpose: nodes stay thin and readable (see STYLE.md), and the pure core in
``bodycam_ros.core`` never imports this module.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.context import Context
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time

#: Sensor streams: best effort like ``qos_profile_sensor_data``, but depth 20: the imu node
#: publishes 200 Hz in bursts of 4 per 50 Hz tick, which depth 5 would drop under load.
SENSOR_QOS = QoSProfile(depth=20, reliability=qos_profile_sensor_data.reliability,
                        durability=qos_profile_sensor_data.durability,
                        history=HistoryPolicy.KEEP_LAST)
#: Commands, triggers, alerts: every message matters.
RELIABLE_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                          history=HistoryPolicy.KEEP_LAST)
#: Current state (holster, alerts): a late joiner gets the last value.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         history=HistoryPolicy.KEEP_LAST)
#: Compressed video: reliable so the recorder never misses a packet of a GOP on loopback,
#: bounded so a stalled subscriber cannot hold the camera up for long.
VIDEO_QOS = QoSProfile(depth=60, reliability=ReliabilityPolicy.RELIABLE,
                       history=HistoryPolicy.KEEP_LAST)

OK, WARN, ERROR, STALE = (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR,
                          DiagnosticStatus.STALE)


class ParameterError(ValueError):
    """A parameter value outside what the node accepts; the message names it and the range."""


def declare(node: Node, name: str, default: Any, description: str, *,
            min_value: float | None = None, max_value: float | None = None,
            choices: Sequence[str] | None = None, read_only: bool = True) -> Any:
    """Declare a described parameter and validate its value now.

    Raises:
        ParameterError: value outside ``[min_value, max_value]`` or not in ``choices``.
    """
    desc = ParameterDescriptor(description=description, read_only=read_only)
    if choices:
        desc.additional_constraints = f'one of: {", ".join(choices)}'
    if min_value is not None and max_value is not None:
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise TypeError(f'range given for non-numeric parameter {name}')
        if isinstance(default, int):
            desc.integer_range = [IntegerRange(from_value=int(min_value), to_value=int(max_value),
                                               step=0)]
        else:
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(min_value), to_value=float(max_value), step=0.0)]
    if isinstance(default, float):
        # YAML writes `rate: 100` as an integer; accept it for a float parameter.
        desc.dynamic_typing = True
    try:
        value = node.declare_parameter(name, default, desc).value
    except (rclpy.exceptions.InvalidParameterValueException,
            rclpy.exceptions.InvalidParameterTypeException) as exc:
        raise ParameterError(f'parameter {node.get_name()}.{name}: {exc}; allowed '
                             f'{_allowed(min_value, max_value, choices)}') from exc
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f'parameter {node.get_name()}.{name}={value!r} is invalid; '
                                 'expected a number')
        value = float(value)
    check(node.get_name(), name, value, min_value=min_value, max_value=max_value, choices=choices)
    return value


def check(node_name: str, name: str, value: Any, *, min_value: float | None = None,
          max_value: float | None = None, choices: Sequence[str] | None = None) -> None:
    """Validate one value; the error names the parameter and the allowed range."""
    bad = False
    if choices is not None and value not in choices:
        bad = True
    if min_value is not None and value < min_value:
        bad = True
    if max_value is not None and value > max_value:
        bad = True
    if bad:
        raise ParameterError(f'parameter {node_name}.{name}={value!r} is invalid; allowed '
                             f'{_allowed(min_value, max_value, choices)}')


def _allowed(lo: float | None, hi: float | None, choices: Sequence[str] | None) -> str:
    if choices is not None:
        return 'one of ' + ', '.join(map(str, choices))
    if lo is not None and hi is not None:
        return f'[{lo}, {hi}]'
    if lo is not None:
        return f'>= {lo}'
    return f'<= {hi}'


def status(name: str, level: int, message: str, hardware_id: str = '',
           **values: Any) -> DiagnosticStatus:
    """Build a DiagnosticStatus; keyword values become KeyValue pairs (str())."""
    return DiagnosticStatus(
        level=level, name=name, message=message, hardware_id=hardware_id or socket.gethostname(),
        values=[KeyValue(key=k, value=_fmt(v)) for k, v in values.items()])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f'{v:.15g}'  # UNIX times need all their digits
    return str(v)


class Diagnostics:
    """Publishes a node's driver status on ``/diagnostics`` once a second.

    The node calls :meth:`set` whenever its state changes; the timer republishes the last
    status so aggregators see the node is alive. The first publication of a status is
    stamped when :meth:`set` took its values, so a counter in it (frames encoded, samples
    published) pairs with the right time; a republication is stamped when it is sent.
    """

    def __init__(self, node: Node, hardware_id: str = '', period_s: float = 1.0) -> None:
        self._node = node
        self._name = f'{node.get_namespace().rstrip("/")}/{node.get_name()}'.lstrip('/')
        self._hw = hardware_id
        self._status = status(self._name, STALE, 'starting', hardware_id)
        self._taken: Time | None = None     # when set() took the unpublished values
        self._pub = node.create_publisher(DiagnosticArray, '/diagnostics', RELIABLE_QOS)
        self._timer = node.create_timer(period_s, self.publish)

    @property
    def last(self) -> DiagnosticStatus:
        return self._status

    def set(self, level: int, message: str, **values: Any) -> None:
        """Record the current status; an ERROR or a level change is published at once."""
        changed = level != self._status.level or message != self._status.message
        self._status = status(self._name, level, message, self._hw, **values)
        self._taken = self._node.get_clock().now()
        if changed:
            self.publish()

    def publish(self) -> None:
        arr = DiagnosticArray(status=[self._status])
        stamp, self._taken = self._taken or self._node.get_clock().now(), None
        arr.header.stamp = stamp.to_msg()
        self._pub.publish(arr)


class StopSignals:
    """SIGINT/SIGTERM as a request to stop, never as an exception in the middle of work.

    rclpy's own handlers raise KeyboardInterrupt wherever the main thread is (inside
    ``take_message`` it surfaces as a RuntimeError and the node exits 1) and shut the
    context down from another thread while callbacks still run. ``ros2 launch`` with stdin
    that is not a terminal sends a second SIGINT, which then lands in ``close()``. Here a
    signal only sets :attr:`signum`; :meth:`hold` ignores every later one, so ``close()``
    (sealing, draining) always runs to its end and the process exits 0.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        from bodycam_ros import earlystop
        self.signum: int | None = earlystop.signum   # asked to stop while still importing
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def hold(self) -> None:
        """Ignore SIGINT/SIGTERM from now on (for close() and interpreter exit, where a
        Python handler would be reset to the default and a late signal would kill us)."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


#: How often the spin loop looks at the stop flag; also the longest a stop waits to start.
SPIN_POLL_S = 0.1
#: The GIL switch interval of a composed process (Python's default is 5 ms).
COMPOSED_SWITCH_INTERVAL_S = 0.001


#: ``BODYCAM_EXECUTOR``: how every node process spins (``bodycam run`` passes it on).
EXECUTOR_ENV = 'BODYCAM_EXECUTOR'
EXECUTORS = ('events', 'single')


def make_executor(context: Context | None = None) -> Executor:
    """The executor a node process spins: rclpy's EventsExecutor (``events``, the default
    where this rclpy has it) or the SingleThreadedExecutor (``single``).

    The events executor dispatches in C++ instead of rebuilding a Python wait set on every
    wake-up; measured here (issue 14, 720p30 idle) it cut imu+holster+trigger_fusion+
    dispatch_bridge in one process from 0.41 to 0.10 core. It has no guard conditions, so no
    node uses one. ``single`` is the fallback for an rclpy without it.
    """
    kind = os.environ.get(EXECUTOR_ENV, 'events')
    if kind not in EXECUTORS:
        raise ParameterError(f'{EXECUTOR_ENV}={kind!r}: use one of {", ".join(EXECUTORS)}')
    if kind == 'events':
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:      # an rclpy older than Jazzy 7.1
            return SingleThreadedExecutor(context=context)
        return EventsExecutor(context=context)
    return SingleThreadedExecutor(context=context)


def run_node(factory: Callable[..., Node], args: list[str] | None = None) -> int:
    """Standard ``main``: init, build the node, spin until SIGINT/SIGTERM, clean up.

    Shutdown is ordered: the first SIGINT or SIGTERM ends the spin loop between callbacks,
    further ones are ignored, ``close()`` runs with the context still up (it may log and
    publish), then the node is destroyed and the context shut down. Exit code 0.

    A :class:`ParameterError` from the factory is printed and returns exit code 2, so a bad
    value in a params file fails with a clear message instead of a traceback.
    """
    return run_nodes([factory], args)


def run_nodes(factories: Sequence[Callable[..., Node]], args: list[str] | None = None) -> int:
    """:func:`run_node` for several nodes in one process and one executor (composed mode).

    The nodes are built in order and closed in the same order after the stop signal (put the
    recorder after the sensors and the uploader last: it drains what the recorder sealed);
    all are destroyed only after every ``close()`` ran. One executor thread serves them all.
    """
    stop = StopSignals()
    if len(factories) > 1:
        # Composed: the camera's capture thread re-takes the GIL several times a frame
        # (render, convert, encode and publish each release it); with every other node's
        # callbacks on the executor thread, the default 5 ms switch interval made it miss
        # frames (25 fps in a 5 s window in CI). 1 ms bounds each wait.
        sys.setswitchinterval(COMPOSED_SWITCH_INTERVAL_S)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    nodes: list[Node] = []
    try:
        executor = make_executor()
        for factory in factories:
            node = factory()
            nodes.append(node)
            executor.add_node(node)
        while not stop.requested and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_POLL_S)
    except ParameterError as exc:
        print(f'error: {exc}', flush=True)
        return 2
    except ExternalShutdownException:
        pass
    finally:
        stop.hold()
        failed: BaseException | None = None
        for node in nodes:
            if stop.requested:
                node.get_logger().info(
                    f'{signal.Signals(stop.signum).name}: stopping (further signals ignored)')
            close = getattr(node, 'close', None)
            try:
                if close is not None:
                    close()
            except Exception as exc:  # noqa: BLE001 - the next node (the recorder) still seals
                node.get_logger().error(f'close failed: {exc!r}')
                failed = failed or exc
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
        if failed is not None:
            raise failed
    return 0
