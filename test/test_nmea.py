"""core.nmea on the real receiver logs in ../shared/data/gps/nmea (gpsd project, BSD-2).

Expected values are facts of the logs, read here with a small regex of the test's own
(independent of the parser) or checked by hand against the file and SOURCES.md.
"""
from __future__ import annotations

import math
import random
import re
from functools import reduce
from pathlib import Path

import pytest

from conftest import shared_data

from bodycam_ros.core.nmea import (CovarianceType, FixStatus, Gga, Gsa, Gst, NmeaChecksumError,
                                   NmeaError, NmeaFixAssembler, NmeaStats, Rmc,
                                   UnsupportedSentence, Vtg, Zda, checksum, iter_fixes,
                                   parse_sentence, position_covariance)

LOGS = ('bundg_zeus_9.log', 'haicom-305N.log', 'nl2008u.log', 'quectel-L70.log')

# Per log: (fixes with a position, NO_FIX epochs, max speed m/s from SOURCES.md).
# SOURCES.md counts RMC *lines*: bundg has 146, but 094945 is sent twice within one epoch
# (lines 4359 and 4369, identical), so 145 RMC epochs; two epochs carry no RMC at all
# (094834: GGA+GLL+GSA, 094936: GGA+GLL+ZDA) and still give a position from GGA: 147.
# The log's very first epoch (GGA 094736, before any RMC/ZDA) has no date and is dropped.
EXPECTED = {
    'bundg_zeus_9.log': (147, 0, 3.45),
    'haicom-305N.log': (68, 6, 2.67),
    'nl2008u.log': (9, 0, 5.19),
    'quectel-L70.log': (16, 0, 0.12),
}

RMC_RE = re.compile(r'^\$(?:GP|GN)RMC,(\d{6}(?:\.\d+)?),([AV]),(\d{4}\.\d+),([NS]),'
                    r'(\d{5}\.\d+),([EW]),([\d.]*),[\d.]*,(\d\d)(\d\d)(\d\d)')


def rmc_facts(path: Path) -> dict[float, tuple[float, float, float]]:
    """UNIX time -> (lat, lon, speed m/s) of every valid (A) RMC line, by regex."""
    import calendar
    out = {}
    for line in path.read_text(errors='replace').splitlines():
        m = RMC_RE.match(line)
        if not m or m.group(2) != 'A':
            continue
        hms, lat, ns, lon, ew, knots, dd, mm, yy = (m.group(i) for i in (1, 3, 4, 5, 6, 7, 8,
                                                                         9, 10))
        t = calendar.timegm((2000 + int(yy), int(mm), int(dd), int(hms[:2]), int(hms[2:4]),
                             0)) + float(hms[4:])
        la = (int(lat[:2]) + float(lat[2:]) / 60) * (-1 if ns == 'S' else 1)
        lo = (int(lon[:3]) + float(lon[3:]) / 60) * (-1 if ew == 'W' else 1)
        out[t] = (la, lo, float(knots) * 1852 / 3600)
    return out


def with_checksum(body: str) -> str:
    return f'${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}'


# --------------------------------------------------------------------------- real logs

@pytest.mark.parametrize('name', LOGS)
def test_every_log_gives_the_fixes_the_log_says(name):
    path = shared_data('gps', 'nmea', name)
    stats = NmeaStats()
    fixes = list(iter_fixes(path.open('rb'), stats=stats))
    n_fix, n_nofix, max_speed = EXPECTED[name]
    good = [f for f in fixes if f.has_fix]
    assert len(good) == n_fix
    assert len(fixes) - len(good) == n_nofix
    assert stats.checksum_failures == 0 and stats.malformed == 0   # the logs are clean
    assert stats.comments == sum(1 for ln in path.read_text(errors='replace').splitlines()
                                 if ln.startswith('#'))

    facts = rmc_facts(path)
    by_time = {f.time: f for f in good}
    # Every valid RMC epoch is a fix at the RMC's position and speed, and nothing else is
    # except the RMC-less epochs explained above.
    assert set(facts) <= set(by_time)
    assert len(by_time) - len(facts) == (2 if name.startswith('bundg') else 0)
    for t, (lat, lon, speed) in facts.items():
        f = by_time[t]
        assert f.lat == pytest.approx(lat, abs=1e-9) and f.lon == pytest.approx(lon, abs=1e-9)
        assert f.speed_mps == pytest.approx(speed, abs=1e-9)
    first, last = min(facts), max(facts)
    assert good[0].time == first and good[-1].time == last
    assert max(f.speed_mps for f in good) == pytest.approx(max_speed, abs=0.005)
    assert all(f.time > fixes[i].time for i, f in enumerate(fixes[1:]))   # strictly ordered


def test_first_and_last_positions_by_hand():
    """Spot values copied from the logs' first/last valid RMC lines."""
    f = [x for x in iter_fixes(shared_data('gps', 'nmea', 'haicom-305N.log').open())
         if x.has_fix]
    # $GPRMC,095304.802,A,2712.6520,S,15303.1397,E,... 2007-04-08
    assert f[0].time == pytest.approx(1176025984.802)
    assert (f[0].lat, f[0].lon) == pytest.approx((-27.21086667, 153.05232833), abs=1e-8)
    # $GPRMC,095415.787,A,2712.6404,S,15303.1200,E,2.11,96.86,080407
    assert f[-1].time == pytest.approx(1176026055.787)
    assert (f[-1].lat, f[-1].lon) == pytest.approx((-27.21067333, 153.052), abs=1e-8)
    assert f[-1].speed_mps == pytest.approx(2.11 * 0.514444, abs=1e-4)
    q = list(iter_fixes(shared_data('gps', 'nmea', 'quectel-L70.log').open()))
    # $GPRMC,150119.000,A,5104.0859,N,11405.7387,W,0.09,194.17,090322,,,D
    assert q[0].time == 1646838079.0
    assert (q[0].lat, q[0].lon) == pytest.approx((51.06809833, -114.09564500), abs=1e-8)


def test_haicom_starts_without_a_fix():
    fixes = list(iter_fixes(shared_data('gps', 'nmea', 'haicom-305N.log').open()))
    assert [f.status for f in fixes[:7]] == [FixStatus.NO_FIX] * 6 + [FixStatus.FIX]
    assert all(f.covariance_type is CovarianceType.UNKNOWN for f in fixes[:6])


def test_quectel_dgps_with_gst_covariance():
    fixes = list(iter_fixes(shared_data('gps', 'nmea', 'quectel-L70.log').open()))
    f = fixes[0]
    assert all(x.status is FixStatus.DGPS for x in fixes)          # GGA quality 2, RMC mode D
    # $GPGST,150119.000,004.0,008.7,004.7,132.3,006.8,007.2,00014: lat 6.8, lon 7.2, alt 14 m
    assert f.covariance_type is CovarianceType.DIAGONAL_KNOWN
    assert f.covariance == pytest.approx((7.2 ** 2, 0, 0, 0, 6.8 ** 2, 0, 0, 0, 14.0 ** 2))
    # GGA: 8 satellites, HDOP 0.94, 1102.4 m MSL, geoid -17.5 m -> 1084.9 m ellipsoid
    assert (f.satellites, f.hdop, f.vdop, f.pdop) == (8, 0.94, 0.76, 1.21)
    assert f.alt_msl == 1102.4 and f.alt == pytest.approx(1084.9)


def test_bundg_covariance_from_hdop_and_vdop():
    f = next(iter_fixes(shared_data('gps', 'nmea', 'bundg_zeus_9.log').open()))
    # GSA PDOP 1.10 HDOP 0.60 VDOP 0.90, no GST: (0.6·4)²/2 per horizontal axis, (0.9·4)² up.
    assert f.covariance_type is CovarianceType.APPROXIMATED
    assert f.covariance == pytest.approx((2.88, 0, 0, 0, 2.88, 0, 0, 0, 12.96))
    f8 = next(iter_fixes(shared_data('gps', 'nmea', 'bundg_zeus_9.log').open(), uere_m=8.0))
    assert f8.covariance[0] == pytest.approx(4 * 2.88)
    # 5.6 kn at 230.5 deg: heading south-west, so east and north are both negative.
    e, n, u = f.velocity_enu
    assert math.hypot(e, n) == pytest.approx(5.6 * 1852 / 3600)
    assert math.degrees(math.atan2(e, n)) % 360 == pytest.approx(230.5)
    assert u == 0.0


def test_nl2008u_gn_talker_and_two_gsa_per_epoch():
    fixes = list(iter_fixes(shared_data('gps', 'nmea', 'nl2008u.log').open()))
    assert {f.source for f in fixes} == {'GN'}
    assert fixes[0].hdop == 0.7 and fixes[0].vdop == 1.1 and fixes[0].satellites == 12


# --------------------------------------------------------------------------- robustness

def test_corrupt_lines_are_counted_and_skipped(tmp_path):
    """Real quectel lines with corrupted extra copies in between: same fixes, exact counts."""
    src = shared_data('gps', 'nmea', 'quectel-L70.log')
    clean = list(iter_fixes(src.open()))
    out, n_bad_sum, n_malformed, n_comment, n_blank = [], 0, 0, 0, 0
    for line in src.read_text().splitlines():
        out.append(line)
        if 'RMC' in line:
            out.append(line.replace(',A,5104.', ',A,5105.'))         # bit error: sum fails
            out.append(line.split('*')[0])                          # truncated: no checksum
            n_bad_sum += 2
            body = line[1:line.index('*')].replace(',A,5104.', ',A,51x4.')
            out.append(with_checksum(body))                         # valid sum, bad field
            out.append(with_checksum(line[1:line.index('*')].rsplit(',', 8)[0]))  # too short
            out.append('\x00\xff$GPR garbage')                      # line noise
            n_malformed += 3
            out += ['# a note in the middle', '']
            n_comment += 1
            n_blank += 1
    p = tmp_path / 'noisy.log'
    p.write_bytes('\r\n'.join(out).encode('latin-1'))
    stats = NmeaStats()
    noisy = list(iter_fixes(p.open('rb'), stats=stats))
    assert noisy == clean
    assert stats.checksum_failures == n_bad_sum == 32
    assert stats.malformed == n_malformed == 48
    assert stats.comments == n_comment + 12 and stats.blank == n_blank
    assert stats.unknown == 36            # GSV, GRS, PMTK, PQVERNO: valid but not read
    assert 'not an NMEA sentence' in stats.last_error       # the last bad line was noise


def test_feed_never_raises_on_garbage():
    rng = random.Random(7)
    real = shared_data('gps', 'nmea', 'haicom-305N.log').read_bytes().splitlines()
    asm = NmeaFixAssembler()
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.3:
            line = bytes(rng.randrange(256) for _ in range(rng.randrange(100)))
        elif kind < 0.6:
            line = rng.choice(real)[:rng.randrange(90)]
        else:
            raw = bytearray(rng.choice(real))
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(32, 127)
            line = bytes(raw)
        asm.feed(line)
        asm.feed(line.decode('latin-1'))
    asm.flush()
    st = asm.stats
    assert st.lines == 6000
    assert st.sentences + st.unknown + st.malformed + st.checksum_failures + st.blank + \
        st.comments == st.lines


# --------------------------------------------------------------------------- sentences

RMC = '$GPRMC,150119.000,A,5104.0859,N,11405.7387,W,0.09,194.17,090322,,,D*73'


@pytest.mark.parametrize('talker', ['GP', 'GN', 'GL', 'GA', 'GB', 'BD', 'QZ'])
def test_any_talker(talker):
    s = parse_sentence(with_checksum(talker + RMC[3:RMC.index('*')]))
    assert isinstance(s, Rmc) and s.talker == talker
    assert (s.lat, s.lon) == pytest.approx((51.068098333, -114.095645))
    assert s.valid and s.mode == 'D' and s.date == (2022, 3, 9)
    assert s.tod == 15 * 3600 + 1 * 60 + 19
    assert s.speed_mps == pytest.approx(0.09 * 1852 / 3600)


def test_sentence_types():
    gga = parse_sentence('$GNGGA,091232.000,4813.0535,N,00824.8697,E,1,12,0.7,765.8,M,47.4,M,,'
                         '0000*45')
    assert isinstance(gga, Gga) and (gga.quality, gga.satellites, gga.hdop) == (1, 12, 0.7)
    assert gga.alt_msl == 765.8 and gga.geoid_sep == 47.4
    gsa = parse_sentence('$GNGSA,A,3,18,21,26,27,16,20,22,29,,,,,1.3,0.7,1.1,1*31')
    assert isinstance(gsa, Gsa) and (gsa.pdop, gsa.hdop, gsa.vdop) == (1.3, 0.7, 1.1)
    vtg = parse_sentence('$GPVTG,230.5,T,229.1,M,5.6,N,10.4,K,A*19')
    assert isinstance(vtg, Vtg) and vtg.course_deg == 230.5
    assert vtg.speed_mps == pytest.approx(5.6 * 1852 / 3600)
    gst = parse_sentence('$GPGST,150119.000,004.0,008.7,004.7,132.3,006.8,007.2,00014*71')
    assert isinstance(gst, Gst) and (gst.lat_std_m, gst.lon_std_m, gst.alt_std_m) == \
        (6.8, 7.2, 14.0)
    zda = parse_sentence('$GPZDA,150119.000,09,03,2022,,*53')
    assert isinstance(zda, Zda) and zda.date == (2022, 3, 9)


def test_parse_errors_are_named():
    with pytest.raises(NmeaChecksumError, match='checksum'):
        parse_sentence(RMC[:-2] + '00')
    with pytest.raises(NmeaChecksumError, match='no checksum'):
        parse_sentence(RMC.split('*')[0])
    with pytest.raises(UnsupportedSentence, match='GPGSV'):
        parse_sentence('$GPGSV,3,3,12,24,58,220,,26,17,053,,29,20,063,,30,60,311,44*7F')
    with pytest.raises(UnsupportedSentence):
        parse_sentence('$PMTK001,320,2*30')
    with pytest.raises(NmeaError, match='coordinate'):
        parse_sentence(with_checksum('GPRMC,150119.000,A,5164.0859,N,11405.7387,W,0,0,090322'))
    with pytest.raises(NmeaError, match='time'):
        parse_sentence(with_checksum('GPRMC,256119.000,A,5104.0859,N,11405.7387,W,0,0,090322'))
    with pytest.raises(NmeaError, match='fields'):
        parse_sentence(with_checksum('GPGGA,150119.000,5104.0859'))
    with pytest.raises(NmeaError, match='not an NMEA'):
        parse_sentence('hello')


# --------------------------------------------------------------------------- assembler

def test_gga_only_stream_uses_the_last_date_and_crosses_midnight():
    lines = [with_checksum('GPZDA,235958.000,31,12,2023,,'),
             with_checksum('GPGGA,235958.000,4813.0535,N,00824.8697,E,1,9,1.0,700.0,M,47.0,M,,'),
             with_checksum('GPGGA,235959.000,4813.0535,N,00824.8697,E,1,9,1.0,700.0,M,47.0,M,,'),
             with_checksum('GPGGA,000000.000,4813.0535,N,00824.8697,E,2,9,1.0,700.0,M,47.0,M,,')]
    fixes = list(iter_fixes(lines))
    assert [f.time for f in fixes] == [1704067198.0, 1704067199.0, 1704067200.0]
    assert [f.status for f in fixes] == [FixStatus.FIX, FixStatus.FIX, FixStatus.DGPS]
    assert math.isnan(fixes[0].speed_mps) and math.isnan(fixes[0].velocity_enu[0])


def test_epoch_without_date_is_dropped_and_counted():
    asm = NmeaFixAssembler()
    out = asm.feed(with_checksum('GPGGA,120000,4813.0535,N,00824.8697,E,1,9,1.0,700,M,47,M,,'))
    out += asm.flush()
    assert out == [] and asm.stats.dropped_epochs == 1


def test_receiver_without_time_reports_no_fix():
    fixes = list(iter_fixes(['$GPRMC,,V,,,,,,,,,,N*53']))
    assert len(fixes) == 1 and fixes[0].status is FixStatus.NO_FIX
    assert math.isnan(fixes[0].time) and math.isnan(fixes[0].lat)


def test_position_covariance_model():
    cov, kind = position_covariance(hdop=1.0, uere_m=4.0)
    assert kind is CovarianceType.APPROXIMATED
    assert cov == pytest.approx((8.0, 0, 0, 0, 8.0, 0, 0, 0, 64.0))   # no VDOP: up = 2·HDOP
    assert position_covariance()[1] is CovarianceType.UNKNOWN
    with pytest.raises(ValueError, match='uere_m'):
        NmeaFixAssembler(uere_m=0.0)


# --------------------------------------------------------------------------- issue 11 crashers

GGA_AT = 'GPGGA,{},5230.0000,N,00520.0000,E,1,08,1.0,10.0,M,40.0,M,,'


@pytest.mark.parametrize('year', ['99999', '9' * 30])
def test_zda_year_out_of_range_is_malformed_and_later_epochs_still_work(year):
    """A checksum-valid ZDA with year 99999 made every later GGA-only epoch raise."""
    asm = NmeaFixAssembler()
    lines = [with_checksum('GPZDA,120000.00,01,01,2024,,'),
             with_checksum(GGA_AT.format('120000.00')),
             with_checksum(GGA_AT.format('120001.00')),
             with_checksum(f'GPZDA,120001.00,01,01,{year},00,00'),
             with_checksum(GGA_AT.format('120002.00')),
             with_checksum(GGA_AT.format('120003.00'))]
    fixes = [f for line in lines for f in asm.feed(line)] + asm.flush()
    assert asm.stats.malformed == 1 and 'ZDA' in asm.stats.last_error
    assert [f.time for f in fixes] == [1704110400.0 + i for i in range(4)]


@pytest.mark.parametrize('body', [
    'GPZDA,120000.00,31,02,2024,,',          # 31 February
    'GPRMC,120000.00,A,5230.0000,N,00520.0000,E,0.0,0.0,310224,,,A',
])
def test_impossible_calendar_date_is_malformed(body):
    with pytest.raises(NmeaError, match='date'):
        parse_sentence(with_checksum(body))


@pytest.mark.parametrize('lines', [
    # RMC says A but has no latitude; no GGA to fill in.
    ['GPRMC,120000.00,A,,N,00520.0000,E,0.0,0.0,010124,,,A'],
    # GGA-only epoch, quality 1, empty position.
    ['GPZDA,115959.00,01,01,2024,,', 'GPGGA,115959.00,,,,,1,08,1.0,10.0,M,40.0,M,,',
     'GPGGA,120000.00,,,,,1,08,1.0,10.0,M,40.0,M,,'],
])
def test_valid_status_never_comes_with_a_nan_position(lines):
    fixes = list(iter_fixes([with_checksum(b) for b in lines]))
    assert fixes and all(f.status is FixStatus.NO_FIX for f in fixes)


@pytest.mark.parametrize('field', ['nan', 'inf', '-Infinity', '1e999', '1_0', ' 1'])
def test_non_finite_or_non_nmea_numbers_are_malformed(field):
    """float() reads 'nan', 'inf', '1e999' and '1_0': none of them is an NMEA number."""
    with pytest.raises(NmeaError):
        parse_sentence(with_checksum(f'GPGGA,120000.00,5230.0000,N,00520.0000,E,1,08,1.0,'
                                     f'{field},M,40.0,M,,'))
    with pytest.raises(NmeaError):
        parse_sentence(with_checksum(f'GPRMC,120000.00,A,5230.{field},N,00520.0000,E,0.0,0.0,'
                                     '010124,,,A'))


def test_non_ascii_sentence_is_malformed():
    """Digits from other scripts ('١٢٠٠٠٠', '²') pass str.isdigit() and int()."""
    body = 'GPGGA,١٢٠٠٠٠,5230.0000,N,00520.0000,E,1,08,1.0,10.0,M,40.0,M,,'
    with pytest.raises(NmeaError, match='ASCII'):   # the checksum the parser computes
        parse_sentence(f'${body}*{checksum(body):02X}')


def test_absurd_finite_errors_give_unknown_covariance_not_overflow():
    """GST std 1e308 m: float ** 2 raised OverflowError out of feed()."""
    big = '1' + '0' * 308   # finite; altitude + geoid separation is inf
    fixes = list(iter_fixes([
        with_checksum('GPRMC,120000.00,A,5230.0000,N,00520.0000,E,0.0,0.0,010124,,,A'),
        with_checksum(f'GPGST,120000.00,1.0,1.0,1.0,0.0,{big},{big},{big}'),
        with_checksum('GPRMC,120001.00,A,5230.0000,N,00520.0000,E,0.0,0.0,010124,,,A'),
        with_checksum(f'GPGGA,120001.00,5230.0000,N,00520.0000,E,1,08,{big},{big},M,{big},M,,'),
    ]))
    assert len(fixes) == 2
    assert all(f.covariance_type is CovarianceType.UNKNOWN for f in fixes)
    assert math.isnan(fixes[1].alt) and fixes[1].status is FixStatus.FIX
