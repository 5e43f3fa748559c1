"""A time-based window of IMU samples and the features the motion detectors share.

Everything works from timestamps, never sample counts: the live IMU runs at 100 Hz, SisFall
at 200 Hz, UMAFall's waist tag at ~20 Hz with jitter. Features that depend on the rate are
computed on a fixed grid: the magnitude is resampled to 50 Hz for the autocorrelation, and
the vector is averaged in 0.1 s blocks for jerk, so 20 Hz and 200 Hz recordings of the same
motion give the same numbers. All features but the orientation ones use |a| or rotation-
invariant vector statistics, so a camera worn a little tilted does not change them.
"""
from __future__ import annotations

import math

import numpy as np

G = 9.80665
#: Grid for the autocorrelation [Hz]: well above a 4 Hz running cadence's harmonics.
ACF_RATE_HZ = 50.0


class ImuWindow:
    """The last ``keep_s`` seconds of accelerometer (and gyro) samples.

    Samples out of time order or with non-finite values are counted and skipped; a
    stream that goes backwards by more than ``reset_after_s`` (a replayed file, a clock
    step) empties the window instead. Stored in a growing numpy buffer, compacted when
    full, so a window is a slice, not a copy of a deque.
    """

    def __init__(self, keep_s: float, reset_after_s: float = 5.0, capacity: int = 1024) -> None:
        self.keep_s = keep_s
        self._reset_after_s = reset_after_s
        self._t = np.empty(capacity)
        self._a = np.empty((capacity, 3))
        self._w = np.full(capacity, np.nan)     # |gyro| [rad/s], NaN where none
        self._lo = self._hi = 0                 # live samples are [lo, hi)
        self.rejected = 0
        self.resets = 0
        self.last_t = -math.inf

    def __len__(self) -> int:
        return self._hi - self._lo

    def push(self, t: float, accel: tuple[float, float, float] | np.ndarray,
             gyro: tuple[float, float, float] | np.ndarray | None = None) -> bool:
        """Add one sample; returns False if it was skipped."""
        ax, ay, az = float(accel[0]), float(accel[1]), float(accel[2])
        if not (math.isfinite(t) and math.isfinite(ax) and math.isfinite(ay)
                and math.isfinite(az)):
            self.rejected += 1
            return False
        if t <= self.last_t:
            if self.last_t - t > self._reset_after_s:
                self.clear()
                self.resets += 1
            else:
                self.rejected += 1
                return False
        self.last_t = t
        horizon = t - self.keep_s
        while self._lo < self._hi and self._t[self._lo] < horizon:
            self._lo += 1
        if self._hi == len(self._t):
            self._make_room()
        i = self._hi
        self._t[i] = t
        self._a[i, 0], self._a[i, 1], self._a[i, 2] = ax, ay, az
        if gyro is not None:
            self._w[i] = math.sqrt(float(gyro[0]) ** 2 + float(gyro[1]) ** 2
                                   + float(gyro[2]) ** 2)
        else:
            self._w[i] = math.nan
        self._hi += 1
        return True

    def _make_room(self) -> None:
        n = self._hi - self._lo
        if n > len(self._t) // 2:      # mostly live: grow
            cap = 2 * len(self._t)
            t, a, w = np.empty(cap), np.empty((cap, 3)), np.full(cap, np.nan)
        else:                          # mostly expired: compact in place
            t, a, w = self._t, self._a, self._w
        t[:n] = self._t[self._lo:self._hi]
        a[:n] = self._a[self._lo:self._hi]
        w[:n] = self._w[self._lo:self._hi]
        self._t, self._a, self._w = t, a, w
        self._lo, self._hi = 0, n

    def clear(self) -> None:
        self._lo = self._hi = 0
        self.last_t = -math.inf

    def arrays(self, last_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(t (N,), accel (N, 3)) of the samples in the last ``last_s`` seconds (views:
        use them before the next push)."""
        if self._hi == self._lo:
            return np.empty(0), np.empty((0, 3))
        t = self._t[self._lo:self._hi]
        start = self._lo + int(np.searchsorted(t, t[-1] - last_s, side='left'))
        return self._t[start:self._hi], self._a[start:self._hi]

    def gyro_rms(self, last_s: float) -> float:
        """RMS angular rate [rad/s] over the last ``last_s`` seconds; NaN without a gyro."""
        t, _ = self.arrays(last_s)
        if len(t) == 0:
            return math.nan
        w = self._w[self._hi - len(t):self._hi]
        w = w[np.isfinite(w)]
        return float(np.sqrt(np.mean(w * w))) if len(w) else math.nan


class Hop:
    """Calls for an evaluation every ``hop_s`` of sample time (not every sample)."""

    def __init__(self, hop_s: float) -> None:
        self.hop_s = hop_s
        self._next = -math.inf

    def due(self, t: float) -> bool:
        if t >= self._next:
            # Re-anchor after a gap rather than firing a burst of catch-up evaluations.
            self._next = t + self.hop_s if t - self._next > self.hop_s else self._next + self.hop_s
            return True
        return False


# ------------------------------------------------------------------------------ features

def magnitude_g(accel: np.ndarray) -> np.ndarray:
    return np.linalg.norm(accel, axis=1) / G


def energy_g(accel: np.ndarray) -> float:
    """Standard deviation of |a| [g]: how hard the body is being shaken, any direction."""
    return float(np.std(magnitude_g(accel))) if len(accel) > 1 else 0.0


def cadence(t: np.ndarray, accel: np.ndarray, min_hz: float = 0.8,
            max_hz: float = 5.0) -> tuple[float, float]:
    """(periodicity, step frequency [Hz]) from the autocorrelation of |a|.

    The step frequency is that of the FIRST strong peak (>= 0.6 x the best one), so a
    runner's stride (two steps) is not mistaken for a slow step. Periodicity is that peak's
    normalised autocorrelation, 1 for a perfectly repeating gait, ~0 for a struggle.
    """
    if len(t) < 4 or t[-1] - t[0] < 1.0 / max(min_hz, 0.1):
        return 0.0, 0.0
    grid = np.arange(t[0], t[-1], 1.0 / ACF_RATE_HZ)
    x = np.interp(grid, t, magnitude_g(accel))
    x = x - x.mean()
    n = len(x)
    var = float(np.dot(x, x)) / n
    if var < 1e-8:
        return 0.0, 0.0
    lo = max(1, int(ACF_RATE_HZ / max_hz))
    hi = min(n - 2, int(math.ceil(ACF_RATE_HZ / min_hz)))
    if hi <= lo + 1:
        return 0.0, 0.0
    full = np.correlate(x, x, mode='full')[n - 1:]
    lags = np.arange(lo - 1, hi + 2)
    r = full[lags] / (n - lags) / var
    inner = r[1:-1]
    is_peak = (inner > r[:-2]) & (inner >= r[2:]) & (inner > 0.0)
    if not is_peak.any():
        return 0.0, 0.0
    peaks = np.flatnonzero(is_peak)
    best = float(inner[peaks].max())
    first = peaks[np.argmax(inner[peaks] >= 0.6 * best)]
    lag = lags[first + 1]
    return float(min(1.0, inner[first])), ACF_RATE_HZ / float(lag)


def block_means(t: np.ndarray, accel: np.ndarray, block_s: float) -> np.ndarray:
    """Mean accel vector of each ``block_s`` block (empty blocks skipped)."""
    if len(t) == 0:
        return np.empty((0, 3))
    idx = np.floor((t - t[0]) / block_s).astype(int)
    counts = np.bincount(idx)
    sums = np.stack([np.bincount(idx, weights=accel[:, k]) for k in range(3)], axis=1)
    keep = counts > 0
    return sums[keep] / counts[keep, None]


def spread_deg(t: np.ndarray, accel: np.ndarray, block_s: float = 0.5) -> float:
    """Largest angle [deg] between any block's mean accel and the window's: how much the
    torso turned (gravity moving in the body frame) during the window."""
    means = block_means(t, accel, block_s)
    if len(means) < 2:
        return 0.0
    norms = np.linalg.norm(means, axis=1)
    ok = norms > 1e-6
    if ok.sum() < 2:
        return 0.0
    dirs = means[ok] / norms[ok, None]
    mean = dirs.mean(axis=0)
    mn = np.linalg.norm(mean)
    if mn < 1e-6:
        return 180.0
    cos = np.clip(dirs @ (mean / mn), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos.min())))


def jerk_g_s(t: np.ndarray, accel: np.ndarray, block_s: float = 0.1) -> float:
    """RMS rate of change [g/s] of the 0.1 s block-mean accel vector (rate-independent)."""
    means = block_means(t, accel, block_s)
    if len(means) < 3:
        return 0.0
    d = np.diff(means, axis=0) / (block_s * G)
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


def gravity_dir(accel: np.ndarray) -> np.ndarray | None:
    """Unit vector of the mean accel (the gravity direction when the body is quiet)."""
    if len(accel) == 0:
        return None
    m = accel.mean(axis=0)
    n = float(np.linalg.norm(m))
    return m / n if n > 1e-6 else None


def motion_g(accel: np.ndarray) -> float:
    """RMS deviation of the accel vector from its mean [g]: ~0.02 lying still, 0.25+ walking."""
    if len(accel) < 2:
        return 0.0
    d = accel - accel.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1)))) / G


def angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(float(np.dot(u, v)), -1.0, 1.0))))
