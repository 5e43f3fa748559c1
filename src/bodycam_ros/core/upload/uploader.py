"""The uploader: drains the spool to a bucket, most urgent incident first, never giving up.

One worker thread (or the caller's thread for ``bodycam upload --once``) takes the most urgent
sealed incident, uploads its proxy then its files (each resumable, see ``multipart``),
verifies every remote object, and only then writes ``upload.json``. Errors back off
exponentially with jitter; an officer-down or weapon incident that arrives mid-upload takes
over at the next part boundary.

Nothing about one incident can stop the others: before upload its manifest signature and
every file's SHA-256 are checked against the signed manifest, and an incident that fails is
quarantined (``quarantine``); any other error costs that incident a back-off, not the queue.
The uploader is also the only pruner (``prune``): it deletes a local incident only after
asking the bucket, at that moment, whether it holds exactly that incident, and after the signed
``pruned`` ledger entry is on disk. Each verified upload is a signed ``uploaded`` ledger entry;
the ledger and the audit log go to the bucket after every incident and when a drain ends
(``trail``). Without the device key it still uploads, but never prunes.

Encrypted incidents (age, ``video.mp4.age``) are opaque bytes listed in the manifest: the
unit cannot read the video, so no proxy is made for them (said once, not an error).
"""
from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.upload.backends import S3_MIN_PART, Backend, key_join
from bodycam_ros.core.upload.errors import (BucketMissingError, Cancelled, CredentialsError,
                                            EvidenceRejected, LocalError, UploadError,
                                            VerifyError)
from bodycam_ros.core.upload.multipart import FileDigest, Transfer, UploadState, verify_remote
from bodycam_ros.core.upload.proxy import ProxyJob
from bodycam_ros.core.upload.prune import PruneConfig, Pruner, PruneResult
from bodycam_ros.core.upload.quarantine import Quarantine, QuarantineRecord, fingerprint
from bodycam_ros.core.upload.queue import (RECORD, Incident, Reason, SpoolScan,
                                           atomic_write_json, safe_component, scan_spool)
from bodycam_ros.core.upload.throttle import Backoff, RateLimiter, RateMeter
from bodycam_ros.core.upload.trail import Signer, Trail

MiB = 1024 * 1024
PROXY_NAME = 'proxy.mp4'
VIDEO_NAME = 'video.mp4'


class _ProxyReady(Exception):
    """The proxy finished transcoding: send it before the next evidence part."""


@dataclass(frozen=True)
class UploadConfig:
    """How to upload. Sizes in bytes, rates in bytes/s, times in seconds."""
    evidence_dir: Path
    part_size: int = 8 * MiB
    #: Files larger than this go up in parts (resumable); smaller ones in one PUT.
    multipart_threshold: int = 8 * MiB
    #: Uplink cap; 0 = unlimited.
    bandwidth_bps: float = 0.0
    #: Upload a low-resolution transcode of video.mp4 before the evidence files.
    proxy: bool = False
    proxy_height: int = 360
    #: Delete the local incident this long after it verified; -1 = never.
    keep_local_s: float = -1.0
    #: Disk pressure: below this many free bytes, delete verified incidents oldest first
    #: (each only after its remote copy verifies again); 0 = never for space.
    min_free_bytes: int = 0
    #: If > 0, evidence may use at most this much (as the recorder's quota).
    max_evidence_bytes: int = 0
    #: How often a prune pass runs while uploading or idle [s] (and after each upload).
    prune_check_s: float = 10.0
    base_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    #: How often the spool is re-read when idle (a nudge wakes it sooner).
    poll_s: float = 1.0
    #: The device's public key (PEM, the recorder's ``key_dir/device_ed25519.pub``) that
    #: manifests must be signed with. None or absent: ``evidence_dir/keys/`` (format 1
    #: units), else each manifest's own key (proves integrity since sealing, not origin).
    device_key: Path | None = None
    #: The device key directory (``core.keys``): signs the ledger's uploaded/pruned entries
    #: and audit lines. None (and no signer given): upload only, never prune.
    key_dir: Path | None = None
    #: The unit as registered with the agency ('' = key_dir's device.json, else host name).
    device_id: str = ''

    def __post_init__(self) -> None:
        PruneConfig(self.keep_local_s, self.min_free_bytes, self.max_evidence_bytes)
        if self.part_size < 1 or self.multipart_threshold < 0:
            raise ValueError(f'part_size {self.part_size} / multipart_threshold '
                             f'{self.multipart_threshold} out of range')
        if self.bandwidth_bps < 0:
            raise ValueError(f'bandwidth_bps {self.bandwidth_bps} < 0')
        if self.max_backoff_s < self.base_backoff_s or self.base_backoff_s <= 0:
            raise ValueError(f'need 0 < base_backoff_s <= max_backoff_s, got '
                             f'{self.base_backoff_s}, {self.max_backoff_s}')


@dataclass(frozen=True)
class UploadStatus:
    """A snapshot for ``uploader/status`` and progress bars."""
    state: str = 'starting'    # idle|checking|proxy|uploading|verifying|backoff|stopped
    queue_length: int = 0
    bytes_pending: int = 0
    current_incident: str = ''
    rate_bps: float = 0.0
    last_error: str = ''
    #: Class name of the last error while it is still unresolved ('' once an upload works).
    error_kind: str = ''
    consecutive_failures: int = 0
    verified_total: int = 0
    #: Bytes confirmed in the store this session (progress), and bytes sent (incl. resends).
    bytes_done: int = 0
    bytes_sent: int = 0
    #: Incidents in the spool set aside as untrustworthy (kept on disk, never uploaded).
    quarantined: int = 0
    #: The newest quarantine as ``<incident>: <reason>`` ('' when there is none).
    quarantine_reason: str = ''
    recording: int = 0
    backoff_until: float = 0.0
    pruned_total: int = 0
    #: Free bytes as the pruner measures them (None until it has looked, or if it never does).
    free_bytes: int | None = None
    low_disk: bool = False

    @property
    def config_error(self) -> bool:
        """Credentials or bucket are wrong: someone has to act."""
        return self.error_kind in (CredentialsError.__name__, BucketMissingError.__name__)


@dataclass(frozen=True)
class UploadEvent:
    # verified|object|proxy|proxy_ready|error|warning|quarantined|released|deleted|yield|
    # requeued
    kind: str
    incident_id: str
    message: str


@dataclass
class DrainResult:
    verified: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    #: Spool directory -> ``reason: message`` for every quarantined incident in the spool.
    quarantined: dict[str, str] = field(default_factory=dict)
    remaining: int = 0
    error: str = ''
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.remaining and not self.error and \
            not self.stopped and not self.quarantined


class Uploader:
    """Uploads sealed incidents from ``config.evidence_dir/spool`` to ``backend``.

    Use :meth:`drain` to empty the spool in the calling thread, or :meth:`start` /
    :meth:`stop` to run in the background (the node). Thread-safe :meth:`status`.
    """

    def __init__(self, backend: Backend, config: UploadConfig, key_prefix: str = '', *,
                 on_event: Callable[[UploadEvent], None] | None = None,
                 rng: random.Random | None = None,
                 disk_free: Callable[[Path], int] | None = None,
                 signer: Signer | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if backend.supports_multipart and config.part_size < S3_MIN_PART:
            raise ValueError(f'part_size {config.part_size} < {S3_MIN_PART} (S3 minimum)')
        self.backend, self.config, self.key_prefix = backend, config, key_prefix
        self._on_event = on_event or (lambda e: None)
        self._limiter = RateLimiter(config.bandwidth_bps) if config.bandwidth_bps > 0 else None
        self._meter = RateMeter()
        self._backoff = Backoff(config.base_backoff_s, config.max_backoff_s, rng)
        self._lock = threading.Lock()
        self._status = UploadStatus()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked = False
        self._verified_ids: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._incident_failures: dict[str, int] = {}
        self._proxy_jobs: dict[str, ProxyJob] = {}
        self._pending_base = 0
        self._current_done = 0
        self._poll_s = config.poll_s
        self._quarantine = Quarantine(config.evidence_dir)
        #: Incidents whose files were checked against their manifest: name -> fingerprint.
        self._evidence_ok: dict[str, str] = {}
        #: Incidents a drain gave up on (excluded from yielding too).
        self._given_up: set[str] = set()
        self._key_cache: tuple[tuple[int, int, str], bytes | None] | None = None
        self._key_warned = False
        self._clock = clock
        self.trail = Trail(config.evidence_dir, key_dir=config.key_dir, signer=signer,
                           device_id=config.device_id,
                           warn=lambda m: self._emit('warning', '', m))
        self._pruner = Pruner(config.evidence_dir, backend, key_prefix,
                              PruneConfig(config.keep_local_s, config.min_free_bytes,
                                          config.max_evidence_bytes),
                              config.part_size, disk_free, trail=self.trail)
        self._next_prune = 0.0
        self._proxy_skip_said = False
        #: Verified incidents whose ``uploaded`` ledger entry is not written yet.
        self._unlogged: dict[str, tuple[Path, dict[str, Any]]] = {}
        self._heal_stamp: tuple[int, int, int] | None = None
        #: What the last put of the ledger/audit log said ('' = in the bucket).
        self.trail_error = ''
        if self.config.keep_local_s >= 0 or self.config.min_free_bytes > 0:
            self.trail.ready()             # say now (once) if nothing will ever be pruned

    # ------------------------------------------------------------------ public
    def status(self) -> UploadStatus:
        with self._lock:
            st = self._status
        return replace(st, rate_bps=self._meter.rate())

    def nudge(self) -> None:
        """Something changed in the spool (a recorder status); look again now."""
        self._wake.set()

    def start(self) -> None:
        """Run in a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name='uploader', daemon=True)
        self._thread.start()

    def stop(self, drain_s: float = 0.0, settle_s: float = 0.5) -> None:
        """Stop the background thread; first, for up to ``drain_s``, upload what is sealed.

        While draining, incidents the recorder is still sealing (``recording/``) are waited
        for: on shutdown the recorder seals its clip at the same moment we are asked to stop.
        """
        if self._thread is not None and drain_s > 0:
            deadline = time.monotonic() + drain_s
            self._poll_s = 0.1
            self.nudge()
            quiet_since = None
            while time.monotonic() < deadline:
                st = self.status()
                idle = st.state in ('idle', 'stopped') and st.queue_length == 0 and \
                    st.recording == 0
                if idle:
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since >= settle_s:
                        break
                else:
                    quiet_since = None
                if not self._thread.is_alive():
                    break
                time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.publish_trail()
        self._set(state='stopped')

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def drain(self, *, fail_fast: bool = True, max_failures: int | None = 6,
              timeout_s: float | None = None) -> DrainResult:
        """Upload everything sealed now, in this thread; return when the spool is empty.

        Args:
            fail_fast: stop at the first credentials/bucket error (retrying cannot help).
            max_failures: give up after this many consecutive failures (per incident for
                local errors).
            timeout_s: give up after this long.
        """
        self._stop.clear()
        self._given_up.clear()
        deadline = time.monotonic() + timeout_s if timeout_s else None
        result = self._loop(until_empty=True, fail_fast=fail_fast, max_failures=max_failures,
                            deadline=deadline)
        if self.publish_trail() and not result.error:
            result.error = f'ledger/audit log not in the bucket: {self.trail_error}'
        spool = self.config.evidence_dir / 'spool'
        result.quarantined = {r.incident: f'{r.reason}: {r.message}'
                              for r in self._quarantine.current(spool)}
        return result

    def quarantined(self) -> list[QuarantineRecord]:
        """The quarantine records of incidents still in the spool, oldest first."""
        return self._quarantine.current(self.config.evidence_dir / 'spool')

    # ------------------------------------------------------------------ loop
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._loop(until_empty=False, fail_fast=False, max_failures=None, deadline=None)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any bug
                self._emit('error', '', f'internal error: {exc!r}')
                self._set(last_error=f'internal error: {exc!r}', error_kind=type(exc).__name__)
                self._stop.wait(self.config.max_backoff_s)

    def _loop(self, *, until_empty: bool, fail_fast: bool, max_failures: int | None,
              deadline: float | None) -> DrainResult:
        result = DrainResult()
        consecutive = 0
        while True:
            if self._stop.is_set():
                result.stopped = True
                break
            if deadline is not None and time.monotonic() > deadline:
                result.error = result.error or 'timed out'
                break
            self._maybe_prune()      # first: it may send a refuted "verified" back to the queue
            scan = self._scan()
            now = time.time()
            pending = [i for i in scan.pending if i.incident_id not in result.failed
                       and i.path.name not in result.failed]
            ready = [i for i in pending if self._retry_at.get(i.path.name, 0.0) <= now]
            result.remaining = len(pending)
            if not ready:
                self._set(state='idle', current_incident='')
                if until_empty and not pending:
                    pruned = self._maybe_prune(force=True)
                    if pruned is not None and pruned.requeued:
                        continue
                    break
                wait = self._poll_s
                if pending:
                    wait = min(wait, max(0.05, min(self._retry_at.get(i.path.name, now)
                                                   for i in pending) - now))
                self._wake.wait(wait)
                self._wake.clear()
                continue
            inc = ready[0]
            try:
                try:
                    self.upload_incident(inc)
                except (Cancelled, UploadError):
                    raise
                except OSError as exc:          # the local disk: state, record, proxy file
                    raise LocalError(f'local I/O error: {exc}') from exc
                except Exception as exc:  # noqa: BLE001 - one incident must not stop the rest
                    # A damaged state.json (or a bug): start this incident afresh; the
                    # store is asked what it already holds, so nothing is lost or doubled.
                    try:
                        UploadState(self._work_dir(inc), self.backend.url).reset()
                    except OSError:
                        pass
                    raise LocalError(f'internal error, state reset: {exc!r}') from exc
            except Cancelled:
                continue      # stop requested (checked above) or yielded to an urgent one
            except EvidenceRejected as exc:
                self._quarantine_incident(inc.path.name, inc.path, exc.reason, str(exc),
                                          exc.details)
                continue      # not a failure of the uploader: the next incident goes on
            except UploadError as exc:
                consecutive += 1
                msg = str(exc)
                self._emit('error', inc.incident_id, msg)
                self._set(last_error=msg, error_kind=type(exc).__name__,
                          consecutive_failures=consecutive)
                if not exc.remote:
                    n = self._incident_failures.get(inc.path.name, 0) + 1
                    self._incident_failures[inc.path.name] = n
                    self._retry_at[inc.path.name] = time.time() + min(
                        self.config.max_backoff_s, self.config.base_backoff_s * 2 ** n)
                    if max_failures is not None and n >= max_failures:
                        result.failed[inc.path.name] = msg
                        self._given_up.add(inc.path.name)
                    continue
                if not exc.retryable:
                    self._checked = False   # look at the bucket again before the next try
                if (fail_fast and not exc.retryable) or \
                        (max_failures is not None and consecutive >= max_failures):
                    result.error = msg
                    result.remaining = len(pending)
                    break
                delay = self._backoff.next_delay()
                self._set(state='backoff', backoff_until=time.time() + delay)
                self._stop.wait(delay)
                continue
            consecutive = 0
            self._backoff.reset()
            self._retry_at.pop(inc.path.name, None)
            self._incident_failures.pop(inc.path.name, None)
            result.verified.append(inc.incident_id)
            self._set(error_kind='', consecutive_failures=0, backoff_until=0.0)
        scan = self._scan()
        result.remaining = len(scan.pending)     # what really remains, failed ones too
        if self._stop.is_set():
            result.stopped = True
        return result

    # ------------------------------------------------------------------ one incident
    def upload_incident(self, inc: Incident) -> dict[str, Any]:
        """Upload, verify and record one incident; returns the ``upload.json`` record.

        Raises:
            UploadError: see ``errors`` (state kept for the next attempt).
            Cancelled: asked to stop, or a more urgent incident arrived.
        """
        self._ensure_checked()
        self._check_evidence(inc)
        work = self._work_dir(inc)
        state = UploadState(work, self.backend.url)
        if state.repaired:
            self._emit('warning', inc.incident_id, f'{state.path} was damaged; entries dropped, '
                       'asking the store what it already holds')
        prefix = inc.key_prefix(self.key_prefix)
        job = self._proxy_job(inc, work)
        evidence = [(f.name, f.path) for f in inc.files]
        with self._lock:
            self._current_done = 0
        self._set(state='uploading', current_incident=inc.incident_id)

        digests: dict[str, FileDigest] = {}
        current = ['']

        def check_yield() -> None:
            self._check_yield(inc)
            if job is not None and job.ready and PROXY_NAME not in digests and \
                    current[0] != PROXY_NAME:
                raise _ProxyReady()

        while True:
            todo = [(PROXY_NAME, job.dst)] if job is not None and job.ready and \
                PROXY_NAME not in digests else []
            todo += [(n, p) for n, p in evidence if n not in digests]
            if not todo:
                if job is None or job.done:
                    break
                self._set(state='proxy')          # evidence is up; the transcode is not
                job.wait(0.2)
                self._check_yield(inc)
                continue
            name, path = todo[0]
            current[0] = name
            if name == PROXY_NAME and job is not None and job.info is not None:
                info = job.info
                self._emit('proxy', inc.incident_id, f'{info.width}x{info.height} '
                           f'{info.duration_s:.0f} s, {info.size / 1e6:.1f} MB, transcoded in '
                           f'{job.seconds:.1f} s')
            transfer = Transfer(
                backend=self.backend, key=key_join(prefix, name), path=path, state=state,
                name=name, part_size=self.config.part_size,
                multipart_threshold=self.config.multipart_threshold, limiter=self._limiter,
                on_progress=self._on_sent, on_confirmed=self._on_confirmed, stop=self._stop,
                check_yield=check_yield, metadata={'incident': inc.incident_id})
            try:
                digests[name] = transfer.run()
            except _ProxyReady:
                continue                           # the proxy goes first, then this resumes
            url = self.backend.object_url(key_join(prefix, name))
            self._emit('object', inc.incident_id, f'{url} ({digests[name].size} bytes)')
            if name == PROXY_NAME:
                # Administration watches the proxy long before the evidence is all up:
                # say so only once the store holds exactly these bytes.
                why = verify_remote(self.backend.head(key_join(prefix, name)), digests[name],
                                    path, self.backend.computes_sha256)
                if not why:
                    self._emit('proxy_ready', inc.incident_id, f'viewable at {url}')
            self._check_yield(inc)
        proxy_error = job.error if job is not None else ''
        if proxy_error and proxy_error != 'cancelled':
            self._emit('warning', inc.incident_id, f'no proxy: {proxy_error}')
        objects = [(n, p) for n, p in [(PROXY_NAME, job.dst if job else Path())] + evidence
                   if n in digests]

        self._set(state='verifying')
        record_objects: dict[str, dict[str, Any]] = {}
        for name, path in objects:
            key = key_join(prefix, name)
            remote = self.backend.head(key)
            why = verify_remote(remote, digests[name], path, self.backend.computes_sha256)
            if why:
                state.objects[name]['uploaded'] = False
                state.save()
                raise VerifyError(f'{key}: {why}; uploading it again')
            assert remote is not None
            record_objects[name] = {'key': key, 'size': remote.size,
                                    'sha256': digests[name].sha256, 'etag': remote.etag,
                                    'checksum_sha256': remote.checksum_sha256}
        proxy_record = record_objects.pop(PROXY_NAME, None) if job is not None else None
        mismatch = sorted(n for n, d in digests.items()
                          if n in inc.manifest_sha256 and inc.manifest_sha256[n] != d.sha256)
        if mismatch:
            # Checked before the upload; what went up is not what was signed after all.
            self._evidence_ok.pop(inc.path.name, None)
            raise EvidenceRejected(
                f'{", ".join(mismatch)} changed during the upload: what reached the bucket '
                'differs from the signed manifest; not marked uploaded',
                Reason.CHANGED_DURING_UPLOAD, [f'{n}: SHA-256 differs' for n in mismatch])
        verified_at = time.time()
        record = {
            'verified': True,
            'bucket': self.backend.url,
            'incident_id': inc.incident_id,
            'key_prefix': prefix,
            'objects': record_objects,
            'proxy': proxy_record,
            'proxy_error': proxy_error or None,
            'manifest_mismatch': mismatch,
            'missing': sorted(set(inc.manifest_sha256) - set(digests)),
            'manifest_sha256': inc.manifest_digest,
            'signature_key': 'device' if self._public_key() is not None else 'manifest',
            'verified_at': verified_at,
            'sequence': inc.sequence,
            'encrypted': inc.encrypted,
        }
        try:
            atomic_write_json(inc.path / RECORD, record)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Verified in the store all the same: held in memory so it can be pruned and
            # the space come back (the next pass, or the next start, writes it again).
            self._pruner.unwritten[inc.path.name] = record
            self._emit('error', inc.incident_id, f'cannot write {RECORD}: {exc}; verified, '
                       'kept in memory (prunable)')
        state.clear()
        self._proxy_jobs.pop(inc.path.name, None)
        self._evidence_ok.pop(inc.path.name, None)
        self._pruner.uploaded(inc.path.name)
        if self._quarantine.release(inc.path.name):
            self._emit('released', inc.incident_id, 'no longer quarantined: it verified')
        self._verified_ids.add(inc.path.name)
        with self._lock:
            st = self._status
            self._status = replace(st, verified_total=st.verified_total + 1,
                                   queue_length=max(0, st.queue_length - 1),
                                   bytes_pending=max(0, self._pending_base - self._current_done))
            self._pending_base = max(0, self._pending_base - inc.size)
            self._current_done = 0
        self._emit('verified', inc.incident_id, f'{len(record_objects)} objects verified '
                   f'under {self.backend.object_url(prefix)}/')
        if not self.trail.uploaded(inc.path.name, inc.sequence, inc.manifest_digest, record,
                                   self._clock()):
            self._unlogged[inc.path.name] = (inc.path, record)    # its seal comes later
        self._maybe_prune(force=True)
        self.publish_trail()
        return record

    def _heal(self) -> None:
        """Log ``uploaded`` for verified incidents still waiting for it (their seal reached
        the ledger after the upload, or a crash came between), when the ledger changed."""
        if not self._unlogged or not self.trail.ready():
            return
        try:
            st = self.trail.ledger.path.stat()      # type: ignore[union-attr]
            stamp = (st.st_size, st.st_mtime_ns, len(self._unlogged))
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._heal_stamp:
            return
        self._heal_stamp = stamp
        waiting = {n: v for n, v in self._unlogged.items() if v[0].is_dir()}
        logged = self.trail.heal(waiting, self._clock())
        self._unlogged = {n: v for n, v in waiting.items() if n not in logged}
        if logged:
            self.publish_trail()

    def publish_trail(self) -> bool:
        """Put the ledger and audit log to the bucket if they changed; True when that
        failed (``trail_error`` says why; the next call tries again)."""
        try:
            self.trail_error = self.trail.publish(self.backend, self.key_prefix)
        except OSError as exc:
            self.trail_error = f'local: {exc}'
        if self.trail_error:
            self._emit('warning', '', f'ledger/audit log not uploaded: {self.trail_error}')
        return bool(self.trail_error)

    # ------------------------------------------------------------------ helpers
    def _work_dir(self, inc: Incident) -> Path:
        return self.config.evidence_dir / 'upload' / safe_component(inc.path.name)

    def _proxy_job(self, inc: Incident, work: Path) -> ProxyJob | None:
        """The incident's transcode, started once (kept across attempts and pre-emptions)."""
        names = {f.name for f in inc.files}
        if self.config.proxy and inc.encrypted and not self._proxy_skip_said:
            self._proxy_skip_said = True
            self._emit('info', inc.incident_id, 'no proxy for encrypted incidents: the video '
                       'is encrypted to the agency and this unit cannot read it')
        if not self.config.proxy or inc.encrypted or VIDEO_NAME not in names or \
                PROXY_NAME in names:
            return None
        job = self._proxy_jobs.get(inc.path.name)
        if job is None or (job.done and job.error == 'cancelled'):
            job = ProxyJob(inc.path / VIDEO_NAME, work / PROXY_NAME, self.config.proxy_height,
                           stop=self._stop)
            self._proxy_jobs[inc.path.name] = job
        return job

    def _ensure_checked(self) -> None:
        if self._checked:
            return
        self._set(state='checking')
        warning = self.backend.check()
        if warning:
            self._emit('warning', '', warning)
        self._checked = True

    def _check_yield(self, current: Incident) -> None:
        if self._stop.is_set():
            raise Cancelled('stop requested')
        if current.urgent:
            return
        now = time.time()
        for other in self._scan_spool().pending:
            if not other.urgent:
                break
            name = other.path.name
            if self._retry_at.get(name, 0.0) > now or name in self._given_up:
                continue          # backing off or given up: it cannot use the link now
            self._emit('yield', current.incident_id,
                       f'pausing for urgent incident {other.incident_id}')
            raise Cancelled('urgent incident waiting')

    def _check_evidence(self, inc: Incident) -> None:
        """Every local file and the signature against the signed manifest, before upload.

        Raises:
            EvidenceRejected: the incident is not what its device signed.
        """
        name = inc.path.name
        mark = fingerprint(inc.path, self._key_mark())
        if self._evidence_ok.get(name) == mark:
            return                 # checked already and untouched since (a resumed upload)
        self._set(state='checking', current_incident=inc.incident_id)
        try:
            chk = ev.check_incident(inc.path, self._public_key())
        except OSError as exc:
            raise LocalError(f'cannot read {name} to check it: {exc}') from exc
        except (ValueError, RecursionError) as exc:
            raise EvidenceRejected(f'{name}: manifest cannot be checked: {exc!r}'[:300],
                                   Reason.MANIFEST_UNREADABLE) from None
        if not chk.ok:
            files = {p.name for p in chk.bad_files} - {ev.MANIFEST, ev.SIGNATURE}
            reason = Reason.BAD_SIGNATURE if not chk.signature_valid else \
                Reason.FILE_MISMATCH if files else Reason.MANIFEST_INVALID
            raise EvidenceRejected(f'{name}: {"; ".join(chk.errors)}'[:500], reason,
                                   chk.errors)
        self._evidence_ok[name] = mark

    def _public_key(self) -> bytes | None:
        """The device's own key (``config.device_key``, else the legacy ``keys/`` in the
        evidence directory), or None when there is none (then a manifest's own key proves
        integrity only). Read again whenever the file changes (provisioned after start)."""
        legacy = self.config.evidence_dir / 'keys' / f'{ev.KEY_NAME}.pub'
        for path in (self.config.device_key, legacy):
            if path is None:
                continue
            try:
                st = path.stat()
                break
            except OSError:
                continue
        else:
            self._key_cache = None
            return None
        stamp = (st.st_mtime_ns, st.st_size, str(path))
        if self._key_cache is None or self._key_cache[0] != stamp:
            try:
                key: bytes | None = ev.load_public_key(path)
            except (OSError, ev.EvidenceError) as exc:
                key = None
                if not self._key_warned:
                    self._key_warned = True
                    self._emit('warning', '', f'device key unusable, checking signatures '
                               f"with each manifest's own key: {exc}")
            self._key_cache = (stamp, key)
        return self._key_cache[1]

    def _key_mark(self) -> str:
        """What a quarantine verdict depended on besides the files: the trusted key."""
        key = self._public_key()
        return ev.sha256_bytes(key)[:16] if key is not None else 'manifest-key'

    def _scan_spool(self) -> SpoolScan:
        mark = self._key_mark()
        return scan_spool(self.config.evidence_dir, skip=self._verified_ids,
                          public_key=self._public_key(),
                          skip_entry=lambda n, p: self._quarantine.holds(n, p, mark))

    def _quarantine_incident(self, name: str, path: Path, reason: str, message: str,
                             details: list[str]) -> None:
        """Set one incident aside: record why outside it, report it, touch none of it."""
        self._evidence_ok.pop(name, None)
        self._retry_at.pop(name, None)
        self._incident_failures.pop(name, None)
        self._proxy_jobs.pop(name, None)     # created only after the check; done by now
        try:
            self._quarantine.add(name, path, reason, message, time.time(), details,
                                 self._key_mark())
        except OSError as exc:
            self._emit('error', name, f'cannot write the quarantine record: {exc}')
        self._emit('quarantined', name, f'{reason}: {message} (kept as found)')
        self._set(quarantine_reason=f'{name}: {reason}')
        self._count_quarantined()

    def _count_quarantined(self) -> None:
        current = self._quarantine.current(self.config.evidence_dir / 'spool')
        last = current[-1] if current else None
        self._set(quarantined=len(current),
                  quarantine_reason=f'{last.incident}: {last.reason}' if last else '')

    def _scan(self) -> SpoolScan:
        scan = self._scan_spool()
        spool = self.config.evidence_dir / 'spool'
        self._unlogged.update({n: (spool / n, r) for n, r in scan.verified.items()})
        self._heal()
        self._verified_ids.update(scan.verified)
        for name, exc in scan.invalid.items():
            self._quarantine_incident(name, self.config.evidence_dir / 'spool' / name,
                                      exc.reason, str(exc), exc.details)
        if scan.skipped or scan.invalid or self.status().quarantined:
            self._count_quarantined()
        pending_bytes = sum(i.size for i in scan.pending)
        with self._lock:
            self._pending_base = pending_bytes
            self._status = replace(self._status, queue_length=len(scan.pending),
                                   bytes_pending=pending_bytes, recording=scan.recording)
        return scan

    def _maybe_prune(self, force: bool = False) -> PruneResult | None:
        """A prune pass (keep_local_s, disk pressure) at most every ``prune_check_s``."""
        if not self._pruner.config.enabled:
            return None
        now = time.monotonic()
        if not force and now < self._next_prune:
            return None
        self._next_prune = now + self.config.prune_check_s
        try:
            result = self._pruner.run(self._clock(), self._public_key())
        except OSError as exc:
            self._emit('warning', '', f'prune pass failed: {exc}')
            return None
        for name, why in result.deleted:
            self._verified_ids.discard(name)
            self._emit('deleted', name, f'local copy deleted ({why}); the bucket copy '
                       'verified just before and the signed prune record was logged first')
        if result.deleted or result.finished:
            self.publish_trail()
        for name in result.requeued:
            self._verified_ids.discard(name)
            self._emit('requeued', name, f'upload.json said verified but the bucket does not '
                       f'hold it ({result.kept.get(name, "")}); uploading it again')
            self.nudge()
        for name in result.finished:
            self._verified_ids.discard(name)
            self._emit('deleted', name, 'local copy deleted (a prune the ledger records, '
                       'left half-done by an earlier pass, completed)')
        for err in result.errors:
            self._emit('error', '', f'prune: {err}')
        if result.low_disk:
            kept = '; '.join(f'{n}: {w}' for n, w in sorted(result.kept.items())[:5])
            self._emit('warning', '', f'disk low: {result.free_bytes} bytes free < '
                       f'min_free_bytes {self.config.min_free_bytes}; ' +
                       (f'kept: {kept}' if kept else 'no verified incident left to delete'))
        self._set(pruned_total=self._pruner.deleted_total, free_bytes=result.free_bytes,
                  low_disk=result.low_disk)
        return result

    def _on_sent(self, n: int) -> None:
        self._meter.add(n)
        with self._lock:
            self._status = replace(self._status, bytes_sent=self._status.bytes_sent + n)

    def _on_confirmed(self, n: int) -> None:
        with self._lock:
            self._current_done += n
            self._status = replace(self._status, bytes_done=self._status.bytes_done + n,
                                   bytes_pending=max(0, self._pending_base - self._current_done))

    def _set(self, **fields: Any) -> None:
        with self._lock:
            self._status = replace(self._status, **fields)

    def _emit(self, kind: str, incident_id: str, message: str) -> None:
        self._on_event(UploadEvent(kind, incident_id, message))


__all__ = ['DrainResult', 'UploadConfig', 'UploadEvent', 'UploadStatus', 'Uploader']
