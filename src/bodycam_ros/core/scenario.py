"""Scripted shifts for the simulated sensors: one timeline that every sim driver reads.

Each sim driver (IMU, GPS, holster, dispatch) asks the same :class:`Scenario` what its sensor
sees at scenario time ``t`` (seconds since the scenario's epoch), so nodes in separate
processes agree on what happens when. Body frame per REP 103: x forward, y left, z up; an
accelerometer at rest reads +9.81 m/s² on the axis pointing up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

G = 9.80665
EARTH_RADIUS_M = 6_371_008.8


class Activity(str, Enum):
    """What the officer's body is doing; drives the simulated IMU."""
    STILL = 'still'          # standing or sitting upright
    DRIVING = 'driving'      # seated in a moving car: upright, small vibration
    WALKING = 'walking'
    RUNNING = 'running'
    FIGHTING = 'fighting'
    FALLING = 'falling'      # the impact
    LYING = 'lying'          # horizontal and still


@dataclass(frozen=True)
class Segment:
    start_s: float
    activity: Activity
    speed_mps: float = 0.0     # ground speed, heading north unless heading_deg says otherwise
    heading_deg: float = 0.0   # clockwise from north


@dataclass(frozen=True)
class ImuSample:
    accel: tuple[float, float, float]   # m/s², body frame
    gyro: tuple[float, float, float]    # rad/s, body frame


@dataclass(frozen=True)
class GpsSample:
    lat: float
    lon: float
    alt: float
    speed_mps: float
    heading_deg: float


@dataclass(frozen=True)
class Scenario:
    """A timeline of activities plus the dispatch and holster events that go with it."""
    name: str
    origin: tuple[float, float, float]           # lat, lon, alt where the shift starts
    segments: tuple[Segment, ...]
    dispatch_at_s: float | None = None
    destination: tuple[float, float] | None = None
    draw_at_s: float | None = None
    holster_at_s: float | None = None
    duration_s: float = math.inf

    def segment_at(self, t: float) -> Segment:
        current = self.segments[0]
        for seg in self.segments:
            if seg.start_s <= t:
                current = seg
        return current

    def weapon_drawn_at(self, t: float) -> bool:
        drawn = self.draw_at_s is not None and t >= self.draw_at_s
        holstered = self.holster_at_s is not None and t >= self.holster_at_s
        return drawn and not holstered

    def dispatch_at(self, t: float) -> tuple[float, float] | None:
        """The dispatched destination (lat, lon) known at ``t``, or None before dispatch."""
        if self.dispatch_at_s is None or t < self.dispatch_at_s:
            return None
        return self.destination

    def gps_at(self, t: float) -> GpsSample:
        """Dead-reckon the officer's position along the segments up to ``t``."""
        north = east = 0.0
        seg_list = self.segments
        for i, seg in enumerate(seg_list):
            if seg.start_s >= t:
                break
            end = seg_list[i + 1].start_s if i + 1 < len(seg_list) else t
            dt = max(0.0, min(end, t) - seg.start_s)
            h = math.radians(seg.heading_deg)
            north += seg.speed_mps * dt * math.cos(h)
            east += seg.speed_mps * dt * math.sin(h)
        lat, lon = offset(self.origin[0], self.origin[1], north, east)
        seg = self.segment_at(t)
        return GpsSample(lat, lon, self.origin[2], seg.speed_mps, seg.heading_deg)

    def imu_at(self, t: float) -> ImuSample:
        """A plausible chest-worn IMU reading for the activity at ``t``."""
        seg = self.segment_at(t)
        return synth_imu(seg.activity, t - seg.start_s, t)


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """Move a WGS-84 point by a small local offset (spherical; fine for simulation)."""
    dlat = math.degrees(north_m / EARTH_RADIUS_M)
    dlon = math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return lat + dlat, lon + dlon


def _noise(t: float, k: int) -> float:
    """Deterministic pseudo-noise in [-1, 1]: repeatable runs, no global RNG state."""
    x = math.sin(t * 12.9898 * (k + 1) + k * 78.233) * 43758.5453
    return 2.0 * (x - math.floor(x)) - 1.0


def _value_noise(t: float, rate_hz: float, k: int) -> float:
    """Smooth pseudo-random signal in [-1, 1]: random knots every 1/rate_hz, eased between.
    Aperiodic by construction, unlike a sum of sines (which a gait detector would call a
    cadence)."""
    x = t * rate_hz
    i = math.floor(x)
    f = x - i
    f = f * f * (3.0 - 2.0 * f)
    a, b = _noise(float(i), k), _noise(float(i + 1), k)
    return a + (b - a) * f


def _struggle(t: float) -> ImuSample:
    """Grappling: the torso twists and bends by up to ~50° a second or so apart, while
    shoves, blows and pulls shake it by 1-3 g at irregular moments (no cadence).

    Tuned so the real-data detector parameters see it as a struggle (std |a| > 0.45 g,
    jerk > 4 g/s, periodicity < 0.4, gravity moving > 30° per 2.5 s) and not as running.
    """
    pitch = math.radians(55.0) * _value_noise(t, 1.4, 20)
    roll = math.radians(40.0) * _value_noise(t, 1.1, 21)
    up = (math.sin(pitch), -math.sin(roll) * math.cos(pitch), math.cos(pitch) * math.cos(roll))
    # Bursts: a slow envelope gates fast pushes, so the shaking comes and goes.
    # Blows and shoves are broadband: a white part (every sample its own) plus a 6 Hz
    # push-pull, gated by a slow envelope so the shaking comes and goes.
    env = 0.5 + 0.5 * _value_noise(t, 2.3, 22)
    lin = [G * (1.0 + 1.2 * env) * (0.7 * _noise(t, 23 + k) + 0.5 * _value_noise(t, 6.3, 26 + k))
           for k in range(3)]
    accel = (G * up[0] + lin[0], G * up[1] + lin[1], G * up[2] + lin[2])
    gyro = tuple(3.0 * _value_noise(t, 4.0, 30 + k) for k in range(3))
    return ImuSample(accel, gyro)  # type: ignore[arg-type]


def synth_imu(activity: Activity, since_s: float, t: float) -> ImuSample:
    """Synthesise one IMU sample for ``activity``, ``since_s`` after it began."""
    n = [_noise(t, k) for k in range(6)]
    if activity in (Activity.STILL, Activity.DRIVING):
        vib = 0.3 if activity is Activity.DRIVING else 0.03
        return ImuSample((vib * n[0], vib * n[1], G + vib * n[2]),
                         (0.01 * n[3], 0.01 * n[4], 0.01 * n[5]))
    if activity in (Activity.WALKING, Activity.RUNNING):
        cadence_hz, amp = (1.8, 2.5) if activity is Activity.WALKING else (2.8, 11.0)
        phase = 2 * math.pi * cadence_hz * t
        # Vertical bounce at step cadence; a smaller fore-aft surge; sway at half cadence.
        az = G + amp * math.sin(phase) + 0.2 * n[2]
        ax = 0.35 * amp * math.sin(phase + 1.0) + 0.2 * n[0]
        ay = 0.25 * amp * math.sin(phase / 2) + 0.2 * n[1]
        gyro = (0.3 * math.sin(phase / 2), 0.4 * math.sin(phase), 0.2 * math.sin(phase / 2))
        return ImuSample((ax, ay, az), gyro)
    if activity is Activity.FIGHTING:
        return _struggle(t)
    if activity is Activity.FALLING:
        if since_s < 0.15:                       # free fall
            return ImuSample((0.5 * n[0], 0.5 * n[1], 1.0 + 0.5 * n[2]), (2.0, 0.5, 0.2))
        if since_s < 0.35:                       # impact, ~5 g
            return ImuSample((5.0 * G, 1.0 * G * n[1], 2.0 * G * n[2]), (3.0 * n[3], 3.0, 1.0))
    # LYING (and the end of FALLING): on the back, body x (forward) points up.
    return ImuSample((G + 0.03 * n[0], 0.03 * n[1], 0.03 * n[2]),
                     (0.01 * n[3], 0.01 * n[4], 0.01 * n[5]))


#: Somewhere to start: Sacramento, CA.
_ORIGIN = (38.5816, -121.4944, 9.0)

#: The README's demo (``bodycam run --scenario patrol``): every trigger fires, in this order.
#: Dispatch at 5 s to a point 2 km north; the drive at 20 m/s crosses the one-mile line at
#: ~24.5 s (dispatch_proximity); out of the car at 85 s; foot pursuit 100-120 s
#: (foot_pursuit, ~4 s in); weapon drawn at 124 s (holster); struggle 126-138 s (fight, ~5 s
#: in); knocked down at 138 s and lying still (officer_down after ``down_hold_s``, then the
#: alert after ``dismiss_s``: 148.5 s and 168.5 s with the defaults).
PATROL = Scenario(
    name='patrol',
    origin=_ORIGIN,
    segments=(
        Segment(0.0, Activity.STILL),                      # parked, on patrol
        Segment(5.0, Activity.DRIVING, speed_mps=20.0),    # dispatched: drive north
        Segment(85.0, Activity.WALKING, speed_mps=1.4),    # out of the car
        Segment(100.0, Activity.RUNNING, speed_mps=4.5),   # foot pursuit
        Segment(120.0, Activity.STILL),                    # suspect stops; weapon drawn
        Segment(126.0, Activity.FIGHTING, speed_mps=0.5),  # struggle
        Segment(138.0, Activity.FALLING),                  # officer knocked down
        Segment(138.5, Activity.LYING),
    ),
    dispatch_at_s=5.0,
    destination=offset(_ORIGIN[0], _ORIGIN[1], 2000.0, 0.0),
    draw_at_s=124.0,
    holster_at_s=None,
    duration_s=200.0,
)

#: A quiet shift: parked then walking a beat; nothing should trigger.
IDLE = Scenario(
    name='idle',
    origin=_ORIGIN,
    segments=(Segment(0.0, Activity.STILL), Segment(30.0, Activity.WALKING, speed_mps=1.3)),
)

SCENARIOS = {s.name: s for s in (PATROL, IDLE)}


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f'unknown scenario {name!r}; known: {", ".join(SCENARIOS)}') from None
