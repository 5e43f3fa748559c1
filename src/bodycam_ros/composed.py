"""Several bodycam nodes in one process and one executor (composed mode).

    python -m bodycam_ros.composed --nodes camera,imu,gps --ros-args --params-file F ...

ROS 2 component containers do this for C++ nodes; rclpy has no containers and no
intra-process transport (checked on Jazzy: ``create_publisher`` has no
``use_intra_process_comms`` and rclpy has no intra-process code; messages between nodes
of one process still go through the RMW, serialised, over shared memory or loopback), so
composing here saves what every Python process pays before it does anything (the
interpreter, rclpy, the DDS participant's threads, NumPy/PyAV/OpenCV mapped once) and the
GIL hand-offs between processes, not the serialisation.

Each node keeps its own name, so the ``--params-file`` sections keyed by node name reach
it exactly as in its own process. Never pass ``-r __node:=...`` to this process: it would
rename every node in it. One executor thread serves all nodes (rclpy's EventsExecutor, see
``rosutil.make_executor``): no node's callbacks share state with another's, the camera
encodes and the GPS reads in their own threads, and the multi-threaded executor costs more
CPU per callback in rclpy than it saves here.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from bodycam_ros.bringup import NODES, close_order


class ComposeError(ValueError):
    """An unknown node name in a composed group; the message names it."""


def node_class(name: str) -> Callable[..., object]:
    """The Node class of ``bodycam_ros.nodes.<name>_node`` (``trigger_fusion`` ->
    ``TriggerFusionNode``), imported only when this group runs it."""
    if name not in NODES:
        raise ComposeError(f'unknown node {name!r}; known: {", ".join(NODES)}')
    module = importlib.import_module(f'bodycam_ros.nodes.{name}_node')
    return getattr(module, ''.join(w.title() for w in name.split('_')) + 'Node')


def main(argv: Sequence[str] | None = None) -> int:
    from bodycam_ros import earlystop
    earlystop.install()               # a stop during the node imports below is honoured
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index('--ros-args'):] if '--ros-args' in argv else []
    own = argv[:len(argv) - len(ros_args)]
    parser = argparse.ArgumentParser(prog='python -m bodycam_ros.composed',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--nodes', required=True, help='comma-separated node names')
    args = parser.parse_args(own)
    names = close_order([n for n in args.nodes.split(',') if n])
    if any(a.startswith('__node:=') for a in ros_args):
        print('error: __node:= would rename every node of a composed process', flush=True)
        return 2
    try:
        classes = [node_class(n) for n in names]
    except ComposeError as exc:
        print(f'error: {exc}', flush=True)
        return 2
    from bodycam_ros.rosutil import run_nodes
    return run_nodes(classes, [sys.argv[0]] + ros_args)


if __name__ == '__main__':
    sys.exit(main())
