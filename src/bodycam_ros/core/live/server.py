"""The live view HTTP(S) server: the admin page, fMP4 and MJPEG streams, state events.

Standard library only (``ThreadingHTTPServer``): one thread per client, so a slow client
blocks nobody but itself; its video queue is bounded by :class:`~.hub.Viewer`. Every path but
``/healthz`` needs a credential (see :mod:`bodycam_ros.core.tokens`), otherwise 401. Access
log lines never include a query string or a header.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bodycam_ros.core.live.fmp4 import LiveError
from bodycam_ros.core.live.hub import LiveStream, ViewerClosed
from bodycam_ros.core.live.state import LatestJpeg, LiveState
from bodycam_ros.core.tokens import COOKIE, TokenAuth

__all__ = ['LiveServer', 'redact']

STATIC = {'/': ('index.html', 'text/html; charset=utf-8'),
          '/index.html': ('index.html', 'text/html; charset=utf-8'),
          '/app.js': ('app.js', 'text/javascript; charset=utf-8'),
          '/style.css': ('style.css', 'text/css; charset=utf-8')}
SNDBUF_BYTES = 256 * 1024
#: A refused client is audited at most once per this many seconds.
DENIED_AUDIT_S = 60.0
_SECRET_RE = re.compile(r'((?:token|sig|access_token)=)[^&\s\'"]*', re.I)


def redact(text: str) -> str:
    """Blank out credential values in a string that may reach a log."""
    return _SECRET_RE.sub(r'\1***', text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 32

    def __init__(self, addr, handler, app: LiveServer) -> None:
        self.address_family = socket.AF_INET6 if ':' in addr[0] else socket.AF_INET
        self.app = app
        super().__init__(addr, handler)

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up or fails the TLS handshake is routine, not a traceback; any
        # other exception is a handler bug that cost a client its reply: count it apart.
        exc = sys.exc_info()[1]
        self.app.count('client_errors' if isinstance(exc, OSError) else 'handler_errors')
        if not isinstance(exc, OSError):
            self.app.log(f'handler error for {client_address[0]}: {type(exc).__name__}')


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'bodycam-live'
    # Nobody speaks HTTP/0.9: with this default every reply, a 400 for a request line with
    # no or a bad version included, starts with a status line.
    default_request_version = 'HTTP/1.0'
    sys_version = ''
    timeout = 30.0   # a client that stops reading for this long is cut off
    server: _Server

    credential: dict[str, str] | None = None   # set by _authorized

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()   # in this client's thread, not the accept loop
        super().setup()

    # ------------------------------------------------------------------ logging (redacted)
    def log_request(self, code='-', size='-') -> None:  # noqa: D102
        path = _target_path(self.path) if hasattr(self, 'path') else '-'
        self.server.app.log(f'{self.client_address[0]} {getattr(self, "command", "-")} {path} '
                            f'{int(code) if str(code).isdigit() else code}')

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        self.server.app.log(redact(format % args))

    # ------------------------------------------------------------------ auth
    def _authorized(self, url_path: str, query: dict[str, list[str]]) -> tuple[bool, bool]:
        """(authorized, via_query): a query credential earns a cookie and a clean redirect.

        Sets :attr:`credential` to which credential it was (kind and a SHA-256 fingerprint,
        never the secret) for the audit log."""
        auth: TokenAuth = self.server.app.auth
        header = self.headers.get('Authorization', '')
        if header[:7].lower() == 'bearer ' and auth.check_token(header[7:].strip()):
            self.credential = _credential('bearer', header[7:].strip())
            return True, False
        if auth.check_token(_one(query, 'token')):
            self.credential = _credential('token_query', _one(query, 'token') or '')
            return True, True
        if auth.check_signed(url_path, _one(query, 'exp'), _one(query, 'sig')):
            self.credential = _credential('signed_url', _one(query, 'sig') or '')
            return True, True
        raw = self.headers.get('Cookie')
        if raw:
            try:
                jar = SimpleCookie(raw)
            except CookieError:
                jar = SimpleCookie()
            if COOKIE in jar and auth.check_cookie(jar[COOKIE].value):
                self.credential = _credential('session_cookie', jar[COOKIE].value)
                return True, False
        return False, False

    def do_GET(self) -> None:  # noqa: N802
        app = self.server.app
        try:
            url = urlsplit(self.path)
        except ValueError:   # '//[' : urlsplit reads an authority with a broken IPv6 host
            return self._send(400, b'400 Bad Request: unparseable request target\n',
                              'text/plain', {'Connection': 'close'})
        if url.path == '/healthz':
            return self._send(200, b'ok\n', 'text/plain')
        query = parse_qs(url.query)
        ok, via_query = self._authorized(url.path, query)
        if not ok:
            app.count('unauthorized')
            app.session_event('live_view_denied', client=self.client_address[0],
                              path=url.path[:200])
            return self._send(401, b'401 Unauthorized: a valid token is required\n',
                              'text/plain', {'WWW-Authenticate': 'Bearer realm="bodycam"'})
        if via_query and url.path in ('/', '/index.html'):
            # Swap the URL credential for an HttpOnly cookie and drop it from the address bar.
            cookie = (f'{COOKIE}={app.auth.session_cookie(app.session_ttl_s)}; Path=/; '
                      f'Max-Age={int(app.session_ttl_s)}; HttpOnly; SameSite=Strict')
            if app.tls:
                cookie += '; Secure'
            return self._send(303, b'', 'text/plain', {'Location': '/', 'Set-Cookie': cookie})
        if url.path in STATIC:
            name, ctype = STATIC[url.path]
            try:
                body = (app.web_dir / name).read_bytes()
            except OSError:
                return self._send(500, b'page missing\n', 'text/plain')
            return self._send(200, body, ctype)
        if url.path == '/api/state':
            return self._send(200, json.dumps(app.state.snapshot()).encode(), 'application/json')
        if url.path == '/stream.mp4':
            return self._stream_mp4()
        if url.path == '/events':
            return self._events()
        if url.path == '/mjpeg':
            return self._mjpeg()
        return self._send(404, b'not found\n', 'text/plain')

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(405, b'', 'text/plain')

    # ------------------------------------------------------------------ responses
    def _send(self, code: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Cache-Control', 'no-store')
        self.send_header('X-Content-Type-Options', 'nosniff')
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and self.command != 'HEAD':
            self.wfile.write(body)

    def _start_chunked(self, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header('Content-Type', ctype)
        self.send_header('Transfer-Encoding', 'chunked')
        self.send_header('Cache-Control', 'no-store')
        self.send_header('X-Content-Type-Options', 'nosniff')
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b'%x\r\n%b\r\n' % (len(data), data))
            self.wfile.flush()

    def _end_chunks(self) -> None:
        try:
            self.wfile.write(b'0\r\n\r\n')
        except OSError:
            pass   # client already gone

    def _stream_mp4(self) -> None:
        app = self.server.app
        try:
            viewer = app.stream.subscribe(timeout_s=app.first_frame_timeout_s)
        except LiveError as exc:
            return self._send(503, f'{exc}\n'.encode(), 'text/plain', {'Retry-After': '2'})
        session = app.session_start('mp4', self.client_address[0], self.credential)
        sent = 0
        try:
            # Little kernel buffering: a viewer that stops reading shows up in its own
            # bounded queue within ~1 s instead of hiding seconds of video in the socket.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
            self._start_chunked('video/mp4', {'X-Codec': viewer.codec})
            self._chunk(viewer.init_segment)
            while not app.stopping.is_set():
                frags = viewer.take(timeout_s=1.0)
                data = b''.join(f.data for f in frags)
                self._chunk(data)
                sent += len(data)
        except ViewerClosed:
            self._end_chunks()
        except OSError:
            pass   # the viewer went away; its thread simply ends
        finally:
            app.stream.unsubscribe(viewer)
            app.session_stop(session, sent)

    def _events(self) -> None:
        app = self.server.app
        self._start_chunked('text/event-stream')
        version = -1
        try:
            while not app.stopping.is_set():
                new = app.state.wait_change(version, timeout_s=1.0)
                snap = app.state.snapshot()
                snap['live'] = app.live_info()
                self._chunk(b'data: ' + json.dumps(snap).encode() + b'\n\n')
                version = new
        except OSError:
            pass

    def _mjpeg(self) -> None:
        app = self.server.app
        boundary = 'bodycamframe'
        self._start_chunked(f'multipart/x-mixed-replace; boundary={boundary}')
        seq = sent = 0
        app.jpeg.viewers += 1
        session = app.session_start('mjpeg', self.client_address[0], self.credential)
        try:
            while not app.stopping.is_set():
                seq, jpeg = app.jpeg.wait_newer(seq, timeout_s=1.0)
                if jpeg is not None:
                    self._chunk(f'--{boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: '
                                f'{len(jpeg)}\r\n\r\n'.encode() + jpeg + b'\r\n')
                    sent += len(jpeg)
        except OSError:
            pass
        finally:
            app.jpeg.viewers -= 1
            app.session_stop(session, sent)


def _credential(kind: str, value: str) -> dict[str, str]:
    """Which credential opened a session: its kind and a fingerprint, never the secret."""
    return {'credential': kind,
            'credential_sha256': hashlib.sha256(value.encode('utf-8', 'replace')).hexdigest()[:16]}


def _target_path(target: str) -> str:
    """The path of a request target for the log, without query (and never an error)."""
    try:
        return urlsplit(target).path
    except ValueError:
        return target.split('?', 1)[0][:200]


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


class LiveServer:
    """Serves one unit's live view on ``bind:port`` (``port`` 0 picks a free one).

    Args:
        tls_cert, tls_key: PEM files; both set means HTTPS.
        log: receives redacted access-log lines.
    """

    def __init__(self, stream: LiveStream, state: LiveState, auth: TokenAuth, web_dir: Path, *,
                 bind: str = '127.0.0.1', port: int = 8080, tls_cert: str = '',
                 tls_key: str = '', jpeg: LatestJpeg | None = None,
                 log: Callable[[str], None] = lambda _line: None,
                 session_ttl_s: float = 12 * 3600.0, first_frame_timeout_s: float = 5.0,
                 on_session: Callable[..., None] | None = None) -> None:
        if bool(tls_cert) != bool(tls_key):
            raise LiveError('TLS needs both a certificate and a key file')
        self.stream, self.state, self.auth, self.web_dir = stream, state, auth, Path(web_dir)
        self.jpeg = jpeg or LatestJpeg()
        self.log, self.session_ttl_s = log, session_ttl_s
        self.first_frame_timeout_s = first_frame_timeout_s
        self.stopping = threading.Event()
        self.counters: dict[str, int] = {}
        #: ``on_session(action, **details)``: live_view_start/stop/denied for the audit log.
        self._on_session = on_session
        self._session_ids = itertools.count(1)
        self._denied_at: dict[str, float] = {}
        self.tls = bool(tls_cert)
        try:
            self._httpd = _Server((bind, port), _Handler, self)
        except OSError as exc:
            raise LiveError(f'cannot listen on {bind}:{port}: {exc.strerror}') from exc
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ctx.load_cert_chain(tls_cert, tls_key)
            except (OSError, ssl.SSLError) as exc:
                self._httpd.server_close()
                raise LiveError(f'cannot load TLS certificate/key: {exc}') from exc
            # Handshake in the client's own thread, not in the accept loop.
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.port = self._httpd.server_address[1]
        self.bind = bind
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={'poll_interval': 0.2}, name='live-http',
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    # ------------------------------------------------------------------ audit hooks
    def session_event(self, action: str, **details: object) -> None:
        """Report one session event; a failing hook never costs a viewer its reply.
        Refusals are reported at most once a minute per client, so a scan cannot flood
        the audit log."""
        if self._on_session is None:
            return
        if action == 'live_view_denied':
            client, now = str(details.get('client')), time.monotonic()
            if now - self._denied_at.get(client, -1e9) < DENIED_AUDIT_S:
                return
            self._denied_at[client] = now
        try:
            self._on_session(action, **details)
        except Exception as exc:  # noqa: BLE001 - reported, the stream goes on
            self.count('audit_errors')
            self.log(f'audit hook failed: {exc!r}')

    def session_start(self, kind: str, client: str,
                      credential: dict[str, str] | None) -> dict[str, object]:
        session = {'session_id': f'{next(self._session_ids)}', 'stream': kind,
                   'client': client, **(credential or {}), '_t0': time.monotonic()}
        self.session_event('live_view_start',
                           **{k: v for k, v in session.items() if not k.startswith('_')})
        return session

    def session_stop(self, session: dict[str, object], sent_bytes: int) -> None:
        self.session_event('live_view_stop', session_id=session['session_id'],
                           stream=session['stream'], client=session['client'],
                           credential=session.get('credential', ''),
                           duration_s=round(time.monotonic() - float(session['_t0']), 3),
                           bytes=sent_bytes)

    def live_info(self) -> dict[str, object]:
        s = self.stream.stats()
        return {'viewers': s.viewers, 'frames': s.frames_in, 'resyncs': s.viewer_resyncs}

    def close(self) -> None:
        """Stop accepting, end every stream, and wait for the accept loop."""
        self.stopping.set()
        self.stream.close()
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
