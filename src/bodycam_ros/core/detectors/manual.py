"""Manual trigger: the officer's start/stop services (and ``bodycam trigger start|stop``)."""
from __future__ import annotations

from bodycam_ros.core.detectors.base import Source, TriggerState


class Manual:
    """Active from a start request until a stop that fusion accepted."""

    def __init__(self) -> None:
        self._since: float | None = None
        self.starts = 0

    @property
    def active(self) -> bool:
        return self._since is not None

    def start(self, t: float) -> bool:
        """Returns True if this start activated the trigger (False: it already was)."""
        if self._since is not None:
            return False
        self._since = t
        self.starts += 1
        return True

    def stop(self) -> None:
        self._since = None

    def state(self) -> TriggerState:
        values: dict[str, float | str] = {'starts': self.starts}
        if self._since is not None:
            return TriggerState(Source.MANUAL, True, self._since, 1.0, 'started by the officer',
                                values)
        return TriggerState(Source.MANUAL, False, None, 1.0, 'idle', values)
