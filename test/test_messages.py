"""The typed codecs between processes (core.messages): each decoder gives a value or a
MessageError on any key/values, encode -> decode is the identity, and the wire format is the
one the nodes have always spoken."""
from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bodycam_ros.core import messages as m
from bodycam_ros.core.detectors import Source
from bodycam_ros.core.fusion import Fusion, Level
from bodycam_ros.core.messages import (AlertState, CommandKind, DownAlert, MessageError, Reason,
                                       RecorderCommand, RecorderReport, RecordingState,
                                       TriggerReport, Wire)
from bodycam_ros.core.upload import queue

PROPS = settings(max_examples=150, deadline=None)

# ------------------------------------------------------------------------- strategies

KNOWN_KEYS = ['reason', 'trigger_time', 'command_id', 'alert_id', 'state', 'stamp', 'latitude',
              'longitude', 'unit_id', 'incident_id', 'buffered_s', 'buffered_bytes',
              'free_bytes', 'triggers', 'since', 'confidence']
#: Values that look almost right: the edge cases a hand-written decoder trips over.
TRICKY = st.sampled_from(['', 'nan', 'NaN', 'inf', '-inf', '-1', '0', '1e300', '1e-320',
                          '1_000', ' 12 ', '0x10', '1' * 5000, 'holster', 'start', 'raised',
                          'RECORDING', 'IDLE', '38.5', '-121.49', 'None', '\x00', 'é'])
VALUE = st.one_of(TRICKY, st.text(max_size=30),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.integers().map(str))
NAME = st.one_of(st.sampled_from(['start', 'stop', 'START', '', 'alert/officer_down',
                                  'trigger/holster', 'trigger/peer_alert', 'trigger/auto_stop',
                                  'x/trigger/fight', 'recorder', 'trigger/']),
                 st.text(max_size=20))
WIRE = st.builds(Wire, NAME, st.integers(-5, 300), st.text(max_size=20),
                 st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8)),
                                 VALUE, max_size=10), st.text(max_size=10))

TIME = st.floats(min_value=1e-6, max_value=m.MAX_TIME_S, exclude_max=True)
ID = st.text(min_size=1, max_size=20)
EXTRA_KEY = st.text(max_size=10)


def extra(known: tuple[str, ...]):
    return st.dictionaries(EXTRA_KEY.filter(lambda k: k not in known), st.text(max_size=20),
                           max_size=4).map(lambda d: tuple(sorted(d.items())))


COMMANDS = st.one_of(
    st.builds(RecorderCommand, st.just(CommandKind.START),
              st.sampled_from([r for r in Reason if r is not Reason.AUTO_STOP]), TIME,
              st.text(max_size=20), st.text(max_size=30), extra(m._COMMAND_KEYS)),
    st.builds(RecorderCommand, st.just(CommandKind.STOP), st.sampled_from(list(Reason)), TIME,
              st.text(max_size=20), st.text(max_size=30), extra(m._COMMAND_KEYS)))
LAT = st.one_of(st.none(), st.floats(-90, 90))
LON = st.one_of(st.none(), st.floats(-180, 180))
ALERTS = st.builds(DownAlert, ID, st.sampled_from(list(AlertState)), TIME, st.text(max_size=10),
                   st.text(max_size=10), LAT, LON, st.text(max_size=10), st.text(max_size=20),
                   st.sampled_from([m.ALERT_NAME, m.PEER_ALERT_NAME]), extra(m._ALERT_KEYS))
TRIGGER_NAME = st.text(st.characters(blacklist_characters=','), min_size=1, max_size=12)
REPORTS = st.builds(RecorderReport, st.sampled_from(list(RecordingState)),
                    st.sampled_from(list(m.Level)), st.text(max_size=10), st.text(max_size=10),
                    st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
                    st.one_of(st.none(), st.integers(0, 1 << 60)),
                    st.one_of(st.none(), st.integers(0, 1 << 60)),
                    st.lists(TRIGGER_NAME, max_size=4).map(tuple), st.text(max_size=10),
                    st.text(max_size=10), extra(m._RECORDER_KEYS))
TRIGGERS = st.builds(TriggerReport, st.sampled_from(m.TRIGGER_SOURCES),
                     st.sampled_from(list(m.Level)), st.text(max_size=20),
                     st.one_of(st.none(), st.floats(0, m.MAX_TIME_S, exclude_max=True)),
                     st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
                     extra(m._TRIGGER_KEYS))

CODECS = [(m.encode_command, m.decode_command), (m.encode_alert, m.decode_alert),
          (m.encode_recorder, m.decode_recorder), (m.encode_trigger, m.decode_trigger)]


# ---------------------------------------------------------------------- properties

@pytest.mark.parametrize('decode', [d for _, d in CODECS], ids=lambda d: d.__name__)
@PROPS
@given(w=WIRE)
def test_any_key_values_decode_or_raise_message_error(decode, w: Wire) -> None:
    try:
        decode(w)
    except MessageError:
        pass


@PROPS
@given(c=COMMANDS)
def test_command_round_trip(c: RecorderCommand) -> None:
    assert m.decode_command(m.encode_command(c)) == c


@PROPS
@given(a=ALERTS)
def test_alert_round_trip(a: DownAlert) -> None:
    w = m.encode_alert(a)
    assert m.decode_alert(w) == a
    assert w.level == (m.Level.ERROR if a.state is AlertState.RAISED else m.Level.OK)


@PROPS
@given(r=REPORTS)
def test_recorder_status_round_trip(r: RecorderReport) -> None:
    assert m.decode_recorder(m.encode_recorder(r)) == r


@PROPS
@given(t=TRIGGERS)
def test_trigger_status_round_trip(t: TriggerReport) -> None:
    assert m.decode_trigger(m.encode_trigger(t)) == t


@PROPS
@given(w=WIRE)
def test_what_decodes_re_encodes_to_the_same_meaning(w: Wire) -> None:
    """Normalised values survive a second trip (what a relaying node does)."""
    for enc, dec in CODECS:
        try:
            v = dec(w)
        except MessageError:
            continue
        assert dec(enc(v)) == v


# ---------------------------------------------------------------------- named cases

def cmd_wire(name='start', **values) -> Wire:
    return Wire(name, 0, '', {'reason': 'holster', 'trigger_time': '1700000000.5',
                              'command_id': 'c1', **values})


@pytest.mark.parametrize('wire, needle', [
    (cmd_wire('begin'), 'name'),
    (cmd_wire(reason='coffee'), 'reason'),
    (cmd_wire(reason='auto_stop'), 'only a stop'),
    (Wire('start', 0, '', {'trigger_time': '1.0'}), 'no reason'),
    (Wire('stop', 0, '', {'reason': 'manual'}), 'no trigger_time'),
    (cmd_wire(trigger_time='nan'), 'trigger_time'),
    (cmd_wire(trigger_time='inf'), 'trigger_time'),
    (cmd_wire(trigger_time='-3'), 'trigger_time'),
    (cmd_wire(trigger_time='0'), 'trigger_time'),
    (cmd_wire(trigger_time='soon'), 'not a number'),
])
def test_bad_commands_name_the_field(wire: Wire, needle: str) -> None:
    with pytest.raises(MessageError, match=needle):
        m.decode_command(wire)


def test_command_wire_format_is_what_the_nodes_always_sent() -> None:
    c = RecorderCommand(CommandKind.START, Reason.PEER_ALERT, 1700000000.123456, 'id-1',
                        'peer alert from unit_a', (('alert_id', 'a1'), ('peer_unit', 'unit_a')))
    w = m.encode_command(c)
    assert (w.name, w.level, w.message) == ('start', 0, 'peer alert from unit_a')
    assert w.values == {'reason': 'peer_alert', 'trigger_time': '1700000000.123456',
                        'command_id': 'id-1', 'alert_id': 'a1', 'peer_unit': 'unit_a'}
    # A stop as trigger_fusion sends it, and the test helpers' hand-built commands.
    assert m.decode_command(Wire('stop', 0, '', {'reason': 'auto_stop', 'trigger_time': '5'})) \
        .reason is Reason.AUTO_STOP
    with pytest.raises(MessageError, match='clashes'):
        m.encode_command(RecorderCommand(CommandKind.STOP, Reason.MANUAL, 1.0,
                                         extra=(('reason', 'x'),)))
    with pytest.raises(MessageError, match='trigger_time'):
        m.encode_command(RecorderCommand(CommandKind.START, Reason.MANUAL, math.nan))


def test_alert_position_that_is_not_a_point_still_alerts() -> None:
    w = Wire('alert/officer_down', 2, 'officer down', {
        'alert_id': 'a1', 'state': 'raised', 'stamp': '1700000000.0', 'latitude': '123',
        'longitude': 'west'})
    a = m.decode_alert(w)
    assert a.raised and (a.latitude, a.longitude) == (None, None)
    for bad, needle in (({'state': 'panic'}, 'state'), ({'alert_id': ''}, 'alert_id'),
                        ({'stamp': 'nan'}, 'stamp'), ({'stamp': ''}, 'stamp')):
        with pytest.raises(MessageError, match=needle):
            m.decode_alert(Wire(w.name, 2, '', {**w.values, **bad}))


def test_recorder_status_as_the_recorder_publishes_it() -> None:
    """The keys recorder_node sends today (rosutil.status formatting) decode."""
    w = Wire('unit_a/recorder', 0, 'RECORDING', {
        'state': 'RECORDING', 'buffered_s': '119.966666666667', 'buffered_bytes': '52000000',
        'incident_id': 'inc-1', 'free_bytes': '123456789', 'triggers': 'holster,fight',
        'frames': '300', 'last_sealed': '', 'problem': '', 'video_age_s': '-1.0'})
    r = m.decode_recorder(w)
    assert (r.state, r.incident_id, r.triggers, r.free_bytes) == \
        (RecordingState.RECORDING, 'inc-1', ('holster', 'fight'), 123456789)
    assert dict(r.extra)['frames'] == '300'
    # A status with only the message (older publishers, tests) still decodes.
    assert m.decode_recorder(Wire('recorder', 0, 'IDLE', {})).state is RecordingState.IDLE
    with pytest.raises(MessageError, match='free_bytes'):
        m.decode_recorder(Wire('recorder', 0, 'IDLE', {'free_bytes': 'lots'}))


def test_trigger_status_from_fusion_round_trips() -> None:
    from bodycam_ros.core.detectors import TriggerState
    st_ = Fusion.status(TriggerState(Source.FIGHT, True, 1700000000.25, 0.8, 'struggle',
                                     {'energy_g': 0.812345}))
    w = m.encode_trigger(TriggerReport(Reason(st_.source.value), m.Level(st_.level),
                                       st_.message, st_.values['since'],
                                       st_.values['confidence'],
                                       m.trigger_extra({'energy_g': 0.812345})))
    assert (w.name, w.level) == ('trigger/fight', 1)
    assert w.values == {'since': '1700000000.25', 'confidence': '0.8', 'energy_g': '0.812345'}
    t = m.decode_trigger(w)
    assert t.active and t.source is Reason.FIGHT
    # What other publishers send (no since/confidence) decodes too.
    assert m.decode_trigger(Wire('trigger/holster', 1, 'weapon drawn', {})).active
    with pytest.raises(MessageError, match='trigger source'):
        m.decode_trigger(Wire('trigger/peer_alert', 1, '', {}))


def test_one_list_of_reasons() -> None:
    """Detector sources, the recorder's accepted reasons and the uploader's urgent reasons
    all come from messages.Reason."""
    assert [s.value for s in Source] == [r.value for r in m.TRIGGER_SOURCES]
    assert all(Reason(s) == s for s in Source)
    assert m.START_REASONS == {r.value for r in Reason} - {'auto_stop'}
    assert queue.URGENT_REASONS is m.URGENT_REASONS
    assert Level is m.Level
    assert 'officer_down' in m.URGENT_REASONS and Reason.OFFICER_DOWN in m.URGENT_REASONS


# ---------------------------------------------------------------------- over DDS

def test_recorder_refuses_bad_commands_and_takes_an_encoded_one(ctx, executor, tmp_path) -> None:
    """The real recorder node decodes recorder/command with the codec: a start with no reason
    or an infinite trigger time (both accepted before) is counted and ignored, not recorded."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from bodycam_ros.nodes.recorder_node import RecorderNode
    from bodycam_ros.rosutil import RELIABLE_QOS, SENSOR_QOS
    from bodycam_ros.wire import from_status, to_status
    from conftest import spin_for, spin_until
    from spoolutil import recorder_params

    rec = RecorderNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in {
        'evidence_dir': str(tmp_path / 'ev'), 'pre_event_s': 2.0, 'post_event_s': 0.0,
        'min_free_bytes': 0, 'status_period_s': 0.2, **recorder_params(tmp_path)}.items()])
    probe = Node('probe', context=ctx)
    executor.add_node(rec)
    executor.add_node(probe)
    cmd = probe.create_publisher(DiagnosticStatus, 'recorder/command', RELIABLE_QOS)
    states: list[str] = []
    probe.create_subscription(DiagnosticStatus, 'recorder/status',
                              lambda s: states.append(m.decode_recorder(from_status(s)).state),
                              SENSOR_QOS)
    try:
        assert spin_until(executor, lambda: cmd.get_subscription_count() > 0 and states, 10.0)
        now = repr(time.time())
        for values in ({'trigger_time': now},                                    # no reason
                       {'reason': 'manual', 'trigger_time': 'inf'},
                       {'reason': 'auto_stop', 'trigger_time': now},
                       {'reason': 'coffee', 'trigger_time': now},
                       {'reason': 'manual'}):                                    # no time
            cmd.publish(DiagnosticStatus(name='start', values=[
                KeyValue(key=k, value=v) for k, v in values.items()]))
        assert spin_until(executor, lambda: rec.bad_commands == 5, 5.0), rec.bad_commands
        spin_for(executor, 0.5)
        assert set(states) == {m.RecordingState.IDLE}
        cmd.publish(to_status(m.encode_command(RecorderCommand(
            CommandKind.START, Reason.FOOT_PURSUIT, time.time(), 'c-1', 'pursuit'))))
        assert spin_until(executor, lambda: states[-1] is m.RecordingState.RECORDING, 5.0)
        assert rec.bad_commands == 5
    finally:
        rec.close()
