"""Trigger fusion policy: which detector states become recorder commands, and when a stop
is allowed.

* Any trigger starts recording: each new activation of a source sends a ``start`` with its
  reason and the moment it began (the recorder extends an open incident, so repeated starts
  are harmless and every reason lands in the manifest).
* A stop comes only from the officer (manual) or, when ``auto_stop_s`` > 0, that long after
  every trigger has cleared. The default is 0, never: a detector clearing (the suspect
  stopped running, the dispatch was closed) says nothing about whether the encounter is
  over, department policies leave ending a recording to the officer, and a recording that
  runs too long costs storage while one cut short loses evidence.
* A manual stop is refused while a weapon is drawn or an officer-down detection or alert is
  open: those are exactly the moments whose recording must not depend on a button press.

Pure: no clock, no ROS. The caller passes ``now`` and the detectors' states.
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from bodycam_ros.core.detectors.base import Source, TriggerState
# The recorder command and the per-source levels are messages: their one definition (and
# codec) is in core.messages. Level: OK idle, WARN active, ERROR sensor fault, STALE no data.
from bodycam_ros.core.messages import CommandKind, Level, Reason, RecorderCommand

__all__ = ['ORDER', 'CommandKind', 'Fusion', 'FusionError', 'Health', 'Level',
           'RecorderCommand', 'SourceStatus', 'StopDecision']


class FusionError(ValueError):
    """A fusion parameter out of range."""


@dataclass(frozen=True)
class Health:
    """What the caller knows about a source's input."""
    stale: bool = False
    fault: str = ''


@dataclass(frozen=True)
class SourceStatus:
    """One entry of ``bodycam/triggers``."""
    source: Source
    level: Level
    message: str
    values: dict[str, float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class StopDecision:
    accepted: bool
    message: str
    command: RecorderCommand | None = None


ORDER = (Source.HOLSTER, Source.DISPATCH_PROXIMITY, Source.FIGHT, Source.FOOT_PURSUIT,
         Source.OFFICER_DOWN, Source.MANUAL)


class Fusion:
    """Turns detector states into recorder commands.

    Args:
        auto_stop_s: stop this long after every trigger cleared; 0 never stops by itself.
        new_id: command id factory (uuid4 strings by default).
    """

    def __init__(self, auto_stop_s: float = 0.0,
                 new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> None:
        if not (auto_stop_s >= 0.0 and math.isfinite(auto_stop_s)):
            raise FusionError(f'auto_stop_s={auto_stop_s!r} must be >= 0 (0 = never)')
        self.auto_stop_s = auto_stop_s
        self._new_id = new_id
        self._active: dict[Source, float] = {}   # active source -> when its activation began
        self.recording = False          # a start was sent and no stop since
        self._cleared_since: float | None = None
        self.starts = 0
        self.stops = 0

    def observe(self, states: Iterable[TriggerState], now: float) -> list[RecorderCommand]:
        """Feed the current states; returns the commands to send (in order)."""
        out: list[RecorderCommand] = []
        any_active = False
        for st in states:
            if not st.active:
                self._active.pop(st.source, None)
                continue
            any_active = True
            was = self._active.get(st.source)
            since = st.since if st.since is not None else (was if was is not None else now)
            # New activation: it was idle, or it re-fired (a later 'since') in between.
            if was is None or since > was:
                out.append(RecorderCommand(CommandKind.START, Reason(st.source.value), since,
                                           self._new_id(), f'{st.source.value}: {st.message}'))
                self.starts += 1
                self.recording = True
                self._active[st.source] = since
        if any_active:
            self._cleared_since = None
        elif self._cleared_since is None:
            self._cleared_since = now
        if (self.auto_stop_s > 0 and self.recording and not any_active
                and self._cleared_since is not None
                and now - self._cleared_since >= self.auto_stop_s):
            out.append(self._stop(Reason.AUTO_STOP, now, f'every trigger clear for '
                                                   f'{self.auto_stop_s:.0f} s'))
        return out

    def request_stop(self, now: float, states: Iterable[TriggerState]) -> StopDecision:
        """The officer asks to stop. Refused (with the reason) while a weapon is drawn or an
        officer-down detection/alert is open; otherwise a stop command."""
        by_source = {st.source: st for st in states}
        holster = by_source.get(Source.HOLSTER)
        if holster is not None and holster.active:
            return StopDecision(False, 'refused: weapon drawn; recording continues until it is '
                                       'holstered')
        down = by_source.get(Source.OFFICER_DOWN)
        if down is not None and down.active:
            return StopDecision(False, 'refused: officer-down alert open; cancel it first '
                                       '(bodycam trigger cancel)')
        return StopDecision(True, 'stop sent to the recorder',
                            self._stop(Reason.MANUAL, now, 'stopped by the officer'))

    def _stop(self, reason: Reason, now: float, message: str) -> RecorderCommand:
        self.recording = False
        self.stops += 1
        self._cleared_since = None
        # Triggers active at the stop count as handled: only a new activation starts again.
        return RecorderCommand(CommandKind.STOP, reason, now, self._new_id(), message)

    @staticmethod
    def status(st: TriggerState, health: Health = Health()) -> SourceStatus:
        """The ``bodycam/triggers`` entry for one source: WARN active, ERROR sensor fault,
        STALE no data, OK idle. An active trigger stays WARN whatever its input does."""
        values: dict[str, float | str] = {
            'since': st.since if st.since is not None else '',
            'confidence': round(st.confidence, 3), **st.values}
        if st.active:
            return SourceStatus(st.source, Level.WARN, st.message, values)
        fault = health.fault or st.fault
        if fault:
            return SourceStatus(st.source, Level.ERROR, fault, values)
        if health.stale:
            return SourceStatus(st.source, Level.STALE, 'no data', values)
        return SourceStatus(st.source, Level.OK, st.message, values)

    @classmethod
    def statuses(cls, states: Iterable[TriggerState],
                 health: Mapping[Source, Health] | None = None) -> list[SourceStatus]:
        """All sources in the fixed order of ``bodycam/triggers``."""
        by_source = {st.source: st for st in states}
        health = health or {}
        return [cls.status(by_source[s], health.get(s, Health())) for s in ORDER
                if s in by_source]

