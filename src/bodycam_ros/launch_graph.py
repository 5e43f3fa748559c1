"""The launch description both launch files share (imports launch_ros only when called)."""
from __future__ import annotations

from bodycam_ros.bringup import NODES


def graph(default_config: str, nodes=NODES):
    """All bodycam nodes, each its own process, under an optional namespace.

    Launch arguments: ``params_file`` (YAML keyed by node name), ``namespace`` (the unit),
    ``scenario`` (simulated shift, sim sources only; empty for none), ``log_level``.
    """
    import os

    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, GroupAction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node, PushROSNamespace

    share = get_package_share_directory('bodycam_ros')
    params = LaunchConfiguration('params_file')
    return LaunchDescription([
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', default_config),
                              description='parameter YAML keyed by node name'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of this unit, e.g. unit_a'),
        DeclareLaunchArgument('scenario', default_value='',
                              description='scripted shift for sim sources (patrol, idle)'),
        DeclareLaunchArgument('log_level', default_value='info', description='ROS log level'),
        GroupAction([PushROSNamespace(LaunchConfiguration('namespace'))] + [
            Node(package='bodycam_ros', executable=f'{name}_node', name=name,
                 parameters=[params, {'scenario': LaunchConfiguration('scenario')}],
                 arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
                 output='screen', emulate_tty=True, respawn=True, respawn_delay=2.0)
            for name in nodes]),
    ])
