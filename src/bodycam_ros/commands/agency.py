"""``bodycam agency init|register|revoke|list DIR``: the agency's keys and its trust store.

Run on the agency's own machine, never on a unit: DIR holds the private key that decrypts all
evidence and the one that decides which devices are trusted.

- ``init DIR``: an X25519 encryption key pair (units get only ``encryption_x25519.pub``) and
  an Ed25519 signing key that registers devices; DIR 0700, files 0600. Prints the agency
  fingerprint (SHA-256 of the signing public key) and the encryption key's fingerprint.
- ``register DIR PUBKEY --device-id ID``: PUBKEY is what ``bodycam provision`` printed (64 hex
  digits), its ``device_ed25519.pub`` PEM file, or base64 of the raw key.
- ``revoke DIR --device-id ID``: evidence signed by that key is no longer trusted.
- ``list DIR``: the registry, after checking every signature in it (exit 1 if one fails).

Private keys may be passphrase-protected: ``--passphrase-file F`` (0600), or the
environment variable ``BODYCAM_AGENCY_PASSPHRASE`` (or ``BODYCAM_AGENCY_PASSPHRASE_FILE``);
never on the command line. Exit codes: 0 done, 1 refused or not trusted, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest='agency_action', required=True)
    # No abbreviations: ``--passphrase SECRET`` must be an error, not ``--passphrase-file``.
    p.allow_abbrev = False

    def common(sp: argparse.ArgumentParser, secret: bool) -> None:
        sp.add_argument('dir', type=Path, help='the agency directory (kept off the units)')
        if secret:
            sp.add_argument('--passphrase-file', type=Path, default=None, metavar='F',
                            help='file (0600) holding the passphrase of the agency private '
                                 'keys; default $BODYCAM_AGENCY_PASSPHRASE(_FILE)')

    init = sub.add_parser(
        'init', allow_abbrev=False, help='create the agency keys and an empty trust store')
    common(init, secret=True)
    init.add_argument('--name', default='agency', help='a name for the agency')
    init.add_argument('--encrypt-keys', action='store_true',
                      help='require a passphrase (refuse to write unencrypted private keys)')

    reg = sub.add_parser(
        'register', allow_abbrev=False, help="add a device's public key to the trust store")
    common(reg, secret=True)
    reg.add_argument('pubkey', help='64 hex digits, a PEM file, or base64 of the raw key')
    reg.add_argument('--device-id', required=True, help='the unit id (as in its config)')

    rev = sub.add_parser(
        'revoke', allow_abbrev=False, help="stop trusting a device's key")
    common(rev, secret=True)
    rev.add_argument('--device-id', required=True)
    rev.add_argument('--reason', default='', help='recorded in the signed entry')

    lst = sub.add_parser(
        'list', allow_abbrev=False, help='show the trust store (every signature checked)')
    common(lst, secret=False)
    lst.add_argument('--json', action='store_true', help='JSON instead of a table')


def _pubkey(text: str) -> bytes:
    from bodycam_ros.core.keys import parse_public_key
    path = Path(text)
    if len(text) < 256 and path.is_file():
        return parse_public_key(path.read_bytes())
    return parse_public_key(text)


def main(args: argparse.Namespace) -> int:
    from bodycam_ros.core import trust
    from bodycam_ros.core.keys import KeyStoreError

    try:
        if args.agency_action == 'list':
            return _list(args)
        passphrase = trust.agency_passphrase(args.passphrase_file)
        if args.agency_action == 'init':
            if args.encrypt_keys and not passphrase:
                print('error: --encrypt-keys needs --passphrase-file or '
                      f'${trust.PASSPHRASE_ENV}', file=sys.stderr)
                return 2
            info = trust.init_agency(args.dir, time.time(), name=args.name,
                                     passphrase=passphrase)
            print(f'agency {info.name!r} created in {args.dir} (keep this directory off the '
                  'units)')
            print(f'agency fingerprint: {info.fingerprint}')
            print(f'encryption key fingerprint: {info.encryption_fingerprint}')
            print(f'units need only {args.dir / trust.ENCRYPTION_PUB}; verifiers need '
                  f'{trust.SIGNING_PUB} and {trust.REGISTRY}')
            if not passphrase:
                print('warning: private keys are not passphrase-protected '
                      f'(set ${trust.PASSPHRASE_ENV} or --passphrase-file)', file=sys.stderr)
            return 0
        if args.agency_action == 'register':
            dev = trust.register_device(args.dir, _pubkey(args.pubkey), args.device_id,
                                        time.time(), passphrase)
            print(f'registered device {dev.device_id!r} key {dev.fingerprint} '
                  f'at {dev.registered_at}')
            return 0
        if args.agency_action == 'revoke':
            dev = trust.revoke_device(args.dir, args.device_id, time.time(), args.reason,
                                      passphrase)
            print(f'revoked device {dev.device_id!r} key {dev.fingerprint} at {dev.revoked_at}')
            return 0
    except KeyStoreError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except trust.TrustError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    raise AssertionError(args.agency_action)


def _list(args: argparse.Namespace) -> int:
    from bodycam_ros.core import trust
    try:
        store = trust.TrustStore.load(args.dir)
    except trust.TrustError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({'agency_fingerprint': store.agency_fingerprint,
                          'serial': store.serial,
                          'devices': [d.as_dict() for d in store.devices]}, indent=2))
        return 0
    print(f'agency {store.agency_fingerprint}  serial {store.serial}  '
          f'{len(store.devices)} device key(s), all signatures valid')
    for d in store.devices:
        state = 'active' if d.active else f'REVOKED {d.revoked_at} {d.revoke_reason or ""}'
        print(f'{d.device_id:<24} {d.fingerprint[:16]}  registered {d.registered_at}  {state}')
    return 0
