"""What the administration page shows besides video, kept as plain data for JSON.

The node's callbacks write into one :class:`LiveState`; each page's event stream waits for a
change (or a heartbeat timeout) and sends :meth:`LiveState.snapshot`. No ROS types here.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ['Alert', 'LatestJpeg', 'LiveState', 'Position', 'RecorderState', 'TriggerState']

LEVELS = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}


@dataclass(frozen=True)
class TriggerState:
    source: str      # holster, dispatch_proximity, fight, foot_pursuit, officer_down, manual
    level: str       # OK idle, WARN active, ERROR sensor fault, STALE no data
    message: str


@dataclass(frozen=True)
class RecorderState:
    state: str                    # IDLE | RECORDING | POST_ROLL
    incident_id: str = ''
    buffered_s: float | None = None
    free_bytes: int | None = None


@dataclass(frozen=True)
class Position:
    latitude: float
    longitude: float
    stamp: float     # UNIX s
    fix: bool = True


@dataclass(frozen=True)
class Alert:
    """Officer down, of this unit (``peer`` False) or of another unit nearby."""
    alert_id: str
    state: str                    # raised | cancelled | cleared
    officer_id: str
    unit_id: str
    latitude: float | None
    longitude: float | None
    stamp: float
    incident_id: str = ''
    peer: bool = False
    distance_m: float | None = None

    @property
    def active(self) -> bool:
        return self.state == 'raised'


@dataclass
class LiveState:
    """Thread-safe page state with a version counter for long-polling viewers."""
    unit: str = ''
    triggers: dict[str, TriggerState] = field(default_factory=dict)
    recorder: RecorderState | None = None
    position: Position | None = None
    alert: Alert | None = None
    peer_alerts: dict[str, Alert] = field(default_factory=dict)
    video_fps: float = 0.0
    version: int = 0

    def __post_init__(self) -> None:
        self._cond = threading.Condition()

    def update(self, **changes: Any) -> None:
        """Set fields (``triggers=``, ``recorder=``, ``position=``, ``alert=`` ...)."""
        with self._cond:
            for key, value in changes.items():
                if not hasattr(self, key) or key.startswith('_') or key == 'version':
                    raise AttributeError(f'LiveState has no field {key!r}')
                setattr(self, key, value)
            self.version += 1
            self._cond.notify_all()

    def set_trigger(self, t: TriggerState) -> None:
        with self._cond:
            if self.triggers.get(t.source) == t:
                return
            self.triggers = {**self.triggers, t.source: t}
            self.version += 1
            self._cond.notify_all()

    def set_peer_alert(self, a: Alert) -> None:
        with self._cond:
            self.peer_alerts = {**self.peer_alerts, a.unit_id: a}
            self.version += 1
            self._cond.notify_all()

    def wait_change(self, since: int, timeout_s: float) -> int:
        """Block until ``version`` differs from ``since`` or ``timeout_s``; return version."""
        with self._cond:
            self._cond.wait_for(lambda: self.version != since, timeout_s)
            return self.version

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able dict of everything, plus derived flags the page uses directly."""
        with self._cond:
            alert = self.alert
            peers = [asdict(a) for a in self.peer_alerts.values() if a.active]
            return {
                'unit': self.unit,
                'version': self.version,
                'time': time.time(),
                'officer_down': bool(alert and alert.active),
                'alert': asdict(alert) if alert else None,
                'peer_alerts': peers,
                'triggers': [asdict(t) for t in sorted(self.triggers.values(),
                                                       key=lambda t: t.source)],
                'recorder': asdict(self.recorder) if self.recorder else None,
                'position': asdict(self.position) if self.position else None,
                'video_fps': round(self.video_fps, 1),
            }


class LatestJpeg:
    """The newest JPEG for MJPEG viewers: a slow viewer simply skips to the latest frame."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self.viewers = 0

    def put(self, jpeg: bytes) -> None:
        with self._cond:
            self._jpeg, self._seq = jpeg, self._seq + 1
            self._cond.notify_all()

    def wait_newer(self, seq: int, timeout_s: float) -> tuple[int, bytes | None]:
        with self._cond:
            self._cond.wait_for(lambda: self._seq != seq, timeout_s)
            return self._seq, (self._jpeg if self._seq != seq else None)
