"""``bodycam portal``: the agency's web portal over the evidence bucket (no ROS needed).

Indexes incidents as they land in the bucket, verifies each against the agency trust store,
decrypts for playback with the agency key, and keeps people, sessions and a hash-chained
audit trail in SQLite (default, ``STATE/portal.db``) or PostgreSQL (``--database
postgresql://...``). Prints ``portal: http://HOST:PORT/`` and, the first time, the generated
``admin`` password (once).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bodycam_ros.commands import add_s3_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--bucket', default='file://var/bucket',
                   help='file://DIR or s3://bucket/prefix (default file://var/bucket)')
    p.add_argument('--agency', type=Path, default=Path('var/agency'),
                   help='agency directory: trust store and encryption key (default var/agency)')
    p.add_argument('--database', default='',
                   help='postgresql://user@host/db, or a SQLite file (default STATE/portal.db)')
    p.add_argument('--state-dir', type=Path, default=Path('var/portal'),
                   help='SQLite file, decrypted-video cache, exports (default var/portal); '
                        'holds plaintext evidence: keep it where the agency key is')
    p.add_argument('--host', default='127.0.0.1', help='listen address (default 127.0.0.1)')
    p.add_argument('--port', type=int, default=8443, help='listen port (default 8443)')
    p.add_argument('--poll', type=float, default=1.0, metavar='S',
                   help='bucket poll interval in seconds (default 1)')
    p.add_argument('--tls-cert', type=Path, default=None, help='TLS certificate (PEM)')
    p.add_argument('--tls-key', type=Path, default=None, help='TLS private key (PEM)')
    add_s3_arguments(p, 'accept a plain http:// --endpoint-url or --dispatch-webhook (tests '
                        'and loopback only)')
    p.add_argument('--dispatch-webhook', default='', metavar='URL',
                   help='HTTPS endpoint that receives fleet alerts (officer down, weapon drawn, '
                        'unit offline while recording) as the dispatch bridge sends them')
    p.add_argument('--dispatch-token-file', default='', metavar='FILE',
                   help='bearer token for --dispatch-webhook (else $BODYCAM_DISPATCH_TOKEN)')
    p.add_argument('--dispatch-ca-file', default='', metavar='FILE',
                   help='CA bundle that verifies the --dispatch-webhook server')
    p.add_argument('--public-url', action='append', default=[], metavar='URL',
                   help='a URL units dial this portal by (behind a proxy or by DNS name); '
                        'the listen address is always accepted; repeatable')
    p.add_argument('--link-heartbeat', type=float, default=15.0, metavar='S',
                   help='units report at least this often; silent 3x as long = offline '
                        '(default 15)')


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from bodycam_ros.portal.app import Portal, PortalConfig
    from bodycam_ros.portal.bucket import BucketError
    from bodycam_ros.portal.db import DatabaseError

    if not 0 <= args.port <= 65535:
        print(f'error: --port {args.port}: 0..65535 expected', file=sys.stderr)
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print('error: give both --tls-cert and --tls-key', file=sys.stderr)
        return 2
    s3 = {}
    if args.bucket.startswith('s3://'):
        s3 = {'endpoint_url': args.endpoint_url, 'region': args.region,
              'profile': args.profile, 'credentials_file': args.credentials_file,
              'allow_insecure_http': args.allow_insecure_http}
    from bodycam_ros.core.portal_link import LinkError, origin_of
    from bodycam_ros.portal.fleet import FleetConfig
    try:
        origins = tuple(origin_of(u) for u in args.public_url)
    except LinkError as exc:
        print(f'error: --public-url: {exc}', file=sys.stderr)
        return 2
    if not 0.2 <= args.link_heartbeat <= 3600:
        print(f'error: --link-heartbeat {args.link_heartbeat}: 0.2..3600 expected',
              file=sys.stderr)
        return 2
    fleet = FleetConfig(heartbeat_s=args.link_heartbeat,
                        offline_after_s=3 * args.link_heartbeat, public_origins=origins)
    cfg = PortalConfig(bucket=args.bucket, agency_dir=args.agency, database=args.database,
                       state_dir=args.state_dir, poll_s=max(0.1, args.poll),
                       secure_cookies=bool(args.tls_cert), s3=s3, fleet=fleet,
                       dispatch_webhook=args.dispatch_webhook,
                       webhook_token_file=args.dispatch_token_file,
                       webhook_ca_file=args.dispatch_ca_file,
                       allow_insecure_webhook=args.allow_insecure_http)
    try:
        portal = Portal(cfg)
    except (BucketError, DatabaseError, ValueError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - TrustError and friends: one plain line
        print(f'error: {type(exc).__name__}: {exc}', file=sys.stderr)
        return 2
    if not portal.audit_check.ok:
        for p in portal.audit_check.problems:
            print(f'portal: AUDIT CHAIN BROKEN: {p}', file=sys.stderr, flush=True)
    config = uvicorn.Config(portal.app(), host=args.host, port=args.port, log_level='warning',
                            ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
                            ssl_keyfile=str(args.tls_key) if args.tls_key else None,
                            lifespan='on', access_log=False)
    server = uvicorn.Server(config)
    scheme = 'https' if args.tls_cert else 'http'

    async def announce() -> None:
        import asyncio
        while not server.started:
            await asyncio.sleep(0.05)
        port = args.port
        for s in getattr(server, 'servers', []):
            for sock in s.sockets:
                port = sock.getsockname()[1]
        host = f'[{args.host}]' if ':' in args.host else args.host
        print(f'portal: {scheme}://{host}:{port}/', flush=True)
        print(f'portal: bucket {portal.bucket.url}, database {portal.db.dialect} '
              f'(schema {portal.db.version()})', flush=True)
        if portal.admin_password:
            print(f'portal: admin password: {portal.admin_password}', flush=True)
            portal.admin_password = None

    async def serve() -> None:
        import asyncio
        task = asyncio.create_task(announce())
        await server.serve()
        task.cancel()

    import asyncio
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    finally:
        portal.close()
    return 0
