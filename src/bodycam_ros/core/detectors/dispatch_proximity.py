"""Dispatch proximity: the officer is within ``radius_m`` of where dispatch sent them.

Entry is at ``radius_m``; exit only beyond ``radius_m + hysteresis_m``, so GNSS wander at
the line (a few metres, tens under trees) cannot start and stop the trigger over and over.
Fixes without a fix, or whose horizontal accuracy is worse than ``max_accuracy_m``, are
ignored: they keep the last decision instead of moving the officer by a bad position.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from bodycam_ros.core.detectors.base import DetectorError, Source, TriggerState, require
from bodycam_ros.core.geodesy import GeodesyError, distance_m

ONE_MILE_M = 1609.344


@dataclass(frozen=True)
class Fix:
    """A position as the detector needs it (converted from NavSatFix or an NMEA epoch)."""
    t: float
    lat: float
    lon: float
    has_fix: bool = True
    accuracy_m: float = math.nan   # horizontal 1-sigma; NaN = unknown (accepted)


@dataclass(frozen=True)
class Crossing:
    """An entry into or an exit from the radius."""
    t: float
    entered: bool
    distance_m: float
    lat: float
    lon: float


def horizontal_accuracy_m(covariance: tuple[float, ...] | list[float],
                          covariance_type: int) -> float:
    """Horizontal 1-sigma [m] from a NavSatFix ENU covariance; NaN when unknown (type 0)."""
    if covariance_type == 0 or len(covariance) < 5:
        return math.nan
    east, north = covariance[0], covariance[4]
    if not (math.isfinite(east) and math.isfinite(north)) or east < 0 or north < 0:
        return math.nan
    return math.sqrt(east + north)


class DispatchProximity:
    """Streaming in/out decision against the current dispatched destination.

    Args:
        radius_m: entry distance (default one statute mile).
        hysteresis_m: extra distance before an exit counts.
        max_accuracy_m: fixes with a worse horizontal 1-sigma are ignored.
    """

    def __init__(self, radius_m: float = ONE_MILE_M, hysteresis_m: float = 100.0,
                 max_accuracy_m: float = 50.0) -> None:
        self.radius_m = require('radius_m', radius_m, 1.0)
        self.hysteresis_m = require('hysteresis_m', hysteresis_m, 0.0)
        self.max_accuracy_m = require('max_accuracy_m', max_accuracy_m, 0.1)
        self._dest: tuple[float, float] | None = None
        self._inside = False
        self._since: float | None = None
        self._last: Fix | None = None
        self._distance = math.nan
        self.ignored = 0      # fixes skipped: no fix, poor accuracy, bad coordinates
        self.accepted = 0

    @property
    def destination(self) -> tuple[float, float] | None:
        return self._dest

    @property
    def last_fix(self) -> Fix | None:
        """The last accepted fix (the officer's last good position)."""
        return self._last

    def set_destination(self, t: float, lat: float, lon: float) -> Crossing | None:
        """A new dispatch; an officer already inside the new radius counts as entering now."""
        if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90:
            raise DetectorError(f'destination ({lat!r}, {lon!r}) is not a valid position')
        changed = self._dest != (lat, lon)
        self._dest = (lat, lon)
        if changed:
            self._inside, self._since = False, None
            if self._last is not None:
                return self._decide(Fix(t, self._last.lat, self._last.lon, True,
                                        self._last.accuracy_m))
        return None

    def clear_destination(self, t: float) -> Crossing | None:
        """Dispatch cleared (NO_FIX on ``dispatch/destination``): the trigger ends."""
        was_inside = self._inside
        self._dest, self._inside, self._since, self._distance = None, False, None, math.nan
        if was_inside and self._last is not None:
            return Crossing(t, False, math.nan, self._last.lat, self._last.lon)
        return None

    def update(self, fix: Fix) -> Crossing | None:
        """Feed one fix; returns the crossing it caused, if any."""
        if not fix.has_fix or not (fix.accuracy_m <= self.max_accuracy_m
                                   or math.isnan(fix.accuracy_m)):
            self.ignored += 1
            return None
        try:
            if self._dest is not None:
                distance_m(fix.lat, fix.lon, *self._dest)
            else:
                distance_m(fix.lat, fix.lon, 0.0, 0.0)
        except GeodesyError:
            self.ignored += 1
            return None
        self.accepted += 1
        self._last = fix
        return self._decide(fix)

    def _decide(self, fix: Fix) -> Crossing | None:
        if self._dest is None:
            return None
        d = distance_m(fix.lat, fix.lon, *self._dest)
        self._distance = d
        if not self._inside and d <= self.radius_m:
            self._inside, self._since = True, fix.t
            return Crossing(fix.t, True, d, fix.lat, fix.lon)
        if self._inside and d > self.radius_m + self.hysteresis_m:
            self._inside, self._since = False, None
            return Crossing(fix.t, False, d, fix.lat, fix.lon)
        return None

    def state(self) -> TriggerState:
        values: dict[str, float | str] = {
            'radius_m': self.radius_m, 'hysteresis_m': self.hysteresis_m,
            'distance_m': self._distance, 'ignored_fixes': self.ignored}
        if self._dest is not None:
            values['destination_lat'], values['destination_lon'] = self._dest
        acc = self._last.accuracy_m if self._last is not None else math.nan
        values['accuracy_m'] = acc
        if self._dest is None:
            return TriggerState(Source.DISPATCH_PROXIMITY, False, None, 1.0, 'no dispatch', values)
        if math.isnan(self._distance):
            return TriggerState(Source.DISPATCH_PROXIMITY, False, None, 0.0,
                                'dispatched; no good fix yet', values)
        # Probability that the true position is inside, given the fix's 1-sigma.
        sigma = acc if math.isfinite(acc) and acc > 0 else 5.0
        p_inside = 0.5 * (1.0 + math.erf((self.radius_m - self._distance) / (sigma * math.sqrt(2))))
        conf = p_inside if self._inside else 1.0 - p_inside
        msg = (f'{self._distance:.0f} m from dispatch (radius {self.radius_m:.0f} m)')
        return TriggerState(Source.DISPATCH_PROXIMITY, self._inside, self._since, conf,
                            ('within ' if self._inside else 'outside ') + msg, values)
