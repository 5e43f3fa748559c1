"""The unit's side of dispatch: CAD assignments in, officer-down and incident events out,
and officer-down alerts shared between units.

- :class:`CadIntake` is the authenticated HTTPS endpoint the CAD side POSTs assignments to
  (plain HTTP only when ``allow_insecure_http`` is asked for); :func:`parse_assignment` turns
  a request body into an :class:`Assignment` or says why not. :func:`server_tls_context`
  loads a certificate; :func:`ensure_self_signed` makes one for a unit that has none, whose
  SHA-256 fingerprint a CAD client pins.
- :class:`EventPolicy` turns what the unit publishes (alerts, triggers, recorder status) into
  the events dispatch is sent, each with a stable id so a restart cannot send one twice.
- :class:`PeerAlerts` decides, for another unit's officer-down alert, how far away it is and
  whether this unit should start recording (``peer_trigger_radius_m``).
No ROS imports.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import json
import math
import os
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bodycam_ros.core.fsio import write_atomic
from bodycam_ros.core.geodesy import GeodesyError, distance_m
from bodycam_ros.core.tokens import TokenAuth

__all__ = ['EVENT_KINDS', 'Assignment', 'CadIntake', 'DispatchError', 'EventPolicy',
           'PeerAlert', 'PeerAlerts', 'PeerDecision', 'TlsIdentity', 'cert_fingerprint',
           'ensure_self_signed', 'parse_assignment', 'server_tls_context']

EVENT_KINDS = ('officer_down', 'weapon_drawn', 'incident_started', 'incident_sealed')
_NS = uuid.UUID('6f0c0f5e-7f44-4d0e-9a47-b0d1ca3e6a11')   # ids of derived events
MAX_BODY = 64 * 1024


class DispatchError(ValueError):
    """A CAD request or an alert that cannot be used; the message names the field."""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec='milliseconds') \
        .replace('+00:00', 'Z')


# --------------------------------------------------------------------------- CAD intake

@dataclass(frozen=True)
class Assignment:
    """A dispatch from CAD: go to (latitude, longitude); ``clear`` cancels the current one."""
    assignment_id: str
    latitude: float | None = None
    longitude: float | None = None
    clear: bool = False
    note: str = ''
    received_at: float = 0.0


def _coord(d: dict, key: str, limit: float) -> float:
    v = d.get(key)
    try:   # float(): a 400-digit JSON integer is an int that no float holds (OverflowError)
        f = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
    except OverflowError:
        f = math.nan
    if not math.isfinite(f) or abs(f) > limit:
        shown = repr(v) if not isinstance(v, int) else f'an integer of {len(str(v))} digits'
        raise DispatchError(f'{key} must be a number in [-{limit:g}, {limit:g}], '
                            f'got {shown[:40]}')
    return f


def parse_assignment(body: bytes, now: float | None = None) -> Assignment:
    """Parse a CAD JSON body: ``{"latitude", "longitude", "assignment_id"?, "note"?}`` or
    ``{"clear": true}``.

    Raises:
        DispatchError: not JSON, not an object, or a field out of range.
    """
    if len(body) > MAX_BODY:
        raise DispatchError(f'body of {len(body)} bytes exceeds {MAX_BODY}')
    try:
        d = json.loads(body or b'{}')
    except ValueError as exc:
        raise DispatchError(f'body is not JSON: {exc}') from exc
    except RecursionError:
        raise DispatchError('body is nested too deeply') from None
    if not isinstance(d, dict):
        raise DispatchError('body must be a JSON object')
    aid = d.get('assignment_id', '')
    if isinstance(aid, bool) or not isinstance(aid, (str, int)) or len(str(aid)) > 128:
        raise DispatchError('assignment_id must be a string of at most 128 characters')
    aid = str(aid) or str(uuid.uuid4())
    note = d.get('note', '')
    if not isinstance(note, (str, int, float)) or isinstance(note, bool):
        raise DispatchError('note must be a string')
    note = str(note)[:512]
    t = time.time() if now is None else now
    if d.get('clear') is True:
        return Assignment(aid, clear=True, note=note, received_at=t)
    return Assignment(aid, _coord(d, 'latitude', 90.0), _coord(d, 'longitude', 180.0),
                      note=note, received_at=t)


# --------------------------------------------------------------------------- TLS

#: Names of the certificate and key :func:`ensure_self_signed` keeps in its directory.
SELF_SIGNED_CERT, SELF_SIGNED_KEY = 'cad_cert.pem', 'cad_key.pem'
#: A generated certificate is renewed this long before it expires (its pin changes then).
RENEW_BEFORE_S = 30 * 86400.0
SELF_SIGNED_DAYS = 3650   # a pinned certificate: its lifetime is the pin's, not a CA's policy


@dataclass(frozen=True)
class TlsIdentity:
    """A certificate and its key on disk, and the SHA-256 fingerprint a client pins."""
    cert_file: Path
    key_file: Path
    sha256: str          # 'AB:CD:...' of the DER certificate, as `openssl x509 -fingerprint`
    created: bool = False


def _check_key_mode(path: Path) -> None:
    """A private key readable by group or others is refused, as a token file is."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise DispatchError(f'TLS key file {path}: {exc.strerror}') from exc
    if mode & 0o077:
        raise DispatchError(f'TLS key file {path} is readable by group/others '
                            f'(mode {mode & 0o777:o}); chmod 600 it')


def cert_fingerprint(pem: bytes) -> str:
    """SHA-256 of the first certificate in ``pem`` (DER), colon-separated upper-case hex."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode('ascii', 'replace'))
    except ValueError as exc:
        raise DispatchError(f'not a PEM certificate: {exc}') from exc
    return ':'.join(f'{b:02X}' for b in hashlib.sha256(der).digest())


def server_tls_context(cert_file: str | os.PathLike[str],
                       key_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server context for ``cert_file``/``key_file`` (PEM): TLS 1.2 and later only.

    Raises:
        DispatchError: a file is missing or unreadable, the key is readable by others, or the
            key does not belong to the certificate.
    """
    _check_key_mode(Path(key_file))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise DispatchError(f'cannot load TLS certificate {cert_file} with key {key_file}: '
                            f'{exc}') from exc
    return ctx


def ensure_self_signed(directory: str | os.PathLike[str], hosts: Iterable[str],
                       now: float) -> TlsIdentity:
    """The self-signed CAD certificate in ``directory`` (0700; key 0600), made if missing.

    An existing pair is reused, so its pin survives restarts; one expiring within
    :data:`RENEW_BEFORE_S` of ``now`` is replaced (``created``: the pin changed). ``hosts``
    (names or IP addresses) go into subjectAltName.

    Raises:
        DispatchError: the directory is unusable, the key is readable by others, or the
            certificate there does not parse.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = Path(directory)
    cert_path, key_path = d / SELF_SIGNED_CERT, d / SELF_SIGNED_KEY
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        if cert_path.exists() and key_path.exists():
            _check_key_mode(key_path)
            pem = cert_path.read_bytes()
            try:
                cert = x509.load_pem_x509_certificate(pem)
            except ValueError as exc:
                raise DispatchError(f'certificate {cert_path} does not parse: {exc}; '
                                    'remove it to make a new one') from exc
            if cert.not_valid_after_utc.timestamp() - now > RENEW_BEFORE_S:
                return TlsIdentity(cert_path, key_path, cert_fingerprint(pem))
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for h in dict.fromkeys(hosts):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'bodycam CAD intake')])
        t0 = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(t0 - _dt.timedelta(minutes=5))
                .not_valid_after(t0 + _dt.timedelta(days=SELF_SIGNED_DAYS))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(key, hashes.SHA256()))
        pem = cert.public_bytes(serialization.Encoding.PEM)
        # Key first: a reader that sees the new certificate always finds its key.
        write_atomic(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), mode=0o600)
        write_atomic(cert_path, pem, mode=0o644)
    except OSError as exc:
        raise DispatchError(f'TLS directory {d}: {exc}') from exc
    return TlsIdentity(cert_path, key_path, cert_fingerprint(pem), created=True)


class _CadHandler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'bodycam-dispatch'
    # Nobody speaks HTTP/0.9: with this default every reply, a 400 for a request line with
    # no or a bad version included, starts with a status line.
    default_request_version = 'HTTP/1.0'
    sys_version = ''
    timeout = 10.0
    server: _CadServer

    def log_request(self, code='-', size='-') -> None:
        # A 400 for a bad request line is sent before command and path exist.
        path = getattr(self, 'path', '-').split('?')[0][:200]
        self.server.intake.log(f'{self.client_address[0]} {getattr(self, "command", "-")} '
                               f'{path} {code}')

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass   # request lines may carry credentials; log_request covers what matters

    def _reply(self, code: int, doc: dict[str, Any]) -> None:
        if code >= 400:
            # The request's body may be unread: never parse it as the next request.
            self.close_connection = True
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        if code == 401:
            self.send_header('WWW-Authenticate', 'Bearer realm="bodycam-dispatch"')
        self.end_headers()
        self.wfile.write(body)

    def _auth(self) -> bool:
        h = self.headers.get('Authorization', '')
        if h[:7].lower() == 'bearer ' and self.server.intake.auth.check_token(h[7:].strip()):
            return True
        self.server.intake.rejected += 1
        self._reply(401, {'error': 'a valid bearer token is required'})
        return False

    def _handle(self, clear: bool) -> None:
        if self.path.split('?')[0] != '/dispatch':
            return self._reply(404, {'error': 'POST or DELETE /dispatch'})
        if not self._auth():
            return
        if self.headers.get('Transfer-Encoding'):
            return self._reply(411, {'error': 'send the body with a Content-Length'})
        raw = (self.headers.get('Content-Length') or '0').strip()
        if not (raw.isascii() and raw.isdigit()):   # int() takes '-1', ' +1', '1_0'
            self.server.intake.rejected += 1
            return self._reply(400, {'error': f'bad Content-Length {raw[:20]!r}'})
        if len(raw) > 9 or int(raw) > MAX_BODY:
            self.server.intake.rejected += 1
            return self._reply(413, {'error': f'body larger than {MAX_BODY} bytes'})
        length = int(raw)
        body = self.rfile.read(length) if length else b''
        if len(body) < length:
            self.server.intake.rejected += 1
            return self._reply(400, {'error': f'body ended after {len(body)} of {length} '
                                              'bytes'})
        try:
            a = parse_assignment(b'{"clear": true}' if clear and not body else body)
            if clear:
                a = replace(a, clear=True, latitude=None, longitude=None)
        except DispatchError as exc:
            self.server.intake.rejected += 1
            return self._reply(400, {'error': str(exc)})
        self.server.intake.accept(a)
        self._reply(202, {'accepted': True, 'assignment_id': a.assignment_id,
                          'clear': a.clear})

    def do_POST(self) -> None:  # noqa: N802
        self._handle(clear=False)

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle(clear=True)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split('?')[0] != '/dispatch':
            return self._reply(404, {'error': 'not found'})
        if self._auth():
            a = self.server.intake.current
            self._reply(200, {'assignment': None if a is None or a.clear else a.__dict__})


class _CadServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, intake: CadIntake) -> None:
        self.intake = intake
        super().__init__(addr, _CadHandler)

    def handle_error(self, request, client_address) -> None:
        self.intake.rejected += 1
        if not isinstance(sys.exc_info()[1], OSError):   # a bug, not a client hanging up
            self.intake.handler_errors += 1


class CadIntake:
    """HTTPS endpoint for CAD assignments (``POST``/``DELETE``/``GET /dispatch``, bearer token).

    ``tls`` is the server context (:func:`server_tls_context`); without one the intake
    refuses to start unless ``allow_insecure_http``: the bearer token and the officer's
    destination would cross the network in clear. ``on_assignment`` runs on the request's
    thread; keep it short (publish and return).
    """

    def __init__(self, auth: TokenAuth, on_assignment: Callable[[Assignment], None], *,
                 bind: str = '127.0.0.1', port: int = 8081, tls: ssl.SSLContext | None = None,
                 allow_insecure_http: bool = False,
                 log: Callable[[str], None] = lambda _l: None) -> None:
        if tls is None and not allow_insecure_http:
            raise DispatchError('the CAD intake serves HTTPS: give it a TLS certificate, or '
                                'set allow_insecure_http for plain http')
        if tls is not None and tls.minimum_version < ssl.TLSVersion.TLSv1_2:
            raise DispatchError(f'TLS minimum version {tls.minimum_version.name}: '
                                'TLS 1.2 or later only')
        self.auth, self._on, self.log = auth, on_assignment, log
        self.current: Assignment | None = None
        self.accepted = self.rejected = 0
        self.handler_errors = 0   # requests that ended in an exception instead of a reply
        try:
            self._httpd = _CadServer((bind, port), self)
        except OSError as exc:
            raise DispatchError(f'cannot listen on {bind}:{port}: {exc.strerror}') from exc
        self.scheme = 'https' if tls is not None else 'http'
        if tls is not None:
            # Handshake on the request's own thread (first read), never in the accept loop:
            # a client that connects and stays silent cannot stall other CAD requests.
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={'poll_interval': 0.2}, daemon=True,
                                        name='cad-intake')

    def accept(self, a: Assignment) -> None:
        self.current = a
        self.accepted += 1
        self._on(a)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()


# --------------------------------------------------------------------------- events out

@dataclass(frozen=True)
class Outgoing:
    event_id: str
    kind: str
    body: dict[str, Any]


class EventPolicy:
    """Which unit events go to dispatch, and their documents.

    Officer down is always forwarded (raised, and its cancel/clear); ``forward`` adds
    ``weapon_drawn``, ``incident_started`` and ``incident_sealed``.
    """

    def __init__(self, unit_id: str, officer_id: str, forward: Iterable[str] = EVENT_KINDS,
                 clock: Callable[[], float] = time.time) -> None:
        unknown = set(forward) - set(EVENT_KINDS)
        if unknown:
            raise DispatchError(f'unknown event kinds {sorted(unknown)}; known {EVENT_KINDS}')
        self.unit_id, self.officer_id = unit_id, officer_id
        self.forward = set(forward) | {'officer_down'}
        self._clock = clock
        self.position: tuple[float, float] | None = None
        self._holster_active = False
        self._recorder: tuple[str, str] | None = None   # (state, incident) last seen
        self._last_sealed: str | None = None
        self._incident = ''   # the recorder's current incident, for events that lack one

    def _doc(self, kind: str, t: float, incident_id: str = '', **extra: Any) -> dict[str, Any]:
        pos = self.position
        return {'unit_id': self.unit_id, 'officer_id': self.officer_id, 'time': t,
                'time_iso': _iso(t), 'incident_id': incident_id or self._incident,
                'queued_at': self._clock(),
                'position': {'latitude': pos[0], 'longitude': pos[1]} if pos else None,
                **extra}

    def on_alert(self, values: dict[str, str]) -> list[Outgoing]:
        """A ``bodycam/alerts`` officer-down status (its KeyValues as a dict)."""
        alert_id, state = values.get('alert_id', ''), values.get('state', '')
        if not alert_id or state not in ('raised', 'cancelled', 'cleared'):
            raise DispatchError(f'alert without alert_id/state: {sorted(values)}')
        t = _num(values.get('stamp')) or self._clock()
        doc = self._doc('officer_down', t, values.get('incident_id', ''), state=state,
                        alert_id=alert_id)
        doc['unit_id'] = values.get('unit_id') or self.unit_id
        doc['officer_id'] = values.get('officer_id') or self.officer_id
        lat, lon = _num(values.get('latitude')), _num(values.get('longitude'))
        if lat is not None and lon is not None:
            doc['position'] = {'latitude': lat, 'longitude': lon}
        return [Outgoing(str(uuid.uuid5(_NS, f'{alert_id}/{state}')), 'officer_down', doc)]

    def on_triggers(self, statuses: Iterable[tuple[str, int, str]]) -> list[Outgoing]:
        """``bodycam/triggers`` as (source, level, message); weapon drawn on a rising edge."""
        out = []
        for source, level, message in statuses:
            if source != 'holster':
                continue
            active = level == 1
            if active and not self._holster_active and 'weapon_drawn' in self.forward:
                t = self._clock()
                out.append(Outgoing(str(uuid.uuid4()), 'weapon_drawn',
                                    self._doc('weapon_drawn', t, message=message)))
            self._holster_active = active
        return out

    def on_recorder(self, state: str, incident_id: str, last_sealed: str) -> list[Outgoing]:
        """``recorder/status``: an incident started (first seen RECORDING) or was sealed."""
        out = []
        now = self._clock()
        if (state in ('RECORDING', 'POST_ROLL') and incident_id and self._recorder is not None
                and self._recorder[1] != incident_id and 'incident_started' in self.forward):
            out.append(Outgoing(str(uuid.uuid5(_NS, f'{incident_id}/started')),
                                'incident_started',
                                self._doc('incident_started', now, incident_id)))
        if self._last_sealed is not None and last_sealed and last_sealed != self._last_sealed \
                and 'incident_sealed' in self.forward:
            out.append(Outgoing(str(uuid.uuid5(_NS, f'{last_sealed}/sealed')), 'incident_sealed',
                                self._doc('incident_sealed', now, last_sealed)))
        self._recorder = (state, incident_id if state in ('RECORDING', 'POST_ROLL') else '')
        self._incident = self._recorder[1]
        self._last_sealed = last_sealed
        return out


def _num(v: str | None) -> float | None:
    try:
        f = float(v) if v not in (None, '') else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) else None


# --------------------------------------------------------------------------- peer alerts

@dataclass(frozen=True)
class PeerAlert:
    alert_id: str
    state: str          # raised | cancelled | cleared
    unit_id: str
    officer_id: str
    latitude: float | None
    longitude: float | None
    stamp: float
    incident_id: str = ''

    @staticmethod
    def from_values(values: dict[str, str]) -> PeerAlert:
        aid, state = values.get('alert_id', ''), values.get('state', '')
        if not aid or state not in ('raised', 'cancelled', 'cleared'):
            raise DispatchError(f'peer alert without alert_id/state: {sorted(values)}')
        return PeerAlert(aid, state, values.get('unit_id', ''), values.get('officer_id', ''),
                         _num(values.get('latitude')), _num(values.get('longitude')),
                         _num(values.get('stamp')) or time.time(), values.get('incident_id', ''))


@dataclass(frozen=True)
class PeerDecision:
    alert: PeerAlert
    distance_m: float | None       # None: this unit or the peer has no position
    start_recording: bool          # within peer_trigger_radius_m, first time for this alert


class PeerAlerts:
    """Tracks other units' officer-down alerts against this unit's own position.

    ``radius_m`` 0 never starts recording. Each alert starts recording at most once; an
    alert that arrives before this unit has a fix is decided when the first fix comes.
    """

    def __init__(self, own_unit: str, radius_m: float) -> None:
        if radius_m < 0:
            raise DispatchError(f'peer_trigger_radius_m must be >= 0, got {radius_m}')
        self.own_unit, self.radius_m = own_unit, radius_m
        self.own_alert_ids: set[str] = set()
        self.position: tuple[float, float] | None = None
        self._active: dict[str, PeerAlert] = {}   # by unit
        self._started: set[str] = set()

    def is_own(self, a: PeerAlert) -> bool:
        return a.alert_id in self.own_alert_ids or (bool(a.unit_id) and
                                                    a.unit_id == self.own_unit)

    def _decide(self, a: PeerAlert) -> PeerDecision:
        dist = None
        if self.position and a.latitude is not None and a.longitude is not None:
            try:
                dist = distance_m(self.position[0], self.position[1], a.latitude, a.longitude)
            except GeodesyError:
                dist = None   # a coordinate out of range: distance unknown, never triggers
        start = (a.state == 'raised' and dist is not None and self.radius_m > 0
                 and dist <= self.radius_m and a.alert_id not in self._started)
        if start:
            self._started.add(a.alert_id)
        return PeerDecision(a, dist, start)

    def on_alert(self, a: PeerAlert) -> PeerDecision | None:
        """Another unit's alert (None for this unit's own, echoed back on the shared topic)."""
        if self.is_own(a):
            return None
        if a.state == 'raised':
            self._active[a.unit_id] = a
        else:
            self._active.pop(a.unit_id, None)
        return self._decide(a)

    def on_fix(self, lat: float, lon: float) -> list[PeerDecision]:
        """This unit moved: re-measure every active peer alert."""
        self.position = (lat, lon)
        return [self._decide(a) for a in self._active.values()]
