"""Evidence encrypted at rest in the age v1 format, to the agency's X25519 public key.

Why age (https://age-encryption.org/v1, C2SP age.md): a kept, reviewed format with an
independent reader (the ``age`` command from Debian's package decrypts our files, and we
decrypt its files), built only from primitives of ``cryptography``: X25519, HKDF-SHA-256,
HMAC-SHA-256 and ChaCha20-Poly1305. Nothing here goes beyond the spec.

- A random 16-byte file key per file, wrapped for each recipient in an X25519 stanza (an
  ephemeral key per stanza). The unit holds only the agency's public key, so it cannot
  decrypt what it recorded.
- The header is authenticated by an HMAC keyed from the file key.
- The payload is a STREAM of 64 KiB ChaCha20-Poly1305 chunks; the last one is flagged, so
  truncation and reordering are detected, and every complete chunk before a crash's torn
  tail still authenticates and decrypts on its own.

Crash loss: age forbids a short chunk that is not the last one, so :class:`AgeWriter` can
put on disk only whole 64 KiB chunks until :meth:`AgeWriter.close` writes the final one.
After :meth:`AgeWriter.durable_flush` at most 64 KiB of plaintext (the unfinished chunk)
lives only in RAM: about 0.12 s of 4.2 Mbit/s video, less than one MP4 fragment.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Plaintext bytes per payload chunk (fixed by the age spec).
CHUNK = 64 * 1024
#: Poly1305 tag appended to every chunk.
TAG = 16
#: Ciphertext bytes of a full chunk.
CHUNK_CT = CHUNK + TAG
#: Random payload nonce that opens the payload.
NONCE = 16
VERSION_LINE = b'age-encryption.org/v1\n'
RECIPIENT_HRP = 'age'
IDENTITY_HRP = 'AGE-SECRET-KEY-'
_X25519_INFO = b'age-encryption.org/v1/X25519'
_MAX_HEADER = 64 * 1024          # a mutated file must not make the reader buffer forever
_MAX_COUNTER = 1 << 88


class AgeError(RuntimeError):
    """An age file that cannot be written, parsed, unwrapped or authenticated.

    ``chunk`` is the index of the payload chunk at fault, None for the header.
    """

    def __init__(self, message: str, chunk: int | None = None) -> None:
        super().__init__(message)
        self.chunk = chunk


# -- bech32 (BIP-173), as age uses it: no 90-character limit ---------------------------------
_CHARSET = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l'
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _GEN[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convertbits(data: Iterable[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or (acc << (tobits - bits)) & maxv:
        raise AgeError('bech32: non-zero padding bits')
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Bech32 string of ``data`` (lower case; the caller upper-cases identities)."""
    hrp = hrp.lower()
    words = _convertbits(data, 8, 5, True)
    pm = _polymod(_hrp_expand(hrp) + words + [0] * 6) ^ 1
    checksum = [(pm >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + '1' + ''.join(_CHARSET[w] for w in words + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """(hrp, data) of a bech32 string; raises AgeError naming what is wrong."""
    if text.lower() != text and text.upper() != text:
        raise AgeError(f'bech32: mixed case in {text!r}')
    s = text.lower()
    pos = s.rfind('1')
    if pos < 1 or pos + 7 > len(s) or any(not 33 <= ord(c) <= 126 for c in s):
        raise AgeError(f'bech32: malformed string {text!r}')
    hrp, rest = s[:pos], s[pos + 1:]
    if any(c not in _CHARSET for c in rest):
        raise AgeError(f'bech32: invalid character in {text!r}')
    words = [_CHARSET.index(c) for c in rest]
    if _polymod(_hrp_expand(hrp) + words) != 1:
        raise AgeError(f'bech32: bad checksum in {text!r}')
    return hrp, bytes(_convertbits(words[:-6], 5, 8, False))


# -- keys ------------------------------------------------------------------------------------
def encode_recipient(key: X25519PublicKey) -> str:
    """``age1...`` string of a public key (what ``age -r`` takes)."""
    return bech32_encode(RECIPIENT_HRP, key.public_bytes_raw())


def decode_recipient(text: str) -> X25519PublicKey:
    """Public key from an ``age1...`` string."""
    hrp, data = bech32_decode(text.strip())
    if hrp != RECIPIENT_HRP or len(data) != 32:
        raise AgeError(f'not an age X25519 recipient: {text!r}')
    return X25519PublicKey.from_public_bytes(data)


def encode_identity(key: X25519PrivateKey) -> str:
    """``AGE-SECRET-KEY-1...`` string of a private key (what ``age -i`` reads)."""
    return bech32_encode(IDENTITY_HRP, key.private_bytes_raw()).upper()


def decode_identity(text: str) -> X25519PrivateKey:
    """Private key from an ``AGE-SECRET-KEY-1...`` string."""
    text = text.strip()
    if not text.isupper():
        raise AgeError('an age identity must be upper case')
    hrp, data = bech32_decode(text)
    if hrp != IDENTITY_HRP.lower() or len(data) != 32:
        raise AgeError('not an age X25519 identity (AGE-SECRET-KEY-1...)')
    return X25519PrivateKey.from_private_bytes(data)


def identity_file(key: X25519PrivateKey, created: str | None = None) -> str:
    """The text of an identity file as ``age-keygen`` writes it (readable by ``age -i``)."""
    head = f'# created: {created}\n' if created else ''
    return (f'{head}# public key: {encode_recipient(key.public_key())}\n'
            f'{encode_identity(key)}\n')


def parse_identity_file(text: str) -> list[X25519PrivateKey]:
    """Every identity in an identity file (``#`` comments and blank lines skipped)."""
    keys = [decode_identity(line) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith('#')]
    if not keys:
        raise AgeError('identity file holds no AGE-SECRET-KEY-1... line')
    return keys


# -- primitives ------------------------------------------------------------------------------
def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b'=')


def _unb64(text: bytes, what: str) -> bytes:
    """Strict unpadded base64: the spec requires rejecting non-canonical encodings."""
    if not re.fullmatch(rb'[A-Za-z0-9+/]*', text) or len(text) % 4 == 1:
        raise AgeError(f'header: {what} is not unpadded base64: {text[:80]!r}')
    try:
        data = base64.b64decode(text + b'=' * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise AgeError(f'header: {what} is not base64: {exc}') from exc
    if _b64(data) != text:
        raise AgeError(f'header: {what} is not canonical base64: {text[:80]!r}')
    return data


def _chunk_nonce(counter: int, last: bool) -> bytes:
    if counter >= _MAX_COUNTER:
        raise AgeError(f'chunk counter overflow at {counter}', counter)
    return counter.to_bytes(11, 'big') + (b'\x01' if last else b'\x00')


def _wrap(file_key: bytes, recipient: X25519PublicKey) -> bytes:
    eph = X25519PrivateKey.generate()
    share = eph.public_key().public_bytes_raw()
    shared = eph.exchange(recipient)
    key = _hkdf(shared, share + recipient.public_bytes_raw(), _X25519_INFO)
    body = ChaCha20Poly1305(key).encrypt(bytes(12), file_key, None)
    return b'-> X25519 ' + _b64(share) + b'\n' + _b64(body) + b'\n'


def _header(file_key: bytes, recipients: Sequence[X25519PublicKey]) -> bytes:
    head = VERSION_LINE + b''.join(_wrap(file_key, r) for r in recipients) + b'---'
    mac = hmac.new(_hkdf(file_key, b'', b'header'), head, hashlib.sha256).digest()
    return head + b' ' + _b64(mac) + b'\n'


def payload_overhead(plaintext_bytes: int) -> int:
    """Bytes the payload adds to ``plaintext_bytes``: the nonce and one tag per chunk."""
    chunks = max(1, -(-plaintext_bytes // CHUNK))
    return NONCE + TAG * chunks


# -- writing ---------------------------------------------------------------------------------
class Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


class AgeWriter:
    """A write-only, non-seekable file object that encrypts as it is written.

    ``target`` is a path (created exclusively with ``mode``: evidence is never overwritten)
    or an object with ``write``: a ``spool.DurableFile`` (its ``sync`` is used for
    :meth:`durable_flush`), or any binary file (``flush`` + ``fsync(fileno())``). A target
    object is not closed by :meth:`close`; it belongs to the caller.

    Full chunks go to the target as soon as the plaintext following them arrives (a chunk
    is sealed as non-final only once it is known not to be the last). PyAV muxes into this
    object directly (``seekable()`` is False, so the muxer never seeks).
    """

    def __init__(self, target: str | os.PathLike[str] | Sink,
                 recipients: Sequence[X25519PublicKey], mode: int = 0o600) -> None:
        if not recipients:
            raise AgeError('no recipients: the file key would be wrapped for nobody')
        self._fd = -1
        self._sink: Sink | None = None
        if isinstance(target, (str, os.PathLike)):
            self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            self.name = os.fspath(target)
        else:
            self._sink = target
            self.name = str(getattr(target, 'name', getattr(target, 'path', '<sink>')))
        file_key = os.urandom(16)
        nonce = os.urandom(NONCE)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b'payload'))
        self._buf = bytearray()
        self._counter = 0
        self._pt_hash = hashlib.sha256()
        self._ct_hash = hashlib.sha256()
        self.plaintext_size = 0
        self.ciphertext_size = 0
        self._closed = False
        self.header_size = 0
        head = _header(file_key, recipients)
        del file_key
        self.header_size = len(head)
        self._emit(head + nonce)

    # file-object protocol --------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        """Plaintext bytes written so far."""
        return self.plaintext_size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise AgeError(f'{self.name}: write after close')
        n = len(data)
        if not n:
            return 0
        self._pt_hash.update(data)
        self.plaintext_size += n
        self._buf += data
        if len(self._buf) > CHUNK:       # strictly more: the chunk is not the last one
            view = memoryview(self._buf)
            off = 0
            out = []
            while len(self._buf) - off > CHUNK:
                out.append(self._seal(view[off:off + CHUNK], last=False))
                off += CHUNK
            view.release()
            del self._buf[:off]
            self._emit(b''.join(out))
        return n

    def flush(self) -> None:
        """Push written chunks to the OS (the unfinished chunk stays here; see the module)."""
        if self._sink is not None and hasattr(self._sink, 'flush'):
            self._sink.flush()

    def durable_flush(self) -> bool:
        """fsync every complete chunk; True when they are all on disk.

        At most 64 KiB of plaintext (the unfinished chunk) is not on disk afterwards: age
        forbids a short chunk that is not the last one. A DurableFile target that is
        out of space keeps the bytes and returns False, like its ``sync``.
        """
        if self._fd >= 0:
            os.fsync(self._fd)
            return True
        sink = self._sink
        sync = getattr(sink, 'sync', None)
        if callable(sync):
            return bool(sync())
        self.flush()
        fileno = getattr(sink, 'fileno', None)
        try:
            fd = fileno() if callable(fileno) else -1
        except io.UnsupportedOperation:             # an in-memory sink: nothing to sync
            fd = -1
        if fd >= 0:
            os.fsync(fd)
        return True

    def close(self) -> None:
        """Seal the final chunk, make the file durable, and (for a path) close it."""
        if self._closed:
            return
        self._emit(self._seal(memoryview(self._buf), last=True))
        self._buf.clear()
        self._closed = True
        self.durable_flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def abandon(self) -> None:
        """Stop without the final chunk (the file reads as truncated): for shutdown on a
        full disk, and for tests that stand in for a crash."""
        self._closed = True
        self._buf.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AgeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # results ---------------------------------------------------------------------------
    def plaintext_sha256(self) -> str:
        self._require_closed()
        return self._pt_hash.hexdigest()

    def ciphertext_sha256(self) -> str:
        self._require_closed()
        return self._ct_hash.hexdigest()

    def _require_closed(self) -> None:
        if not self._closed:
            raise AgeError(f'{self.name}: hashes are final only after close()')

    # internals -------------------------------------------------------------------------
    def _seal(self, chunk: memoryview, last: bool) -> bytes:
        ct = self._aead.encrypt(_chunk_nonce(self._counter, last), chunk, None)
        self._counter += 1
        return ct

    def _emit(self, data: bytes) -> None:
        self._ct_hash.update(data)
        self.ciphertext_size += len(data)
        if self._fd >= 0:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        else:
            assert self._sink is not None
            self._sink.write(data)


# -- reading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stanza:
    kind: str
    args: tuple[str, ...]
    body: bytes


@dataclass(frozen=True)
class Header:
    stanzas: tuple[Stanza, ...]
    mac: bytes
    mac_input: bytes      # the header up to and including '---'
    size: int             # bytes up to and including the MAC line's LF


class _Truncated(AgeError):
    """The header ends at end of file: a crash before it reached the disk whole."""


def read_header(f: BinaryIO) -> Header:
    """Parse an age v1 header (no key needed). Leaves ``f`` at the payload nonce."""
    raw = bytearray()

    def line() -> bytes:
        got = f.readline(_MAX_HEADER - len(raw) + 1)
        raw.extend(got)
        if len(raw) > _MAX_HEADER:
            raise AgeError(f'header: longer than {_MAX_HEADER} bytes')
        if not got.endswith(b'\n'):
            raise _Truncated(f'header: truncated after {len(raw)} bytes')
        return got[:-1]

    first = f.readline(len(VERSION_LINE))
    raw += first
    if first != VERSION_LINE:
        if VERSION_LINE.startswith(first):
            raise _Truncated(f'header: truncated after {len(first)} bytes')
        raise AgeError(f'header: not an age v1 file (starts {first[:24]!r})')
    stanzas: list[Stanza] = []
    cur = line()
    while cur.startswith(b'-> '):
        fields = cur[3:].split(b' ')
        if any(not a or not all(33 <= c <= 126 for c in a) for a in fields):
            raise AgeError(f'header: malformed stanza line {cur[:80]!r}')
        body = bytearray()
        while True:
            bl = line()
            body += _unb64(bl, 'stanza body')
            if len(bl) < 64:
                break
        args = tuple(a.decode('ascii') for a in fields)
        stanzas.append(Stanza(args[0], args[1:], bytes(body)))
        cur = line()
    if not stanzas:
        raise AgeError('header: no recipient stanza')
    if not cur.startswith(b'--- ') or len(cur) != 4 + 43:
        raise AgeError(f'header: expected the MAC line, got {cur[:80]!r}')
    mac = _unb64(cur[4:], 'MAC')
    return Header(tuple(stanzas), mac, bytes(raw[:len(raw) - 45]), len(raw))


def _unwrap(header: Header, identities: Sequence[X25519PrivateKey]) -> bytes:
    found = 0
    for st in header.stanzas:
        if st.kind != 'X25519':
            continue                                  # others (plugins, grease): ignored
        found += 1
        if len(st.args) != 1:
            raise AgeError(f'header: X25519 stanza with {len(st.args)} arguments, not 1')
        share = _unb64(st.args[0].encode(), 'X25519 share')
        if len(share) != 32 or len(st.body) != 32:
            raise AgeError('header: X25519 stanza share or body is not 32 bytes')
        for ident in identities:
            try:
                shared = ident.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError as exc:                  # low-order point: all-zero secret
                raise AgeError('header: X25519 share gives an all-zero secret') from exc
            if shared == bytes(32):
                raise AgeError('header: X25519 share gives an all-zero secret')
            key = _hkdf(shared, share + ident.public_key().public_bytes_raw(), _X25519_INFO)
            try:
                return ChaCha20Poly1305(key).decrypt(bytes(12), st.body, None)
            except InvalidTag:
                continue
    mine = ', '.join(encode_recipient(i.public_key()) for i in identities)
    raise AgeError(f'no identity matches: the file has {found} X25519 stanza(s), none for '
                   f'{mine}')


@dataclass(frozen=True)
class AgeLayout:
    """What the unit can tell about an age file without the key."""
    header_size: int
    recipients: int           # X25519 stanzas
    size: int
    full_chunks: int          # whole 64 KiB ciphertext chunks after the nonce
    tail_bytes: int           # bytes after them: the final chunk, or a crash's torn write

    @property
    def max_plaintext(self) -> int:
        return self.full_chunks * CHUNK + max(0, self.tail_bytes - TAG)


def scan(path: str | os.PathLike[str]) -> AgeLayout:
    """Parse the header and measure the payload (no key: what a unit or ``verify`` sees).

    A unit recovering after a crash seals the file as it is: :func:`decrypt` at the agency
    keeps every complete chunk and reports the torn tail.
    """
    with open(path, 'rb') as f:
        header = read_header(f)
        size = os.fstat(f.fileno()).st_size
    body = size - header.size - NONCE
    if body < 0:
        raise AgeError(f'{os.fspath(path)}: payload nonce truncated ({size} bytes)', 0)
    full, tail = divmod(body, CHUNK_CT)
    if tail == 0 and full:                     # a full last chunk may be the final one
        full, tail = full - 1, CHUNK_CT
    n = sum(st.kind == 'X25519' for st in header.stanzas)
    return AgeLayout(header.size, n, size, full, tail)


@dataclass(frozen=True)
class DecryptResult:
    complete: bool            # the final chunk was found and authenticated
    plaintext_bytes: int      # written to ``out``, every byte authenticated
    chunks: int               # authenticated chunks
    torn_bytes: int           # bytes after the last authenticated chunk (a crash's tail)
    ciphertext_bytes: int
    plaintext_sha256: str
    ciphertext_sha256: str


class _HashingReader:
    """Reads ``f`` and hashes every byte read (the ciphertext hash the manifest signs)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.hash, self.size = f, hashlib.sha256(), 0

    def _count(self, data: bytes) -> bytes:
        self.hash.update(data)
        self.size += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        return self._count(self._f.readline(limit))

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            got = self._f.read(n - len(out))
            if not got:
                break
            out += got
        return self._count(bytes(out))


def decrypt(source: str | os.PathLike[str] | BinaryIO,
            identity: X25519PrivateKey | Sequence[X25519PrivateKey],
            out: Sink, allow_truncated: bool = True) -> DecryptResult:
    """Stream-decrypt an age file into ``out``; only authenticated plaintext is written.

    A file cut short (a crash) yields every complete chunk and ``complete=False``; with
    ``allow_truncated=False`` that raises instead. A bad header, a wrong identity and a
    chunk that fails authentication where the file goes on after it raise AgeError (with
    ``chunk`` set for the payload). A short tail at the end that does not authenticate is
    a torn write (``torn_bytes``): a crash and a changed last chunk look alike there, so a
    sealed file is judged by ``complete`` and by its signed ciphertext hash.
    """
    ids = [identity] if isinstance(identity, X25519PrivateKey) else list(identity)
    if isinstance(source, (str, os.PathLike)):
        with open(source, 'rb') as f:
            return _decrypt(f, ids, out, allow_truncated)
    return _decrypt(source, ids, out, allow_truncated)


def _decrypt(f: BinaryIO, ids: list[X25519PrivateKey], out: Sink,
             allow_truncated: bool) -> DecryptResult:
    r = _HashingReader(f)
    pt_hash = hashlib.sha256()
    chunks = plain = 0

    def result(complete: bool, torn: int) -> DecryptResult:
        if not complete and not allow_truncated:
            raise AgeError(f'truncated: {chunks} complete chunk(s), then {torn} torn bytes',
                           chunks)
        return DecryptResult(complete, plain, chunks, torn, r.size, pt_hash.hexdigest(),
                             r.hash.hexdigest())

    try:
        header = read_header(r)   # type: ignore[arg-type]
    except _Truncated:                                 # crash before the header was whole
        return result(False, r.size)
    file_key = _unwrap(header, ids)
    want = hmac.new(_hkdf(file_key, b'', b'header'), header.mac_input, hashlib.sha256).digest()
    if not hmac.compare_digest(want, header.mac):
        raise AgeError('header: MAC mismatch (the header was changed)')
    nonce = r.read(NONCE)
    if len(nonce) < NONCE:
        return result(False, len(nonce))
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b'payload'))
    cur = r.read(CHUNK_CT)
    while True:
        nxt = r.read(CHUNK_CT) if len(cur) == CHUNK_CT else b''
        idx = chunks
        last = False
        if nxt:                                        # more follows: must be non-final
            try:
                pt = aead.decrypt(_chunk_nonce(idx, False), cur, None)
            except InvalidTag:
                raise AgeError(f'chunk {idx} failed authentication (changed, or data '
                               f'reordered)', idx) from None
        else:
            if len(cur) < TAG:
                return result(False, len(cur))
            try:
                pt = aead.decrypt(_chunk_nonce(idx, True), cur, None)
                if not pt and idx > 0:
                    raise AgeError(f'chunk {idx}: empty final chunk after data', idx)
                last = True
            except InvalidTag:
                last = False
                try:
                    pt = aead.decrypt(_chunk_nonce(idx, False), cur, None)
                except InvalidTag:
                    if len(cur) == CHUNK_CT:           # a torn write is shorter than a chunk
                        raise AgeError(f'chunk {idx} failed authentication (changed)',
                                       idx) from None
                    return result(False, len(cur))
                if len(cur) != CHUNK_CT:
                    raise AgeError(f'chunk {idx}: short chunk that is not final', idx)
        out.write(pt)
        pt_hash.update(pt)
        plain += len(pt)
        chunks += 1
        if not nxt:
            return result(last, 0)
        cur = nxt
