"""A real S3 API server on loopback for upload tests and the upload benchmark.

* :class:`S3Server`: moto's S3 in server mode (its own werkzeug HTTP server on 127.0.0.1,
  spoken to over real sockets by boto3), wrapped in a WSGI layer that logs every request as
  the server saw it (operation, key, part number, status) and can inject server-side faults:
  5xx replies, a request held until released, a byte flipped in a request body.
* :class:`FaultProxy`: a TCP proxy in front of it: an uplink bandwidth cap, connections cut
  at chosen or random points (a request cut mid-part, a reply lost after the server acted).

Known limit of moto 5.2.5 (measured): it ignores Content-MD5 and x-amz-checksum-sha256, so
a test can only show that the *client* detects a corrupted part (ETag != MD5), never that
the server rejected one.
"""
from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from werkzeug.serving import make_server

ACCESS_KEY = 'AKIAIOSFODNN7EXAMPLE'
SECRET_KEY = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'
REGION = 'us-east-1'


@dataclass(frozen=True)
class Request:
    op: str
    bucket: str
    key: str
    part: int | None
    status: int
    body_len: int


@dataclass
class Fault:
    """A server-side fault for requests matching ``op`` (and ``part``)."""
    op: str | None
    #: 'error': reply with ``status``/``code`` without touching the store;
    #: 'hold': block until ``release``, then fail with 500 (the client has usually died);
    #: 'pause': block until ``release``, then serve normally; 'corrupt': flip a body byte.
    action: str
    part: int | None = None
    times: int = 1
    status: int = 503
    code: str = 'SlowDown'
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def classify(method: str, path: str, query: str) -> tuple[str, str, str, int | None]:
    """(operation, bucket, key, part number) of a path-style S3 request."""
    if path.startswith('/moto-api'):
        return 'moto-api', '', '', None
    parts = path.lstrip('/').split('/', 1)
    bucket = unquote(parts[0])
    key = unquote(parts[1]) if len(parts) > 1 else ''
    q = parse_qs(query, keep_blank_values=True)
    part = int(q['partNumber'][0]) if 'partNumber' in q else None
    if method == 'PUT':
        op = 'UploadPart' if part else ('PutObject' if key else 'CreateBucket')
    elif method == 'POST':
        op = 'CreateMultipartUpload' if 'uploads' in q else \
            'CompleteMultipartUpload' if 'uploadId' in q else 'Post'
    elif method == 'GET':
        if not key:
            op = 'ListMultipartUploads' if 'uploads' in q else \
                'ListObjectVersions' if 'versions' in q else 'ListObjects'
        else:
            op = 'ListParts' if 'uploadId' in q else 'GetObject'
    elif method == 'HEAD':
        op = 'HeadObject' if key else 'HeadBucket'
    elif method == 'DELETE':
        op = 'AbortMultipartUpload' if 'uploadId' in q else \
            ('DeleteObject' if key else 'DeleteBucket')
    else:
        op = method
    return op, bucket, key, part


class _CorruptingInput:
    """wsgi.input that flips one byte in the middle of the body (corruption in transit)."""

    def __init__(self, raw, length: int) -> None:
        self._raw, self._at, self._pos = raw, length // 2, 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if self._pos <= self._at < self._pos + len(data):
            b = bytearray(data)
            b[self._at - self._pos] ^= 0xFF
            data = bytes(b)
        self._pos += len(data)
        return data

    def readline(self, *a):
        return self._raw.readline(*a)


class S3Server:
    """moto's S3 on 127.0.0.1:<free port>, with a request log and fault injection.

    moto keeps its state per process: tests use a bucket name of their own.
    """

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (DomainDispatcherApplication,
                                                   MotoRequestHandler, create_backend_app)
        class QuietHandler(MotoRequestHandler):
            def log_request(self, *args, **kwargs) -> None:
                pass

        self._app = DomainDispatcherApplication(create_backend_app)
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.random_error_p = 0.0
        self._rng = random.Random(0)
        self._lock = threading.Lock()
        self._server = make_server('127.0.0.1', 0, self._wsgi, threaded=True,
                                   request_handler=QuietHandler)
        self.port = self._server.server_address[1]
        self.url = f'http://127.0.0.1:{self.port}'
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        for f in self.faults:
            f.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # -- client side helpers --------------------------------------------------------------
    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3
        from botocore.config import Config
        return boto3.client('s3', endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                            config=Config(s3={'addressing_style': 'path'},
                                          retries={'total_max_attempts': 3, 'mode': 'standard'}))

    def create_bucket(self, name: str, versioning: bool = False,
                      object_lock: bool = False) -> None:
        """``object_lock``: created with ObjectLockEnabledForBucket (versioning comes with
        it), as an agency's evidence bucket."""
        c = self.client()
        c.create_bucket(Bucket=name, **({'ObjectLockEnabledForBucket': True}
                                        if object_lock else {}))
        if versioning:
            c.put_bucket_versioning(Bucket=name, VersioningConfiguration={'Status': 'Enabled'})

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object's bytes, by key."""
        c = self.client()
        out = {}
        for page in c.get_paginator('list_objects_v2').paginate(Bucket=bucket):
            for o in page.get('Contents', []):
                out[o['Key']] = c.get_object(Bucket=bucket, Key=o['Key'])['Body'].read()
        return out

    def versions(self, bucket: str) -> dict[str, int]:
        """How many versions each key has (versioned buckets): 1 means no duplicate."""
        counts: dict[str, int] = {}
        c = self.client()
        for page in c.get_paginator('list_object_versions').paginate(Bucket=bucket):
            for v in page.get('Versions', []):
                counts[v['Key']] = counts.get(v['Key'], 0) + 1
        return counts

    def open_uploads(self, bucket: str) -> list[str]:
        return [u['Key'] for u in self.client().list_multipart_uploads(Bucket=bucket)
                .get('Uploads', [])]

    def set_auth(self, enabled: bool) -> None:
        """moto's IAM signature checking for every following request (process-wide)."""
        import urllib.request
        req = urllib.request.Request(f'{self.url}/moto-api/reset-auth', method='POST',
                                     data=b'0' if enabled else b'inf',
                                     headers={'Content-Type': 'text/plain'})
        urllib.request.urlopen(req, timeout=5).read()

    def iam_user_keys(self, name: str) -> tuple[str, str]:
        """A real IAM user allowed s3:* (for tests with authentication on)."""
        import boto3
        iam = boto3.client('iam', endpoint_url=self.url, region_name=REGION,
                           aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName='s3', PolicyDocument=(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*",'
            '"Resource":"*"}]}'))
        k = iam.create_access_key(UserName=name)['AccessKey']
        return k['AccessKeyId'], k['SecretAccessKey']

    # -- log ------------------------------------------------------------------------------
    def count(self, bucket: str, op: str, key: str | None = None, part: int | None = None,
              ok: bool | None = None) -> int:
        """Requests the server received for ``bucket`` (``ok``: only 2xx / only failures)."""
        with self._lock:
            reqs = list(self.requests)
        return sum(1 for r in reqs if r.bucket == bucket and r.op == op
                   and (key is None or r.key == key) and (part is None or r.part == part)
                   and (ok is None or (200 <= r.status < 300) == ok))

    def log(self, bucket: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if bucket is None or r.bucket == bucket]

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    # -- WSGI -----------------------------------------------------------------------------
    def _match(self, op: str, part: int | None) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.times > 0 and (f.op is None or f.op == op) and \
                        (f.part is None or f.part == part):
                    f.times -= 1
                    return f
            if op != 'moto-api' and self.random_error_p and \
                    self._rng.random() < self.random_error_p:
                return Fault(op, 'error', status=self._rng.choice([500, 503]),
                             code=self._rng.choice(['InternalError', 'SlowDown']))
        return None

    def _wsgi(self, environ, start_response):
        op, bucket, key, part = classify(environ['REQUEST_METHOD'], environ.get('PATH_INFO', ''),
                                         environ.get('QUERY_STRING', ''))
        length = int(environ.get('CONTENT_LENGTH') or 0)
        fault = self._match(op, part)
        if fault is not None and fault.action in ('hold', 'pause'):
            fault.held.set()
            fault.release.wait(60)
            fault = Fault(op, 'error', status=500, code='InternalError') \
                if fault.action == 'hold' else None
        if fault is not None and fault.action == 'error':
            environ['wsgi.input'].read(length)
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                    f'<Message>injected fault</Message></Error>').encode()
            start_response(f'{fault.status} Injected', [('Content-Type', 'application/xml'),
                                                         ('Content-Length', str(len(body)))])
            self._record(Request(op, bucket, key, part, fault.status, length))
            return [body]
        if fault is not None and fault.action == 'corrupt':
            environ['wsgi.input'] = _CorruptingInput(environ['wsgi.input'], length)
        status_box = [0]

        def capture(status, headers, exc_info=None):
            status_box[0] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        result = list(self._app(environ, capture))
        self._record(Request(op, bucket, key, part, status_box[0], length))
        return result

    def _record(self, r: Request) -> None:
        with self._lock:
            self.requests.append(r)


class FaultProxy:
    """TCP proxy 127.0.0.1:<port> → upstream, with an uplink cap and connection cuts.

    Args:
        rate_bps: client→server bytes per second (0 = unlimited), paced smoothly.
        cut_at: cut whichever connection carries these client→server byte offsets (counted
            over all connections), e.g. mid-way through a part body.
        cut_per_mib: random cuts, expected per MiB sent client→server.
        reply_cut_p: probability that a server→client chunk is dropped with its connection
            (the server did the work; the client never hears of it).
    """

    def __init__(self, upstream: tuple[str, int], rate_bps: float = 0.0,
                 cut_at: list[int] | None = None, cut_per_mib: float = 0.0,
                 reply_cut_p: float = 0.0, seed: int = 0) -> None:
        self.upstream = upstream
        self.rate_bps = rate_bps
        self.cut_at = sorted(cut_at or [])
        self.cut_per_mib = cut_per_mib
        self.reply_cut_p = reply_cut_p
        self.up_bytes = 0
        self.connections = 0
        self.cuts = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._pace_t0: float | None = None
        self._pace_bytes = 0
        self._sock = socket.create_server(('127.0.0.1', 0))
        self.port = self._sock.getsockname()[1]
        self.url = f'http://127.0.0.1:{self.port}'
        self._closed = False
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)     # a slow link may keep a reply waiting a long time
            with self._lock:
                self.connections += 1
            conn = _Conn(client, server)
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(conn, src, dst, up),
                                 daemon=True).start()

    def _pace(self, n: int) -> None:
        if self.rate_bps <= 0:
            return
        with self._lock:
            now = time.monotonic()
            if self._pace_t0 is None or now - (self._pace_t0 + self._pace_bytes /
                                               self.rate_bps) > 0.5:
                # idle for a while: no credit for the silence (no burst after a pause)
                self._pace_t0, self._pace_bytes = now, 0
            self._pace_bytes += n
            due = self._pace_t0 + self._pace_bytes / self.rate_bps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _should_cut(self, n: int, up: bool) -> bool:
        with self._lock:
            if up:
                start = self.up_bytes
                self.up_bytes += n
                if self.cut_at and start <= self.cut_at[0] < start + n:
                    self.cut_at.pop(0)
                    return True
                return self.cut_per_mib > 0 and \
                    self._rng.random() < self.cut_per_mib * n / (1024 * 1024)
            return self.reply_cut_p > 0 and self._rng.random() < self.reply_cut_p

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while not conn.dead:
                data = src.recv(16384)
                if conn.dead:
                    return
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if up:
                    self._pace(len(data))
                if self._should_cut(len(data), up):
                    with self._lock:
                        self.cuts += 1
                    conn.cut()
                    return
                dst.sendall(data)
        except OSError:
            conn.cut()


class _Conn:
    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self.socks = (a, b)
        self.dead = False
        self._lock = threading.Lock()

    def cut(self) -> None:
        """Reset both sides (RST, as a dropped LTE bearer looks to the stack).

        shutdown(SHUT_RD) first wakes the other pump thread blocked in recv(); only then can
        close() release the socket and send the RST (a blocked syscall holds it open).
        """
        with self._lock:
            if self.dead:
                return
            self.dead = True
        for s in self.socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                s.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass

def s3_options(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
               **extra) -> dict:
    """S3Backend keywords for a loopback endpoint (moto speaks plain http: allowed here)."""
    return {'endpoint_url': endpoint, 'region': REGION, 'access_key_id': access_key,
            'secret_access_key': secret_key, 'allow_insecure_http': True, **extra}


def credentials_file(path, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
                     mode: int = 0o600, profile: str = 'default'):
    """An AWS credentials file with ``mode`` (what the node and CLI take; never a value)."""
    import os
    path.write_text(f'[{profile}]\naws_access_key_id = {access_key}\n'
                    f'aws_secret_access_key = {secret_key}\n')
    os.chmod(path, mode)
    return path


def wait_for(pred: Callable[[], object], timeout_s: float = 10.0, step_s: float = 0.02) -> bool:
    """Poll a condition set by another process (no executor to spin)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step_s)
    return bool(pred())
