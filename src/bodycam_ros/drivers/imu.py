"""IMU sample sources: the scripted simulation, a recorded trial, a Linux IIO device.

Every source hands out :class:`ImuReading` s in the REP 103 body frame (x forward, y left,
z up; m/s², rad/s) stamped with the UNIX time at which the sample was (or, for replay, is
deemed) taken. The node polls ``poll(now)`` from a ~50 Hz timer and publishes everything due
since the last call, so a 200 Hz stream needs no 200 Hz Python timer and every sample still
carries its own stamp. No ROS here.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from bodycam_ros.core import scenario as scenario_mod
from bodycam_ros.core.imu_formats import ImuRecording

Vec3 = tuple[float, float, float]

#: Readings older than this when polled are skipped (counted), so a stalled node does not
#: publish a burst of stale samples.
MAX_BACKLOG_S = 1.0
#: Where Linux lists IIO devices.
IIO_ROOT = Path('/sys/bus/iio/devices')


class ImuSourceError(RuntimeError):
    """A source that cannot deliver: device missing or unreadable, bad configuration."""


@dataclass(frozen=True)
class ImuReading:
    t: float               # UNIX time of the sample [s]
    accel: Vec3            # m/s², body frame
    gyro: Vec3 | None      # rad/s, body frame; None if the source has no gyro


class ImuSource(Protocol):
    description: str
    rate_hz: float
    skipped_late: int      # readings dropped because the caller fell behind

    def start(self, now: float) -> None: ...
    def poll(self, now: float) -> list[ImuReading]: ...
    def close(self) -> None: ...


class _Paced:
    """Sample k is due at ``t0 + k / rate``; hands out the due ones, skipping a long backlog."""

    def __init__(self, rate_hz: float, max_backlog_s: float = MAX_BACKLOG_S) -> None:
        if not rate_hz > 0:
            raise ImuSourceError(f'rate must be > 0 Hz, got {rate_hz}')
        self.rate_hz = rate_hz
        self._max_backlog_s = max_backlog_s
        self._t0: float | None = None
        self._k = 0
        self.skipped_late = 0

    def start(self, now: float) -> None:
        self._t0, self._k = now, 0

    def _due(self, now: float) -> range:
        if self._t0 is None:
            self.start(now)
        assert self._t0 is not None
        last = math.floor((now - self._t0) * self.rate_hz + 1e-9)
        oldest = math.ceil((now - self._max_backlog_s - self._t0) * self.rate_hz - 1e-9)
        if oldest > self._k:
            self.skipped_late += oldest - self._k
            self._k = oldest
        due = range(self._k, last + 1)
        self._k = max(self._k, last + 1)
        return due

    def _time(self, k: int) -> float:
        assert self._t0 is not None
        return self._t0 + k / self.rate_hz

    def close(self) -> None:
        pass


class SimImuSource(_Paced):
    """The shared scenario's body-worn IMU (``Scenario.imu_at``) at a fixed rate."""

    def __init__(self, scenario: str = '', scenario_start: float = 0.0,
                 rate_hz: float = 100.0) -> None:
        super().__init__(rate_hz)
        try:
            self._scenario = scenario_mod.get(scenario or 'idle')
        except ValueError as exc:
            raise ImuSourceError(str(exc)) from None
        self._scenario_start = scenario_start
        self.description = f'sim:{self._scenario.name}'

    def start(self, now: float) -> None:
        super().start(now)
        if not self._scenario_start:
            self._scenario_start = now

    def poll(self, now: float) -> list[ImuReading]:
        out = []
        for k in self._due(now):
            t = self._time(k)
            s = self._scenario.imu_at(t - self._scenario_start)
            out.append(ImuReading(t, s.accel, s.gyro))
        return out


class RecordingImuSource:
    """Replays a recorded trial at its true rate, paced by the caller's clock.

    Sample i is due at ``start + lap * duration + rec.t[i]``; with ``loop`` the trial
    repeats seamlessly, without it :attr:`finished` turns true after the last sample.
    """

    def __init__(self, rec: ImuRecording, loop: bool = False,
                 max_backlog_s: float = MAX_BACKLOG_S) -> None:
        if len(rec.t) == 0:
            raise ImuSourceError(f'{rec.path}: empty recording')
        self.rec = rec
        self.loop = loop
        self.rate_hz = rec.rate_hz
        self.description = f'recording:{Path(rec.path).name}'
        self._period = max(rec.duration_s, float(rec.t[-1]) + 1.0 / rec.rate_hz)
        self._max_backlog_s = max_backlog_s
        self._t0: float | None = None
        self._lap = self._i = 0
        self.skipped_late = 0
        self.laps_done = 0

    @property
    def finished(self) -> bool:
        return not self.loop and self._lap > 0

    def start(self, now: float) -> None:
        self._t0, self._lap, self._i = now, 0, 0

    def poll(self, now: float) -> list[ImuReading]:
        if self._t0 is None:
            self.start(now)
        assert self._t0 is not None
        out: list[ImuReading] = []
        t, acc, gyr = self.rec.t, self.rec.accel, self.rec.gyro
        while not self.finished:
            base = self._t0 + self._lap * self._period
            # Every sample due by now in this lap (t is sorted).
            end = int(np.searchsorted(t, now - base, side='right'))
            oldest = int(np.searchsorted(t, now - self._max_backlog_s - base, side='left'))
            if oldest > self._i:
                self.skipped_late += min(oldest, len(t)) - self._i
                self._i = min(oldest, len(t))
            for i in range(self._i, end):
                g = None if gyr is None else (float(gyr[i, 0]), float(gyr[i, 1]),
                                              float(gyr[i, 2]))
                out.append(ImuReading(base + float(t[i]),
                                      (float(acc[i, 0]), float(acc[i, 1]), float(acc[i, 2])),
                                      g))
            self._i = max(self._i, end)
            if self._i < len(t):
                break
            self._lap += 1
            self._i = 0
            self.laps_done += 1
            if now < self._t0 + self._lap * self._period:
                break
        return out

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- Linux IIO

def parse_axis_map(spec: str) -> np.ndarray:
    """'x,y,z' style map -> 3x3 matrix with body = M @ sensor.

    Entry j names the sensor axis (optionally negated) that becomes body axis j, e.g.
    '-y,x,z': body x = -sensor y, body y = sensor x, body z = sensor z. The map must be a
    proper rotation (each axis once, right-handed), or the frame would be mirrored.
    """
    parts = [p.strip().lower() for p in spec.split(',')]
    if len(parts) != 3:
        raise ImuSourceError(f'axis map {spec!r}: need 3 comma-separated axes like "x,y,z"')
    m = np.zeros((3, 3))
    for j, p in enumerate(parts):
        sign = -1.0 if p.startswith('-') else 1.0
        name = p.lstrip('+-')
        if name not in ('x', 'y', 'z'):
            raise ImuSourceError(f'axis map {spec!r}: {p!r} is not one of x, y, z, -x, -y, -z')
        m[j, 'xyz'.index(name)] = sign
    if sorted(np.abs(m).sum(axis=0)) != [1.0, 1.0, 1.0]:
        raise ImuSourceError(f'axis map {spec!r}: each sensor axis must appear exactly once')
    if np.linalg.det(m) < 0:
        raise ImuSourceError(f'axis map {spec!r} mirrors the frame (left-handed); flip one '
                             'more sign')
    return m


def find_iio_device(device: str, root: Path = IIO_ROOT) -> Path:
    """Resolve an IIO device given as a path, a directory name (iio:device0) or its ``name``.

    An empty ``device`` means the first device under ``root`` with an accelerometer.
    """
    if not device:
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if (d / 'in_accel_x_raw').exists():
                    return d
        raise ImuSourceError(f'no IIO accelerometer under {root}')
    p = Path(device)
    if p.is_absolute():
        if not p.is_dir():
            raise ImuSourceError(f'IIO device {p} does not exist')
        return p
    if (root / device).is_dir():
        return root / device
    found = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            try:
                if (d / 'name').read_text().strip() == device:
                    found.append(d)
            except OSError:
                continue
    if not found:
        raise ImuSourceError(f'no IIO device {device!r} under {root}')
    return found[0]


class _Channel:
    """One ``in_<type>_<axis>_raw`` file plus its scale and offset (IIO ABI)."""

    def __init__(self, dev: Path, kind: str, axis: str) -> None:
        self.path = dev / f'in_{kind}_{axis}_raw'
        self.scale = _read_attr(dev, f'in_{kind}_{axis}_scale', f'in_{kind}_scale',
                                default=1.0)
        self.offset = _read_attr(dev, f'in_{kind}_{axis}_offset', f'in_{kind}_offset',
                                 default=0.0)
        self._fd = os.open(self.path, os.O_RDONLY)

    def read(self) -> float:
        # sysfs attributes are re-read from offset 0; pread does it in one call.
        text = os.pread(self._fd, 64, 0).decode('ascii', 'replace').strip()
        return (float(text) + self.offset) * self.scale

    def close(self) -> None:
        os.close(self._fd)


def _read_attr(dev: Path, *names: str, default: float) -> float:
    for name in names:
        f = dev / name
        if f.exists():
            text = f.read_text().strip()
            try:
                return float(text)
            except ValueError:
                raise ImuSourceError(f'{f}: not a number: {text!r}') from None
    return default


def _read_mount_matrix(dev: Path, kind: str) -> np.ndarray:
    """The IIO ``mount_matrix`` (device frame = M @ chip frame), identity if absent."""
    for name in (f'in_{kind}_mount_matrix', 'mount_matrix'):
        f = dev / name
        if f.exists():
            text = f.read_text().strip()
            try:
                rows = [[float(v) for v in r.split(',')] for r in text.split(';')]
                m = np.array(rows, dtype=float)
            except ValueError:
                m = np.zeros(0)
            if m.shape != (3, 3):
                raise ImuSourceError(f'{f}: not a 3x3 matrix: {text!r}')
            return m
    return np.eye(3)


class IioImuSource:
    """Polls a Linux industrial-I/O IMU through sysfs at ``rate_hz`` on a thread.

    Values are ``(raw + offset) * scale`` per the IIO ABI (accel m/s², anglvel rad/s), turned
    by the device's ``mount_matrix`` when it has one and then by ``axis_map`` into the body
    frame. Sysfs polling suits up to a few hundred Hz; the reader thread stamps each sample
    with the time it was read. A read failure (device unplugged) stops the thread and sets
    :attr:`error`; the owner closes the source and opens a new one to retry.
    """

    def __init__(self, device: str, rate_hz: float = 100.0, axis_map: str = 'x,y,z',
                 root: Path = IIO_ROOT, clock: Callable[[], float] = time.time) -> None:
        if not rate_hz > 0:
            raise ImuSourceError(f'rate must be > 0 Hz, got {rate_hz}')
        self.rate_hz = rate_hz
        self._map = parse_axis_map(axis_map)
        self.dev = find_iio_device(device, root)
        self.description = f'iio:{self.dev}'
        self._clock = clock
        self.skipped_late = 0
        self.read_errors = 0
        self.last_read_error = ''
        self.error: str | None = None
        self._accel: list[_Channel] = []
        self._gyro: list[_Channel] | None = None
        try:
            self._accel = [_Channel(self.dev, 'accel', a) for a in 'xyz']
            if (self.dev / 'in_anglvel_x_raw').exists():
                self._gyro = [_Channel(self.dev, 'anglvel', a) for a in 'xyz']
        except OSError as exc:
            self.close()
            raise ImuSourceError(f'{self.dev}: not an accelerometer IIO device: {exc}') from None
        self._accel_m = self._map @ _read_mount_matrix(self.dev, 'accel')
        self._gyro_m = self._map @ _read_mount_matrix(self.dev, 'anglvel')
        name = self.dev / 'name'
        if name.exists():
            self.description += f' ({name.read_text().strip()})'
        self._queue: deque[ImuReading] = deque(maxlen=max(16, int(rate_hz * 2)))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_once(self) -> ImuReading:
        """Read every channel now (the thread's body; also handy for a one-shot check)."""
        t = self._clock()
        a = self._accel_m @ np.array([c.read() for c in self._accel])
        g = None
        if self._gyro is not None:
            gv = self._gyro_m @ np.array([c.read() for c in self._gyro])
            g = (float(gv[0]), float(gv[1]), float(gv[2]))
        return ImuReading(t, (float(a[0]), float(a[1]), float(a[2])), g)

    def start(self, now: float) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name='imu-iio', daemon=True)
            self._thread.start()

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self._queue.append(self.read_once())
            except ValueError as exc:          # a garbled value: count, keep going
                self.read_errors += 1
                self.last_read_error = str(exc)
            except OSError as exc:             # the device went away
                self.error = f'{self.dev}: {exc.strerror or exc}'
                return
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -MAX_BACKLOG_S:         # fell far behind: resynchronise
                next_t = time.monotonic()
                delay = 0.0
            if delay > 0:
                self._stop.wait(delay)

    def poll(self, now: float) -> list[ImuReading]:
        out = []
        while self._queue:
            r = self._queue.popleft()
            if r.t < now - MAX_BACKLOG_S:
                self.skipped_late += 1
                continue
            out.append(r)
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        for c in self._accel + (self._gyro or []):
            try:
                c.close()
            except OSError:
                pass
        self._accel, self._gyro = [], None

