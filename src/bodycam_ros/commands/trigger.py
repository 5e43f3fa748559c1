"""``bodycam trigger start|stop|cancel``: the officer's buttons, from a shell.

Calls the ``trigger_fusion`` node's std_srvs/Trigger services (``bodycam/start_recording``,
``bodycam/stop_recording``, ``bodycam/cancel_alert``) and prints the answer. Exit code 0
when the node accepted, 1 when it refused (a stop while a weapon is drawn, say), 3 when no
node answered in time.
"""
from __future__ import annotations

import argparse
import sys
import time

SERVICES = {'start': 'bodycam/start_recording', 'stop': 'bodycam/stop_recording',
            'cancel': 'bodycam/cancel_alert'}
EXIT_REFUSED = 1
EXIT_TIMEOUT = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('action', choices=tuple(SERVICES),
                   help='start or stop recording, or cancel an officer-down alert')
    p.add_argument('--namespace', default='', help='ROS namespace of the unit, e.g. unit_a')
    p.add_argument('--timeout', type=float, default=10.0, metavar='S',
                   help='seconds to wait for the trigger_fusion node (default 10)')


def main(args: argparse.Namespace) -> int:
    from bodycam_ros import bringup
    bringup.ros_env_defaults()
    import rclpy
    from rclpy.node import Node
    from std_srvs.srv import Trigger

    rclpy.init()
    node = Node('bodycam_trigger_cli', namespace=args.namespace.strip('/') or '')
    try:
        client = node.create_client(Trigger, SERVICES[args.action])
        deadline = time.monotonic() + args.timeout
        name = node.resolve_service_name(SERVICES[args.action])
        if not client.wait_for_service(timeout_sec=args.timeout):
            print(f'error: no {name} service within {args.timeout:g} s '
                  '(is trigger_fusion running in this namespace?)', file=sys.stderr)
            return EXIT_TIMEOUT
        future = client.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, future,
                                         timeout_sec=max(0.1, deadline - time.monotonic()))
        if not future.done() or future.result() is None:
            print(f'error: {name} did not answer within {args.timeout:g} s', file=sys.stderr)
            return EXIT_TIMEOUT
        resp = future.result()
        print(f'{args.action}: {"accepted" if resp.success else "REFUSED"}: {resp.message}')
        return 0 if resp.success else EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
