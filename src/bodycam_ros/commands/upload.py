"""``bodycam upload``: drain the evidence spool to a bucket, with a progress bar.

Pure core, no ROS: it also runs on an administration machine that holds a copy of a unit's
evidence directory. Credentials come from the standard AWS chain (environment, ~/.aws,
instance role), ``--profile``, or a 0600 ``--credentials-file``; never from the command line,
where ``ps`` would show them. ``--key-dir`` is the unit's device key: it signs the ledger's
``uploaded``/``pruned`` entries (without it nothing is ever pruned). A plain ``http://``
endpoint needs ``--allow-insecure-http``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bodycam_ros.commands import add_s3_arguments

MiB = 1024 * 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--bucket', default='file://var/bucket',
                   help='file://DIR or s3://bucket/prefix (default file://var/bucket)')
    p.add_argument('--evidence-dir', type=Path, default=Path('var/evidence'),
                   help='evidence directory holding spool/ (default var/evidence)')
    p.add_argument('--once', action='store_true',
                   help='drain what is sealed now and exit (default: keep watching)')
    add_s3_arguments(p)
    p.add_argument('--sse', default='AES256', choices=('AES256', 'aws:kms', 'none'),
                   help='server-side encryption asked for every object (default AES256)')
    p.add_argument('--kms-key-id', default='', help='KMS key for --sse aws:kms')
    p.add_argument('--object-lock-mode', default='governance',
                   choices=('governance', 'compliance', 'off'),
                   help='retention on every object where the bucket has Object Lock '
                   '(default governance)')
    p.add_argument('--object-lock-days', type=int, default=365, metavar='DAYS',
                   help='Object Lock retention in days (default 365)')
    p.add_argument('--device-id', default='',
                   help="the unit's id for the ledger (default: the key dir's, else the host)")
    p.add_argument('--part-size', type=float, default=8.0, metavar='MIB',
                   help='multipart part size in MiB, >= 5 for S3 (default 8)')
    p.add_argument('--bandwidth', type=float, default=0.0, metavar='BYTES_PER_S',
                   help='uplink cap in bytes/s (default 0 = unlimited)')
    proxy = p.add_mutually_exclusive_group()
    proxy.add_argument('--proxy', dest='proxy', action='store_true', default=None,
                       help='upload a 360p proxy of each video first (default for s3://)')
    proxy.add_argument('--no-proxy', dest='proxy', action='store_false',
                       help='no proxy transcode (default for file://)')
    p.add_argument('--keep-local', type=float, default=-1.0, metavar='S',
                   help='delete local incidents S seconds after they verify (-1 = never); '
                   'each only after its bucket copy verifies again')
    p.add_argument('--min-free', type=int, default=0, metavar='BYTES',
                   help='delete verified incidents, oldest first, while fewer bytes are free '
                   '(0 = never); each only after its bucket copy verifies again')
    p.add_argument('--retries', type=int, default=6,
                   help='consecutive failures before --once gives up (default 6)')
    p.add_argument('--max-backoff', type=float, default=30.0, metavar='S',
                   help='longest wait between retries (default 30 s)')
    p.add_argument('--key-dir', type=Path, default=None, metavar='DIR',
                   help="the unit's key dir: manifests must be signed by its "
                   "device_ed25519.pub, and its key signs the ledger (default: each "
                   "manifest's own key, no ledger entries, nothing pruned)")
    p.add_argument('--quiet', action='store_true', help='no progress bar, only the summary')


class Progress:
    """A plain-text progress bar: redrawn in place on a terminal, one line every few
    seconds otherwise (CI logs, pipes)."""

    def __init__(self, out=sys.stdout, quiet: bool = False) -> None:
        self._out = out
        self._tty = out.isatty()
        self._quiet = quiet
        self._last = 0.0

    def event(self, text: str) -> None:
        if self._tty and not self._quiet:
            self._out.write('\r\033[K')
        self._out.write(text + '\n')
        self._out.flush()

    def update(self, st, force: bool = False) -> None:
        if self._quiet:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.5 if self._tty else 5.0):
            return
        self._last = now
        total = st.bytes_done + st.bytes_pending
        frac = st.bytes_done / total if total else 1.0
        bar = '#' * int(frac * 30) + '.' * (30 - int(frac * 30))
        line = (f'[{bar}] {frac * 100:5.1f}% {st.bytes_done / MiB:7.1f}/{total / MiB:.1f} MiB '
                f'{st.rate_bps / MiB:5.2f} MiB/s  {st.verified_total} verified, '
                f'{st.queue_length} queued  {st.state} {st.current_incident}')
        if self._tty:
            self._out.write('\r\033[K' + line[:200])
        else:
            self._out.write(line + '\n')
        self._out.flush()

    def done(self) -> None:
        if self._tty and not self._quiet:
            self._out.write('\n')
            self._out.flush()


def main(args: argparse.Namespace) -> int:
    import threading

    from bodycam_ros.core.upload import UploadEvent, check_endpoint, create_uploader
    from bodycam_ros.core.upload.queue import safe_component

    progress = Progress(quiet=args.quiet)

    def on_event(e: UploadEvent) -> None:
        if e.kind in ('verified', 'error', 'warning', 'quarantined', 'released', 'deleted', 'info',
                      'requeued', 'proxy_ready', 'yield'):
            who = f' {e.incident_id}' if e.incident_id else ''
            progress.event(f'upload: {e.kind}{who}: {e.message}')

    try:
        check_endpoint(args.endpoint_url, args.allow_insecure_http)
    except ValueError as exc:
        print(f'error: --endpoint-url: {exc} (--allow-insecure-http)', file=sys.stderr)
        return 2
    if not (args.evidence_dir / 'spool').is_dir():
        print(f'upload: nothing to do: no spool in {args.evidence_dir}', flush=True)
        return 0
    try:
        uploader = create_uploader(
            args.bucket, args.evidence_dir, proxy=args.proxy, on_event=on_event,
            s3_options={'endpoint_url': args.endpoint_url, 'region': args.region,
                        'profile': args.profile, 'credentials_file': args.credentials_file,
                        'sse': args.sse, 'kms_key_id': args.kms_key_id,
                        'object_lock_mode': args.object_lock_mode,
                        'object_lock_days': args.object_lock_days,
                        'allow_insecure_http': args.allow_insecure_http},
            part_size=int(args.part_size * MiB), multipart_threshold=int(args.part_size * MiB),
            bandwidth_bps=args.bandwidth, keep_local_s=args.keep_local,
            min_free_bytes=max(0, args.min_free),
            device_key=args.key_dir / 'device_ed25519.pub' if args.key_dir else None,
            key_dir=args.key_dir, device_id=args.device_id,
            max_backoff_s=max(1.0, args.max_backoff))
    except ValueError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. an unknown --profile: say it plainly
        print(f'error: cannot open {args.bucket}: {exc}', file=sys.stderr)
        return 2

    result = None
    stopper = threading.Event()

    def ticker() -> None:
        while not stopper.wait(0.5):
            progress.update(uploader.status())

    tick = threading.Thread(target=ticker, daemon=True)
    tick.start()
    try:
        if args.once:
            result = uploader.drain(fail_fast=True, max_failures=max(1, args.retries))
        else:
            uploader.start()
            while True:
                time.sleep(1.0)
    except KeyboardInterrupt:
        uploader.request_stop()
        uploader.stop()
        progress.done()
        print('upload: interrupted; finished parts are kept and resume next time', flush=True)
        return 130
    finally:
        stopper.set()
        tick.join(1.0)
        uploader.backend.close()
    progress.update(uploader.status(), force=True)
    progress.done()
    st = uploader.status()
    if result.ok:
        print(f'upload: {len(result.verified)} incident(s) verified in {uploader.backend.url}; '
              'spool fully uploaded', flush=True)
        return 0
    if result.quarantined:
        print(f'upload: {len(result.verified)} incident(s) verified in {uploader.backend.url}',
              flush=True)
        qdir = args.evidence_dir / 'quarantine'
        for name, why in sorted(result.quarantined.items()):
            print(f'error: quarantined {name} (kept as found, not uploaded; see '
                  f'{qdir / safe_component(name)}.json): {why}', file=sys.stderr, flush=True)
        if not (result.failed or result.remaining or result.error or result.stopped):
            return 1
    reason = result.error or '; '.join(f'{k}: {v}' for k, v in result.failed.items()) or \
        st.last_error or 'quarantined incidents (above)'
    print(f'error: upload incomplete: {len(result.verified)} verified, {result.remaining} '
          f'still in the spool, {len(result.quarantined)} quarantined (all kept): {reason}',
          file=sys.stderr, flush=True)
    return 1
