"""Read-only access to the evidence bucket: ``file://DIR`` or ``s3://bucket/prefix``.

The layout is the uploader's (``core.upload.backends``):
``[<prefix>/]<device>/<yyyy-mm-dd>/<incident>/<file>``, ``[<prefix>/]<device>/ledger.jsonl``,
``[<prefix>/]<device>/audit.jsonl``. A listing entry carries a version tag (size and mtime for
a directory, size and ETag for S3) so the indexer re-verifies an object that changed in place.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BucketError(RuntimeError):
    """A bucket that cannot be opened or listed (the message names it)."""


@dataclass(frozen=True)
class Obj:
    key: str          # relative to the prefix
    size: int
    tag: str          # changes when the object does


class Bucket:
    """A ``file://`` or ``s3://`` bucket seen through its prefix."""

    def __init__(self, url: str, *, endpoint_url: str = '', region: str = '',
                 profile: str = '', credentials_file: Path | None = None,
                 allow_insecure_http: bool = False) -> None:
        from bodycam_ros.core.upload.backends import (check_endpoint, parse_bucket_url,
                                                      read_credentials_file)
        try:
            parsed = parse_bucket_url(url)
        except ValueError as exc:
            raise BucketError(f'--bucket {url!r}: {exc}') from exc
        self.url = str(parsed)
        self.scheme = parsed.scheme
        self.prefix = parsed.prefix.strip('/')
        self.root: Path | None = None
        self._client: Any = None
        if parsed.scheme == 'file':
            assert parsed.path is not None
            self.root = Path(parsed.path).resolve()
            self.root.mkdir(parents=True, exist_ok=True)
            return
        import boto3
        check_endpoint(endpoint_url, allow_insecure_http)
        keys: dict[str, Any] = {}
        if credentials_file:
            a, s, t = read_credentials_file(Path(credentials_file), profile)
            keys = {'aws_access_key_id': a, 'aws_secret_access_key': s,
                    'aws_session_token': t or None}
            profile = ''
        session = boto3.session.Session(region_name=region or None, profile_name=profile or None,
                                        **keys)
        from botocore.config import Config
        self._client = session.client('s3', endpoint_url=endpoint_url or None, config=Config(
            signature_version='s3v4', retries={'mode': 'standard', 'total_max_attempts': 3},
            s3={'addressing_style': 'path' if endpoint_url else 'auto'},
            max_pool_connections=8))
        self.bucket = parsed.bucket

    def _full(self, key: str) -> str:
        return f'{self.prefix}/{key}' if self.prefix else key

    def list(self, under: str = '') -> list[Obj]:
        """Every object (keys relative to the prefix), sorted."""
        if self.root is not None:
            out: list[Obj] = []
            base = self.root / under if under else self.root
            for dirpath, dirs, files in os.walk(base):
                dirs[:] = [d for d in dirs if not d.startswith('.')]
                for name in files:
                    if name.startswith('.') or name.endswith('.tmp'):
                        continue
                    p = Path(dirpath, name)
                    try:
                        st = p.stat()
                    except FileNotFoundError:
                        continue
                    out.append(Obj(p.relative_to(self.root).as_posix(), st.st_size,
                                   f'{st.st_size}:{st.st_mtime_ns}:{st.st_ino}'))
            return sorted(out, key=lambda o: o.key)
        pfx = self._full(under)
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = []
        try:
            for page in self._client.get_paginator('list_objects_v2').paginate(
                    Bucket=self.bucket, Prefix=pfx):
                for o in page.get('Contents', []):
                    out.append(Obj(o['Key'][strip:], int(o['Size']),
                                   f'{o["Size"]}:{o.get("ETag", "")}'))
        except Exception as exc:  # noqa: BLE001 - botocore's many errors: one message
            raise BucketError(f'cannot list {self.url}: {exc}') from exc
        return out

    def get(self, key: str) -> bytes | None:
        if self.root is not None:
            try:
                return (self.root / key).read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._full(key))['Body'].read()
        except self._client.exceptions.NoSuchKey:
            return None

    def local_path(self, key: str) -> Path | None:
        """The file itself for a directory bucket (read in place), else None."""
        return None if self.root is None else self.root / key

    def download(self, key: str, dest: Path) -> None:
        """Copy an object to ``dest`` (streamed)."""
        tmp = dest.with_name(dest.name + '.part')
        if self.root is not None:
            shutil.copyfile(self.root / key, tmp)
        else:
            self._client.download_file(self.bucket, self._full(key), str(tmp))
        os.replace(tmp, dest)

    def list_keys_fn(self) -> Callable[[str], Iterable[str]]:
        """``core.history`` lister over keys relative to the prefix."""
        return lambda pfx: [o.key for o in self.list() if o.key.startswith(pfx)]
