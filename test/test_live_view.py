"""Live view core and node: fMP4 remux, viewer queues, tokens, HTTP auth, TLS, log hygiene."""
from __future__ import annotations

import http.client
import io
import json
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

from bodycam_ros.core.h264 import H264Encoder
from bodycam_ros.core.live import (Alert, Fragment, FragmentMuxer, LiveError, LiveServer,
                                   LiveState, LiveStream, Viewer, ViewerClosed,
                                   codec_string)
from bodycam_ros.core.live.fmp4 import split_boxes
from bodycam_ros.core.tokens import (ENV_TOKEN, TokenAuth, TokenError, live_view_url,
                                     live_view_url_from_config, load_token)
from bodycam_ros.drivers.camera import TestPatternSource, decode_frame_counter

WEB = Path(__file__).resolve().parents[1] / 'src' / 'bodycam_ros' / 'web'
TOKEN = 'test-token-0123456789abcdef'


def encode_pattern(n: int, width: int = 320, height: int = 240, fps: int = 30, gop: int = 10,
                   first: int = 0) -> list[tuple[bytes, float, bool, int]]:
    """(annexb, stamp, keyframe, counter) for n test-pattern frames, as the camera makes them."""
    src = TestPatternSource(width, height, fps)
    enc = H264Encoder(width, height, fps, 500_000, gop)
    out = []
    for i in range(first, first + n):
        au = enc.encode(src.render(i, 1000.0 + i / fps))
        out.append((au.data, 1000.0 + i / fps, au.is_keyframe, i))
    return out


def decode_all(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data), format='mp4') as c:
        return [f.to_ndarray(format='bgr24') for f in c.decode(video=0)]


# --------------------------------------------------------------------------- fMP4 muxer

def test_muxer_remuxes_every_frame_without_reencoding() -> None:
    frames = encode_pattern(45)
    mux = FragmentMuxer()
    frags: list[Fragment] = []
    for data, stamp, _key, _ in frames:
        frags += mux.feed(data, stamp)
    assert mux.init_segment is not None and mux.init_segment[4:8] == b'ftyp'
    assert mux.codec is not None and mux.codec.startswith('avc1.')
    # One fragment per frame, emitted when the next frame arrives (the last is still held).
    assert [f.seq for f in frags] == list(range(44))
    assert [f.keyframe for f in frags] == [k for _, _, k, _ in frames[:44]]
    assert all(f.data[4:8] == b'moof' for f in frags)
    decoded = decode_all(mux.init_segment + b''.join(f.data for f in frags))
    assert [decode_frame_counter(f) for f in decoded] == list(range(44))
    # The mdat carries the camera's own slices: no re-encode.
    assert frames[1][0].split(b'\x00\x00\x01')[-1][:64] in frags[1].data


def test_late_joiner_starts_at_a_keyframe_and_ffprobe_accepts_it(tmp_path: Path) -> None:
    frames = encode_pattern(40)
    stream = LiveStream()
    for data, stamp, _, _ in frames[:13]:
        stream.push(data, stamp)
    viewer = stream.subscribe(timeout_s=0.1)
    for data, stamp, _, _ in frames[13:]:
        stream.push(data, stamp)
    got = viewer.take(0.1)
    assert got[0].keyframe and got[0].stamp == frames[20][1], 'must start at the next keyframe'
    clip = tmp_path / 'late.mp4'
    clip.write_bytes(viewer.init_segment + b''.join(f.data for f in got))
    probe = subprocess.run(['ffprobe', '-v', 'error', '-count_frames', '-select_streams', 'v:0',
                            '-show_entries', 'stream=codec_name,width,height,nb_read_frames',
                            '-of', 'json', str(clip)], capture_output=True, text=True, check=True)
    s = json.loads(probe.stdout)['streams'][0]
    assert (s['codec_name'], s['width'], s['height']) == ('h264', 320, 240)
    assert int(s['nb_read_frames']) == len(got) == 19
    assert [decode_frame_counter(f) for f in decode_all(clip.read_bytes())] == list(range(20, 39))


def test_unwatched_stream_muxes_nothing_and_a_first_viewer_starts_at_once() -> None:
    """Issue 14: a live view nobody watches holds the current GOP instead of muxing; the
    first viewer gets its init segment without waiting for a keyframe, and muxing stops
    when the last viewer leaves. Bad input is still counted while unwatched."""
    frames = encode_pattern(40)
    stream = LiveStream()
    for data, stamp, _, _ in frames[:13]:
        stream.push(data, stamp)
    stream.push(b'\x12\x34not h264', frames[12][1])
    st = stream.stats()
    assert not stream.muxing and (st.frames_in, st.fragments_out, st.bad_frames) == (14, 0, 1)
    assert 'Annex B' in st.last_error
    t0 = time.monotonic()
    viewer = stream.subscribe(timeout_s=0.0)          # no wait: the held GOP opens the muxer
    assert time.monotonic() - t0 < 0.5 and stream.muxing
    for data, stamp, _, _ in frames[13:32]:
        stream.push(data, stamp)
    got = viewer.take(0.1)
    assert got[0].keyframe and got[0].stamp == frames[20][1]
    decoded = decode_all(viewer.init_segment + b''.join(f.data for f in got))
    assert [decode_frame_counter(f) for f in decoded] == list(range(20, 31))
    stream.unsubscribe(viewer)
    stream.push(frames[32][0], frames[32][1])
    assert not stream.muxing
    again = stream.subscribe(timeout_s=0.0)           # held GOP from frame 30 on
    assert again.init_segment == viewer.init_segment and again.generation == 0


def test_live_view_node_does_not_load_pyav_until_someone_watches() -> None:
    code = ('import sys; import bodycam_ros.nodes.live_view_node; '
            'print(sorted(m for m in ("av", "cv2") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == '[]', out


def test_muxer_skips_until_keyframe_and_rejects_garbage() -> None:
    frames = encode_pattern(12)
    mux = FragmentMuxer()
    assert mux.feed(frames[1][0], 1.0) == [] and mux.skipped == 1   # P-frame before any IDR
    with pytest.raises(LiveError, match='Annex B'):
        mux.feed(b'\x12\x34not h264', 2.0)
    assert codec_string(bytes([0x67, 0x42, 0xC0, 0x1F])) == 'avc1.42c01f'


def test_size_change_restarts_the_stream_and_disconnects_viewers() -> None:
    stream = LiveStream()
    for data, stamp, _, _ in encode_pattern(12):
        stream.push(data, stamp)
    viewer = stream.subscribe(timeout_s=0.1)
    for data, stamp, _, _ in encode_pattern(12, 640, 360, first=12):
        stream.push(data, stamp)
    assert stream.stats().restarts == 1
    with pytest.raises(ViewerClosed):
        viewer.take(0.1)
    again = stream.subscribe(timeout_s=0.1)
    assert again.generation == 1 and again.init_segment != viewer.init_segment


def test_slow_viewer_is_dropped_to_the_next_keyframe() -> None:
    frames = encode_pattern(90, gop=10)
    stream = LiveStream(max_queue_s=0.5)
    stream.push(frames[0][0], frames[0][1])
    stream.push(frames[1][0], frames[1][1])
    slow, fast = stream.subscribe(0.1), stream.subscribe(0.1)
    fast_got: list[Fragment] = []
    for data, stamp, _, _ in frames[2:]:
        stream.push(data, stamp)
        fast_got += fast.take(0)
    # The fast viewer saw every frame from its first keyframe on, in order.
    assert [f.seq for f in fast_got] == list(range(fast_got[0].seq, fast_got[0].seq +
                                                   len(fast_got)))
    assert fast_got[0].seq == 10 and len(fast_got) == 79   # frames 10..88 (89 still held)
    # The slow one never read: it holds at most ~max_queue_s, starting at a keyframe.
    got = slow.take(0)
    assert slow.resyncs >= 3
    assert len(got) <= 0.5 * 30 + 1 and (not got or got[0].keyframe)
    # Once it reads again it is live again, from a keyframe on.
    more = encode_pattern(30, gop=10, first=90)
    for data, stamp, _, _ in more:
        stream.push(data, stamp + 0.0)
    fast_more, slow_more = fast.take(0), slow.take(0)
    assert slow_more[-1].seq == fast_more[-1].seq
    assert (got or slow_more)[0].keyframe


def test_viewer_queue_is_bounded_in_bytes() -> None:
    v = Viewer(b'init', 'avc1.42c01f', 0, max_queue_s=100.0, max_queue_bytes=10_000)
    for i in range(100):
        v.offer(Fragment(b'x' * 1000, i % 10 == 0, i, float(i)))
    q = v.take(0)
    assert sum(len(f.data) for f in q) <= 10_000 and q[0].keyframe and v.resyncs >= 1


# --------------------------------------------------------------------------- tokens

def test_token_sources_and_default_file_is_private(tmp_path: Path) -> None:
    env = {'ROS_HOME': str(tmp_path / 'ros')}
    tok = load_token('', env)
    path = tmp_path / 'ros' / 'bodycam' / 'live_token'
    assert path.read_text().strip() == tok and len(tok) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_token('', env) == tok, 'second call reuses the file'
    assert load_token('', {**env, ENV_TOKEN: TOKEN}) == TOKEN
    f = tmp_path / 'tok'
    f.write_text('short\n')
    f.chmod(0o600)
    with pytest.raises(TokenError, match='shorter'):
        load_token(str(f), env)
    f.write_text(TOKEN)
    f.chmod(0o644)
    with pytest.raises(TokenError, match='chmod 600'):
        load_token(str(f), env)
    with pytest.raises(TokenError, match='cannot read'):
        load_token(str(tmp_path / 'missing'), env)


def test_signed_urls_and_cookies_expire() -> None:
    now = [1000.0]
    auth = TokenAuth(TOKEN, clock=lambda: now[0])
    q = auth.sign('/', 60)
    assert auth.check_signed('/', q['exp'], q['sig'])
    assert not auth.check_signed('/stream.mp4', q['exp'], q['sig']), 'bound to its path'
    assert not auth.check_signed('/', str(int(q['exp']) + 100), q['sig']), 'expiry is signed'
    assert not TokenAuth('another-token-0123456789').check_signed('/', q['exp'], q['sig'])
    cookie = auth.session_cookie(60)
    assert auth.check_cookie(cookie) and not auth.check_cookie(cookie[:-1] + 'x')
    now[0] += 61
    assert not auth.check_signed('/', q['exp'], q['sig']) and not auth.check_cookie(cookie)
    assert not auth.check_token('') and not auth.check_token(TOKEN[:-1]) and \
        auth.check_token(TOKEN)


def test_url_for_bodycam_run_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / 'unit.yaml'
    cfg.write_text('/**/live_view:\n  ros__parameters:\n    bind: 0.0.0.0\n    port: 8443\n'
                   '    tls_cert: /etc/cert.pem\n')
    env = {'ROS_HOME': str(tmp_path)}
    url = live_view_url_from_config(cfg, ttl_s=None, env=env)
    assert url == f'https://127.0.0.1:8443/?token={load_token("", env)}'
    signed = live_view_url_from_config(cfg, env=env)
    assert signed.startswith('https://127.0.0.1:8443/?exp=') and '&sig=' in signed
    assert live_view_url('::1', 80, TOKEN) == f'http://[::1]:80/?token={TOKEN}'


# --------------------------------------------------------------------------- HTTP server

@pytest.fixture
def server():
    stream, state = LiveStream(), LiveState(unit='unit_t')
    lines: list[str] = []
    srv = LiveServer(stream, state, TokenAuth(TOKEN), WEB, port=0, log=lines.append,
                     first_frame_timeout_s=1.0)
    srv.start()
    srv.lines = lines
    yield srv
    srv.close()


def _get(url: str, headers: dict[str, str] | None = None, ctx=None):
    req = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx),
                                         _NoRedirect())
    try:
        r = opener.open(req, timeout=5)
        return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


def test_every_path_needs_a_credential(server: LiveServer) -> None:
    base = f'http://127.0.0.1:{server.port}'
    for path in ('/', '/app.js', '/stream.mp4', '/events', '/api/state', '/mjpeg', '/nope'):
        code, headers, _ = _get(base + path)
        assert code == 401 and 'Bearer' in headers['WWW-Authenticate'], path
        assert _get(base + path, {'Authorization': 'Bearer wrong-token-0123456789'})[0] == 401
    assert _get(base + '/healthz')[0] == 200
    code, _, body = _get(base + '/api/state', {'Authorization': f'Bearer {TOKEN}'})
    assert code == 200 and json.loads(body)['unit'] == 'unit_t'


def test_query_credential_becomes_cookie_and_leaves_no_trace_in_logs(server) -> None:
    base = f'http://127.0.0.1:{server.port}'
    code, headers, _ = _get(f'{base}/?token={TOKEN}')
    assert code == 303 and headers['Location'] == '/'
    cookie = headers['Set-Cookie'].split(';')[0]
    assert 'HttpOnly' in headers['Set-Cookie'] and TOKEN not in cookie
    code, _, body = _get(base + '/', {'Cookie': cookie})
    assert code == 200 and b'<video' in body
    signed = TokenAuth(TOKEN).sign('/', 60)
    assert _get(f'{base}/?exp={signed["exp"]}&sig={signed["sig"]}')[0] == 303
    assert _get(f'{base}/?exp={signed["exp"]}&sig={"0" * 64}')[0] == 401
    # A malformed request line with the token in it is logged redacted too.
    with socket.create_connection(('127.0.0.1', server.port), timeout=5) as sock:
        sock.sendall(f'GET /?token={TOKEN} junk junk\r\n\r\n'.encode())
        assert b' 400 ' in sock.recv(1024)
    log = '\n'.join(server.lines)
    assert 'GET / 303' in log and signed['sig'] not in log and TOKEN not in log, log


def test_stream_needs_video_then_serves_init_and_fragments(server: LiveServer) -> None:
    base = f'http://127.0.0.1:{server.port}'
    auth = {'Authorization': f'Bearer {TOKEN}'}
    assert _get(base + '/stream.mp4', auth)[0] == 503   # no camera yet: says so, no hang
    frames = encode_pattern(60)
    for data, stamp, _, _ in frames[:5]:
        server.stream.push(data, stamp)
    conn = http.client.HTTPConnection('127.0.0.1', server.port, timeout=5)
    conn.request('GET', '/stream.mp4', headers=auth)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader('X-Codec') == server.stream.subscribe(0).codec
    for data, stamp, _, _ in frames[5:]:
        server.stream.push(data, stamp)
    buf, boxes = bytearray(), []
    while len(boxes) < 2 + 2 * 49:   # ftyp, moov, then moof + mdat per frame
        buf += resp.read1(65536)
        boxes += split_boxes(buf)
    conn.close()
    counters = [decode_frame_counter(f) for f in decode_all(b''.join(boxes))]
    assert counters == list(range(10, 59)), 'starts at the first keyframe after joining'


def test_https_with_certificate_from_parameters(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    srv = LiveServer(LiveStream(), LiveState(), TokenAuth(TOKEN), WEB, port=0,
                     tls_cert=str(cert), tls_key=str(key))
    srv.start()
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        code, headers, _ = _get(f'https://localhost:{srv.port}/?token={TOKEN}', ctx=ctx)
        assert code == 303 and 'Secure' in headers['Set-Cookie']
        assert _get(f'https://localhost:{srv.port}/', ctx=ctx)[0] == 401
        with pytest.raises(urllib.error.URLError, match='CERTIFICATE_VERIFY_FAILED'):
            _get(f'https://localhost:{srv.port}/healthz', ctx=ssl.create_default_context())
    finally:
        srv.close()
    with pytest.raises(LiveError, match='both'):
        LiveServer(LiveStream(), LiveState(), TokenAuth(TOKEN), WEB, port=0, tls_cert=str(cert))


def make_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (the test's own CA)."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'localhost')])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName('localhost')]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / 'cert.pem', tmp_path / 'key.pem'
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_state_snapshot_raises_the_banner_flag() -> None:
    state = LiveState(unit='u')
    v0 = state.version
    done = threading.Event()
    threading.Thread(target=lambda: (state.wait_change(v0, 5.0), done.set()), daemon=True).start()
    state.update(alert=Alert('a1', 'raised', 'off-7', 'u', 38.5, -121.5, time.time()))
    assert done.wait(2.0)
    snap = state.snapshot()
    assert snap['officer_down'] and snap['alert']['officer_id'] == 'off-7'
    state.update(alert=Alert('a1', 'cancelled', 'off-7', 'u', 38.5, -121.5, time.time()))
    assert not state.snapshot()['officer_down']


@pytest.mark.parametrize('args, needle', [
    (['-p', 'port:=70000'], 'port'),
    (['-p', 'tls_cert:=/nonexistent.pem'], 'tls_key'),
    (['-p', 'token_file:=/nonexistent-token'], 'token_file'),
])
def test_live_view_bad_parameters_exit_2(start_process, args, needle) -> None:
    p = start_process('bodycam_ros.nodes.live_view_node', '--ros-args', *args)
    assert p.proc.wait(30) == 2, p.output()
    assert needle in p.output()


# --------------------------------------------------------------------------- issue 11 crashers

def _with_sps(au: bytes, sps: bytes) -> bytes:
    """The access unit with its SPS NAL unit replaced by ``sps``."""
    parts = au.split(b'\x00\x00\x00\x01')
    return b'\x00\x00\x00\x01'.join(sps if p and p[0] & 0x1F == 7 else p for p in parts)


@pytest.mark.parametrize('sps', [b'\x67\x64\x00\x1f\xff\xff\xff\xff\xff', b'\x67\x42'])
def test_bad_sps_after_an_sps_change_is_dropped_and_the_stream_goes_on(sps) -> None:
    """Was: LiveError out of push(), i.e. out of the live_view node's camera callback."""
    stream = LiveStream()
    for data, stamp, _, _ in encode_pattern(12):
        stream.push(data, stamp)
    old = stream.subscribe(timeout_s=0.1)
    big = encode_pattern(25, 640, 360, first=12)
    stream.push(_with_sps(big[0][0], sps), big[0][1])      # damaged keyframe, new SPS
    st = stream.stats()
    assert (st.bad_frames, st.restarts) == (1, 1) and 'SPS' in st.last_error
    with pytest.raises(ViewerClosed):
        old.take(0.1)
    for data, stamp, _, _ in big[1:]:                       # P-frames, then keyframe 10
        stream.push(data, stamp)
    viewer = stream.subscribe(timeout_s=0.1)
    assert viewer.generation == 1
    for data, stamp, _, _ in encode_pattern(12, 640, 360, first=37):
        stream.push(data, stamp)
    frags = viewer.take(0.1)
    decoded = decode_all(viewer.init_segment + b''.join(f.data for f in frags))
    assert decoded and decoded[0].shape == (360, 640, 3)
    assert decode_frame_counter(decoded[0]) == 37
    assert stream.stats().bad_frames == 1


@pytest.mark.parametrize('stamp', [float('nan'), float('inf'), 1e300])
def test_unusable_capture_stamp_is_counted_not_raised(stamp) -> None:
    frames = encode_pattern(12)
    stream = LiveStream()
    for data, t, _, _ in frames[:11]:
        stream.push(data, t)
    stream.push(frames[11][0], stamp)
    assert stream.stats().bad_frames == 1 and 'stamp' in stream.stats().last_error
