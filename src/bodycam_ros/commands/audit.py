"""``bodycam audit verify PATH``: check a unit's audit log (or an uploaded copy of it).

Checks every line's Ed25519 signature, the hash chain and sequence numbers, that one key signs
the chain (or hands over with a signed ``key_rotated``), that the key is registered for the
device in the agency's trust store, and that no line is torn. Prints a JSON report; exit 0 when
it holds, 1 naming each problem (also on stderr), 2 when PATH or the trust store cannot be read.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any


class _Usage(Exception):
    """Bad arguments or unreadable inputs: exit 2."""


class PinnedKey:
    """One trusted key given on the command line (until an agency trust store is at hand)."""

    def __init__(self, public_raw: bytes, device_id: str) -> None:
        self.public_raw, self.device_id = public_raw, device_id

    def device_for_key(self, public_key_raw: bytes) -> str | None:
        return self.device_id if bytes(public_key_raw) == self.public_raw else None


class _Registry:
    """core.trust.TrustStore seen through the TrustStore protocol of core.signedlog."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def device_for_key(self, public_key_raw: bytes) -> str | None:
        if hasattr(self.store, 'device_for_key'):
            return self.store.device_for_key(public_key_raw)
        dev = self.store.by_public_key(bytes(public_key_raw))
        return dev.device_id if dev is not None and dev.active else None


def load_trust(agency_dir: Path) -> Any:
    """The agency trust store in ``agency_dir`` (the one place that reads it)."""
    from bodycam_ros.core import trust
    try:
        return _Registry(trust.TrustStore.load(agency_dir))
    except (trust.TrustError, OSError) as exc:
        raise _Usage(f'--trust {agency_dir}: {exc}') from exc


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest='audit_command', required=True)
    v = sub.add_parser('verify', help='check an audit log: signatures, chain, trusted key',
                       description=__doc__.splitlines()[0])
    v.add_argument('path', type=Path,
                   help='an audit log (audit.jsonl) or the evidence directory holding it')
    who = v.add_mutually_exclusive_group(required=True)
    who.add_argument('--trust', type=Path, metavar='DIR',
                     help="the agency's directory (its signed device registry)")
    who.add_argument('--pubkey', metavar='HEX',
                     help='the one trusted device public key, 64 hex digits (raw Ed25519)')
    v.add_argument('--device-id', default=None,
                   help="with --pubkey: the key's device (default: the one the log names)")
    v.add_argument('--allow-empty', action='store_true',
                   help='an empty or missing log is fine (a unit that did nothing yet)')
    v.add_argument('--witness', metavar='SEQ:SHA256', default=None,
                   help='a head recorded elsewhere (portal, bucket copy) the log must contain')
    v.add_argument('--compact', action='store_true', help='one-line JSON')


def _trust_from(args: argparse.Namespace, data: bytes) -> Any:
    if args.trust is not None:
        return load_trust(args.trust)
    if not re.fullmatch(r'[0-9a-fA-F]{64}', args.pubkey or ''):
        raise _Usage(f'--pubkey {args.pubkey!r}: need 64 hex digits (32-byte Ed25519 key)')
    device = args.device_id
    if device is None:
        try:    # the key is what is pinned; the device is taken from the log itself
            device = json.loads(data.split(b'\n', 1)[0]).get('device_id')
        except (ValueError, AttributeError):
            device = None
    return PinnedKey(bytes.fromhex(args.pubkey), str(device or ''))


def main(args: argparse.Namespace) -> int:
    from bodycam_ros.core import audit
    from bodycam_ros.core.signedlog import Head

    path: Path = args.path
    if path.is_dir():
        path = audit.audit_path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not args.allow_empty:
            print(f'error: {path} does not exist (pass --allow-empty if that is expected)',
                  file=sys.stderr)
            return 2
        data = b''
    except OSError as exc:
        print(f'error: {path}: {exc}', file=sys.stderr)
        return 2
    witness = None
    if args.witness:
        m = re.fullmatch(r'(\d+):([0-9a-f]{64})', args.witness)
        if not m:
            print(f'error: --witness {args.witness!r}: use SEQ:SHA256', file=sys.stderr)
            return 2
        witness = Head(int(m.group(1)), m.group(2))
    try:
        trust = _trust_from(args, data)
    except _Usage as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    rep = audit.verify_audit_bytes(data, trust, source=str(path),
                                   allow_empty=args.allow_empty, witness=witness)
    print(json.dumps(rep.as_dict(), indent=None if args.compact else 2))
    for p in rep.problems:
        print(f'BAD {p.code}: {p.message}', file=sys.stderr)
    return 0 if rep.ok else 1
