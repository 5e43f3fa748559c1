"""Foot pursuit: the officer is running, from the IMU's step cadence (and GPS speed).

Thresholds, from the shared recordings (SisFall D01-D04 waist 200 Hz, UMAFall waist ~20 Hz;
2.5 s windows every 0.25 s; ``bodycam eval --detector foot_pursuit`` reproduces them):

* ``min_energy_g`` 0.5: std of |a| is 0.13-0.46 g walking (slow, fast; both datasets) and
  0.70-1.40 g jogging (slow, fast). 0.5 sits between with room on both sides.
* ``min_cadence_hz`` 2.3: walking steps come at 1.6-2.1 Hz, jogging at 2.6-3.1 Hz
  (running is 150-200 steps/min); ``max_cadence_hz`` 4.0 is above any human sprint.
  Either feature alone separates the recordings; both must agree, so a fast walker with a
  heavy step or a quick shuffle with little bounce does not count.
* ``min_periodicity`` 0.5: running is a repeating gait (0.6-0.96 in the jogging trials);
  a struggle or a jump is not (below 0.47).
* ``hold_s`` 1.5: the full window plus the hold fire ~4 s after running begins, inside the
  5 s the product asks for; ``clear_s`` 4 keeps one pursuit one trigger through a stop to
  climb a fence.
* GPS, when the fix is good and fresh, must agree: ``gps_min_speed_mps`` 1.5 (running in
  place or on the spot is not a pursuit; a sprint start is above it within a second) and
  ``gps_max_speed_mps`` 12 (faster is a vehicle, whatever the IMU says).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from bodycam_ros.core.detectors.base import Source, TriggerState, require
from bodycam_ros.core.detectors.imu_window import Hop, ImuWindow, cadence, energy_g


@dataclass(frozen=True)
class FootPursuitParams:
    window_s: float = 2.5
    hop_s: float = 0.25
    min_energy_g: float = 0.5
    min_cadence_hz: float = 2.3
    max_cadence_hz: float = 4.0
    min_periodicity: float = 0.5
    hold_s: float = 1.5
    clear_s: float = 4.0
    gps_min_speed_mps: float = 1.5
    gps_max_speed_mps: float = 12.0
    gps_max_age_s: float = 3.0

    def validate(self) -> FootPursuitParams:
        require('window_s', self.window_s, 1.0, 10.0)
        require('hop_s', self.hop_s, 0.02, 1.0)
        require('min_energy_g', self.min_energy_g, 0.0, 5.0)
        require('min_cadence_hz', self.min_cadence_hz, 0.5, self.max_cadence_hz)
        require('max_cadence_hz', self.max_cadence_hz, self.min_cadence_hz, 10.0)
        require('min_periodicity', self.min_periodicity, 0.0, 1.0)
        require('hold_s', self.hold_s, 0.0, 60.0)
        require('clear_s', self.clear_s, 0.0, 300.0)
        require('gps_min_speed_mps', self.gps_min_speed_mps, 0.0, self.gps_max_speed_mps)
        require('gps_max_speed_mps', self.gps_max_speed_mps, self.gps_min_speed_mps, 100.0)
        require('gps_max_age_s', self.gps_max_age_s, 0.0, 60.0)
        return self


class FootPursuit:
    """Streaming running detector: feed IMU samples (and GPS speeds) in time order."""

    def __init__(self, params: FootPursuitParams = FootPursuitParams()) -> None:
        self.p = params.validate()
        self._win = ImuWindow(params.window_s + 0.5)
        self._hop = Hop(params.hop_s)
        self._run_start = 0.0                  # first running window of the current streak
        self._last_run: float | None = None    # last running window
        self._active_since: float | None = None
        self._gps: tuple[float, float, bool] | None = None   # (t, speed, good)
        self._f = {'energy_g': 0.0, 'cadence_hz': 0.0, 'periodicity': 0.0}
        self._gps_veto = ''
        self.evaluations = 0

    @property
    def active(self) -> bool:
        return self._active_since is not None

    def update_gps(self, t: float, speed_mps: float, good: bool) -> None:
        """A ground speed from the receiver; ``good`` = a fix with acceptable accuracy."""
        if math.isfinite(speed_mps):
            self._gps = (t, speed_mps, good)

    def update(self, t: float, accel, gyro=None) -> bool:
        """Feed one IMU sample (m/s², body frame); returns True if the trigger just fired."""
        if not self._win.push(t, accel, gyro) or not self._hop.due(t):
            return False
        ts, a = self._win.arrays(self.p.window_s)
        if len(ts) < 4 or ts[-1] - ts[0] < 0.9 * self.p.window_s:
            return False
        self.evaluations += 1
        energy = energy_g(a)
        per, cad = cadence(ts, a) if energy >= self.p.min_energy_g else (0.0, 0.0)
        self._f = {'energy_g': energy, 'cadence_hz': cad, 'periodicity': per}
        running = (energy >= self.p.min_energy_g and per >= self.p.min_periodicity
                   and self.p.min_cadence_hz <= cad <= self.p.max_cadence_hz)
        self._gps_veto = self._gps_disagrees(t)
        gap = 2 * self.p.hop_s + 1e-9       # one missed window does not break a streak
        if running and not self._gps_veto:
            if self._last_run is None or t - self._last_run > gap:
                self._run_start = t
            self._last_run = t
            if self._active_since is None and t - self._run_start >= self.p.hold_s:
                # The gait began about half a window before the first window showing it.
                self._active_since = self._run_start - self.p.window_s / 2
                return True
        elif self._active_since is not None and t - self._last_run >= self.p.clear_s:
            self._active_since = None
        return False

    def tick(self, t: float) -> None:
        """Advance time without a sample: a pursuit ends ``clear_s`` after the last running
        window even if the IMU went quiet."""
        if self._active_since is not None and self._last_run is not None \
                and t - self._last_run >= self.p.clear_s:
            self._active_since = None

    def _gps_disagrees(self, t: float) -> str:
        if self._gps is None:
            return ''
        gt, speed, good = self._gps
        if not good or t - gt > self.p.gps_max_age_s:
            return ''
        if speed < self.p.gps_min_speed_mps:
            return f'GPS speed {speed:.1f} m/s too slow for a pursuit'
        if speed > self.p.gps_max_speed_mps:
            return f'GPS speed {speed:.1f} m/s: in a vehicle'
        return ''

    def state(self) -> TriggerState:
        values: dict[str, float | str] = dict(self._f)
        gps_used = False
        if self._gps is not None:
            values['gps_speed_mps'] = self._gps[1]
            gps_used = self._gps[2]
        if self._gps_veto:
            values['gps_veto'] = self._gps_veto
        if self._active_since is not None:
            conf = min(1.0, self._f['periodicity']) * (1.0 if gps_used else 0.8)
            return TriggerState(Source.FOOT_PURSUIT, True, self._active_since, conf,
                                f'running at {self._f["cadence_hz"] * 60:.0f} steps/min', values)
        msg = 'not running' if not self._gps_veto else self._gps_veto
        return TriggerState(Source.FOOT_PURSUIT, False, None, 1.0, msg, values)
