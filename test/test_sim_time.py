"""The graph on sim time: every node started with ``use_sim_time`` follows a ``/clock`` set
in 2001, far from the wall clock, as it would follow a bag played with ``--clock``.

Real nodes over DDS in one process: trigger_fusion, recorder and camera (test pattern) on
sim time; a probe plays the rest of the unit (``/clock``, holster, IMU and GPS stamped in
sim time, the officer's stop button). A draw in sim time must reach the recorder with its
sim trigger time; bodycam/triggers, recorder/command and the sealed manifest must carry sim
times; and with ``/clock`` paused no amount of wall time makes a source stale.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Imu, NavSatFix, NavSatStatus
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from bodycam_ros.core import messages as m
from bodycam_ros.nodes.camera_node import CameraNode
from bodycam_ros.nodes.recorder_node import RecorderNode
from bodycam_ros.nodes.trigger_fusion_node import TriggerFusionNode
from bodycam_ros.rosutil import (LATCHED_QOS, OK, RELIABLE_QOS, SENSOR_QOS, STALE,
                                 VIDEO_QOS, WARN)
from bodycam_ros.wire import from_status
from conftest import spin_until
from spoolutil import recorder_params

SIM_T0 = 978_307_200.0        # 2001-01-01T00:00:00Z
CLOCK_QOS = 10


def to_time(t: float) -> Time:
    sec = int(t)
    return Time(sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


def secs(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def is_sim(t: float) -> bool:
    """A 2001 time, not today's wall clock."""
    return abs(t - SIM_T0) < 3600.0 and abs(t - time.time()) > 3e8


class Unit(Node):
    """The world outside the nodes under test, on the WALL clock: /clock, sensors, button."""

    def __init__(self, ctx) -> None:
        super().__init__('sim_world', context=ctx)
        self.sim_t = SIM_T0
        self.running = True
        self.imu_on = True
        self.clock_pub = self.create_publisher(Clock, '/clock', CLOCK_QOS)
        self.imu = self.create_publisher(Imu, 'imu/data', SENSOR_QOS)
        self.fix = self.create_publisher(NavSatFix, 'gps/fix', SENSOR_QOS)
        self.holster = self.create_publisher(Bool, 'holster/weapon_drawn', LATCHED_QOS)
        self.commands: list[DiagnosticStatus] = []
        self.triggers: list[DiagnosticArray] = []
        self.status: list[DiagnosticStatus] = []
        self.h264: list[CompressedImage] = []
        self.create_subscription(DiagnosticStatus, 'recorder/command', self.commands.append,
                                 RELIABLE_QOS)
        self.create_subscription(DiagnosticArray, 'bodycam/triggers', self.triggers.append,
                                 RELIABLE_QOS)
        self.create_subscription(DiagnosticStatus, 'recorder/status', self.status.append,
                                 SENSOR_QOS)
        self.create_subscription(CompressedImage, 'camera/h264', self.h264.append, VIDEO_QOS)
        self.stop_button = self.create_client(Trigger, 'bodycam/stop_recording')
        self.start_button = self.create_client(Trigger, 'bodycam/start_recording')
        self._k = 0
        self.create_timer(0.01, self._step)      # wall-clock timer: this node is not on sim

    def _step(self) -> None:
        if not self.running:
            return
        self.sim_t += 0.01
        self.clock_pub.publish(Clock(clock=to_time(self.sim_t)))
        self._k += 1
        if self.imu_on and self._k % 2 == 0:      # 50 Hz, standing upright
            msg = Imu()
            msg.header.stamp = to_time(self.sim_t)
            msg.linear_acceleration.z = 9.81
            self.imu.publish(msg)
        if self._k % 100 == 0:                    # 1 Hz
            fix = NavSatFix(latitude=38.6, longitude=-121.49,
                            status=NavSatStatus(status=NavSatStatus.STATUS_FIX))
            fix.header.stamp = to_time(self.sim_t)
            fix.position_covariance = [4.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 16.0]
            fix.position_covariance_type = NavSatFix.COVARIANCE_TYPE_APPROXIMATED
            self.fix.publish(fix)

    def level(self, source: str) -> int | None:
        for arr in reversed(self.triggers):
            for s in arr.status:
                if s.name == f'trigger/{source}':
                    return s.level
        return None

    def recorder_state(self) -> str:
        return self.status[-1].message if self.status else ''


SIM = [Parameter('use_sim_time', value=True)]


@pytest.fixture
def graph(ctx, executor, tmp_path: Path):
    unit = Unit(ctx)
    executor.add_node(unit)
    fusion = TriggerFusionNode(context=ctx, parameter_overrides=SIM + [
        Parameter('imu_stale_s', value=0.5), Parameter('publish_period_s', value=0.2),
        Parameter('holster_clear_s', value=0.2)])
    params = {'evidence_dir': str(tmp_path / 'ev'), 'pre_event_s': 3.0, 'post_event_s': 1.0,
              'lookback_margin_s': 1.0, 'min_free_bytes': 0, 'device_id': 'unit-sim',
              'status_period_s': 0.2, **recorder_params(tmp_path)}
    recorder = RecorderNode(context=ctx, parameter_overrides=SIM + [
        Parameter(k, value=v) for k, v in params.items()])
    cam = CameraNode(context=ctx, parameter_overrides=SIM + [
        Parameter('source', value='test_pattern'), Parameter('width', value=160),
        Parameter('height', value=120), Parameter('fps', value=10), Parameter('gop', value=10),
        Parameter('raw_rate', value=0.0), Parameter('bitrate', value=200_000)])
    for n in (fusion, recorder, cam):
        executor.add_node(n)
    return unit, fusion, recorder, tmp_path / 'ev'


def test_draw_on_sim_time_records_with_sim_times_everywhere(graph, executor):
    unit, fusion, recorder, ev = graph
    unit.holster.publish(Bool(data=False))
    assert spin_until(executor, lambda: unit.level('holster') == OK
                      and unit.level('fight') == OK and len(unit.h264) > 20,
                      30.0), (unit.level('holster'), unit.level('fight'), len(unit.h264))
    # bodycam/triggers and camera/h264 are stamped on the sim clock.
    assert is_sim(secs(unit.triggers[-1].header.stamp))
    assert all(is_sim(secs(msg.header.stamp)) for msg in unit.h264)

    draw_sim = unit.sim_t
    unit.holster.publish(Bool(data=True))
    assert spin_until(executor, lambda: any(c.name == 'start' for c in unit.commands), 15.0)
    start = m.decode_command(from_status(next(c for c in unit.commands if c.name == 'start')))
    assert start.reason is m.Reason.HOLSTER
    assert is_sim(start.trigger_time) and abs(start.trigger_time - draw_sim) < 2.0, \
        (start.trigger_time, draw_sim)
    assert spin_until(executor, lambda: unit.level('holster') == WARN, 10.0)
    holster = next(s for s in unit.triggers[-1].status if s.name == 'trigger/holster')
    since = float({kv.key: kv.value for kv in holster.values}['since'])
    assert is_sim(since) and abs(since - start.trigger_time) < 1e-3
    assert spin_until(executor, lambda: unit.recorder_state() == 'RECORDING', 15.0)

    # Holstered, then the officer stops: post-roll on sim time, then the seal.
    unit.holster.publish(Bool(data=False))
    assert spin_until(executor, lambda: unit.level('holster') == OK, 15.0)
    assert unit.stop_button.wait_for_service(timeout_sec=10.0)
    fut = unit.stop_button.call_async(Trigger.Request())
    assert spin_until(executor, fut.done, 10.0) and fut.result().success, fut.result()
    spool = ev / 'spool'
    assert spin_until(executor, lambda: spool.is_dir() and any(spool.iterdir()), 30.0)
    wall_now = time.time()
    (inc,) = list(spool.iterdir())
    man = json.loads((inc / 'manifest.json').read_text())
    assert man['clock'] == 'sim'
    (trig,) = man['triggers']
    assert trig['reason'] == 'holster' and trig['time'] == pytest.approx(start.trigger_time)
    assert is_sim(trig['received_time'])
    (stop,) = man['stops']
    assert is_sim(stop['time']) and is_sim(stop['received_time'])
    for key in ('start_time', 'end_time', 'start_ros_time', 'end_ros_time', 'opened_ros_time',
                'sealed_ros_time'):
        assert is_sim(man[key]), (key, man[key])
    assert man['start_iso'][:10] in ('2000-12-31', '2001-01-01'), man['start_iso']
    assert man['start_time'] <= start.trigger_time <= man['end_time']
    assert is_sim(man['video']['first_stamp']) and man['video']['frame_count'] > 0
    # The wall clock beside it: when this machine recorded it.
    for key in ('wall_start_time', 'wall_end_time', 'opened_time', 'sealed_time'):
        assert abs(man[key] - wall_now) < 120.0, (key, man[key])


def test_staleness_follows_sim_time_not_the_wall(graph, executor):
    unit, fusion, recorder, ev = graph
    unit.holster.publish(Bool(data=False))
    assert spin_until(executor, lambda: unit.level('fight') == OK, 30.0)
    assert unit.start_button.wait_for_service(timeout_sec=10.0)
    # Pause the world: no /clock, no IMU. Wall time passes (4 x imu_stale_s) ...
    unit.running = False
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    # ... then the officer presses start: fusion publishes every source's health at once,
    # judged at sim time, which has not moved: the IMU is not stale.
    paused_at = len(unit.triggers)
    fut = unit.start_button.call_async(Trigger.Request())
    assert spin_until(executor, lambda: fut.done() and unit.level('manual') == WARN, 10.0)
    seen = [s.level for arr in unit.triggers[paused_at:] for s in arr.status
            if s.name == 'trigger/fight']
    assert seen and all(lv == OK for lv in seen), seen
    # Sim time moves on without the IMU: now it is stale.
    unit.imu_on, unit.running = False, True
    assert spin_until(executor, lambda: unit.level('fight') == STALE, 15.0)
