"""The agency and its trust store: which device keys may sign evidence.

A key found next to the evidence proves nothing: whoever rewrote the evidence could have
rewritten the key too. What a verifier trusts is the agency's registry of device keys,
``devices.json`` in the agency directory, in which every entry is signed by the agency's
Ed25519 signing key and the ordered list as a whole is signed again (``registry_sig``), so a
hand-edited key is caught and named, and so is an entry added, removed or reordered. The
registry cannot show that an older, validly signed copy was put back in place of the newest
one (a rollback that un-revokes a device): keep the agency directory where the agency controls
it, and pin ``serial`` if a copy travels.

Agency directory (0700; every file 0600; kept off the units)::

    agency.json              name, created_at, demo flag, both public keys (hex), fingerprints
    signing_ed25519.key      registers devices (PKCS#8 PEM, optionally passphrase-encrypted)
    signing_ed25519.pub      the trust root a verifier checks devices.json against
    encryption_x25519.key    decrypts evidence (PKCS#8 PEM, optionally passphrase-encrypted)
    encryption_x25519.pub    what units encrypt evidence to (the only file a unit needs)
    devices.json             the signed registry

A verifier needs only ``signing_ed25519.pub`` (or the key pinned by hand) and ``devices.json``.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bodycam_ros.core.fsio import write_atomic
from bodycam_ros.core.keys import (KeyStoreError, fingerprint, load_private_pem, public_pem,
                                   secret_from, write_private_pem)

AGENCY_INFO = 'agency.json'
SIGNING_KEY = 'signing_ed25519.key'
SIGNING_PUB = 'signing_ed25519.pub'
ENCRYPTION_KEY = 'encryption_x25519.key'
ENCRYPTION_PUB = 'encryption_x25519.pub'
REGISTRY = 'devices.json'
AGENCY_FORMAT = 'bodycam-agency/1'
REGISTRY_FORMAT = 'bodycam-trust/1'
PASSPHRASE_ENV = 'BODYCAM_AGENCY_PASSPHRASE'
PASSPHRASE_FILE_ENV = 'BODYCAM_AGENCY_PASSPHRASE_FILE'
#: Domain separation: a registry signature can never be replayed as a manifest signature.
_ENTRY_CONTEXT = b'bodycam-trust/1 device entry\n'
_LIST_CONTEXT = b'bodycam-trust/1 registry\n'
_DEVICE_ID = re.compile(r'[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}')


class TrustError(RuntimeError):
    """An agency or trust store that cannot be created, read or believed, or a signer it does
    not vouch for."""


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(',', ':'), ensure_ascii=True,
                      allow_nan=False).encode('ascii')


def _iso(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def check_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise TrustError(f'device id {device_id!r} is not 1-128 characters of '
                         'letters, digits and ._:@- (starting with a letter or digit)')
    return device_id


def agency_passphrase(file: Path | None = None) -> bytes | None:
    """The agency key passphrase: ``file``, else ``$BODYCAM_AGENCY_PASSPHRASE_FILE``, else
    ``$BODYCAM_AGENCY_PASSPHRASE``; None when none is set."""
    if file is None and os.environ.get(PASSPHRASE_FILE_ENV):
        file = Path(os.environ[PASSPHRASE_FILE_ENV])
    try:
        return secret_from(PASSPHRASE_ENV, file)
    except KeyStoreError as exc:
        raise TrustError(str(exc)) from exc


# -- devices -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """One registry entry: a device id bound to one Ed25519 public key."""
    device_id: str
    public_key: bytes          # raw 32 bytes
    registered_at: str         # ISO 8601 UTC
    revoked_at: str | None = None
    revoke_reason: str | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def record(self) -> dict[str, Any]:
        """The signed form of the entry."""
        return {'device_id': self.device_id, 'public_key': self.public_key.hex(),
                'algorithm': 'ed25519', 'fingerprint': self.fingerprint,
                'registered_at': self.registered_at, 'revoked_at': self.revoked_at,
                'revoke_reason': self.revoke_reason}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Device:
        """Parse an entry whose signature has already been checked."""
        try:
            dev = cls(str(rec['device_id']), bytes.fromhex(str(rec['public_key'])),
                      str(rec['registered_at']), rec.get('revoked_at'), rec.get('revoke_reason'))
        except (KeyError, ValueError, TypeError) as exc:
            raise TrustError(f'{REGISTRY}: malformed entry {rec!r}: {exc}') from exc
        if len(dev.public_key) != 32 or rec.get('algorithm') != 'ed25519':
            raise TrustError(f'{REGISTRY}: entry for device {dev.device_id!r} is not a 32-byte '
                             'Ed25519 key')
        if rec.get('fingerprint') != dev.fingerprint:
            raise TrustError(f'{REGISTRY}: entry for device {dev.device_id!r}: fingerprint does '
                             'not match its public key')
        return dev

    def as_dict(self) -> dict[str, Any]:
        return {**self.record(), 'active': self.active}


# -- the agency's keys -------------------------------------------------------------------------
def _ed25519_public(raw: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    return Ed25519PublicKey.from_public_bytes(raw)


def _load_public_pem(path: Path, kind: type) -> bytes:
    from cryptography.hazmat.primitives import serialization
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise TrustError(f'{path} is missing: is {path.parent} an agency directory '
                         '(bodycam agency init)?') from exc
    except ValueError as exc:
        raise TrustError(f'{path}: not a PEM public key: {exc}') from exc
    if not isinstance(key, kind):
        raise TrustError(f'{path}: a {type(key).__name__}, expected {kind.__name__}')
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signing_public_raw(agency_dir: Path) -> bytes:
    """The agency's raw 32-byte Ed25519 registry key: the trust root."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    return _load_public_pem(agency_dir / SIGNING_PUB, Ed25519PublicKey)


def encryption_public_raw(agency_dir: Path) -> bytes:
    """The agency's raw 32-byte X25519 public key, the one units encrypt evidence to."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    return _load_public_pem(agency_dir / ENCRYPTION_PUB, X25519PublicKey)


def load_encryption_public(agency_dir: Path) -> Any:
    """The agency's X25519PublicKey (cryptography object)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    return X25519PublicKey.from_public_bytes(encryption_public_raw(agency_dir))


def load_encryption_private(agency_dir: Path, passphrase: bytes | None = None) -> Any:
    """The agency's X25519PrivateKey; ``passphrase`` defaults to :func:`agency_passphrase`.

    Raises TrustError naming the file on a missing or wrong passphrase.
    """
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    if passphrase is None:
        passphrase = agency_passphrase()
    try:
        return load_private_pem(agency_dir / ENCRYPTION_KEY, passphrase, X25519PrivateKey)
    except KeyStoreError as exc:
        raise TrustError(str(exc)) from exc


def encryption_private_raw(agency_dir: Path, passphrase: bytes | None = None) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return load_encryption_private(agency_dir, passphrase).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption())


def _load_signing_private(agency_dir: Path, passphrase: bytes | None) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    if passphrase is None:
        passphrase = agency_passphrase()
    try:
        return load_private_pem(agency_dir / SIGNING_KEY, passphrase, Ed25519PrivateKey)
    except KeyStoreError as exc:
        raise TrustError(str(exc)) from exc


@dataclass(frozen=True)
class AgencyInfo:
    name: str
    created_at: str
    demo: bool
    signing_public_key: bytes
    encryption_public_key: bytes

    @property
    def fingerprint(self) -> str:
        """The agency's identity: SHA-256 of its registry signing key."""
        return fingerprint(self.signing_public_key)

    @property
    def encryption_fingerprint(self) -> str:
        return fingerprint(self.encryption_public_key)


def init_agency(agency_dir: Path, now: float, name: str = 'agency',
                passphrase: bytes | None = None, demo: bool = False) -> AgencyInfo:
    """Create the agency's signing and encryption key pairs and an empty signed registry.

    Refuses a directory that already holds an agency: its keys would be lost.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if (agency_dir / AGENCY_INFO).exists() or (agency_dir / SIGNING_KEY).exists():
        raise TrustError(f'{agency_dir} already holds an agency; refusing to replace its keys')
    agency_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(agency_dir, 0o700)
    signing = Ed25519PrivateKey.generate()
    encryption = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    try:
        write_private_pem(agency_dir / SIGNING_KEY, signing, passphrase)
        write_private_pem(agency_dir / ENCRYPTION_KEY, encryption, passphrase)
    except KeyStoreError as exc:
        raise TrustError(str(exc)) from exc
    write_atomic(agency_dir / SIGNING_PUB, public_pem(signing.public_key()), mode=0o600)
    write_atomic(agency_dir / ENCRYPTION_PUB, public_pem(encryption.public_key()), mode=0o600)
    info = AgencyInfo(name, _iso(now), demo, signing.public_key().public_bytes(*raw),
                      encryption.public_key().public_bytes(*raw))
    doc = {'format': AGENCY_FORMAT, 'name': name, 'created_at': info.created_at, 'demo': demo,
           'signing_public_key': info.signing_public_key.hex(),
           'encryption_public_key': info.encryption_public_key.hex(),
           'fingerprint': info.fingerprint,
           'encryption_fingerprint': info.encryption_fingerprint,
           'encrypted_private_keys': bool(passphrase)}
    _write_registry(agency_dir, signing, [], serial=0)
    write_atomic(agency_dir / AGENCY_INFO,
                 (json.dumps(doc, indent=2, sort_keys=True) + '\n').encode(), mode=0o600)
    return info


def read_agency(agency_dir: Path) -> AgencyInfo:
    """The agency's public description; the keys come from the .pub files, not agency.json."""
    path = agency_dir / AGENCY_INFO
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise TrustError(f'{agency_dir} is not an agency directory ({AGENCY_INFO} missing; '
                         'bodycam agency init)') from exc
    except (OSError, ValueError) as exc:
        raise TrustError(f'{path}: unreadable: {exc}') from exc
    if not isinstance(doc, dict) or doc.get('format') != AGENCY_FORMAT:
        raise TrustError(f'{path}: not a {AGENCY_FORMAT} file')
    return AgencyInfo(str(doc.get('name', '')), str(doc.get('created_at', '')),
                      bool(doc.get('demo')), signing_public_raw(agency_dir),
                      encryption_public_raw(agency_dir))


# -- the registry ------------------------------------------------------------------------------
def _entry_sig(private: Any, rec: dict[str, Any]) -> str:
    return base64.b64encode(private.sign(_ENTRY_CONTEXT + _canonical(rec))).decode('ascii')


def _list_message(agency_key: bytes, serial: int, sigs: list[str]) -> bytes:
    return _LIST_CONTEXT + _canonical({'agency_signing_key': agency_key.hex(),
                                       'serial': serial, 'entry_sigs': sigs})


def _write_registry(agency_dir: Path, private: Any, devices: list[Device], serial: int) -> None:
    from cryptography.hazmat.primitives import serialization
    agency_key = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
    entries = [{'record': d.record(), 'sig': _entry_sig(private, d.record())} for d in devices]
    sigs = [e['sig'] for e in entries]
    doc = {'format': REGISTRY_FORMAT, 'agency_signing_key': agency_key.hex(), 'serial': serial,
           'devices': entries,
           'registry_sig': base64.b64encode(
               private.sign(_list_message(agency_key, serial, sigs))).decode('ascii')}
    write_atomic(agency_dir / REGISTRY,
                 (json.dumps(doc, indent=2, sort_keys=True) + '\n').encode(), mode=0o600)


def _sig_ok(public: Any, sig_b64: Any, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    try:
        sig = base64.b64decode(str(sig_b64), validate=True)
        public.verify(sig, message)
    except (InvalidSignature, ValueError):
        return False
    return True


class TrustStore:
    """The registry as a verifier sees it, every signature checked on load."""

    def __init__(self, agency_key: bytes, devices: list[Device], serial: int,
                 path: Path | None = None) -> None:
        self.agency_key = agency_key
        self.devices: tuple[Device, ...] = tuple(devices)
        self.serial = serial
        self.path = path

    @property
    def agency_fingerprint(self) -> str:
        return fingerprint(self.agency_key)

    @classmethod
    def load(cls, agency_dir: Path, agency_key: bytes | None = None,
             min_serial: int | None = None) -> TrustStore:
        """Read ``agency_dir/devices.json`` and check it against the agency signing key.

        Args:
            agency_key: the trust root pinned by the caller; default ``signing_ed25519.pub``.
            min_serial: refuse an older registry (a rollback) when the caller knows better.
        Raises:
            TrustError naming the device whose entry fails its signature, or saying the list
            was changed, or the registry is missing or not signed by this agency.
        """
        if agency_key is None:
            agency_key = signing_public_raw(agency_dir)
        path = agency_dir / REGISTRY
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise TrustError(f'{path} is missing: no trust store in {agency_dir}') from exc
        except (OSError, ValueError) as exc:
            raise TrustError(f'{path}: unreadable: {exc}') from exc
        if not isinstance(doc, dict) or doc.get('format') != REGISTRY_FORMAT:
            raise TrustError(f'{path}: not a {REGISTRY_FORMAT} file')
        if doc.get('agency_signing_key') != agency_key.hex():
            raise TrustError(f'{path} names agency key {str(doc.get("agency_signing_key"))[:16]}'
                             f', not the trusted {fingerprint(agency_key)[:16]}... of this agency')
        public = _ed25519_public(agency_key)
        entries = doc.get('devices')
        if not isinstance(entries, list):
            raise TrustError(f'{path}: "devices" is not a list')
        devices: list[Device] = []
        for i, entry in enumerate(entries):
            rec = entry.get('record') if isinstance(entry, dict) else None
            if not isinstance(rec, dict):
                raise TrustError(f'{path}: entry {i} is malformed')
            who = rec.get('device_id')
            if not _sig_ok(public, entry.get('sig'), _ENTRY_CONTEXT + _canonical(rec)):
                raise TrustError(f'{path}: the entry for device {who!r} (entry {i}) does not '
                                 'carry a valid agency signature: it was edited outside '
                                 '`bodycam agency`')
            devices.append(Device.from_record(rec))
        serial = doc.get('serial')
        sigs = [str(e.get('sig')) for e in entries]
        if not isinstance(serial, int) or not _sig_ok(
                public, doc.get('registry_sig'), _list_message(agency_key, serial, sigs)):
            raise TrustError(f'{path}: the registry signature does not cover this list of '
                             'devices: an entry was added, removed or reordered (or serial '
                             'changed) outside `bodycam agency`')
        if min_serial is not None and serial < min_serial:
            raise TrustError(f'{path}: serial {serial} is older than the expected {min_serial}: '
                             'an older copy of the registry was put back')
        return cls(agency_key, devices, serial, path)

    def lookup(self, device_id: str) -> Device | None:
        """The device's active entry, else its newest revoked one, else None."""
        found = [d for d in self.devices if d.device_id == device_id]
        active = [d for d in found if d.active]
        return (active or found or [None])[-1]

    def by_public_key(self, public_raw: bytes) -> Device | None:
        """The entry for this raw key (active or revoked), or None when it was never
        registered."""
        for d in self.devices:
            if d.public_key == bytes(public_raw):
                return d
        return None

    def trusted(self, device_id_or_key: str | bytes) -> Device:
        """The active device for an id (str) or a raw key (bytes); raises TrustError saying
        why it is not trusted (never registered, or revoked)."""
        if isinstance(device_id_or_key, str):
            dev = self.lookup(device_id_or_key)
            what = f'device {device_id_or_key!r}'
        else:
            dev = self.by_public_key(device_id_or_key)
            what = f'key {fingerprint(bytes(device_id_or_key))[:16]}'
        if dev is None:
            raise TrustError(f'{what} is not registered with agency '
                             f'{self.agency_fingerprint[:16]}')
        if not dev.active:
            raise TrustError(f'{what} (device {dev.device_id!r}) was revoked at '
                             f'{dev.revoked_at}: {dev.revoke_reason or "no reason given"}')
        return dev

    def verify_signature(self, device_id_or_key: str | bytes, data: bytes,
                         signature: bytes) -> Device:
        """Check an Ed25519 signature by a registered, unrevoked device; returns the device.

        Raises TrustError naming the signer when it is unknown or revoked, or the signature
        is wrong.
        """
        from cryptography.exceptions import InvalidSignature
        dev = self.trusted(device_id_or_key)
        try:
            _ed25519_public(dev.public_key).verify(bytes(signature), bytes(data))
        except InvalidSignature as exc:
            raise TrustError(f'signature does not verify with the registered key of device '
                             f'{dev.device_id!r} ({dev.fingerprint[:16]})') from exc
        return dev


@contextmanager
def _locked(agency_dir: Path) -> Iterator[None]:
    """Serialise registry updates: two registrations at once must not lose one."""
    fd = os.open(agency_dir / '.lock', os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def register_device(agency_dir: Path, public_raw: bytes, device_id: str, now: float,
                    passphrase: bytes | None = None) -> Device:
    """Add a device key to the registry, signed by the agency.

    A device id has at most one active key (revoke the old one first); a key belongs to one
    device and is never registered again once revoked.
    """
    check_device_id(device_id)
    if len(public_raw) != 32:
        raise TrustError(f'device public key is {len(public_raw)} bytes, not 32')
    _ed25519_public(public_raw)
    with _locked(agency_dir):
        store = TrustStore.load(agency_dir)
        other = store.by_public_key(public_raw)
        if other is not None:
            state = 'active' if other.active else f'revoked at {other.revoked_at}'
            raise TrustError(f'key {fingerprint(public_raw)[:16]} is already registered to '
                             f'device {other.device_id!r} ({state})')
        current = store.lookup(device_id)
        if current is not None and current.active:
            raise TrustError(f'device {device_id!r} already has an active key '
                             f'{current.fingerprint[:16]}; revoke it first')
        private = _load_signing_private(agency_dir, passphrase)
        dev = Device(device_id, bytes(public_raw), _iso(now))
        _write_registry(agency_dir, private, [*store.devices, dev], store.serial + 1)
    return dev


def revoke_device(agency_dir: Path, device_id: str, now: float, reason: str = '',
                  passphrase: bytes | None = None) -> Device:
    """Mark the device's active key revoked; evidence it signs is no longer trusted."""
    with _locked(agency_dir):
        store = TrustStore.load(agency_dir)
        current = store.lookup(device_id)
        if current is None or not current.active:
            raise TrustError(f'device {device_id!r} has no active key to revoke')
        private = _load_signing_private(agency_dir, passphrase)
        revoked = Device(current.device_id, current.public_key, current.registered_at,
                         _iso(now), reason or None)
        devices = [revoked if d is current else d for d in store.devices]
        _write_registry(agency_dir, private, devices, store.serial + 1)
    return revoked


def ensure_demo_agency(agency_dir: Path, device_public_key: bytes, device_id: str,
                       now: float | None = None) -> bool:
    """The embedded default for ``bodycam run --agency DIR``.

    Creates a demo agency (unencrypted keys, ``demo: true``) in ``agency_dir`` on first use
    and registers the unit's key. Returns True only when it created the agency, so the caller
    can say once that this is a demo whose private keys belong off the unit. On a demo agency
    that exists already the unit's key is registered if it is not (a re-provisioned unit's old
    key is revoked first); a real agency is never written to from the unit.
    """
    now = time.time() if now is None else now
    created = False
    if not (agency_dir / AGENCY_INFO).exists():
        init_agency(agency_dir, now, name='demo agency (keys belong off the unit)', demo=True)
        created = True
    elif not read_agency(agency_dir).demo:
        return False
    store = TrustStore.load(agency_dir)
    dev = store.by_public_key(device_public_key)
    if dev is not None and dev.device_id == device_id and dev.active:
        return created
    current = store.lookup(device_id)
    if current is not None and current.active:
        revoke_device(agency_dir, device_id, now, 'demo: replaced by a newly provisioned key',
                      passphrase=b'')
    register_device(agency_dir, bytes(device_public_key), device_id, now, passphrase=b'')
    return created
