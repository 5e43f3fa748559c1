"""systemd's notify protocol, from the supervisor: READY=1, WATCHDOG=1, STOPPING=1.

A plain unix datagram to ``$NOTIFY_SOCKET`` (what libsystemd's ``sd_notify`` sends; a
leading ``@`` is the abstract namespace). No dependency: python-systemd has no wheel, and
the protocol is one ``sendto``. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a
no-op, so ``bodycam run`` behaves the same from a terminal.

The watchdog is fed only while every node of the graph reports alive (a ``/diagnostics``
status within :data:`ALIVE_S`): a node that is dead, hung in a callback, or left down after
too many restarts stops the feed, and systemd restarts the unit after ``WatchdogSec=``.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence

#: A node counts as alive while its last /diagnostics status is younger than this (they
#: publish once a second; a restarted group needs a few seconds to come back).
ALIVE_S = 5.0


class Notifier:
    """Sends notify messages to ``socket_path`` (default ``$NOTIFY_SOCKET``)."""

    def __init__(self, socket_path: str | None = None) -> None:
        path = os.environ.get('NOTIFY_SOCKET', '') if socket_path is None else socket_path
        self.enabled = bool(path)
        self._addr = ('\0' + path[1:]) if path.startswith('@') else path
        self._sock: socket.socket | None = None
        if self.enabled:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=value``) as one datagram; False if it could not be sent."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto('\n'.join(fields).encode(), self._addr)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_period_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of ``$WATCHDOG_USEC`` (systemd's advice), or None when no watchdog is asked for
    or it is meant for another process (``$WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    usec, pid = env.get('WATCHDOG_USEC', ''), env.get('WATCHDOG_PID', '')
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Watchdog:
    """Feeds systemd's watchdog while ``alive()`` names no missing node.

    Args:
        alive: returns the nodes that have NOT reported within :data:`ALIVE_S` (empty = all
            alive); the supervisor's monitor answers it from ``/diagnostics``.
        period_s: how often to feed; default from ``$WATCHDOG_USEC``, else 1 s (the READY
            and STOPPING messages are sent either way when there is a socket).
    """

    def __init__(self, missing: Callable[[], Sequence[str]], notifier: Notifier | None = None,
                 period_s: float | None = None, echo: Callable[[str], None] = print) -> None:
        self._missing = missing
        self._notifier = notifier or Notifier()
        self._period_s = period_s or watchdog_period_s() or 1.0
        self._next = 0.0
        self._ready = False
        self._starved: tuple[str, ...] = ()
        self._echo = echo

    @property
    def enabled(self) -> bool:
        return self._notifier.enabled

    def tick(self, now: float | None = None) -> None:
        """Call often (every spin): READY=1 once all nodes are up, then WATCHDOG=1 each
        period while they stay up; nothing while one is missing."""
        if not self._notifier.enabled:
            return
        now = time.monotonic() if now is None else now
        if now < self._next:
            return
        self._next = now + self._period_s
        missing = tuple(self._missing())
        if missing:
            if missing != self._starved:
                self._echo(f'watchdog: not fed, no status from {", ".join(missing)}')
            self._starved = missing
            if self._ready:
                self._notifier.send(f'STATUS=waiting for {", ".join(missing)}')
            return
        self._starved = ()
        if not self._ready:
            self._ready = True
            self._notifier.send('READY=1', 'STATUS=all nodes alive')
        self._notifier.send('WATCHDOG=1')

    def stopping(self) -> None:
        self._notifier.send('STOPPING=1')
        self._notifier.close()
