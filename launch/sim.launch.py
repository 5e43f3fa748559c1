"""Simulated unit: test-pattern camera, simulated IMU, GPS and holster, local evidence/bucket.

    ros2 launch bodycam_ros sim.launch.py scenario:=patrol namespace:=unit_a
"""
from bodycam_ros.launch_graph import graph


def generate_launch_description():
    return _on_sim_time(graph('sim.yaml'))


def _on_sim_time(ld):
    """nav2_bringup style: a ``use_sim_time`` argument set on every node of the unit."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import SetParameter
    return LaunchDescription([
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='every node on /clock (a bag played with --clock, '
                              'Gazebo) instead of the system clock'),
        SetParameter('use_sim_time', LaunchConfiguration('use_sim_time')),
        *ld.entities])
