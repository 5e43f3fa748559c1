"""The evidence directory's layout: the one place that names its paths.

Layout under ``evidence_dir`` (the recorder writes ``recording/`` and ``spool/``; the uploader
reads ``spool/``, writes ``upload.json`` beside each manifest, and is the only process that
deletes, logging each deletion in ``pruned.jsonl`` first)::

    recording/<incident_id>/   in progress, encrypted (default): video.mp4.age,
                               sensors.mcap.age (MCAP streamed through age),
                               sensors.journal.age (crash-safe journal), incident.jsonl;
                               plaintext (encrypt: false): video.mp4, sensors.journal,
                               incident.jsonl
    spool/<incident_id>/       sealed: manifest.json, manifest.sig and, encrypted,
                               video.mp4.age + sensors.mcap.age (after a crash also
                               sensors.journal.age, all as found); plaintext: video.mp4,
                               sensors.mcap (+ video.original.mp4 when recovery repaired it)
    quarantine/<incident_id>/  (recorder) crash-left incidents that could not be sealed,
                               moved out of recording/ byte for byte, quarantine.json inside
    quarantine/<incident_id>.json  (uploader) a sealed incident it cannot trust; the incident
                               itself stays in spool/ untouched
    keys/                      (legacy, format 1) the old device key; today's key lives in
                               the recorder's key_dir, outside the evidence directory
    ledger.jsonl, audit.jsonl  the signed ledger (core.ledger) and audit log (core.audit)
    chain_head                 the newest sealed manifest's hash and sequence
    pruned.jsonl               incidents deleted after a verified upload (chain links)
    .recorder.lock             held by the one recorder process using the directory

``incident.jsonl`` stays plaintext: it holds only the lifecycle records (open, trigger, stop,
video_start, synced, close) whose content the signed manifest publishes anyway, and the unit
must read it back to seal after a crash. It is a work file: sealing folds it into the
manifest and deletes it. Directories are 0700, files 0600.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bodycam_ros.core import evidence as ev

RECORDING = 'recording'
SPOOL = 'spool'
QUARANTINE = 'quarantine'
KEYS = 'keys'
LOCK = '.recorder.lock'

VIDEO = 'video.mp4'
#: The clip exactly as a crash left it, kept beside the repaired ``video.mp4``.
VIDEO_ORIGINAL = 'video.original.mp4'
SENSORS = 'sensors.mcap'
AGE = ev.AGE_SUFFIX
VIDEO_AGE = VIDEO + AGE
SENSORS_AGE = SENSORS + AGE
SENSORS_UNREADABLE = 'sensors.unreadable'
JOURNAL = 'sensors.journal'
#: The encrypted journal: deleted on a clean seal (the MCAP has it all), sealed after a crash.
JOURNAL_AGE = JOURNAL + AGE
#: Directory mode of the evidence dir, spool, recording and quarantine.
DIR_MODE = 0o700
EVENTS = 'incident.jsonl'
#: Files that exist only while an incident records; sealing folds them into the manifest.
WORK_FILES = (JOURNAL, EVENTS)
#: Why an incident sits in quarantine/ (machine-readable).
QUARANTINE_REASON = 'quarantine.json'


class SpoolError(RuntimeError):
    """The evidence store cannot be used (layout, permissions, a corrupt incident)."""


@dataclass(frozen=True)
class EvidenceLayout:
    """Paths under one evidence directory; creates nothing (readers use it too)."""
    root: Path

    @property
    def recording(self) -> Path:
        return self.root / RECORDING

    @property
    def spool(self) -> Path:
        return self.root / SPOOL

    @property
    def quarantine(self) -> Path:
        return self.root / QUARANTINE

    @property
    def keys(self) -> Path:
        return self.root / KEYS

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def chain_head(self) -> Path:
        return self.root / ev.CHAIN_HEAD

    @property
    def pruned_log(self) -> Path:
        return self.root / ev.PRUNED_LOG

    @property
    def public_key(self) -> Path:
        return self.keys / f'{ev.KEY_NAME}.pub'
