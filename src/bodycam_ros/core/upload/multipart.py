"""One object to the store, resumable and verified.

Large files go up in parts. After every part the upload id and the part's ETag/MD5/SHA-256
are saved (``state.json``, atomic), so after a crash or a network loss only the unfinished
part is sent again. On resume the server's own list of parts is asked too: a part that
arrived just before a crash (ETag = MD5 of our bytes) is adopted, not resent.

Verification never trusts a single claim: part ETags against the MD5 we computed, the
object ETag against the composite ``md5(md5s)-N``, the SHA-256 in metadata against ours,
the size, and the server's own SHA-256 checksum whenever the store returns one.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bodycam_ros.core.upload.backends import Backend, RemoteObject
from bodycam_ros.core.upload.errors import (Cancelled, CredentialsError, LocalError,
                                            UploadError, UploadGone, VerifyError)
from bodycam_ros.core.upload.queue import atomic_write_json
from bodycam_ros.core.upload.throttle import RateLimiter, ThrottledReader

READ_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class PartDigest:
    number: int
    offset: int
    size: int
    md5: str          # hex, what the part's ETag must be
    sha256_b64: str   # what x-amz-checksum-sha256 carries


@dataclass(frozen=True)
class FileDigest:
    """Everything verification needs about a local file, from one pass over it."""
    size: int
    mtime_ns: int
    sha256: str       # hex
    md5: str          # hex: the ETag of a single PUT
    part_size: int
    parts: tuple[PartDigest, ...]

    @property
    def sha256_b64(self) -> str:
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()

    @property
    def md5_b64(self) -> str:
        return base64.b64encode(bytes.fromhex(self.md5)).decode()

    @property
    def composite_etag(self) -> str:
        return composite_etag([p.md5 for p in self.parts])

    @property
    def composite_sha256(self) -> str:
        return composite_sha256([p.sha256_b64 for p in self.parts])

    def to_json(self) -> dict[str, Any]:
        return {'size': self.size, 'mtime_ns': self.mtime_ns, 'sha256': self.sha256,
                'md5': self.md5, 'part_size': self.part_size,
                'parts': [[p.offset, p.size, p.md5, p.sha256_b64] for p in self.parts]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FileDigest:
        parts = tuple(PartDigest(i + 1, int(o), int(s), str(m), str(h))
                      for i, (o, s, m, h) in enumerate(d['parts']))
        return cls(int(d['size']), int(d['mtime_ns']), str(d['sha256']), str(d['md5']),
                   int(d['part_size']), parts)


def composite_etag(part_md5s: list[str]) -> str:
    """S3's multipart ETag: MD5 of the concatenated binary part MD5s, ``-<count>``."""
    joined = b''.join(bytes.fromhex(m) for m in part_md5s)
    return f'{hashlib.md5(joined).hexdigest()}-{len(part_md5s)}'


def composite_sha256(part_b64s: list[str]) -> str:
    """S3's COMPOSITE SHA-256 checksum of a multipart object (base64, ``-<count>``)."""
    joined = b''.join(base64.b64decode(h) for h in part_b64s)
    return f'{base64.b64encode(hashlib.sha256(joined).digest()).decode()}-{len(part_b64s)}'


def digest_file(path: Path, part_size: int, stop: threading.Event | None = None) -> FileDigest:
    """SHA-256 and MD5 of the whole file and of each ``part_size`` slice, in one read.

    Raises:
        LocalError: the file cannot be read.
    """
    whole_sha, whole_md5 = hashlib.sha256(), hashlib.md5()
    parts: list[PartDigest] = []
    try:
        st = os.stat(path)
        with open(path, 'rb') as f:
            offset = 0
            while True:
                if stop is not None and stop.is_set():
                    raise Cancelled('stop requested')
                psha, pmd5, n = hashlib.sha256(), hashlib.md5(), 0
                while n < part_size:
                    block = f.read(min(READ_BLOCK, part_size - n))
                    if not block:
                        break
                    for h in (psha, pmd5, whole_sha, whole_md5):
                        h.update(block)
                    n += len(block)
                if n == 0 and parts:
                    break
                parts.append(PartDigest(len(parts) + 1, offset, n, pmd5.hexdigest(),
                                        base64.b64encode(psha.digest()).decode()))
                offset += n
                if n < part_size:
                    break
    except OSError as exc:
        raise LocalError(f'cannot read {path}: {exc.strerror}') from None
    if offset != st.st_size:
        raise LocalError(f'{path} changed size while being hashed')
    return FileDigest(offset, st.st_mtime_ns, whole_sha.hexdigest(), whole_md5.hexdigest(),
                      part_size, tuple(parts))


def verify_remote(remote: RemoteObject | None, digest: FileDigest, path: Path,
                  computes_sha256: bool) -> str:
    """Why ``remote`` is not a copy of the local file, or '' when it verifies.

    Args:
        computes_sha256: the store hashed the bytes itself (file://), so ``remote.sha256``
            is proof rather than a claim.
    """
    if remote is None:
        return 'missing'
    if remote.size != digest.size:
        return f'size {remote.size} != local {digest.size}'
    if remote.sha256 is None:
        return 'no sha256 in the object metadata (not uploaded by us)'
    if remote.sha256 != digest.sha256:
        return f'sha256 {remote.sha256[:16]}... != local {digest.sha256[:16]}...'
    multipart = bool(remote.etag and '-' in remote.etag) or \
        bool(remote.checksum_sha256 and '-' in remote.checksum_sha256) or \
        remote.checksum_type == 'COMPOSITE'
    d = digest
    if multipart:
        part_size = remote.part_size or digest.part_size
        d = digest if part_size == digest.part_size else digest_file(path, part_size)
    if remote.etag:
        expected = d.composite_etag if multipart else digest.md5
        if remote.etag != expected:
            return f'ETag {remote.etag} != {"composite " if multipart else "MD5 "}{expected}'
    elif not computes_sha256 and not remote.checksum_sha256:
        return 'the store returned neither an MD5 ETag nor a checksum'
    if remote.checksum_sha256:
        if multipart:
            # S3 returns "<b64>-N"; some stores (moto) give the part count separately.
            got = remote.checksum_sha256.split('-')[0]
            expected = d.composite_sha256.split('-')[0]
        else:
            got, expected = remote.checksum_sha256, digest.sha256_b64
        if got != expected:
            return f'server SHA-256 {remote.checksum_sha256} != {expected}'
    return ''


_HEX = re.compile(r'[0-9a-f]*')


def _hex(value: Any, n: int) -> bool:
    return isinstance(value, str) and len(value) == n and _HEX.fullmatch(value) is not None


def _b64_sha256(value: Any) -> bool:
    try:
        return isinstance(value, str) and len(base64.b64decode(value, validate=True)) == 32
    except ValueError:
        return False


def _valid_digest(d: Any) -> bool:
    """A cached :class:`FileDigest` exactly as :meth:`FileDigest.to_json` writes it."""
    if not isinstance(d, dict) or not isinstance(d.get('parts'), list):
        return False
    nat = [d.get(k) for k in ('size', 'mtime_ns', 'part_size')]
    if not all(type(v) is int and v >= 0 for v in nat) or d['part_size'] < 1 or \
            not _hex(d.get('sha256'), 64) or not _hex(d.get('md5'), 32) or not d['parts']:
        return False
    offset = 0
    for part in d['parts']:
        if not isinstance(part, list) or len(part) != 4:
            return False
        o, n, md5, sha = part
        if type(o) is not int or type(n) is not int or o != offset or n < 0 or \
                not _hex(md5, 32) or not _b64_sha256(sha):
            return False
        offset += n
    return offset == d['size']


def _valid_object(obj: Any) -> bool:
    if not isinstance(obj, dict) or not isinstance(obj.get('key'), str) or \
            not _valid_digest(obj.get('digest')) or type(obj.get('uploaded', False)) is not bool:
        return False
    if 'upload_id' in obj and not (isinstance(obj['upload_id'], str) and obj['upload_id']):
        return False
    parts = obj.get('parts', {})
    return isinstance(parts, dict) and all(
        isinstance(k, str) and k.isdigit() and isinstance(v, dict) and
        isinstance(v.get('etag'), str) and _hex(v.get('md5'), 32) and
        isinstance(v.get('sha256'), str) for k, v in parts.items())


def clean_state(data: dict[str, Any]) -> dict[str, Any]:
    """``state.json`` with every entry we could not have written dropped.

    A dropped entry may describe bytes already in the store (or an open multipart upload),
    so the state turns ``careful``: the next attempt asks the store before sending.
    """
    objects = data.get('objects')
    clean: dict[str, Any] = {'bucket': data.get('bucket'), 'objects': {}}
    careful = data.get('careful') is True or ('objects' in data and not isinstance(objects,
                                                                                   dict))
    for name, obj in (objects.items() if isinstance(objects, dict) else ()):
        if _valid_object(obj):
            obj.setdefault('parts', {})
            clean['objects'][name] = obj
        else:
            careful = True
    if careful:
        clean['careful'] = True
    return clean


class UploadState:
    """Resumable state of one incident: ``<evidence_dir>/upload/<incident>/state.json``.

    Layout: ``{"bucket": url, "objects": {name: {"key", "digest", "upload_id",
    "parts": {"<n>": {"etag", "md5", "sha256"}}, "uploaded": bool}}}``.
    """

    def __init__(self, work_dir: Path, bucket: str) -> None:
        self.work_dir = work_dir
        self.path = work_dir / 'state.json'
        self.bucket = bucket
        data: Any = {}
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError, RecursionError):
            data = {'bucket': bucket, 'careful': True}     # damaged: ask the store first
        if not isinstance(data, dict) or data.get('bucket') != bucket:
            data = {'bucket': bucket, 'objects': {}}
        self.data = clean_state(data)
        #: The file held entries we could not have written (dropped; the store is asked).
        self.repaired = self.data.get('careful') is True and data.get('careful') is not True
        self.objects: dict[str, dict[str, Any]] = self.data['objects']
        self.unsaved: OSError | None = None     # the last save a full disk refused

    def save(self) -> None:
        """Write the resume state; a full disk keeps it in memory for this pass (it is an
        optimisation: the store's own verification is the truth)."""
        try:
            atomic_write_json(self.path, self.data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.unsaved = exc

    def clear(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def reset(self) -> None:
        """Forget everything but remember that objects may already be in the store, so the
        next attempt asks the store first instead of sending blindly."""
        self.data = {'bucket': self.bucket, 'objects': {}, 'careful': True}
        self.objects = self.data['objects']
        self.save()

    @property
    def careful(self) -> bool:
        return bool(self.data.get('careful'))


@dataclass
class Transfer:
    """Uploads one local file to one key, resuming from :class:`UploadState`.

    ``check_yield`` is called between parts; it raises ``Cancelled`` to stop (or to give
    way to a more urgent incident) with every finished part kept.
    """
    backend: Backend
    key: str
    path: Path
    state: UploadState
    name: str
    part_size: int
    multipart_threshold: int
    limiter: RateLimiter | None = None
    on_progress: Callable[[int], None] | None = None
    #: Bytes known to be safely in the store (finished or adopted parts, whole objects).
    on_confirmed: Callable[[int], None] = lambda n: None
    stop: threading.Event | None = None
    check_yield: Callable[[], None] = lambda: None
    metadata: Mapping[str, str] | None = None
    _fresh: bool = False

    def digest(self) -> FileDigest:
        """The file's digest, cached in the state while size and mtime are unchanged.

        A new digest starts a new object state: nothing of it can be in the store yet,
        unless an earlier state was lost (then the worst case is one redundant upload).
        """
        self._fresh = False
        obj = self.state.objects.get(self.name, {})
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise LocalError(f'cannot read {self.path}: {exc.strerror}') from None
        cached = obj.get('digest')
        if cached and cached['size'] == st.st_size and cached['mtime_ns'] == st.st_mtime_ns \
                and cached['part_size'] == self.part_size and obj.get('key') == self.key:
            return FileDigest.from_json(cached)
        digest = digest_file(self.path, self.part_size, self.stop)
        self._fresh = not self.state.careful
        old_id = obj.get('upload_id')
        if old_id:
            try:
                self.backend.abort_multipart(obj.get('key', self.key), old_id)
            except UploadGone:
                pass
        self.state.objects[self.name] = {'key': self.key, 'digest': digest.to_json(),
                                         'parts': {}, 'uploaded': False}
        self.state.save()
        return digest

    @property
    def multipart(self) -> bool:
        return self.backend.supports_multipart and \
            os.path.getsize(self.path) > self.multipart_threshold

    def run(self) -> FileDigest:
        """Upload unless the store already holds exactly these bytes; returns the digest.

        Raises:
            UploadError: kinds as in ``errors``; the state is saved for the next attempt.
        """
        digest = self.digest()
        obj = self.state.objects[self.name]
        if obj.get('uploaded'):
            self.on_confirmed(digest.size)
            return digest
        # After an earlier attempt the object may be complete already: a lost reply to the
        # last PUT/Complete, or a crash before the state was saved. Sending it again would
        # waste the uplink and, in a versioned bucket, store it twice.
        if not self._fresh and verify_remote(self.backend.head(self.key), digest, self.path,
                                             self.backend.computes_sha256) == '':
            self._mark_uploaded(obj)
            self.on_confirmed(digest.size)
            return digest
        metadata = {'sha256': digest.sha256, 'part-size': str(digest.part_size),
                    **(self.metadata or {})}
        if not self.multipart:
            etag = self.backend.put(self.key, self._reader(digest, 0, digest.size),
                                    digest.size, digest.md5_b64, digest.sha256_b64, metadata)
            if etag and '-' not in etag and etag != digest.md5:
                raise VerifyError(f'{self.key}: server ETag {etag} != local MD5 {digest.md5}: '
                                  'corrupted in transit; sending again')
            self._mark_uploaded(obj)
            self.on_confirmed(digest.size)
            return digest
        self._multipart(digest, obj, metadata)
        return digest

    def _adopt_orphan(self, obj: dict[str, Any]) -> None:
        """Find an upload the store started for us but whose reply we never got.

        A lost reply to CreateMultipartUpload leaves an upload id only the server knows;
        taking it over (its parts are checked against our MD5s) avoids an orphan that would
        hold storage until a lifecycle rule aborts it.
        """
        try:
            ids = [u for k, u in self.backend.list_multipart_uploads(self.key) if k == self.key]
        except UploadError as exc:
            if isinstance(exc, CredentialsError):
                return        # no s3:ListBucketMultipartUploads: leave it to the lifecycle rule
            raise
        if not ids:
            return
        obj['upload_id'], obj['parts'] = ids[-1], {}
        for stale in ids[:-1]:
            self.backend.abort_multipart(self.key, stale)
        self.state.save()

    def _mark_uploaded(self, obj: dict[str, Any]) -> None:
        obj['uploaded'] = True
        obj.pop('upload_id', None)
        obj['parts'] = {}
        self.state.save()

    def _reader(self, digest: FileDigest, offset: int, size: int) -> ThrottledReader:
        try:
            with open(self.path, 'rb') as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as exc:
            raise LocalError(f'cannot read {self.path}: {exc.strerror}') from None
        if len(data) != size:
            raise LocalError(f'{self.path} shrank while uploading')
        return ThrottledReader(data, self.limiter, self.on_progress, self.stop)

    def _multipart(self, digest: FileDigest, obj: dict[str, Any],
                   metadata: Mapping[str, str]) -> None:
        be = self.backend
        remote_parts = None
        if not obj.get('upload_id') and not self._fresh:
            self._adopt_orphan(obj)
        if obj.get('upload_id'):
            try:
                remote_parts = be.list_parts(self.key, obj['upload_id'])
            except UploadGone:
                obj.pop('upload_id')
                obj['parts'] = {}
        if not obj.get('upload_id'):
            obj['upload_id'] = be.create_multipart(self.key, metadata)
            obj['parts'] = {}
            remote_parts = {}
            self.state.save()
        upload_id = obj['upload_id']
        done: dict[str, dict[str, str]] = obj['parts']
        for part in digest.parts:
            mine = done.get(str(part.number))
            theirs = remote_parts.get(part.number) if remote_parts is not None else None
            if theirs is not None and theirs.etag == part.md5 and theirs.size == part.size:
                if mine is None:     # arrived just before a crash: adopt it
                    done[str(part.number)] = {'etag': theirs.etag, 'md5': part.md5,
                                              'sha256': part.sha256_b64}
                    self.state.save()
                self.on_confirmed(part.size)
                continue
            if remote_parts is None and mine is not None and mine['md5'] == part.md5:
                self.on_confirmed(part.size)
                continue             # the store will not list parts: trust our state
            done.pop(str(part.number), None)
            self.check_yield()
            reader = self._reader(digest, part.offset, part.size)
            etag = be.upload_part(self.key, upload_id, part.number, reader, part.size,
                                  base64.b64encode(bytes.fromhex(part.md5)).decode(),
                                  part.sha256_b64)
            if getattr(be, 'etag_is_md5', True) and etag != part.md5:   # SSE-KMS: opaque
                raise VerifyError(f'{self.key} part {part.number}: server ETag {etag} != '
                                  f'local MD5 {part.md5}: corrupted in transit; sending again')
            done[str(part.number)] = {'etag': etag, 'md5': part.md5, 'sha256': part.sha256_b64}
            self.state.save()
            self.on_confirmed(part.size)
        etag = be.complete_multipart(self.key, upload_id, [
            (p.number, done[str(p.number)]['etag'], p.sha256_b64) for p in digest.parts])
        if etag and etag != digest.composite_etag:
            obj.pop('upload_id', None)
            obj['parts'] = {}
            self.state.save()
            raise VerifyError(f'{self.key}: object ETag {etag} != composite '
                              f'{digest.composite_etag}; uploading it again')
        self._mark_uploaded(obj)
