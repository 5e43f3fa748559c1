"""Officer down: horizontal and nearly still after an impact (or for a long time without one),
then a window in which the officer can dismiss it, then the alert.

Posture is the angle between the gravity direction (mean accel over ``posture_s``) and the
body's upright axis. The upright axis starts as the body frame's +z (the IMU node's
mounting contract) and follows the wearer's real upright while they walk or run (a gait
means the torso is upright), so a camera clipped on a few tens of degrees off still reads
0° standing and ~90° lying.

Thresholds, from the shared recordings (SisFall waist 200 Hz, UMAFall waist ~20 Hz; every
0.25 s; ``bodycam eval --detector officer_down`` reproduces the table in the README):

* ``impact_g`` 2.2: peak |a|. The ADLs that end up horizontal (lying down slowly or quickly,
  rolling over in bed, lying on a bed, slumping in a chair that tilts the waist tag 89°)
  peak at 1.25-1.77 g; the falls peak at 2.67 g (UMAFall forward fall, 20 Hz) to 18.8 g.
* ``impact_window_s`` 5: the body comes to rest 1-2.5 s after the impact in every fall.
* ``horizontal_deg`` 60: lying after the falls reads 83-120° from upright, sitting 0-40°
  (the waist tag of a slumped UMAFall sitter reaches 89°: the impact test keeps it out).
* ``upright_deg`` 40 held for ``recover_s`` 2: getting back up, which dismisses a pending
  detection or clears a raised alert. 20° of hysteresis below ``horizontal_deg``.
* ``still_g`` 0.2: RMS of the accel vector about its mean over 1 s. Lying after a fall
  0.01-0.15 g (a fidget included); walking is 0.24 g and more.
* ``down_hold_s`` 10 (settable down to 3; SisFall trials end ~6 s after the impact, so the
  evaluation uses 3), ``down_hold_no_impact_s`` 60 for a slow collapse, ``dismiss_s`` 20.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

from bodycam_ros.core.detectors.base import Source, TriggerState, require
from bodycam_ros.core.detectors.imu_window import (G, Hop, ImuWindow, angle_deg, cadence,
                                                   energy_g, gravity_dir, magnitude_g,
                                                   motion_g)

UP = np.array([0.0, 0.0, 1.0])


class DownPhase(str, Enum):
    NORMAL = 'normal'
    PENDING = 'pending'   # down detected: recording, dismiss window open
    ALERT = 'alert'       # alert raised


class DownEventKind(str, Enum):
    DOWN = 'down'             # detection: the trigger starts, the dismiss window opens
    ALERT = 'alert'           # the dismiss window passed: raise the alert
    DISMISSED = 'dismissed'   # got up within the dismiss window (no alert was raised)
    CANCELLED = 'cancelled'   # the officer cancelled (service), before or after the alert
    CLEARED = 'cleared'       # got up after the alert was raised


@dataclass(frozen=True)
class DownEvent:
    kind: DownEventKind
    t: float
    impact: bool          # detected through the impact path
    detail: str


@dataclass(frozen=True)
class OfficerDownParams:
    hop_s: float = 0.25
    posture_s: float = 1.0
    impact_g: float = 2.2
    impact_window_s: float = 5.0
    horizontal_deg: float = 60.0
    upright_deg: float = 40.0
    still_g: float = 0.2
    down_hold_s: float = 10.0
    down_hold_no_impact_s: float = 60.0
    dismiss_s: float = 20.0
    recover_s: float = 2.0
    gait_window_s: float = 2.5       # to learn the wearer's upright while walking/running
    ref_max_tilt_deg: float = 45.0   # the learned upright stays this close to body +z
    ref_tau_s: float = 5.0           # time constant of that learning

    def validate(self) -> OfficerDownParams:
        require('hop_s', self.hop_s, 0.02, 1.0)
        require('posture_s', self.posture_s, 0.2, 5.0)
        require('impact_g', self.impact_g, 1.2, 16.0)
        require('impact_window_s', self.impact_window_s, 0.5, 60.0)
        require('horizontal_deg', self.horizontal_deg, 30.0, 90.0)
        require('upright_deg', self.upright_deg, 5.0, self.horizontal_deg)
        require('still_g', self.still_g, 0.005, 2.0)
        require('down_hold_s', self.down_hold_s, 3.0, 600.0)
        require('down_hold_no_impact_s', self.down_hold_no_impact_s, self.down_hold_s, 3600.0)
        require('dismiss_s', self.dismiss_s, 0.0, 600.0)
        require('recover_s', self.recover_s, 0.0, 60.0)
        require('gait_window_s', self.gait_window_s, 1.0, 10.0)
        require('ref_max_tilt_deg', self.ref_max_tilt_deg, 0.0, 90.0)
        require('ref_tau_s', self.ref_tau_s, 0.1, 600.0)
        return self


class OfficerDown:
    """Streaming officer-down state machine: feed IMU samples in time order, call
    :meth:`tick` when time passes without samples, :meth:`cancel` for the officer's dismiss."""

    def __init__(self, params: OfficerDownParams = OfficerDownParams()) -> None:
        self.p = params.validate()
        self._win = ImuWindow(max(params.posture_s, params.gait_window_s) + 0.5)
        self._hop = Hop(params.hop_s)
        self._ref = UP.copy()
        self.phase = DownPhase.NORMAL
        self._last_impact: float | None = None
        self._peak_g = 0.0
        self._cand_start: float | None = None     # horizontal and still since
        self._cand_impact: float | None = None    # the impact that candidate follows
        self._upright_since: float | None = None
        self._down_at: float | None = None
        self._since: float | None = None          # trigger time: the impact or the collapse
        self._alert_at: float | None = None
        self._down_impact = False
        self._angle = math.nan
        self._motion = math.nan
        self._now = -math.inf
        self.events: list[DownEvent] = []         # every event so far (eval reads it)

    @property
    def active(self) -> bool:
        return self.phase is not DownPhase.NORMAL

    @property
    def alert_open(self) -> bool:
        return self.phase is DownPhase.ALERT

    @property
    def upright_ref(self) -> tuple[float, float, float]:
        return (float(self._ref[0]), float(self._ref[1]), float(self._ref[2]))

    def update(self, t: float, accel, gyro=None) -> list[DownEvent]:
        """Feed one IMU sample (m/s², body frame); returns the events it caused."""
        if not self._win.push(t, accel, gyro):
            return []
        self._now = t
        mag = math.sqrt(float(accel[0]) ** 2 + float(accel[1]) ** 2 + float(accel[2]) ** 2) / G
        if mag >= self.p.impact_g:
            self._last_impact = t
        if not self._hop.due(t):
            return []
        return self._evaluate(t)

    def _evaluate(self, t: float) -> list[DownEvent]:
        ts, a = self._win.arrays(self.p.posture_s)
        g = gravity_dir(a)
        if g is None or len(ts) < 2:
            return self.tick(t)
        self._learn_upright(t)
        self._angle = angle_deg(g, self._ref)
        self._motion = motion_g(a)
        self._peak_g = float(magnitude_g(a).max())
        horizontal_still = self._angle >= self.p.horizontal_deg and self._motion <= self.p.still_g
        if self._angle <= self.p.upright_deg:
            if self._upright_since is None:
                self._upright_since = t
        else:
            self._upright_since = None
        got_up = self._upright_since is not None and t - self._upright_since >= self.p.recover_s
        out: list[DownEvent] = []
        if self.phase is DownPhase.NORMAL:
            if horizontal_still:
                if self._cand_start is None:
                    self._cand_start = t - self.p.posture_s   # still over the whole window
                    recent = (self._last_impact is not None
                              and self._cand_start - self._last_impact <= self.p.impact_window_s)
                    self._cand_impact = self._last_impact if recent else None
                hold = (self.p.down_hold_s if self._cand_impact is not None
                        else self.p.down_hold_no_impact_s)
                if t - self._cand_start >= hold:
                    self.phase, self._down_at = DownPhase.PENDING, t
                    self._down_impact = self._cand_impact is not None
                    self._since = self._cand_impact if self._down_impact else self._cand_start
                    detail = (f'horizontal ({self._angle:.0f}°) and still for {hold:.0f} s '
                              + ('after an impact' if self._down_impact else 'without an impact'))
                    out.append(self._event(DownEventKind.DOWN, t, detail))
            else:
                self._cand_start = self._cand_impact = None
        elif got_up:
            kind = DownEventKind.DISMISSED if self.phase is DownPhase.PENDING \
                else DownEventKind.CLEARED
            out.append(self._reset(kind, t, f'upright ({self._angle:.0f}°) for '
                                            f'{self.p.recover_s:.0f} s'))
        out += self.tick(t)
        return out

    def _learn_upright(self, t: float) -> None:
        """While the wearer walks or runs, pull the upright axis toward the mean gravity."""
        ts, a = self._win.arrays(self.p.gait_window_s)
        if len(ts) < 4 or ts[-1] - ts[0] < 0.9 * self.p.gait_window_s:
            return
        e = energy_g(a)
        if not 0.08 <= e <= 2.0:
            return
        per, cad = cadence(ts, a)
        if per < 0.5 or not 1.2 <= cad <= 4.0:
            return
        g = gravity_dir(a)
        if g is None or angle_deg(g, UP) > self.p.ref_max_tilt_deg:
            return
        k = 1.0 - math.exp(-self.p.hop_s / self.p.ref_tau_s)
        ref = self._ref + k * (g - self._ref)
        self._ref = ref / np.linalg.norm(ref)

    def tick(self, t: float) -> list[DownEvent]:
        """Advance time without a sample: the dismiss window runs out even if the IMU stops."""
        self._now = max(self._now, t)
        if self.phase is DownPhase.PENDING and self._down_at is not None \
                and t - self._down_at >= self.p.dismiss_s:
            self.phase, self._alert_at = DownPhase.ALERT, t
            return [self._event(DownEventKind.ALERT, t,
                                f'no response for {self.p.dismiss_s:.0f} s')]
        return []

    def cancel(self, t: float) -> DownEvent | None:
        """The officer's dismiss (service). None if nothing was pending or raised."""
        if self.phase is DownPhase.NORMAL:
            return None
        return self._reset(DownEventKind.CANCELLED, t, 'cancelled by the officer')

    def _reset(self, kind: DownEventKind, t: float, detail: str) -> DownEvent:
        ev = self._event(kind, t, detail)
        self.phase = DownPhase.NORMAL
        self._down_at = self._since = self._alert_at = None
        # Still lying there: only the long no-impact hold can fire again.
        self._cand_start = self._cand_impact = self._last_impact = None
        return ev

    def _event(self, kind: DownEventKind, t: float, detail: str) -> DownEvent:
        ev = DownEvent(kind, t, self._down_impact, detail)
        self.events.append(ev)
        return ev

    def state(self) -> TriggerState:
        values: dict[str, float | str] = {
            'phase': self.phase.value, 'angle_deg': self._angle, 'motion_g': self._motion,
            'peak_g': self._peak_g}
        if self._cand_start is not None and self.phase is DownPhase.NORMAL:
            values['horizontal_since'] = self._cand_start
            values['after_impact'] = str(self._cand_impact is not None).lower()
        if self._last_impact is not None:
            values['last_impact'] = self._last_impact
        if self.phase is DownPhase.NORMAL:
            return TriggerState(Source.OFFICER_DOWN, False, None, 1.0, 'upright or moving',
                                values)
        values['down_at'] = self._down_at if self._down_at is not None else math.nan
        values['after_impact'] = str(self._down_impact).lower()
        conf = 0.95 if self._down_impact else 0.7
        if self.phase is DownPhase.PENDING:
            left = self.p.dismiss_s - (self._now - (self._down_at or self._now))
            values['dismiss_left_s'] = max(0.0, left)
            return TriggerState(Source.OFFICER_DOWN, True, self._since, conf,
                                'officer down? dismiss window open', values)
        values['alert_at'] = self._alert_at if self._alert_at is not None else math.nan
        return TriggerState(Source.OFFICER_DOWN, True, self._since, conf,
                            'OFFICER DOWN: alert raised', values)
