"""IMU recording loaders on the real SisFall and UMAFall trials in ../shared/data.

Checked what a user of the replayed stream relies on: SI units (|a| at rest ≈ 1 g), the
trial's duration and rate, the REP 103 body frame (upright → z up; face down after a forward
fall → x down), a gyro that agrees with the accelerometer, and bad lines counted not fatal.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bodycam_ros.core import imu_formats
from bodycam_ros.core.imu_formats import G, ImuFormatError, load, load_sisfall, load_umafall
from conftest import shared_data

UMA = {
    'walk': 'UMAFall_Subject_02_ADL_Walking_1_2016-06-13_20-27-49.csv',
    'fwd': 'UMAFall_Subject_02_Fall_forwardFall_1_2016-06-13_20-43-52.csv',
    'back': 'UMAFall_Subject_02_Fall_backwardFall_1_2016-06-13_20-51-32.csv',
    'lat': 'UMAFall_Subject_02_Fall_lateralFall_1_2016-06-13_20-49-17.csv',
    'lying': 'UMAFall_Subject_02_ADL_LyingDown_OnABed_1_2016-06-13_20-32-16.csv',
}


def sis(name: str) -> Path:
    return shared_data('imu', 'sisfall', name)


def uma(key: str) -> Path:
    return shared_data('imu', 'umafall', UMA[key])


def still_norm(rec: imu_formats.ImuRecording, start_s: float, length_s: float = 1.0) -> float:
    """Mean |a| over a window, after checking the wearer really is still there."""
    sel = (rec.t >= start_s) & (rec.t < start_s + length_s)
    norm = np.linalg.norm(rec.accel[sel], axis=1)
    assert sel.sum() >= 0.9 * length_s * rec.rate_hz
    assert norm.std() < 0.3, f'not still at {start_s} s in {rec.label}: std {norm.std():.2f}'
    return float(norm.mean())


def test_sisfall_units_duration_and_labels() -> None:
    d01 = load_sisfall(sis('D01_SA01_R01.txt'))
    assert (d01.label, d01.is_fall, d01.rate_hz) == ('D01', False, 200.0)
    assert len(d01) == 19999 and d01.duration_s == pytest.approx(100.0, abs=0.01)
    assert d01.t[0] == 0.0 and np.allclose(np.diff(d01.t), 0.005)
    assert d01.accel.shape == (19999, 3) and d01.gyro is not None and d01.gyro.shape == (19999, 3)
    assert d01.skipped_lines == 0 and d01.dropped_nan == 0

    f01 = load_sisfall(sis('F01_SA01_R01.txt'))
    assert (f01.label, f01.is_fall) == ('F01', True)
    assert f01.duration_s == pytest.approx(15.0, abs=0.01)
    # Standing still before sitting down (D07), sitting still then lying after F13: 1 g ± 5 %.
    # (Other lying postures read up to 16 % off 1 g: the ADXL345's per-axis calibration.)
    d07 = load_sisfall(sis('D07_SA01_R01.txt'))
    assert still_norm(d07, 0.0) == pytest.approx(G, rel=0.05)
    f13 = load_sisfall(sis('F13_SA01_R01.txt'))
    assert still_norm(f13, 0.0) == pytest.approx(G, rel=0.05)
    assert still_norm(f13, 14.0) == pytest.approx(G, rel=0.05)


def test_sisfall_body_frame_upright_z_up_and_forward_fall_face_down() -> None:
    walk = load_sisfall(sis('D01_SA01_R01.txt')).accel.mean(axis=0)  # 100 s of walking
    assert walk[2] > 0.95 * G and abs(walk[0]) < 0.15 * G and abs(walk[1]) < 0.15 * G
    # Lying still after a forward fall: forward axis points at the floor (x ≈ -g);
    # after a backward fall it points at the ceiling (x ≈ +g).
    fwd = load_sisfall(sis('F01_SA01_R01.txt'))
    back = load_sisfall(sis('F02_SA01_R01.txt'))
    assert fwd.accel[-200:, 0].mean() < -0.7 * G
    assert back.accel[-200:, 0].mean() > 0.7 * G
    # Lying on the back (D14 starts so): x up.
    assert load_sisfall(sis('D14_SA01_R01.txt')).accel[:200, 0].mean() > 0.8 * G


def test_umafall_waist_units_rate_duration_and_frame() -> None:
    walk = load_umafall(uma('walk'))
    assert (walk.label, walk.is_fall) == ('ADL_Walking', False)
    assert walk.rate_hz == 20.0 and np.allclose(np.diff(walk.t), 0.05)
    assert walk.duration_s == pytest.approx(15.0, abs=0.5)
    assert walk.gyro is not None and walk.gyro.shape == walk.accel.shape
    mean = walk.accel.mean(axis=0)
    assert mean[2] > 0.85 * G and abs(mean[1]) < 0.1 * G   # upright: z up (tag tilted ~25°)
    fwd, back = load_umafall(uma('fwd')), load_umafall(uma('back'))
    assert (fwd.label, fwd.is_fall) == ('Fall_forwardFall', True)
    assert still_norm(fwd, 0.0) == pytest.approx(G, rel=0.05)   # standing still before
    assert fwd.accel[-20:, 0].mean() < -0.7 * G
    assert back.accel[-20:, 0].mean() > 0.7 * G
    # The chest tag has the same mounting and mapping.
    assert load_umafall(uma('fwd'), sensor_id=1).accel[-20:, 0].mean() < -0.7 * G


def test_umafall_sensors_without_body_frame_are_refused() -> None:
    with pytest.raises(ImuFormatError, match='pocket'):
        load_umafall(uma('walk'), sensor_id=0)
    with pytest.raises(ImuFormatError, match='wrist'):
        load_umafall(uma('walk'), sensor_id=3)
    with pytest.raises(ImuFormatError, match='sensor_id 9'):
        load_umafall(uma('walk'), sensor_id=9)


def _turns(rec: imu_formats.ImuRecording, window_s: float) -> list[tuple[float, float]]:
    """Propagate gravity through the gyro between still moments; compare with the accel.

    Returns (error with the gyro, error assuming no rotation) in degrees for each window that
    starts and ends still and in which gravity turned by more than 5°.
    """
    assert rec.gyro is not None
    n = max(1, int(0.1 * rec.rate_hz))
    kernel = np.ones(n) / n
    smooth = np.stack([np.convolve(rec.accel[:, i], kernel, 'same') for i in range(3)], 1)
    mag = np.linalg.norm(smooth, axis=1)
    v = smooth / mag[:, None]
    still = np.abs(mag / G - 1) < 0.08
    dt, span = 1 / rec.rate_hz, int(window_s * rec.rate_hz)
    out = []
    for i in range(n, len(v) - span - n, max(1, span // 2)):
        if not (still[i] and still[i + span]):
            continue
        r = np.eye(3)
        for w in rec.gyro[i:i + span]:
            th = np.linalg.norm(w) * dt
            if th > 0:
                k = w / np.linalg.norm(w)
                kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
                r = r @ (np.eye(3) + math.sin(th) * kx + (1 - math.cos(th)) * kx @ kx)
        turned = math.degrees(math.acos(np.clip(v[i] @ v[i + span], -1, 1)))
        if turned > 5:
            out.append((math.degrees(math.acos(np.clip((r.T @ v[i]) @ v[i + span], -1, 1))),
                        turned))
    return out


def test_gyro_axes_and_units_agree_with_the_accelerometer() -> None:
    """The gyro, integrated, predicts how gravity turns: mapping and °/s scale are right."""
    sets = {
        'UMAFall chest+waist+ankle': [(load_umafall(uma(k), sensor_id=sid), w)
                                      for k in UMA for sid in (1, 2, 4) for w in (1.0, 2.0)],
        'SisFall': [(load_sisfall(sis(name)), 1.0) for name in
                    ('D12_SA01_R01.txt', 'D14_SA01_R01.txt', 'F13_SA01_R01.txt')],
    }
    for name, recs in sets.items():
        turns = np.array([t for rec, w in recs for t in _turns(rec, w)])
        assert len(turns) >= 8, name
        err, no_turn = turns.mean(axis=0)
        assert err < 0.6 * no_turn, f'{name}: gyro error {err:.1f}° vs {no_turn:.1f}° unturned'


def _corrupt_copy(src: Path, dst: Path, bad: list[str], every: int) -> int:
    """Copy ``src`` with ``bad`` lines woven in after every ``every`` data lines."""
    out, n, inserted = [], 0, 0
    for line in src.read_text(encoding='utf-8', errors='replace').splitlines(keepends=True):
        out.append(line)
        if line.strip() and not line.startswith('%'):
            n += 1
            if n % every == 0:
                out.append(bad[inserted % len(bad)] + '\n')
                inserted += 1
    dst.write_text(''.join(out))
    return inserted


def test_sisfall_corrupt_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    src = sis('F01_SA01_R01.txt')
    garbage = ['  17,-179, -99;', 'hello world', '1,2,3,4,5,6,7,8,x;', '1,2,3,4,5,6,7,8,9,10;']
    nans = ['nan,-179, -99, -18,-504,-352,  76,-697,-279;', '1,2,3,4,inf,6,7,8,9;']
    dst = tmp_path / 'F01_SA01_R01.txt'
    inserted = _corrupt_copy(src, dst, garbage + nans, every=50)
    clean, rec = load_sisfall(src), load_sisfall(dst)
    assert inserted == 60
    assert rec.skipped_lines == 40 and rec.dropped_nan == 20
    assert len(rec) == len(clean) and np.isfinite(rec.accel).all() and np.isfinite(rec.gyro).all()
    assert np.array_equal(rec.accel, clean.accel)
    # A bad line still took a line's time slot: the real samples after it keep their times.
    # Real sample 50 (0-based) follows the first bad line: it is the file's line 51.
    assert rec.t[49] == pytest.approx(49 / 200) and rec.t[50] == pytest.approx(51 / 200)


def test_umafall_corrupt_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    src = uma('fwd')
    bad = ['109;0;0.9;0.07', 'not;a;number;at;all;0;2', '109;0;nan;0.07;0.53;0;2',
           '110;0;0.9;inf;0.53;1;2']
    dst = tmp_path / 'corrupt.csv'   # no UMAFall name: the label comes from the header
    inserted = _corrupt_copy(src, dst, bad, every=100)
    rec, clean = load(dst, 'auto'), load_umafall(src)
    per_kind = [len(range(k, inserted, len(bad))) for k in range(len(bad))]
    assert inserted > 60
    assert rec.skipped_lines == per_kind[0] + per_kind[1]
    assert rec.dropped_nan == per_kind[2] + per_kind[3]
    assert (rec.label, rec.is_fall) == ('Fall_forwardFall', True)
    assert np.isfinite(rec.accel).all() and np.isfinite(rec.gyro).all()
    assert np.allclose(rec.accel, clean.accel)


def test_load_auto_sniffs_and_rejects_what_it_cannot_read(tmp_path: Path) -> None:
    assert load(sis('D07_SA01_R01.txt'), 'auto').label == 'D07'
    assert load(uma('lying'), 'auto').label == 'ADL_LyingDown_OnABed'
    junk = tmp_path / 'junk.txt'
    junk.write_text('this is not\nan IMU recording\n')
    with pytest.raises(ImuFormatError, match='no valid SisFall sample'):
        load(junk, 'sisfall')
    assert imu_formats.sniff(junk) == 'sisfall'   # nothing in it: the extension decides
    junk_dat = tmp_path / 'junk.dat'
    junk_dat.write_text('this is not\nan IMU recording\n')
    with pytest.raises(ImuFormatError, match='cannot tell'):
        load(junk_dat, 'auto')
    with pytest.raises(ImuFormatError, match='unknown IMU recording format'):
        load(junk, 'csv')
    with pytest.raises(ImuFormatError, match='accelerometer'):
        load(junk, 'umafall')
    with pytest.raises(FileNotFoundError):
        load(tmp_path / 'missing.txt', 'sisfall')


# --------------------------------------------------------------------------- issue 11 crashers

def _uma_rows(src: Path) -> tuple[list[str], list[list[str]]]:
    """(header lines, data rows split on ';') of a real UMAFall file."""
    head, rows = [], []
    for line in src.read_text(encoding='utf-8', errors='replace').splitlines():
        if line.startswith('%') or not line.strip():
            head.append(line)
        else:
            rows.append(line.rstrip(';').split(';'))
    return head, rows


def _write_uma(dst: Path, head: list[str], rows: list[list[str]]) -> Path:
    dst.write_text('\n'.join(head + [';'.join(r) for r in rows]) + '\n')
    return dst


def test_umafall_gyro_and_accel_that_do_not_overlap_are_a_named_error(tmp_path: Path) -> None:
    """The real waist tag with its gyro cut to after its accel: was IndexError."""
    head, rows = _uma_rows(uma('walk'))
    waist = [r for r in rows if r[6] == '2']
    acc = [r for r in waist if r[5] == '0']
    gyr = [r for r in waist if r[5] == '1']
    mid = float(acc[len(acc) // 2][0])
    keep = [r for r in acc if float(r[0]) < mid] + [r for r in gyr if float(r[0]) > mid + 500]
    with pytest.raises(ImuFormatError, match='overlap'):
        load_umafall(_write_uma(tmp_path / 'x.csv', head, keep))


def test_umafall_duplicate_timestamps_are_a_named_error(tmp_path: Path) -> None:
    """Every waist accel row on one timestamp: was ValueError (median of no intervals)."""
    head, rows = _uma_rows(uma('walk'))
    dup = [[rows[0][0]] + r[1:] for r in rows if r[6] == '2']
    with pytest.raises(ImuFormatError, match='distinct'):
        load_umafall(_write_uma(tmp_path / 'dup.csv', head, dup))


@pytest.mark.parametrize('stamp', ['1e18', '-1e18', '9' * 30])
def test_umafall_one_far_off_timestamp_is_dropped_and_counted(tmp_path: Path, stamp) -> None:
    """One corrupted stamp (in accel and gyro) asked numpy for 149-447 GiB: now skipped."""
    src = uma('fwd')
    head, rows = _uma_rows(src)
    for kind in ('0', '1'):
        i = [k for k, r in enumerate(rows) if r[6] == '2' and r[5] == kind][40]
        rows[i] = [stamp] + rows[i][1:]
    rec, clean = load_umafall(_write_uma(tmp_path / 'far.csv', head, rows)), load_umafall(src)
    assert rec.dropped_time == 2
    assert rec.rate_hz == clean.rate_hz and abs(len(rec) - len(clean)) <= 1
    n = min(len(rec), len(clean))
    assert np.allclose(rec.accel[-n // 2:], clean.accel[-n // 2:])


def test_umafall_grid_is_bounded_by_the_samples(tmp_path: Path) -> None:
    """Two 1 kHz bursts 8 s apart: 8000 grid points made up from 900 samples is refused."""
    head, rows = _uma_rows(uma('walk'))
    acc = [r for r in rows if r[6] == '2' and r[5] == '0']
    out = [[f'{k + (8000 if k >= len(acc) // 2 else 0)}'] + r[1:] for k, r in enumerate(acc)]
    with pytest.raises(ImuFormatError, match='grid'):
        load_umafall(_write_uma(tmp_path / 'bursts.csv', head, out))
