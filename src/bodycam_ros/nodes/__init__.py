"""One thin rclpy node per file: parameters, QoS, topics and timers wired to the core."""
import os as _os
import sys as _sys

# Started as a program (``python -m bodycam_ros.nodes.x_node``: argv[0] is '-m' while the
# module is located; or the ``x_node`` console script launch runs): a stop that arrives
# during the heavy imports below this package is recorded, not raised (see earlystop).
if _sys.argv[:1] == ['-m'] or _os.path.basename(_sys.argv[0] if _sys.argv else '').endswith(
        '_node'):
    from bodycam_ros import earlystop as _earlystop
    _earlystop.install()
