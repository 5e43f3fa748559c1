"""Every HTTP handler against arbitrary requests: a reply, never a dropped connection.

The real servers (live view, CAD intake) run on loopback with an ephemeral port; requests are
raw bytes over a socket, so nothing in a client library tidies them up first. A request must
get a status line (4xx for what is wrong with it; 501/505 are http.server's own answers to an
unknown method or version, 503 is "no video yet" on /stream.mp4), no handler may end in an
exception (``handler_errors``), and the server must still answer a good request afterwards.
Even a request line with no or a bad HTTP version gets a status line (no HTTP/0.9 replies).
The crashers of issue 11 come first as fixed regression cases.
"""
from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bodycam_ros.core.dispatch import MAX_BODY, CadIntake
from bodycam_ros.core.live import LiveServer, LiveState, LiveStream
from bodycam_ros.core.tokens import TokenAuth

WEB = Path(__file__).resolve().parents[1] / 'src' / 'bodycam_ros' / 'web'
TOKEN = 'fuzz-token-0123456789abcdef'
ALLOWED_5XX = {501, 503, 505}
STATUS = re.compile(rb'HTTP/1\.[01] (\d{3}) ')
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def exchange(port: int, data: bytes, *, until_eof: bool, timeout_s: float = 10.0) -> bytes:
    """Send ``data``, close our side, return what comes back (the head, or all until EOF)."""
    with socket.create_connection(('127.0.0.1', port), timeout=timeout_s) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass   # the server answered and closed early: its reply is still readable
        buf = b''
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (until_eof or b'\r\n\r\n' not in buf):
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
        return buf


def status_of(reply: bytes) -> int | None:
    m = STATUS.match(reply)
    return int(m.group(1)) if m else None


def must_reply(data: bytes) -> bool:
    """Whether ``data`` is a request at all: nothing, or a blank first line, is not (the
    server closes quietly, as http.server does for an idle keep-alive connection)."""
    return bool(data.split(b'\n', 1)[0].decode('iso-8859-1').split())


def check_reply(data: bytes, reply: bytes) -> int | None:
    code = status_of(reply)
    if must_reply(data):
        assert code is not None, f'no reply to {data[:120]!r}: {reply[:120]!r}'
        assert code < 500 or code in ALLOWED_5XX, f'{code} for {data[:120]!r}'
    return code


# --------------------------------------------------------------------------- servers

@pytest.fixture(scope='module')
def live():
    lines: list[str] = []
    srv = LiveServer(LiveStream(), LiveState(unit='fuzz'), TokenAuth(TOKEN), WEB, port=0,
                     log=lines.append, first_frame_timeout_s=0.2)
    srv.start()
    srv.lines = lines
    yield srv
    srv.close()


@pytest.fixture(scope='module')
def cad():
    got: list = []
    # Plain http: this fuzzes the HTTP parser; TLS is tested in test_dispatch_tls.py.
    intake = CadIntake(TokenAuth(TOKEN), got.append, port=0, allow_insecure_http=True)
    intake.start()
    intake.got = got
    yield intake
    intake.close()


def live_healthy(srv: LiveServer) -> None:
    reply = exchange(srv.port, b'GET /api/state HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer '
                     + TOKEN.encode() + b'\r\nConnection: close\r\n\r\n', until_eof=True)
    assert status_of(reply) == 200 and b'"unit": "fuzz"' in reply
    assert srv.counters.get('handler_errors', 0) == 0, srv.lines[-5:]


def cad_healthy(intake: CadIntake) -> None:
    body = b'{"latitude": 52.1, "longitude": 5.2, "assignment_id": "ok"}'
    reply = exchange(intake.port, b'POST /dispatch HTTP/1.1\r\nHost: x\r\nAuthorization: '
                     b'Bearer ' + TOKEN.encode() + b'\r\nContent-Length: %d\r\n\r\n%b'
                     % (len(body), body), until_eof=True)
    assert status_of(reply) == 202, reply
    assert intake.handler_errors == 0


# --------------------------------------------------------------------------- regressions

@pytest.mark.parametrize('exp', ['%C2%B2', '9' * 5000, '%F0%9F%98%80', '-1', '1e9'])
def test_malformed_exp_is_401_not_a_dropped_connection(live, exp) -> None:
    """`?exp=%C2%B2` or 5000 digits: int() raised ValueError in tokens, the reply was lost."""
    for path in ('/', '/api/state'):
        reply = exchange(live.port, f'GET {path}?exp={exp}&sig=00 HTTP/1.1\r\nHost: x\r\n'
                         'Connection: close\r\n\r\n'.encode(), until_eof=True)
        assert status_of(reply) == 401, reply[:200]
    cookie = f'Cookie: bodycam_live={exp}.00\r\n'
    reply = exchange(live.port, f'GET /api/state HTTP/1.1\r\nHost: x\r\n{cookie}'
                     'Connection: close\r\n\r\n'.encode(), until_eof=True)
    assert status_of(reply) == 401
    live_healthy(live)


def test_unparseable_request_target_is_400(live) -> None:
    """`GET http://[/ HTTP/1.1`: urlsplit raised ValueError (a broken IPv6 authority)."""
    reply = exchange(live.port, b'GET http://[/ HTTP/1.1\r\nHost: x\r\n\r\n', until_eof=True)
    assert status_of(reply) == 400
    live_healthy(live)


def _cad_post(intake: CadIntake, body: bytes, *, length: str | None = None,
              extra: str = '') -> tuple[int | None, dict | None]:
    head = (f'POST /dispatch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n'
            f'Content-Length: {len(body) if length is None else length}\r\n{extra}\r\n')
    reply = exchange(intake.port, head.encode() + body, until_eof=True)
    _, _, payload = reply.partition(b'\r\n\r\n')
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = None
    return status_of(reply), doc


@pytest.mark.parametrize('body,code,needle', [
    (b'{"latitude": 1' + b'0' * 400 + b', "longitude": 5}', 400, 'latitude'),
    (b'{"latitude": 52, "longitude": -' + b'9' * 400 + b'}', 400, 'longitude'),
    (b'[' * 100_000 + b']' * 100_000, 413, 'larger'),
    (b'{"a":' * 5000 + b'1' + b'}' * 5000, 400, 'nested'),
    (b'[' * 30_000, 400, 'nested'),
    (b'{"latitude": 52, "longitude": 5, "note": ' + b'[' * 900 + b']' * 900 + b'}', 400,
     'note'),
])
def test_cad_bad_bodies_get_a_json_error(cad, body, code, needle) -> None:
    """400-digit latitude (OverflowError), deep nesting (RecursionError): was no reply."""
    got, doc = _cad_post(cad, body)
    assert got == code and doc is not None and needle in doc['error'], (got, doc)
    cad_healthy(cad)


@pytest.mark.parametrize('length,code', [('-1', 400), ('+12', 400), ('1_0', 400),
                                         ('abc', 400), (str(MAX_BODY + 1), 413),
                                         ('9' * 40, 413), ('500', 400)])
def test_cad_bad_content_length_gets_a_json_error(cad, length, code) -> None:
    """`Content-Length: -1` read to EOF past the 64 KiB cap and dropped the connection."""
    body = b'{"latitude": 52.1, "longitude": 5.2}' + b' ' * 70_000
    got, doc = _cad_post(cad, body[:200], length=length)
    assert got == code and doc is not None and 'error' in doc, (got, doc)
    cad_healthy(cad)


def test_cad_chunked_body_is_411(cad) -> None:
    got, doc = _cad_post(cad, b'5\r\nhello\r\n0\r\n\r\n', length='0',
                         extra='Transfer-Encoding: chunked\r\n')
    assert got == 411 and doc is not None
    cad_healthy(cad)


# --------------------------------------------------------------------------- properties

TEXT = st.text(st.characters(codec='latin-1', exclude_characters='\r\n'), max_size=40)
PIECE = st.sampled_from(['', '/', '//', '[', ']', '?', '&', '=', '%', '%C2%B2', '%ff', '#',
                         'exp=', 'sig=', 'token=', TOKEN, '9' * 20, '..', '\x00', ' ', '\t'])
PATHS = st.sampled_from(['/', '/index.html', '/app.js', '/api/state', '/healthz', '/events',
                         '/mjpeg', '/stream.mp4', '/dispatch', '/nope', '//[', '*',
                         'http://h/dispatch', 'http://[', 'https://[::1]:x/'])
TARGET = st.builds(lambda p, rest: p + ''.join(rest), PATHS, st.lists(PIECE | TEXT, max_size=6))
METHOD = st.sampled_from(['GET', 'POST', 'DELETE', 'HEAD', 'PUT', 'OPTIONS', 'get', 'G\x00T'])
VERSION = st.sampled_from(['HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/1.1.1', 'HTTX/1.1',
                           'HTTP/01.1', 'HTTP/1.' + '9' * 30])
HEADER = st.one_of(
    st.builds('Authorization: {}'.format,
              st.sampled_from([f'Bearer {TOKEN}', 'Bearer', 'bearer  x', 'Basic Zm9v', ''])
              | TEXT),
    st.builds('Content-Length: {}'.format,
              st.sampled_from(['0', '-1', '10', '65537', '9' * 400, ' 5 ', '+1', '0x10'])
              | TEXT),
    st.builds('Cookie: {}'.format, st.sampled_from(
        ['bodycam_live=1.2', 'bodycam_live=²', 'bodycam_live="', '=;=;', 'a=b; c']) | TEXT),
    st.just('Transfer-Encoding: chunked'), st.just('Connection: close'),
    st.just('Expect: 100-continue'),
    st.builds('{}: {}'.format, TEXT, TEXT))
JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(min_value=-10**500,
                                                          max_value=10**500) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(['latitude', 'longitude', 'assignment_id', 'note', 'clear']) | st.text(),
        kids, max_size=5),
    max_leaves=12)
BODY = st.one_of(st.binary(max_size=300),
                 JSON.map(lambda v: json.dumps(v, allow_nan=True).encode()),
                 st.integers(1, 3000).map(lambda n: b'[' * n + b']' * n))


@st.composite
def requests(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=400))   # not HTTP at all
    line = f'{draw(METHOD)} {draw(TARGET)} {draw(VERSION)}'
    headers = draw(st.lists(HEADER, max_size=5))
    head = '\r\n'.join([line, 'Host: x', *headers]) + '\r\n\r\n'
    return head.encode('latin-1') + draw(BODY)


@FUZZ
@given(data=requests())
def test_live_view_server_answers_anything(live, data: bytes) -> None:
    check_reply(data, exchange(live.port, data, until_eof=False))
    assert live.counters.get('handler_errors', 0) == 0, (data[:200], live.lines[-3:])
    # (the counters are for the whole module: any error fails every later example too)


@FUZZ
@given(data=requests())
def test_cad_intake_answers_anything(cad, data: bytes) -> None:
    reply = exchange(cad.port, data, until_eof=True)
    code = check_reply(data, reply)
    assert cad.handler_errors == 0, data[:200]
    if code is not None and code >= 400 and not reply.startswith(b'HTTP/1.0'):
        # Our own errors carry a JSON reason; http.server's (400 bad request line) are HTML.
        head, _, payload = reply.partition(b'\r\n\r\n')
        if b'application/json' in head:
            assert 'error' in json.loads(payload)


@FUZZ
@given(body=BODY)
def test_cad_intake_any_body_with_a_valid_token(cad, body: bytes) -> None:
    code, doc = _cad_post(cad, body)
    assert code in (202, 400, 413) and doc is not None, (code, body[:200])
    assert cad.handler_errors == 0
    if code == 202:
        a = cad.got[-1]
        assert a.clear or (abs(a.latitude) <= 90 and abs(a.longitude) <= 180)


def test_servers_still_serve_after_the_fuzz(live, cad) -> None:
    live_healthy(live)
    cad_healthy(cad)
