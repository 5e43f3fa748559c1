"""The observer behind ``bodycam run``'s status line: topic rates and the unit's state.

It only listens (best effort for streams, so it can never slow a publisher down; transient
local for state topics, so it sees the current state at once).
"""
from __future__ import annotations

import collections
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Imu, NavSatFix
from std_msgs.msg import Bool

from bodycam_ros.core.messages import (Level, MessageError, decode_alert, decode_recorder,
                                       decode_trigger)
from bodycam_ros.rosutil import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS
from bodycam_ros.wire import from_status

RATE_WINDOW_S = 5.0


class RateMeter:
    """Messages per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._stamps: collections.deque[float] = collections.deque()

    def tick(self, now: float | None = None) -> None:
        self._stamps.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        """Mean rate between the messages still in the window (0 once a stream stops)."""
        now = time.monotonic() if now is None else now
        while self._stamps and now - self._stamps[0] > self._window_s:
            self._stamps.popleft()
        if len(self._stamps) < 2:
            return 0.0
        return (len(self._stamps) - 1) / max(self._stamps[-1] - self._stamps[0], 1e-6)


class Monitor(Node):
    STREAMS = (('camera/h264', CompressedImage), ('imu/data', Imu), ('gps/fix', NavSatFix))

    def __init__(self, namespace: str = '', **kw) -> None:
        super().__init__('bodycam_monitor', namespace=namespace or '', **kw)
        self.rates = {topic: RateMeter() for topic, _ in self.STREAMS}
        for topic, msg_type in self.STREAMS:
            self.create_subscription(msg_type, topic,
                                     lambda _m, t=topic: self.rates[t].tick(), SENSOR_QOS)
        self.weapon_drawn: bool | None = None
        self.triggers: dict[str, Level] = {}
        self.recorder: DiagnosticStatus | None = None
        self.uploader: dict[str, str] = {}
        self.last_fix: NavSatFix | None = None
        self._events: list[str] = []
        self._last_bad = ''
        self.create_subscription(Bool, 'holster/weapon_drawn', self._on_holster, LATCHED_QOS)
        self.create_subscription(DiagnosticArray, 'bodycam/triggers', self._on_triggers,
                                 RELIABLE_QOS)
        self.create_subscription(DiagnosticStatus, 'bodycam/alerts', self._on_alert, LATCHED_QOS)
        self.create_subscription(DiagnosticStatus, 'recorder/status', self._on_recorder,
                                 SENSOR_QOS)
        self.create_subscription(NavSatFix, 'gps/fix', self._on_fix, SENSOR_QOS)
        self.create_subscription(DiagnosticStatus, 'uploader/status', self._on_uploader,
                                 LATCHED_QOS)

    def _on_holster(self, msg: Bool) -> None:
        if msg.data != self.weapon_drawn:
            self._events.append(f'holster: weapon {"DRAWN" if msg.data else "holstered"}')
        self.weapon_drawn = msg.data

    def _on_triggers(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            try:
                t = decode_trigger(from_status(st))
            except MessageError as exc:
                self._bad(f'bad trigger status: {exc}')
                continue
            source, was = t.source.value, self.triggers.get(t.source.value)
            if was != t.level:
                if t.level is Level.WARN or was is Level.WARN:
                    self._events.append(f'trigger {source}: {t.level.name} {t.message}')
                self.triggers[source] = t.level

    def _bad(self, line: str) -> None:
        """Report a message that does not decode once, not once per repeat."""
        if line != self._last_bad:
            self._events.append(line)
            self._last_bad = line

    def _on_alert(self, msg: DiagnosticStatus) -> None:
        try:
            decode_alert(from_status(msg))
        except MessageError as exc:   # still shown: an alert nobody can read is news too
            self._events.append(f'BAD ALERT {msg.name}: {exc}')
        values = ' '.join(f'{kv.key}={kv.value}' for kv in msg.values)
        self._events.append(f'ALERT {msg.name}: {msg.message} {values}')

    def _on_recorder(self, msg: DiagnosticStatus) -> None:
        try:
            state = decode_recorder(from_status(msg)).state.value
        except MessageError as exc:
            self._bad(f'bad recorder status: {exc}')
            return
        if self.recorder is None or self.recorder.message != state:
            self._events.append(f'recorder: {state}')
        self.recorder = msg

    def _on_uploader(self, msg: DiagnosticStatus) -> None:
        values = {kv.key: kv.value for kv in msg.values}
        if values.get('verified_total') != self.uploader.get('verified_total') and \
                values.get('verified_total', '0') != '0':
            self._events.append(f'uploader: {values["verified_total"]} incident(s) verified in '
                                f'{values.get("bucket", "the bucket")}')
        if values.get('last_error') and values['last_error'] != self.uploader.get('last_error'):
            self._events.append(f'uploader: {values["last_error"]}')
        self.uploader = values

    def _on_fix(self, msg: NavSatFix) -> None:
        self.last_fix = msg

    def take_events(self) -> list[str]:
        events, self._events = self._events, []
        return events

    def status_line(self) -> str:
        parts = [f'{topic} {meter.rate():.1f} Hz' for topic, meter in self.rates.items()]
        holster = {None: '?', True: 'DRAWN', False: 'holstered'}[self.weapon_drawn]
        parts.append(f'holster {holster}')
        active = [s for s, lvl in self.triggers.items() if lvl is Level.WARN]
        parts.append('triggers ' + (','.join(active) if active else 'none'))
        if self.recorder is not None:
            parts.append(f'recorder {self.recorder.message}')
        if self.uploader:
            parts.append(f'upload queue {self.uploader.get("queue_length", "?")}')
        return ' | '.join(parts)
