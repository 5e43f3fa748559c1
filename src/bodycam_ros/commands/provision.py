"""``bodycam provision --key-dir DIR``: create this unit's Ed25519 signing key.

The key lives in DIR (0700; private key 0600), which must not be inside the evidence
directory: a card taken from the unit must not carry the key that vouches for it. With
``--passphrase-file F`` (0600) or ``$BODYCAM_KEY_PASSPHRASE`` the private key is encrypted
(PKCS#8, cryptography's best available encryption); the recorder then needs the same
variable (or ``$BODYCAM_KEY_PASSPHRASE_FILE``) to start.

With ``--pkcs11-module LIB --pkcs11-token LABEL --pkcs11-pin-file F`` the key pair is generated
on the token instead (CKM_EC_EDWARDS_KEY_PAIR_GEN, Ed25519, CKA_SENSITIVE, not
CKA_EXTRACTABLE) and no private key file is written: DIR records only where the key is
(``device.json``: module, token, key label, PIN file path) and its public half.

Output: the public key as 64 hex digits on stdout's last line (also in
``DIR/device_ed25519.hex``, and as PEM in ``DIR/device_ed25519.pub``). Hand it to the agency:
``bodycam agency register AGENCY_DIR HEX --device-id ID``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.allow_abbrev = False      # ``--passphrase SECRET`` is an error, never a file name
    p.add_argument('--key-dir', type=Path, required=True,
                   help='where the device key goes (outside the evidence directory)')
    p.add_argument('--device-id', default=None, help='the unit id, recorded beside the key')
    p.add_argument('--evidence-dir', type=Path, default=Path('var/evidence'),
                   help='the evidence directory DIR must be outside (default var/evidence)')
    p.add_argument('--passphrase-file', type=Path, default=None, metavar='F',
                   help='file (0600) with a passphrase to encrypt the key file; default '
                        '$BODYCAM_KEY_PASSPHRASE(_FILE), else unencrypted')
    p.add_argument('--pkcs11-module', default=None, metavar='LIB',
                   help='PKCS#11 module (.so), e.g. /usr/lib/softhsm/libsofthsm2.so or '
                        'tpm2-pkcs11: generate the key on the token')
    p.add_argument('--pkcs11-token', default=None, metavar='LABEL', help='token label')
    p.add_argument('--pkcs11-pin-file', type=Path, default=None, metavar='F',
                   help='file (0600) holding the user PIN')
    p.add_argument('--pkcs11-key-label', default=None, metavar='LABEL',
                   help='CKA_LABEL of the key on the token (default bodycam-device)')


def main(args: argparse.Namespace) -> int:
    from bodycam_ros.core import keys

    token_args = (args.pkcs11_module, args.pkcs11_token, args.pkcs11_pin_file)
    try:
        if any(a is not None for a in token_args):
            if any(a is None for a in token_args):
                print('error: the PKCS#11 path needs --pkcs11-module, --pkcs11-token and '
                      '--pkcs11-pin-file together', file=sys.stderr)
                return 2
            if args.passphrase_file is not None:
                print('error: --passphrase-file is for a key file; a token key is protected '
                      'by its PIN', file=sys.stderr)
                return 2
            pin = keys.read_secret_file(args.pkcs11_pin_file).decode('utf-8')
            cfg = keys.Pkcs11Config(str(Path(args.pkcs11_module).resolve()), args.pkcs11_token,
                                    args.pkcs11_key_label or keys.PKCS11_LABEL,
                                    str(args.pkcs11_pin_file.resolve()))
            with keys.provision_pkcs11(args.key_dir, cfg, pin, args.device_id,
                                       args.evidence_dir) as signer:
                raw = signer.public_key_bytes()
            where = f'on PKCS#11 token {cfg.token!r} (label {cfg.label!r}, non-extractable)'
        else:
            passphrase = keys.secret_from(keys.PASSPHRASE_ENV, args.passphrase_file) \
                if args.passphrase_file else keys.passphrase_from_env()
            signer_f = keys.FileSigner.create(args.key_dir, args.device_id, passphrase,
                                              args.evidence_dir)
            raw = signer_f.public_key_bytes()
            where = (f'in {args.key_dir / keys.KEY_NAME} (0600, '
                     f'{"passphrase-protected" if passphrase else "NOT passphrase-protected"})')
    except keys.KeyStoreError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    print(f'device key created {where}', file=sys.stderr)
    print(f'fingerprint {keys.fingerprint(raw)}', file=sys.stderr)
    print(f'public key PEM: {args.key_dir / (keys.KEY_NAME + ".pub")}', file=sys.stderr)
    print(raw.hex())
    return 0
