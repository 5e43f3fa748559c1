"""trigger_fusion node: decides when the camera records, and raises officer-down alerts.

Subscribes ``imu/data``, ``gps/fix``, ``gps/vel``, ``holster/weapon_drawn`` (latched),
``dispatch/destination`` (latched NavSatFix; NO_FIX clears the dispatch) and
``recorder/status`` (for the incident id). Publishes ``bodycam/triggers`` (one
DiagnosticStatus per source: OK idle, WARN active, ERROR sensor fault, STALE no data; values
carry since, confidence and the numbers behind the decision), ``recorder/command`` (start
with reason and trigger time; stop) and ``bodycam/alerts`` (officer down with the last
position, latched). Serves ``bodycam/start_recording``, ``bodycam/stop_recording`` and
``bodycam/cancel_alert`` (std_srvs/Trigger).

All decisions are in ``bodycam_ros.core`` (detectors and fusion); the callbacks convert
messages, feed them in, and publish what comes out. A holster draw is decided and the start
command published inside the holster callback, so nothing waits for a timer.

Time: everything is ROS time (the node clock, so ``use_sim_time`` with a ``/clock`` drives
it like a live unit). IMU, fix and velocity samples are timed by their ``header.stamp`` (a
zero stamp: the node clock at reception); the holster, dispatch, services, staleness and
the tick by the node clock at reception. Trigger times in commands, ``since`` values and
alert stamps are therefore ROS time; this node never reads the wall clock.
"""
from __future__ import annotations

import math
import socket
import sys
import uuid
from dataclasses import replace

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import Imu, NavSatFix, NavSatStatus
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from bodycam_ros.core.detectors import (ONE_MILE_M, DispatchProximity, DownEvent, DownEventKind,
                                        Fight, Fix, FootPursuit, Manual, OfficerDown,
                                        OfficerDownParams, Source, TriggerState, WeaponDrawn)
from bodycam_ros.core.detectors.base import DetectorError
from bodycam_ros.core.detectors.dispatch_proximity import horizontal_accuracy_m
from bodycam_ros.core.fusion import Fusion, FusionError, Health, Level, SourceStatus
from bodycam_ros.core.messages import (AlertState, DownAlert, MessageError, Reason,
                                       RecorderCommand, TriggerReport, decode_recorder,
                                       encode_alert, encode_command, encode_trigger,
                                       trigger_extra)
from bodycam_ros.rosutil import (ERROR, LATCHED_QOS, OK, RELIABLE_QOS, SENSOR_QOS, WARN,
                                 Diagnostics, ParameterError, declare, run_node)
from bodycam_ros.wire import from_status, stamp_s, to_status

IMU_SOURCES = (Source.FIGHT, Source.FOOT_PURSUIT, Source.OFFICER_DOWN)
#: Commands kept while no recorder has subscribed yet (only at start-up).
MAX_HELD_COMMANDS = 50
#: |a| below this for a whole second is not a worn sensor (free fall lasts < 0.5 s): a fault.
DEAD_ACCEL_MPS2 = 2.0


class TriggerFusionNode(Node):
    """Thin wrapper around the detectors and the fusion policy."""

    def __init__(self, **kw) -> None:
        super().__init__('trigger_fusion', **kw)
        p = self._p = self._declare_all()
        try:
            self._dispatch = DispatchProximity(p['radius_m'], p['hysteresis_m'],
                                               p['max_accuracy_m'])
            self._weapon = WeaponDrawn(p['holster_debounce_s'], p['holster_clear_s'])
            self._pursuit = FootPursuit()
            self._fight = Fight()
            self._down = OfficerDown(OfficerDownParams(
                down_hold_s=p['down_hold_s'], down_hold_no_impact_s=p['down_hold_no_impact_s'],
                dismiss_s=p['dismiss_s']))
            self._fusion = Fusion(p['auto_stop_s'])
        except (DetectorError, FusionError) as exc:
            raise ParameterError(f'parameter {self.get_name()}: {exc}') from exc
        self._manual = Manual()
        self._unit_id = p['unit_id'] or self.get_namespace().strip('/') or socket.gethostname()

        self._last_imu = self._last_fix_rx = self._holster_rx = None
        self._imu_dead_since: float | None = None
        self._imu_fault = ''
        self._last_good_fix: NavSatFix | None = None
        self._fix_good = False
        self._incident_id = ''
        self._alert_id = ''
        self._published_levels: dict[Source, int] = {}
        self._last_triggers_pub = 0.0
        self.bad_msgs = 0
        self.commands_sent = 0
        self._held: list[DiagnosticStatus] = []

        self._pub_triggers = self.create_publisher(DiagnosticArray, 'bodycam/triggers',
                                                   RELIABLE_QOS)
        self._pub_cmd = self.create_publisher(DiagnosticStatus, 'recorder/command', RELIABLE_QOS)
        self._pub_alert = self.create_publisher(DiagnosticStatus, 'bodycam/alerts', LATCHED_QOS)
        self.create_subscription(Imu, 'imu/data', self._on_imu, SENSOR_QOS)
        self.create_subscription(NavSatFix, 'gps/fix', self._on_fix, SENSOR_QOS)
        self.create_subscription(TwistStamped, 'gps/vel', self._on_vel, SENSOR_QOS)
        self.create_subscription(Bool, 'holster/weapon_drawn', self._on_holster, LATCHED_QOS)
        self.create_subscription(NavSatFix, 'dispatch/destination', self._on_dispatch,
                                 LATCHED_QOS)
        self.create_subscription(DiagnosticStatus, 'recorder/status', self._on_recorder,
                                 SENSOR_QOS)
        self.create_service(Trigger, 'bodycam/start_recording', self._on_start)
        self.create_service(Trigger, 'bodycam/stop_recording', self._on_stop)
        self.create_service(Trigger, 'bodycam/cancel_alert', self._on_cancel)
        self._diag = Diagnostics(self, hardware_id='trigger_fusion')
        self.create_timer(0.1, self._tick)

    # ------------------------------------------------------------------ parameters

    def _declare_all(self) -> dict:
        def d(name, default, description, **kw):
            return declare(self, name, default, description, **kw)

        return {
            'radius_m': d('radius_m', ONE_MILE_M, 'dispatch proximity radius [m]',
                          min_value=1.0, max_value=1e6),
            'hysteresis_m': d('hysteresis_m', 100.0, 'extra distance before leaving the radius '
                              'counts [m]', min_value=0.0, max_value=1e5),
            'max_accuracy_m': d('max_accuracy_m', 50.0, 'ignore fixes whose horizontal 1-sigma '
                                'is worse [m]', min_value=0.1, max_value=1e4),
            'holster_debounce_s': d('holster_debounce_s', 0.0, 'a draw must hold this long '
                                    '(the holster node already debounces the switch) [s]',
                                    min_value=0.0, max_value=5.0),
            'holster_clear_s': d('holster_clear_s', 2.0, 'holstered this long clears the '
                                 'trigger [s]', min_value=0.0, max_value=60.0),
            'down_hold_s': d('down_hold_s', 10.0, 'horizontal and still this long after an '
                             'impact = officer down [s]', min_value=3.0, max_value=600.0),
            'down_hold_no_impact_s': d('down_hold_no_impact_s', 60.0, 'horizontal and still '
                                       'this long without an impact = officer down [s]',
                                       min_value=3.0, max_value=3600.0),
            'dismiss_s': d('dismiss_s', 20.0, 'time to dismiss an officer-down detection '
                           'before the alert [s]', min_value=0.0, max_value=600.0),
            'auto_stop_s': d('auto_stop_s', 0.0, 'stop recording this long after every trigger '
                             'cleared; 0 = only the officer stops [s]', min_value=0.0,
                             max_value=86400.0),
            'imu_stale_s': d('imu_stale_s', 1.0, 'no IMU sample this long = STALE [s]',
                             min_value=0.05, max_value=60.0),
            'gps_stale_s': d('gps_stale_s', 5.0, 'no GPS fix this long = STALE [s]',
                             min_value=0.1, max_value=600.0),
            'publish_period_s': d('publish_period_s', 1.0, 'bodycam/triggers period (also '
                                  'published at once on any level change) [s]',
                                  min_value=0.05, max_value=60.0),
            'officer_id': d('officer_id', '', 'badge / officer id carried by alerts'),
            'unit_id': d('unit_id', '', "unit id carried by alerts ('' = namespace or host)"),
        }

    # ------------------------------------------------------------------ inputs

    def _on_imu(self, msg: Imu) -> None:
        now = self._now()
        t = stamp_s(msg.header.stamp) or now
        a = (msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z)
        w = (msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z)
        if not all(math.isfinite(v) for v in a):
            self._bad('IMU sample with a non-finite acceleration')
            return
        self._last_imu = now
        if math.sqrt(a[0] ** 2 + a[1] ** 2 + a[2] ** 2) < DEAD_ACCEL_MPS2:
            self._imu_dead_since = self._imu_dead_since or t
            if t - self._imu_dead_since > 1.0:
                self._imu_fault = f'IMU reads |a| < {DEAD_ACCEL_MPS2} m/s² for over 1 s'
        else:
            self._imu_dead_since, self._imu_fault = None, ''
        gyro = w if all(math.isfinite(v) for v in w) else None
        fired = self._pursuit.update(t, a, gyro)
        fired |= self._fight.update(t, a, gyro)
        events = self._down.update(t, a, gyro)
        if fired or events:
            self._handle_down_events(events)
            self._step()

    def _on_fix(self, msg: NavSatFix) -> None:
        self._last_fix_rx = now = self._now()
        t = stamp_s(msg.header.stamp) or now
        fix = Fix(t, msg.latitude, msg.longitude, msg.status.status >= NavSatStatus.STATUS_FIX,
                  horizontal_accuracy_m(list(msg.position_covariance),
                                        msg.position_covariance_type))
        crossing = self._dispatch.update(fix)
        self._fix_good = self._dispatch.last_fix is fix   # has a fix, accuracy acceptable
        if self._fix_good:
            self._last_good_fix = msg
        if crossing is not None:
            self._step()

    def _on_vel(self, msg: TwistStamped) -> None:
        speed = math.hypot(msg.twist.linear.x, msg.twist.linear.y)
        if not math.isfinite(speed):
            self._bad('GPS velocity not finite')
            return
        now = self._now()
        good = self._fix_good and self._last_fix_rx is not None and \
            now - self._last_fix_rx < self._p['gps_stale_s']
        self._pursuit.update_gps(stamp_s(msg.header.stamp) or now, speed, good)

    def _on_holster(self, msg: Bool) -> None:
        self._holster_rx = now = self._now()
        if self._weapon.update(now, bool(msg.data)):
            self._step()
        else:
            self._step(publish_only_changes=True)

    def _on_dispatch(self, msg: NavSatFix) -> None:
        now = self._now()
        try:
            if msg.status.status == NavSatStatus.STATUS_NO_FIX:
                self._dispatch.clear_destination(now)
                self.get_logger().info('dispatch cleared')
            else:
                self._dispatch.set_destination(now, msg.latitude, msg.longitude)
                self.get_logger().info(f'dispatched to {msg.latitude:.6f}, {msg.longitude:.6f}')
        except DetectorError as exc:
            self._bad(f'dispatch destination ignored: {exc}')
            return
        self._step()

    def _on_recorder(self, msg: DiagnosticStatus) -> None:
        try:
            self._incident_id = decode_recorder(from_status(msg)).incident_id
        except MessageError as exc:
            self._bad(f'recorder/status ignored: {exc}')

    def _now(self) -> float:
        """The node clock (ROS time; sim time under ``use_sim_time``) in seconds."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _bad(self, what: str) -> None:
        self.bad_msgs += 1
        self.get_logger().warning(f'{what} (skipped; {self.bad_msgs} so far)',
                                  throttle_duration_sec=10.0)

    # ------------------------------------------------------------------ services

    def _on_start(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        started = self._manual.start(self._now())
        self._step()
        resp.success = True
        resp.message = 'recording started (manual)' if started else 'already started (manual)'
        return resp

    def _on_stop(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        now = self._now()
        decision = self._fusion.request_stop(now, self._states())
        resp.success, resp.message = decision.accepted, decision.message
        if decision.accepted:
            self._manual.stop()
            if decision.command is not None:
                self._send(decision.command)
            self._fusion.observe(self._states(), now)   # active triggers count as handled
            self._publish_triggers()
        else:
            self.get_logger().warning(f'manual stop {decision.message}')
        return resp

    def _on_cancel(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        ev = self._down.cancel(self._now())
        if ev is None:
            resp.success, resp.message = False, 'no officer-down detection or alert open'
        else:
            self._handle_down_events([ev])
            self._step()
            resp.success, resp.message = True, 'officer-down cancelled'
        return resp

    # ------------------------------------------------------------------ decisions

    def _states(self) -> list[TriggerState]:
        return [self._weapon.state(), self._dispatch.state(), self._fight.state(),
                self._pursuit.state(), self._down.state(), self._manual.state()]

    def _tick(self) -> None:
        now = self._now()
        self._flush_held()
        self._weapon.tick(now)
        if self._last_imu is not None and now - self._last_imu > self._p['imu_stale_s']:
            # The IMU went quiet: timers still run out (dismiss window, clear times).
            self._pursuit.tick(now)
            self._fight.tick(now)
            self._handle_down_events(self._down.tick(now))
        self._step()

    def _step(self, publish_only_changes: bool = False) -> None:
        now = self._now()
        states = self._states()
        for cmd in self._fusion.observe(states, now):
            self._send(cmd)
        self._publish_triggers(states, force=not publish_only_changes
                               and now - self._last_triggers_pub >= self._p['publish_period_s'])

    def _send(self, cmd: RecorderCommand) -> None:
        try:
            wire = encode_command(cmd, 'trigger_fusion')
        except MessageError as exc:
            # A sensor stamp the recorder would refuse (<= 0 from a bad clock): recording
            # matters more than the exact trigger time, so send it with the time now.
            self._bad(f'recorder command trigger time replaced by now: {exc}')
            try:
                wire = encode_command(replace(cmd, trigger_time=self._now()), 'trigger_fusion')
            except MessageError as exc2:   # the node clock itself is 0 (sim, no /clock yet)
                self._bad(f'recorder command dropped, no valid time: {exc2}')
                return
        msg = to_status(wire)
        self.get_logger().info(f'recorder {cmd.kind.value}: {cmd.reason.value} ({cmd.message})')
        if self._pub_cmd.get_subscription_count() == 0 or self._held:
            # Nobody listening yet (graph still starting): a volatile topic would drop it.
            # Hold it (trigger_time says when the trigger began) and send once one matches.
            self._held.append(msg)
            del self._held[:-MAX_HELD_COMMANDS]
            return
        self._pub_cmd.publish(msg)
        self.commands_sent += 1

    def _flush_held(self) -> None:
        if self._held and self._pub_cmd.get_subscription_count() > 0:
            for msg in self._held:
                self._pub_cmd.publish(msg)
                self.commands_sent += 1
            self.get_logger().info(f'sent {len(self._held)} command(s) held until the '
                                   'recorder subscribed')
            self._held.clear()

    def _health(self, now: float) -> dict[Source, Health]:
        imu_stale = self._last_imu is None or now - self._last_imu > self._p['imu_stale_s']
        imu = Health(stale=imu_stale, fault=self._imu_fault)
        gps_stale = self._last_fix_rx is None or now - self._last_fix_rx > self._p['gps_stale_s']
        return {Source.FIGHT: imu, Source.FOOT_PURSUIT: imu, Source.OFFICER_DOWN: imu,
                Source.DISPATCH_PROXIMITY: Health(stale=gps_stale),
                Source.HOLSTER: Health(stale=self._holster_rx is None)}

    def _publish_triggers(self, states: list[TriggerState] | None = None,
                          force: bool = True) -> None:
        now = self._now()
        statuses = Fusion.statuses(states or self._states(), self._health(now))
        levels = {s.source: int(s.level) for s in statuses}
        if not force and levels == self._published_levels:
            return
        arr = DiagnosticArray(status=[to_status(self._trigger_wire(s)) for s in statuses])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._pub_triggers.publish(arr)
        self._published_levels, self._last_triggers_pub = levels, now
        active = [s.source.value for s in statuses if s.level is Level.WARN]
        faults = [s.source.value for s in statuses if s.level is Level.ERROR]
        values = dict(active=','.join(active), recording=str(self._fusion.recording).lower(),
                      starts=self._fusion.starts, stops=self._fusion.stops,
                      commands_sent=self.commands_sent, bad_msgs=self.bad_msgs)
        if faults:
            self._diag.set(ERROR, 'sensor fault: ' + ','.join(faults), **values)
        else:
            self._diag.set(WARN if active else OK,
                           ('active: ' + ','.join(active)) if active else 'idle', **values)

    def _trigger_wire(self, s: SourceStatus):
        values = dict(s.values)
        since, conf = values.pop('since', ''), values.pop('confidence', None)
        report = TriggerReport(Reason(s.source.value), s.level, s.message,
                               since if isinstance(since, float) else None,
                               conf if isinstance(conf, float) else None, trigger_extra(values))
        try:
            return encode_trigger(report, 'trigger_fusion')
        except MessageError as exc:   # a detector gave a NaN: say so instead of going quiet
            return encode_trigger(TriggerReport(report.source, Level.ERROR,
                                                f'bad detector output: {exc}'), 'trigger_fusion')

    # ------------------------------------------------------------------ alerts

    def _handle_down_events(self, events: list[DownEvent]) -> None:
        for ev in events:
            self.get_logger().warning(f'officer_down {ev.kind.value}: {ev.detail}')
            if ev.kind is DownEventKind.ALERT:
                self._alert_id = str(uuid.uuid4())
                self._publish_alert('raised', ev)
            elif ev.kind in (DownEventKind.CANCELLED, DownEventKind.CLEARED) and self._alert_id:
                self._publish_alert(ev.kind.value, ev)
                self._alert_id = ''

    def _publish_alert(self, state: str, ev: DownEvent) -> None:
        fix = self._last_good_fix
        extra = {'after_impact': str(ev.impact).lower(), 'detail': ev.detail}
        if fix is not None:
            extra['fix_stamp'] = repr(stamp_s(fix.header.stamp))
        alert = DownAlert(
            self._alert_id, AlertState(state), ev.t, self._unit_id, self._p['officer_id'],
            fix.latitude if fix is not None else None, fix.longitude if fix is not None else None,
            self._incident_id, f'officer down: {state}', extra=tuple(sorted(extra.items())))
        try:
            wire = encode_alert(alert)
        except MessageError as exc:   # a sensor stamp that is no time: the alert goes anyway
            self._bad(f'officer-down alert stamp replaced by now: {exc}')
            wire = encode_alert(replace(alert, stamp=self._now()))
        self._pub_alert.publish(to_status(wire))


def main(args=None) -> int:
    return run_node(lambda: TriggerFusionNode(), args)


if __name__ == '__main__':
    sys.exit(main())
