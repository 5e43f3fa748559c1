"""dispatch_bridge node: the link between the unit and dispatch (CAD).

Publishes ``dispatch/destination`` (sensor_msgs/NavSatFix, LATCHED_QOS: a late joiner gets
the current dispatch; status NO_FIX = no dispatch / dispatch cleared). Sources:

* ``sim``: the shared scenario's ``dispatch_at(t)`` (``scenario``, ``scenario_start``).
* ``none``: publishes nothing (a unit without a dispatch link).

Minimal on purpose: the CAD intake (HTTP/MQTT) and the alert outbox extend this node.
"""
from __future__ import annotations

import sys
import time

from rclpy.node import Node
from sensor_msgs.msg import NavSatFix, NavSatStatus

from bodycam_ros.core import scenario as scenario_mod
from bodycam_ros.rosutil import LATCHED_QOS, OK, Diagnostics, ParameterError, declare, run_node

SOURCES = ('sim', 'none')


class DispatchBridgeNode(Node):
    """Thin wrapper: poll the dispatch source, publish changes latched, report."""

    def __init__(self, **kw) -> None:
        super().__init__('dispatch_bridge', **kw)
        self._source = declare(self, 'source', 'none', 'where dispatches come from: sim '
                               '(scenario) or none', choices=SOURCES)
        name = declare(self, 'scenario', '', f'sim scenario ({", ".join(scenario_mod.SCENARIOS)})'
                       "; '' = idle")
        start = declare(self, 'scenario_start', 0.0, 'scenario epoch [UNIX s]; 0 = node start',
                        min_value=0.0, max_value=1e12)
        try:
            self._scenario = scenario_mod.get(name or 'idle')
        except ValueError as exc:
            raise ParameterError(f'parameter {self.get_name()}.scenario={name!r}: {exc}') from exc
        self._start = start or time.time()
        self._current: tuple[float, float] | None = None
        self._published = 0
        self._pub = self.create_publisher(NavSatFix, 'dispatch/destination', LATCHED_QOS)
        self._diag = Diagnostics(self, hardware_id=f'dispatch:{self._source}')
        if self._source == 'sim':
            self._publish(None)   # no dispatch yet: NO_FIX, so subscribers know the state
            self.create_timer(0.2, self._poll_sim)
        self._report()

    def _poll_sim(self) -> None:
        dest = self._scenario.dispatch_at(time.time() - self._start)
        if dest != self._current:
            self._current = dest
            self._publish(dest)
            self.get_logger().info(f'dispatch: {dest}' if dest else 'dispatch cleared')
            self._report()

    def _publish(self, dest: tuple[float, float] | None) -> None:
        msg = NavSatFix()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = 'map'
        msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_UNKNOWN
        if dest is None:
            msg.status.status = NavSatStatus.STATUS_NO_FIX
            msg.latitude = msg.longitude = msg.altitude = float('nan')
        else:
            msg.status.status = NavSatStatus.STATUS_FIX
            msg.latitude, msg.longitude = dest
            msg.altitude = float('nan')
        self._pub.publish(msg)
        self._published += 1

    def _report(self) -> None:
        dest = self._current
        self._diag.set(OK, f'dispatched to {dest[0]:.6f}, {dest[1]:.6f}' if dest else
                       ('no dispatch' if self._source == 'sim' else 'no dispatch source'),
                       source=self._source, scenario=self._scenario.name,
                       published=self._published)


def main(args=None) -> int:
    return run_node(lambda: DispatchBridgeNode(), args)


if __name__ == '__main__':
    sys.exit(main())
