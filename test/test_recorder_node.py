"""The recorder node over real DDS: look-back clips from scripted triggers, kill -9 recovery,
sensors-only incidents, status for the live view, and bad parameters. Evidence is encrypted
to a test agency: each check runs on the files the agency decrypts."""
from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Imu, NavSatFix, NavSatStatus
from std_msgs.msg import Bool

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.encryption import CHUNK
from bodycam_ros.core.h264 import H264Encoder
from bodycam_ros.core.mp4 import probe as mp4_probe
from bodycam_ros.core.mp4 import repair
from bodycam_ros.core.sidecar import read_mcap
from bodycam_ros.drivers.camera import TestPatternSource
from bodycam_ros.nodes.recorder_node import RecorderNode
from bodycam_ros.rosutil import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS, VIDEO_QOS
from conftest import spin_until
from spoolutil import agency_for, decrypt_file, decrypted_incident, recorder_params
from spoolutil import recorder_ros_args
from test_mp4 import ffprobe_frames, frame_counters

W, H, FPS, GOP = 320, 240, 30, 30


def command(name: str, reason: str, t: float) -> DiagnosticStatus:
    return DiagnosticStatus(name=name, message=f'{name} ({reason})', values=[
        KeyValue(key='reason', value=reason), KeyValue(key='trigger_time', value=repr(t)),
        KeyValue(key='command_id', value=str(uuid.uuid4()))])


def stamp(msg, t: float):
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int(round(t % 1 * 1e9)) % 10**9
    return msg


def values(msg: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.values}


class Probe(Node):
    """Plays camera, sensors and trigger fusion for the recorder; watches its status."""

    def __init__(self, **kw) -> None:
        super().__init__('probe', **kw)
        self.video = self.create_publisher(CompressedImage, 'camera/h264', VIDEO_QOS)
        self.imu = self.create_publisher(Imu, 'imu/data', SENSOR_QOS)
        self.fix = self.create_publisher(NavSatFix, 'gps/fix', SENSOR_QOS)
        self.holster = self.create_publisher(Bool, 'holster/weapon_drawn', LATCHED_QOS)
        self.triggers = self.create_publisher(DiagnosticArray, 'bodycam/triggers', RELIABLE_QOS)
        self.cmd = self.create_publisher(DiagnosticStatus, 'recorder/command', RELIABLE_QOS)
        self.status: list[DiagnosticStatus] = []
        self.create_subscription(DiagnosticStatus, 'recorder/status', self.status.append,
                                 SENSOR_QOS)
        self.seen_video: list[bytes] = []

    def watch_camera(self) -> None:
        """Keep what a real camera node publishes, to compare the clip with."""
        self.create_subscription(CompressedImage, 'camera/h264',
                                 lambda m: self.seen_video.append(m.data.tobytes()), VIDEO_QOS)

    def states(self) -> list[str]:
        out: list[str] = []
        for s in self.status:
            if not out or out[-1] != s.message:
                out.append(s.message)
        return out


def decoded_counters(units: list[bytes]) -> list[int]:
    """Frame counters of an Annex B stream, decoded from its first keyframe."""
    import av
    from bodycam_ros.core.h264 import is_keyframe
    from bodycam_ros.drivers.camera import decode_frame_counter
    start = next(i for i, u in enumerate(units) if is_keyframe(u))
    dec = av.CodecContext.create('h264', 'r')
    frames = [f for u in units[start:] for f in dec.decode(av.Packet(u))] + dec.decode(None)
    return [decode_frame_counter(f.to_ndarray(format='bgr24')) for f in frames]


def make_recorder(ctx, tmp_path: Path, **params) -> RecorderNode:
    defaults = {'evidence_dir': str(tmp_path / 'ev'), 'pre_event_s': 4.0, 'post_event_s': 1.0,
                'lookback_margin_s': 1.0, 'min_free_bytes': 0, 'device_id': 'unit-test',
                'officer_id': 'officer-7', 'status_period_s': 0.2, **recorder_params(tmp_path)}
    defaults.update(params)
    return RecorderNode(context=ctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in defaults.items()])


def sealed(root: Path) -> list[Path]:
    spool = root / 'spool'
    return sorted(p for p in spool.iterdir() if p.is_dir()) if spool.exists() else []


def test_scripted_trigger_gives_a_continuous_clip_from_a_keyframe_before_the_look_back(
        ctx, executor, tmp_path: Path):
    rec = make_recorder(ctx, tmp_path)
    probe = Probe(context=ctx)
    executor.add_node(rec)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.video.get_subscription_count() > 0 and
                      probe.cmd.get_subscription_count() > 0 and probe.status)
    probe.holster.publish(Bool(data=True))               # latched: older than any look-back
    src, enc = TestPatternSource(W, H, FPS), H264Encoder(W, H, FPS, 300_000, GOP)
    # Capture times run 12 s behind the wall clock and catch up (published faster than
    # real time, each frame acknowledged before the next: a loss-free, fast camera).
    t0 = time.time() - 12.0
    trigger_frame, extend_frame, stop_frame, n = 245, 270, 300, 330
    trigger_t = t0 + trigger_frame / FPS
    for i in range(n):
        t = t0 + i / FPS
        au = enc.encode(src.render(i, t))
        probe.video.publish(stamp(CompressedImage(format='h264', data=au.data), t))
        if i % 3 == 0:
            fix = stamp(NavSatFix(latitude=38.58 + i * 1e-6, longitude=-121.49, altitude=9.0), t)
            fix.status.status = NavSatStatus.STATUS_FIX
            probe.fix.publish(fix)
            probe.imu.publish(stamp(Imu(), t))
        if i == trigger_frame:
            probe.cmd.publish(command('start', 'manual', trigger_t))
            probe.triggers.publish(DiagnosticArray(status=[DiagnosticStatus(
                name='trigger/manual', level=DiagnosticStatus.WARN, message='active')]))
        if i == extend_frame:
            probe.cmd.publish(command('start', 'fight', t))
        if i == stop_frame - 10:
            probe.holster.publish(Bool(data=False))      # a drawn weapon refuses any stop
        if i == stop_frame:
            probe.cmd.publish(command('stop', 'manual', t))
        assert spin_until(executor, lambda: rec.video_packets == i + 1, 5.0), f'frame {i}'
    assert spin_until(executor, lambda: sealed(tmp_path / 'ev'), 20.0), probe.states()
    assert spin_until(executor, lambda: probe.states()[-1:] == ['IDLE'])
    assert probe.states()[-4:] == ['IDLE', 'RECORDING', 'POST_ROLL', 'IDLE']
    during = [values(s) for s in probe.status if s.message == 'RECORDING']
    assert during[-1]['incident_id'] == sealed(tmp_path / 'ev')[0].name
    assert during[-1]['triggers'] == 'manual,fight'
    assert float(during[0]['buffered_s']) >= 4.0 and int(during[0]['buffered_bytes']) > 0

    (clip,) = sealed(tmp_path / 'ev')
    m = json.loads((clip / 'manifest.json').read_text())
    assert set(m['files']) == {'video.mp4.age', 'sensors.mcap.age'}
    plain = decrypted_incident(clip, agency_for(tmp_path)[2], tmp_path / 'plain')
    assert [t['reason'] for t in m['triggers']] == ['manual', 'fight']
    assert m['triggers'][0]['time'] == pytest.approx(trigger_t)
    assert m['device_id'] == 'unit-test' and m['officer_id'] == 'officer-7'
    # Starts on the last keyframe at or before trigger - pre_event_s (frame 120 = t0 + 4 s).
    assert m['video']['first_stamp'] <= trigger_t - 4.0
    assert m['video']['first_stamp'] == pytest.approx(t0 + 120 / FPS, abs=1e-6)
    counters = frame_counters(plain['video.mp4'])
    assert counters[0] == 120
    assert counters == list(range(120, 120 + len(counters))), 'a frame missing or repeated'
    assert counters[-1] >= stop_frame and m['frame_count'] == len(counters)
    assert ffprobe_frames(plain['video.mp4']) == len(counters)
    # The sidecar: rosbag2 MCAP, read back with rosbags.
    topics = {}
    for topic, msgtype, ts, msg in read_mcap(plain['sensors.mcap']):
        topics.setdefault(topic, []).append((msgtype, ts, msg))
    assert set(topics) >= {'/imu/data', '/gps/fix', '/holster/weapon_drawn',
                           '/bodycam/triggers', '/recorder/command'}
    assert topics['/holster/weapon_drawn'][0][2].data is True
    assert [v[2].name for v in topics['/recorder/command']] == ['start', 'start', 'stop']
    assert topics['/gps/fix'][0][0] == 'sensor_msgs/msg/NavSatFix'
    assert m['gps_track']['fixes'] == len(topics['/gps/fix'])
    assert ev.verify_tree(tmp_path / 'ev').ok


def test_start_without_video_still_records_the_sensors(ctx, executor, tmp_path: Path):
    rec = make_recorder(ctx, tmp_path, post_event_s=0.0)
    probe = Probe(context=ctx)
    executor.add_node(rec)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.cmd.get_subscription_count() > 0 and
                      probe.imu.get_subscription_count() > 0)
    probe.cmd.publish(command('start', 'officer_down', time.time()))
    assert spin_until(executor, lambda: probe.states()[-1:] == ['RECORDING'])
    assert values(probe.status[-1])['problem'] == 'no video on camera/h264'
    assert probe.status[-1].level == DiagnosticStatus.WARN
    for _ in range(20):
        probe.imu.publish(stamp(Imu(), time.time()))
        executor.spin_once(timeout_sec=0.01)
    probe.cmd.publish(command('stop', 'officer_down', time.time()))
    assert spin_until(executor, lambda: sealed(tmp_path / 'ev'), 10.0)
    (clip,) = sealed(tmp_path / 'ev')
    m = json.loads((clip / 'manifest.json').read_text())
    assert m['video'] == {'present': False, 'frame_count': 0} and 'video.mp4.age' not in \
        m['files']
    assert m['sensors']['messages']['/imu/data'] > 0
    plain = decrypted_incident(clip, agency_for(tmp_path)[2], tmp_path / 'plain')
    assert sum(t == '/imu/data' for t, *_ in read_mcap(plain['sensors.mcap'])) == \
        m['sensors']['messages']['/imu/data']
    assert ev.verify_tree(tmp_path / 'ev').ok


def test_bad_parameter_exits_2_naming_it(start_process, tmp_path: Path):
    p = start_process('bodycam_ros.nodes.recorder_node', '--ros-args', '-p', 'pre_event_s:=900.0',
                      '-p', f'evidence_dir:={tmp_path}')
    assert p.proc.wait(30) == 2
    assert 'pre_event_s' in p.output() and '600' in p.output()


def test_a_second_recorder_on_the_same_evidence_is_refused(ctx, executor, start_process,
                                                          tmp_path: Path):
    executor.add_node(make_recorder(ctx, tmp_path))
    p = start_process('bodycam_ros.nodes.recorder_node', '--ros-args', '-p',
                      f'evidence_dir:={tmp_path / "ev"}', *recorder_ros_args(tmp_path))
    assert p.proc.wait(30) == 2
    assert 'in use by another recorder' in p.output()


def test_kill_9_mid_incident_then_restart_recovers_a_playable_clip(
        ctx, executor, start_process, tmp_path: Path):
    evidence = tmp_path / 'ev'
    rec_args = ('--ros-args', '-p', f'evidence_dir:={evidence}', '-p', 'pre_event_s:=2.0',
                '-p', 'min_free_bytes:=0', '-p', 'status_period_s:=0.2',
                *recorder_ros_args(tmp_path))
    start_process('bodycam_ros.nodes.camera_node', '--ros-args', '-p', f'width:={W}', '-p',
                  f'height:={H}', '-p', 'fps:=30', '-p', 'gop:=15', '-p', 'raw_rate:=0.0',
                  '-p', 'bitrate:=300000')
    recorder = start_process('bodycam_ros.nodes.recorder_node', *rec_args)
    probe = Probe(context=ctx)
    probe.watch_camera()
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.status and
                      float(values(probe.status[-1])['buffered_s']) >= 1.0 and
                      probe.cmd.get_subscription_count() > 0, 30.0), recorder.output()
    # The probe must have seen the whole look-back (2 s) the clip will reach back into.
    assert spin_until(executor, lambda: len(probe.seen_video) >= 3 * 30, 10.0)
    probe.cmd.publish(command('start', 'manual', time.time()))
    assert spin_until(executor, lambda: probe.states()[-1:] == ['RECORDING'], 10.0)
    incident = values(probe.status[-1])['incident_id']
    video = evidence / 'recording' / incident / 'video.mp4.age'
    assert spin_until(executor, lambda: video.exists() and video.stat().st_size > 50_000, 20.0)
    spin_until(executor, lambda: False, 1.5)          # a few more fragments, live ones
    recorder.proc.send_signal(signal.SIGKILL)
    killed_at = time.time()
    recorder.proc.wait(10)
    assert not (evidence / 'spool' / incident).exists()

    restarted = start_process('bodycam_ros.nodes.recorder_node', *rec_args)
    assert spin_until(executor, lambda: (evidence / 'spool' / incident).exists(), 30.0), \
        restarted.output()
    clip = evidence / 'spool' / incident
    m = json.loads((clip / 'manifest.json').read_text())
    assert m['recovered'] and m['end_reason'] == 'recovered'
    # The unit cannot decrypt: the clip is sealed as found, and the agency repairs it.
    entry = m['files']['video.mp4.age']
    assert entry['complete'] is False and entry['plaintext'] is None and entry['chunks'] > 0
    res = decrypt_file(clip / 'video.mp4.age', agency_for(tmp_path)[2], tmp_path / 'torn.mp4')
    assert not res.complete and res.chunks == entry['chunks']
    assert repair(tmp_path / 'torn.mp4', tmp_path / 'video.mp4').playable
    counters = frame_counters(tmp_path / 'video.mp4')
    # Exactly the frames the camera published (the camera itself may skip a slot when this
    # machine is busy; the recorder must not): a contiguous run of the camera's stream.
    published = decoded_counters(probe.seen_video)
    first = published.index(counters[0])
    assert counters == published[first:first + len(counters)]
    assert ffprobe_frames(tmp_path / 'video.mp4') == len(counters)
    # Lost: at most the fragment being written (1 s) plus the unfinished 64 KiB age chunk,
    # which only close() may write short (0.12 s of 4.2 Mbit/s video; at this test's
    # 300 kbit/s it is 1.75 s).
    info = mp4_probe(tmp_path / 'video.mp4')
    last_t = m['video']['first_stamp'] + info.duration_s
    chunk_s = CHUNK / ((tmp_path / 'video.mp4').stat().st_size / info.duration_s)
    assert killed_at - last_t <= 1.0 + chunk_s, (killed_at, last_t, chunk_s, m['video'])
    assert m['video']['last_stamp'] >= last_t - 1.0
    assert m['triggers'][0]['reason'] == 'manual'
    report = ev.verify_tree(evidence)
    assert report.ok, report.as_dict()
    assert 'recovered' in restarted.output()
    assert restarted.stop() == 0


def test_ctrl_c_mid_incident_seals_it_cleanly(ctx, executor, start_process, tmp_path: Path):
    evidence = tmp_path / 'ev'
    recorder = start_process('bodycam_ros.nodes.recorder_node', '--ros-args', '-p',
                             f'evidence_dir:={evidence}', '-p', 'min_free_bytes:=0', '-p',
                             'status_period_s:=0.2', *recorder_ros_args(tmp_path))
    probe = Probe(context=ctx)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.cmd.get_subscription_count() > 0 and
                      probe.status, 30.0), recorder.output()
    assert int(values(probe.status[-1])['free_bytes']) > 0
    probe.cmd.publish(command('start', 'foot_pursuit', time.time()))
    assert spin_until(executor, lambda: probe.states()[-1:] == ['RECORDING'], 10.0)
    incident = values(probe.status[-1])['incident_id']
    assert recorder.stop(signal.SIGINT) == 0
    m = json.loads((evidence / 'spool' / incident / 'manifest.json').read_text())
    assert m['end_reason'] == 'shutdown' and not m['recovered']
    assert not any((evidence / 'recording').iterdir())
    assert ev.verify_tree(evidence).ok
