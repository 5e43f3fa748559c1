"""Holster lines: a real GPIO input through libgpiod, or the scripted simulation.

``read()`` returns the line's *logical* level, True = weapon out of the holster; the
``active_high`` setting is applied here (as libgpiod's active_low flag), so the debouncer in
:mod:`bodycam_ros.core.holster` never deals with wiring. No ROS here.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bodycam_ros.core import scenario as scenario_mod
from bodycam_ros.core.holster import HolsterError

__all__ = ['BIASES', 'GpioHolsterLine', 'HolsterError', 'HolsterLine', 'SimHolsterLine']

BIASES = ('as_is', 'pull_up', 'pull_down', 'disabled')


class HolsterLine(Protocol):
    description: str

    def read(self) -> bool: ...
    def close(self) -> None: ...


class GpioHolsterLine:
    """One GPIO input line via the libgpiod v2 Python binding (package ``gpiod``).

    Args:
        chip: ``/dev/gpiochipN`` or ``gpiochipN``.
        line: line offset on that chip.
        active_high: True if the line reads high while the weapon is out.
        bias: as_is, pull_up, pull_down or disabled (a bare switch to ground wants pull_up
            with ``active_high=False``).

    Raises:
        HolsterError: gpiod is not installed, the chip is missing or not a GPIO chip, the
            line does not exist or is held by another process.
    """

    def __init__(self, chip: str, line: int, active_high: bool = True, bias: str = 'as_is',
                 consumer: str = 'bodycam-holster') -> None:
        try:
            import gpiod
            from gpiod.line import Bias, Direction, Value
        except ImportError:
            raise HolsterError('the gpiod Python package (libgpiod v2 bindings) is not '
                               'installed: pip install gpiod') from None
        if bias not in BIASES:
            raise HolsterError(f'bias {bias!r} unknown; use one of {", ".join(BIASES)}')
        path = chip if chip.startswith('/') else f'/dev/{chip}'
        self.description = f'{path} line {line} (active {"high" if active_high else "low"})'
        if not Path(path).exists():
            raise HolsterError(f'GPIO chip {path} does not exist')
        try:
            if not gpiod.is_gpiochip_device(path):
                raise HolsterError(f'{path} is not a GPIO chip')
            settings = gpiod.LineSettings(direction=Direction.INPUT, active_low=not active_high,
                                          bias=getattr(Bias, bias.upper()))
            self._req = gpiod.request_lines(path, consumer=consumer, config={line: settings})
        except (OSError, ValueError) as exc:
            raise HolsterError(f'cannot request {self.description}: {exc}') from None
        self._line = line
        self._active = Value.ACTIVE
        self._released = gpiod.RequestReleasedError

    def read(self) -> bool:
        if self._req is None:
            raise HolsterError(f'{self.description}: closed')
        try:
            return self._req.get_value(self._line) == self._active
        except (OSError, self._released) as exc:
            raise HolsterError(f'{self.description}: {exc}') from None

    def close(self) -> None:
        req, self._req = getattr(self, '_req', None), None
        if req is not None:
            try:
                req.release()
            except OSError:
                pass


class SimHolsterLine:
    """The scenario's holster (``weapon_drawn_at``), overridable with :meth:`set`."""

    def __init__(self, scenario: str = '', scenario_start: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        try:
            self._scenario = scenario_mod.get(scenario or 'idle')
        except ValueError as exc:
            raise HolsterError(str(exc)) from None
        self._clock = clock
        self._start = scenario_start or clock()
        self._forced: bool | None = None
        self.description = f'sim:{self._scenario.name}'

    def set(self, high: bool | None) -> None:
        """Force the line (tests, the set_drawn service); None hands it back to the scenario."""
        self._forced = high

    def read(self) -> bool:
        if self._forced is not None:
            return self._forced
        return self._scenario.weapon_drawn_at(self._clock() - self._start)

    def next_change_s(self) -> float:
        """Seconds until the scenario may change the level (inf: never, or forced), so a
        reader can sleep until then instead of polling."""
        if self._forced is not None:
            return math.inf
        t = self._clock() - self._start
        ahead = [at - t for at in (self._scenario.draw_at_s, self._scenario.holster_at_s)
                 if at is not None and at > t]
        return min(ahead, default=math.inf)

    def close(self) -> None:
        pass
