"""Holster switch debouncing: a weapon counts as drawn once the line has stayed active.

A holster sensor is a reed or micro switch; it bounces for a few milliseconds on every
movement and can flick open when the officer runs. Recording starts on a draw, so a bounce
must not start (or stop) anything: a level only counts after it has held for ``debounce_s``.
The detector keeps no clock of its own; the caller stamps each sample (monotonic time).
"""
from __future__ import annotations

from dataclasses import dataclass


class HolsterError(RuntimeError):
    """The holster line cannot be read (no GPIO library, chip or line; bad configuration)."""


@dataclass(frozen=True)
class LevelSample:
    t: float     # caller's clock [s], non-decreasing
    high: bool   # line active = weapon out of the holster (active level already applied)


@dataclass(frozen=True)
class DrawState:
    drawn: bool            # debounced: weapon out of the holster
    changed: bool          # this sample completed a change (or first established the state)
    since: float | None    # when the current debounced level began (its first sample's t)
    known: bool = True     # False until a level has held for debounce_s once


class DrawDetector:
    """Debounces a holster line: a level must hold for ``debounce_s`` before it counts.

    Args:
        debounce_s: how long a new level must hold; 0 reports every change at once.
        initial: the state assumed at start, or None to wait for the first stable level
            (then that first level is reported as a change, so the caller publishes it).
    """

    def __init__(self, debounce_s: float, initial: bool | None = None) -> None:
        if not debounce_s >= 0:
            raise ValueError(f'debounce_s < 0: {debounce_s}')
        self._debounce_s = debounce_s
        self._drawn: bool | None = initial
        self._since: float | None = None            # start of the current debounced level
        self._pending: tuple[bool, float] | None = None   # (level, first seen) not yet stable
        self.transitions = 0                        # debounced changes (not the first level)
        self.draws = 0

    @property
    def drawn(self) -> bool:
        return bool(self._drawn)

    @property
    def known(self) -> bool:
        return self._drawn is not None

    def update(self, s: LevelSample) -> DrawState:
        if s.high == self._drawn:
            self._pending = None                    # a bounce that came back: ignored
            return DrawState(self.drawn, False, self._since)
        if self._pending is None or self._pending[0] != s.high or s.t < self._pending[1]:
            self._pending = (s.high, s.t)
        level, first = self._pending
        if s.t - first < self._debounce_s:
            return DrawState(self.drawn, False, self._since, self.known)
        if self._drawn is not None:
            self.transitions += 1
            self.draws += level
        self._drawn, self._since, self._pending = level, first, None
        return DrawState(level, True, first)
