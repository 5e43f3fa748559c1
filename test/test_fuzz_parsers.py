"""Every parser against arbitrary input: its own named error or a sane result, nothing else.

Property-based (hypothesis), bounded in examples and time. Inputs are both raw noise and
near-valid data (checksum-valid NMEA with random fields, UMAFall/SisFall rows with random
numbers and stamps, real H.264 access units with bytes flipped), because the crashers of
issue 11 all sat behind a valid checksum or a valid framing.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from functools import lru_cache

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bodycam_ros.core.dispatch import Assignment, DispatchError, parse_assignment
from bodycam_ros.core.h264 import EncoderError, H264Encoder, iter_nal_units
from bodycam_ros.core.imu_formats import ImuFormatError, load
from bodycam_ros.core.live import FragmentMuxer, LiveError, LiveStream, codec_string
from bodycam_ros.core.nmea import (FixStatus, NmeaError, NmeaFixAssembler, checksum,
                                   parse_sentence)
from bodycam_ros.core.tokens import TokenAuth

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- NMEA

def nmea(body: str) -> str:
    return f'${body}*{checksum(body):02X}'


NUM = st.one_of(
    st.sampled_from(['', '0', '00', '1', '-1', '+1', '.', '1.', '.5', '99999', '1' + '0' * 400,
                     'nan', 'inf', '-inf', '1e999', '1_0', ' 1', '²', '١٢', '0x1', '1e5']),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**30, 10**30).map(str),
    st.text(st.characters(codec='ascii', exclude_characters=',*$\r\n'), max_size=12))
TOD = st.one_of(NUM, st.builds(lambda h, m, s: f'{h:02d}{m:02d}{s:05.2f}', st.integers(0, 30),
                               st.integers(0, 70), st.floats(0, 70)))
DATE = st.one_of(NUM, st.builds(lambda d, m, y: f'{d:02d}{m:02d}{y:02d}', st.integers(0, 40),
                                st.integers(0, 15), st.integers(0, 99)))
LAT = st.one_of(NUM, st.builds(lambda d, m: f'{d:02d}{m:07.4f}', st.integers(0, 99),
                               st.floats(0, 70)))
LON = st.one_of(NUM, st.builds(lambda d, m: f'{d:03d}{m:07.4f}', st.integers(0, 999),
                               st.floats(0, 70)))
HEMI = st.sampled_from(['N', 'S', 'E', 'W', '', 'X', 'n'])


@st.composite
def sentences(draw) -> str:
    talker = draw(st.sampled_from(['GP', 'GN', 'GL', 'BD', 'P', 'XX', 'G']))
    kind = draw(st.sampled_from(['RMC', 'GGA', 'GSA', 'VTG', 'GST', 'ZDA', 'GSV', 'MTK']))
    if kind == 'RMC':
        f = [draw(TOD), draw(st.sampled_from(['A', 'V', '', 'X'])), draw(LAT), draw(HEMI),
             draw(LON), draw(HEMI), draw(NUM), draw(NUM), draw(DATE), '', '',
             draw(st.sampled_from(['A', 'D', 'N', 'R', '']))]
    elif kind == 'GGA':
        f = [draw(TOD), draw(LAT), draw(HEMI), draw(LON), draw(HEMI), draw(NUM), draw(NUM),
             draw(NUM), draw(NUM), 'M', draw(NUM), 'M', '', '']
    elif kind == 'ZDA':
        f = [draw(TOD), draw(NUM), draw(NUM), draw(NUM), '00', '00']
    else:
        f = draw(st.lists(NUM, max_size=18))
    cut = draw(st.integers(0, len(f)))
    if draw(st.booleans()):
        f = f[:cut]   # too few fields, sometimes
    return nmea(','.join([talker + kind, *f]))


LINES = st.one_of(sentences(), st.text(max_size=80),
                  st.binary(max_size=80).map(lambda b: b.decode('latin-1')))


@FAST
@given(line=LINES)
def test_parse_sentence_raises_only_nmea_error(line: str) -> None:
    try:
        parse_sentence(line)
    except NmeaError:
        pass


GOOD_RMC = 'GPRMC,{},A,5230.0000,N,00520.0000,E,0.0,0.0,010124,,,A'


@FAST
@given(lines=st.lists(st.one_of(sentences(), LINES,
                                st.integers(0, 86399).map(lambda s: nmea(GOOD_RMC.format(
                                    f'{s // 3600:02d}{s // 60 % 60:02d}{s % 60:02d}')))),
                      max_size=25),
       as_bytes=st.booleans())
def test_assembler_never_raises_and_every_fix_has_a_position(lines, as_bytes) -> None:
    asm = NmeaFixAssembler()
    fixes = []
    for line in lines:
        fixes += asm.feed(line.encode('utf-8', 'surrogatepass') if as_bytes else line)
    fixes += asm.flush()
    st_ = asm.stats
    assert st_.lines == len(lines) and st_.fixes == len(fixes)
    for f in fixes:
        if f.status is not FixStatus.NO_FIX:
            assert math.isfinite(f.lat) and abs(f.lat) <= 90, f
            assert math.isfinite(f.lon) and abs(f.lon) <= 180, f
            assert not (math.isinf(f.alt) or math.isinf(f.time)), f   # NaN: unknown
            assert all(math.isfinite(c) for c in f.covariance), f
        assert len(f.velocity_enu) == 3   # must not raise either


# --------------------------------------------------------------------------- IMU formats

STAMP = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                  st.sampled_from([0, 1, 96, 97, 100, 1e18, -1e18]))
VALUE = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                  st.sampled_from(['x', '', '1_0', '9' * 400]))


def uma_row(ts, value, stype, sid) -> str:
    return f'{ts};1;{value};{value};{value};{stype};{sid}'


@st.composite
def umafall_files(draw) -> str:
    """Accel and gyro streams with their own start, step (0: repeated stamps), sensor id and
    sometimes one corrupted stamp: the shapes that crashed the loader."""
    head = ['% Universidad de Malaga', '% Type of Movement: '
            + draw(st.sampled_from(['ADL', 'FALL', 'x'])), '% Description of the movement: t']
    rows = []
    for stype in (0, 1):
        n = draw(st.integers(0, 40))
        start = draw(st.sampled_from([0, 96, 5000, 1e12]) | STAMP)
        step = draw(st.sampled_from([50, 1, 0, 0.001, 1000]) | st.floats(0, 1e4))
        stamps = [start + step * k for k in range(n)]
        if stamps and draw(st.booleans()):
            stamps[draw(st.integers(0, n - 1))] = draw(STAMP)
        sid = draw(st.sampled_from([2, 2, 2, 1, 0, 7, 'nan']))
        rows += [uma_row(t, draw(VALUE), stype, sid) for t in stamps]
    rows += draw(st.lists(st.text(max_size=30), max_size=3))
    return '\n'.join(head + draw(st.permutations(rows)))


@st.composite
def sisfall_files(draw) -> str:
    rows = [','.join(str(draw(VALUE)) for _ in range(draw(st.sampled_from([9, 9, 9, 8, 10]))))
            + ';' for _ in range(draw(st.integers(0, 40)))]
    return '\n'.join(rows + draw(st.lists(st.text(max_size=30), max_size=3)))


@SLOW
@given(text=st.one_of(umafall_files(), sisfall_files(), st.text(max_size=300)),
       fmt=st.sampled_from(['auto', 'umafall', 'sisfall']),
       suffix=st.sampled_from(['.csv', '.txt', '.dat']))
def test_imu_loaders_raise_only_imu_format_error(text, fmt, suffix) -> None:
    fd, name = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8', errors='surrogatepass') as fh:
            fh.write(text)
        try:
            rec = load(name, fmt)
        except ImuFormatError:
            return
    finally:
        os.unlink(name)
    n = len(rec)
    assert n >= 1 and rec.t.shape == (n,) and rec.accel.shape == (n, 3)
    assert np.isfinite(rec.t).all() and (np.diff(rec.t) > 0).all()
    assert np.isfinite(rec.accel).all() and rec.rate_hz >= 1
    assert n <= 4 * 80 + 100    # never a made-up grid far beyond the samples given


# --------------------------------------------------------------------------- H.264 / fMP4

@lru_cache(maxsize=1)
def real_access_units() -> tuple[bytes, ...]:
    """Twelve access units from the camera's own encoder (keyframes 0 and 10)."""
    enc = H264Encoder(160, 120, 30, 200_000, 10)
    rng = np.random.default_rng(3)
    return tuple(enc.encode(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).data
                 for _ in range(12))


@st.composite
def mutated_units(draw) -> bytes:
    au = bytearray(draw(st.sampled_from(real_access_units())))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(au) - 1))
        op = draw(st.integers(0, 2))
        if op == 0:
            au[i] = draw(st.integers(0, 255))
        elif op == 1:
            del au[i:i + draw(st.integers(1, 64))]
        else:
            au[i:i] = draw(st.binary(max_size=16))
    return bytes(au)


ANNEXB = st.one_of(st.binary(max_size=200),
                   st.lists(st.binary(max_size=30), max_size=6).map(
                       lambda ns: b''.join(b'\x00\x00\x01' + n for n in ns)),
                   mutated_units())


@FAST
@given(data=ANNEXB)
def test_annexb_splitting_raises_only_encoder_error(data: bytes) -> None:
    try:
        nals = list(iter_nal_units(data))
    except EncoderError:
        return
    for n in nals:
        assert n.data and 0 <= n.type < 32 and n.data in data


@FAST
@given(sps=st.binary(max_size=12))
def test_codec_string_raises_only_live_error(sps: bytes) -> None:
    try:
        assert codec_string(sps).startswith('avc1.')
    except LiveError:
        pass


@SLOW
@given(units=st.lists(st.tuples(ANNEXB, st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 10))), max_size=8))
def test_muxer_raises_only_live_error_and_push_never_raises(units) -> None:
    real = real_access_units()
    mux, stream = FragmentMuxer(), LiveStream()
    try:
        for k, au in enumerate(real[:3]):          # start from a real, open stream
            mux.feed(au, k / 30)
            stream.push(au, k / 30)
        for au, stamp in units:
            try:
                mux.feed(au, stamp)
            except LiveError:
                pass
            stream.push(au, stamp)
        for k, au in enumerate(real[10:]):         # and the next good keyframe still plays
            stream.push(au, 100 + k / 30)
        assert stream.stats().frames_in == 3 + len(units) + 2
    finally:
        mux.close()
        stream.close()


# --------------------------------------------------------------------------- tokens, CAD body

AUTH = TokenAuth('t' * 32, clock=lambda: 1_700_000_000.0)
ANY_TEXT = st.one_of(st.text(max_size=60), st.sampled_from(['²', '9' * 5000, '\ud800', '1.2']),
                     st.integers(0, 10**14).map(str))


@FAST
@given(candidate=st.none() | ANY_TEXT, path=ANY_TEXT, exp=st.none() | ANY_TEXT,
       sig=st.none() | ANY_TEXT)
def test_token_checks_are_false_never_an_error(candidate, path, exp, sig) -> None:
    assert AUTH.check_token(candidate) is (candidate == 't' * 32)
    assert AUTH.check_signed(path, exp, sig) in (True, False)
    assert AUTH.check_cookie(None if exp is None else f'{exp}.{sig}') in (True, False)


def test_signed_url_round_trip_still_works() -> None:
    q = AUTH.sign('/', 60)
    assert AUTH.check_signed('/', q['exp'], q['sig'])
    assert not AUTH.check_signed('/x', q['exp'], q['sig'])


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-10**500, 10**500) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(['latitude', 'longitude', 'assignment_id', 'note', 'clear']) | st.text(),
        kids, max_size=5),
    max_leaves=12)


@FAST
@given(body=st.one_of(st.binary(max_size=300),
                      JSON.map(lambda v: json.dumps(v).encode()),
                      st.integers(1, 50_000).map(lambda n: b'[' * n + b']' * n)))
def test_parse_assignment_raises_only_dispatch_error(body: bytes) -> None:
    try:
        a = parse_assignment(body, now=0.0)
    except DispatchError:
        return
    assert isinstance(a, Assignment) and len(a.assignment_id) <= 128 and len(a.note) <= 512
    if not a.clear:
        assert abs(a.latitude) <= 90 and abs(a.longitude) <= 180
