"""Weapon drawn: active while the holster reports the weapon out, from the latched
``holster/weapon_drawn`` state, through the same debouncer the holster node uses.

The holster node already debounces the switch line before publishing, so by default a draw
counts at once (``debounce_s`` = 0: every millisecond here is a millisecond of the draw
missing from the clip's start). A re-holster must hold for ``clear_s`` before the trigger
clears, so a weapon put back and drawn again within a second or two is one activation,
not two start commands.
"""
from __future__ import annotations

from bodycam_ros.core.detectors.base import Source, TriggerState, require
from bodycam_ros.core.holster import DrawDetector, LevelSample


class WeaponDrawn:
    """Args:
        debounce_s: how long a drawn level must hold before it counts.
        clear_s: how long the weapon must stay holstered before the trigger clears.
    """

    def __init__(self, debounce_s: float = 0.0, clear_s: float = 2.0) -> None:
        self._draw = DrawDetector(require('debounce_s', debounce_s, 0.0, 5.0), initial=None)
        self._clear_s = require('clear_s', clear_s, 0.0, 60.0)
        self._active = False
        self._since: float | None = None
        self._holstered_at: float | None = None
        self._raw: bool | None = None   # the last level received (not yet debounced)
        self.draws = 0

    @property
    def known(self) -> bool:
        return self._draw.known

    @property
    def drawn(self) -> bool:
        return self._draw.drawn

    def update(self, t: float, drawn: bool) -> bool:
        """Feed the holster state at ``t``; returns True if the trigger just activated."""
        self._raw = drawn
        st = self._draw.update(LevelSample(t, drawn))
        if not st.known:
            return False
        return self._advance(t, st.drawn, st.since)

    def tick(self, t: float) -> bool:
        """Advance time without a new message (debounce and clear timers)."""
        if self._raw is None:
            return False
        st = self._draw.update(LevelSample(t, self._raw))
        if not st.known:
            return False
        return self._advance(t, st.drawn, st.since)

    def _advance(self, t: float, drawn: bool, since: float | None) -> bool:
        if drawn:
            self._holstered_at = None
            if not self._active:
                self._active, self._since = True, since if since is not None else t
                self.draws += 1
                return True
            return False
        if self._active:
            if self._holstered_at is None:
                self._holstered_at = since if since is not None else t
            if t - self._holstered_at >= self._clear_s:
                self._active, self._since, self._holstered_at = False, None, None
        return False

    def state(self) -> TriggerState:
        values: dict[str, float | str] = {'drawn': str(self._draw.drawn).lower(),
                                          'draws': self.draws}
        if not self._draw.known:
            return TriggerState(Source.HOLSTER, False, None, 0.0, 'no holster state yet', values)
        if self._active:
            msg = 'weapon drawn' if self._draw.drawn else 'weapon holstered; clearing'
            return TriggerState(Source.HOLSTER, True, self._since, 1.0, msg, values)
        return TriggerState(Source.HOLSTER, False, None, 1.0, 'weapon holstered', values)
