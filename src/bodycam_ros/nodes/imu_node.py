"""imu node: body-frame IMU samples from the simulation, a recorded trial or a Linux IIO device.

Publishes ``imu/data`` (sensor_msgs/Imu, SENSOR_QOS, frame ``imu_link``: x forward, y left,
z up; m/s², rad/s). Orientation is not estimated (orientation_covariance[0] = -1, as the
message definition asks). A ~50 Hz timer publishes every sample due since the previous tick,
each with its own stamp, so a 200 Hz stream needs no 200 Hz Python timer. Samples with a NaN
or infinite value are dropped and counted, never published. A missing recording or IIO device
is an ERROR diagnostic and is retried every ``retry_s``; the node lives on.

Time: sources are paced by and stamp with the node clock (ROS time; sim time under
``use_sim_time``, so the scenario and a recording run at the simulation's pace); an IIO
device's reader thread stamps each sample with the node clock as it reads it. Nothing is
published before that clock starts (sim time 0 until the first ``/clock``).
"""
from __future__ import annotations

import math
import sys
import time

from builtin_interfaces.msg import Time
from rclpy.node import Node
from sensor_msgs.msg import Imu

from bodycam_ros.core import scenario as scenario_mod
from bodycam_ros.core.imu_formats import ImuFormatError, load
from bodycam_ros.drivers.imu import (ImuReading, ImuSource, ImuSourceError, IioImuSource,
                                     RecordingImuSource, SimImuSource, parse_axis_map)
from bodycam_ros.rosutil import (ERROR, OK, SENSOR_QOS, WARN, Diagnostics, ParameterError,
                                 declare, run_node)

SOURCES = ('sim', 'recording', 'iio')
FORMATS = ('auto', 'sisfall', 'umafall')
#: Publishing ticks per second; each tick publishes all samples due since the last one.
TICK_HZ = 50.0


def stamp_of(t: float) -> Time:
    """ROS seconds -> builtin_interfaces/Time."""
    sec = int(t)
    return Time(sec=sec, nanosec=min(999_999_999, int(round((t - sec) * 1e9))))


def _diag3(v: float) -> list[float]:
    return [v, 0.0, 0.0, 0.0, v, 0.0, 0.0, 0.0, v]


class ImuNode(Node):
    """Thin wrapper: parameters -> a driver source; poll it; publish; report."""

    def __init__(self, source: ImuSource | None = None, **kw) -> None:
        super().__init__('imu', **kw)
        self._p = p = self._declare_all()
        self._pub = self.create_publisher(Imu, 'imu/data', SENSOR_QOS)
        self._accel_cov = _diag3(p['accel_variance'])
        self._gyro_cov = _diag3(p['gyro_variance'])
        self._no_cov = [-1.0] + [0.0] * 8

        self.published = self.dropped_nan = self.errors = self.reopens = 0
        self._loader_nan = self._skipped_lines = 0
        self._label = ''
        self._last_error = ''
        self._retry_at = 0.0
        self._window = (time.monotonic(), 0)
        self._measured_rate = 0.0

        self._injected = source is not None
        self._source: ImuSource | None = source
        self._source_started = False     # started on the first tick with a running clock
        if source is None:
            self._open()
        self._diag = Diagnostics(self, hardware_id=self._description())
        self.create_timer(1.0 / TICK_HZ, self._tick)
        self.create_timer(1.0, self._report)
        self._report()

    # ------------------------------------------------------------------ parameters

    def _declare_all(self) -> dict:
        def d(name, default, description, **kw):
            return declare(self, name, default, description, **kw)

        p = {
            'source': d('source', 'sim', 'sample source: sim (scenario), recording (file '
                        'replay at its true rate), iio (Linux industrial-I/O sysfs)',
                        choices=SOURCES),
            'path': d('path', '', 'recording to replay (source=recording)'),
            'format': d('format', 'auto', 'recording format (source=recording)',
                        choices=FORMATS),
            'loop': d('loop', False, 'restart the recording at its end (source=recording)'),
            'rate': d('rate', 100.0, 'sample rate [Hz] (sim, iio; a recording keeps its own)',
                      min_value=0.1, max_value=1000.0),
            'iio_device': d('iio_device', '', 'IIO device: sysfs path, iio:deviceN or its '
                            'name; empty = the first with an accelerometer (source=iio)'),
            'axis_map': d('axis_map', 'x,y,z', 'body x,y,z from device axes, e.g. "-y,x,z" '
                          '(source=iio)'),
            'frame_id': d('frame_id', 'imu_link', 'header.frame_id (REP 103 body frame)'),
            'accel_variance': d('accel_variance', 0.01, 'linear_acceleration_covariance '
                                'diagonal [(m/s²)²]', min_value=0.0, max_value=1e6),
            'gyro_variance': d('gyro_variance', 1e-4, 'angular_velocity_covariance diagonal '
                               '[(rad/s)²]', min_value=0.0, max_value=1e6),
            'scenario': d('scenario', '', f'sim scenario ({", ".join(scenario_mod.SCENARIOS)}); '
                          "'' = idle"),
            'scenario_start': d('scenario_start', 0.0, 'scenario epoch [ROS s: UNIX s on the '
                                'system clock, sim s under use_sim_time]; 0 = node start',
                                min_value=0.0, max_value=1e12),
            'retry_s': d('retry_s', 2.0, 'reopen period while the file/device is missing [s]',
                         min_value=0.05, max_value=300.0),
        }
        name = self.get_name()
        if p['source'] == 'recording' and not p['path']:
            raise ParameterError(f'parameter {name}.path is empty; allowed a SisFall or '
                                 'UMAFall file when source=recording')
        if p['scenario'] and p['scenario'] not in scenario_mod.SCENARIOS:
            raise ParameterError(f'parameter {name}.scenario={p["scenario"]!r} is invalid; '
                                 f'allowed one of {", ".join(scenario_mod.SCENARIOS)}')
        try:
            parse_axis_map(p['axis_map'])
        except ImuSourceError as exc:
            raise ParameterError(f'parameter {name}.axis_map: {exc}') from None
        return p

    # ------------------------------------------------------------------ source

    def _open(self) -> None:
        p = self._p
        try:
            if p['source'] == 'sim':
                src: ImuSource = SimImuSource(p['scenario'], p['scenario_start'], p['rate'])
            elif p['source'] == 'recording':
                rec = load(p['path'], p['format'])
                self._loader_nan, self._skipped_lines = rec.dropped_nan, rec.skipped_lines
                self._label = rec.label
                src = RecordingImuSource(rec, loop=p['loop'])
                self.get_logger().info(
                    f'replaying {rec.path} ({rec.label}, {len(rec)} samples at {rec.rate_hz} Hz'
                    f', {rec.duration_s:.1f} s; {rec.skipped_lines} bad lines and '
                    f'{rec.dropped_nan} NaN samples skipped)')
            else:
                src = IioImuSource(p['iio_device'], p['rate'],
                                   p['axis_map'], clock=self._now)
        except (OSError, ImuFormatError, ImuSourceError) as exc:
            self._fail(f'{p["source"]}: {exc}')
            return
        self._source_started = False
        self._source = src
        self._last_error = ''

    def _fail(self, message: str) -> None:
        self.errors += 1
        self._last_error = message
        self._retry_at = time.monotonic() + self._p['retry_s']
        self.get_logger().error(message, throttle_duration_sec=10.0)
        if hasattr(self, '_diag'):
            self._report()

    def _description(self) -> str:
        if self._source is not None:
            return self._source.description
        return f'{self._p["source"]}:{self._p["path"] or self._p["iio_device"]}'

    def _now(self) -> float:
        """The node clock (ROS time) in seconds; 0 while sim time has had no /clock."""
        return self.get_clock().now().nanoseconds * 1e-9

    # ------------------------------------------------------------------ publishing

    def _tick(self) -> None:
        src = self._source
        if src is None:
            if not self._injected and time.monotonic() >= self._retry_at:
                self.reopens += 1
                self._open()
            return
        now = self._now()
        if now <= 0.0:
            return                      # sim time before the first /clock
        if not self._source_started:
            src.start(now)
            self._source_started = True
        for r in src.poll(now):
            self._publish(r)
        err = getattr(src, 'error', None)
        if err:
            src.close()
            self._source = None
            self._fail(err)

    def _publish(self, r: ImuReading) -> None:
        values = r.accel + (r.gyro or ())
        if not all(math.isfinite(v) for v in values):
            self.dropped_nan += 1
            self.get_logger().warning(f'dropped a sample with a non-finite value (total '
                                      f'{self.dropped_nan})', throttle_duration_sec=5.0)
            return
        msg = Imu()
        msg.header.stamp = stamp_of(r.t)
        msg.header.frame_id = self._p['frame_id']
        msg.orientation_covariance[0] = -1.0
        a = msg.linear_acceleration
        a.x, a.y, a.z = r.accel
        msg.linear_acceleration_covariance = self._accel_cov
        if r.gyro is None:
            msg.angular_velocity_covariance = self._no_cov
        else:
            w = msg.angular_velocity
            w.x, w.y, w.z = r.gyro
            msg.angular_velocity_covariance = self._gyro_cov
        self._pub.publish(msg)
        self.published += 1

    # ------------------------------------------------------------------ diagnostics

    def _report(self) -> None:
        now = time.monotonic()
        t0, n0 = self._window
        if now - t0 >= 0.5:
            self._measured_rate = (self.published - n0) / (now - t0)
            self._window = (now, self.published)
        src = self._source
        expected = src.rate_hz if src is not None else self._p['rate']
        values = dict(
            source=self._p['source'], device=self._description(), rate_hz=self._measured_rate,
            expected_rate_hz=expected, samples_published=self.published,
            dropped_nan=self.dropped_nan + self._loader_nan, skipped_lines=self._skipped_lines,
            skipped_late=getattr(src, 'skipped_late', 0), errors=self.errors,
            reopens=self.reopens, last_error=self._last_error)
        if self._label:
            values['label'] = self._label
        if src is None:
            self._diag.set(ERROR, self._last_error or 'no source', **values)
        elif getattr(src, 'finished', False):
            self._diag.set(WARN, 'recording finished', **values)
        elif self.published > 0 and self._measured_rate < 0.8 * expected:
            self._diag.set(WARN, f'rate low: {self._measured_rate:.1f} of {expected:g} Hz',
                           **values)
        else:
            self._diag.set(OK, 'streaming', **values)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None


def main(args=None) -> int:
    return run_node(lambda: ImuNode(), args)


if __name__ == '__main__':
    sys.exit(main())
