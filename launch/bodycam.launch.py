"""Field unit: V4L2 camera, IIO IMU, gpsd, holster GPIO, evidence under /var/lib/bodycam.

    ros2 launch bodycam_ros bodycam.launch.py params_file:=/etc/bodycam/unit.yaml
"""
from bodycam_ros.launch_graph import graph


def generate_launch_description():
    return graph('bodycam.yaml')
