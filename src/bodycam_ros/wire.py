"""The ROS side of :mod:`bodycam_ros.core.messages`: DiagnosticStatus <-> Wire, and stamps.

Every node that sends or reads a recorder command, an alert, a recorder status or a trigger
status goes through these, so the key/value and level conversions live in one place.
"""
from __future__ import annotations

import socket

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from bodycam_ros.core.messages import Wire


def level_of(msg: DiagnosticStatus) -> int:
    """DiagnosticStatus.level as an int (rclpy gives the ``byte`` field as ``bytes``)."""
    lvl = msg.level
    return lvl[0] if isinstance(lvl, (bytes, bytearray)) else int(lvl)


def values_of(msg: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.values}


def from_status(msg: DiagnosticStatus) -> Wire:
    return Wire(msg.name, level_of(msg), msg.message, values_of(msg), msg.hardware_id)


def to_status(w: Wire) -> DiagnosticStatus:
    """The DiagnosticStatus for ``w`` (hardware_id defaults to the host name)."""
    return DiagnosticStatus(level=bytes([int(w.level)]), name=w.name, message=w.message,
                            hardware_id=w.hardware_id or socket.gethostname(),
                            values=[KeyValue(key=k, value=v) for k, v in w.values.items()])


def stamp_s(stamp: Time) -> float:
    """A ``builtin_interfaces/Time`` in seconds."""
    return stamp.sec + stamp.nanosec * 1e-9
