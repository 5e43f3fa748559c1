"""holster node: publishes whether the weapon is out of the holster, debounced.

Publishes ``holster/weapon_drawn`` (std_msgs/Bool, LATCHED_QOS: a late joiner gets the
current state) once the first level has held for ``debounce_s`` and on every debounced change.
The line is a GPIO input (libgpiod) or the sim scenario; in sim mode the
``holster/set_drawn`` std_srvs/SetBool service forces the line (manual tests, trigger latency
benchmarks). A missing chip or line is an ERROR diagnostic, retried every ``retry_s``.

Time: the debounce, the sim scenario and ``last_change`` run on the node clock (ROS time;
sim time under ``use_sim_time``, where the sim line opens at the first ``/clock``).
``time.monotonic`` only paces the reopen retries of a missing GPIO chip.
"""
from __future__ import annotations

import sys
import time

from rclpy.node import Node
from std_msgs.msg import Bool
from std_srvs.srv import SetBool

from bodycam_ros.core import scenario as scenario_mod
from bodycam_ros.core.holster import DrawDetector, LevelSample
from bodycam_ros.drivers.holster import (BIASES, GpioHolsterLine, HolsterError, HolsterLine,
                                         SimHolsterLine)
from bodycam_ros.rosutil import (ERROR, LATCHED_QOS, OK, STALE, Diagnostics, ParameterError,
                                 declare, run_node)

SOURCES = ('gpio', 'sim')
#: Longest sleep of the sim line between scenario changes [s].
SIM_IDLE_S = 1.0


class HolsterNode(Node):
    """Thin wrapper: poll the line, debounce in core, publish changes, report."""

    def __init__(self, line: HolsterLine | None = None, **kw) -> None:
        super().__init__('holster', **kw)
        self._p = p = self._declare_all()
        self._det = DrawDetector(debounce_s=p['debounce_s'])
        self._pub = self.create_publisher(Bool, 'holster/weapon_drawn', LATCHED_QOS)
        self.errors = self.reopens = 0
        self._last_error = ''
        self._last_change: float | None = None
        self._retry_at = 0.0
        self._injected = line is not None
        self._line: HolsterLine | None = line
        if line is None and self._now() > 0.0:
            self._open()
        self._diag = Diagnostics(self, hardware_id=self._description())
        if p['source'] == 'sim' or isinstance(line, SimHolsterLine):
            self.create_service(SetBool, 'holster/set_drawn', self._on_set_drawn)
        # A GPIO line is polled at poll_rate; the sim line wakes only when its level can
        # change (the scenario's draw/holster time, a set_drawn call) and to confirm the
        # debounce: 100 Hz polling of a simulated switch cost 7.5 % of a core.
        self._poll_timer = self.create_timer(1.0 / p['poll_rate'], self._tick)
        self.create_timer(1.0, self._report)
        self._report()

    # ------------------------------------------------------------------ parameters

    def _declare_all(self) -> dict:
        def d(name, default, description, **kw):
            return declare(self, name, default, description, **kw)

        p = {
            'source': d('source', 'sim', 'holster line: gpio (libgpiod) or sim (scenario)',
                        choices=SOURCES),
            'chip': d('chip', '/dev/gpiochip0', 'GPIO chip device (source=gpio)'),
            'line': d('line', 17, 'GPIO line offset on the chip (source=gpio)',
                      min_value=0, max_value=65535),
            'active_high': d('active_high', True, 'the line reads high while the weapon is '
                             'out (source=gpio)'),
            'bias': d('bias', 'as_is', 'line bias (source=gpio)', choices=BIASES),
            'debounce_s': d('debounce_s', 0.05, 'a level must hold this long to count [s]',
                            min_value=0.0, max_value=5.0),
            'poll_rate': d('poll_rate', 100.0, 'line polling rate [Hz]', min_value=1.0,
                           max_value=1000.0),
            'scenario': d('scenario', '', f'sim scenario ({", ".join(scenario_mod.SCENARIOS)}); '
                          "'' = idle"),
            'scenario_start': d('scenario_start', 0.0, 'scenario epoch [ROS s: UNIX s on the '
                                'system clock, sim s under use_sim_time]; 0 = node start',
                                min_value=0.0, max_value=1e12),
            'retry_s': d('retry_s', 2.0, 'reopen period while the GPIO line is missing [s]',
                         min_value=0.05, max_value=300.0),
        }
        if p['scenario'] and p['scenario'] not in scenario_mod.SCENARIOS:
            raise ParameterError(f'parameter {self.get_name()}.scenario={p["scenario"]!r} is '
                                 f'invalid; allowed one of {", ".join(scenario_mod.SCENARIOS)}')
        return p

    # ------------------------------------------------------------------ line

    def _open(self) -> None:
        p = self._p
        try:
            if p['source'] == 'sim':
                line: HolsterLine = SimHolsterLine(p['scenario'], p['scenario_start'],
                                                   clock=self._now)
            else:
                line = GpioHolsterLine(p['chip'], p['line'], p['active_high'], p['bias'])
        except HolsterError as exc:
            self._fail(str(exc))
            return
        self._line = line
        self._last_error = ''
        self.get_logger().info(f'reading {line.description}')

    def _fail(self, message: str) -> None:
        self.errors += 1
        self._last_error = message
        self._retry_at = time.monotonic() + self._p['retry_s']
        self.get_logger().error(message, throttle_duration_sec=10.0)
        if hasattr(self, '_diag'):
            self._report()

    def _now(self) -> float:
        """The node clock (ROS time) in seconds; 0 while sim time has had no /clock."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _description(self) -> str:
        if self._line is not None:
            return self._line.description
        p = self._p
        return f'{p["chip"]} line {p["line"]}' if p['source'] == 'gpio' else 'sim'

    # ------------------------------------------------------------------ polling

    def _poll(self) -> None:
        now = self._now()
        if now <= 0.0:
            return                      # sim time before the first /clock
        if self._line is None:
            if not self._injected and time.monotonic() >= self._retry_at:
                self.reopens += bool(self.errors)    # the first open is not a reopen
                self._open()
            return
        try:
            high = self._line.read()
        except HolsterError as exc:
            self._line.close()
            self._line = None
            self._fail(str(exc))
            return
        st = self._det.update(LevelSample(now, high))
        if st.changed:
            self._pub.publish(Bool(data=st.drawn))
            self._last_change = now
            self.get_logger().info(f'weapon {"DRAWN" if st.drawn else "holstered"}')
            self._report()

    def _tick(self) -> None:
        self._poll()
        self._reschedule()

    def _reschedule(self) -> None:
        """The next wake-up: poll_rate for GPIO (or while no line is open); for the sim line
        the debounce while a new level is pending, else the scenario's next change (at
        most SIM_IDLE_S away, so a jumped clock is noticed)."""
        line, period = self._line, 1.0 / self._p['poll_rate']
        if isinstance(line, SimHolsterLine):
            if not self._det.known or line.read() != self._det.drawn:
                period = self._p['debounce_s'] + 0.001
            else:
                period = min(line.next_change_s(), SIM_IDLE_S)
        period_ns = max(1_000_000, int(period * 1e9))
        if period_ns != self._poll_timer.timer_period_ns:
            self._poll_timer.timer_period_ns = period_ns
        self._poll_timer.reset()

    def _on_set_drawn(self, req: SetBool.Request, resp: SetBool.Response) -> SetBool.Response:
        line = self._line
        if not isinstance(line, SimHolsterLine):
            resp.success, resp.message = False, 'no simulated line to set'
            return resp
        line.set(req.data)
        self._tick()                    # sample the new level now, confirm after debounce_s
        resp.success = True
        resp.message = (f'line forced {"active" if req.data else "inactive"}; published after '
                        f'{self._p["debounce_s"]:g} s debounce')
        return resp

    # ------------------------------------------------------------------ diagnostics

    def _report(self) -> None:
        state = ('drawn' if self._det.drawn else 'holstered') if self._det.known else 'unknown'
        values = dict(state=state, transitions=self._det.transitions, draws=self._det.draws,
                      source=self._p['source'], line=self._description(),
                      debounce_s=self._p['debounce_s'], errors=self.errors,
                      reopens=self.reopens, last_error=self._last_error,
                      last_change=self._last_change or '')
        if self._line is None:
            self._diag.set(ERROR, self._last_error or 'no line', **values)
        elif not self._det.known:
            self._diag.set(STALE, 'waiting for a stable level', **values)
        else:
            self._diag.set(OK, f'weapon {state}', **values)

    def close(self) -> None:
        if self._line is not None:
            self._line.close()
            self._line = None


def main(args=None) -> int:
    return run_node(lambda: HolsterNode(), args)


if __name__ == '__main__':
    sys.exit(main())
