"""The evidence store and the recorder that fills it, one module per concern.

- :mod:`.layout`: the evidence directory's paths (the one place that names them)
- :mod:`.durable`: append-only files that keep every accepted byte on a full disk
- :mod:`.store`: the recorder's store: lock, chain head, free space, quarantine
- :mod:`.writer`: one incident being written in ``recording/``
- :mod:`.seal`: ``recording/<id>`` -> signed, chained ``spool/<id>`` (and recovery)
- :mod:`.recorder`: the IDLE / RECORDING / POST_ROLL state machine and its writer thread

An incident moves recording -> sealed (one atomic rename) -> uploaded (``upload.json`` by the
uploader) -> prunable. Only the uploader deletes, and only what the bucket verifies.
"""
from __future__ import annotations

import os  # noqa: F401  (bench/lookback.py patches spool.os.fsync)

from bodycam_ros.core.ring import SensorRecord, VideoPacket
from bodycam_ros.core.spool.durable import DurableFile, is_disk_full
from bodycam_ros.core.spool.layout import (EVENTS, JOURNAL, QUARANTINE_REASON, SENSORS, VIDEO,
                                           VIDEO_ORIGINAL, WORK_FILES, EvidenceLayout,
                                           SpoolError)
from bodycam_ros.core.spool.recorder import (Command, Recorder, RecorderConfig, RecorderStatus,
                                             State)
from bodycam_ros.core.spool.seal import Identity, SealError, seal
from bodycam_ros.core.spool.store import EvidenceStore, SealedIncident, dir_size
from bodycam_ros.core.spool.writer import IncidentWriter, read_events

__all__ = [
    'EVENTS', 'JOURNAL', 'QUARANTINE_REASON', 'SENSORS', 'VIDEO', 'VIDEO_ORIGINAL',
    'WORK_FILES', 'Command', 'DurableFile', 'EvidenceLayout', 'EvidenceStore', 'Identity',
    'IncidentWriter', 'Recorder', 'RecorderConfig', 'RecorderStatus', 'SealError',
    'SealedIncident', 'SensorRecord', 'SpoolError', 'State', 'VideoPacket', 'dir_size',
    'is_disk_full', 'read_events', 'seal',
]
