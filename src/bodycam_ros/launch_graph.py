"""The launch description both launch files share (imports launch_ros only when called)."""
from __future__ import annotations

import time

from bodycam_ros.bringup import NODES, SCENARIO_LEAD_S

#: Seconds launch waits after its SIGINT before SIGTERM (then 5 s more before SIGKILL): the
#: recorder seals and the uploader drains (``drain_on_exit_s`` 8 s) in that time.
SIGTERM_TIMEOUT_S = 15


def scenario_start(value: str, now: float) -> str:
    """The ``scenario_start`` every node gets: the launch argument, or ``now`` plus the lead.

    Resolved once per ``ros2 launch``, so all nodes share one scenario clock and a respawned
    node continues the shift where the others are instead of replaying it from t=0.
    """
    return value.strip() or repr(now + SCENARIO_LEAD_S)


def _set_scenario_start(context) -> list:
    from launch.actions import SetLaunchConfiguration
    value = context.launch_configurations.get('scenario_start', '')
    return [SetLaunchConfiguration('scenario_start', scenario_start(value, time.time()))]


def _processes(context, nodes, params, shared) -> list:
    """One launch_ros Node per node, or per group of the ``composed`` argument: a group
    runs ``composed_node --nodes a,b`` with no ``name=`` (``__node:=`` would rename every
    node in it); each node there reads its own section of the same params file."""
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from bodycam_ros.bringup import parse_groups
    spec = context.launch_configurations.get('composed', '').strip()
    groups = [(n,) for n in nodes] if not spec else parse_groups(spec, nodes)
    common = dict(parameters=[params, shared], output='screen', emulate_tty=True,
                  respawn=LaunchConfiguration('use_respawn'), respawn_delay=2.0)
    log = ['--ros-args', '--log-level', LaunchConfiguration('log_level')]
    return [Node(package='bodycam_ros', executable=f'{g[0]}_node', name=g[0], arguments=log,
                 **common) if len(g) == 1 else
            Node(package='bodycam_ros', executable='composed_node',
                 arguments=['--nodes', ','.join(g)] + log, **common)
            for g in groups]


def graph(default_config: str, nodes=NODES):
    """All bodycam nodes, each its own process, under an optional namespace.

    Launch arguments: ``params_file`` (YAML keyed by node name), ``namespace`` (the unit),
    ``scenario`` (simulated shift, sim sources only; empty for none), ``scenario_start``
    (UNIX time of scenario t=0; empty = launch time + a short lead), ``use_respawn``,
    ``log_level``, ``sigterm_timeout``, ``composed`` (groups of nodes per process, as
    ``bodycam run --composed``), ``portal_url`` (the agency portal; empty = no
    portal_link node) and ``portal_ca_file``.
    """
    import os

    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction
    from launch.conditions import LaunchConfigurationNotEquals
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node, PushROSNamespace

    share = get_package_share_directory('bodycam_ros')
    params = LaunchConfiguration('params_file')
    shared = {'scenario': LaunchConfiguration('scenario'),
              'scenario_start': LaunchConfiguration('scenario_start')}
    return LaunchDescription([
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', default_config),
                              description='parameter YAML keyed by node name'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of this unit, e.g. unit_a'),
        DeclareLaunchArgument('scenario', default_value='',
                              description='scripted shift for sim sources (patrol, idle)'),
        DeclareLaunchArgument('scenario_start', default_value='',
                              description='UNIX time of scenario t=0 for every node; empty = '
                              f'launch time + {SCENARIO_LEAD_S:g} s'),
        DeclareLaunchArgument('use_respawn', default_value='true',
                              description='restart a node that exits (2 s later)'),
        DeclareLaunchArgument('log_level', default_value='info', description='ROS log level'),
        DeclareLaunchArgument('sigterm_timeout', default_value=str(SIGTERM_TIMEOUT_S),
                              description='seconds after SIGINT before launch sends SIGTERM; '
                              'the recorder seals and the uploader drains meanwhile'),
        DeclareLaunchArgument('portal_url', default_value='',
                              description='agency portal (https://host:port) the unit dials '
                              'out to; empty = no portal_link node'),
        DeclareLaunchArgument('portal_ca_file', default_value='',
                              description="CA bundle that verifies the portal's certificate"),
        DeclareLaunchArgument('composed', default_value='',
                              description='several nodes per process: empty = one process '
                              'per node; all; or groups, e.g. sensors+fusion,recorder+uploader,'
                              'rest'),
        OpaqueFunction(function=_set_scenario_start),
        GroupAction([PushROSNamespace(LaunchConfiguration('namespace')),
                     OpaqueFunction(function=_processes, args=[nodes, params, shared])] + [
            Node(package='bodycam_ros', executable='portal_link_node', name='portal_link',
                 parameters=[params, {'portal_url': LaunchConfiguration('portal_url'),
                                      'portal_ca_file': LaunchConfiguration('portal_ca_file')}],
                 arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
                 output='screen', emulate_tty=True,
                 respawn=LaunchConfiguration('use_respawn'), respawn_delay=2.0,
                 condition=LaunchConfigurationNotEquals('portal_url', ''))]),
    ])
