"""The Gazebo files, checked statically (Gazebo Harmonic is not installable here): the world
parses and carries the officer's camera, IMU and navsat on the topics and at the rates the
bridge maps; the bridge's ROS side is exactly what the graph subscribes to, with its types."""
from __future__ import annotations

import ast
import xml.etree.ElementTree as ET

import yaml

from conftest import ROOT

WORLD = ROOT / 'gazebo' / 'worlds' / 'patrol.sdf'
BRIDGE = ROOT / 'gazebo' / 'config' / 'gz_bridge.yaml'
#: gz type of each sensor's output and the ROS type ros_gz_bridge converts it to.
GZ_FOR_SENSOR = {'camera': ('gz.msgs.Image', 'sensor_msgs/msg/Image'),
                 'imu': ('gz.msgs.IMU', 'sensor_msgs/msg/Imu'),
                 'navsat': ('gz.msgs.NavSat', 'sensor_msgs/msg/NavSatFix')}
RATES = {'camera': 30.0, 'imu': 100.0, 'navsat': 1.0}


def _sensors() -> dict[str, ET.Element]:
    world = ET.parse(WORLD).getroot().find('world')
    officer = next(m for m in world.iter('model') if m.get('name') == 'officer')
    return {s.get('type'): s for s in officer.iter('sensor')}


def test_world_parses_and_the_officer_carries_camera_imu_navsat():
    root = ET.parse(WORLD).getroot()
    assert root.tag == 'sdf' and root.get('version') >= '1.9'
    world = root.find('world')
    plugins = {p.get('filename') for p in world.findall('plugin')}
    # Without these systems gz-sim publishes nothing for the sensors.
    assert {'gz-sim-sensors-system', 'gz-sim-imu-system', 'gz-sim-navsat-system'} <= plugins
    sc = world.find('spherical_coordinates')
    assert sc.findtext('surface_model') == 'EARTH_WGS84'
    assert sc.findtext('world_frame_orientation') == 'ENU'
    assert -90 <= float(sc.findtext('latitude_deg')) <= 90
    sensors = _sensors()
    assert set(sensors) == set(GZ_FOR_SENSOR)
    for kind, s in sensors.items():
        assert float(s.findtext('update_rate')) == RATES[kind], kind
        assert s.findtext('topic'), kind
    img = sensors['camera'].find('camera/image')
    assert img.findtext('format') == 'R8G8B8'       # -> rgb8, an encoding the camera takes


def test_bridge_maps_each_sensor_topic_with_the_right_types():
    entries = yaml.safe_load(BRIDGE.read_text())
    by_gz = {e['gz_topic_name']: e for e in entries}
    for kind, s in _sensors().items():
        e = by_gz.get(s.findtext('topic'))
        assert e is not None, f'{kind} topic {s.findtext("topic")} not bridged'
        assert (e['gz_type_name'], e['ros_type_name']) == GZ_FOR_SENSOR[kind], e
        assert e['direction'] == 'GZ_TO_ROS'
    clock = by_gz['/clock']
    assert (clock['ros_type_name'], clock['gz_type_name']) == ('rosgraph_msgs/msg/Clock',
                                                               'gz.msgs.Clock')


def test_bridge_ros_side_is_what_the_graph_subscribes_to():
    """The ROS topics and types are read from the nodes' own code, not restated here."""
    entries = {e['ros_topic_name']: e['ros_type_name']
               for e in yaml.safe_load(BRIDGE.read_text())}
    src = ROOT / 'src' / 'bodycam_ros' / 'nodes'
    subs = {}
    for node in ('trigger_fusion_node.py', 'recorder_node.py'):
        for call in ast.walk(ast.parse((src / node).read_text())):
            if isinstance(call, ast.Call) and getattr(call.func, 'attr', '') == \
                    'create_subscription' and isinstance(call.args[1], ast.Constant):
                subs[call.args[1].value] = call.args[0].id
    assert subs['imu/data'] == 'Imu' and subs['gps/fix'] == 'NavSatFix'
    assert entries['imu/data'] == 'sensor_msgs/msg/Imu'
    assert entries['gps/fix'] == 'sensor_msgs/msg/NavSatFix'
    # The camera's image_topic default is where the bridge puts the image.
    cam = (src / 'camera_node.py').read_text()
    assert "d('image_topic', 'image'" in cam
    assert entries['image'] == 'sensor_msgs/msg/Image'
    assert entries['/clock'] == 'rosgraph_msgs/msg/Clock'


def test_every_launch_file_has_use_sim_time():
    for f in sorted((ROOT / 'launch').glob('*.launch.py')):
        text = f.read_text()
        assert "DeclareLaunchArgument('use_sim_time'" in text, f.name
        assert "SetParameter('use_sim_time'" in text, f.name
