"""The one pruner: deletes local incidents only when the bucket provably holds them.

Two reasons to delete, one rule. ``keep_local_s`` after an incident verified, and disk
pressure (free space below ``min_free_bytes``: oldest verified incidents first until it is
back). Either way, just before deleting, the remote copy is checked again at that moment:
every object of the signed manifest present, its size, SHA-256 (metadata, or the bytes
themselves for file://) and ETag (MD5 or multipart composite) matching the local bytes, which
must match the signed manifest. ``upload.json`` only nominates candidates: a forged or stale
one deletes nothing, and is turned back into "not uploaded" so the incident goes up again.

Then the signed ``pruned`` ledger entry with the upload proof is written (``trail``): that line
is the proof a verifier accepts for the gap, so it goes to disk before anything is deleted, and
without a device key (or without the incident's seal in the ledger) nothing is deleted at all.
The delete itself is :func:`bodycam_ros.core.evidence.prune_incident` (large files first, so a
full disk has room for the chain link), then an ``incident_pruned`` audit line. A delete the
ledger records must complete: every pass first finishes any half-done one
(:func:`bodycam_ros.core.evidence.finish_pruning`).
"""
from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.fsio import dir_size
from bodycam_ros.core.upload.backends import Backend, key_join
from bodycam_ros.core.upload.errors import LocalError, UploadError
from bodycam_ros.core.upload.multipart import digest_file, verify_remote
from bodycam_ros.core.upload.queue import (MANIFEST, RECORD, SIGNATURE, Incident, SpoolError,
                                           atomic_write_json, read_incident, read_record)
from bodycam_ros.core.upload.trail import Trail


@dataclass(frozen=True)
class PruneConfig:
    #: Delete a verified incident this long [s] after it verified; < 0 = never for age.
    keep_local_s: float = -1.0
    #: Delete verified incidents, oldest first, while free space is below this [bytes];
    #: 0 = never for space.
    min_free_bytes: int = 0
    #: If > 0, evidence may use at most this much: free = min(disk free, quota - used).
    max_evidence_bytes: int = 0
    #: A candidate whose remote copy did not verify is looked at again after this long [s].
    recheck_s: float = 60.0

    def __post_init__(self) -> None:
        if self.min_free_bytes < 0 or self.max_evidence_bytes < 0:
            raise ValueError(f'min_free_bytes {self.min_free_bytes} / max_evidence_bytes '
                             f'{self.max_evidence_bytes} < 0')
        if math.isnan(self.keep_local_s) or self.recheck_s < 0:
            raise ValueError(f'keep_local_s {self.keep_local_s} / recheck_s {self.recheck_s}')

    @property
    def enabled(self) -> bool:
        return self.keep_local_s >= 0 or self.min_free_bytes > 0


@dataclass(frozen=True)
class RemoteCheck:
    """The outcome of checking the bucket's copy of one incident."""
    ok: bool
    why: str = ''
    #: True when the store answered and the copy is missing or wrong (not a network error):
    #: then the local ``upload.json`` lied and the incident must go up again.
    refuted: bool = False


@dataclass
class PruneResult:
    deleted: list[tuple[str, str]] = field(default_factory=list)   # (name, why deleted)
    kept: dict[str, str] = field(default_factory=dict)             # name -> why not
    requeued: list[str] = field(default_factory=list)              # upload.json refuted
    free_bytes: int | None = None
    low_disk: bool = False
    finished: list[str] = field(default_factory=list)   # half-done prunes completed now
    errors: list[str] = field(default_factory=list)     # local errors, with their errno


def check_remote_copy(inc: Incident, backend: Backend, bucket_prefix: str,
                      part_size: int) -> RemoteCheck:
    """Does the bucket hold exactly this incident, now? Asks the store for every object.

    ``inc`` comes from :func:`read_incident`, so the manifest's signature already held.
    Every local file must match the manifest, and every object the store's copy of it;
    files the manifest lists but that are gone locally must be in the store with the
    manifest's size and SHA-256.
    """
    prefix = inc.key_prefix(bucket_prefix)
    local = {f.name: f for f in inc.files}
    for name in (*sorted(inc.manifest_sha256), MANIFEST, SIGNATURE):
        if name not in inc.manifest_sha256 and name not in local:
            return RemoteCheck(False, f'{name} missing locally')
    try:
        for name, f in local.items():
            digest = digest_file(f.path, part_size)
            want = inc.manifest_sha256.get(name)
            if want is not None and (digest.sha256 != want or
                                     inc.manifest_size.get(name, digest.size) != digest.size):
                return RemoteCheck(False, f'local {name} differs from the signed manifest')
            key = key_join(prefix, name)
            why = verify_remote(backend.head(key), digest, f.path, backend.computes_sha256)
            if why:
                return RemoteCheck(False, f'{key}: {why}', refuted=True)
        for name in sorted(set(inc.manifest_sha256) - set(local)):
            key = key_join(prefix, name)
            remote = backend.head(key)
            if remote is None or remote.sha256 != inc.manifest_sha256[name] or \
                    remote.size != inc.manifest_size.get(name, remote.size):
                return RemoteCheck(False, f'{key}: not in the store as the manifest states',
                                   refuted=True)
    except LocalError as exc:
        return RemoteCheck(False, f'local: {exc}')
    except UploadError as exc:
        return RemoteCheck(False, f'store: {exc}')
    return RemoteCheck(True)


class Pruner:
    """Deletes verified incidents from ``evidence_dir/spool`` under :class:`PruneConfig`.

    Args:
        disk_free: how free bytes are measured (the filesystem by default).
        trail: signs the ``pruned`` ledger entry each delete needs; None: never deletes.
    """

    def __init__(self, evidence_dir: Path, backend: Backend, bucket_prefix: str,
                 config: PruneConfig, part_size: int,
                 disk_free: Callable[[Path], int] | None = None,
                 trail: Trail | None = None) -> None:
        self.evidence_dir = Path(evidence_dir)
        self.backend, self.bucket_prefix = backend, bucket_prefix
        self.config, self.part_size = config, part_size
        self.trail = trail
        self._disk_free = disk_free or (lambda p: shutil.disk_usage(p).free)
        self._recheck_at: dict[str, float] = {}
        self.deleted_total = 0
        #: Verified records a full disk kept out of ``upload.json`` (held for this process).
        self.unwritten: dict[str, dict[str, Any]] = {}

    def uploaded(self, name: str) -> None:
        """``name`` was just uploaded and verified: a refuted check of it no longer holds."""
        self._recheck_at.pop(name, None)

    def free_bytes(self) -> int:
        """Free bytes on the evidence filesystem (or under the quota, if smaller)."""
        where = self.evidence_dir
        while not where.exists() and where.parent != where:
            where = where.parent          # not created yet: the disk it will be on
        try:
            free = self._disk_free(where)
        except OSError:
            return 0
        if self.config.max_evidence_bytes > 0:
            free = min(free, self.config.max_evidence_bytes - dir_size(self.evidence_dir))
        return free

    def _candidates(self) -> list[tuple[str, Path, dict[str, Any]]]:
        """Incidents whose ``upload.json`` claims verified (a hint only), by name."""
        out = []
        try:
            entries = sorted(os.scandir(self.evidence_dir / 'spool'), key=lambda e: e.name)
        except OSError:
            return out
        for e in entries:
            if e.name.startswith('.') or not e.is_dir(follow_symlinks=False):
                continue
            record = read_record(Path(e.path)) or self.unwritten.get(e.name)
            if record and record.get('verified') is True:
                out.append((e.name, Path(e.path), record))
        return out

    def run(self, now: float, public_key: bytes | None = None) -> PruneResult:
        """One pass: age-based deletions, then oldest-first until free space is back."""
        result = PruneResult()
        cfg = self.config
        if not cfg.enabled:
            return result
        try:                    # a prune the ledger already records must complete
            result.finished = ev.finish_pruning(self.evidence_dir)
        except OSError as exc:
            result.errors.append(f'cannot finish a half-done prune: {exc}')
        if cfg.keep_local_s < 0:            # space only: read nothing while there is room
            result.free_bytes = self.free_bytes()
            if result.free_bytes >= cfg.min_free_bytes:
                return result
        cands = []
        for name, path, record in self._candidates():
            try:
                inc = read_incident(path, public_key)
            except SpoolError as exc:
                result.kept[name] = f'{exc.reason}: {exc}'
                continue
            cands.append((inc, record))
        cands.sort(key=lambda c: (c[0].sequence is None, c[0].sequence or 0,
                                  c[0].start_time, c[0].path.name))
        if cfg.keep_local_s >= 0:
            for inc, record in list(cands):
                at = _number(record.get('verified_at'))
                if at is not None and now - at >= cfg.keep_local_s and \
                        self._prune(inc, record, now, result, f'kept {cfg.keep_local_s:g} s '
                                    'after it verified'):
                    cands.remove((inc, record))
        if cfg.min_free_bytes > 0:
            free = self.free_bytes()
            for inc, record in cands:
                if free >= cfg.min_free_bytes:
                    break
                if self._prune(inc, record, now, result, f'disk pressure: {free} bytes free < '
                               f'min_free_bytes {cfg.min_free_bytes}'):
                    free = self.free_bytes()
            result.free_bytes = free
            result.low_disk = free < cfg.min_free_bytes
        return result

    def _prune(self, inc: Incident, record: dict[str, Any], now: float, result: PruneResult,
               why: str) -> bool:
        name = inc.path.name
        if self.trail is None or not self.trail.ready():
            result.kept[name] = 'no device signing key: no prune record can be signed'
            return False
        if self._recheck_at.get(name, 0.0) > now:
            result.kept.setdefault(name, 'remote copy did not verify; waiting to look again')
            return False
        check = check_remote_copy(inc, self.backend, self.bucket_prefix, self.part_size)
        if not check.ok:
            result.kept[name] = check.why
            self._recheck_at[name] = now + self.config.recheck_s
            if check.refuted:
                self._requeue(inc, check.why, now)
                result.requeued.append(name)
            return False
        refused = self.trail.before_prune(name, inc.sequence, inc.manifest_digest, record, now)
        if refused:                               # no signed proof on disk: delete nothing
            result.kept[name] = refused
            self._recheck_at[name] = now + self.config.recheck_s
            return False
        try:
            ev.prune_incident(self.evidence_dir, inc.path, inc.incident_id, inc.sequence,
                              inc.manifest_digest)
        except OSError as exc:     # left as .pruning-<name>: the next pass finishes it
            result.kept[name] = f'cannot delete: {exc}'
            result.errors.append(f'{name}: cannot delete: {exc}')
            return False
        self.trail.after_prune(name, inc.sequence, inc.manifest_digest, record, now, why)
        self._recheck_at.pop(name, None)
        self.deleted_total += 1
        result.deleted.append((name, why))
        return True

    @staticmethod
    def _requeue(inc: Incident, why: str, now: float) -> None:
        """``upload.json`` said verified but the store disagrees: upload it again."""
        previous = read_record(inc.path)
        atomic_write_json(inc.path / RECORD, {'verified': False, 'refuted_at': now,
                                              'refuted_because': why, 'previous': previous})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        v = float(value)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


__all__ = ['PruneConfig', 'PruneResult', 'Pruner', 'RemoteCheck', 'check_remote_copy',
           'dir_size']
