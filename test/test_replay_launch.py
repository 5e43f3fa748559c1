"""``ros2 launch bodycam_ros replay.launch.py`` for real (the vendored Jazzy launch kit, a
colcon-built package), on a bag's time: rosbag2 has no wheels, so ``bodycam replay --clock``
plays the bag next to ``replay.launch.py play_bag:=false``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Imu
from std_msgs.msg import Bool

from bodycam_ros.core.replay import bag_sha256
from bodycam_ros.rosutil import LATCHED_QOS, RELIABLE_QOS
from conftest import spin_until
from test_launch import KIT, _params  # noqa: F401  (conftest holds the ros2 fixture)

pytestmark = pytest.mark.skipif(not KIT.is_file(), reason=f'no {KIT} (../shared is absent)')
#: Bag time: 2001-09-09, far from this machine's clock, so a wall stamp cannot pass for it.
T0_NS = 1_000_000_000 * 10**9
DRAW_S = 6.0


def _bag(path: Path, seconds: float = 20.0) -> Path:
    """A worn IMU standing still (100 Hz) and a weapon drawn at DRAW_S, as rosbag2 MCAP."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    ts = get_typestore(Stores.ROS2_JAZZY)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        imu = w.add_connection('/imu/data', 'sensor_msgs/msg/Imu', typestore=ts)
        hol = w.add_connection('/holster/weapon_drawn', 'std_msgs/msg/Bool', typestore=ts)
        w.write(hol, T0_NS, serialize_message(Bool(data=False)))
        for i in range(int(seconds * 100)):
            t = T0_NS + i * 10_000_000
            m = Imu()
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(t, 10**9)
            m.header.frame_id = 'imu_link'
            m.linear_acceleration.z = 9.81
            w.write(imu, t, serialize_message(m))
            if i == int(DRAW_S * 100):
                w.write(hol, t, serialize_message(Bool(data=True)))
    return path / f'{path.name}.mcap'


class Probe(Node):
    def __init__(self, ctx) -> None:
        super().__init__('replay_launch_probe', context=ctx)
        self.stamps: list[int] = []
        self.holster_since: list[float] = []
        self.commands: list[DiagnosticStatus] = []
        self.create_subscription(DiagnosticArray, 'bodycam/triggers', self._on, RELIABLE_QOS)
        self.create_subscription(DiagnosticStatus, 'recorder/command', self.commands.append,
                                 RELIABLE_QOS)
        self.create_subscription(DiagnosticStatus, 'bodycam/alerts', lambda m: None,
                                 LATCHED_QOS)

    def _on(self, msg: DiagnosticArray) -> None:
        self.stamps.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
        for st in msg.status:
            vals = {kv.key: kv.value for kv in st.values}
            if st.name.endswith('holster') and st.level == DiagnosticStatus.WARN:
                self.holster_since.append(float(vals.get('since') or 'nan'))


@pytest.mark.slow
def test_replay_launch_runs_the_graph_on_the_bags_time(
        ros2, ctx, executor, start_process, tmp_path):  # noqa: F811
    shown = ros2('ros2', 'launch', 'bodycam_ros', 'replay.launch.py', '--show-args')
    assert shown.returncode == 0, shown.stderr
    for arg in ('bag', 'rate', 'play_bag', 'use_sim_time', 'params_file', 'namespace'):
        assert f"'{arg}'" in shown.stdout, shown.stdout
    bag = _bag(tmp_path / 'bag')
    params = _params(tmp_path)
    doc = yaml.safe_load(params.read_text())
    doc['/**/recorder']['ros__parameters'].update(encrypt=False)
    params.write_text(yaml.safe_dump(doc))
    probe = Probe(ctx)
    executor.add_node(probe)
    log_path = tmp_path / 'launch.log'
    with open(log_path, 'w') as log_file:
        launch = subprocess.Popen(
            ros2.argv('ros2', 'launch', 'bodycam_ros', 'replay.launch.py', 'use_sim_time:=true',
                      'play_bag:=false', f'bag:={bag}', f'params_file:={params}'),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=ros2.env,
            cwd=tmp_path, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = lambda: log_path.read_text(errors='replace')   # noqa: E731
    try:
        # 4 nodes on sim time: the player waits for their /clock subscriptions.
        player = start_process('bodycam_ros.cli', 'replay', str(bag), '--clock',
                               '--inputs-only', '--wait-subscribers', '4',
                               '--wait-per-topic', '2',
                               '--wait-timeout', '180')
        assert spin_until(executor, lambda: player.proc.poll() is not None, 300), \
            player.output()[-2000:] + log()[-3000:]
        assert player.proc.returncode == 0, player.output()
        assert 'not every subscriber' not in player.output(), player.output() + log()[-3000:]
        spin_until(executor, lambda: probe.commands, 10)
        # trigger_fusion runs on the bag's clock: stamps and the draw time are bag time.
        assert probe.stamps, log()[-3000:]
        assert all(T0_NS - 10**9 <= s <= T0_NS + 21 * 10**9 for s in probe.stamps[-5:]), \
            probe.stamps[-5:]
        assert probe.holster_since and \
            abs(probe.holster_since[0] - (T0_NS / 1e9 + DRAW_S)) < 1.0, probe.holster_since
        starts = [c for c in probe.commands if c.name == 'start']
        assert starts, log()[-3000:]
    finally:
        os.killpg(launch.pid, signal.SIGINT)
        try:
            launch.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
    # The recorder sealed the incident as a replay of this bag, on sim time.
    manifests = list((tmp_path / 'evidence' / 'spool').glob('*/manifest.json'))
    assert len(manifests) == 1, log()[-4000:]
    m = json.loads(manifests[0].read_text())
    assert m['clock'] == 'sim' and m['replay'] == {'bag': str(bag.resolve()),
                                                   'sha256': bag_sha256(bag)}, m
    assert [t['reason'] for t in m['triggers']] == ['holster']
    assert abs(m['triggers'][0]['time'] - (T0_NS / 1e9 + DRAW_S)) < 1.0, m['triggers']
