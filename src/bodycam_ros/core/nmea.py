"""NMEA 0183 for a GNSS receiver: checksum, sentence parsers, and one ``Fix`` per epoch.

Modelled on ros-drivers/nmea_navsat_driver's split (checksum, table-driven parser, driver)
but typed: sentences parse into frozen dataclasses, a bad sentence raises a named
:class:`NmeaError`, and :class:`NmeaFixAssembler` merges the sentences of one epoch (same
UTC time of day) into one :class:`Fix`. The line-feed API (``feed``/``flush``/``iter_fixes``)
never raises: a receiver's stream is noisy (partial first lines, comments in logs, marine and
proprietary sentences, bit errors), so every kind of bad line is counted and skipped.

Position uncertainty, in this order:
  1. GST (pseudorange error statistics) gives 1-sigma latitude/longitude/altitude errors in
     metres: covariance DIAGONAL_KNOWN.
  2. Otherwise HDOP (and VDOP when a GSA gives it) times a user equivalent range error
     (``uere_m``, default :data:`DEFAULT_UERE_M` = 4 m, a typical 1-sigma single-frequency
     figure): covariance APPROXIMATED. HDOP scales the horizontal error, so each horizontal
     axis gets (HDOP·UERE)²/2; the vertical gets (VDOP·UERE)², or (2·HDOP·UERE)² when no VDOP
     is known (vertical error is typically about twice the horizontal one).
  3. Neither: UNKNOWN (all zeros), as sensor_msgs/NavSatFix expects.
"""
from __future__ import annotations

import calendar
import datetime
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum

KNOT_MPS = 1852.0 / 3600.0
KMH_MPS = 1.0 / 3.6
#: Default 1-sigma user equivalent range error [m] that turns HDOP into metres.
DEFAULT_UERE_M = 4.0
NAN = math.nan
#: An NMEA number: optional sign, ASCII digits, optional fraction. float() alone would also
#: take 'nan', 'inf', '1e999', '1_0' and ' 1', which no receiver sends.
_NUMBER = re.compile(r'[+-]?(?:\d+(?:\.\d*)?|\.\d+)')
_INTEGER = re.compile(r'[+-]?\d{1,9}')
_DIGITS = re.compile(r'\d+')
_TOD = re.compile(r'(\d\d)(\d\d)(\d\d(?:\.\d*)?)')
_LATLON = re.compile(r'\d+(?:\.\d*)?')


class NmeaError(ValueError):
    """A sentence that cannot be used: the message names the line and what is wrong."""


class NmeaChecksumError(NmeaError):
    """The ``*hh`` checksum is missing or does not match the sentence."""


class UnsupportedSentence(NmeaError):
    """Well-formed, checksum-valid, but of a type this parser does not read (GSV, HDG, ...)."""


class FixStatus(IntEnum):
    """Quality of a position; values match sensor_msgs/NavSatStatus."""
    NO_FIX = -1
    FIX = 0      # autonomous GNSS
    DGPS = 1     # differential or SBAS-augmented (NavSatStatus.STATUS_SBAS_FIX)
    RTK = 2      # RTK fixed/float, ground-based augmentation (STATUS_GBAS_FIX)


class CovarianceType(IntEnum):
    """How ``Fix.covariance`` was obtained; values match NavSatFix.COVARIANCE_TYPE_*."""
    UNKNOWN = 0
    APPROXIMATED = 1
    DIAGONAL_KNOWN = 2


# --------------------------------------------------------------------------- sentences

@dataclass(frozen=True)
class Rmc:
    """Recommended minimum: time, date, status, position, speed over ground, course."""
    talker: str
    tod: float | None          # seconds since UTC midnight
    valid: bool                # status A
    lat: float
    lon: float
    speed_mps: float
    course_deg: float
    date: tuple[int, int, int] | None   # (year, month, day)
    mode: str                  # NMEA 2.3 FAA mode: A autonomous, D differential, N invalid...


@dataclass(frozen=True)
class Gga:
    """Fix data: quality, satellites in use, HDOP, altitude above mean sea level."""
    talker: str
    tod: float | None
    lat: float
    lon: float
    quality: int               # 0 invalid, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float, 6 DR...
    satellites: int            # -1 when empty
    hdop: float
    alt_msl: float
    geoid_sep: float           # geoid height above the WGS-84 ellipsoid


@dataclass(frozen=True)
class Gsa:
    """DOP and active satellites (several per epoch with multi-constellation receivers)."""
    talker: str
    fix_type: int              # 1 none, 2 2D, 3 3D
    pdop: float
    hdop: float
    vdop: float


@dataclass(frozen=True)
class Vtg:
    """Course and speed over ground."""
    talker: str
    course_deg: float
    speed_mps: float


@dataclass(frozen=True)
class Gst:
    """Pseudorange error statistics: 1-sigma position errors [m]."""
    talker: str
    tod: float | None
    lat_std_m: float
    lon_std_m: float
    alt_std_m: float


@dataclass(frozen=True)
class Zda:
    """Time and date."""
    talker: str
    tod: float | None
    date: tuple[int, int, int] | None


Sentence = Rmc | Gga | Gsa | Vtg | Gst | Zda


def checksum(body: str) -> int:
    """XOR of the characters between ``$`` and ``*``."""
    value = 0
    for ch in body.encode('ascii', errors='replace'):
        value ^= ch
    return value


def split_sentence(line: str) -> tuple[str, str, list[str]]:
    """Validate framing and checksum; return (talker, sentence type, data fields).

    Raises:
        NmeaChecksumError: no ``*hh`` or a wrong checksum.
        NmeaError: not a ``$``-sentence at all.
    """
    line = line.strip()
    if not line.startswith('$'):
        raise NmeaError(f'not an NMEA sentence: {line[:40]!r}')
    star = line.rfind('*')
    if star < 0:
        raise NmeaChecksumError(f'no checksum: {line[:40]!r}')
    body, given = line[1:star], line[star + 1:]
    try:
        expected = int(given, 16)
    except ValueError:
        raise NmeaChecksumError(f'checksum {given!r} is not hex: {line[:40]!r}') from None
    if len(given) != 2 or checksum(body) != expected:
        raise NmeaChecksumError(f'checksum {given!r} != {checksum(body):02X}: {line[:40]!r}')
    if not body.isascii():
        raise NmeaError(f'non-ASCII characters in a sentence: {line[:40]!r}')
    fields = body.split(',')
    address = fields[0]
    if not address.isalnum() or not address.isascii():
        raise NmeaError(f'bad address field {address!r}')
    if address.startswith('P') or len(address) != 5:   # proprietary ($PMTK...) or odd
        return '', address, fields[1:]
    return address[:2], address[2:], fields[1:]


def _float(s: str) -> float:
    """A decimal field; NaN when empty. Only finite plain decimals are NMEA numbers."""
    if not s:
        return NAN
    if not _NUMBER.fullmatch(s):
        raise NmeaError(f'bad number {s[:20]!r}')
    v = float(s)
    if not math.isfinite(v):
        raise NmeaError(f'number out of range {s[:20]!r}')
    return v


def _int(s: str, default: int = -1) -> int:
    if not s:
        return default
    if not _INTEGER.fullmatch(s):
        raise NmeaError(f'bad integer {s[:20]!r}')
    return int(s)


def _calendar(y: int, m: int, d: int, text: object) -> tuple[int, int, int]:
    """A real calendar day (no 31 February, no year 99999) or NmeaError."""
    try:
        datetime.date(y, m, d)
    except (ValueError, OverflowError):
        raise NmeaError(f'bad date {text!r}') from None
    return y, m, d


def _tod(s: str) -> float | None:
    """hhmmss[.sss] -> seconds since midnight; None when empty."""
    if not s:
        return None
    match = _TOD.fullmatch(s)
    if match is None:
        raise NmeaError(f'bad time {s[:20]!r}')
    h, m, sec = int(match[1]), int(match[2]), float(match[3])
    if h > 23 or m > 59 or not 0 <= sec < 61:
        raise NmeaError(f'bad time {s!r}')
    return h * 3600 + m * 60 + sec


def _date(s: str) -> tuple[int, int, int] | None:
    """ddmmyy -> (year, month, day); two-digit years 80-99 are 19xx."""
    if not s:
        return None
    if len(s) != 6 or not _DIGITS.fullmatch(s):
        raise NmeaError(f'bad date {s[:20]!r}')
    d, m, y = int(s[0:2]), int(s[2:4]), int(s[4:6])
    return _calendar(1900 + y if y >= 80 else 2000 + y, m, d, s)


def _coord(value: str, hemi: str, max_deg: int) -> float:
    """(d)ddmm.mmmm + N/S/E/W -> signed degrees; NaN when empty."""
    if not value:
        return NAN
    if hemi not in ('N', 'S', 'E', 'W'):
        raise NmeaError(f'bad hemisphere {hemi!r}')
    if not _LATLON.fullmatch(value):
        raise NmeaError(f'bad coordinate {value[:20]!r}')
    dot = value.find('.')
    split = (dot if dot >= 0 else len(value)) - 2
    if split < 1:
        raise NmeaError(f'bad coordinate {value!r}')
    deg, minutes = int(value[:split]), float(value[split:])
    if minutes >= 60.0 or deg > max_deg:
        raise NmeaError(f'bad coordinate {value!r}')
    out = deg + minutes / 60.0
    if out > max_deg:
        raise NmeaError(f'bad coordinate {value!r}')
    return -out if hemi in ('S', 'W') else out


def _need(fields: list[str], n: int, kind: str) -> None:
    if len(fields) < n:
        raise NmeaError(f'{kind}: {len(fields)} fields, need {n}')


def _rmc(talker: str, f: list[str]) -> Rmc:
    _need(f, 9, 'RMC')
    if f[1] not in ('A', 'V'):
        raise NmeaError(f'RMC: bad status {f[1]!r}')
    return Rmc(talker, _tod(f[0]), f[1] == 'A', _coord(f[2], f[3], 90), _coord(f[4], f[5], 180),
               _float(f[6]) * KNOT_MPS, _float(f[7]), _date(f[8]),
               f[11] if len(f) > 11 else '')


def _gga(talker: str, f: list[str]) -> Gga:
    _need(f, 11, 'GGA')
    return Gga(talker, _tod(f[0]), _coord(f[1], f[2], 90), _coord(f[3], f[4], 180),
               _int(f[5], 0), _int(f[6]), _float(f[7]), _float(f[8]), _float(f[10]))


def _gsa(talker: str, f: list[str]) -> Gsa:
    _need(f, 17, 'GSA')
    return Gsa(talker, _int(f[1], 1), _float(f[14]), _float(f[15]), _float(f[16]))


def _vtg(talker: str, f: list[str]) -> Vtg:
    _need(f, 8, 'VTG')
    if f[1] != 'T':
        # NMEA 2.0-: course, course magnetic, knots, km/h without unit letters.
        return Vtg(talker, _float(f[0]), _float(f[2]) * KNOT_MPS)
    knots, kmh = _float(f[4]), _float(f[6])
    speed = knots * KNOT_MPS if not math.isnan(knots) else kmh * KMH_MPS
    return Vtg(talker, _float(f[0]), speed)


def _gst(talker: str, f: list[str]) -> Gst:
    _need(f, 8, 'GST')
    return Gst(talker, _tod(f[0]), _float(f[5]), _float(f[6]), _float(f[7]))


def _zda(talker: str, f: list[str]) -> Zda:
    _need(f, 4, 'ZDA')
    date = None
    if f[1] and f[2] and f[3]:
        if not all(len(x) <= 4 and _DIGITS.fullmatch(x) for x in f[1:4]):
            raise NmeaError(f'ZDA: bad date {[x[:8] for x in f[1:4]]}')
        d, m, y = int(f[1]), int(f[2]), int(f[3])
        if y < 1980:
            raise NmeaError(f'ZDA: bad date {f[1:4]}')
        date = _calendar(y, m, d, f'ZDA {f[1:4]}')
    return Zda(talker, _tod(f[0]), date)


#: Sentence type -> parser. Any talker (GP, GN, GL, GA, GB, BD, QZ, ...) is accepted.
PARSERS = {'RMC': _rmc, 'GGA': _gga, 'GSA': _gsa, 'VTG': _vtg, 'GST': _gst, 'ZDA': _zda}


def parse_sentence(line: str) -> Sentence:
    """Parse one NMEA line into its dataclass.

    Raises:
        NmeaChecksumError: missing or wrong checksum.
        UnsupportedSentence: a valid sentence of a type not in :data:`PARSERS`.
        NmeaError: malformed (too few fields, bad number, coordinate, time or date).
    """
    talker, kind, fields = split_sentence(line)
    parser = PARSERS.get(kind) if talker else None
    if parser is None:
        raise UnsupportedSentence(f'unsupported sentence {talker}{kind}')
    try:
        return parser(talker, fields)
    except NmeaError:
        raise
    except (ValueError, OverflowError) as exc:   # a garbled field the checks above missed
        raise NmeaError(f'{talker}{kind}: {exc}') from None


# --------------------------------------------------------------------------- fixes

@dataclass(frozen=True)
class Fix:
    """One receiver epoch, merged from all of its sentences. NaN (or -1) means unknown."""
    time: float                    # UNIX seconds UTC of the epoch (NaN if no time/date yet)
    status: FixStatus
    lat: float                     # degrees, + north
    lon: float                     # degrees, + east
    alt: float                     # metres above the WGS-84 ellipsoid (NavSatFix altitude)
    alt_msl: float = NAN           # metres above mean sea level (as GGA reports it)
    satellites: int = -1
    hdop: float = NAN
    vdop: float = NAN
    pdop: float = NAN
    speed_mps: float = NAN
    course_deg: float = NAN        # clockwise from true north
    climb_mps: float = NAN
    lat_std_m: float = NAN         # 1-sigma from GST, if the receiver sends it
    lon_std_m: float = NAN
    alt_std_m: float = NAN
    covariance: tuple[float, ...] = (0.0,) * 9   # ENU [m²], row-major, as NavSatFix
    covariance_type: CovarianceType = CovarianceType.UNKNOWN
    source: str = ''               # talker ID ('GP', 'GN', ...) or 'gpsd', 'sim'

    @property
    def has_fix(self) -> bool:
        return self.status is not FixStatus.NO_FIX

    @property
    def velocity_enu(self) -> tuple[float, float, float]:
        """(east, north, up) m/s; up is 0 when the receiver does not report a climb rate.

        NaN horizontally when speed is unknown, or course is unknown while moving.
        """
        up = 0.0 if math.isnan(self.climb_mps) else self.climb_mps
        if math.isnan(self.speed_mps):
            return NAN, NAN, up
        if math.isnan(self.course_deg):
            if self.speed_mps == 0.0:
                return 0.0, 0.0, up
            return NAN, NAN, up
        c = math.radians(self.course_deg)
        return self.speed_mps * math.sin(c), self.speed_mps * math.cos(c), up


def position_covariance(*, hdop: float = NAN, vdop: float = NAN, lat_std_m: float = NAN,
                        lon_std_m: float = NAN, alt_std_m: float = NAN,
                        uere_m: float = DEFAULT_UERE_M
                        ) -> tuple[tuple[float, ...], CovarianceType]:
    """ENU position covariance from GST standard deviations, else from DOP × UERE.

    See the module docstring for the model. Returns (9 values row-major, type).
    """
    # x * x, not x ** 2: float ** raises OverflowError where * gives inf; an absurd value from
    # a receiver must come out as UNKNOWN, not stop the stream.
    if not (math.isnan(lat_std_m) or math.isnan(lon_std_m)):
        up_std = alt_std_m if not math.isnan(alt_std_m) else 2.0 * max(lat_std_m, lon_std_m)
        cov = _diag(lon_std_m * lon_std_m, lat_std_m * lat_std_m, up_std * up_std)
        if all(math.isfinite(v) for v in cov):
            return cov, CovarianceType.DIAGONAL_KNOWN
    if not math.isnan(hdop) and hdop > 0.0:
        h = hdop * uere_m
        v = vdop * uere_m if not math.isnan(vdop) and vdop > 0 else 2.0 * h
        cov = _diag(h * h / 2.0, h * h / 2.0, v * v)
        if all(math.isfinite(x) for x in cov):
            return cov, CovarianceType.APPROXIMATED
    return (0.0,) * 9, CovarianceType.UNKNOWN


def _diag(e: float, n: float, u: float) -> tuple[float, ...]:
    return (e, 0.0, 0.0, 0.0, n, 0.0, 0.0, 0.0, u)


def unix_time(date: tuple[int, int, int], tod: float) -> float:
    """UTC calendar date + seconds of day -> UNIX seconds."""
    y, m, d = date
    return calendar.timegm((y, m, d, 0, 0, 0)) + tod


@dataclass
class NmeaStats:
    """What the assembler saw, one counter per kind of line."""
    lines: int = 0
    sentences: int = 0          # parsed and used
    comments: int = 0           # lines starting with '#' (gpsd log headers, notes)
    blank: int = 0
    unknown: int = 0            # valid sentences of types we do not read (GSV, HDG, PMTK...)
    malformed: int = 0          # not NMEA, or a field that does not parse
    checksum_failures: int = 0
    epochs: int = 0             # groups of sentences with one UTC time
    fixes: int = 0              # Fix objects produced (any status)
    dropped_epochs: int = 0     # epochs that could not become a Fix (no date known yet)
    last_error: str = ''


@dataclass
class _Epoch:
    tod: float | None
    rmc: Rmc | None = None
    gga: Gga | None = None
    gsa: Gsa | None = None
    vtg: Vtg | None = None
    gst: Gst | None = None
    zda: Zda | None = None
    kinds: list[str] = field(default_factory=list)


class NmeaFixAssembler:
    """Turns a stream of NMEA lines into one :class:`Fix` per receiver epoch.

    An epoch is the run of sentences sharing one UTC time of day; sentences without a time
    (GSA, VTG) join the epoch in progress. An epoch is complete when a sentence with another
    time arrives, or when the caller calls :meth:`flush` (end of file; or the line went idle,
    which is how a serial source ends an epoch without waiting for the next one).

    A Fix needs a date: from the epoch's RMC or ZDA, else the last date seen (so GGA-only
    streams work once any RMC/ZDA has been received). Epochs before any date are counted in
    ``stats.dropped_epochs``. The position comes from RMC when present (GGA otherwise);
    GGA adds altitude, satellites and HDOP; GSA adds PDOP/HDOP/VDOP; GST adds 1-sigma errors.

    Args:
        uere_m: user equivalent range error [m] that turns HDOP into a covariance.
    """

    def __init__(self, uere_m: float = DEFAULT_UERE_M) -> None:
        if not uere_m > 0:
            raise ValueError(f'uere_m must be > 0: {uere_m}')
        self.uere_m = uere_m
        self.stats = NmeaStats()
        self._epoch: _Epoch | None = None
        self._date: tuple[int, int, int] | None = None
        self._date_tod: float = 0.0

    def feed(self, line: str | bytes) -> list[Fix]:
        """Consume one line; return the fixes it completed (usually none or one). Never raises."""
        st = self.stats
        st.lines += 1
        if isinstance(line, (bytes, bytearray)):
            line = bytes(line).decode('ascii', errors='replace')
        text = line.strip()
        if not text:
            st.blank += 1
            return []
        if text.startswith('#'):
            st.comments += 1
            return []
        try:
            sentence = parse_sentence(text)
        except NmeaChecksumError as exc:
            st.checksum_failures += 1
            st.last_error = str(exc)
            return []
        except UnsupportedSentence:
            st.unknown += 1
            return []
        except NmeaError as exc:
            st.malformed += 1
            st.last_error = str(exc)
            return []
        st.sentences += 1
        return self._add(sentence)

    def flush(self) -> list[Fix]:
        """Close the epoch in progress (end of input, or the line went quiet)."""
        epoch, self._epoch = self._epoch, None
        return self._finish(epoch)

    def _add(self, s: Sentence) -> list[Fix]:
        out: list[Fix] = []
        tod = getattr(s, 'tod', None)
        timed = isinstance(s, (Rmc, Gga, Gst, Zda))
        if timed and tod is None and isinstance(s, (Rmc, Gga)):
            # A receiver without time yet ("$GPRMC,,V,...") still says "no fix": one epoch.
            out += self.flush()
            single = _Epoch(None)
            self._put(single, s)
            return out + self._finish(single)
        if self._epoch is None or (timed and tod is not None and self._epoch.tod is not None
                                   and abs(tod - self._epoch.tod) > 1e-3):
            out += self.flush()
            self._epoch = _Epoch(tod if timed else None)
        elif timed and self._epoch.tod is None:
            self._epoch.tod = tod
        self._put(self._epoch, s)
        return out

    @staticmethod
    def _put(epoch: _Epoch, s: Sentence) -> None:
        name = type(s).__name__.lower()
        epoch.kinds.append(name)
        if isinstance(s, Gsa) and epoch.gsa is not None and not math.isnan(epoch.gsa.hdop):
            # Multi-constellation receivers send one GSA per system with the same combined
            # DOPs: keep the first. Any other repeat within an epoch: the later one wins.
            return
        setattr(epoch, name, s)

    def _finish(self, e: _Epoch | None) -> list[Fix]:
        if e is None or (e.rmc is None and e.gga is None):
            return []   # only GSA/VTG/GST/ZDA: nothing to place
        self.stats.epochs += 1
        for src in (e.rmc, e.zda):
            if src is not None and src.date is not None and src.tod is not None:
                self._date, self._date_tod = src.date, src.tod
        if e.tod is None:
            t = NAN
        elif (e.rmc is not None and e.rmc.date is not None):
            t = unix_time(e.rmc.date, e.tod)
        elif e.zda is not None and e.zda.date is not None:
            t = unix_time(e.zda.date, e.tod)
        elif self._date is not None:
            t = unix_time(self._date, e.tod)
            if e.tod < self._date_tod - 43200:   # crossed UTC midnight since the last date
                t += 86400.0
        else:
            self.stats.dropped_epochs += 1
            return []
        fix = self._merge(e, t)
        self.stats.fixes += 1
        return [fix]

    def _merge(self, e: _Epoch, t: float) -> Fix:
        rmc, gga, gsa, vtg, gst = e.rmc, e.gga, e.gsa, e.vtg, e.gst
        status = _status(rmc, gga)
        if rmc is not None and not (math.isnan(rmc.lat) or math.isnan(rmc.lon)):
            lat, lon = rmc.lat, rmc.lon
        elif gga is not None:
            lat, lon = gga.lat, gga.lon
        else:
            lat = lon = NAN
        if not (math.isfinite(lat) and math.isfinite(lon)):
            # "Valid" with an empty position field: nothing to navigate by.
            status = FixStatus.NO_FIX
        alt_msl = gga.alt_msl if gga is not None else NAN
        sep = gga.geoid_sep if gga is not None else NAN
        alt = alt_msl + sep if not math.isnan(sep) else alt_msl
        if not math.isfinite(alt):   # NaN: no altitude sent (NavSatFix's convention); or
            alt = NAN                # two absurd finite fields summed to inf
        hdop = gsa.hdop if gsa is not None and not math.isnan(gsa.hdop) else (
            gga.hdop if gga is not None else NAN)
        vdop = gsa.vdop if gsa is not None else NAN
        pdop = gsa.pdop if gsa is not None else NAN
        # A receiver without a solution reports DOPs of 0.0 (haicom): unknown, not perfect.
        hdop, vdop, pdop = (NAN if v <= 0 else v for v in (hdop, vdop, pdop))
        speed = rmc.speed_mps if rmc is not None else NAN
        course = rmc.course_deg if rmc is not None else NAN
        if vtg is not None:
            speed = speed if not math.isnan(speed) else vtg.speed_mps
            course = course if not math.isnan(course) else vtg.course_deg
        lat_std = gst.lat_std_m if gst is not None else NAN
        lon_std = gst.lon_std_m if gst is not None else NAN
        alt_std = gst.alt_std_m if gst is not None else NAN
        if status is FixStatus.NO_FIX:
            cov, cov_type = (0.0,) * 9, CovarianceType.UNKNOWN
        else:
            cov, cov_type = position_covariance(hdop=hdop, vdop=vdop, lat_std_m=lat_std,
                                                lon_std_m=lon_std, alt_std_m=alt_std,
                                                uere_m=self.uere_m)
        talker = (rmc or gga).talker  # type: ignore[union-attr]
        return Fix(time=t, status=status, lat=lat, lon=lon, alt=alt, alt_msl=alt_msl,
                   satellites=gga.satellites if gga is not None else -1,
                   hdop=hdop, vdop=vdop, pdop=pdop, speed_mps=speed, course_deg=course,
                   lat_std_m=lat_std, lon_std_m=lon_std, alt_std_m=alt_std,
                   covariance=cov, covariance_type=cov_type, source=talker)


def _status(rmc: Rmc | None, gga: Gga | None) -> FixStatus:
    """RMC status/mode decide fix or not (GGA quality without RMC); then how good it is."""
    quality = gga.quality if gga is not None else -1
    mode = rmc.mode if rmc is not None else ''
    if rmc is not None:
        if not rmc.valid or mode == 'N':
            return FixStatus.NO_FIX
    elif quality not in (1, 2, 3, 4, 5, 6, 9):   # 0 invalid, 7 manual input, 8 simulator
        return FixStatus.NO_FIX
    if quality in (4, 5) or mode in ('R', 'F'):
        return FixStatus.RTK
    if quality in (2, 3, 9) or mode in ('D', 'P'):
        return FixStatus.DGPS
    return FixStatus.FIX


def iter_fixes(lines: Iterable[str | bytes], uere_m: float = DEFAULT_UERE_M,
               stats: NmeaStats | None = None) -> Iterator[Fix]:
    """Every fix in ``lines`` (a log file, a list), flushing at the end.

    Pass ``stats`` to collect the counters; it is filled in as the iterator advances.
    """
    asm = NmeaFixAssembler(uere_m)
    if stats is not None:
        asm.stats = stats
    for line in lines:
        yield from asm.feed(line)
    yield from asm.flush()

