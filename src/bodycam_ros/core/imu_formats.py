"""Readers for recorded IMU trials (SisFall, UMAFall) into one body-frame form.

Detectors and the replay source need every recording in the same units and frame as the live
``imu/data`` topic: seconds from 0, m/s² and rad/s, REP 103 body frame (x forward, y left,
z up; an upright wearer at rest reads accel ≈ (0, 0, +9.81)). Bad lines are counted and
skipped, never fatal, so a truncated or corrupted trial still replays.

Axis mappings (body ← sensor), derived from the shared recordings (``../shared/data/imu``,
SOURCES.md S1/S2) as the mean accel of the first and last second of each trial:

* SisFall, ADXL345 (waist device): upright the sensor reads ≈ (0.0, -1.0, -0.05) g in every
  upright-start trial (D01 walking: mean over 100 s (0.04, -1.02, -0.10) g), so sensor -y is
  up: ``z_body = -y_s``. Lying still after the forward falls F01/F05 the sensor reads
  z_s ≈ -0.97 / -0.72 g (face down: the body's forward axis points at the floor); after the
  backward fall F02 z_s = +0.81 g and at the start of D14 "lying on back" z_s = +0.88 g
  (forward axis points at the ceiling): so ``x_body = +z_s``. Right-handed completion gives
  ``y_body = -x_s``. (F04 of subject SA02 ends at z_s = +0.75 g: that subject rolled over or
  wore the device differently; the SA01 trials all agree.)
  The ITG3200 gyro is a separate chip on the same board. Check: integrate the gyro over
  1 s windows that start and end still and compare the predicted turn of the gravity vector
  with the measured one, for all 48 signed axis permutations over the 20 trials: the
  ADXL345's own axes win (mean error 13° vs. 20° for the next candidate and 23° for no
  rotation), so the gyro gets the same mapping.
* UMAFall, TI SensorTag (MPU-9250).
  Waist (id 2) upright: ≈ (0.94, 0.02, 0.50) g in the Walking trial (the belt clip tilts
  the tag ~25-30° back), so sensor +x is up: ``z_body = +x_s``. Lying after forwardFall
  z_s = -0.87 g (face down), after backwardFall z_s = +1.07 g (on the back), so
  ``x_body = +z_s`` and ``y_body = -y_s``. The chest tag (id 1: start (0.94, -0.02, 0.43),
  forwardFall end z_s = -0.86, backwardFall end z_s = +0.86) and the ankle tag (id 4:
  start (0.99, -0.09, 0.11), forwardFall end z_s = -0.86, backwardFall end z_s = +0.82)
  agree with the same mapping. The same gyro check as for SisFall shows the tag's gyro x
  and z run opposite to its accel x and z (mean error over 1-3 s still-to-still windows of
  all 7 trials, chest/waist/ankle: 10.6/10.1/13.7° with x, z flipped vs. 27.5/22.6/39.7°
  taken as is, 33.1/28.0/30.7° for no rotation; why - tag firmware or recording app - is
  not documented), so the gyro is read as diag(-1, 1, -1) in the accel's axes before the
  body mapping. The wrist tag (id 3) swings with the arm and the pocket phone (id 0) turns
  up either way up between trials (y_s = -1.04 g in Walking, +0.95 g in
  Sitting), so neither has a body frame: loading them raises :class:`ImuFormatError`.
  UMAFall does not state the gyro unit; °/s it is: walking/jogging gyro std reaches
  50-150 per axis (rad/s would mean 20+ rev/s at the waist), and the MPU-9250 on the
  SensorTag reports °/s; in the same check a scale of 1.0 °/s fits best (0.8: 11.9°,
  1.25: 14.7-17.2°, 2.0: 34°).
  The mounting tilt is NOT removed: the wearer's own posture and clip vary per trial, and
  a detector must cope with a tilted body-worn camera anyway.

Neither device is calibrated: still |a| is within 2 % of 1 g upright, but lying still it reads
8.2-10.8 m/s² depending on the side (SisFall F02 tail 8.24, F01 tail 10.84; UMAFall
forwardFall tail 8.8), i.e. per-axis gain/offset errors up to ~16 %; thresholds on |a| must
allow for that. The gyro checks live in test/test_imu_formats.py.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

G = 9.80665
DEG = math.pi / 180.0

SISFALL_RATE_HZ = 200.0
#: ADXL345 ±16 g, 13 bit: g = raw * 32 / 8192.
SISFALL_ACCEL_G_PER_LSB = 32.0 / 8192.0
#: ITG3200 ±2000 °/s, 16 bit: °/s = raw * 4000 / 65536.
SISFALL_GYRO_DPS_PER_LSB = 4000.0 / 65536.0

#: body = M @ sensor. Rows: x_body = z_s, y_body = -x_s, z_body = -y_s (see module doc).
SISFALL_ACCEL_FROM_SENSOR = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)
SISFALL_GYRO_FROM_SENSOR = SISFALL_ACCEL_FROM_SENSOR
#: x_body = z_s, y_body = -y_s, z_body = x_s (see module doc).
UMAFALL_TAG_FROM_SENSOR = np.array([[0, 0, 1], [0, -1, 0], [1, 0, 0]], dtype=float)
#: The tag's gyro x and z are negated relative to its accel (see module doc).
UMAFALL_GYRO_FROM_SENSOR = UMAFALL_TAG_FROM_SENSOR @ np.diag([-1.0, 1.0, -1.0])

UMAFALL_SENSORS = {0: 'right trouser pocket phone', 1: 'chest', 2: 'waist', 3: 'wrist',
                   4: 'ankle'}
#: Sensor ids whose mounting gives a body frame (checked on the shared trials).
UMAFALL_BODY_SENSORS = (1, 2, 4)
#: A gap longer than this between two stamps of one stream splits it; the longest run is
#: kept. The shared trials' longest gap is 160 ms; a corrupted stamp is hours or years off.
UMAFALL_MAX_GAP_S = 10.0
#: Resampling never makes up more than this many grid points per real sample (+100):
#: a stream that would need more is not one trial at one rate.
UMAFALL_MAX_GRID_PER_SAMPLE = 4
#: Highest plausible IMU rate [Hz]; a median interval shorter than 1/this is not one.
MAX_RATE_HZ = 10_000.0

_SISFALL_NAME = re.compile(r'^([DF]\d{2})_(S[AE]\d{2})_R(\d{2})')
_UMAFALL_NAME = re.compile(r'UMAFall_Subject_\d+_(ADL|Fall)_(.+?)_\d+_\d{4}-\d{2}-\d{2}')


class ImuFormatError(ValueError):
    """A recording that cannot be read as the requested format (the message says why)."""


@dataclass(frozen=True)
class ImuRecording:
    """One trial in body frame and SI units, ready to replay or to feed a detector."""
    t: np.ndarray            # seconds from 0, shape (N,)
    accel: np.ndarray        # m/s², shape (N, 3), body frame REP 103 (upright ≈ (0, 0, +9.81))
    gyro: np.ndarray | None  # rad/s, shape (N, 3) body frame, or None if the file has no gyro
    rate_hz: float           # nominal sample rate
    label: str               # activity code from the file name: 'F01', 'D03', 'Fall_forwardFall'
    is_fall: bool            # dataset label: SisFall F*, UMAFall *_Fall_*
    path: str
    skipped_lines: int = 0   # data lines with a wrong column count or a non-numeric value
    dropped_nan: int = 0     # samples dropped because a value was NaN or infinite
    dropped_time: int = 0    # samples dropped for a repeated stamp or one far off the run

    @property
    def duration_s(self) -> float:
        """Length covered by the samples (N / rate)."""
        return len(self.t) / self.rate_hz

    def __len__(self) -> int:
        return len(self.t)


def load_sisfall(path: str | Path) -> ImuRecording:
    """Read a SisFall trial: 9 integer columns a line, 200 Hz, no timestamps.

    A sample's time is its line number / 200, so a skipped line leaves a gap instead of
    shifting everything after it.

    Raises:
        OSError: the file cannot be read.
        ImuFormatError: no valid sample in the file.
    """
    path = Path(path)
    idx: list[int] = []
    vals: list[list[float]] = []
    skipped = nan = 0
    n = 0
    with open(path, encoding='ascii', errors='replace') as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            row = n
            n += 1
            cols = line.rstrip(';').split(',')
            if len(cols) != 9:
                skipped += 1
                continue
            try:
                v = [float(c) for c in cols]
            except ValueError:
                skipped += 1
                continue
            del v[6:]   # the MMA8451Q columns duplicate the ADXL345 at lower range: unused
            if not all(math.isfinite(x) for x in v):
                nan += 1
                continue
            idx.append(row)
            vals.append(v)
    if not vals:
        raise ImuFormatError(f'{path}: no valid SisFall sample ({skipped} bad lines, '
                             f'{nan} NaN) - is this a SisFall file?')
    raw = np.asarray(vals)
    accel = raw[:, 0:3] * (SISFALL_ACCEL_G_PER_LSB * G) @ SISFALL_ACCEL_FROM_SENSOR.T
    gyro = raw[:, 3:6] * (SISFALL_GYRO_DPS_PER_LSB * DEG) @ SISFALL_GYRO_FROM_SENSOR.T
    m = _SISFALL_NAME.match(path.name)
    label = m.group(1) if m else path.stem
    return ImuRecording(t=np.asarray(idx, dtype=float) / SISFALL_RATE_HZ, accel=accel, gyro=gyro,
                        rate_hz=SISFALL_RATE_HZ, label=label, is_fall=label.startswith('F'),
                        path=str(path), skipped_lines=skipped, dropped_nan=nan)


def load_umafall(path: str | Path, sensor_id: int = 2) -> ImuRecording:
    """Read one SensorTag of a UMAFall trial, resampled onto a uniform time base.

    The tags stream accel and gyro as separate rows with their own millisecond stamps at an
    uneven ~20 Hz (gaps up to 160 ms); both are linearly interpolated onto one grid at the
    median rate rounded to a whole Hz, over the span both cover.

    Raises:
        OSError: the file cannot be read.
        ImuFormatError: unknown sensor, a sensor with no body frame, or no accel samples.
    """
    path = Path(path)
    if sensor_id not in UMAFALL_SENSORS:
        raise ImuFormatError(f'UMAFall sensor_id {sensor_id} unknown; known: '
                             f'{", ".join(f"{k} ({v})" for k, v in UMAFALL_SENSORS.items())}')
    if sensor_id not in UMAFALL_BODY_SENSORS:
        raise ImuFormatError(f'UMAFall sensor_id {sensor_id} ({UMAFALL_SENSORS[sensor_id]}) has '
                             f'no fixed body orientation; use one of {UMAFALL_BODY_SENSORS}')
    rows: dict[int, list[list[float]]] = {0: [], 1: []}
    skipped = nan = 0
    kind = desc = None
    others: set[int] = set()
    with open(path, encoding='utf-8', errors='replace') as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if line.startswith('%'):
                key, _, value = line[1:].partition(':')
                key, value = key.strip().lower(), value.strip()
                if key == 'type of movement' and value.upper() in ('ADL', 'FALL') and kind is None:
                    kind = 'Fall' if value.upper() == 'FALL' else 'ADL'
                elif key == 'description of the movement' and desc is None:
                    desc = value
                continue
            cols = line.rstrip(';').split(';')
            if len(cols) != 7:
                skipped += 1
                continue
            try:
                ts, _, x, y, z, stype, sid = (float(c) for c in cols)
            except ValueError:
                skipped += 1
                continue
            if sid != sensor_id or stype not in (0, 1):
                if sid in UMAFALL_SENSORS:
                    others.add(int(sid))
                continue
            if not all(math.isfinite(v) for v in (ts, x, y, z)):
                nan += 1
                continue
            rows[int(stype)].append([ts / 1000.0, x, y, z])
    if not rows[0] and others - {sensor_id}:
        raise ImuFormatError(f'{path}: no samples of sensor {sensor_id} '
                             f'({UMAFALL_SENSORS[sensor_id]}); the file has sensors '
                             f'{", ".join(map(str, sorted(others)))}')
    if len(rows[0]) < 2:
        raise ImuFormatError(f'{path}: fewer than 2 accelerometer samples for sensor '
                             f'{sensor_id} ({skipped} bad lines) - is this a UMAFall file?')
    acc, dropped = _main_run(np.asarray(rows[0]), f'{path}: sensor {sensor_id} accelerometer')
    gyr = None
    if len(rows[1]) >= 2:
        gyr, dropped_gyr = _main_run(np.asarray(rows[1]), f'{path}: sensor {sensor_id} gyro')
        dropped += dropped_gyr
    dt = float(np.median(np.diff(acc[:, 0])))
    if not dt >= 1.0 / MAX_RATE_HZ:
        raise ImuFormatError(f'{path}: median accelerometer interval {dt:.3g} s is not an IMU '
                             f'rate (max {MAX_RATE_HZ:g} Hz)')
    rate = float(max(1, round(1.0 / dt)))
    t0, t1 = acc[0, 0], acc[-1, 0]
    if gyr is not None:
        t0, t1 = max(t0, gyr[0, 0]), min(t1, gyr[-1, 0])
        if t1 <= t0:
            raise ImuFormatError(
                f'{path}: sensor {sensor_id} accelerometer ({acc[0, 0]:.3f}-{acc[-1, 0]:.3f} s) '
                f'and gyro ({gyr[0, 0]:.3f}-{gyr[-1, 0]:.3f} s) do not overlap')
    n_grid = int(math.floor((t1 - t0) * rate + 1e-9)) + 1
    if n_grid > UMAFALL_MAX_GRID_PER_SAMPLE * len(acc) + 100:
        raise ImuFormatError(f'{path}: {t1 - t0:.1f} s at {rate:g} Hz would be a grid of '
                             f'{n_grid} points from {len(acc)} accelerometer samples')
    grid = t0 + np.arange(n_grid) / rate
    accel = _interp(grid, acc) * G @ UMAFALL_TAG_FROM_SENSOR.T
    gyro = (_interp(grid, gyr) * DEG @ UMAFALL_GYRO_FROM_SENSOR.T) if gyr is not None else None
    m = _UMAFALL_NAME.search(path.name)
    if m:
        kind, desc = m.group(1), m.group(2)
    label = f'{kind}_{desc}' if kind and desc else path.stem
    return ImuRecording(t=grid - grid[0], accel=accel, gyro=gyro, rate_hz=rate, label=label,
                        is_fall=kind == 'Fall', path=str(path), skipped_lines=skipped,
                        dropped_nan=nan, dropped_time=dropped)


def load(path: str | Path, fmt: str = 'auto') -> ImuRecording:
    """Load a recording as ``fmt`` ('sisfall' | 'umafall' | 'auto': sniffed from the content).

    Raises:
        OSError: the file cannot be read.
        ImuFormatError: unknown ``fmt``, undetectable format, or no valid sample.
    """
    if fmt == 'auto':
        fmt = sniff(path)
    if fmt == 'sisfall':
        return load_sisfall(path)
    if fmt == 'umafall':
        return load_umafall(path)
    raise ImuFormatError(f'unknown IMU recording format {fmt!r}; use sisfall, umafall or auto')


def sniff(path: str | Path) -> str:
    """Guess the format from the first non-blank lines (falls back to the extension)."""
    path = Path(path)
    with open(path, encoding='utf-8', errors='replace') as fh:
        for _, line in zip(range(200), fh):
            line = line.strip()
            if not line:
                continue
            if line.startswith('%') or line.count(';') >= 6:
                return 'umafall'
            if line.count(',') == 8:
                return 'sisfall'
    ext = path.suffix.lower()
    if ext == '.csv':
        return 'umafall'
    if ext == '.txt':
        return 'sisfall'
    raise ImuFormatError(f'{path}: cannot tell whether this is SisFall or UMAFall')


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Rows sorted by time, repeated timestamps reduced to their first row (interp needs it)."""
    a = a[np.argsort(a[:, 0], kind='stable')]
    _, first = np.unique(a[:, 0], return_index=True)
    return a[first]


def _main_run(a: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    """(rows of the longest run without a gap over UMAFALL_MAX_GAP_S, rows dropped).

    Repeated stamps keep their first row; a stamp far from the rest (a corrupted value) ends
    up in a run of its own and is dropped, so it can neither stretch the resampling grid
    nor shift the rate.

    Raises:
        ImuFormatError: fewer than 2 distinct stamps remain.
    """
    u = _sorted_unique(a)
    if len(u) < 2:
        raise ImuFormatError(f'{what}: {len(a)} samples but fewer than 2 distinct timestamps')
    cuts = np.flatnonzero(np.diff(u[:, 0]) > UMAFALL_MAX_GAP_S) + 1
    bounds = np.concatenate(([0], cuts, [len(u)]))
    k = int(np.argmax(np.diff(bounds)))
    run = u[bounds[k]:bounds[k + 1]]
    if len(run) < 2:
        raise ImuFormatError(f'{what}: no 2 samples within {UMAFALL_MAX_GAP_S:g} s of '
                             'each other')
    return run, len(a) - len(run)


def _interp(grid: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.stack([np.interp(grid, a[:, 0], a[:, i]) for i in (1, 2, 3)], axis=1)
