"""Upload sealed incidents to a bucket: resumable, verified, most urgent first.

Pure Python (boto3 and PyAV imported lazily); used by the ``uploader`` node and by
``bodycam upload``. See ``uploader.Uploader`` for the flow and ``errors`` for what each kind
of failure makes the uploader do.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bodycam_ros.core.upload.backends import (LOCK_CHOICES, S3_MIN_PART, SSE_CHOICES, Backend,
                                              BucketURL, FileBackend, RemoteObject, S3Backend,
                                              check_endpoint, open_backend, parse_bucket_url,
                                              read_credentials_file)
from bodycam_ros.core.upload.errors import (BucketMissingError, Cancelled, CredentialsError,
                                            EvidenceRejected, LocalError, TransientError,
                                            UploadError, UploadGone, VerifyError)
from bodycam_ros.core.upload.multipart import (FileDigest, UploadState, composite_etag,
                                               digest_file, verify_remote)
from bodycam_ros.core.upload.proxy import ProxyError, ProxyInfo, make_proxy
from bodycam_ros.core.upload.prune import (PruneConfig, Pruner, PruneResult, RemoteCheck,
                                           check_remote_copy)
from bodycam_ros.core.upload.quarantine import (QUARANTINE_DIR, Quarantine, QuarantineRecord,
                                                fingerprint)
from bodycam_ros.core.upload.queue import (RECORD, Incident, Reason, SpoolError, SpoolScan,
                                           atomic_write_json, is_verified, read_incident,
                                           read_record, scan_spool)
from bodycam_ros.core.upload.throttle import Backoff, RateLimiter, RateMeter, ThrottledReader
from bodycam_ros.core.upload.trail import LedgerIndex, Signer, Trail, put_bytes
from bodycam_ros.core.upload.uploader import (DrainResult, UploadConfig, UploadEvent,
                                              Uploader, UploadStatus)

DEFAULT_BUCKET = 'file://var/bucket'


def proxy_default(bucket: str | BucketURL) -> bool:
    """Proxies pay off over a slow uplink (s3), not for a local directory bucket."""
    parsed = parse_bucket_url(bucket) if isinstance(bucket, str) else bucket
    return parsed.scheme == 's3'


def create_uploader(bucket: str, evidence_dir: Path, *, proxy: bool | None = None,
                    s3_options: dict[str, Any] | None = None,
                    on_event: Callable[[UploadEvent], None] | None = None,
                    disk_free: Callable[[Path], int] | None = None,
                    signer: Signer | None = None,
                    clock: Callable[[], float] | None = None,
                    **config: Any) -> Uploader:
    """An :class:`Uploader` for a bucket URL.

    Args:
        proxy: None picks :func:`proxy_default` for the bucket.
        s3_options: ``S3Backend`` keywords (endpoint_url, region, profile, credentials_file,
            sse, kms_key_id, object_lock_mode, object_lock_days, allow_insecure_http).
        disk_free: how free bytes are measured for pruning (the filesystem by default).
        signer: the device key, instead of opening ``config['key_dir']``.
        clock: the time ledger and audit entries carry as ``ros_time`` (default wall time).
        config: further :class:`UploadConfig` fields (key_dir, device_id, ...).

    Raises:
        ValueError: a malformed bucket URL or configuration (plain http:// without
            allow_insecure_http, a credentials file readable by others, ...).
    """
    parsed = parse_bucket_url(bucket)
    options = (s3_options or {}) if parsed.scheme == 's3' else {}
    backend, prefix = open_backend(parsed, **options)
    cfg = UploadConfig(evidence_dir=Path(evidence_dir),
                       proxy=proxy_default(parsed) if proxy is None else proxy, **config)
    return Uploader(backend, cfg, prefix, on_event=on_event, disk_free=disk_free, signer=signer,
                    **({'clock': clock} if clock is not None else {}))


__all__ = [
    'DEFAULT_BUCKET', 'LOCK_CHOICES', 'LedgerIndex', 'RECORD', 'S3_MIN_PART', 'SSE_CHOICES',
    'Signer', 'Trail', 'check_endpoint', 'put_bytes', 'read_credentials_file', 'Backend',
    'Backoff', 'BucketMissingError',
    'BucketURL', 'Cancelled', 'CredentialsError', 'DrainResult', 'EvidenceRejected',
    'FileBackend', 'FileDigest', 'Incident', 'LocalError', 'ProxyError', 'ProxyInfo',
    'PruneConfig', 'PruneResult', 'Pruner', 'QUARANTINE_DIR', 'Quarantine',
    'QuarantineRecord', 'RateLimiter', 'RateMeter', 'Reason', 'RemoteCheck', 'RemoteObject',
    'S3Backend', 'SpoolError', 'SpoolScan', 'ThrottledReader', 'TransientError',
    'UploadConfig', 'UploadError', 'UploadEvent', 'UploadGone', 'UploadState', 'UploadStatus',
    'Uploader', 'VerifyError', 'atomic_write_json', 'check_remote_copy', 'composite_etag',
    'create_uploader', 'digest_file', 'fingerprint', 'is_verified', 'make_proxy',
    'open_backend', 'parse_bucket_url',
    'proxy_default', 'read_incident', 'read_record', 'scan_spool', 'verify_remote',
]
