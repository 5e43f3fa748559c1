"""``bodycam eval``: run a trigger detector over recordings and report its accuracy.

IMU detectors (officer_down, foot_pursuit, fight) read SisFall/UMAFall trials through the
same loader and body-frame conversion as the ``imu`` node's recording source
(``core.imu_formats``) and feed every sample, in order and with its timestamp, to the same
detector classes the ``trigger_fusion`` node runs, with the node's default parameters. The
label of a trial, and whether it is a positive for the detector, come from its file name.

dispatch_proximity reads NMEA logs (``core.nmea``) and lists every entry into and exit from
the radius around ``--destination``.

A file that cannot be evaluated (unreadable, or a UMAFall trial without the waist sensor) is
named on stderr and in the report's ``skipped`` list with the reason, and the others are
reported; only when every file is skipped does the command fail.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

IMU_DETECTORS = ('officer_down', 'foot_pursuit', 'fight')
DETECTORS = (*IMU_DETECTORS, 'dispatch_proximity')
FORMATS = ('sisfall', 'umafall', 'auto', 'nmea')

_SISFALL = re.compile(r'^[DF]\d{2}_S[AE]\d{2}_R\d{2}\.txt$', re.IGNORECASE)
_UMAFALL = re.compile(r'^UMAFall_.*\.csv$', re.IGNORECASE)
#: Jogging trials: SisFall D03 (jogging slowly) and D04 (jogging quickly), UMAFall Jogging.
_JOGGING = re.compile(r'^(D03|D04)_|_Jogging_', re.IGNORECASE)
_FALL = re.compile(r'^F\d{2}_|_Fall_', re.IGNORECASE)


class EvalError(ValueError):
    """Bad arguments or unreadable inputs (the message says which)."""


class SkippedFile(EvalError):
    """One recording that cannot be evaluated; the run goes on without it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f'{path}: {reason}')
        self.path, self.reason = path, reason

    def as_dict(self) -> dict[str, str]:
        return {'file': self.path.name, 'path': str(self.path), 'reason': self.reason}


def _skip(skipped: list[dict[str, str]], exc: SkippedFile) -> None:
    print(f'skipped {exc.path}: {exc.reason}', file=sys.stderr)
    skipped.append(exc.as_dict())


def _none_left(skipped: list[dict[str, str]]) -> EvalError:
    return EvalError(f'all {len(skipped)} files were skipped: '
                     + '; '.join(f'{s["path"]}: {s["reason"]}' for s in skipped))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('paths', nargs='+', type=Path, metavar='PATH',
                   help='recordings, or folders searched for them')
    p.add_argument('--detector', required=True, choices=DETECTORS)
    p.add_argument('--format', default='auto', choices=FORMATS,
                   help='recording format (auto: SisFall .txt and UMAFall .csv by content)')
    p.add_argument('--down-hold-s', type=float, default=None, metavar='S',
                   help='officer_down: horizontal+still time after an impact (node default 10; '
                        'SisFall trials hold ~6 s after the fall, so use 3 there)')
    p.add_argument('--destination', default=None, metavar='LAT,LON',
                   help='dispatch_proximity: the dispatched location, degrees')
    p.add_argument('--radius-m', type=float, default=None, metavar='M',
                   help='dispatch_proximity: radius (default one mile, 1609.344 m)')
    p.add_argument('--json', action='store_true', help='print JSON (default: a table)')


def main(args: argparse.Namespace) -> int:
    try:
        if args.detector == 'dispatch_proximity':
            report = eval_nmea(args.paths, _destination(args.destination), args.radius_m)
        else:
            if args.format == 'nmea':
                raise EvalError(f'--format nmea is for dispatch_proximity, not {args.detector}')
            report = eval_imu(args.detector, args.paths, args.format, args.down_hold_s)
    except EvalError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False, default=_json_default))
    else:
        print(_table(report))
    return 0


# ------------------------------------------------------------------------------ IMU

@dataclass(frozen=True)
class FileResult:
    file: str
    label: str
    positive: bool
    fired: bool
    first_fire_s: float | None
    duration_s: float
    rate_hz: float


def is_positive(detector: str, name: str) -> bool:
    """Whether a trial (by file name) is one the detector must fire on."""
    if detector == 'officer_down':
        return bool(_FALL.search(name))
    if detector == 'foot_pursuit':
        return bool(_JOGGING.search(name))
    return False   # fight: no struggle in SisFall or UMAFall; every trial is a negative


def find_recordings(paths: list[Path], fmt: str) -> list[Path]:
    """Files as given; folders searched (recursively) for the format's file names."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            for f in sorted(path.rglob('*')):
                if f.is_file() and ((fmt in ('sisfall', 'auto') and _SISFALL.match(f.name))
                                    or (fmt in ('umafall', 'auto') and _UMAFALL.match(f.name))):
                    out.append(f)
        elif path.is_file():
            out.append(path)
        else:
            raise EvalError(f'no such file or folder: {path}')
    if not out:
        raise EvalError(f'no {fmt} recordings under {", ".join(map(str, paths))}')
    return out


def make_detector(detector: str, down_hold_s: float | None):
    """The detector exactly as the trigger_fusion node builds it (node defaults)."""
    from bodycam_ros.core.detectors import (Fight, FootPursuit, OfficerDown,
                                            OfficerDownParams)
    from bodycam_ros.core.detectors.base import DetectorError
    try:
        if detector == 'officer_down':
            return OfficerDown(OfficerDownParams(down_hold_s=down_hold_s)
                               if down_hold_s is not None else OfficerDownParams())
        if detector == 'foot_pursuit':
            return FootPursuit()
        return Fight()
    except DetectorError as exc:
        raise EvalError(str(exc)) from exc


def run_recording(detector: str, path: Path, fmt: str,
                  down_hold_s: float | None = None) -> FileResult:
    """Feed one recording, sample by sample, through a fresh detector.

    Raises:
        SkippedFile: the file cannot be read or is not a usable recording.
    """
    from bodycam_ros.core.detectors import DownEventKind
    from bodycam_ros.core.imu_formats import ImuFormatError, load
    try:
        rec = load(path, fmt)
    except ImuFormatError as exc:
        raise SkippedFile(path, str(exc).removeprefix(f'{path}: ')) from exc
    except OSError as exc:
        raise SkippedFile(path, f'cannot read: {exc.strerror or exc}') from exc
    det = make_detector(detector, down_hold_s)
    first: float | None = None
    # Plain lists: the same values the node gets from each Imu message, without per-sample
    # numpy indexing.
    ts, accel = rec.t.tolist(), rec.accel.tolist()
    gyro = rec.gyro.tolist() if rec.gyro is not None else [None] * len(ts)
    for t, a, w in zip(ts, accel, gyro):
        out = det.update(t, a, w)
        if detector == 'officer_down':
            fired = any(ev.kind is DownEventKind.DOWN for ev in out)
        else:
            fired = bool(out)
        if fired and first is None:
            first = t
    return FileResult(path.name, rec.label, is_positive(detector, path.name), first is not None,
                      None if first is None else round(first, 3), round(rec.duration_s, 3),
                      rec.rate_hz)


def eval_imu(detector: str, paths: list[Path], fmt: str,
             down_hold_s: float | None = None) -> dict:
    if detector not in IMU_DETECTORS:
        raise EvalError(f'{detector} is not an IMU detector')
    if down_hold_s is not None and detector != 'officer_down':
        raise EvalError('--down-hold-s applies to officer_down only')
    det = make_detector(detector, down_hold_s)          # bad parameters fail before any file
    results: list[FileResult] = []
    skipped: list[dict[str, str]] = []
    for f in find_recordings(paths, fmt):
        try:
            results.append(run_recording(detector, f, fmt, down_hold_s))
        except SkippedFile as exc:
            _skip(skipped, exc)
    if not results:
        raise _none_left(skipped)
    tp = sum(r.positive and r.fired for r in results)
    fn = sum(r.positive and not r.fired for r in results)
    fp = sum(not r.positive and r.fired for r in results)
    tn = sum(not r.positive and not r.fired for r in results)
    n_pos, n_neg = tp + fn, fp + tn
    return {
        'detector': detector,
        'format': fmt,
        'params': {k: v for k, v in vars(det.p).items()},
        'files': [vars(r) for r in results],
        'skipped': skipped,
        'summary': {'n_pos': n_pos, 'n_neg': n_neg, 'tp': tp, 'fp': fp, 'fn': fn, 'tn': tn,
                    'sensitivity': round(tp / n_pos, 4) if n_pos else None,
                    'specificity': round(tn / n_neg, 4) if n_neg else None,
                    'skipped': len(skipped)},
    }


# ------------------------------------------------------------------------------ NMEA

def _destination(text: str | None) -> tuple[float, float]:
    if not text:
        raise EvalError('dispatch_proximity needs --destination LAT,LON')
    try:
        lat, lon = (float(x) for x in text.split(','))
    except ValueError:
        raise EvalError(f'--destination {text!r}: expected LAT,LON in degrees') from None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise EvalError(f'--destination {text!r} is outside the globe')
    return lat, lon


def eval_nmea(paths: list[Path], destination: tuple[float, float],
              radius_m: float | None) -> dict:
    """Entries into and exits from the radius, per NMEA log, through the node's detector."""
    from bodycam_ros.core import nmea
    from bodycam_ros.core.detectors import ONE_MILE_M, DispatchProximity, Fix
    from bodycam_ros.core.detectors.base import DetectorError
    from bodycam_ros.core.detectors.dispatch_proximity import horizontal_accuracy_m
    from bodycam_ros.core.geodesy import distance_m

    files = []
    skipped: list[dict[str, str]] = []
    logs: list[Path] = []
    for path in paths:
        if path.is_dir():
            logs += sorted(f for f in path.rglob('*') if f.is_file()
                           and f.suffix.lower() in ('.log', '.nmea', '.txt'))
        elif path.is_file():
            logs.append(path)
        else:
            raise EvalError(f'no such file or folder: {path}')
    if not logs:
        raise EvalError(f'no NMEA logs under {", ".join(map(str, paths))}')
    for log in logs:
        try:
            det = DispatchProximity(radius_m if radius_m is not None else ONE_MILE_M)
        except DetectorError as exc:
            raise EvalError(str(exc)) from exc
        det.set_destination(0.0, *destination)
        events = []
        n = 0
        min_d = math.inf
        try:
            fh = open(log, 'rb')
        except OSError as exc:
            _skip(skipped, SkippedFile(log, f'cannot read: {exc.strerror or exc}'))
            continue
        with fh:
            for i, fx in enumerate(nmea.iter_fixes(fh)):
                n += 1
                t = fx.time if math.isfinite(fx.time) else float(i)
                fix = Fix(t, fx.lat, fx.lon, fx.has_fix and math.isfinite(fx.lat)
                          and math.isfinite(fx.lon),
                          horizontal_accuracy_m(fx.covariance, int(fx.covariance_type)))
                crossing = det.update(fix)
                if det.last_fix is fix:
                    min_d = min(min_d, distance_m(fix.lat, fix.lon, *destination))
                if crossing is not None:
                    events.append({
                        'event': 'enter' if crossing.entered else 'exit',
                        'time': crossing.t,
                        'utc': (datetime.fromtimestamp(crossing.t, timezone.utc).isoformat()
                                if math.isfinite(fx.time) else None),
                        'distance_m': round(crossing.distance_m, 2),
                        'lat': crossing.lat, 'lon': crossing.lon})
        files.append({'file': log.name, 'fixes': n, 'accepted': det.accepted,
                      'ignored': det.ignored, 'events': events,
                      'inside_at_end': det.state().active,
                      'min_distance_m': round(min_d, 2) if math.isfinite(min_d) else None})
    if not files:
        raise _none_left(skipped)
    return {'detector': 'dispatch_proximity', 'format': 'nmea',
            'destination': {'lat': destination[0], 'lon': destination[1]},
            'radius_m': radius_m if radius_m is not None else ONE_MILE_M,
            'files': files,
            'skipped': skipped,
            'summary': {'logs': len(files), 'skipped': len(skipped), 'entries': sum(
                e['event'] == 'enter' for f in files for e in f['events']),
                'exits': sum(e['event'] == 'exit' for f in files for e in f['events'])}}


# ------------------------------------------------------------------------------ output

def _json_default(obj):
    if hasattr(obj, 'item'):   # numpy scalars
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f'{type(obj).__name__} is not JSON serialisable')


def _table(report: dict) -> str:
    lines = []
    if report['detector'] == 'dispatch_proximity':
        for f in report['files']:
            lines.append(f'{f["file"]}: {f["fixes"]} fixes ({f["ignored"]} ignored), '
                         f'closest {f["min_distance_m"]} m')
            for e in f['events']:
                lines.append(f'  {e["event"]:5s} {e["utc"] or e["time"]}  {e["distance_m"]} m')
        lines += [f'skipped {s["file"]}: {s["reason"]}' for s in report['skipped']]
        return '\n'.join(lines)
    lines.append(f'{"file":62s} {"label":28s} pos  fired  first_fire_s')
    for f in report['files']:
        first = '' if f['first_fire_s'] is None else f'{f["first_fire_s"]:.2f}'
        pos, fired = 'yes' if f['positive'] else 'no', 'yes' if f['fired'] else 'no'
        lines.append(f'{f["file"][:62]:62s} {f["label"][:28]:28s} {pos:4s} {fired:6s} {first}')
    lines += [f'skipped {s["file"]}: {s["reason"]}' for s in report['skipped']]
    s = report['summary']
    sens = 'n/a' if s['sensitivity'] is None else f'{100 * s["sensitivity"]:.1f} %'
    spec = 'n/a' if s['specificity'] is None else f'{100 * s["specificity"]:.1f} %'
    lines.append(f'{report["detector"]}: {s["n_pos"]} positives, {s["n_neg"]} negatives; '
                 f'TP {s["tp"]} FN {s["fn"]} FP {s["fp"]} TN {s["tn"]}; '
                 f'sensitivity {sens}, specificity {spec}')
    return '\n'.join(lines)
