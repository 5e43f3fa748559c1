"""``bodycam verify PATH``: check an incident, a spool or an evidence directory.

Checks every file's SHA-256 and size against the manifest, the Ed25519 signature over the
manifest, and the hash chain between manifests. Prints a JSON report on stdout; exit code 0
when everything holds, 1 when anything does not (each bad file is named in ``bad_files`` and
on stderr), 2 when PATH or the key cannot be read.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('path', type=Path,
                   help='an incident directory, a spool directory or an evidence directory')
    p.add_argument('--key', type=Path, default=None,
                   help='trusted device public key (PEM); default: keys/device_ed25519.pub of '
                        "the evidence directory PATH is in, else the manifest's own key")
    p.add_argument('--compact', action='store_true', help='one-line JSON')


def main(args: argparse.Namespace) -> int:
    from bodycam_ros.core import evidence as ev

    if not args.path.exists():
        print(f'error: {args.path} does not exist', file=sys.stderr)
        return 2
    if not args.path.is_dir():
        print(f'error: {args.path} is not a directory (give an incident or a spool)',
              file=sys.stderr)
        return 2
    try:
        report = ev.verify_tree(args.path, args.key)
    except (ev.EvidenceError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    out = report.as_dict()
    print(json.dumps(out, indent=None if args.compact else 2, sort_keys=False))
    if not report.key_trusted:
        print('warning: no trusted device key found; signatures were checked against the key '
              'each manifest carries (integrity, not origin). Pass --key.', file=sys.stderr)
    if report.ok:
        return 0
    for path in report.bad_files:
        print(f'BAD {path}', file=sys.stderr)
    for err in out['chain']['errors']:
        print(f'chain: {err}', file=sys.stderr)
    return 1
