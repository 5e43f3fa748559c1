"""Fight: a struggle, from the IMU: hard, jerky, irregular shaking with the torso turning,
kept up for seconds.

Each 2.5 s window (every 0.25 s) is a *struggle window* when all four hold:

* ``min_energy_g`` 0.45: std of |a|. Walking reaches 0.46 g at most in the shared
  recordings, so on its own this only says "more than walking"; it is the floor.
* ``min_jerk_g_s`` 4.0: RMS change of the 0.1 s-mean accel vector. Sitting, lying down
  and slow movements stay under 3 g/s; blows, shoves and grappling are far above.
* ``max_periodicity`` 0.4: jogging and running are a repeating gait (0.6-0.96 in every
  jogging window of SisFall D03/D04 and UMAFall Jogging), a struggle is not.
* ``min_spread_deg`` 30: gravity moves by 30° or more in the body frame within the window
  (the torso twists and bends); a runner's torso stays within ~20°.

A fight is declared when at least ``min_fraction`` (0.8) of the windows in the last
``hold_s`` (4 s) are struggle windows. A fall or a stumble makes struggle windows only while
its one impact is inside the window: at most 62 % of any 4 s in the shared falls and none in
any ADL (jogging, sitting down, lying down, jumping, stumbling), so a single event never
passes. It ends ``clear_s`` after the last struggle window.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from bodycam_ros.core.detectors.base import Source, TriggerState, require
from bodycam_ros.core.detectors.imu_window import (Hop, ImuWindow, cadence, energy_g, jerk_g_s,
                                                   spread_deg)


@dataclass(frozen=True)
class FightParams:
    window_s: float = 2.5
    hop_s: float = 0.25
    min_energy_g: float = 0.45
    min_jerk_g_s: float = 4.0
    max_periodicity: float = 0.4
    min_spread_deg: float = 30.0
    hold_s: float = 4.0
    min_fraction: float = 0.8
    clear_s: float = 5.0

    def validate(self) -> FightParams:
        require('window_s', self.window_s, 1.0, 10.0)
        require('hop_s', self.hop_s, 0.02, 1.0)
        require('min_energy_g', self.min_energy_g, 0.0, 5.0)
        require('min_jerk_g_s', self.min_jerk_g_s, 0.0, 100.0)
        require('max_periodicity', self.max_periodicity, 0.0, 1.0)
        require('min_spread_deg', self.min_spread_deg, 0.0, 180.0)
        require('hold_s', self.hold_s, self.hop_s, 60.0)
        require('min_fraction', self.min_fraction, 0.05, 1.0)
        require('clear_s', self.clear_s, 0.0, 300.0)
        return self


class Fight:
    """Streaming struggle detector: feed IMU samples in time order."""

    def __init__(self, params: FightParams = FightParams()) -> None:
        self.p = params.validate()
        self._win = ImuWindow(params.window_s + 0.5)
        self._hop = Hop(params.hop_s)
        self._recent: deque[tuple[float, bool]] = deque()   # (t, struggle) over hold_s
        self._first_struggle: float | None = None           # of the current run of windows
        self._last_struggle: float | None = None
        self._active_since: float | None = None
        self._f: dict[str, float] = {'energy_g': 0.0, 'jerk_g_s': 0.0, 'periodicity': 0.0,
                                     'spread_deg': 0.0, 'fraction': 0.0}
        self.evaluations = 0

    @property
    def active(self) -> bool:
        return self._active_since is not None

    def update(self, t: float, accel, gyro=None) -> bool:
        """Feed one IMU sample (m/s², body frame); returns True if the trigger just fired."""
        if not self._win.push(t, accel, gyro) or not self._hop.due(t):
            return False
        ts, a = self._win.arrays(self.p.window_s)
        if len(ts) < 4 or ts[-1] - ts[0] < 0.9 * self.p.window_s:
            return False
        self.evaluations += 1
        energy = energy_g(a)
        jerk = per = spread = 0.0
        struggle = False
        if energy >= self.p.min_energy_g:   # cheap test first: most windows stop here
            jerk = jerk_g_s(ts, a)
            spread = spread_deg(ts, a)
            per = cadence(ts, a)[0]
            struggle = (jerk >= self.p.min_jerk_g_s and per <= self.p.max_periodicity
                        and spread >= self.p.min_spread_deg)
        self._recent.append((t, struggle))
        while self._recent and self._recent[0][0] <= t - self.p.hold_s:
            self._recent.popleft()
        n_struggle = sum(1 for _, s in self._recent if s)
        expected = max(1, round(self.p.hold_s / self.p.hop_s))
        fraction = n_struggle / max(expected, len(self._recent))
        self._f = {'energy_g': energy, 'jerk_g_s': jerk, 'periodicity': per,
                   'spread_deg': spread, 'fraction': fraction}
        if struggle:
            if self._last_struggle is None or t - self._last_struggle > self.p.hold_s:
                self._first_struggle = t
            self._last_struggle = t
        if self._active_since is None:
            if struggle and fraction >= self.p.min_fraction:
                # The struggle began when its first window did, a window length earlier.
                start = self._first_struggle if self._first_struggle is not None else t
                self._active_since = start - self.p.window_s / 2
                return True
        else:
            self.tick(t)
        return False

    def tick(self, t: float) -> None:
        """Advance time without a sample: the fight ends ``clear_s`` after its last window."""
        if self._active_since is not None and (
                self._last_struggle is None or t - self._last_struggle >= self.p.clear_s):
            self._active_since = None

    def state(self) -> TriggerState:
        values: dict[str, float | str] = dict(self._f)
        if self._active_since is not None:
            return TriggerState(Source.FIGHT, True, self._active_since,
                                min(1.0, self._f['fraction']), 'struggle', values)
        return TriggerState(Source.FIGHT, False, None, 1.0, 'no struggle', values)
