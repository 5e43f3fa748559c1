"""The portal link protocol (issue 13): a unit dials out to its agency portal. No ROS, no I/O.

One WebSocket (subprotocol :data:`SUBPROTOCOL`) from the unit to ``<portal>/api/link``, over
TLS (``wss://``) unless a test says otherwise. Nothing ever dials in: units sit behind a
carrier's NAT.

Handshake (challenge and response with the unit's registered device key)::

    portal -> unit   {"type": "challenge", "v": 1, "nonce": <32 random bytes, hex>}
    unit -> portal   {"type": "hello", "v": 1, "device_id", "officer_id", "key_id",
                      "origin", "signature": base64(Ed25519 over auth_message(...)),
                      "software"}
    portal -> unit   {"type": "welcome", "heartbeat_s", "server_time", "watch"}
                     or a close frame with one of the CLOSE_* codes and a reason

:func:`auth_message` = ``AUTH_CONTEXT || nonce || device_id || "\\n" || origin``. The origin
is the portal the unit *dialed* (``https://host:port``), and the portal accepts only its own
origins, so a relay that passes a challenge on cannot use the answer elsewhere; the nonce
makes every answer single-use; the context string keeps these signatures apart from the
evidence signatures made by the same key. The portal checks the signature against the key
its trust store (the agency's signed ``devices.json``) registered for ``device_id``.

After ``welcome``, text frames are JSON objects with a ``type``:

unit -> portal: ``state`` (a full :class:`UnitState` snapshot, sent on a change, at most
every ``min_interval_s``), ``hb`` (heartbeat, only when nothing else was sent for
``heartbeat_s``), ``alert`` (:class:`AlertMsg`, sent at once), ``stream`` (video starts
``on`` with ``generation`` and ``codec``, or stops), ``dispatch_ack`` ({"id"}).

portal -> unit: ``watch`` ({"on": bool}: someone watches; the unit streams while someone
watches or while it records), ``dispatch`` (:class:`DispatchMsg`), ``hb``.

Binary frames (unit -> portal) carry the unit's live fMP4, never re-encoded:
:data:`VIDEO_HEADER` (kind, flags, generation, seq, capture stamp) then the bytes of an init
segment (``ftyp``+``moov``) or one fragment (``moof``+``mdat``).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
import random
import struct
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ['AUTH_CONTEXT', 'CLOSE_ORIGIN', 'CLOSE_PROTOCOL', 'CLOSE_REPLACED', 'CLOSE_TIMEOUT',
           'CLOSE_UNAUTHORIZED', 'LINK_PATH', 'NONCE_BYTES', 'SUBPROTOCOL', 'VERSION',
           'AlertMsg', 'ByteMeter', 'DispatchMsg', 'Hello', 'LinkError', 'Reconnect',
           'StateCoalescer', 'UnitState', 'VideoFrame', 'auth_message', 'decode', 'encode',
           'link_url', 'new_nonce', 'origin_of', 'pack_video', 'unpack_video', 'ws_frame_bytes']

VERSION = 1
SUBPROTOCOL = 'bodycam-portal-link.v1'
LINK_PATH = '/api/link'
AUTH_CONTEXT = b'bodycam-portal-link/1 auth\n'
NONCE_BYTES = 32
#: Close codes (RFC 6455 leaves 4000-4999 to applications; the reason says more).
CLOSE_PROTOCOL = 4400       # a malformed or unexpected message
CLOSE_UNAUTHORIZED = 4401   # not registered, revoked, or a signature that does not verify
CLOSE_ORIGIN = 4403         # signed for another portal
CLOSE_TIMEOUT = 4408        # no hello in time, or silent past the heartbeat timeout
CLOSE_REPLACED = 4409       # the same unit connected again (the old link is stale)
#: Alert kinds the portal shows people.
ALERT_KINDS = ('officer_down', 'weapon_drawn', 'offline_while_recording')
ALERT_STATES = ('raised', 'cancelled', 'cleared')
MAX_TEXT = 64 * 1024
VIDEO_HEADER = struct.Struct('>BBIId')   # kind, flags, generation, seq, stamp: 18 bytes
VIDEO_INIT, VIDEO_FRAGMENT = 1, 2
FLAG_KEY = 1


class LinkError(ValueError):
    """A URL, message or frame that breaks the link protocol; the text names it."""


# -- addresses ---------------------------------------------------------------------------------
_DEFAULT_PORT = {'https': 443, 'http': 80}


def origin_of(url: str) -> str:
    """``https://host[:port]`` for a portal URL (ws/wss map to http/https; the default port
    is left out; host in lower case), as both sides compute it for :func:`auth_message`."""
    p = urlsplit(url)
    scheme = {'ws': 'http', 'wss': 'https'}.get(p.scheme, p.scheme)
    if scheme not in ('http', 'https') or not p.hostname:
        raise LinkError(f'portal URL {url!r}: https://host[:port] expected')
    try:
        port = p.port
    except ValueError as exc:
        raise LinkError(f'portal URL {url!r}: bad port') from exc
    host = p.hostname.lower()
    host = f'[{host}]' if ':' in host else host
    return f'{scheme}://{host}' + (f':{port}' if port and port != _DEFAULT_PORT[scheme] else '')


def link_url(portal_url: str, allow_insecure: bool = False) -> str:
    """The WebSocket URL to dial for a portal URL (``https://portal.example/`` ->
    ``wss://portal.example/api/link``). Plain ``http``/``ws`` only with ``allow_insecure``."""
    origin_of(portal_url)
    p = urlsplit(portal_url)
    secure = p.scheme in ('https', 'wss')
    if not secure and not allow_insecure:
        raise LinkError(f'portal URL {portal_url!r} is not TLS: use https:// (wss://), or set '
                        'allow_insecure_http for a loopback test')
    path = p.path.rstrip('/')
    if not path.endswith(LINK_PATH):
        path += LINK_PATH
    return urlunsplit(('wss' if secure else 'ws', p.netloc, path, '', ''))


# -- authentication ----------------------------------------------------------------------------
def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def auth_message(nonce: bytes, device_id: str, origin: str) -> bytes:
    """What the unit signs: context, the portal's nonce, its device id, the portal dialed."""
    if len(nonce) != NONCE_BYTES:
        raise LinkError(f'nonce is {len(nonce)} bytes, not {NONCE_BYTES}')
    if not device_id or '\n' in device_id or '\n' in origin:
        raise LinkError(f'device id {device_id!r} / origin {origin!r} unusable')
    return AUTH_CONTEXT + nonce + device_id.encode() + b'\n' + origin.encode()


@dataclass(frozen=True)
class Hello:
    device_id: str
    officer_id: str
    key_id: str
    origin: str
    signature: bytes
    software: str = ''

    def message(self) -> dict[str, Any]:
        return {'type': 'hello', 'v': VERSION, 'device_id': self.device_id,
                'officer_id': self.officer_id, 'key_id': self.key_id, 'origin': self.origin,
                'signature': base64.b64encode(self.signature).decode(),
                'software': self.software}

    @classmethod
    def parse(cls, m: dict[str, Any]) -> Hello:
        if m.get('type') != 'hello':
            raise LinkError(f'expected hello, got {m.get("type")!r}')
        if m.get('v') != VERSION:
            raise LinkError(f'protocol version {m.get("v")!r}; this portal speaks {VERSION}')
        try:
            sig = base64.b64decode(str(m.get('signature', '')), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise LinkError('hello signature is not base64') from exc
        out = cls(_str(m, 'device_id', 128), _str(m, 'officer_id', 128, ''),
                  _str(m, 'key_id', 128, ''), _str(m, 'origin', 300), sig,
                  _str(m, 'software', 200, ''))
        if not out.device_id:
            raise LinkError('hello without device_id')
        return out


def parse_challenge(m: dict[str, Any]) -> bytes:
    if m.get('type') != 'challenge':
        raise LinkError(f'expected a challenge, got {m.get("type")!r}')
    try:
        nonce = bytes.fromhex(str(m.get('nonce', '')))
    except ValueError as exc:
        raise LinkError('challenge nonce is not hex') from exc
    if len(nonce) != NONCE_BYTES:
        raise LinkError(f'challenge nonce is {len(nonce)} bytes, not {NONCE_BYTES}')
    return nonce


# -- messages ----------------------------------------------------------------------------------
def encode(msg: dict[str, Any]) -> str:
    return json.dumps(msg, separators=(',', ':'), allow_nan=False)


def decode(text: str | bytes) -> dict[str, Any]:
    """One text frame as a JSON object with a ``type``; LinkError otherwise."""
    if len(text) > MAX_TEXT:
        raise LinkError(f'text frame of {len(text)} bytes (max {MAX_TEXT})')
    try:
        m = json.loads(text)
    except ValueError as exc:
        raise LinkError(f'text frame is not JSON: {exc}') from exc
    if not isinstance(m, dict) or not isinstance(m.get('type'), str):
        raise LinkError('text frame is not an object with a "type"')
    return m


def _str(m: dict[str, Any], key: str, limit: int, default: str | None = None) -> str:
    v = m.get(key, default)
    if not isinstance(v, str) or len(v) > limit:
        raise LinkError(f'{m.get("type")} {key} {str(v)[:40]!r}: a string of at most {limit} '
                        'characters expected')
    return v


def _num(v: Any, what: str, lo: float = -math.inf, hi: float = math.inf,
         optional: bool = True) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not lo <= v <= hi:
        raise LinkError(f'{what} {v!r}: a finite number in [{lo:g}, {hi:g}] expected')
    return float(v)


@dataclass(frozen=True)
class Position:
    latitude: float
    longitude: float
    stamp: float | None = None
    fix: bool = True

    @classmethod
    def parse(cls, v: Any) -> Position | None:
        if v is None:
            return None
        if not isinstance(v, dict):
            raise LinkError(f'position {v!r}: an object expected')
        return cls(_num(v.get('latitude'), 'latitude', -90, 90, False) or 0.0,
                   _num(v.get('longitude'), 'longitude', -180, 180, False) or 0.0,
                   _num(v.get('stamp'), 'position stamp'), bool(v.get('fix', True)))


@dataclass(frozen=True)
class UnitState:
    """What the unit reports (and the portal shows): a full snapshot each time."""
    officer_id: str = ''
    recorder_state: str = 'UNKNOWN'        # IDLE | RECORDING | POST_ROLL | UNKNOWN
    incident_id: str = ''
    triggers: tuple[str, ...] = ()         # active trigger sources
    faults: tuple[str, ...] = ()           # sources in ERROR
    position: Position | None = None
    free_bytes: int | None = None
    streaming: bool = False
    t: float = 0.0                         # unit clock when the snapshot was taken

    @property
    def recording(self) -> bool:
        return self.recorder_state in ('RECORDING', 'POST_ROLL')

    def material(self) -> tuple[Any, ...]:
        """Everything but position and time: a change here is sent at once."""
        return (self.officer_id, self.recorder_state, self.incident_id, self.triggers,
                self.faults, self.streaming, None if self.free_bytes is None
                else self.free_bytes >> 26)   # storage: in 64 MiB steps

    def message(self) -> dict[str, Any]:
        d = asdict(self)
        d['triggers'], d['faults'] = list(self.triggers), list(self.faults)
        if self.position is None:
            d['position'] = None
        return {'type': 'state', **d}

    @classmethod
    def parse(cls, m: dict[str, Any]) -> UnitState:
        trig, faults = m.get('triggers', []), m.get('faults', [])
        if not isinstance(trig, list) or not all(isinstance(x, str) for x in trig) or \
                not isinstance(faults, list) or not all(isinstance(x, str) for x in faults):
            raise LinkError('state triggers/faults: lists of names expected')
        free = m.get('free_bytes')
        if free is not None and (isinstance(free, bool) or not isinstance(free, int)):
            raise LinkError(f'state free_bytes {free!r}: an integer expected')
        return cls(_str(m, 'officer_id', 128, ''), _str(m, 'recorder_state', 32, 'UNKNOWN'),
                   _str(m, 'incident_id', 200, ''), tuple(trig[:16]), tuple(faults[:16]),
                   Position.parse(m.get('position')), free, bool(m.get('streaming')),
                   _num(m.get('t', 0.0), 'state t') or 0.0)


@dataclass(frozen=True)
class AlertMsg:
    """An alert raised (or cancelled/cleared) on the unit, sent the moment it happens."""
    alert_id: str
    kind: str             # ALERT_KINDS
    state: str            # ALERT_STATES
    t: float              # when it happened (unit clock, UNIX s)
    officer_id: str = ''
    position: Position | None = None
    incident_id: str = ''
    message: str = ''

    def message_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop('message')
        return {'type': 'alert', **d, 'text': self.message}

    @classmethod
    def parse(cls, m: dict[str, Any]) -> AlertMsg:
        kind, state = m.get('kind'), m.get('state')
        if kind not in ALERT_KINDS or state not in ALERT_STATES:
            raise LinkError(f'alert kind {kind!r} / state {state!r}: one of {ALERT_KINDS} / '
                            f'{ALERT_STATES} expected')
        aid = _str(m, 'alert_id', 128)
        if not aid:
            raise LinkError('alert without alert_id')
        return cls(aid, kind, state, _num(m.get('t'), 'alert t', 0, 1e11, False) or 0.0,
                   _str(m, 'officer_id', 128, ''), Position.parse(m.get('position')),
                   _str(m, 'incident_id', 200, ''), _str(m, 'text', 500, ''))


@dataclass(frozen=True)
class DispatchMsg:
    """A destination sent from the portal: the unit publishes ``dispatch/destination``."""
    dispatch_id: str
    latitude: float | None     # None with ``clear``
    longitude: float | None
    clear: bool = False
    by: str = ''

    def message(self) -> dict[str, Any]:
        return {'type': 'dispatch', 'id': self.dispatch_id, 'latitude': self.latitude,
                'longitude': self.longitude, 'clear': self.clear, 'by': self.by}

    @classmethod
    def parse(cls, m: dict[str, Any]) -> DispatchMsg:
        clear = bool(m.get('clear'))
        lat = _num(m.get('latitude'), 'dispatch latitude', -90, 90, clear)
        lon = _num(m.get('longitude'), 'dispatch longitude', -180, 180, clear)
        return cls(_str(m, 'id', 128), None if clear else lat, None if clear else lon, clear,
                   _str(m, 'by', 128, ''))


# -- video frames ------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoFrame:
    kind: int            # VIDEO_INIT or VIDEO_FRAGMENT
    keyframe: bool
    generation: int      # a new muxer (a new init segment) on the unit
    seq: int
    stamp: float
    data: bytes


def pack_video(kind: int, keyframe: bool, generation: int, seq: int, stamp: float,
               data: bytes) -> bytes:
    return VIDEO_HEADER.pack(kind, FLAG_KEY if keyframe else 0, generation & 0xFFFFFFFF,
                             seq & 0xFFFFFFFF, stamp) + data


def unpack_video(frame: bytes) -> VideoFrame:
    if len(frame) < VIDEO_HEADER.size:
        raise LinkError(f'binary frame of {len(frame)} bytes is shorter than its header')
    kind, flags, gen, seq, stamp = VIDEO_HEADER.unpack_from(frame)
    if kind not in (VIDEO_INIT, VIDEO_FRAGMENT):
        raise LinkError(f'binary frame kind {kind}: 1 (init) or 2 (fragment) expected')
    return VideoFrame(kind, bool(flags & FLAG_KEY), gen, seq, stamp,
                      bytes(frame[VIDEO_HEADER.size:]))


def ws_frame_bytes(payload: int, masked: bool = True) -> int:
    """Bytes one WebSocket frame of ``payload`` bytes takes (RFC 6455 header + mask)."""
    head = 2 if payload < 126 else 4 if payload < 65536 else 10
    return head + (4 if masked else 0) + payload


# -- policies ----------------------------------------------------------------------------------
class Reconnect:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(max, base*2^n)),
    never below ``floor_s``. A refusal by the portal (not registered) waits ``max_s``: a
    registration takes a person, hammering does not help."""

    def __init__(self, base_s: float = 0.5, max_s: float = 30.0, floor_s: float = 0.1,
                 rng: random.Random | None = None) -> None:
        if not 0 < base_s <= max_s or floor_s < 0:
            raise LinkError(f'backoff base_s={base_s} max_s={max_s} floor_s={floor_s}: '
                            '0 < base <= max expected')
        self.base_s, self.max_s, self.floor_s = base_s, max_s, floor_s
        self._rng = rng or random.Random()
        self.failures = 0

    def next_delay(self, refused: bool = False) -> float:
        cap = self.max_s if refused else min(self.max_s, self.base_s * 2 ** min(self.failures,
                                                                               30))
        self.failures += 1
        return max(self.floor_s, self._rng.uniform(cap / 2 if refused else 0.0, cap))

    def connected(self) -> None:
        self.failures = 0


@dataclass
class StateCoalescer:
    """When to send state: a material change at once (but at most every ``min_interval_s``),
    a position change once it moved ``position_min_m`` (same rate limit), and a heartbeat
    when nothing was sent for ``heartbeat_s``. Caller's clock."""
    min_interval_s: float = 1.0
    heartbeat_s: float = 15.0
    position_min_m: float = 10.0
    _sent: UnitState | None = None
    _sent_t: float = -math.inf
    _any_t: float = -math.inf

    def reset(self) -> None:
        """A new connection: the next state goes out in full at once."""
        self._sent, self._sent_t, self._any_t = None, -math.inf, -math.inf

    def due(self, s: UnitState, now: float) -> dict[str, Any] | None:
        if now - self._sent_t >= self.min_interval_s and self._changed(s):
            self._sent, self._sent_t, self._any_t = s, now, now
            return s.message()
        if now - self._any_t >= self.heartbeat_s:
            self._any_t = now
            return {'type': 'hb', 't': round(now, 3)}
        return None

    def _changed(self, s: UnitState) -> bool:
        old = self._sent
        if old is None or old.material() != s.material():
            return True
        if (old.position is None) != (s.position is None):
            return True
        if old.position is not None and s.position is not None:
            from bodycam_ros.core.geodesy import distance_m
            return distance_m(old.position.latitude, old.position.longitude,
                               s.position.latitude, s.position.longitude) >= self.position_min_m
        return False


@dataclass
class ByteMeter:
    """Bytes sent over the link, split by what they carried and by whether video was on, so
    the data cost reads as bytes per hour idle and bytes per minute streamed."""
    by_kind: dict[str, int] = field(default_factory=dict)
    idle_bytes: int = 0
    idle_s: float = 0.0
    stream_bytes: int = 0
    stream_s: float = 0.0
    _t: float | None = None
    _streaming: bool = False

    def add(self, kind: str, n: int) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + n
        if self._streaming:
            self.stream_bytes += n
        else:
            self.idle_bytes += n

    def tick(self, now: float, streaming: bool, connected: bool = True) -> None:
        """Account the time since the last tick to idle or streaming (connected time only)."""
        if self._t is not None and connected:
            dt = max(0.0, now - self._t)
            if self._streaming:
                self.stream_s += dt
            else:
                self.idle_s += dt
        self._t, self._streaming = now, streaming

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def idle_per_hour(self) -> float | None:
        return self.idle_bytes / self.idle_s * 3600.0 if self.idle_s >= 1.0 else None

    def stream_per_minute(self) -> float | None:
        return self.stream_bytes / self.stream_s * 60.0 if self.stream_s >= 1.0 else None
