"""Where GNSS fixes come from: a serial NMEA receiver, gpsd, an NMEA log, or the simulation.

Every source is a blocking generator ``fixes(stop)`` meant to run on a thread of its own
(the gps node's reader thread): it yields :class:`~bodycam_ros.core.nmea.Fix` objects as the
receiver produces them and returns soon after ``stop`` is set. Device trouble (a missing
serial port, gpsd not running, a cable pulled) never ends the generator: the source reports
``SourceState.ERROR`` with a message, waits ``retry_s`` and tries again, so a receiver that
is plugged in later just starts working. No ROS here.
"""
from __future__ import annotations

import abc
import datetime
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bodycam_ros.core import scenario as scenario_mod
from bodycam_ros.core.nmea import (DEFAULT_UERE_M, NAN, Fix, FixStatus, NmeaFixAssembler,
                                   NmeaStats, position_covariance)

#: Longest NMEA line accepted before a run of bytes without a newline counts as garbage.
MAX_LINE_BYTES = 1024


class GpsSourceError(RuntimeError):
    """A source cannot be opened or used; the message names the device, host or file."""


class SourceState(str, Enum):
    STARTING = 'starting'
    RUNNING = 'running'
    ERROR = 'error'      # device missing, daemon unreachable, connection lost: retrying
    ENDED = 'ended'      # a log replay reached its end (no loop)


@dataclass(frozen=True)
class SourceStatus:
    state: SourceState
    message: str


class GpsSource(abc.ABC):
    """Base of all sources: state for diagnostics, line/sentence counters, retry period."""

    def __init__(self, description: str, retry_s: float = 2.0) -> None:
        if not retry_s > 0:
            raise ValueError(f'retry_s must be > 0: {retry_s}')
        self.description = description
        self.retry_s = retry_s
        self.stats = NmeaStats()
        self.retries = 0
        self._status = SourceStatus(SourceState.STARTING, 'starting')
        #: Called (from the reader thread) whenever the state or its message changes.
        self.on_status: Callable[[SourceStatus], None] | None = None

    @property
    def status(self) -> SourceStatus:
        return self._status

    def _set(self, state: SourceState, message: str) -> None:
        new = SourceStatus(state, message)
        if new != self._status:
            self._status = new
            if self.on_status is not None:
                self.on_status(new)

    def fail(self, message: str) -> None:
        """Record a failure: ERROR status with ``message``, one more retry counted."""
        self.retries += 1
        self.stats.last_error = message
        self._set(SourceState.ERROR, message)

    @abc.abstractmethod
    def fixes(self, stop: threading.Event) -> Iterator[Fix]:
        """Yield fixes until ``stop`` is set (or a replay ends)."""


class SerialNmeaSource(GpsSource):
    """An NMEA receiver on a serial port (USB-serial, UART, or a pty).

    The port is read with a short timeout: when the line goes quiet for ``idle_flush_s``
    the receiver has finished its epoch's burst, so the fix is emitted at once instead of
    waiting for the next epoch's first sentence.
    """

    def __init__(self, port: str, baud: int = 9600, uere_m: float = DEFAULT_UERE_M,
                 retry_s: float = 2.0, idle_flush_s: float = 0.1) -> None:
        super().__init__(f'serial {port} @ {baud} Bd', retry_s)
        self.port, self.baud = port, baud
        self.uere_m, self.idle_flush_s = uere_m, idle_flush_s

    def open(self):
        """Open the port.

        Raises:
            GpsSourceError: the port does not exist or cannot be opened.
        """
        import serial  # pyserial; imported here so other sources work without it
        try:
            return serial.Serial(self.port, self.baud, timeout=self.idle_flush_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            hint = '' if os.path.exists(self.port) else ' (no such device)'
            raise GpsSourceError(f'cannot open serial port {self.port}{hint}: {exc}') from exc

    def fixes(self, stop: threading.Event) -> Iterator[Fix]:
        import serial
        while not stop.is_set():
            try:
                port = self.open()
            except GpsSourceError as exc:
                self.fail(str(exc))
                stop.wait(self.retry_s)
                continue
            self._set(SourceState.RUNNING, f'reading {self.description}')
            asm = NmeaFixAssembler(self.uere_m)
            asm.stats = self.stats
            pending = b''
            try:
                while not stop.is_set():
                    chunk = port.readline()
                    if not chunk:               # quiet line: the epoch's burst is over
                        yield from asm.flush()
                        continue
                    pending += chunk
                    if not pending.endswith(b'\n'):
                        if len(pending) > MAX_LINE_BYTES:
                            self.stats.lines += 1
                            self.stats.malformed += 1
                            pending = b''
                        continue
                    line, pending = pending, b''
                    yield from asm.feed(line)
            except (serial.SerialException, OSError) as exc:
                self.fail(f'serial port {self.port} lost: {exc}')
                stop.wait(self.retry_s)
            finally:
                port.close()


class GpsdSource(GpsSource):
    """gpsd's JSON protocol over TCP (``?WATCH={"enable":true,"json":true}``).

    TPV reports become fixes; SKY supplies HDOP/VDOP/PDOP and satellites used, GST the
    1-sigma errors (used while fresher than ``gst_max_age_s``). gpsd's ``sentences`` counter
    here means JSON reports parsed; ``malformed`` counts lines that are not JSON objects.
    A refused or lost connection is an ERROR status and is retried every ``retry_s``.
    """

    WATCH = b'?WATCH={"enable":true,"json":true}\n'

    def __init__(self, host: str = '127.0.0.1', port: int = 2947,
                 uere_m: float = DEFAULT_UERE_M, retry_s: float = 2.0,
                 gst_max_age_s: float = 2.0) -> None:
        super().__init__(f'gpsd {host}:{port}', retry_s)
        self.host, self.port = host, port
        self.uere_m, self.gst_max_age_s = uere_m, gst_max_age_s
        self._sky: dict = {}
        self._gst: dict = {}
        self._gst_at = -math.inf
        self._last_tpv_time = NAN

    def fixes(self, stop: threading.Event) -> Iterator[Fix]:
        while not stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2.0)
            except OSError as exc:
                self.fail(f'gpsd at {self.host}:{self.port} unreachable: {exc}')
                stop.wait(self.retry_s)
                continue
            try:
                sock.settimeout(0.25)
                sock.sendall(self.WATCH)
                self._set(SourceState.RUNNING, f'watching {self.description}')
                yield from self._read(sock, stop)
            except OSError as exc:
                self.fail(f'gpsd at {self.host}:{self.port} lost: {exc}')
                stop.wait(self.retry_s)
            finally:
                sock.close()

    def _read(self, sock: socket.socket, stop: threading.Event) -> Iterator[Fix]:
        buf = b''
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise ConnectionResetError('gpsd closed the connection')
            buf += data
            *lines, buf = buf.split(b'\n')
            for line in lines:
                fix = self.handle(line)
                if fix is not None:
                    yield fix

    def handle(self, line: bytes | str) -> Fix | None:
        """One gpsd JSON report; a Fix for a TPV, None otherwise. Never raises."""
        st = self.stats
        st.lines += 1
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError('not a JSON object')
            kind = msg.get('class')
            if kind == 'TPV':
                fix = self._tpv(msg)
                if fix.time == self._last_tpv_time:
                    # While gpsd learns the receiver's cycle it may report one epoch once per
                    # sentence; publish each epoch once.
                    fix = None
                else:
                    self._last_tpv_time = fix.time
            else:
                fix = None
                if kind == 'SKY':
                    self._sky = msg
                elif kind == 'GST':
                    self._gst, self._gst_at = msg, time.monotonic()
                else:
                    st.unknown += 1
                    return None
        except (ValueError, TypeError) as exc:   # JSONDecodeError is a ValueError
            st.malformed += 1
            st.last_error = f'gpsd report: {exc}'
            return None
        st.sentences += 1
        if fix is not None:
            st.epochs += 1
            st.fixes += 1
        return fix

    def _tpv(self, m: dict) -> Fix:
        mode = int(m.get('mode', 0))
        t = NAN
        if 'time' in m:
            t = datetime.datetime.fromisoformat(str(m['time']).replace('Z', '+00:00')).timestamp()
        if mode < 2 or 'lat' not in m or 'lon' not in m:
            status = FixStatus.NO_FIX
        else:
            status = {2: FixStatus.DGPS, 3: FixStatus.RTK, 4: FixStatus.RTK}.get(
                int(m.get('status', 1)), FixStatus.FIX)
        sky = self._sky
        hdop, vdop, pdop = (float(sky.get(k, NAN)) for k in ('hdop', 'vdop', 'pdop'))
        used = sky.get('uSat')
        if used is None and isinstance(sky.get('satellites'), list):
            used = sum(1 for s in sky['satellites'] if s.get('used'))
        gst = self._gst if time.monotonic() - self._gst_at <= self.gst_max_age_s else {}
        lat_std, lon_std, alt_std = (float(gst.get(k, NAN)) for k in ('lat', 'lon', 'alt'))
        if status is FixStatus.NO_FIX:
            cov, cov_type = position_covariance(uere_m=self.uere_m)
        else:
            cov, cov_type = position_covariance(hdop=hdop, vdop=vdop, lat_std_m=lat_std,
                                                lon_std_m=lon_std, alt_std_m=alt_std,
                                                uere_m=self.uere_m)
        alt_msl = float(m.get('altMSL', m.get('alt', NAN)))
        alt = float(m['altHAE']) if 'altHAE' in m else (
            alt_msl + float(m['geoidSep']) if 'geoidSep' in m else alt_msl)
        return Fix(time=t, status=status, lat=float(m.get('lat', NAN)),
                   lon=float(m.get('lon', NAN)), alt=alt, alt_msl=alt_msl,
                   satellites=int(used) if used is not None else -1,
                   hdop=hdop, vdop=vdop, pdop=pdop,
                   speed_mps=float(m.get('speed', NAN)), course_deg=float(m.get('track', NAN)),
                   climb_mps=float(m.get('climb', NAN)), lat_std_m=lat_std, lon_std_m=lon_std,
                   alt_std_m=alt_std, covariance=cov, covariance_type=cov_type, source='gpsd')


class NmeaFileSource(GpsSource):
    """Replays an NMEA log at the pace of its own clock.

    Consecutive fixes are spaced by the difference of their UTC times divided by ``speed``
    (2.0 = twice as fast). A gap longer than ``max_gap_s`` (log time) is shortened to
    ``max_gap_s``: gpsd's regression logs are trimmed (nl2008u jumps 20 minutes between
    segments), and a demo should not stall on a cut. With ``loop`` the log restarts one
    (scaled) second after its last fix.

    Raises:
        GpsSourceError: the file does not exist or cannot be read.
    """

    def __init__(self, path: str | os.PathLike, speed: float = 1.0, max_gap_s: float = 5.0,
                 loop: bool = False, uere_m: float = DEFAULT_UERE_M) -> None:
        super().__init__(f'NMEA log {path}')
        self.path = Path(path)
        if not self.path.is_file():
            raise GpsSourceError(f'no NMEA log at {self.path}')
        if not os.access(self.path, os.R_OK):
            raise GpsSourceError(f'NMEA log {self.path} is not readable')
        if not speed > 0 or not max_gap_s > 0:
            raise ValueError(f'speed and max_gap_s must be > 0: {speed}, {max_gap_s}')
        self.speed, self.max_gap_s, self.loop, self.uere_m = speed, max_gap_s, loop, uere_m
        self.passes = 0

    def gap_s(self, prev: Fix | None, fix: Fix) -> float:
        """Wall-clock delay before ``fix`` after ``prev`` (seconds)."""
        if prev is None:
            return 0.0
        dt = fix.time - prev.time
        if math.isnan(dt) or dt <= 0:
            dt = 1.0
        return min(dt, self.max_gap_s) / self.speed

    def fixes(self, stop: threading.Event) -> Iterator[Fix]:
        due = time.monotonic()
        while not stop.is_set():
            self._set(SourceState.RUNNING, f'replaying {self.path.name} (x{self.speed:g})')
            asm = NmeaFixAssembler(self.uere_m)
            asm.stats = self.stats
            prev: Fix | None = None
            try:
                with open(self.path, 'rb') as f:
                    for line in _lines_then_flush(f, asm):
                        for fix in line:
                            due += self.gap_s(prev, fix)
                            if stop.wait(max(0.0, due - time.monotonic())):
                                return
                            prev = fix
                            yield fix
            except OSError as exc:
                self.fail(f'reading {self.path}: {exc}')
                stop.wait(self.retry_s)
                due = time.monotonic()
                continue
            self.passes += 1
            if not self.loop:
                self._set(SourceState.ENDED, f'end of {self.path.name}')
                return
            due += 1.0 / self.speed


def _lines_then_flush(f, asm: NmeaFixAssembler) -> Iterator[list[Fix]]:
    for raw in f:
        yield asm.feed(raw)
    yield asm.flush()


class SimGpsSource(GpsSource):
    """The shared scenario's position at ``rate_hz`` (1 Hz, on whole UTC seconds like a
    receiver), with a slowly wandering HDOP between 0.7 and 1.3 (open sky) and 9-11 satellites.

    Args:
        scenario: scenario name ('' = 'idle').
        scenario_start: UNIX time of scenario t=0 (0 = now).
    """

    def __init__(self, scenario: str = '', scenario_start: float = 0.0, rate_hz: float = 1.0,
                 uere_m: float = DEFAULT_UERE_M) -> None:
        name = scenario or 'idle'
        super().__init__(f'simulated GPS, scenario {name}')
        self.scenario = scenario_mod.get(name)    # ValueError names the unknown scenario
        self.start = scenario_start or time.time()
        if not rate_hz > 0:
            raise ValueError(f'rate_hz must be > 0: {rate_hz}')
        self.rate_hz, self.uere_m = rate_hz, uere_m

    def fix_at(self, now: float) -> Fix:
        t = now - self.start
        s = self.scenario.gps_at(t)
        hdop = 1.0 + 0.3 * math.sin(t / 47.0)
        sats = 10 + round(math.sin(t / 61.0))
        cov, cov_type = position_covariance(hdop=hdop, vdop=1.5 * hdop, uere_m=self.uere_m)
        return Fix(time=now, status=FixStatus.FIX, lat=s.lat, lon=s.lon, alt=s.alt,
                   alt_msl=s.alt, satellites=sats, hdop=hdop, vdop=1.5 * hdop,
                   pdop=1.8 * hdop, speed_mps=s.speed_mps, course_deg=s.heading_deg,
                   climb_mps=0.0, covariance=cov, covariance_type=cov_type, source='sim')

    def fixes(self, stop: threading.Event) -> Iterator[Fix]:
        self._set(SourceState.RUNNING, self.description)
        period = 1.0 / self.rate_hz
        due = math.ceil(time.time() / period) * period
        while not stop.wait(max(0.0, due - time.time())):
            yield self.fix_at(due)
            self.stats.epochs += 1
            self.stats.fixes += 1
            due += period
            if due < time.time():            # the clock jumped or we were held up: resync
                due = math.ceil(time.time() / period) * period
