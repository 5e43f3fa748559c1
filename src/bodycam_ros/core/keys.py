"""The unit's Ed25519 signing key: in a key file outside the evidence, or inside a PKCS#11 token.

Whoever holds the storage card must not also hold the key that vouches for it, so
``bodycam provision`` puts the key in its own directory (0700, the key 0600, optionally
encrypted with a passphrase) and refuses a directory inside the evidence directory. Where the
unit has a PKCS#11 token (a TPM 2.0 through tpm2-pkcs11, a secure element, SoftHSM2 in tests)
the key is generated on the token as sensitive and non-extractable and only signatures leave it.

Key directory layout (``device.json`` says which backend holds the private key)::

    device.json            {"format", "backend": "file"|"pkcs11", "device_id", "public_key",
                            "fingerprint", "pkcs11": {"module", "token", "label", "pin_file"}}
    device_ed25519         PEM PKCS#8 private key (file backend only; 0600)
    device_ed25519.pub     PEM SubjectPublicKeyInfo public key
    device_ed25519.hex     the raw 32-byte public key as 64 hex digits (what provision prints)

Passphrases and PINs come from an environment variable or a 0600 file, never from argv.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from bodycam_ros.core.fsio import fsync_dir, write_atomic

KEY_NAME = 'device_ed25519'
DEVICE_INFO = 'device.json'
FORMAT = 'bodycam-device-key/1'
PASSPHRASE_ENV = 'BODYCAM_KEY_PASSPHRASE'
PASSPHRASE_FILE_ENV = 'BODYCAM_KEY_PASSPHRASE_FILE'
PKCS11_LABEL = 'bodycam-device'
#: DER OID of Ed25519 (1.3.101.112), the CKA_EC_PARAMS of an edwards25519 key.
ED25519_EC_PARAMS = bytes.fromhex('06032b6570')


class KeyStoreError(RuntimeError):
    """A device key that cannot be created, unlocked, found or used."""


def fingerprint(public_raw: bytes) -> str:
    """SHA-256 hex of the raw public key: the same value evidence.DeviceKey reports."""
    return hashlib.sha256(public_raw).hexdigest()


@runtime_checkable
class Signer(Protocol):
    """What the recorder needs from a device key, wherever the private half lives."""

    @property
    def key_id(self) -> str:
        """The key's fingerprint (SHA-256 hex of the raw public key)."""
        ...

    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        ...

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``data``."""
        ...


# -- secrets from files and the environment ------------------------------------------------------
def read_secret_file(path: Path) -> bytes:
    """A passphrase or PIN from a file readable by its owner only; one trailing newline dropped.

    A secret file readable by group or others is refused: it may already have been copied.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyStoreError(f'secret file {path}: {exc.strerror}') from exc
    if st.st_mode & 0o077:
        raise KeyStoreError(f'secret file {path} has mode {st.st_mode & 0o777:o}; '
                            'it must be 0600 (or 0400)')
    data = path.read_bytes()
    if data.endswith(b'\r\n'):
        data = data[:-2]
    elif data.endswith(b'\n'):
        data = data[:-1]
    if not data:
        raise KeyStoreError(f'secret file {path} is empty')
    return data


def secret_from(env: str | None = None, file: Path | None = None) -> bytes | None:
    """A secret from ``file`` if given, else from the environment variable ``env`` (if set)."""
    if file is not None:
        return read_secret_file(file)
    if env:
        value = os.environ.get(env)
        if value is not None:
            if not value:
                raise KeyStoreError(f'environment variable {env} is set but empty')
            return value.encode('utf-8')
    return None


def passphrase_from_env(env: str = PASSPHRASE_ENV,
                        file_env: str = PASSPHRASE_FILE_ENV) -> bytes | None:
    """The device key passphrase from ``$BODYCAM_KEY_PASSPHRASE_FILE`` or
    ``$BODYCAM_KEY_PASSPHRASE``; None when neither is set (an unencrypted key)."""
    file = os.environ.get(file_env)
    return secret_from(env, Path(file) if file else None)


# -- PEM private keys (shared with the agency's keys in core.trust) -------------------------------
def write_private_pem(path: Path, private: Any, passphrase: bytes | None) -> None:
    """Write a private key as PKCS#8 PEM, 0600, created exclusively (never overwrites a key)."""
    from cryptography.hazmat.primitives import serialization

    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                enc)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyStoreError(f'{path} already exists; refusing to overwrite a key') from exc
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def load_private_pem(path: Path, passphrase: bytes | None, kind: type) -> Any:
    """Load a PEM private key of class ``kind``, refusing a file readable by others and naming
    the file on a missing or wrong passphrase."""
    from cryptography.hazmat.primitives import serialization

    try:
        st = path.stat()
    except OSError as exc:
        raise KeyStoreError(f'{path}: {exc.strerror}') from exc
    if st.st_mode & 0o077:
        raise KeyStoreError(f'{path} has mode {st.st_mode & 0o777:o}; a private key must be 0600')
    data = path.read_bytes()
    encrypted = b'ENCRYPTED PRIVATE KEY' in data
    if encrypted and not passphrase:
        raise KeyStoreError(f'{path} is passphrase-protected and no passphrase was given')
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except ValueError as exc:
        if encrypted:
            raise KeyStoreError(f'{path}: wrong passphrase (or a damaged key file)') from exc
        raise KeyStoreError(f'{path}: not a PEM private key: {exc}') from exc
    if not isinstance(key, kind):
        raise KeyStoreError(f'{path}: a {type(key).__name__}, expected {kind.__name__}')
    return key


def public_pem(public: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_public_key(text: str | bytes) -> bytes:
    """A raw 32-byte Ed25519 public key from PEM, 64 hex digits or base64 (as manifests carry).

    Raises KeyStoreError naming the value when it is none of those.
    """
    import base64
    import binascii

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = text.encode('ascii', 'replace') if isinstance(text, str) else text
    data = data.strip()
    if data.startswith(b'-----BEGIN'):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyStoreError(f'not a PEM public key: {exc}') from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyStoreError(f'a {type(key).__name__} PEM key, expected Ed25519')
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shown = data[:80].decode('ascii', 'replace')
    if len(data) == 64:
        try:
            return bytes.fromhex(data.decode('ascii'))
        except ValueError:
            pass
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raw = b''
    if len(raw) == 32:
        return raw
    raise KeyStoreError(f'{shown!r} is not an Ed25519 public key (PEM, 64 hex digits or base64 '
                        'of 32 bytes)')


def check_outside(key_dir: Path, evidence_dir: Path | None) -> None:
    """Refuse a key directory inside (or equal to) the evidence directory."""
    if evidence_dir is None:
        return
    k, e = key_dir.resolve(), evidence_dir.resolve()
    if k == e or e in k.parents:
        raise KeyStoreError(f'key directory {key_dir} is inside the evidence directory '
                            f'{evidence_dir}; whoever takes the card would take the key too')


def _prepare_dir(key_dir: Path) -> None:
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(key_dir, 0o700)
    if (key_dir / DEVICE_INFO).exists():
        raise KeyStoreError(f'{key_dir} already holds a provisioned key ({DEVICE_INFO}); '
                            'use another directory or remove it on purpose')


def _write_public(key_dir: Path, public_raw: bytes, info: dict[str, Any]) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    pub = Ed25519PublicKey.from_public_bytes(public_raw)
    write_atomic(key_dir / f'{KEY_NAME}.pub', public_pem(pub), mode=0o600)
    write_atomic(key_dir / f'{KEY_NAME}.hex', (public_raw.hex() + '\n').encode(), mode=0o600)
    info = {'format': FORMAT, 'public_key': public_raw.hex(),
            'fingerprint': fingerprint(public_raw), **info}
    write_atomic(key_dir / DEVICE_INFO,
                 (json.dumps(info, indent=2, sort_keys=True) + '\n').encode(), mode=0o600)


def read_device_info(key_dir: Path) -> dict[str, Any]:
    path = key_dir / DEVICE_INFO
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise KeyStoreError(f'{key_dir} holds no provisioned key ({DEVICE_INFO} missing); '
                            'run bodycam provision --key-dir') from exc
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f'{path}: unreadable: {exc}') from exc
    if not isinstance(info, dict) or info.get('format') != FORMAT:
        raise KeyStoreError(f'{path}: not a {FORMAT} file')
    return info


# -- file backend ------------------------------------------------------------------------------
class FileSigner:
    """An Ed25519 key in ``key_dir/device_ed25519`` (PKCS#8 PEM, 0600, maybe encrypted)."""

    def __init__(self, private: Any, public_raw: bytes) -> None:
        self._private = private
        self._public = public_raw

    @property
    def key_id(self) -> str:
        return fingerprint(self._public)

    def public_key_bytes(self) -> bytes:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    @classmethod
    def create(cls, key_dir: Path, device_id: str | None = None,
               passphrase: bytes | None = None,
               evidence_dir: Path | None = None) -> FileSigner:
        """Generate a new key in ``key_dir`` (0700); refuses an already provisioned directory."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        check_outside(key_dir, evidence_dir)
        _prepare_dir(key_dir)
        private = Ed25519PrivateKey.generate()
        write_private_pem(key_dir / KEY_NAME, private, passphrase)
        signer = cls(private, _raw_public(private))
        _write_public(key_dir, signer._public, {
            'backend': 'file', 'device_id': device_id, 'encrypted': bool(passphrase)})
        return signer

    @classmethod
    def load(cls, key_dir: Path, passphrase: bytes | None = None) -> FileSigner:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private = load_private_pem(key_dir / KEY_NAME, passphrase, Ed25519PrivateKey)
        return cls(private, _raw_public(private))


def _raw_public(private: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return private.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)


# -- PKCS#11 backend ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Pkcs11Config:
    """Where the key lives: the module (.so), the token label and the key's CKA_LABEL."""
    module: str
    token: str
    label: str = PKCS11_LABEL
    pin_file: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {'module': self.module, 'token': self.token, 'label': self.label,
                'pin_file': self.pin_file}


_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


def _lib(module: str) -> Any:
    """One loaded ``pkcs11.lib`` per module path: C_Initialize runs once per process."""
    try:
        import pkcs11
    except ImportError as exc:
        raise KeyStoreError('the PKCS#11 path needs python-pkcs11 (pip install '
                            'python-pkcs11)') from exc
    # One path per library: the same .so loaded under two names (a symlink) would be
    # C_Initialize'd twice, which a module refuses (CKR_CRYPTOKI_ALREADY_INITIALIZED).
    module = os.path.realpath(module)
    with _LIBS_LOCK:
        if module not in _LIBS:
            if not Path(module).is_file():
                raise KeyStoreError(f'PKCS#11 module {module} does not exist')
            try:
                _LIBS[module] = pkcs11.lib(module)
            except (pkcs11.PKCS11Error, OSError, RuntimeError) as exc:
                raise KeyStoreError(f'PKCS#11 module {module} failed to load: {exc!r}') from exc
        return _LIBS[module]


class _TokenSession:
    """One logged-in session per (module, token) in a process, shared by its signers.

    PKCS#11 login state belongs to the application, not the session: a second C_Login fails
    (CKR_USER_ALREADY_LOGGED_IN) and closing a logged-in session logs out every other one, so
    signers on one token share one session, one lock, and the last to close logs out.
    """

    def __init__(self, key: tuple[str, str], session: Any) -> None:
        self.key = key
        self.session = session
        self.lock = threading.Lock()          # a session runs one operation at a time
        self.refs = 1


_SESSIONS: dict[tuple[str, str], _TokenSession] = {}


def _acquire(cfg: Pkcs11Config, pin: str) -> _TokenSession:
    import pkcs11

    lib = _lib(cfg.module)
    key = (os.path.realpath(cfg.module), cfg.token)
    with _LIBS_LOCK:
        shared = _SESSIONS.get(key)
        if shared is not None:
            shared.refs += 1
            return shared
        try:
            token = lib.get_token(token_label=cfg.token)
        except pkcs11.NoSuchToken as exc:
            raise KeyStoreError(f'no PKCS#11 token labelled {cfg.token!r} in '
                                f'{cfg.module}') from exc
        except pkcs11.MultipleTokensReturned as exc:
            raise KeyStoreError(f'several PKCS#11 tokens labelled {cfg.token!r}') from exc
        try:
            try:
                session = token.open(rw=True, user_pin=pin)
            except pkcs11.TokenWriteProtected:
                session = token.open(rw=False, user_pin=pin)   # signing needs no writes
        except pkcs11.PinIncorrect as exc:
            raise KeyStoreError(f'wrong PIN for PKCS#11 token {cfg.token!r}') from exc
        except pkcs11.PKCS11Error as exc:
            raise KeyStoreError(f'cannot log in to PKCS#11 token {cfg.token!r}: '
                                f'{exc!r}') from exc
        shared = _SESSIONS[key] = _TokenSession(key, session)
        return shared


def _release(shared: _TokenSession) -> None:
    with _LIBS_LOCK:
        shared.refs -= 1
        if shared.refs == 0:
            del _SESSIONS[shared.key]
            with shared.lock:
                shared.session.close()


def _ec_point_raw(point: bytes) -> bytes:
    """CKA_EC_POINT of an Ed25519 key: a DER OCTET STRING (04 20 + 32 bytes; SoftHSM, the
    PKCS#11 3.0 text) or the bare 32 bytes (some tokens)."""
    if len(point) == 34 and point[:2] == b'\x04\x20':
        return point[2:]
    if len(point) == 32:
        return point
    raise KeyStoreError(f'unexpected CKA_EC_POINT for an Ed25519 key: {point.hex()}')


def _generate_on(session: Any, cfg: Pkcs11Config) -> tuple[Any, bytes]:
    """(private key object, raw public key) of a new Ed25519 pair stored on the token."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    if list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                 Attribute.LABEL: cfg.label})):
        raise KeyStoreError(f'token {cfg.token!r} already holds a key labelled '
                            f'{cfg.label!r}; refusing to make a second')
    params = session.create_domain_parameters(
        KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: ED25519_EC_PARAMS}, local=True)
    public, private = params.generate_keypair(
        id=os.urandom(16), label=cfg.label, store=True,
        public_template={Attribute.TOKEN: True, Attribute.VERIFY: True,
                         Attribute.PRIVATE: False},
        private_template={Attribute.TOKEN: True, Attribute.PRIVATE: True,
                          Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                          Attribute.SIGN: True, Attribute.DECRYPT: False,
                          Attribute.UNWRAP: False, Attribute.DERIVE: False})
    return private, _ec_point_raw(bytes(public[Attribute.EC_POINT]))


class Pkcs11Signer:
    """An Ed25519 key inside a PKCS#11 token (CKK_EC_EDWARDS, CKM_EDDSA). The private key is
    CKA_SENSITIVE and not CKA_EXTRACTABLE: nothing but signatures ever leaves the token."""

    def __init__(self, cfg: Pkcs11Config, shared: _TokenSession, private: Any,
                 public_raw: bytes) -> None:
        self.config = cfg
        self._shared: _TokenSession | None = shared
        self._private = private
        self._public = public_raw
        self._lock = shared.lock

    @property
    def key_id(self) -> str:
        return fingerprint(self._public)

    def public_key_bytes(self) -> bytes:
        return self._public

    def sign(self, data: bytes) -> bytes:
        import pkcs11
        if self._shared is None:
            raise KeyStoreError(f'signer for token {self.config.token!r} is closed')
        with self._lock:
            try:
                sig = self._private.sign(bytes(data), mechanism=pkcs11.Mechanism.EDDSA)
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(f'PKCS#11 signing failed on token {self.config.token!r}: '
                                    f'{exc!r}') from exc
        if len(sig) != 64:
            raise KeyStoreError(f'PKCS#11 token returned a {len(sig)}-byte signature')
        return bytes(sig)

    def private_key_attributes(self) -> dict[str, bool]:
        """The token's own word on the key: sensitive, extractable, never extractable."""
        from pkcs11 import Attribute
        with self._lock:
            return {'sensitive': bool(self._private[Attribute.SENSITIVE]),
                    'extractable': bool(self._private[Attribute.EXTRACTABLE]),
                    'always_sensitive': bool(self._private[Attribute.ALWAYS_SENSITIVE]),
                    'never_extractable': bool(self._private[Attribute.NEVER_EXTRACTABLE])}

    def close(self) -> None:
        """Let go of the shared session; the last signer on the token logs out."""
        shared, self._shared = self._shared, None
        if shared is not None:
            _release(shared)

    def __enter__(self) -> Pkcs11Signer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def generate(cls, cfg: Pkcs11Config, pin: str) -> Pkcs11Signer:
        """Generate the key pair on the token, stored, sensitive, never extractable."""
        import pkcs11

        shared = _acquire(cfg, pin)
        try:
            with shared.lock:
                private, raw = _generate_on(shared.session, cfg)
        except pkcs11.PKCS11Error as exc:
            _release(shared)
            raise KeyStoreError(f'token {cfg.token!r} could not generate an Ed25519 key '
                                f'(CKM_EC_EDWARDS_KEY_PAIR_GEN): {exc!r}') from exc
        except BaseException:
            _release(shared)
            raise
        return cls(cfg, shared, private, raw)

    @classmethod
    def open(cls, cfg: Pkcs11Config, pin: str) -> Pkcs11Signer:
        """Find the key labelled ``cfg.label`` on the token and keep a session for signing."""
        import pkcs11
        from pkcs11 import Attribute, KeyType, ObjectClass

        shared = _acquire(cfg, pin)
        session = shared.session
        try:
            with shared.lock:
                private = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC_EDWARDS,
                                          label=cfg.label)
                public = session.get_key(ObjectClass.PUBLIC_KEY, KeyType.EC_EDWARDS,
                                         label=cfg.label)
                raw = _ec_point_raw(bytes(public[Attribute.EC_POINT]))
        except pkcs11.NoSuchKey as exc:
            _release(shared)
            raise KeyStoreError(f'token {cfg.token!r} holds no Ed25519 key labelled '
                                f'{cfg.label!r}') from exc
        except pkcs11.PKCS11Error as exc:
            _release(shared)
            raise KeyStoreError(f'token {cfg.token!r}: {exc!r}') from exc
        return cls(cfg, shared, private, raw)


def provision_pkcs11(key_dir: Path, cfg: Pkcs11Config, pin: str, device_id: str | None = None,
                     evidence_dir: Path | None = None) -> Pkcs11Signer:
    """Generate the device key on the token and record where it is in ``key_dir/device.json``
    (no private key file is written)."""
    check_outside(key_dir, evidence_dir)
    _prepare_dir(key_dir)
    signer = Pkcs11Signer.generate(cfg, pin)
    _write_public(key_dir, signer.public_key_bytes(),
                  {'backend': 'pkcs11', 'device_id': device_id, 'pkcs11': cfg.as_dict()})
    return signer


def open_signer(key_dir: Path, passphrase: bytes | None = None,
                pin: str | None = None) -> FileSigner | Pkcs11Signer:
    """The provisioned signer in ``key_dir``, whichever backend holds it.

    ``passphrase`` defaults to ``passphrase_from_env()``; ``pin`` to the ``pin_file`` recorded
    at provisioning. The public key found is checked against the one recorded then.
    """
    info = read_device_info(key_dir)
    signer: FileSigner | Pkcs11Signer
    if info.get('backend') == 'pkcs11':
        p = info.get('pkcs11') or {}
        cfg = Pkcs11Config(str(p.get('module')), str(p.get('token')),
                           str(p.get('label') or PKCS11_LABEL), p.get('pin_file'))
        if pin is None:
            if not cfg.pin_file:
                raise KeyStoreError(f'{key_dir}/{DEVICE_INFO} names no pin_file and no PIN '
                                    'was given')
            pin = read_secret_file(Path(cfg.pin_file)).decode('utf-8')
        signer = Pkcs11Signer.open(cfg, pin)
    elif info.get('backend') == 'file':
        if passphrase is None:
            passphrase = passphrase_from_env()
        signer = FileSigner.load(key_dir, passphrase)
    else:
        raise KeyStoreError(f'{key_dir}/{DEVICE_INFO}: unknown backend {info.get("backend")!r}')
    if signer.public_key_bytes().hex() != info.get('public_key'):
        raise KeyStoreError(f'{key_dir}: the key found ({signer.key_id[:16]}) is not the one '
                            f'provisioned ({str(info.get("fingerprint"))[:16]})')
    return signer
