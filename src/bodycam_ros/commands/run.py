"""``bodycam run``: the whole graph from a params file, with a one-line live status."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from bodycam_ros.bringup import SCENARIO_LEAD_S


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--config', type=Path, default=None,
                   help='params YAML keyed by node name (default: the package config/sim.yaml)')
    p.add_argument('--duration', type=float, default=None, metavar='S',
                   help='stop cleanly after S seconds (default: until Ctrl-C, or the end of '
                   'the --scenario)')
    p.add_argument('--scenario', default=None,
                   help='scripted shift for the simulated sensors, e.g. patrol or idle')
    p.add_argument('--namespace', default='', help='ROS namespace of this unit, e.g. unit_a')
    p.add_argument('--evidence-dir', type=Path, default=None,
                   help='where incidents and the spool live (default var/evidence)')
    p.add_argument('--bucket', default=None,
                   help='upload target: file://DIR or s3://bucket/prefix (default file://var/bucket)')
    p.add_argument('--dispatch-webhook', default=None, metavar='URL',
                   help='HTTPS endpoint that receives officer-down and incident events')
    p.add_argument('--portal', default=None, metavar='URL',
                   help='the agency portal (https://host:port): start portal_link, which dials '
                        'out to it (state, alerts, live video on demand, dispatch)')
    p.add_argument('--portal-ca-file', default='', metavar='FILE',
                   help="CA bundle that verifies the portal's certificate")
    p.add_argument('--portal-insecure', action='store_true',
                   help='accept a plain http:// portal (loopback tests only)')
    p.add_argument('--nodes', default=None,
                   help='comma-separated subset of nodes to run (default: all)')
    p.add_argument('--log-dir', type=Path, default=None,
                   help='node logs go here (default: <ROS_HOME or ~/.ros>/bodycam/<time>)')
    p.add_argument('--replay', type=Path, default=None, metavar='BAG',
                   help='run on a rosbag2 (e.g. an incident\'s sensors.mcap) instead of the '
                        'simulated sensors, every node on the bag\'s /clock; ends when it has '
                        'played and the recorder has sealed')
    p.add_argument('--rate', type=float, default=1.0, help='--replay speed (1 = as recorded)')
    p.add_argument('--quiet', action='store_true', help='no live status line')
    p.add_argument('--composed', nargs='?', const='all', default=None, metavar='GROUPS',
                   help='several nodes per process: all (the default with no value) or groups '
                   'such as sensors+fusion,recorder+uploader,rest')
    p.add_argument('--agency', type=Path, default=Path('var/agency'), metavar='DIR',
                   help='the agency evidence is encrypted to; a demo agency is created here '
                        'on first use (default var/agency; its private keys belong off the '
                        'unit)')
    p.add_argument('--key-dir', type=Path, default=Path('var/keys'), metavar='DIR',
                   help='the device signing key (created on first use; default var/keys)')
    p.add_argument('--no-portal', action='store_true',
                   help='do not start the local agency portal next to the graph')
    p.add_argument('--portal-port', type=int, default=8443, metavar='PORT',
                   help='local portal port (default 8443; 0 picks a free one)')
    p.add_argument('--portal-state', type=Path, default=Path('var/portal'), metavar='DIR',
                   help='local portal database and decrypted cache (default var/portal)')


def embedded_trust(agency: Path, key_dir: Path, params: Path,
                   evidence_dir: Path | None) -> tuple[dict[str, object], str]:
    """The embedded default: a file device key in ``key_dir`` and a demo agency in ``agency``
    (both created on first use, the unit registered), and the recipient file the recorder
    encrypts to. Returns the recorder's overrides and a line to print ('' if none)."""
    import socket

    import yaml

    from bodycam_ros.core import keys, trust
    from bodycam_ros.core.encryption import encode_recipient

    doc = yaml.safe_load(Path(params).read_text()) or {}
    device_id = str(((doc.get('/**') or {}).get('ros__parameters') or {}).get('device_id')
                    or socket.gethostname())
    key_dir, agency = key_dir.resolve(), agency.resolve()
    if not (key_dir / keys.DEVICE_INFO).exists():
        keys.FileSigner.create(key_dir, device_id, keys.passphrase_from_env(),
                               evidence_dir or Path('var/evidence'))
    public = bytes.fromhex(keys.read_device_info(key_dir)['public_key'])
    note = ''
    if trust.ensure_demo_agency(agency, public, device_id):
        note = (f'bodycam: created a DEMO agency in {agency} (unit {device_id} registered); '
                'its private keys belong off the unit: use `bodycam agency init` on an agency '
                'machine for real evidence')
    recipient_file = key_dir / 'agency_recipient.txt'
    text = encode_recipient(trust.load_encryption_public(agency)) + '\n'
    if not recipient_file.exists() or recipient_file.read_text() != text:
        from bodycam_ros.core.fsio import write_atomic
        write_atomic(recipient_file, text.encode(), mode=0o600)
    return {'key_dir': str(key_dir), 'agency_recipient_file': str(recipient_file)}, note


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(args: argparse.Namespace) -> int:
    # A Ctrl-C or SIGTERM while the graph is still coming up (imports, key set-up, children
    # starting) is remembered and honoured once the supervisor can stop what it started.
    deferred: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _f: deferred.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, _f: deferred.append(signum))
    from bodycam_ros import bringup
    from bodycam_ros.paths import config_file

    bringup.ros_env_defaults()
    params = args.config or config_file('sim.yaml')
    if not Path(params).is_file():
        print(f'error: no config file {params}', file=sys.stderr)
        return 2
    wanted = args.nodes.split(',') if args.nodes else list(bringup.NODES)
    known = bringup.NODES + bringup.OPTIONAL_NODES
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        print(f'error: unknown node(s) {", ".join(unknown)}; known: {", ".join(known)}',
              file=sys.stderr)
        return 2
    if args.portal and 'portal_link' not in wanted:
        wanted.append('portal_link')
    elif 'portal_link' in wanted and not args.portal:
        print('error: portal_link needs --portal URL', file=sys.stderr)
        return 2
    names = bringup.available_nodes(wanted)
    replay = None
    if args.replay is not None:
        from bodycam_ros.commands.replay import ReplayError, ReplayRun
        try:
            replay = ReplayRun.prepare(args.replay, args.rate, names, args.namespace)
        except ReplayError as exc:
            print(f'error: --replay {args.replay}: {exc}', file=sys.stderr)
            return 2
        names = replay.names

    overrides: dict[str, object] = {}
    duration = args.duration
    if args.scenario:
        from bodycam_ros.core import scenario
        try:
            shift = scenario.get(args.scenario)
        except ValueError as exc:
            print(f'error: {exc}', file=sys.stderr)
            return 2
        overrides['scenario'] = args.scenario
        # One epoch for every process, a little ahead so all nodes are up when it begins.
        overrides['scenario_start'] = time.time() + SCENARIO_LEAD_S
        if duration is None and shift.duration_s != float('inf'):
            duration = SCENARIO_LEAD_S + shift.duration_s   # a scripted shift ends by itself
    if args.evidence_dir is not None:
        overrides['evidence_dir'] = str(args.evidence_dir.resolve())
    if args.bucket is not None:
        overrides['bucket'] = args.bucket
    if args.dispatch_webhook is not None:
        overrides['dispatch_webhook'] = args.dispatch_webhook

    if 'recorder' in names or 'portal_link' in names:
        try:
            trust_overrides, trust_note = embedded_trust(args.agency, args.key_dir, params,
                                                         args.evidence_dir)
            overrides.update(trust_overrides)
        except (OSError, ValueError, RuntimeError) as exc:
            print(f'error: --agency {args.agency} / --key-dir {args.key_dir}: {exc}',
                  file=sys.stderr)
            return 2

    log_dir = args.log_dir or Path(os.environ.get('ROS_HOME', Path.home() / '.ros')) / \
        'bodycam' / time.strftime('%Y%m%d-%H%M%S')
    files = [Path(params)]
    if overrides:
        files.append(bringup.write_overrides(log_dir / 'overrides.yaml', overrides, names))
    if 'portal_link' in names:
        # Its own section only: allow_insecure_http must not reach the uploader or bridge.
        files.append(bringup.write_overrides(log_dir / 'portal.yaml', {
            'portal_url': args.portal, 'portal_ca_file': args.portal_ca_file,
            'allow_insecure_http': bool(args.portal_insecure)}, ['portal_link']))
    if replay is not None:
        files.append(replay.write_params(log_dir / 'replay.yaml'))
    try:
        children = bringup.children(names, files, args.namespace, args.composed)
    except bringup.GroupError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    from bodycam_ros import prefork
    try:
        spawn = prefork.spawn_mode()
    except prefork.SpawnError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    sup = bringup.Supervisor(children, log_dir=log_dir, spawn=spawn)
    print(f'bodycam: starting {", ".join(names)} (config {params}, logs {log_dir})', flush=True)
    if ('recorder' in names or 'portal_link' in names) and trust_note:
        print(trust_note, flush=True)
    if 'live_view' in names:
        # Same token source as the node, so the printed URL works.
        from bodycam_ros.core.tokens import TokenError, live_view_url_from_config
        try:
            print(f'live view: {live_view_url_from_config(params)}', flush=True)
        except (TokenError, OSError) as exc:
            print(f'live view: unavailable ({exc})', flush=True)
    sup.start()
    if replay is not None:
        print('\n'.join(replay.notes), flush=True)
        replay.start(log_dir)
    portal = None
    if not args.no_portal and 'uploader' in names:
        from bodycam_ros import local_portal
        portal, portal_note = local_portal.start(args.bucket, params, args.agency,
                                                 args.portal_state, args.portal_port, log_dir)
        print(portal_note, flush=True)

    from bodycam_ros.monitor import Monitor
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    monitor = Monitor(namespace=args.namespace)
    from bodycam_ros.rosutil import make_executor
    executor = make_executor()               # one executor, not rclpy.spin_once's per call
    executor.add_node(monitor)
    from bodycam_ros.sdnotify import ALIVE_S, Watchdog
    watchdog = Watchdog(lambda: monitor.missing(names, ALIVE_S))   # systemd: Type=notify
    deadline = time.monotonic() + duration if duration else None
    # From here Ctrl-C is a KeyboardInterrupt; SIGTERM (systemd, timeout) stops the same way
    # instead of killing us and orphaning the nodes in their own sessions.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if deferred:
        deadline = time.monotonic()          # asked to stop while starting: stop now, cleanly
    if duration:
        print(f'bodycam: running for {duration:.0f} s', flush=True)
    last_print = time.monotonic()
    tty = sys.stdout.isatty()
    code = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            watchdog.tick()
            if replay is not None and replay.finished():
                break
            for line in monitor.take_events() + sup.poll() + (portal.poll() if portal else []):
                print(('\r\033[K' if tty else '') + line, flush=True)
            if not args.quiet and time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                line = monitor.status_line()
                print(('\r\033[K' + line) if tty else line, end='' if tty else '\n', flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not cut the stop short: the recorder is sealing.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if tty:
            print()
        print('bodycam: final ' + monitor.status_line(), flush=True)
        print('bodycam: stopping', flush=True)
        watchdog.stopping()
        if replay is not None:
            replay.stop()
        codes = sup.stop()
        if portal is not None:               # last: it may still index the final upload
            codes['portal'] = portal.stop()
        bad = {n: c for n, c in codes.items() if c not in (0, None)}
        if bad:
            print('bodycam: unclean exits: ' + ', '.join(f'{n}={c}' for n, c in bad.items()))
            code = 1
        monitor.destroy_node()
        rclpy.try_shutdown()
    return code
