"""The messages between the unit's processes, one typed codec each. No ROS imports.

Recorder commands, officer-down alerts, recorder status and trigger status travel as
``diagnostic_msgs/DiagnosticStatus`` (one ament_python package cannot define ``.msg`` files):
a name, a level, a message and string key/values. Here each message is a frozen dataclass
with an ``encode_*`` to :class:`Wire` and a ``decode_*`` from it. A decoder returns a value
or raises :class:`MessageError` naming the field and the bad value, never anything else, so
a node can count and skip bad input with one ``except``. An encoder refuses (same error) to
put on the wire what its decoder would reject. :mod:`bodycam_ros.wire` turns a
:class:`Wire` into a DiagnosticStatus and back.

The wire format is the one the nodes have always used (same names and keys), so a node not
yet using these codecs still understands them.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import TypeVar

__all__ = ['ALERT_NAME', 'MAX_TIME_S', 'PEER_ALERT_NAME', 'START_REASONS', 'TRIGGER_SOURCES',
           'URGENT_REASONS', 'AlertState', 'CommandKind', 'DownAlert', 'Level', 'MessageError',
           'Reason', 'RecorderCommand', 'RecorderReport', 'RecordingState', 'TriggerReport',
           'Wire', 'decode_alert', 'decode_command', 'decode_recorder', 'decode_trigger',
           'encode_alert', 'encode_command', 'encode_recorder', 'encode_trigger',
           'trigger_extra']


class MessageError(ValueError):
    """A message that does not decode (or encode); the text names the field and the value."""


class Level(IntEnum):
    """diagnostic_msgs/DiagnosticStatus levels."""
    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3


class Reason(str, Enum):
    """Why the recorder starts or stops: the only list of trigger reasons.

    The first six are the trigger sources (detectors, :data:`TRIGGER_SOURCES`); a
    ``peer_alert`` start comes from another unit's officer-down alert; ``auto_stop`` is
    only a stop reason.
    """
    HOLSTER = 'holster'
    DISPATCH_PROXIMITY = 'dispatch_proximity'
    FIGHT = 'fight'
    FOOT_PURSUIT = 'foot_pursuit'
    OFFICER_DOWN = 'officer_down'
    MANUAL = 'manual'
    PEER_ALERT = 'peer_alert'
    AUTO_STOP = 'auto_stop'


#: Sources on ``bodycam/triggers``, in their fixed order.
TRIGGER_SOURCES = (Reason.HOLSTER, Reason.DISPATCH_PROXIMITY, Reason.FIGHT,
                   Reason.FOOT_PURSUIT, Reason.OFFICER_DOWN, Reason.MANUAL)
#: Reasons a start may carry (strings, so they compare with manifest fields).
START_REASONS = frozenset(r.value for r in Reason if r is not Reason.AUTO_STOP)
#: Incidents uploaded before any other (strings: manifest ``triggers[].reason``).
URGENT_REASONS = frozenset({Reason.OFFICER_DOWN.value, Reason.HOLSTER.value})

#: Times must be UNIX (or simulated) seconds after 0 and before this (year 5138).
MAX_TIME_S = 1e11


@dataclass(frozen=True)
class Wire:
    """A DiagnosticStatus without ROS: what every codec reads and writes."""
    name: str
    level: int
    message: str = ''
    values: Mapping[str, str] = field(default_factory=dict)
    hardware_id: str = ''


Extra = tuple[tuple[str, str], ...]
E = TypeVar('E', bound=Enum)


# ------------------------------------------------------------------------------- helpers

def _enum(cls: type[E], value: object, what: str) -> E:
    try:
        return cls(value)
    except ValueError:
        allowed = ', '.join(str(m.value) for m in cls)   # type: ignore[attr-defined]
        raise MessageError(f'{what} {value!r} is not one of {allowed}') from None


def _float(s: str, what: str) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        raise MessageError(f'{what} {s!r} is not a number') from None


def _time(values: Mapping[str, str], key: str, what: str) -> float:
    """A required time: finite, > 0 and < :data:`MAX_TIME_S`."""
    if key not in values:
        raise MessageError(f'{what} has no {key}')
    return _check_time(_float(values[key], f'{what} {key}'), f'{what} {key}')


def _check_time(t: float, what: str) -> float:
    if not (0.0 < t < MAX_TIME_S):   # NaN fails too
        raise MessageError(f'{what} {t!r} is not a time in (0, {MAX_TIME_S:g}) s')
    return t


def _opt_float(values: Mapping[str, str], key: str, what: str,
               lo: float = -math.inf, hi: float = math.inf) -> float | None:
    """An optional number: missing or '' is None; otherwise finite and in [lo, hi]."""
    s = values.get(key, '')
    if s == '':
        return None
    f = _float(s, f'{what} {key}')
    if not (math.isfinite(f) and lo <= f <= hi):
        raise MessageError(f'{what} {key} {s!r} is not a finite number in [{lo:g}, {hi:g}]')
    return f


def _opt_int(values: Mapping[str, str], key: str, what: str) -> int | None:
    s = values.get(key, '')
    if s == '':
        return None
    try:
        return int(s)
    except ValueError:
        f = _float(s, f'{what} {key}')   # '1e9' or '3.0' from a float formatter
        if not (math.isfinite(f) and f == int(f)):
            raise MessageError(f'{what} {key} {s!r} is not an integer') from None
        return int(f)


def _position(values: Mapping[str, str], key: str, limit: float) -> float | None:
    """A coordinate, None where there is none. Lenient on purpose: an officer-down alert
    with an unusable position must still go out (without a position), not be dropped."""
    try:
        f = float(values.get(key, ''))
    except ValueError:
        return None
    return f if math.isfinite(f) and abs(f) <= limit else None


def _exact(v: float | None) -> str:
    """A float without loss ('' for None): a UNIX time or a longitude needs every digit."""
    return '' if v is None else repr(float(v))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f'{v:.15g}'
    return str(v)


def _extra(values: Mapping[str, str], known: Iterable[str]) -> Extra:
    known = set(known)
    return tuple(sorted((k, v) for k, v in values.items() if k not in known))


def _put_extra(out: dict[str, str], extra: Iterable[tuple[str, str]], what: str) -> None:
    for k, v in extra:
        if k in out:
            raise MessageError(f'{what} extra key {k!r} clashes with a field')
        out[k] = v


def _level(level: int, what: str) -> Level:
    return _enum(Level, level, f'{what} level')


# ------------------------------------------------------------------------ recorder command

class CommandKind(str, Enum):
    START = 'start'
    STOP = 'stop'


@dataclass(frozen=True)
class RecorderCommand:
    """``recorder/command``: name start|stop; values reason, trigger_time, command_id.

    ``trigger_time`` is when the trigger began (start) or the stop was decided, caller's
    clock. ``extra`` carries anything else (e.g. ``peer_unit``, ``alert_id``) as evidence.
    """
    kind: CommandKind
    reason: Reason
    trigger_time: float
    command_id: str = ''
    message: str = ''
    extra: Extra = ()


_COMMAND_KEYS = ('reason', 'trigger_time', 'command_id')


def _check_command(kind: CommandKind, reason: Reason) -> None:
    if kind is CommandKind.START and reason.value not in START_REASONS:
        raise MessageError(f'recorder command start with reason {reason.value!r}, which only '
                           'a stop may carry')


def encode_command(c: RecorderCommand, hardware_id: str = '') -> Wire:
    kind = _enum(CommandKind, c.kind, 'recorder command kind')
    reason = _enum(Reason, c.reason, 'recorder command reason')
    _check_command(kind, reason)
    values = {'reason': reason.value,
              'trigger_time': _exact(_check_time(float(c.trigger_time),
                                                 'recorder command trigger_time')),
              'command_id': c.command_id}
    _put_extra(values, c.extra, 'recorder command')
    return Wire(kind.value, Level.OK, c.message, values, hardware_id)


def decode_command(w: Wire) -> RecorderCommand:
    """Raises MessageError: name not start/stop, missing or unknown reason, missing or
    non-finite / non-positive trigger_time, a start with a stop-only reason."""
    kind = _enum(CommandKind, w.name, 'recorder command name')
    if 'reason' not in w.values:
        raise MessageError(f'recorder command {kind.value} has no reason')
    reason = _enum(Reason, w.values['reason'], 'recorder command reason')
    _check_command(kind, reason)
    t = _time(w.values, 'trigger_time', 'recorder command')
    return RecorderCommand(kind, reason, t, w.values.get('command_id', ''), w.message,
                           _extra(w.values, _COMMAND_KEYS))


# ------------------------------------------------------------------------ officer down

class AlertState(str, Enum):
    RAISED = 'raised'
    CANCELLED = 'cancelled'
    CLEARED = 'cleared'


#: Name of this unit's alert on ``bodycam/alerts`` and ``/bodycam/peer_alerts``.
ALERT_NAME = 'alert/officer_down'
#: Name of another unit's alert republished on ``bodycam/peer_alert``.
PEER_ALERT_NAME = 'alert/peer_officer_down'


@dataclass(frozen=True)
class DownAlert:
    """An officer-down alert (``bodycam/alerts``, ``/bodycam/peer_alerts``,
    ``bodycam/peer_alert``). Level on the wire: ERROR while raised, else OK."""
    alert_id: str
    state: AlertState
    stamp: float                     # when it was raised / cancelled / cleared [s]
    unit_id: str = ''
    officer_id: str = ''
    latitude: float | None = None    # None: no usable position
    longitude: float | None = None
    incident_id: str = ''
    message: str = ''
    name: str = ALERT_NAME
    extra: Extra = ()                # fix_stamp, after_impact, detail, distance_m, ...

    @property
    def raised(self) -> bool:
        return self.state is AlertState.RAISED

    def get(self, key: str, default: str = '') -> str:
        return dict(self.extra).get(key, default)


_ALERT_KEYS = ('alert_id', 'state', 'stamp', 'unit_id', 'officer_id', 'latitude', 'longitude',
               'incident_id')


def encode_alert(a: DownAlert, hardware_id: str = '') -> Wire:
    if not a.alert_id:
        raise MessageError('alert without alert_id')
    state = _enum(AlertState, a.state, 'alert state')
    values = {'alert_id': a.alert_id, 'state': state.value, 'officer_id': a.officer_id,
              'unit_id': a.unit_id, 'latitude': _exact(a.latitude),
              'longitude': _exact(a.longitude),
              'stamp': _exact(_check_time(float(a.stamp), 'alert stamp'))}
    if a.incident_id:
        values['incident_id'] = a.incident_id
    _put_extra(values, a.extra, 'alert')
    level = Level.ERROR if state is AlertState.RAISED else Level.OK
    return Wire(a.name, level, a.message, values, hardware_id or a.unit_id)


def decode_alert(w: Wire) -> DownAlert:
    """Raises MessageError: no alert_id, unknown state, missing or bad stamp. A position
    that is not a WGS-84 point decodes as None (see :func:`_position`)."""
    v = w.values
    if not v.get('alert_id'):
        raise MessageError(f'alert {w.name!r} has no alert_id')
    state = _enum(AlertState, v.get('state', ''), 'alert state')
    return DownAlert(v['alert_id'], state, _time(v, 'stamp', 'alert'), v.get('unit_id', ''),
                     v.get('officer_id', ''), _position(v, 'latitude', 90.0),
                     _position(v, 'longitude', 180.0), v.get('incident_id', ''), w.message,
                     w.name, _extra(v, _ALERT_KEYS))


# ------------------------------------------------------------------------ recorder status

class RecordingState(str, Enum):
    IDLE = 'IDLE'
    RECORDING = 'RECORDING'
    POST_ROLL = 'POST_ROLL'


@dataclass(frozen=True)
class RecorderReport:
    """``recorder/status``: message = state; the fields other nodes act on are typed, the
    rest (frames, queue_length, fsync_ms, ...) is in ``extra``."""
    state: RecordingState
    level: Level = Level.OK
    incident_id: str = ''
    last_sealed: str = ''
    buffered_s: float | None = None
    buffered_bytes: int | None = None
    free_bytes: int | None = None
    triggers: tuple[str, ...] = ()
    problem: str = ''
    name: str = 'recorder'
    extra: Extra = ()


_RECORDER_KEYS = ('state', 'incident_id', 'last_sealed', 'buffered_s', 'buffered_bytes',
                  'free_bytes', 'triggers', 'problem')


def encode_recorder(r: RecorderReport, hardware_id: str = '') -> Wire:
    state = _enum(RecordingState, r.state, 'recorder state')
    if r.buffered_s is not None and not math.isfinite(r.buffered_s):
        raise MessageError(f'recorder buffered_s {r.buffered_s!r} is not finite')
    if any(',' in t or not t for t in r.triggers):
        raise MessageError(f'recorder triggers {r.triggers!r}: empty or with a comma')
    values = {'state': state.value, 'incident_id': r.incident_id,
              'last_sealed': r.last_sealed, 'buffered_s': _exact(r.buffered_s),
              'buffered_bytes': '' if r.buffered_bytes is None else str(r.buffered_bytes),
              'free_bytes': '' if r.free_bytes is None else str(r.free_bytes),
              'triggers': ','.join(r.triggers), 'problem': r.problem}
    _put_extra(values, r.extra, 'recorder status')
    return Wire(r.name, _level(r.level, 'recorder status'), state.value, values, hardware_id)


def decode_recorder(w: Wire) -> RecorderReport:
    """Raises MessageError: unknown state (from ``state``, else the message), a bad level,
    a typed number that does not parse."""
    v = w.values
    state = _enum(RecordingState, v.get('state') or w.message, 'recorder state')
    triggers = tuple(t for t in v.get('triggers', '').split(',') if t)
    return RecorderReport(
        state, _level(w.level, 'recorder status'), v.get('incident_id', ''),
        v.get('last_sealed', ''), _opt_float(v, 'buffered_s', 'recorder status'),
        _opt_int(v, 'buffered_bytes', 'recorder status'),
        _opt_int(v, 'free_bytes', 'recorder status'), triggers, v.get('problem', ''), w.name,
        _extra(v, _RECORDER_KEYS))


# ------------------------------------------------------------------------ trigger status

@dataclass(frozen=True)
class TriggerReport:
    """One entry of ``bodycam/triggers`` (name ``trigger/<source>``): OK idle, WARN active,
    ERROR sensor fault, STALE no data. ``extra`` holds the numbers behind the decision."""
    source: Reason
    level: Level
    message: str = ''
    since: float | None = None        # when the current activation began (caller's clock)
    confidence: float | None = None   # finite; detectors give [0, 1]
    extra: Extra = ()

    @property
    def active(self) -> bool:
        return self.level is Level.WARN


_TRIGGER_KEYS = ('since', 'confidence')


def trigger_extra(values: Mapping[str, object]) -> Extra:
    """A detector's numbers as wire strings (floats to 15 significant digits)."""
    return tuple(sorted((k, _fmt(v)) for k, v in values.items()))


def encode_trigger(t: TriggerReport, hardware_id: str = '') -> Wire:
    source = _enum(Reason, t.source, 'trigger source')
    if source not in TRIGGER_SOURCES:
        raise MessageError(f'trigger source {source.value!r} is not a trigger source')
    if t.since is not None and not 0.0 <= t.since <= MAX_TIME_S:
        raise MessageError(f'trigger since {t.since!r} is not a time in [0, {MAX_TIME_S:g}] s')
    if t.confidence is not None and not math.isfinite(t.confidence):
        raise MessageError(f'trigger confidence {t.confidence!r} is not finite')
    values = {'since': _exact(t.since), 'confidence': _exact(t.confidence)}
    _put_extra(values, t.extra, 'trigger')
    return Wire(f'trigger/{source.value}', _level(t.level, 'trigger'), t.message, values,
                hardware_id)


def decode_trigger(w: Wire) -> TriggerReport:
    """Raises MessageError: a name whose last part is not a trigger source, a bad level, a
    since that is not a time >= 0, a confidence that is not finite."""
    source = _enum(Reason, w.name.rsplit('/', 1)[-1], 'trigger source')
    if source not in TRIGGER_SOURCES:
        raise MessageError(f'trigger source {source.value!r} is not a trigger source')
    v = w.values
    return TriggerReport(source, _level(w.level, 'trigger'), w.message,
                         _opt_float(v, 'since', 'trigger', 0.0, MAX_TIME_S),
                         _opt_float(v, 'confidence', 'trigger'), _extra(v, _TRIGGER_KEYS))
