"""Tamper evidence: signed manifests, the hash chain, and their verification.

Every sealed incident carries ``manifest.json`` (canonical JSON: sorted keys, indent 2,
ASCII, one trailing newline; :func:`canonical`) and ``manifest.sig``, a raw 64-byte Ed25519
signature over exactly the manifest's bytes, made by the device key (``core.keys``: a file key
in ``key_dir`` outside the evidence directory, or a PKCS#11 token). Each manifest names the
SHA-256 of the previous sealed manifest, so removing, reordering or rewriting an incident
breaks a link even when each remaining incident is internally consistent.
``evidence_dir/chain_head`` records the newest link; ``evidence_dir/pruned.jsonl`` records
links whose incident was deleted after a verified upload; ``evidence_dir/ledger.jsonl`` (a
signed ``sealed``/``recovered`` entry per incident, ``core.ledger``) and
``evidence_dir/audit.jsonl`` (``core.audit``) sit beside them.

Manifest format ``bodycam-incident/2`` (written by ``core.spool.seal``)
-----------------------------------------------------------------------------------------
Top-level keys (all always present)::

    format                "bodycam-incident/2"
    incident_id           UUID string, equal to the directory name
    sequence              1, 2, ... per device (the chain position)
    prev_manifest_sha256  hex SHA-256 of the previous manifest's bytes; GENESIS for sequence 1
    prev_incident_id      the previous incident's id, or null for sequence 1
    device_id, officer_id strings
    software              {"name": "bodycam_ros", "version": str}
    device_public_key     base64 of the raw 32-byte Ed25519 key that signed (INFORMATIONAL
                          ONLY: a verifier trusts the agency trust store, never this field)
    device_key_sha256     hex SHA-256 of those 32 bytes (the key's fingerprint)
    encryption            {"scheme": "age-v1", "recipient": "age1..."}: every evidence file is
                          an age v1 file (core.encryption) encrypted to that X25519 recipient
                          (the agency's public key); or {"scheme": "none"}: plaintext files,
                          only when the unit was configured with encrypt: false
    clock                 "ros": ROS time came from the system clock, so every ROS time
                          below is UNIX time; "sim": it came from /clock (use_sim_time: a
                          replayed bag, Gazebo), so ROS times are the simulation's and the
                          wall_* fields say when this machine recorded it. Absent in older
                          manifests: "ros".
    triggers              [{"reason", "time" (ROS s: when the trigger began, on the
                          trigger_fusion node clock), "command_id", "received_time" (ROS s:
                          the recorder's node clock at reception)}]
    stops                 [{"time" (ROS s: when the stop was decided), "command_id",
                          "received_time" (ROS s)}]
    pre_event_s, post_event_s
    start_time, end_time  ROS s (the first/last video or sensor stamp) or null; start_iso,
                          end_iso the same as ISO 8601 (a sim date under "sim")
    start_ros_time, end_ros_time   the same values (kept for readers of older manifests)
    wall_start_time, wall_end_time UNIX s (wall clock) of start/end under "sim" (from the
                          open record's pairing of the two clocks); null under "ros", where
                          start_time already is wall time
    opened_time, sealed_time       UNIX s (wall clock: when this machine opened/sealed it)
    opened_ros_time, sealed_ros_time   the same moments in ROS s
    end_reason            post_roll | shutdown | superseded | recovered
    frame_count           int, or null when unknown (an encrypted clip left by a crash)
    video                 {"present": bool, "frame_count", "keyframes", "width", "height",
                          "first_stamp", "last_stamp" (ROS s: the camera's header stamps),
                          "codec": "h264",
                          "container": "fragmented mp4"}; unknown values are null; an
                          encrypted crash-left clip adds "frames_synced" (frames muxed at the
                          last sync; last_stamp is that frame's stamp)
    sensors               {"messages": {topic: count}, "skipped_types": {msgtype: count},
                          "first_stamp", "last_stamp" (ROS s of reception by the recorder)}
                          ({} / null when unknown: an encrypted
                          crash-left journal)
    gps_track             {"fixes", "no_fix", "first", "last", "bbox", "distance_m"};
                          {"fixes": null} when unknown
    recovered             bool: sealed after a crash (or after the muxer failed at close)
    recovery              null, or what recovery found (free-form details)
    replay                null for field evidence; {"bag": path, "sha256": hex} when the
                          inputs were a replayed rosbag2 (``bodycam run --replay``): NOT
                          field evidence. Absent in older manifests: null.
    files                 {name on disk: entry} for EVERY file in the incident directory
                          except manifest.json, manifest.sig and upload.json

File entries with ``"scheme": "age-v1"`` (the name on disk ends in ``.age``)::

    "video.mp4.age": {
        "sha256":   hex SHA-256 of the bytes on disk (the ciphertext),
        "size":     bytes on disk,
        "plaintext": {"name": "video.mp4", "sha256": hex, "size": int}
                    or null when the unit does not know it (a crash-recovered file: the unit
                    cannot decrypt, so it seals the ciphertext as found),
        "chunks":   age payload chunks on disk that are whole (64 KiB + 16-byte tag each),
                    plus the final chunk when complete,
        "torn_bytes": bytes after those chunks (0 when complete; a crash's torn write),
        "complete": true when the writer closed the file (final age chunk written), false for
                    a crash-left file
    }

Files of an encrypted incident: ``video.mp4.age`` (fragmented MP4 inside; absent when no
video), ``sensors.mcap.age`` (rosbag2 MCAP inside, streamed through the age writer while
recording). After a crash also ``sensors.journal.age`` (the crash-safe CRC-checked sensor
journal, ``core.sidecar.read_journal`` reads its plaintext) and whatever MCAP prefix was
written: every file is sealed as found with ``complete: false``. The agency decrypts (a torn
tail keeps every authenticated chunk), then repairs: ``core.mp4.repair`` for the video,
``core.sidecar.read_journal`` + ``write_mcap`` for the sensors.

File entries with ``"scheme": "none"`` (plaintext, names as in format 1: ``video.mp4``,
``sensors.mcap``, ``video.original.mp4`` after a repair, ``sensors.unreadable``)::

    "video.mp4": {"sha256": hex, "size": int, "complete": bool}

Format ``bodycam-incident/1`` (older units) has plaintext entries ``{"sha256", "size"}`` only.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bodycam_ros.core.fsio import append_durable, fsync_dir, write_atomic

KEY_NAME = 'device_ed25519'
MANIFEST = 'manifest.json'
SIGNATURE = 'manifest.sig'
UPLOAD_MARK = 'upload.json'        # written by the uploader after the remote copy verifies
CHAIN_HEAD = 'chain_head'
PRUNED_LOG = 'pruned.jsonl'
GENESIS = '0' * 64                 # prev_manifest_sha256 of a device's first incident
FORMAT = 'bodycam-incident/2'
FORMAT_V1 = 'bodycam-incident/1'
#: Suffix of an age-encrypted evidence file.
AGE_SUFFIX = '.age'
SCHEME_AGE = 'age-v1'
SCHEME_NONE = 'none'
#: A directory holding any of these is an incident (a missing manifest is then an error).
INCIDENT_MARKS = (MANIFEST, SIGNATURE, 'video.mp4', 'sensors.mcap', 'video.mp4.age',
                  'sensors.mcap.age', 'sensors.journal.age')
#: Files an incident may hold besides those its manifest lists.
UNLISTED_OK = frozenset({MANIFEST, SIGNATURE, UPLOAD_MARK})


class EvidenceError(RuntimeError):
    """A key or manifest that cannot be created, read or trusted."""


def canonical(manifest: dict[str, Any]) -> bytes:
    """The one byte form a manifest is written, hashed and signed in."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True,
                       allow_nan=False) + '\n').encode('ascii')


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """(hex digest, size) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, 'rb') as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


# -- the device key ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceKey:
    """Legacy (format 1): an Ed25519 key in ``evidence_dir/keys/``. The recorder now signs with
    a ``core.keys`` signer from a key directory outside the evidence; tests still use this."""
    private: Any          # cryptography Ed25519PrivateKey
    public_raw: bytes     # 32 bytes

    @property
    def fingerprint(self) -> str:
        return sha256_bytes(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    # The keys.Signer protocol, so tests' in-evidence keys sign ledgers and manifests alike.
    @property
    def key_id(self) -> str:
        return self.fingerprint

    def public_key_bytes(self) -> bytes:
        return self.public_raw

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> DeviceKey:
        """Load ``keys_dir/device_ed25519``, creating it (and the exported ``.pub``) on first
        run. A key readable by others is refused: it could have been copied."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = keys_dir / KEY_NAME
        pub_path = keys_dir / f'{KEY_NAME}.pub'
        if path.exists():
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise EvidenceError(f'{path} has mode {mode:o}; the device key must be 0600')
            try:
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except ValueError as exc:
                raise EvidenceError(f'{path}: not a PEM private key: {exc}') from exc
            if not isinstance(private, Ed25519PrivateKey):
                raise EvidenceError(f'{path}: not an Ed25519 key')
        else:
            private = Ed25519PrivateKey.generate()
            pem = private.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, pem)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(keys_dir)
        public = private.public_key()
        pub_pem = public.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
        if not pub_path.exists() or pub_path.read_bytes() != pub_pem:
            write_atomic(pub_path, pub_pem)
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(private, raw)


def load_public_key(path: Path) -> bytes:
    """Raw 32-byte Ed25519 public key from a PEM file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise EvidenceError(f'{path}: not a PEM public key: {exc}') from exc
    if not isinstance(key, Ed25519PublicKey):
        raise EvidenceError(f'{path}: not an Ed25519 public key')
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signature_ok(public_raw: bytes, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_field(key: Any) -> str:
    """Base64 of a signer's raw public key (a ``keys.Signer`` or a :class:`DeviceKey`)."""
    return base64.b64encode(key.public_key_bytes()).decode('ascii')


# -- the chain head ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ChainHead:
    sha256: str = GENESIS
    sequence: int = 0
    incident_id: str = ''

    @classmethod
    def read(cls, path: Path) -> ChainHead:
        if not path.exists():
            return cls()
        try:
            d = json.loads(path.read_text())
            return cls(str(d['sha256']), int(d['sequence']), str(d.get('incident_id', '')))
        except (ValueError, KeyError, TypeError) as exc:
            raise EvidenceError(f'{path}: corrupt chain head: {exc}') from exc

    def write(self, path: Path) -> None:
        write_atomic(path, canonical({'sha256': self.sha256, 'sequence': self.sequence,
                                      'incident_id': self.incident_id}), mode=0o600)


def sign_into(directory: Path, manifest: dict[str, Any], key: Any) -> str:
    """Write ``manifest.json`` and ``manifest.sig`` (0600) into ``directory`` signed by ``key``
    (anything with ``sign``); return the manifest's SHA-256 (the next
    ``prev_manifest_sha256``)."""
    data = canonical(manifest)
    write_atomic(directory / MANIFEST, data, mode=0o600)
    write_atomic(directory / SIGNATURE, key.sign(data), mode=0o600)
    return sha256_bytes(data)


# -- verification -----------------------------------------------------------------------------
@dataclass
class IncidentCheck:
    path: Path
    incident_id: str = ''
    sequence: int | None = None
    manifest_sha256: str | None = None
    prev_manifest_sha256: str | None = None
    prev_incident_id: str | None = None
    recovered: bool | None = None
    signature_valid: bool = False
    #: With a trust store: the signer is registered, active and bound to this device.
    trusted: bool | None = None
    signer_device: str | None = None
    errors: list[str] = field(default_factory=list)
    bad_files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def bad(self, name: str, why: str) -> None:
        path = self.path / name
        if path not in self.bad_files:
            self.bad_files.append(path)
        self.errors.append(f'{name}: {why}')

    def as_dict(self) -> dict[str, Any]:
        return {'incident_id': self.incident_id, 'path': str(self.path), 'ok': self.ok,
                'sequence': self.sequence, 'recovered': self.recovered,
                'manifest_sha256': self.manifest_sha256,
                'signature_valid': self.signature_valid, 'trusted': self.trusted,
                'signer_device': self.signer_device, 'errors': self.errors,
                'bad_files': [str(p) for p in self.bad_files]}


def check_incident(directory: Path, public_raw: bytes | None, *,
                   trust: Any = None) -> IncidentCheck:
    """Check one sealed incident: manifest parses, signature holds, every file matches, and
    every age file's structure agrees with its entry (chunks, torn bytes, complete).

    ``trust`` (a ``core.trust.TrustStore``) decides who may sign: the key the manifest names
    must be registered, active and bound to the manifest's device, and only that registered
    key checks the signature. Without it, ``public_raw`` is the pinned device key; None falls
    back to the key in the manifest (which proves integrity since sealing, not origin).
    """
    chk = IncidentCheck(directory, incident_id=directory.name)
    mpath, spath = directory / MANIFEST, directory / SIGNATURE
    if not mpath.is_file():
        chk.bad(MANIFEST, 'missing')
        return chk
    data = mpath.read_bytes()
    chk.manifest_sha256 = sha256_bytes(data)
    try:
        manifest = json.loads(data)
        if not isinstance(manifest, dict):
            raise ValueError('not an object')
    except ValueError as exc:
        chk.bad(MANIFEST, f'not valid JSON ({exc})')
        manifest = None
    if manifest is not None:
        chk.incident_id = str(manifest.get('incident_id', ''))
        chk.sequence = manifest.get('sequence') if isinstance(manifest.get('sequence'),
                                                              int) else None
        chk.prev_manifest_sha256 = manifest.get('prev_manifest_sha256')
        chk.prev_incident_id = manifest.get('prev_incident_id')
        chk.recovered = manifest.get('recovered')
        if canonical(manifest) != data:
            chk.bad(MANIFEST, 'not in canonical form (edited after sealing)')
    key = public_raw
    if key is None and manifest is not None:
        try:
            key = base64.b64decode(str(manifest.get('device_public_key', '')), validate=True)
        except ValueError:
            key = None
    if trust is not None:
        key, chk.signer_device, why = _trusted_key(trust, manifest, key)
        chk.trusted = why is None
        if why is not None:
            chk.errors.append(f'signer: {why}')
            if directory / MANIFEST not in chk.bad_files:
                chk.bad_files.append(directory / MANIFEST)
    if not spath.is_file():
        chk.bad(SIGNATURE, 'missing')
    elif key is None or len(key) != 32:
        if trust is None:
            chk.bad(MANIFEST, 'no usable public key to check the signature with')
    else:
        sig = spath.read_bytes()
        chk.signature_valid = len(sig) == 64 and signature_ok(key, sig, data)
        if not chk.signature_valid:
            chk.errors.append('signature does not match the manifest (either was altered, or '
                              'another key signed it)')
            # Which one is bad is settled by the chain (see verify_tree); until then: both.
            for name in (MANIFEST, SIGNATURE):
                if directory / name not in chk.bad_files:
                    chk.bad_files.append(directory / name)
    if manifest is None:
        return chk
    if trust is None and public_raw is not None and manifest.get('device_public_key') not in (
            None, base64.b64encode(public_raw).decode('ascii')):
        chk.bad(MANIFEST, 'names a different device key than the trusted one')
    if chk.incident_id != directory.name:
        chk.bad(MANIFEST, f'incident_id {chk.incident_id!r} does not match the directory')
    files = manifest.get('files')
    if not isinstance(files, dict):
        chk.bad(MANIFEST, 'no files table')
        files = {}
    for name, entry in sorted(files.items()):
        path = directory / name
        if not isinstance(entry, dict) or '/' in name or name.startswith('.'):
            chk.bad(MANIFEST, f'bad files entry {name!r}')
            continue
        if not path.is_file():
            chk.bad(name, 'missing')
            continue
        digest, size = sha256_file(path)
        if size != entry.get('size'):
            chk.bad(name, f'size {size} != {entry.get("size")} in the manifest')
        elif digest != entry.get('sha256'):
            chk.bad(name, 'SHA-256 does not match the manifest')
        elif name.endswith(AGE_SUFFIX) or 'chunks' in entry:
            why = age_structure_problem(path, entry)
            if why:
                chk.bad(name, why)
    for path in sorted(directory.iterdir()):
        if path.name.startswith(f'.{UPLOAD_MARK}.'):
            continue     # the uploader's temp file while it writes upload.json atomically
        if path.name not in files and path.name not in UNLISTED_OK:
            chk.bad(path.name, 'not listed in the manifest')
    return chk


def _trusted_key(trust: Any, manifest: dict[str, Any] | None,
                 named: bytes | None) -> tuple[bytes | None, str | None, str | None]:
    """(registered key to check the signature with, its device, why it is not trusted).

    The manifest's ``device_public_key`` only says which registry entry to look up; the
    bytes checked against are the registry's.
    """
    if manifest is None:
        return None, None, 'no manifest to name a signer'
    if not named or len(named) != 32:
        return None, None, 'the manifest names no device key (device_public_key)'
    dev = trust.by_public_key(named)
    short = sha256_bytes(named)[:16]
    if dev is None:
        return None, None, (f'key {short} is not registered in the trust store of agency '
                            f'{trust.agency_fingerprint[:16]}')
    if dev.device_id != manifest.get('device_id'):
        return dev.public_key, dev.device_id, (
            f'key {short} is registered to device {dev.device_id!r}, but the manifest says '
            f'device {manifest.get("device_id")!r}')
    if not dev.active:
        return dev.public_key, dev.device_id, (
            f'key {short} of device {dev.device_id!r} was revoked at {dev.revoked_at}')
    return dev.public_key, dev.device_id, None


def age_structure_problem(path: Path, entry: dict[str, Any]) -> str | None:
    """Why an age file's layout (no key needed) disagrees with its manifest entry, or None.

    A file sealed ``complete: true`` must end in a final chunk (at least a tag after its
    whole chunks) and hold ``chunks`` chunks with no torn bytes; a crash-left one
    (``complete: false``) must hold exactly ``chunks`` whole chunks and ``torn_bytes``.
    """
    from bodycam_ros.core import encryption
    complete = entry.get('complete')
    chunks, torn = entry.get('chunks'), entry.get('torn_bytes')
    try:
        lay = encryption.scan(path)
    except (encryption.AgeError, OSError) as exc:
        if complete is False and chunks == 0 and torn == path.stat().st_size:
            return None                    # the header itself was cut by the crash
        return f'not a readable age file ({exc})'
    payload = lay.size - lay.header_size - encryption.NONCE
    if complete is True:
        if lay.tail_bytes < encryption.TAG:
            return (f'sealed complete but scans as torn: {lay.tail_bytes} bytes after '
                    f'{lay.full_chunks} whole chunks, less than a final chunk')
        if chunks != lay.full_chunks + 1 or torn != 0:
            return (f'the file holds {lay.full_chunks + 1} chunks (final included), the '
                    f'manifest says chunks={chunks!r} torn_bytes={torn!r}')
        return None
    if complete is False:
        whole, left = divmod(payload, encryption.CHUNK_CT)
        if (chunks, torn) != (whole, left):
            return (f'the file holds {whole} whole chunks and {left} torn bytes, the manifest '
                    f'says chunks={chunks!r} torn_bytes={torn!r}')
        return None
    return f'complete is {complete!r}, not true or false'


@dataclass
class Report:
    path: Path
    key_path: Path | None
    key_trusted: bool
    incidents: list[IncidentCheck] = field(default_factory=list)
    chain_errors: list[str] = field(default_factory=list)
    chain_bad: list[Path] = field(default_factory=list)

    @property
    def bad_files(self) -> list[Path]:
        out: list[Path] = []
        for p in [f for c in self.incidents for f in c.bad_files] + self.chain_bad:
            if p not in out:
                out.append(p)
        return sorted(out)

    @property
    def ok(self) -> bool:
        return not self.chain_errors and all(c.ok for c in self.incidents)

    def as_dict(self) -> dict[str, Any]:
        return {'path': str(self.path), 'ok': self.ok,
                'key': {'path': str(self.key_path) if self.key_path else None,
                        'trusted': self.key_trusted},
                'incidents': [c.as_dict() for c in self.incidents],
                'chain': {'ok': not self.chain_errors, 'errors': self.chain_errors,
                          'length': len(self.incidents)},
                'bad_files': [str(p) for p in self.bad_files]}


def find_layout(path: Path) -> tuple[list[Path], Path | None]:
    """(incident dirs, evidence root or None) for an incident, a spool or an evidence dir."""
    path = path.resolve()
    if (path / MANIFEST).is_file() or (path / SIGNATURE).is_file():
        root = path.parent.parent if path.parent.name == 'spool' else None
        return [path], root
    spool = path / 'spool' if (path / 'spool').is_dir() else path
    root = spool.parent if spool.name == 'spool' else None
    # Any directory holding an evidence file is an incident (a missing manifest is then an
    # error); directories with none of them (a bucket's other prefixes) are not.
    marks = INCIDENT_MARKS
    dirs = sorted(p for p in spool.iterdir() if p.is_dir() and not p.name.startswith('.')
                  and any((p / m).exists() for m in marks))
    return dirs, root


def verify_tree(path: Path, key_path: Path | None = None, *, trust: Any = None) -> Report:
    """Check every incident under ``path`` and the hash chain between them.

    With ``trust`` (a ``core.trust.TrustStore``) signers are judged by the trust store alone:
    no key file is read, not even ``keys/`` beside the evidence. Without it, ``key_path`` or
    that legacy ``keys/`` file is used (integrity since sealing; ``key_trusted`` then only
    says a key file was found, not that anyone vouches for it).
    """
    dirs, root = find_layout(path)
    if trust is not None:
        key_path = None
    elif key_path is None and root is not None and \
            (root / 'keys' / f'{KEY_NAME}.pub').is_file():
        key_path = root / 'keys' / f'{KEY_NAME}.pub'
    public_raw = load_public_key(key_path) if key_path is not None else None
    report = Report(path.resolve(), key_path, public_raw is not None or trust is not None)
    report.incidents = [check_incident(d, public_raw, trust=trust) for d in dirs]
    if not dirs and root is None:
        report.chain_errors.append(f'no incidents under {path}')
        return report
    head = None
    pruned: list[dict[str, Any]] = []
    # A device's own spool (its chain head beside it), not one clip or a copy elsewhere.
    whole = root is not None and (root / CHAIN_HEAD).exists() and \
        (not dirs or path.resolve() != dirs[0])
    if whole:
        head = ChainHead.read(root / CHAIN_HEAD)
        if (root / PRUNED_LOG).exists():
            for line in (root / PRUNED_LOG).read_text().splitlines():
                try:
                    pruned.append(json.loads(line))
                except ValueError:
                    continue
    if len(dirs) > 1 or whole:
        _check_chain(report, head, pruned, (root / 'spool') if whole and root else None,
                     trust)
    return report


def verify_dirs(dirs: list[Path], source: Path, *, trust: Any = None) -> Report:
    """Check incidents copied out of a unit (one device's folders in a bucket, a set handed to
    court): every incident, and the chain between them with no gaps (it may start anywhere;
    what the copy must hold is the ledger's business, ``core.history``)."""
    report = Report(source, None, trust is not None)
    report.incidents = [check_incident(d, None, trust=trust) for d in sorted(dirs)]
    if len(dirs) > 1:
        _check_chain(report, None, [], None, trust)
    return report


def _check_chain(report: Report, head: ChainHead | None, pruned: list[dict[str, Any]],
                 spool: Path | None, trust: Any = None) -> None:
    """Links between manifests ordered by sequence; settles which file a bad signature is.

    ``spool`` is set when this is a device's own spool (chain head and prune log at hand):
    then every predecessor must be present or logged as pruned. A copy without them (a
    bucket, a subset handed to court) may start anywhere but must have no gaps.
    """
    def bad(path: Path, why: str) -> None:
        report.chain_errors.append(why)
        if path not in report.chain_bad:
            report.chain_bad.append(path)

    by_seq: dict[int, IncidentCheck] = {}
    for chk in report.incidents:
        if chk.sequence is None:
            continue
        if chk.sequence in by_seq:
            other = by_seq[chk.sequence]
            bad(chk.path / MANIFEST, f'sequence {chk.sequence} used by both '
                f'{other.incident_id} and {chk.incident_id}')
            continue
        by_seq[chk.sequence] = chk
    _check_one_signer(report, by_seq, trust, bad)
    known: dict[int, tuple[str, str]] = {}       # sequence -> (manifest sha256, incident id)
    for p in pruned:
        try:
            known[int(p['sequence'])] = (str(p['manifest_sha256']), str(p['incident_id']))
        except (KeyError, TypeError, ValueError):
            continue
    for seq, chk in by_seq.items():
        known[seq] = (chk.manifest_sha256 or '', chk.incident_id)
    vouched: set[int] = set()      # manifests whose bytes a later link confirms
    seqs = sorted(by_seq)
    parent = spool if spool is not None else report.incidents[0].path.parent
    for seq in seqs:
        chk = by_seq[seq]
        prev = chk.prev_manifest_sha256
        if seq == 1:
            if prev != GENESIS:
                bad(chk.path / MANIFEST, f'{chk.incident_id}: first incident but '
                    'prev_manifest_sha256 is not the genesis value')
        elif seq - 1 in known:
            pred_sha, pred_id = known[seq - 1]
            if prev == pred_sha:
                vouched.add(seq - 1)
            else:
                pred = by_seq.get(seq - 1)
                bad(pred.path / MANIFEST if pred else parent / pred_id,
                    f'{chk.incident_id}: prev_manifest_sha256 does not match the manifest of '
                    f'{pred_id} (sequence {seq - 1})')
        elif seq != seqs[0] or spool is not None:
            missing = parent / str(chk.prev_incident_id or f'sequence-{seq - 1}') / MANIFEST
            bad(missing, f'{chk.incident_id}: its predecessor (sequence {seq - 1}, '
                f'{chk.prev_incident_id}) is missing and was not pruned after upload')
    if head is not None and head.sequence > 0:
        top = max(known, default=0)
        if head.sequence > top:
            bad(parent / head.incident_id / MANIFEST,
                f'chain_head names sequence {head.sequence} ({head.incident_id}) but the newest '
                f'present or pruned is {top}')
        elif head.sequence == top and known[top][0] != head.sha256:
            bad(parent / known[top][1] / MANIFEST,
                f'chain_head does not match the manifest of sequence {top}')
        elif head.sequence == top:
            vouched.add(top)
    # A bad signature on a manifest the chain vouches for: the signature file was altered.
    for seq, chk in by_seq.items():
        manifest = chk.path / MANIFEST
        if not chk.signature_valid and seq in vouched and manifest in chk.bad_files and \
                not any(e.startswith(MANIFEST) for e in chk.errors):
            chk.bad_files.remove(manifest)


def _check_one_signer(report: Report, by_seq: dict[int, IncidentCheck], trust: Any,
                      bad: Any) -> None:
    """Keys mixed in one chain: every manifest must name the key of the first one, unless
    the trust store binds both keys to the same device (a key rotation; its handover is the
    ledger's to prove)."""
    first: tuple[bytes, IncidentCheck] | None = None
    for seq in sorted(by_seq):
        chk = by_seq[seq]
        try:
            manifest = json.loads((chk.path / MANIFEST).read_bytes())
            key = base64.b64decode(str(manifest.get('device_public_key', '')), validate=True)
        except (OSError, ValueError, AttributeError):
            continue
        if first is None:
            first = (key, chk)
            continue
        if key == first[0]:
            continue
        if trust is not None:
            a, b = trust.by_public_key(first[0]), trust.by_public_key(key)
            if a is not None and b is not None and a.device_id == b.device_id:
                continue
        bad(chk.path / MANIFEST, f'{chk.incident_id} (sequence {seq}): keys mixed in one '
            f'chain: signed by key {sha256_bytes(key)[:16]}, the chain from '
            f'{first[1].incident_id} by {sha256_bytes(first[0])[:16]}')


def prune_incident(root: Path, path: Path, incident_id: str, sequence: Any,
                   manifest_sha256: str) -> None:
    """Delete one incident directory under the evidence root ``root``.

    The directory is first renamed out of every reader's sight (``.pruning-<name>``, which
    needs no free space), its large files are deleted (so a full disk has room again), then
    its chain link goes to ``pruned.jsonl`` (fsync) and the rest is removed. A failure at
    any step leaves ``.pruning-<name>`` with its manifest, which :func:`finish_pruning`
    completes on the next pass. Callers decide *whether* (only incidents verified in the
    bucket).
    """
    trash = path.parent / f'.pruning-{path.name}'
    if path.exists():
        os.replace(path, trash)
    _finish_one(root, trash, {'incident_id': incident_id, 'sequence': sequence,
                              'manifest_sha256': manifest_sha256})


def _finish_one(root: Path, trash: Path, link: dict[str, Any]) -> None:
    keep = (MANIFEST, SIGNATURE)
    for p in sorted(trash.iterdir()):     # the large files first: they free the space
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    if not _pruned_logged(root, link.get('sequence'), link.get('manifest_sha256')):
        line = json.dumps(link | {'pruned_time': time.time()}, sort_keys=True) + '\n'
        append_durable(root / PRUNED_LOG, line.encode())
    shutil.rmtree(trash)


def _pruned_logged(root: Path, sequence: Any, manifest_sha256: Any) -> bool:
    try:
        text = (root / PRUNED_LOG).read_text()
    except FileNotFoundError:
        return False
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get('sequence') == sequence and \
                rec.get('manifest_sha256') == manifest_sha256:
            return True
    return False


def finish_pruning(root: Path) -> list[str]:
    """Complete every prune an earlier pass left half-done (``spool/.pruning-<name>``, e.g.
    a full disk refused the ``pruned.jsonl`` line or a power cut). Returns the names
    finished; raises OSError when the disk still refuses."""
    done = []
    spool = root / 'spool'
    try:
        trashes = sorted(p for p in spool.iterdir() if p.name.startswith('.pruning-'))
    except FileNotFoundError:
        return done
    for trash in trashes:
        link: dict[str, Any] | None = None
        try:
            data = (trash / MANIFEST).read_bytes()
            m = json.loads(data)
            link = {'incident_id': m['incident_id'], 'sequence': m['sequence'],
                    'manifest_sha256': sha256_bytes(data)}
        except (OSError, ValueError, KeyError, TypeError):
            link = None
        if link is None:                  # its manifest went with a link already logged
            shutil.rmtree(trash)
        else:
            _finish_one(root, trash, link)
        done.append(trash.name[len('.pruning-'):])
    return done
