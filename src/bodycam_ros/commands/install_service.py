"""``bodycam install-service``: the systemd unit, user and directories of a field unit.

Writes into ``--output`` (default: the current directory, so nothing is installed by
surprise):

- ``bodycam.service``: ``Type=notify`` (the supervisor sends READY=1 once every node
  reports, then WATCHDOG=1 only while every node keeps reporting; see
  :mod:`bodycam_ros.sdnotify`), ``WatchdogSec=``, ``Restart=on-failure``, the dedicated
  user, ``StateDirectory=`` for evidence and keys (0700, owned by that user),
  ``ConfigurationDirectory=`` for the unit's params and agency trust store, journald
  logging, ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and a ``ROS_DOMAIN_ID``;
- ``sysusers.d/bodycam.conf``: the system user and its device groups (video, dialout,
  gpio, iio), for ``systemd-sysusers``.

Then, as root: copy them to ``/etc/systemd/system/`` and ``/etc/sysusers.d/``, run
``systemd-sysusers``, ``systemctl daemon-reload`` and ``systemctl enable --now bodycam``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

UNIT = 'bodycam.service'
STATE = '/var/lib/bodycam'
CONFIG = '/etc/bodycam'
LOGS = '/var/log/bodycam'
#: Device groups: V4L2 cameras (video), serial GPS (dialout), GPIO chips and IIO sensors
#: (gpio, iio: Ubuntu's udev rules or the one in the README give them these groups).
DEVICE_GROUPS = ('video', 'dialout', 'gpio', 'iio')


class ServiceError(ValueError):
    """A setting the unit cannot be written with; the message names it."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--user', default='bodycam', help='system user the graph runs as')
    p.add_argument('--prefix', type=Path, default=Path(sys.prefix),
                   help='where bodycam is installed: ExecStart is PREFIX/bin/bodycam '
                   '(default: this interpreter\'s prefix, e.g. the venv)')
    p.add_argument('--output', type=Path, default=Path('.'), metavar='DIR',
                   help='write the files here (default: the current directory)')
    p.add_argument('--domain-id', type=int, default=0, help='ROS_DOMAIN_ID of the unit')
    p.add_argument('--watchdog-sec', type=int, default=30,
                   help='systemd restarts the unit when no node-alive report came for this long')
    p.add_argument('--composed', default='all', metavar='GROUPS',
                   help="bodycam run --composed GROUPS ('split' = one process per node)")
    p.add_argument('--config-name', default='unit.yaml',
                   help=f'params file in {CONFIG}/ (install yours there)')


def unit_text(user: str, bodycam: Path, domain_id: int, watchdog_sec: int, composed: str,
              config_name: str = 'unit.yaml') -> str:
    """The ``bodycam.service`` text.

    Raises:
        ServiceError: a bad user name, domain id or watchdog period.
    """
    if not user or not all(c.isalnum() or c in '-_' for c in user) or user[0].isdigit():
        raise ServiceError(f'--user {user!r}: use a plain system user name')
    if not 0 <= domain_id <= 232:
        raise ServiceError(f'--domain-id {domain_id}: ROS_DOMAIN_ID must be 0..232')
    if watchdog_sec < 5:
        raise ServiceError(f'--watchdog-sec {watchdog_sec}: at least 5 s (nodes report each '
                           'second; a restarted group needs a few)')
    run = [str(bodycam), 'run', '--quiet', '--no-portal', '--config', f'{CONFIG}/{config_name}',
           '--evidence-dir', f'{STATE}/evidence', '--key-dir', f'{STATE}/keys',
           '--agency', f'{CONFIG}/agency', '--log-dir', f'{LOGS}/run']
    if composed != 'split':
        run += ['--composed', composed]
    return f"""# Written by `bodycam install-service`. The body camera's ROS 2 graph.
[Unit]
Description=bodycam_ros body-worn camera (ROS 2 graph)
After=network-online.target time-sync.target
Wants=network-online.target
StartLimitIntervalSec=300
StartLimitBurst=10

[Service]
Type=notify
NotifyAccess=main
ExecStart={' '.join(run)}
# The supervisor sends READY=1 once every node reports on /diagnostics, then WATCHDOG=1
# only while every node keeps reporting: a dead or hung node starves the watchdog.
WatchdogSec={watchdog_sec}
Restart=on-failure
RestartSec=5
TimeoutStartSec=120
# SIGTERM reaches the supervisor only; it stops the nodes in order (the recorder seals,
# the uploader drains), so give it time before the rest of the cgroup is killed.
KillMode=mixed
TimeoutStopSec=90
User={user}
Group={user}
SupplementaryGroups={' '.join(DEVICE_GROUPS)}
# /var/lib/bodycam/{{evidence,keys}} and /var/log/bodycam, owned by {user}, 0700.
StateDirectory=bodycam bodycam/evidence bodycam/keys
StateDirectoryMode=0700
LogsDirectory=bodycam
LogsDirectoryMode=0700
# /etc/bodycam: {config_name} and the agency's public trust store, read-only to {user}.
ConfigurationDirectory=bodycam
ConfigurationDirectoryMode=0750
WorkingDirectory={STATE}
UMask=0077
StandardOutput=journal
StandardError=journal
SyslogIdentifier=bodycam
Environment=ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
Environment=ROS_DOMAIN_ID={domain_id}
Environment=ROS_HOME={STATE}/ros
Environment=ROS_LOG_DIR={LOGS}/ros
Environment=PYTHONUNBUFFERED=1
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes

[Install]
WantedBy=multi-user.target
"""


def sysusers_text(user: str) -> str:
    lines = [f'# Written by `bodycam install-service`: the user {UNIT} runs as.',
             f'u {user} - "bodycam body camera" {STATE} /usr/sbin/nologin']
    lines += [f'g {g} -' for g in DEVICE_GROUPS if g in ('gpio', 'iio')]
    lines += [f'm {user} {g}' for g in DEVICE_GROUPS]
    return '\n'.join(lines) + '\n'


def main(args: argparse.Namespace) -> int:
    bodycam = (args.prefix / 'bin' / 'bodycam').absolute()
    try:
        unit = unit_text(args.user, bodycam, args.domain_id, args.watchdog_sec, args.composed,
                         args.config_name)
    except ServiceError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    if args.composed != 'split':
        from bodycam_ros import bringup
        try:
            bringup.parse_groups(args.composed, bringup.NODES)
        except bringup.GroupError as exc:
            print(f'error: {exc}', file=sys.stderr)
            return 2
    if not bodycam.is_file():
        print(f'warning: {bodycam} does not exist; install bodycam there or pass --prefix',
              file=sys.stderr)
    out = args.output
    (out / 'sysusers.d').mkdir(parents=True, exist_ok=True)
    (out / UNIT).write_text(unit)
    (out / 'sysusers.d' / 'bodycam.conf').write_text(sysusers_text(args.user))
    print(f'wrote {out / UNIT} and {out / "sysusers.d" / "bodycam.conf"}')
    print('install (as root):\n'
          f'  cp {out / UNIT} /etc/systemd/system/ && '
          f'cp {out / "sysusers.d" / "bodycam.conf"} /etc/sysusers.d/\n'
          f'  systemd-sysusers && install -d -m 0750 -g {args.user} {CONFIG}\n'
          f'  cp YOUR_UNIT.yaml {CONFIG}/{args.config_name}   # and the agency trust store '
          f'in {CONFIG}/agency\n'
          f'  systemctl daemon-reload && systemctl enable --now bodycam')
    if shutil.which('systemd-analyze') is None:
        print('note: systemd-analyze not found; check the unit with '
              '`systemd-analyze verify` on the target')
    return 0
