"""The ``bodycam`` command. Each subcommand lives in ``bodycam_ros.commands.<name>`` and
exposes ``add_arguments(parser)`` and ``main(args) -> int``. Command modules import rclpy,
PyAV, boto3 and friends inside ``main`` only, so ``bodycam --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    'run': 'bring the whole node graph up (simulated sensors by default)',
    'replay': 'play a rosbag2 (MCAP or sqlite3) into the graph, with /clock for sim time',
    'trigger': 'manual recording start/stop (std_srvs/Trigger services)',
    'eval': 'run a detector over recorded IMU/GPS data and print JSON accuracy',
    'verify': 'check evidence (incident, spool, file:// or s3:// bucket) against a trust store',
    'decrypt': "verify, then decrypt an incident with the agency's key (repairs crash-left ones)",
    'upload': 'drain the evidence spool to a bucket and exit',
    'agency': "the agency's keys and trust store: init, register, revoke, list (off the unit)",
    'provision': "create this unit's signing key (key directory or PKCS#11 token)",
    'audit': "check a unit's signed audit log: audit verify PATH --trust DIR",
    'portal': 'the agency web portal: index, verify, play, export and audit incidents',
    'report': 'one incident as a self-contained offline HTML page (video, timeline, plots)',
    'install-service': 'write the systemd unit and user of a field unit (watchdog, journald)',
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='bodycam', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(f'bodycam_ros.commands.{name.replace("-", "_")}')
        except ModuleNotFoundError as exc:
            if exc.name != f'bodycam_ros.commands.{name.replace("-", "_")}':
                raise
            p.set_defaults(_module=None)
            continue
        module.add_arguments(p)
        p.set_defaults(_module=module)
    args = parser.parse_args(argv)
    if args._module is None:
        parser.error(f'command {args.command!r} is not available in this build')
    return int(args._module.main(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
