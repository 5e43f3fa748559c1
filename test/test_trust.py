"""The agency, its signed trust store and file-backed device keys: real keys, real files,
the real ``bodycam`` command."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bodycam_ros import cli
from bodycam_ros.core import keys, trust

NOW = 1_780_000_000.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def raw_key() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def secret_file(path: Path, text: str, perm: int = 0o600) -> Path:
    path.write_text(text + '\n')
    path.chmod(perm)
    return path


@pytest.fixture
def agency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(trust.PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(trust.PASSPHRASE_FILE_ENV, raising=False)
    d = tmp_path / 'agency'
    trust.init_agency(d, NOW, name='test agency')
    return d


# -- the agency --------------------------------------------------------------------------------
def test_agency_init_makes_private_dir_and_files_and_prints_fingerprint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(trust.PASSPHRASE_ENV, raising=False)
    d = tmp_path / 'agency'
    assert cli.main(['agency', 'init', str(d), '--name', 'county']) == 0
    out = capsys.readouterr().out
    assert mode(d) == 0o700
    files = sorted(p.name for p in d.iterdir())
    assert files == sorted([trust.AGENCY_INFO, trust.SIGNING_KEY, trust.SIGNING_PUB,
                            trust.ENCRYPTION_KEY, trust.ENCRYPTION_PUB, trust.REGISTRY])
    for p in d.iterdir():
        assert mode(p) == 0o600, p
    info = trust.read_agency(d)
    assert f'agency fingerprint: {info.fingerprint}' in out
    assert info.fingerprint == keys.fingerprint(trust.signing_public_raw(d))
    # A second init must not replace the keys that decrypt all evidence.
    assert cli.main(['agency', 'init', str(d)]) == 1
    assert 'already holds an agency' in capsys.readouterr().err


def test_encryption_key_loaders_give_a_working_x25519_pair(agency: Path) -> None:
    pub_raw = trust.encryption_public_raw(agency)
    priv = trust.load_encryption_private(agency)
    assert len(pub_raw) == 32 and len(trust.encryption_private_raw(agency)) == 32
    assert priv.public_key().public_bytes(serialization.Encoding.Raw,
                                          serialization.PublicFormat.Raw) == pub_raw
    eph = X25519PrivateKey.generate()      # what a unit does: ECDH with the agency public key
    assert eph.exchange(trust.load_encryption_public(agency)) == \
        priv.exchange(eph.public_key())


def test_agency_passphrase_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(trust.PASSPHRASE_ENV, 'correct horse battery staple')
    d = tmp_path / 'agency'
    assert cli.main(['agency', 'init', str(d), '--encrypt-keys']) == 0
    for name in (trust.SIGNING_KEY, trust.ENCRYPTION_KEY):
        assert b'ENCRYPTED PRIVATE KEY' in (d / name).read_bytes()
    assert trust.load_encryption_private(d) is not None
    with pytest.raises(trust.TrustError, match='wrong passphrase'):
        trust.load_encryption_private(d, b'wrong')
    monkeypatch.delenv(trust.PASSPHRASE_ENV)
    with pytest.raises(trust.TrustError, match='passphrase-protected'):
        trust.load_encryption_private(d)
    # register needs the signing key: a wrong passphrase is a clear error, nothing written.
    before = (d / trust.REGISTRY).read_bytes()
    wrong = secret_file(tmp_path / 'wrong.txt', 'nope')
    capsys.readouterr()
    assert cli.main(['agency', 'register', str(d), raw_key().hex(), '--device-id', 'u1',
                     '--passphrase-file', str(wrong)]) == 1
    assert 'wrong passphrase' in capsys.readouterr().err
    assert (d / trust.REGISTRY).read_bytes() == before
    right = secret_file(tmp_path / 'right.txt', 'correct horse battery staple')
    assert cli.main(['agency', 'register', str(d), raw_key().hex(), '--device-id', 'u1',
                     '--passphrase-file', str(right)]) == 0


def test_agency_init_never_takes_the_passphrase_from_argv(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli.main(['agency', 'init', str(tmp_path / 'a'), '--passphrase', 'x'])


# -- device keys in files ----------------------------------------------------------------------
def test_provision_file_key_modes_and_public_key_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    kd = tmp_path / 'keys'
    run = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'provision', '--key-dir',
                          str(kd), '--device-id', 'unit_a', '--evidence-dir',
                          str(tmp_path / 'evidence')],
                         capture_output=True, text=True, timeout=60, check=True)
    printed = run.stdout.strip().splitlines()[-1]
    assert mode(kd) == 0o700
    for p in kd.iterdir():
        assert mode(p) == 0o600, p
    signer = keys.open_signer(kd)
    assert isinstance(signer, keys.FileSigner)
    assert printed == signer.public_key_bytes().hex()
    assert printed == (kd / 'device_ed25519.hex').read_text().strip()
    assert keys.parse_public_key((kd / 'device_ed25519.pub').read_bytes()) == \
        signer.public_key_bytes()
    sig = signer.sign(b'manifest bytes')
    assert len(sig) == 64
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(printed)).verify(sig, b'manifest bytes')
    assert signer.key_id == keys.fingerprint(bytes.fromhex(printed))
    assert json.loads((kd / keys.DEVICE_INFO).read_text())['device_id'] == 'unit_a'
    # A second provision into the same directory must not replace the key.
    again = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'provision', '--key-dir',
                            str(kd)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and 'already holds a provisioned key' in again.stderr
    assert keys.open_signer(kd).public_key_bytes().hex() == printed


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    kd = tmp_path / 'keys'
    keys.FileSigner.create(kd)
    (kd / keys.KEY_NAME).chmod(0o644)
    with pytest.raises(keys.KeyStoreError, match='mode 644'):
        keys.FileSigner.load(kd)


def test_device_key_passphrase_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(keys.PASSPHRASE_FILE_ENV, raising=False)
    kd = tmp_path / 'keys'
    pf = secret_file(tmp_path / 'pass.txt', 'unit secret')
    assert cli.main(['provision', '--key-dir', str(kd), '--passphrase-file', str(pf),
                     '--evidence-dir', str(tmp_path / 'ev')]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert b'ENCRYPTED PRIVATE KEY' in (kd / keys.KEY_NAME).read_bytes()
    assert keys.FileSigner.load(kd, b'unit secret').public_key_bytes().hex() == printed
    with pytest.raises(keys.KeyStoreError, match=r'device_ed25519: wrong passphrase'):
        keys.FileSigner.load(kd, b'not it')
    with pytest.raises(keys.KeyStoreError, match='passphrase-protected and no passphrase'):
        keys.open_signer(kd)
    monkeypatch.setenv(keys.PASSPHRASE_FILE_ENV, str(pf))      # how the recorder gets it
    assert keys.open_signer(kd).public_key_bytes().hex() == printed
    monkeypatch.delenv(keys.PASSPHRASE_FILE_ENV)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, 'unit secret')
    assert keys.open_signer(kd).public_key_bytes().hex() == printed


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    pf = secret_file(tmp_path / 'pass.txt', 'x', perm=0o644)
    with pytest.raises(keys.KeyStoreError, match='mode 644'):
        keys.read_secret_file(pf)
    assert cli.main(['provision', '--key-dir', str(tmp_path / 'k'), '--passphrase-file',
                     str(pf), '--evidence-dir', str(tmp_path / 'ev')]) == 1
    assert not (tmp_path / 'k' / keys.KEY_NAME).exists()


def test_key_dir_inside_the_evidence_dir_is_refused(tmp_path: Path) -> None:
    ev = tmp_path / 'evidence'
    with pytest.raises(keys.KeyStoreError, match='inside the evidence directory'):
        keys.FileSigner.create(ev / 'keys', evidence_dir=ev)
    assert not (ev / 'keys').exists()
    assert cli.main(['provision', '--key-dir', str(ev / 'spool' / 'k'),
                     '--evidence-dir', str(ev)]) == 1


def test_parse_public_key_accepts_hex_pem_base64_and_names_garbage(tmp_path: Path) -> None:
    import base64
    signer = keys.FileSigner.create(tmp_path / 'k')
    raw = signer.public_key_bytes()
    assert keys.parse_public_key(raw.hex()) == raw
    assert keys.parse_public_key(base64.b64encode(raw).decode()) == raw
    assert keys.parse_public_key((tmp_path / 'k' / 'device_ed25519.pub').read_text()) == raw
    with pytest.raises(keys.KeyStoreError, match="'zz-not-a-key'"):
        keys.parse_public_key('zz-not-a-key')


# -- the trust store ---------------------------------------------------------------------------
def test_registered_device_is_trusted_and_its_signatures_verify(agency: Path,
                                                                tmp_path: Path) -> None:
    signer = keys.FileSigner.create(tmp_path / 'k')
    dev = trust.register_device(agency, signer.public_key_bytes(), 'unit_a', NOW)
    store = trust.TrustStore.load(agency)
    assert store.lookup('unit_a') == dev
    assert store.by_public_key(signer.public_key_bytes()) == dev
    assert dev.registered_at == '2026-05-28T20:26:40Z'
    sig = signer.sign(b'data')
    assert store.verify_signature('unit_a', b'data', sig) == dev
    assert store.verify_signature(signer.public_key_bytes(), b'data', sig) == dev
    with pytest.raises(trust.TrustError, match="registered key of device 'unit_a'"):
        store.verify_signature('unit_a', b'other data', sig)


def test_unregistered_key_is_not_trusted(agency: Path, tmp_path: Path) -> None:
    trust.register_device(agency, raw_key(), 'unit_a', NOW)
    stranger = keys.FileSigner.create(tmp_path / 'k')
    store = trust.TrustStore.load(agency)
    assert store.by_public_key(stranger.public_key_bytes()) is None
    assert store.lookup('unit_b') is None
    sig = stranger.sign(b'data')          # a perfectly valid signature by an unknown key
    with pytest.raises(trust.TrustError, match='is not registered'):
        store.verify_signature(stranger.public_key_bytes(), b'data', sig)
    with pytest.raises(trust.TrustError, match="device 'unit_b' is not registered"):
        store.verify_signature('unit_b', b'data', sig)


def test_revoked_device_is_not_trusted(agency: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    signer = keys.FileSigner.create(tmp_path / 'k')
    pub = signer.public_key_bytes()
    assert cli.main(['agency', 'register', str(agency), pub.hex(), '--device-id', 'unit_a']) == 0
    assert cli.main(['agency', 'revoke', str(agency), '--device-id', 'unit_a',
                     '--reason', 'unit stolen']) == 0
    store = trust.TrustStore.load(agency)
    dev = store.by_public_key(pub)
    assert dev is not None and not dev.active and dev.revoke_reason == 'unit stolen'
    with pytest.raises(trust.TrustError, match='revoked at .*unit stolen'):
        store.verify_signature(pub, b'data', signer.sign(b'data'))
    # The stolen key can never come back; the unit may get a new one.
    capsys.readouterr()
    assert cli.main(['agency', 'register', str(agency), pub.hex(), '--device-id', 'unit_a']) == 1
    assert 'already registered' in capsys.readouterr().err
    new = raw_key()
    assert cli.main(['agency', 'register', str(agency), new.hex(), '--device-id', 'unit_a']) == 0
    store = trust.TrustStore.load(agency)
    assert store.lookup('unit_a').public_key == new
    capsys.readouterr()
    assert cli.main(['agency', 'list', str(agency), '--json']) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(d['device_id'], d['active']) for d in listed['devices']] == \
        [('unit_a', False), ('unit_a', True)]


def test_one_active_key_per_device(agency: Path) -> None:
    trust.register_device(agency, raw_key(), 'unit_a', NOW)
    with pytest.raises(trust.TrustError, match="'unit_a' already has an active key"):
        trust.register_device(agency, raw_key(), 'unit_a', NOW)
    with pytest.raises(trust.TrustError, match="device id 'bad id/..' is not"):
        trust.register_device(agency, raw_key(), 'bad id/..', NOW)


def test_hand_edited_device_key_is_detected_naming_the_device(
        agency: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trust.register_device(agency, raw_key(), 'unit_a', NOW)
    trust.register_device(agency, raw_key(), 'unit_b', NOW)
    path = agency / trust.REGISTRY
    doc = json.loads(path.read_text())
    attacker = raw_key()
    rec = doc['devices'][1]['record']
    rec['public_key'] = attacker.hex()
    rec['fingerprint'] = keys.fingerprint(attacker)
    path.write_text(json.dumps(doc))
    with pytest.raises(trust.TrustError, match=r"device 'unit_b' \(entry 1\) does not carry a "
                                               'valid agency signature'):
        trust.TrustStore.load(agency)
    assert cli.main(['agency', 'list', str(agency)]) == 1
    assert "'unit_b'" in capsys.readouterr().err
    # Nor can a registration go through on top of a tampered registry.
    with pytest.raises(trust.TrustError, match="'unit_b'"):
        trust.register_device(agency, raw_key(), 'unit_c', NOW)


def test_removed_or_unrevoked_entry_is_detected(agency: Path) -> None:
    trust.register_device(agency, raw_key(), 'unit_a', NOW)
    trust.register_device(agency, raw_key(), 'unit_b', NOW)
    path = agency / trust.REGISTRY
    original = path.read_text()
    doc = json.loads(original)
    del doc['devices'][0]                      # each remaining entry is still validly signed
    path.write_text(json.dumps(doc))
    with pytest.raises(trust.TrustError, match='added, removed or reordered'):
        trust.TrustStore.load(agency)
    path.write_text(original)
    trust.revoke_device(agency, 'unit_a', NOW + 1, 'lost')
    doc = json.loads(path.read_text())
    doc['devices'][0]['record']['revoked_at'] = None      # un-revoke by hand
    doc['devices'][0]['record']['revoke_reason'] = None
    path.write_text(json.dumps(doc))
    with pytest.raises(trust.TrustError, match="device 'unit_a'"):
        trust.TrustStore.load(agency)


def test_registry_of_another_agency_is_refused(agency: Path, tmp_path: Path) -> None:
    other = tmp_path / 'other'
    trust.init_agency(other, NOW)
    trust.register_device(other, raw_key(), 'rogue', NOW)
    (agency / trust.REGISTRY).write_bytes((other / trust.REGISTRY).read_bytes())
    with pytest.raises(trust.TrustError, match='not the trusted'):
        trust.TrustStore.load(agency)
    # A verifier holding only the public parts can pin the agency key itself.
    assert trust.TrustStore.load(other, agency_key=trust.signing_public_raw(other)).lookup(
        'rogue') is not None
    with pytest.raises(trust.TrustError, match='not the trusted'):
        trust.TrustStore.load(other, agency_key=trust.signing_public_raw(agency))


def test_rollback_refused_when_serial_pinned(agency: Path) -> None:
    path = agency / trust.REGISTRY
    trust.register_device(agency, raw_key(), 'unit_a', NOW)
    old = path.read_bytes()
    trust.revoke_device(agency, 'unit_a', NOW, 'lost')
    serial = trust.TrustStore.load(agency).serial
    path.write_bytes(old)                          # validly signed, but older
    with pytest.raises(trust.TrustError, match='older'):
        trust.TrustStore.load(agency, min_serial=serial)


# -- the embedded demo agency ------------------------------------------------------------------
def test_ensure_demo_agency_creates_once_and_registers_the_unit(tmp_path: Path) -> None:
    d = tmp_path / 'var' / 'agency'
    first = keys.FileSigner.create(tmp_path / 'k1')
    assert trust.ensure_demo_agency(d, first.public_key_bytes(), 'unit_a', NOW) is True
    assert trust.read_agency(d).demo and mode(d) == 0o700
    assert trust.ensure_demo_agency(d, first.public_key_bytes(), 'unit_a', NOW) is False
    store = trust.TrustStore.load(d)
    assert store.trusted('unit_a').public_key == first.public_key_bytes()
    assert store.serial == 1
    # The unit was re-provisioned: the demo agency revokes the old key and trusts the new.
    second = keys.FileSigner.create(tmp_path / 'k2')
    assert trust.ensure_demo_agency(d, second.public_key_bytes(), 'unit_a', NOW) is False
    store = trust.TrustStore.load(d)
    assert store.trusted('unit_a').public_key == second.public_key_bytes()
    with pytest.raises(trust.TrustError, match='revoked'):
        store.trusted(first.public_key_bytes())


def test_ensure_demo_agency_never_writes_to_a_real_agency(agency: Path) -> None:
    before = (agency / trust.REGISTRY).read_bytes()
    assert trust.ensure_demo_agency(agency, raw_key(), 'unit_a', NOW) is False
    assert (agency / trust.REGISTRY).read_bytes() == before


def test_agency_files_never_world_readable_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        trust.init_agency(tmp_path / 'a', NOW)
        trust.register_device(tmp_path / 'a', raw_key(), 'u', NOW)
        keys.FileSigner.create(tmp_path / 'k')
    finally:
        os.umask(old)
    for d in (tmp_path / 'a', tmp_path / 'k'):
        assert mode(d) == 0o700
        for p in d.iterdir():
            assert mode(p) & 0o077 == 0, p
