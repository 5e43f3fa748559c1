"""The device key inside a real PKCS#11 token: SoftHSM2 from Debian's packages (softhsm2).

The test makes its own token in a temporary directory (SOFTHSM2_CONF names a tokendir there),
provisions an Ed25519 key on it with the real ``bodycam provision``, signs through the
library's PKCS#11 path, checks each signature with cryptography, and asks the token in a
separate process whether the private key is sensitive and non-extractable.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bodycam_ros.core import keys, trust

MODULE_CANDIDATES = ('/usr/lib/softhsm/libsofthsm2.so',
                     '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
                     '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so')
TOKEN = 'bodycam-test'
PIN = '246810'
NOW = 1_780_000_000.0


def _module() -> str:
    found = next((m for m in MODULE_CANDIDATES if os.path.isfile(m)), None)
    if found is None or shutil.which('softhsm2-util') is None:
        if os.environ.get('CI'):
            pytest.fail('softhsm2 is not installed: scripts/install-test-deps.sh installs it')
        pytest.skip('softhsm2 is not installed (apt-get install softhsm2)')
    return found


@pytest.fixture(scope='module')
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A fresh SoftHSM2 token of this module's own; SOFTHSM2_CONF set for this process (the
    library reads it once, at C_Initialize) and for the subprocesses."""
    module = _module()
    base = tmp_path_factory.mktemp('softhsm')
    (base / 'tokens').mkdir()
    conf = base / 'softhsm2.conf'
    conf.write_text(f'directories.tokendir = {base / "tokens"}\nobjectstore.backend = file\n'
                    'log.level = ERROR\nslots.removable = false\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('SOFTHSM2_CONF', str(conf))
        subprocess.run(['softhsm2-util', '--init-token', '--free', '--label', TOKEN,
                        '--pin', PIN, '--so-pin', '13579'],
                       check=True, capture_output=True, timeout=60)
        pin_file = base / 'pin'
        pin_file.write_text(PIN + '\n')
        pin_file.chmod(0o600)
        yield {'module': module, 'conf': conf, 'pin_file': pin_file, 'base': base}


def provision(token: dict[str, object], key_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'bodycam_ros.cli', 'provision', '--key-dir', str(key_dir),
         '--device-id', 'unit_hsm', '--evidence-dir', str(key_dir.parent / 'evidence'),
         '--pkcs11-module', str(token['module']), '--pkcs11-token', TOKEN,
         '--pkcs11-pin-file', str(token['pin_file']), *extra],
        capture_output=True, text=True, timeout=120)


#: Run in its own process: the token's word on the key, read with python-pkcs11 directly.
INSPECT = textwrap.dedent('''
    import json, sys
    import pkcs11
    from pkcs11 import Attribute, ObjectClass
    module, token, pin, label = sys.argv[1:5]
    tok = pkcs11.lib(module).get_token(token_label=token)
    with tok.open(user_pin=pin) as s:
        privs = list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                    Attribute.LABEL: label}))
        out = {'count': len(privs)}
        k = privs[0]
        for name in ('KEY_TYPE', 'TOKEN', 'SENSITIVE', 'EXTRACTABLE', 'ALWAYS_SENSITIVE',
                     'NEVER_EXTRACTABLE', 'SIGN', 'LOCAL'):
            out[name] = int(k[getattr(Attribute, name)])
        try:
            k[Attribute.VALUE]
            out['value_readable'] = True
        except pkcs11.PKCS11Error as exc:
            out['value_readable'] = False
            out['value_error'] = type(exc).__name__
    print(json.dumps(out))
''')


def test_provision_on_token_signs_with_a_non_extractable_ed25519_key(
        token: dict[str, object], tmp_path: Path) -> None:
    kd = tmp_path / 'keys'
    run = provision(token, kd)
    assert run.returncode == 0, run.stderr
    printed = run.stdout.strip().splitlines()[-1]
    public = bytes.fromhex(printed)
    assert len(public) == 32
    # No private key anywhere on disk: only where the key is, and its public half.
    assert sorted(p.name for p in kd.iterdir()) == [
        keys.DEVICE_INFO, 'device_ed25519.hex', 'device_ed25519.pub']
    info = json.loads((kd / keys.DEVICE_INFO).read_text())
    assert info['backend'] == 'pkcs11' and info['pkcs11']['token'] == TOKEN
    assert PIN not in (kd / keys.DEVICE_INFO).read_text()
    assert oct(kd.stat().st_mode & 0o777) == oct(0o700)

    # Sign through the token (the recorder's path) and check with cryptography.
    with keys.open_signer(kd) as signer:
        assert isinstance(signer, keys.Pkcs11Signer)
        assert signer.public_key_bytes() == public
        assert signer.key_id == keys.fingerprint(public)
        for data in (b'', b'manifest bytes', os.urandom(100_000)):
            sig = signer.sign(data)
            assert len(sig) == 64
            Ed25519PublicKey.from_public_bytes(public).verify(sig, data)
        assert signer.private_key_attributes() == {
            'sensitive': True, 'extractable': False, 'always_sensitive': True,
            'never_extractable': True}

        # The trust store accepts it like any registered device key.
        agency = tmp_path / 'agency'
        trust.init_agency(agency, NOW)
        trust.register_device(agency, keys.parse_public_key(
            (kd / 'device_ed25519.pub').read_bytes()), 'unit_hsm', NOW)
        store = trust.TrustStore.load(agency)
        assert store.verify_signature(public, b'x', signer.sign(b'x')).device_id == 'unit_hsm'

    # The token's own answer, asked from another process.
    inspect = subprocess.run([sys.executable, '-c', INSPECT, str(token['module']), TOKEN, PIN,
                              keys.PKCS11_LABEL], capture_output=True, text=True, timeout=60)
    assert inspect.returncode == 0, inspect.stderr
    attrs = json.loads(inspect.stdout)
    assert attrs['count'] == 1
    assert attrs['KEY_TYPE'] == 0x40                     # CKK_EC_EDWARDS
    assert attrs['EXTRACTABLE'] == 0 and attrs['NEVER_EXTRACTABLE'] == 1
    assert attrs['SENSITIVE'] == 1 and attrs['ALWAYS_SENSITIVE'] == 1
    assert attrs['TOKEN'] == 1 and attrs['LOCAL'] == 1   # generated on the token, stored there
    assert attrs['value_readable'] is False, attrs

    # A second provision on the same token label is refused: the key is never replaced.
    again = provision(token, tmp_path / 'keys2')
    assert again.returncode == 1 and 'already holds a key labelled' in again.stderr


def test_wrong_pin_and_missing_token_are_named(token: dict[str, object], tmp_path: Path) -> None:
    module = str(token['module'])
    with pytest.raises(keys.KeyStoreError, match=f"wrong PIN for PKCS#11 token '{TOKEN}'"):
        keys.Pkcs11Signer.open(keys.Pkcs11Config(module, TOKEN, 'other-label'), '000000')
    with pytest.raises(keys.KeyStoreError, match="no PKCS#11 token labelled 'nope'"):
        keys.Pkcs11Signer.open(keys.Pkcs11Config(module, 'nope'), PIN)
    with pytest.raises(keys.KeyStoreError, match="no Ed25519 key labelled 'absent'"):
        keys.Pkcs11Signer.open(keys.Pkcs11Config(module, TOKEN, 'absent'), PIN)
    half = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'provision', '--key-dir',
                           str(tmp_path / 'k'), '--pkcs11-module', module],
                          capture_output=True, text=True, timeout=60)
    assert half.returncode == 2 and 'together' in half.stderr


def test_two_signers_on_one_token_share_the_login(token: dict[str, object]) -> None:
    """PKCS#11 login belongs to the process: a second C_Login fails and closing a logged-in
    session logs out every other one. Two signers (the recorder's and, say, the audit log's)
    must both work, and closing one must not break the other."""
    cfg = keys.Pkcs11Config(str(token['module']), TOKEN, 'shared-login')
    with keys.Pkcs11Signer.generate(cfg, PIN) as made:
        public = made.public_key_bytes()
        first = keys.Pkcs11Signer.open(cfg, PIN)
        second = keys.Pkcs11Signer.open(cfg, PIN)
    first.close()
    sig = second.sign(b'still logged in')
    Ed25519PublicKey.from_public_bytes(public).verify(sig, b'still logged in')
    second.close()
    with pytest.raises(keys.KeyStoreError, match='closed'):
        second.sign(b'x')
    with keys.Pkcs11Signer.open(cfg, PIN) as again:     # the last close logged out cleanly
        Ed25519PublicKey.from_public_bytes(public).verify(again.sign(b'y'), b'y')
