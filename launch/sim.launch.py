"""Simulated unit: test-pattern camera, simulated IMU, GPS and holster, local evidence/bucket.

    ros2 launch bodycam_ros sim.launch.py scenario:=patrol namespace:=unit_a
"""
from bodycam_ros.launch_graph import graph


def generate_launch_description():
    return graph('sim.yaml')
