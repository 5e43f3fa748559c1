"""A stop asked for while a node process is still importing (rclpy, NumPy, PyAV, OpenCV).

On a small board those imports take seconds, and the supervisor, ``ros2 launch`` or
systemd may send SIGINT/SIGTERM in that window (a Ctrl-C right after start). Python's
default turns it into a KeyboardInterrupt in the middle of an import and the node dies
with -2 and a traceback. ``bodycam_ros.nodes`` installs :func:`install` first thing when a
node runs as a program; :class:`bodycam_ros.rosutil.StopSignals` takes the recorded signal
over, so the node starts, sees the stop at once and closes cleanly with exit 0.
"""
from __future__ import annotations

import signal
import threading

#: The first SIGINT/SIGTERM received before the node's own handlers took over, if any.
signum: int | None = None


def _record(sig: int, _frame: object) -> None:
    global signum
    if signum is None:
        signum = sig


def install() -> None:
    """Record, instead of raising, SIGINT and SIGTERM (main thread only, as Python allows)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _record)
