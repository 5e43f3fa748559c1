"""gps node: GNSS fixes from a serial NMEA receiver, gpsd, an NMEA log or the simulation.

Publishes ``gps/fix`` (sensor_msgs/NavSatFix) and ``gps/vel`` (geometry_msgs/TwistStamped,
ENU: linear.x east, linear.y north, linear.z up) with SENSOR_QOS. header.stamp is the node
clock when the fix was received; the receiver's own UTC time of the fix is the diagnostics
value ``gnss_time``. The source runs on a reader thread (serial and socket reads block),
which publishes each fix as it arrives, as ROS 2's NMEA drivers do (no hand-off to the
executor: rclpy's events executor has no guard conditions, and a fix waits for nothing);
diagnostics are reported from there on a status change and once a second from a timer,
under one lock. A missing serial port or an unreachable gpsd is an ERROR diagnostic and is
retried every ``retry_s``; the node stays up.

Time: ``header.stamp`` is the node clock (ROS time; sim time under ``use_sim_time``) at
reception; ``gnss_time`` is the receiver's UTC. ``time.monotonic`` only times the receiver's
silence (an I/O timeout). The sim source paces its 1 Hz fixes and reads its scenario on the
wall clock (``scenario_start`` in UNIX s), whatever clock stamps them.

NavSatFix mapping: status NO_FIX / FIX / SBAS_FIX (DGPS, SBAS) / GBAS_FIX (RTK), service GPS;
position_covariance in ENU m², DIAGONAL_KNOWN from the receiver's GST error estimates,
APPROXIMATED from HDOP × ``uere_m`` otherwise, UNKNOWN without either (see core/nmea.py).
"""
from __future__ import annotations

import datetime
import math
import sys
import threading
import time

from geometry_msgs.msg import TwistStamped
from rclpy.exceptions import InvalidHandle
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import NavSatFix, NavSatStatus
from std_msgs.msg import Header

from bodycam_ros.core.nmea import Fix, FixStatus
from bodycam_ros.drivers.gps import (GpsdSource, GpsSource, GpsSourceError, NmeaFileSource,
                                     SerialNmeaSource, SimGpsSource, SourceState, SourceStatus)
from bodycam_ros.rosutil import (ERROR, OK, SENSOR_QOS, STALE, WARN, Diagnostics,
                                 ParameterError, declare, run_node)

SOURCES = ('serial', 'gpsd', 'file', 'sim')
#: No fix for this long while the source is running is a WARN (receivers report at >= 1 Hz).
STALE_AFTER_S = 3.0


class GpsNode(Node):
    def __init__(self, **kw) -> None:
        super().__init__('gps', **kw)
        p = self._declare_all()
        self._p = p
        self._source = self._make_source(p)
        self._source.on_status = lambda _s: self._guarded(self._report)

        self._pub_fix = self.create_publisher(NavSatFix, 'gps/fix', SENSOR_QOS)
        self._pub_vel = self.create_publisher(TwistStamped, 'gps/vel', SENSOR_QOS)
        self._diag = Diagnostics(self, hardware_id=self._source.description)

        self.published = self.published_no_fix = 0
        self._last: Fix | None = None
        self._last_rx = time.monotonic()       # no data yet counts from start
        self._lock = threading.RLock()         # the reader thread and the 1 Hz report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name='gps-reader', daemon=True)
        self.create_timer(1.0, self._on_timer)
        self._thread.start()

    # ------------------------------------------------------------------ parameters

    def _declare_all(self) -> dict:
        def d(name, default, description, **kw):
            return declare(self, name, default, description, **kw)

        return {
            'source': d('source', 'gpsd', 'where fixes come from: serial (NMEA receiver), '
                        'gpsd, file (NMEA log replay), sim (scenario); default gpsd so a unit '
                        'never publishes simulated positions by accident', choices=SOURCES),
            'port': d('port', '/dev/ttyUSB0', 'serial device of the NMEA receiver '
                      '(source=serial)'),
            'baud': d('baud', 9600, 'serial baud rate (source=serial)', min_value=1200,
                      max_value=921600),
            'host': d('host', '127.0.0.1', 'gpsd host (source=gpsd)'),
            'gpsd_port': d('gpsd_port', 2947, 'gpsd TCP port (source=gpsd)', min_value=1,
                           max_value=65535),
            'path': d('path', '', 'NMEA log to replay (source=file)'),
            'loop': d('loop', False, 'restart the log at its end (source=file)'),
            'speed': d('speed', 1.0, 'replay speed factor, 2.0 = twice real time '
                       '(source=file)', min_value=0.01, max_value=1000.0),
            'max_gap_s': d('max_gap_s', 5.0, 'longest pause between two replayed fixes, in '
                           'log seconds; longer cuts in a log are shortened (source=file)',
                           min_value=0.1, max_value=86400.0),
            'uere_m': d('uere_m', 4.0, 'user equivalent range error [m, 1 sigma]: the '
                        'position covariance is HDOP x UERE when the receiver sends no GST',
                        min_value=0.1, max_value=100.0),
            'frame_id': d('frame_id', 'gps_link', 'header.frame_id of gps/fix and gps/vel'),
            'retry_s': d('retry_s', 2.0, 'reopen/reconnect period while the receiver or '
                         'gpsd is missing [s]', min_value=0.1, max_value=300.0),
            'scenario': d('scenario', '', "simulated shift (source=sim); '' = idle"),
            'scenario_start': d('scenario_start', 0.0, 'UNIX time of scenario t=0; 0 = node '
                                'start (source=sim)', min_value=0.0, max_value=1e10),
        }

    def _make_source(self, p: dict) -> GpsSource:
        name = self.get_name()
        if p['source'] == 'serial':
            return SerialNmeaSource(p['port'], p['baud'], p['uere_m'], p['retry_s'])
        if p['source'] == 'gpsd':
            return GpsdSource(p['host'], p['gpsd_port'], p['uere_m'], p['retry_s'])
        if p['source'] == 'file':
            if not p['path']:
                raise ParameterError(f'parameter {name}.path is empty; allowed an NMEA log '
                                     'file when source=file')
            try:
                return NmeaFileSource(p['path'], p['speed'], p['max_gap_s'], p['loop'],
                                      p['uere_m'])
            except GpsSourceError as exc:
                raise ParameterError(f'parameter {name}.path={p["path"]!r} is invalid: '
                                     f'{exc}') from exc
        try:
            return SimGpsSource(p['scenario'], p['scenario_start'], 1.0, p['uere_m'])
        except ValueError as exc:
            raise ParameterError(f'parameter {name}.scenario={p["scenario"]!r} is invalid: '
                                 f'{exc}') from exc

    # ------------------------------------------------------------------ reader thread

    def _read_loop(self) -> None:
        """Pull fixes from the source; stamp them on arrival and publish them."""
        while not self._stop.is_set():
            try:
                for fix in self._source.fixes(self._stop):
                    if not self._guarded(lambda f=fix: self._publish(f, self.get_clock().now())):
                        return    # shutting down
                    self._guarded(self._report)
                return    # the stop flag, or a replay that ended
            except Exception as exc:  # noqa: BLE001  a source bug must not end GPS for good
                self.get_logger().error(f'{self._source.description}: {exc!r}; restarting '
                                        f'in {self._p["retry_s"]} s')
                self._source.fail(f'source failed: {exc!r}')
                self._stop.wait(self._p['retry_s'])

    # ------------------------------------------------------------------ publishing

    def _guarded(self, publish) -> bool:
        """Run ``publish`` under the lock; False once SIGINT/SIGTERM shut the context down
        under it (the node is stopping: a publish that fails now is not an error)."""
        try:
            with self._lock:
                publish()
            return True
        except (_rclpy.RCLError, InvalidHandle):
            if self.context.ok():
                raise
            return False

    def _on_timer(self) -> None:
        self._guarded(self._report)

    def _publish(self, fix: Fix, stamp: Time) -> None:
        header = Header(stamp=stamp.to_msg(), frame_id=self._p['frame_id'])
        msg = NavSatFix(header=header, latitude=fix.lat, longitude=fix.lon, altitude=fix.alt,
                        position_covariance=list(fix.covariance),
                        position_covariance_type=int(fix.covariance_type))
        msg.status = NavSatStatus(status=int(fix.status), service=NavSatStatus.SERVICE_GPS)
        self._pub_fix.publish(msg)
        self.published += 1
        self.published_no_fix += fix.status is FixStatus.NO_FIX
        self._last, self._last_rx = fix, time.monotonic()
        east, north, up = fix.velocity_enu
        if fix.has_fix and not (math.isnan(east) or math.isnan(north)):
            vel = TwistStamped()
            vel.header = header
            vel.twist.linear.x, vel.twist.linear.y, vel.twist.linear.z = east, north, up
            self._pub_vel.publish(vel)

    def _report(self) -> None:
        status: SourceStatus = self._source.status
        level, message = self._level(status)
        st, last = self._source.stats, self._last
        self._diag.set(
            level, message, source=self._p['source'], source_state=status.state.value,
            source_message=status.message, fixes_published=self.published,
            no_fix_published=self.published_no_fix, sentences_parsed=st.sentences,
            checksum_failures=st.checksum_failures, malformed_lines=st.malformed,
            comment_lines=st.comments, unknown_sentences=st.unknown, retries=self._source.retries,
            last_status=last.status.name if last else '',
            last_hdop=last.hdop if last else math.nan,
            satellites=last.satellites if last else -1,
            gnss_time=_utc(last.time if last else math.nan, iso=False),
            gnss_time_utc=_utc(last.time if last else math.nan, iso=True),
            last_error=st.last_error)

    def _level(self, status: SourceStatus) -> tuple[int, str]:
        if status.state is SourceState.ERROR:
            return ERROR, status.message
        if status.state is SourceState.ENDED:
            return WARN, status.message
        if status.state is SourceState.STARTING:
            return STALE, 'waiting for the receiver'
        quiet = time.monotonic() - self._last_rx
        if quiet > STALE_AFTER_S:
            return WARN, f'no data for {quiet:.0f} s'
        if self._last is None:
            return STALE, 'waiting for the first fix'
        if not self._last.has_fix:
            return WARN, 'no fix'
        return OK, {FixStatus.FIX: 'fix', FixStatus.DGPS: 'DGPS fix',
                    FixStatus.RTK: 'RTK fix'}[self._last.status]

    def close(self) -> None:
        """Stop the reader thread (called before destroy_node)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=3.0)


def _utc(t: float, iso: bool) -> str:
    """The receiver's UTC time of a fix: UNIX seconds (ms precision) or ISO 8601; '' unknown."""
    if math.isnan(t):
        return ''
    if not iso:
        return f'{t:.3f}'
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(
        timespec='milliseconds').replace('+00:00', 'Z')


def main(args=None) -> int:
    return run_node(lambda: GpsNode(), args)


if __name__ == '__main__':
    sys.exit(main())
