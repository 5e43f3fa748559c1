"""Subcommands of the ``bodycam`` CLI, one module each (see ``bodycam_ros.cli``)."""

import argparse as _argparse
from pathlib import Path as _Path


def add_s3_arguments(p: _argparse.ArgumentParser, insecure_help: str = 'accept a plain '
                     'http:// --endpoint-url (tests and loopback only)') -> None:
    """How an ``s3://`` URL is reached: one set of options for upload, verify, decrypt and
    the portal. Credentials come from the AWS chain or a 0600 file, never the command line."""
    p.add_argument('--endpoint-url', default='',
                   help='S3-compatible endpoint for s3:// (MinIO, Ceph, a test server)')
    p.add_argument('--region', default='', help='S3 region (default from the AWS chain)')
    p.add_argument('--profile', default='', help='AWS profile from ~/.aws')
    p.add_argument('--credentials-file', type=_Path, default=None, metavar='FILE',
                   help='AWS credentials file, mode 0600 (default: the AWS credential chain)')
    p.add_argument('--allow-insecure-http', action='store_true', help=insecure_help)
