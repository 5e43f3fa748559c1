"""What every trigger detector reports, so fusion can treat them alike.

A detector is a small streaming state machine fed with timestamped samples (the caller's
clock: message stamps in the node, seconds from the start of a file in ``bodycam eval``). It
never reads a clock itself, so the node and the evaluation run exactly the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from bodycam_ros.core.messages import TRIGGER_SOURCES, Reason


class DetectorError(ValueError):
    """A detector parameter outside its valid range (the message names it)."""


class Source(str, Enum):
    """Trigger sources; the value is the name used on ``bodycam/triggers`` and as ``reason``.

    The strings are :class:`~bodycam_ros.core.messages.Reason`'s, the one list of reasons.
    """
    HOLSTER = Reason.HOLSTER.value
    DISPATCH_PROXIMITY = Reason.DISPATCH_PROXIMITY.value
    FIGHT = Reason.FIGHT.value
    FOOT_PURSUIT = Reason.FOOT_PURSUIT.value
    OFFICER_DOWN = Reason.OFFICER_DOWN.value
    MANUAL = Reason.MANUAL.value

    @property
    def reason(self) -> Reason:
        return Reason(self.value)


assert [s.value for s in Source] == [r.value for r in TRIGGER_SOURCES], 'Source != Reason'


@dataclass(frozen=True)
class TriggerState:
    """A detector's current decision and the numbers behind it.

    ``since`` is when the current activation began (caller's clock), or None while idle.
    ``fault`` is non-empty when the detector's sensor is faulty (reported as ERROR).
    """
    source: Source
    active: bool
    since: float | None
    confidence: float
    message: str
    values: dict[str, float | str] = field(default_factory=dict)
    fault: str = ''


def require(name: str, value: float, lo: float, hi: float = float('inf')) -> float:
    """Check a parameter range; raise :class:`DetectorError` naming it otherwise."""
    if not (lo <= value <= hi):
        rng = f'[{lo}, {hi}]' if hi != float('inf') else f'>= {lo}'
        raise DetectorError(f'{name}={value!r} outside {rng}')
    return value
