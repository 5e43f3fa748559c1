"""Gazebo Harmonic: the officer world, its bridge onto the graph, and the unit on Gazebo's time.

    ros2 launch bodycam_ros gazebo.launch.py            # gz sim gazebo/worlds/patrol.sdf

Starts ``gz sim`` (ros_gz_sim) with ``gazebo/worlds/patrol.sdf`` and ``ros_gz_bridge`` with
``gazebo/config/gz_bridge.yaml`` (/clock, the chest camera onto ``image``, the IMU onto
``imu/data``, the GNSS onto ``gps/fix``), and the unit with ``use_sim_time:=true``: the camera
encodes the Gazebo image (``source: topic``), the imu and gps nodes are replaced by the
bridge, holster and dispatch stay simulated (``holster/set_drawn``). Where ros_gz_sim,
ros_gz_bridge or ``gz`` are missing it says which and how to install them, and starts the
unit anyway (it waits for the topics).
"""
import os

from bodycam_ros.launch_graph import graph

NODES = ('camera', 'holster', 'trigger_fusion', 'recorder', 'uploader', 'live_view',
         'dispatch_bridge')
NEEDED = {'ros_gz_sim': 'ros-jazzy-ros-gz-sim', 'ros_gz_bridge': 'ros-jazzy-ros-gz-bridge'}


def missing_packages() -> list[str]:
    """What this machine lacks to run Gazebo with the bridge, as install hints."""
    import shutil

    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    out = []
    for pkg, deb in NEEDED.items():
        try:
            get_package_prefix(pkg)
        except PackageNotFoundError:
            out.append(f'{pkg} (apt install {deb})')
    if shutil.which('gz') is None:
        out.append('the gz command of Gazebo Harmonic (apt install gz-harmonic)')
    return out


def _gazebo_params(context) -> list:
    """Unless params_file is given: config/sim.yaml with the camera on the bridged image."""
    import tempfile

    import yaml
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import SetLaunchConfiguration
    if context.launch_configurations.get('params_file'):
        return []
    share = get_package_share_directory('bodycam_ros')
    with open(os.path.join(share, 'config', 'sim.yaml')) as f:
        doc = yaml.safe_load(f)
    doc['/**/camera']['ros__parameters'].update(source='topic', image_topic='image')
    fd, path = tempfile.mkstemp(prefix='bodycam-gazebo-', suffix='.yaml')
    with os.fdopen(fd, 'w') as f:
        yaml.safe_dump(doc, f)
    return [SetLaunchConfiguration('params_file', path)]


def _simulator(context) -> list:
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import IncludeLaunchDescription, LogInfo
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch_ros.actions import Node
    missing = missing_packages()
    if missing:
        return [LogInfo(msg='gazebo.launch.py: Gazebo is not runnable here, missing: '
                        + '; '.join(missing) + '. Starting the unit only: it waits for '
                        'image, imu/data and gps/fix (or play a bag: bodycam replay).')]
    share = get_package_share_directory('bodycam_ros')
    world = context.launch_configurations.get('world') or \
        os.path.join(share, 'gazebo', 'worlds', 'patrol.sdf')
    gz = os.path.join(get_package_share_directory('ros_gz_sim'), 'launch',
                      'gz_sim.launch.py')
    gui = context.launch_configurations.get('gui', 'true').lower() == 'true'
    return [
        IncludeLaunchDescription(PythonLaunchDescriptionSource(gz), launch_arguments={
            'gz_args': f'-r {"" if gui else "-s "}{world}'}.items()),
        Node(package='ros_gz_bridge', executable='parameter_bridge', name='gz_bridge',
             parameters=[{'config_file': os.path.join(share, 'gazebo', 'config',
                                                      'gz_bridge.yaml'),
                          'use_sim_time': True}],
             output='screen'),
    ]


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import SetParameter
    return LaunchDescription([
        DeclareLaunchArgument('world', default_value='',
                              description='SDF world (default gazebo/worlds/patrol.sdf)'),
        DeclareLaunchArgument('gui', default_value='true', description='Gazebo GUI'),
        DeclareLaunchArgument('use_sim_time', default_value='true',
                              description="every node on Gazebo's /clock"),
        SetParameter('use_sim_time', LaunchConfiguration('use_sim_time')),
        OpaqueFunction(function=_gazebo_params),
        OpaqueFunction(function=_simulator),
        *graph('sim.yaml', nodes=NODES).entities,
    ])
