"""Gazebo stand-in: the graph of gazebo.launch.py fed exactly what ros_gz_bridge publishes.

Gazebo is not installed here, so a world node plays the bridge: for every entry of
gazebo/config/gz_bridge.yaml (read here, not copied) it publishes that ROS type on that ROS
topic, as the bridge would: ``/clock`` (sim time, real-time factor 1, from 2001 so it cannot
be mistaken for the wall clock), a raw ``sensor_msgs/Image`` stream (rgb8, what the bridge
makes of the world's R8G8B8 camera; real video frames, scaled down from the world's
1280x720 to spare the shared CPU), ``sensor_msgs/Imu`` and ``sensor_msgs/NavSatFix`` (at the
world's place on the earth), every header stamped with the sim time it publishes on /clock.

The IMU is a real fall: SisFall F01 (waist, 200 Hz) in the body frame the imu node's
recording source publishes (``imu_formats.load_sisfall``), at its true rate. The nodes under
test are the real camera (``source: topic`` on the bridged image), trigger_fusion and
recorder (encryption on, to the test agency), all on ``use_sim_time`` over DDS. The fall
must raise officer_down on bodycam/alerts and start the recorder; cancelled and stopped, the
sealed incident's manifest names the officer_down trigger and its decrypted video decodes.
"""
from __future__ import annotations

import array
import json
import time
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, Imu, NavSatFix, NavSatStatus
from std_srvs.srv import Trigger

from bodycam_ros.core import messages as m
from bodycam_ros.core.imu_formats import load_sisfall
from bodycam_ros.nodes.camera_node import CameraNode
from bodycam_ros.nodes.recorder_node import RecorderNode
from bodycam_ros.nodes.trigger_fusion_node import TriggerFusionNode
from bodycam_ros.rosutil import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS
from bodycam_ros.wire import from_status
from conftest import shared_data, spin_until
from spoolutil import decrypted_incident, recorder_params

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = ROOT / 'gazebo' / 'config' / 'gz_bridge.yaml'
SIM_T0 = 978_307_200.0              # 2001-01-01T00:00:00Z
W, H, FPS = 320, 240, 10            # the world's camera is 1280x720 @ 30: scaled for the CPU
LAT, LON, ALT = 38.5816, -121.4944, 9.0    # patrol.sdf <spherical_coordinates>
LEAD_S = 2.0                        # sim seconds of /clock, camera and GPS before the trial
TRIAL = ('imu', 'sisfall', 'F01_SA01_R01.txt')
VIDEO = ('video', 'one-by-one-person-detection.mp4')
TYPES = {'rosgraph_msgs/msg/Clock': Clock, 'sensor_msgs/msg/Image': Image,
         'sensor_msgs/msg/Imu': Imu, 'sensor_msgs/msg/NavSatFix': NavSatFix}


def to_time(t: float) -> Time:
    sec = int(t)
    return Time(sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


def bridged_topics() -> dict[type, str]:
    """ROS type -> ROS topic name, for every GZ_TO_ROS entry of the bridge config."""
    out = {}
    for e in yaml.safe_load(BRIDGE.read_text()):
        assert e['direction'] == 'GZ_TO_ROS', e
        out[TYPES[e['ros_type_name']]] = e['ros_topic_name']
    assert set(out) == set(TYPES.values()), out
    return out


def video_frames(n: int) -> list[array.array]:
    """The first ``n`` frames of the real sample video as rgb8 bytes at W x H."""
    out = []
    with av.open(str(shared_data(*VIDEO))) as c:
        for f in c.decode(video=0):
            rgb = f.to_ndarray(width=W, height=H, format='rgb24')
            out.append(array.array('B', rgb.tobytes()))
            if len(out) == n:
                break
    return out


class Bridge(Node):
    """What ros_gz_bridge publishes from patrol.sdf, on the wall clock's pace (RTF 1)."""

    def __init__(self, ctx, topics: dict[type, str]) -> None:
        super().__init__('gz_bridge_standin', context=ctx)
        self.rec = load_sisfall(shared_data(*TRIAL))
        self.frames = video_frames(20)
        self.pubs = {typ: self.create_publisher(
            typ, name, 10 if typ is Clock else SENSOR_QOS) for typ, name in topics.items()}
        self.alerts: list[DiagnosticStatus] = []
        self.commands: list[DiagnosticStatus] = []
        self.status: list[DiagnosticStatus] = []
        self.create_subscription(DiagnosticStatus, 'bodycam/alerts', self.alerts.append,
                                 LATCHED_QOS)
        self.create_subscription(DiagnosticStatus, 'recorder/command', self.commands.append,
                                 RELIABLE_QOS)
        self.create_subscription(DiagnosticStatus, 'recorder/status', self.status.append,
                                 SENSOR_QOS)
        self.cancel = self.create_client(Trigger, 'bodycam/cancel_alert')
        self.stop = self.create_client(Trigger, 'bodycam/stop_recording')
        self.sim_t = SIM_T0
        self.imu_sent = self.images_sent = self.fixes_sent = 0
        self._i = 0
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self.create_timer(0.01, self._step)

    def _step(self) -> None:
        assert self._t0 is not None
        self.sim_t = SIM_T0 + (time.monotonic() - self._t0)
        self.pubs[Clock].publish(Clock(clock=to_time(self.sim_t)))
        # The IMU: every SisFall sample due by now, at its own 200 Hz stamp.
        rec, trial_t0 = self.rec, SIM_T0 + LEAD_S
        while self._i < len(rec.t) and trial_t0 + rec.t[self._i] <= self.sim_t:
            k = self._i
            msg = Imu()
            msg.header.stamp = to_time(trial_t0 + float(rec.t[k]))
            msg.header.frame_id = 'officer/base_link/imu'
            msg.orientation.w = 1.0
            a, w = msg.linear_acceleration, msg.angular_velocity
            a.x, a.y, a.z = (float(v) for v in rec.accel[k])
            w.x, w.y, w.z = (float(v) for v in rec.gyro[k])
            self.pubs[Imu].publish(msg)
            self._i += 1
            self.imu_sent += 1
        # The camera at FPS and the GNSS at 1 Hz, on the sim clock's grid.
        while SIM_T0 + self.images_sent / FPS <= self.sim_t:
            t = SIM_T0 + self.images_sent / FPS
            img = Image(height=H, width=W, encoding='rgb8', is_bigendian=0, step=W * 3,
                        data=self.frames[self.images_sent % len(self.frames)])
            img.header.stamp = to_time(t)
            img.header.frame_id = 'officer/base_link/bodycam'
            self.pubs[Image].publish(img)
            self.images_sent += 1
        while SIM_T0 + self.fixes_sent <= self.sim_t:
            fix = NavSatFix(latitude=LAT, longitude=LON, altitude=ALT, status=NavSatStatus(
                status=NavSatStatus.STATUS_FIX, service=NavSatStatus.SERVICE_GPS))
            fix.header.stamp = to_time(SIM_T0 + self.fixes_sent)
            fix.header.frame_id = 'officer/base_link/gnss'
            # gz.msgs.NavSat has no covariance: the bridge sends COVARIANCE_TYPE_UNKNOWN.
            fix.position_covariance_type = NavSatFix.COVARIANCE_TYPE_UNKNOWN
            self.pubs[NavSatFix].publish(fix)
            self.fixes_sent += 1

    def raised(self) -> list[m.DownAlert]:
        out = []
        for s in self.alerts:
            a = m.decode_alert(from_status(s))
            if a.raised:
                out.append(a)
        return out

    def starts(self) -> list[str]:
        return [m.decode_command(from_status(c)).reason.value for c in self.commands
                if c.name == 'start']

    def recorder_state(self) -> str:
        return self.status[-1].message if self.status else ''


def call(executor, client, what: str) -> Trigger.Response:
    assert client.wait_for_service(timeout_sec=10.0), what
    fut = client.call_async(Trigger.Request())
    assert spin_until(executor, fut.done, 10.0), what
    return fut.result()


def test_bridged_sensors_drive_officer_down_into_a_sealed_incident(ctx, executor, tmp_path):
    topics = bridged_topics()
    sim = [Parameter('use_sim_time', value=True)]
    bridge = Bridge(ctx, topics)
    fusion = TriggerFusionNode(context=ctx, parameter_overrides=sim + [
        Parameter('down_hold_s', value=3.0), Parameter('dismiss_s', value=0.0),
        Parameter('publish_period_s', value=0.5), Parameter('officer_id', value='officer-9')])
    params = {'evidence_dir': str(tmp_path / 'ev'), 'pre_event_s': 3.0, 'post_event_s': 1.0,
              'lookback_margin_s': 1.0, 'min_free_bytes': 0, 'device_id': 'unit-gz',
              'status_period_s': 0.2, **recorder_params(tmp_path)}
    recorder = RecorderNode(context=ctx, parameter_overrides=sim + [
        Parameter(k, value=v) for k, v in params.items()])
    camera = CameraNode(context=ctx, parameter_overrides=sim + [
        Parameter('source', value='topic'), Parameter('image_topic', value=topics[Image]),
        Parameter('image_transport', value='raw'), Parameter('width', value=W),
        Parameter('height', value=H), Parameter('fps', value=FPS), Parameter('gop', value=FPS),
        Parameter('raw_rate', value=0.0), Parameter('bitrate', value=300_000)])
    for n in (bridge, fusion, recorder, camera):
        executor.add_node(n)
    # As a bridge does, publish into a graph that is listening.
    assert spin_until(executor, lambda: bridge.pubs[Image].get_subscription_count() > 0
                      and bridge.pubs[Imu].get_subscription_count() > 0
                      and bridge.pubs[NavSatFix].get_subscription_count() > 0
                      and bridge.pubs[Clock].get_subscription_count() >= 3, 20.0)
    bridge.start()

    trial_s = bridge.rec.duration_s
    assert spin_until(executor, lambda: bridge.raised(), LEAD_S + trial_s + 30.0), \
        (bridge.imu_sent, bridge.starts(), bridge.recorder_state())
    (alert,) = bridge.raised()
    down_at = alert.stamp - (SIM_T0 + LEAD_S)      # sim seconds into the trial
    assert 3.0 <= down_at <= trial_s, down_at
    assert alert.officer_id == 'officer-9'
    assert alert.latitude == pytest.approx(LAT) and alert.longitude == pytest.approx(LON)
    assert spin_until(executor, lambda: 'officer_down' in bridge.starts(), 10.0), \
        bridge.starts()
    assert spin_until(executor, lambda: bridge.recorder_state() == 'RECORDING', 15.0), \
        bridge.recorder_state()
    start = m.decode_command(from_status(next(c for c in bridge.commands
                                              if c.name == 'start')))
    assert abs(start.trigger_time - (SIM_T0 + LEAD_S)) < LEAD_S + trial_s, start.trigger_time

    # The officer is fine: cancel the alert (a stop is refused while it is open), then stop.
    assert call(executor, bridge.cancel, 'cancel_alert').success
    assert spin_until(executor, lambda: m.decode_alert(
        from_status(bridge.alerts[-1])).state is m.AlertState.CANCELLED, 10.0)
    resp = call(executor, bridge.stop, 'stop_recording')
    assert resp.success, resp.message
    spool = tmp_path / 'ev' / 'spool'
    assert spin_until(executor, lambda: spool.is_dir() and any(spool.iterdir()), 30.0)
    (inc,) = list(spool.iterdir())
    man = json.loads((inc / 'manifest.json').read_text())
    assert 'officer_down' in [t['reason'] for t in man['triggers']], man['triggers']
    assert man['clock'] == 'sim' and man['encryption']['scheme'] == 'age-v1'
    assert man['video']['frame_count'] > 0, man['video']
    assert abs(man['start_time'] - SIM_T0) < 3600.0, man['start_time']
    # Decrypted with the agency's key, the video is the frames the bridge sent.
    from spoolutil import agency_for
    _, _, identity = agency_for(tmp_path)
    plain = decrypted_incident(inc, identity, tmp_path / 'plain')
    with av.open(str(plain['video.mp4'])) as c:
        frames = [f.to_ndarray(format='bgr24') for f in c.decode(video=0)]
    assert len(frames) == man['video']['frame_count'], (len(frames), man['video'])
    assert frames[0].shape == (H, W, 3)
    assert float(np.mean(frames[-1])) > 10.0          # a picture, not black
