"""The observer behind ``bodycam run``'s status line: topic rates and the unit's state.

It only listens, and never to the streams themselves: the rates come from the counters the
nodes already publish on ``/diagnostics`` once a second (the camera's ``frames_encoded``,
the imu's ``samples_published``, the gps's ``fixes_published``), so watching the unit costs
next to nothing (subscribing to the video cost an eighth of a core). The same statuses say
which nodes are alive, which feeds systemd's watchdog (:mod:`bodycam_ros.sdnotify`).
"""
from __future__ import annotations

import collections
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from std_msgs.msg import Bool

from bodycam_ros.core.messages import (Level, MessageError, decode_alert, decode_recorder,
                                       decode_trigger)
from bodycam_ros.rosutil import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS
from bodycam_ros.wire import from_status, stamp_s, values_of

RATE_WINDOW_S = 5.0


class CounterRate:
    """A rate from a cumulative counter sampled now and then (a node's diagnostics).

    The rate is the counter's increase between the samples of the last ``window_s`` seconds,
    over the publisher's own stamps (delivery under load comes in bursts, so receive times
    would overstate it); a restarted node's counter going back to 0 starts a new window,
    and the rate is 0 once no new count arrived for ``stale_s`` (receive time). A sample
    with the count unchanged is a republished status (stamped when it was sent, not when
    the count was taken) and is left out: pairing it would understate the rate.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S, stale_s: float = 3.0) -> None:
        self._window_s, self._stale_s = window_s, stale_s
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._last_rx = -1e18

    def sample(self, count: float, stamp: float, now: float | None = None) -> None:
        if self._samples and count == self._samples[-1][1]:
            return                                   # a republished status
        self._last_rx = time.monotonic() if now is None else now
        if self._samples and (count < self._samples[-1][1] or stamp <= self._samples[-1][0]):
            if count < self._samples[-1][1] or stamp < self._samples[-1][0]:
                self._samples.clear()                # the node restarted, or its clock jumped
            else:
                return                               # the same report twice
        self._samples.append((stamp, count))
        while len(self._samples) > 2 and stamp - self._samples[1][0] >= self._window_s:
            self._samples.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if len(self._samples) < 2 or now - self._last_rx > self._stale_s:
            return 0.0
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / max(t1 - t0, 1e-6)


#: Status line stream -> (node, cumulative counter in that node's diagnostics).
COUNTERS = {'camera/h264': ('camera', 'frames_encoded'), 'imu/data': ('imu', 'samples_published'),
            'gps/fix': ('gps', 'fixes_published')}


class Monitor(Node):
    def __init__(self, namespace: str = '', **kw) -> None:
        super().__init__('bodycam_monitor', namespace=namespace or '', **kw)
        self._prefix = f'{namespace.strip("/")}/' if namespace.strip('/') else ''
        self.rates = {topic: CounterRate() for topic in COUNTERS}
        self.last_seen: dict[str, float] = {}     # node name -> monotonic time of its status
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                 RELIABLE_QOS)
        self.weapon_drawn: bool | None = None
        self.triggers: dict[str, Level] = {}
        self.recorder: DiagnosticStatus | None = None
        self.uploader: dict[str, str] = {}
        self._events: list[str] = []
        self._last_bad = ''
        self.create_subscription(Bool, 'holster/weapon_drawn', self._on_holster, LATCHED_QOS)
        self.create_subscription(DiagnosticArray, 'bodycam/triggers', self._on_triggers,
                                 RELIABLE_QOS)
        self.create_subscription(DiagnosticStatus, 'bodycam/alerts', self._on_alert, LATCHED_QOS)
        self.create_subscription(DiagnosticStatus, 'recorder/status', self._on_recorder,
                                 SENSOR_QOS)
        self.create_subscription(DiagnosticStatus, 'uploader/status', self._on_uploader,
                                 LATCHED_QOS)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        for st in msg.status:
            if not st.name.startswith(self._prefix) or '/' in st.name[len(self._prefix):]:
                continue                          # another unit's node
            node = st.name[len(self._prefix):]
            self.last_seen[node] = now
            for topic, (owner, key) in COUNTERS.items():
                if owner == node:
                    try:
                        self.rates[topic].sample(float(values_of(st)[key]),
                                                 stamp_s(msg.header.stamp), now)
                    except (KeyError, ValueError):
                        self._bad(f'{node} diagnostics without a numeric {key}')

    def missing(self, names, alive_s: float = 5.0, now: float | None = None) -> list[str]:
        """The nodes of ``names`` with no ``/diagnostics`` status in the last ``alive_s``."""
        now = time.monotonic() if now is None else now
        return [n for n in names if now - self.last_seen.get(n, -1e18) > alive_s]

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
