"""Where incidents go: a local directory "bucket" or S3-compatible object storage.

Both keep the same object layout (``<prefix>/<device>/<yyyy-mm-dd>/<incident>/<file>``) so a
local bucket can be synced to the cloud later unchanged. The S3 backend speaks plain boto3 and
works with AWS S3, MinIO and Ceph RGW (``endpoint_url``).
"""
from __future__ import annotations

import base64
import configparser
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from bodycam_ros.core.upload.errors import (BucketMissingError, Cancelled, CredentialsError,
                                            TransientError, UploadError, UploadGone, VerifyError)
from bodycam_ros.core.fsio import fsync_dir
from bodycam_ros.core.upload.queue import safe_component
from bodycam_ros.core.upload.throttle import CHUNK

MiB = 1024 * 1024
#: S3's smallest part (all but the last); MinIO and Ceph enforce it too.
S3_MIN_PART = 5 * MiB
S3_MAX_PARTS = 10_000
#: Server-side encryption requested on every PUT and multipart upload (``s3_sse``):
#: SSE-S3 (AES256), SSE-KMS (aws:kms, with ``s3_kms_key_id``), or none for a store that
#: cannot (MinIO without a KMS rejects SSE headers).
SSE_CHOICES = ('AES256', 'aws:kms', 'none')
#: Object Lock retention put on every object where the bucket has Object Lock enabled.
LOCK_CHOICES = ('governance', 'compliance', 'off')


@dataclass(frozen=True)
class BucketURL:
    """``file://DIR`` or ``s3://bucket[/prefix]``; ``file://var/bucket`` is relative to cwd."""
    scheme: str
    bucket: str = ''
    prefix: str = ''
    path: Path | None = None

    def __str__(self) -> str:
        if self.scheme == 'file':
            return f'file://{self.path}'
        return f's3://{self.bucket}' + (f'/{self.prefix}' if self.prefix else '')


def parse_bucket_url(url: str) -> BucketURL:
    """Parse a bucket URL.

    Raises:
        ValueError: unknown scheme, empty bucket, credentials in the URL.
    """
    url = url.strip()
    if url.startswith('file://'):
        rest = url[len('file://'):]
        if not rest:
            raise ValueError(f'bucket {url!r}: file:// needs a directory, e.g. file://var/bucket')
        return BucketURL('file', path=Path(rest))
    parts = urlsplit(url)
    if parts.scheme != 's3':
        raise ValueError(f'bucket {url!r}: use file://DIR or s3://bucket/prefix')
    if '@' in parts.netloc:
        raise ValueError('bucket URL must not contain credentials; use the AWS credential '
                         'chain or a 0600 credentials_file')
    if not parts.netloc:
        raise ValueError(f'bucket {url!r}: no bucket name')
    if parts.query or parts.fragment:
        raise ValueError(f'bucket {url!r}: no query or fragment allowed')
    return BucketURL('s3', bucket=parts.netloc, prefix=parts.path.strip('/'))


@dataclass(frozen=True)
class RemoteObject:
    """What the store says about an object (HEAD)."""
    size: int
    #: MD5 of the bytes for a single PUT; composite ``md5(md5s)-N`` for multipart; None if the
    #: store has no ETag or it is not an MD5 (SSE-KMS).
    etag: str | None
    #: SHA-256 (hex) the uploader stored in metadata, or that a file store computed itself.
    sha256: str | None
    #: Server-side checksum (base64, ``-N`` suffix when composite) if the store returns one.
    checksum_sha256: str | None = None
    #: 'COMPOSITE' (checksum of part checksums) or 'FULL_OBJECT' when the store says.
    checksum_type: str | None = None
    part_size: int | None = None


@dataclass(frozen=True)
class RemotePart:
    number: int
    etag: str
    size: int


class Backend(Protocol):
    """An object store. All methods raise :class:`UploadError` subclasses (or Cancelled)."""
    url: str
    supports_multipart: bool
    #: When True, HEAD returns a checksum of the stored bytes the store computed itself.
    computes_sha256: bool
    #: False when ETags are not MD5s of the bytes (SSE-KMS): they then prove nothing.
    etag_is_md5: bool

    def object_url(self, key: str) -> str: ...
    def check(self) -> str: ...
    def head(self, key: str) -> RemoteObject | None: ...
    def put(self, key: str, body: BinaryIO, size: int, md5_b64: str, sha256_b64: str,
            metadata: Mapping[str, str]) -> str | None: ...
    def create_multipart(self, key: str, metadata: Mapping[str, str]) -> str: ...
    def upload_part(self, key: str, upload_id: str, number: int, body: BinaryIO, size: int,
                    md5_b64: str, sha256_b64: str) -> str: ...
    def list_parts(self, key: str, upload_id: str) -> dict[int, RemotePart] | None: ...
    def complete_multipart(self, key: str, upload_id: str,
                           parts: Sequence[tuple[int, str, str]]) -> str: ...
    def abort_multipart(self, key: str, upload_id: str) -> None: ...
    def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str]]: ...
    def close(self) -> None: ...


def key_join(*parts: str) -> str:
    return '/'.join(p.strip('/') for p in parts if p and p.strip('/'))


# --------------------------------------------------------------------------- file://

class FileBackend:
    """A directory laid out like a bucket. Writes go to a temp file, fsync, then rename.

    No multipart: a local copy restarts cheaply. HEAD hashes the stored file itself, so
    verification here checks the real bytes, not a claim in metadata.
    """
    supports_multipart = False
    computes_sha256 = True
    etag_is_md5 = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = f'file://{root}'

    def object_url(self, key: str) -> str:
        return f'file://{self.root}/{key}'

    def _path(self, key: str) -> Path:
        parts = key.split('/')
        if any(p in ('', '.', '..') for p in parts) or key.startswith('/'):
            raise UploadError(f'unsafe object key {key!r}')
        return self.root.joinpath(*parts)

    def check(self) -> str:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BucketMissingError(f'{self.url}: cannot create the bucket directory: '
                                     f'{exc.strerror}') from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise BucketMissingError(f'{self.url}: bucket directory is not writable')
        return ''

    def head(self, key: str) -> RemoteObject | None:
        path = self._path(key)
        try:
            with open(path, 'rb') as f:
                digest = hashlib.sha256()
                size = 0
                while chunk := f.read(MiB):
                    digest.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TransientError(f'{self.url}: cannot read {key}: {exc.strerror}') from None
        return RemoteObject(size=size, etag=None, sha256=digest.hexdigest())

    def put(self, key: str, body: BinaryIO, size: int, md5_b64: str, sha256_b64: str,
            metadata: Mapping[str, str]) -> str | None:
        dst = self._path(key)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            for stale in dst.parent.glob(f'.{dst.name}.*.tmp'):   # from a killed copy
                stale.unlink(missing_ok=True)
        except OSError as exc:
            raise BucketMissingError(f'{self.url}: cannot create {dst.parent}: '
                                     f'{exc.strerror}') from None
        tmp = dst.with_name(f'.{dst.name}.{uuid.uuid4().hex[:8]}.tmp')
        sha = hashlib.sha256()
        written = 0
        try:
            with open(tmp, 'wb') as out:
                while chunk := body.read(CHUNK):
                    out.write(chunk)
                    sha.update(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if written != size or base64.b64encode(sha.digest()).decode() != sha256_b64:
                raise VerifyError(f'{key}: copied {written} bytes with a different SHA-256 '
                                  f'than the {size} bytes read before (file changed?)')
            os.replace(tmp, dst)
            fsync_dir(dst.parent, best_effort=True)
        except OSError as exc:
            raise TransientError(f'{self.url}: writing {key}: {exc.strerror}') from None
        finally:
            tmp.unlink(missing_ok=True)
        return None

    def create_multipart(self, key, metadata):  # pragma: no cover - never called
        raise UploadError('file:// has no multipart uploads')

    upload_part = list_parts = complete_multipart = abort_multipart = create_multipart

    def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str]]:
        return []

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- s3://

_CREDENTIAL_CODES = {'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidToken',
                     'ExpiredToken', 'TokenRefreshRequired', 'InvalidSecurity',
                     'AccessDenied', 'AllAccessDisabled', 'AccountProblem', '403',
                     'InvalidClientTokenId', 'UnrecognizedClientException'}
_TRANSIENT_CODES = {'SlowDown', 'RequestTimeout', 'ServiceUnavailable', 'InternalError',
                    'Throttling', 'ThrottlingException', 'RequestTimeTooSkewed', '500', '502',
                    '503', '504', 'OperationAborted'}
_DIGEST_CODES = {'BadDigest', 'InvalidDigest', 'XAmzContentSHA256Mismatch'}


def read_credentials_file(path: Path, profile: str = '') -> tuple[str, str, str]:
    """(access key id, secret key, session token or '') from an AWS shared-credentials style
    file (``[default]`` or ``[<profile>]`` with ``aws_access_key_id``,
    ``aws_secret_access_key``, optional ``aws_session_token``).

    A file readable by group or others is refused: the keys may already have been copied.

    Raises:
        ValueError: unreadable, mode not 0600/0400, or the profile or a key is missing (the
            message names the file, never a value from it).
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ValueError(f'credentials_file {str(path)!r}: {exc.strerror}') from None
    if st.st_mode & 0o077:
        raise ValueError(f'credentials_file {str(path)!r} has mode {st.st_mode & 0o777:04o}; '
                         f'it must be 0600 (or 0400): run chmod 600 {path}')
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read_string(path.read_text(), source=str(path))
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise ValueError(f'credentials_file {str(path)!r} is not an AWS credentials file '
                         f'({type(exc).__name__})') from None
    section = profile or 'default'
    if not cp.has_section(section):
        raise ValueError(f'credentials_file {str(path)!r} has no [{section}] section')
    sec = cp[section]
    key, secret = sec.get('aws_access_key_id', '').strip(), \
        sec.get('aws_secret_access_key', '').strip()
    if not key or not secret:
        raise ValueError(f'credentials_file {str(path)!r} [{section}] needs aws_access_key_id '
                         'and aws_secret_access_key')
    return key, secret, sec.get('aws_session_token', '').strip()


def check_endpoint(endpoint_url: str, allow_insecure_http: bool) -> None:
    """Refuse a plain-http endpoint unless asked for (tests, a loopback MinIO).

    Raises:
        ValueError: naming ``allow_insecure_http``.
    """
    if endpoint_url.strip().lower().startswith('http://') and not allow_insecure_http:
        raise ValueError(f'endpoint_url {endpoint_url!r} is plain http://: evidence and '
                         'request signatures would cross the network unencrypted; use '
                         'https:// or set allow_insecure_http (tests and loopback only)')


class S3Backend:
    """S3-compatible storage through boto3.

    Checksums: every PUT and part carries ``Content-MD5`` and ``x-amz-checksum-sha256`` so
    real S3 rejects corrupted bytes itself; the whole object's SHA-256 and the part size go
    into metadata (``x-amz-meta-sha256``, ``x-amz-meta-part-size``) so HEAD can prove which
    bytes an object holds even on stores that ignore checksum headers (moto, older Ceph).
    Retries are the uploader's job (with its back-off), so boto3 makes one attempt.

    Every PUT and multipart upload requests server-side encryption (``sse``); where the
    bucket has Object Lock enabled (asked in :meth:`check`) each object also gets a retention
    of ``object_lock_days`` in ``object_lock_mode``, so a later overwrite or delete leaves
    the locked version in place.

    Args:
        endpoint_url: MinIO/Ceph/loopback endpoint; '' for AWS. Path-style addressing then.
            ``http://`` is refused unless ``allow_insecure_http``.
        credentials_file: a 0600 AWS credentials file (``profile`` picks the section);
            otherwise the standard AWS chain (environment, ~/.aws, instance role).
        access_key_id, secret_access_key, session_token: for library callers only (the node
            and the CLI never take a secret as a value). Never logged.
    """
    supports_multipart = True
    computes_sha256 = False

    def __init__(self, bucket: str, prefix: str = '', *, endpoint_url: str = '',
                 region: str = '', access_key_id: str = '', secret_access_key: str = '',
                 session_token: str = '', profile: str = '',
                 credentials_file: str | Path | None = None, sse: str = 'AES256',
                 kms_key_id: str = '', object_lock_mode: str = 'governance',
                 object_lock_days: int = 365, allow_insecure_http: bool = False,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 30.0,
                 wall_clock: Callable[[], float] = time.time) -> None:
        import boto3
        from botocore.config import Config

        check_endpoint(endpoint_url, allow_insecure_http)
        if sse not in SSE_CHOICES:
            raise ValueError(f's3_sse {sse!r} is not one of {", ".join(SSE_CHOICES)}')
        if kms_key_id and sse != 'aws:kms':
            raise ValueError(f's3_kms_key_id is set but s3_sse is {sse!r}, not aws:kms')
        if object_lock_mode not in LOCK_CHOICES:
            raise ValueError(f'object_lock_mode {object_lock_mode!r} is not one of '
                             f'{", ".join(LOCK_CHOICES)}')
        if object_lock_mode != 'off' and not 1 <= int(object_lock_days) <= 36500:
            raise ValueError(f'object_lock_days {object_lock_days!r} out of range 1..36500')
        if credentials_file:
            if access_key_id or secret_access_key:
                raise ValueError('give credentials_file or explicit keys, not both')
            access_key_id, secret_access_key, session_token = read_credentials_file(
                Path(credentials_file), profile)
            profile = ''
        self.sse, self.kms_key_id = sse, kms_key_id
        self.etag_is_md5 = sse != 'aws:kms'
        self.object_lock_mode, self.object_lock_days = object_lock_mode, int(object_lock_days)
        #: Whether the bucket has Object Lock enabled (None: not asked yet, see check()).
        self.object_lock_enabled: bool | None = None
        self._wall = wall_clock
        self.bucket, self.prefix = bucket, prefix.strip('/')
        self.url = str(BucketURL('s3', bucket, self.prefix))
        self._where = f'{self.url} at {endpoint_url}' if endpoint_url else self.url
        session = boto3.session.Session(
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            aws_session_token=session_token or None,
            region_name=region or None, profile_name=profile or None)
        config = Config(
            signature_version='s3v4',
            connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
            retries={'mode': 'standard', 'total_max_attempts': 1},
            # Our own MD5/SHA-256 per request replace boto3's default CRC32 trailer; the
            # body is then read once (payload signing would read it twice, throttled).
            request_checksum_calculation='when_required',
            response_checksum_validation='when_required',
            s3={'addressing_style': 'path' if endpoint_url else 'auto',
                'payload_signing_enabled': False},
            tcp_keepalive=True, max_pool_connections=2)
        self._client: Any = session.client('s3', endpoint_url=endpoint_url or None,
                                           config=config)

    def object_url(self, key: str) -> str:
        return f's3://{self.bucket}/{key}'

    # -- error mapping -------------------------------------------------------------------
    def _error(self, exc: BaseException, what: str) -> BaseException:
        from botocore import exceptions as bx
        if isinstance(exc, (Cancelled, UploadError)):
            return exc
        if isinstance(exc, bx.ClientError):
            err = exc.response.get('Error', {})
            code = str(err.get('Code', ''))
            msg = err.get('Message') or exc.response.get('ResponseMetadata', {}).get(
                'HTTPStatusCode', '')
            status = exc.response.get('ResponseMetadata', {}).get('HTTPStatusCode', 0)
            detail = f'{code}: {msg}' if msg and str(msg) != code else code
            if code == 'NoSuchBucket':
                return BucketMissingError(f'{self._where}: bucket {self.bucket!r} does not '
                                          f'exist ({what})')
            if code in _CREDENTIAL_CODES:
                return CredentialsError(
                    f'{self._where}: credentials rejected or access denied on {what} '
                    f'({detail}); check credentials_file or the AWS credential chain and '
                    'the bucket policy')
            if code in ('NoSuchUpload', 'InvalidPart', 'InvalidPartOrder'):
                return UploadGone(f'{what}: {detail}')
            if code in _DIGEST_CODES:
                return VerifyError(f'{what}: the store rejected the checksum ({detail}); '
                                   'bytes were corrupted in transit, sending again')
            if code in _TRANSIENT_CODES or status >= 500:
                return TransientError(f'{self._where}: {what}: {detail}')
            return UploadError(f'{self._where}: {what}: {detail}')
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError,
                            bx.CredentialRetrievalError)):
            return CredentialsError(f'{self._where}: no usable credentials ({exc}); give a '
                                    '0600 credentials_file or use the AWS chain')
        if isinstance(exc, (bx.ParamValidationError, bx.NoRegionError)):
            return UploadError(f'{self._where}: {what}: {exc}')
        if isinstance(exc, (bx.BotoCoreError, OSError)):
            return TransientError(f'{self._where}: network: {what}: {exc}')
        return exc

    def _call(self, what: str, fn, **kwargs) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - mapped to our kinds, the rest re-raised
            mapped = self._error(exc, what)
            if mapped is exc:
                raise
            raise mapped from None

    # -- operations ----------------------------------------------------------------------
    def check(self) -> str:
        """Prove the bucket exists and the credentials work, and learn whether it has Object
        Lock; '' or a warning.

        ListObjectsV2 (unlike HeadBucket) returns an error code, so a wrong key and a
        missing bucket give distinct messages. A device policy without s3:ListBucket is
        fine: that AccessDenied is only a warning.
        """
        warnings = []
        try:
            self._call('ListObjectsV2', self._client.list_objects_v2, Bucket=self.bucket,
                       Prefix=self.prefix, MaxKeys=1)
        except CredentialsError as exc:
            if 'AccessDenied' in str(exc) and 'InvalidAccessKeyId' not in str(exc):
                warnings.append(f'{self._where}: cannot list the bucket (AccessDenied); '
                                'continuing')
            else:
                raise
        warnings.append(self._check_object_lock())
        if self.sse == 'none':
            warnings.append(f'{self._where}: s3_sse is none: objects are stored without '
                            'server-side encryption')
        return '; '.join(w for w in warnings if w)

    def _check_object_lock(self) -> str:
        from botocore.exceptions import ClientError
        if self.object_lock_mode == 'off':
            self.object_lock_enabled = False
            return ''
        try:
            r = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get('Error', {}).get('Code', ''))
            self.object_lock_enabled = False
            if code == 'ObjectLockConfigurationNotFoundError':
                return (f'{self._where}: the bucket has no Object Lock: objects get no '
                        f'retention ({self.object_lock_mode} {self.object_lock_days} d '
                        'asked); deleting the newest incidents from it cannot be ruled out')
            mapped = self._error(exc, 'GetObjectLockConfiguration')
            if isinstance(mapped, (BucketMissingError, TransientError)):
                raise mapped from None
            return (f'{self._where}: cannot read its Object Lock configuration ({code}); '
                    'objects get no retention')
        except Exception as exc:  # noqa: BLE001 - network: mapped to our kinds
            mapped = self._error(exc, 'GetObjectLockConfiguration')
            if mapped is exc:
                raise
            raise mapped from None
        conf = r.get('ObjectLockConfiguration') or {}
        self.object_lock_enabled = conf.get('ObjectLockEnabled') == 'Enabled'
        return ''

    def _protection(self) -> dict[str, Any]:
        """SSE and (where the bucket has Object Lock) retention arguments for a new object."""
        kw: dict[str, Any] = {}
        if self.sse != 'none':
            kw['ServerSideEncryption'] = self.sse
            if self.kms_key_id:
                kw['SSEKMSKeyId'] = self.kms_key_id
        if self.object_lock_enabled and self.object_lock_mode != 'off':
            until = datetime.fromtimestamp(self._wall(), timezone.utc) + \
                timedelta(days=self.object_lock_days)
            kw['ObjectLockMode'] = self.object_lock_mode.upper()
            kw['ObjectLockRetainUntilDate'] = until
        return kw

    def head(self, key: str) -> RemoteObject | None:
        from botocore.exceptions import ClientError
        try:
            r = self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode='ENABLED')
        except ClientError as exc:
            code = str(exc.response.get('Error', {}).get('Code', ''))
            if code in ('404', 'NoSuchKey', 'NotFound'):
                return None
            raise self._error(exc, f'HeadObject {key}') from None
        except Exception as exc:  # noqa: BLE001
            mapped = self._error(exc, f'HeadObject {key}')
            if mapped is exc:
                raise
            raise mapped from None
        meta = {k.lower(): v for k, v in (r.get('Metadata') or {}).items()}
        etag = (r.get('ETag') or '').strip('"') or None
        if r.get('ServerSideEncryption') in ('aws:kms', 'aws:kms:dsse') or \
                r.get('SSECustomerAlgorithm'):
            etag = None   # not an MD5 under KMS / SSE-C
        try:
            part_size = int(meta['part-size']) if 'part-size' in meta else None
        except ValueError:
            part_size = None
        return RemoteObject(size=int(r['ContentLength']), etag=etag, sha256=meta.get('sha256'),
                            checksum_sha256=r.get('ChecksumSHA256'),
                            checksum_type=r.get('ChecksumType'), part_size=part_size)

    def put(self, key: str, body: BinaryIO, size: int, md5_b64: str, sha256_b64: str,
            metadata: Mapping[str, str]) -> str | None:
        r = self._call(f'PutObject {key}', self._client.put_object, Bucket=self.bucket,
                       Key=key, Body=body, ContentLength=size, ContentMD5=md5_b64,
                       ChecksumSHA256=sha256_b64, Metadata=dict(metadata),
                       **self._protection())
        return ((r.get('ETag') or '').strip('"') or None) if self.etag_is_md5 else None

    def create_multipart(self, key: str, metadata: Mapping[str, str]) -> str:
        r = self._call(f'CreateMultipartUpload {key}', self._client.create_multipart_upload,
                       Bucket=self.bucket, Key=key, Metadata=dict(metadata),
                       ChecksumAlgorithm='SHA256', **self._protection())
        return str(r['UploadId'])

    def upload_part(self, key: str, upload_id: str, number: int, body: BinaryIO, size: int,
                    md5_b64: str, sha256_b64: str) -> str:
        r = self._call(f'UploadPart {key} #{number}', self._client.upload_part,
                       Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                       Body=body, ContentLength=size, ContentMD5=md5_b64,
                       ChecksumSHA256=sha256_b64)
        return (r.get('ETag') or '').strip('"')

    def list_parts(self, key: str, upload_id: str) -> dict[int, RemotePart] | None:
        parts: dict[int, RemotePart] = {}
        marker = 0
        while True:
            try:
                r = self._call(f'ListParts {key}', self._client.list_parts, Bucket=self.bucket,
                               Key=key, UploadId=upload_id, PartNumberMarker=marker)
            except CredentialsError as exc:
                if 'AccessDenied' in str(exc):
                    return None   # policy without s3:ListMultipartUploadParts: trust our state
                raise
            for p in r.get('Parts', []):
                n = int(p['PartNumber'])
                parts[n] = RemotePart(n, str(p['ETag']).strip('"'), int(p['Size']))
            if not r.get('IsTruncated'):
                return parts
            marker = int(r['NextPartNumberMarker'])

    def complete_multipart(self, key: str, upload_id: str,
                           parts: Sequence[tuple[int, str, str]]) -> str:
        r = self._call(f'CompleteMultipartUpload {key}', self._client.complete_multipart_upload,
                       Bucket=self.bucket, Key=key, UploadId=upload_id,
                       MultipartUpload={'Parts': [
                           {'PartNumber': n, 'ETag': f'"{etag}"', 'ChecksumSHA256': sha}
                           for n, etag, sha in parts]})
        return (r.get('ETag') or '').strip('"') if self.etag_is_md5 else ''

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self._call(f'AbortMultipartUpload {key}', self._client.abort_multipart_upload,
                       Bucket=self.bucket, Key=key, UploadId=upload_id)
        except UploadGone:
            pass

    def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        kwargs: dict[str, Any] = {'Bucket': self.bucket, 'Prefix': prefix}
        while True:
            r = self._call('ListMultipartUploads', self._client.list_multipart_uploads, **kwargs)
            out += [(u['Key'], u['UploadId']) for u in r.get('Uploads', [])]
            if not r.get('IsTruncated'):
                return out
            kwargs.update(KeyMarker=r.get('NextKeyMarker', ''),
                          UploadIdMarker=r.get('NextUploadIdMarker', ''))

    def close(self) -> None:
        self._client.close()


def open_backend(url: str | BucketURL, **s3_options: Any) -> tuple[Backend, str]:
    """The backend for a bucket URL, and the key prefix to put in front of every key.

    Raises:
        ValueError: a malformed URL.
    """
    parsed = parse_bucket_url(url) if isinstance(url, str) else url
    if parsed.scheme == 'file':
        assert parsed.path is not None
        return FileBackend(parsed.path), ''
    return S3Backend(parsed.bucket, parsed.prefix, **s3_options), parsed.prefix


__all__ = ['Backend', 'BucketURL', 'FileBackend', 'LOCK_CHOICES', 'RemoteObject', 'RemotePart',
           'S3Backend', 'S3_MIN_PART', 'SSE_CHOICES', 'check_endpoint', 'key_join',
           'open_backend', 'parse_bucket_url', 'read_credentials_file', 'safe_component']
