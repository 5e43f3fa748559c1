"""Replay: the unit's deciding and recording nodes on a rosbag2's time, as `bodycam run --replay`.

    ros2 launch bodycam_ros replay.launch.py bag:=/path/to/sensors.mcap rate:=4

Plays the bag with ``ros2 bag play --clock`` and runs trigger_fusion, the recorder, the
uploader and the live view with ``use_sim_time:=true`` (the bag replaces the imu, gps and
holster nodes; dispatch/destination comes from the bag too). Play only the bag's INPUTS
(``--topics``), never its recorded triggers or recorder commands: the recorded decisions
would drive the recorder directly. ``play_bag:=false`` plays nothing, for a player started
elsewhere (``bodycam replay BAG --clock --inputs-only`` on a machine without rosbag2). The
recorder marks every incident with the bag's path and SHA-256 (``replay`` in the manifest).
"""
from bodycam_ros.launch_graph import graph

#: What replaces the sensors; the camera is left out (the recorder seals without video).
NODES = ('trigger_fusion', 'recorder', 'uploader', 'live_view')
#: The graph inputs a sealed incident's sensors.mcap carries (bodycam_ros.core.replay).
INPUT_TOPICS = '/imu/data /gps/fix /gps/vel /holster/weapon_drawn /dispatch/destination'


def _replay_params(context) -> list:
    """The recorder's replay_bag / replay_bag_sha256, from the bag named at launch time."""
    from pathlib import Path

    from launch_ros.actions import SetParameter

    from bodycam_ros.core.replay import ReplayError, bag_sha256
    bag = context.launch_configurations.get('bag', '').strip()
    if not bag:
        return []
    path = Path(bag).expanduser().resolve()
    try:
        sha = bag_sha256(path)
    except (ReplayError, OSError) as exc:
        raise RuntimeError(f'launch argument bag:={bag}: {exc}') from exc
    return [SetParameter('replay_bag', str(path)), SetParameter('replay_bag_sha256', sha)]


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
    from launch.conditions import IfCondition
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import SetParameter

    unit = graph('sim.yaml', nodes=NODES)
    play = ExecuteProcess(
        cmd=['ros2', 'bag', 'play', LaunchConfiguration('bag'), '--clock',
             '--rate', LaunchConfiguration('rate'), '--topics',
             *INPUT_TOPICS.split()],
        output='screen', condition=IfCondition(LaunchConfiguration('play_bag')))
    return LaunchDescription([
        DeclareLaunchArgument('bag', default_value='',
                              description='rosbag2 to replay (directory or .mcap); named in '
                              'every manifest'),
        DeclareLaunchArgument('rate', default_value='1.0', description='playback speed'),
        DeclareLaunchArgument('play_bag', default_value='true',
                              description='start ros2 bag play here; false: a player runs '
                              'elsewhere (bodycam replay --clock)'),
        DeclareLaunchArgument('use_sim_time', default_value='true',
                              description='every node on the bag\'s /clock'),
        SetParameter('use_sim_time', LaunchConfiguration('use_sim_time')),
        OpaqueFunction(function=_replay_params),
        *unit.entities,
        play,
    ])
