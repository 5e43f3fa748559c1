"""recorder node: the 2-minute look-back and tamper-evident incidents.

Keeps the last ``pre_event_s`` of ``camera/h264`` (whole GOPs) and of the sensor topics in
RAM. A ``recorder/command`` start opens an incident reaching back to the keyframe at or
before ``trigger_time - pre_event_s``; later starts extend it; a stop begins the
``post_event_s`` post-roll, after which the incident is sealed (signed, hash-chained) and
moved into the spool for the uploader. On start-up, incidents a crash left unsealed are
sealed as ``recovered`` (encrypted: as found; plaintext: repaired into a copy), each on its
own; one that cannot be sealed is quarantined with its reason. The recorder never deletes
evidence (the uploader prunes): under disk pressure it reports ERROR and keeps recording.
Publishes ``recorder/status`` (~1 Hz and on every state change) and ``/diagnostics``.

Trust: the device key comes from ``key_dir`` (``bodycam provision``; never inside
``evidence_dir``), every evidence file is encrypted as written to the agency's age recipient
in ``agency_recipient_file`` (``encrypt: false`` writes plaintext, with a WARN at every start
and in /diagnostics), each seal goes into the signed ledger and the audit log. A ``stop`` is
refused from any source while ``holster/weapon_drawn`` is true or an officer-down alert on
``bodycam/alerts`` is raised (no DDS Security in the wheels' Fast DDS to stop a forger).

Time: the node clock (ROS time; sim time under ``use_sim_time``) times every decision and
record: trigger times in commands are the sender's ROS time, the look-back is cut on video
stamps, sensor records carry the ROS time of reception, the post-roll runs on it. Wall time
is only recorded beside it (``clock`` in the manifest says which: ``ros`` or ``sim``).
"""
from __future__ import annotations

import hashlib
import json
import socket
import sys
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Imu, NavSatFix
from std_msgs.msg import Bool

import bodycam_ros
from bodycam_ros.core import keys
from bodycam_ros.core.audit import AuditLog, audit_path
from bodycam_ros.core.encryption import AgeError, decode_recipient
from bodycam_ros.core.h264 import EncoderError, is_keyframe
from bodycam_ros.core.ledger import Ledger, ledger_path
from bodycam_ros.core.messages import ALERT_NAME, MessageError, decode_alert, decode_command
from bodycam_ros.core.signedlog import LogError
from bodycam_ros.core.ring import LookbackRing, SensorRecord, VideoPacket
from bodycam_ros.core.spool import (Command, EvidenceStore, Recorder, RecorderConfig,
                                    RecorderStatus, SpoolError, State)
from bodycam_ros.rosutil import (ERROR, LATCHED_QOS, OK, RELIABLE_QOS, SENSOR_QOS, VIDEO_QOS,
                                 WARN, Diagnostics, ParameterError, declare, run_node, status)
from bodycam_ros.wire import from_status

#: (topic, type, QoS, latched) recorded into the sidecar and the look-back.
SENSOR_TOPICS = (
    ('imu/data', Imu, SENSOR_QOS, False),
    ('gps/fix', NavSatFix, SENSOR_QOS, False),
    ('gps/vel', TwistStamped, SENSOR_QOS, False),
    ('holster/weapon_drawn', Bool, LATCHED_QOS, True),
    ('bodycam/triggers', DiagnosticArray, RELIABLE_QOS, False),
    ('bodycam/alerts', DiagnosticStatus, LATCHED_QOS, True),
    ('dispatch/destination', NavSatFix, LATCHED_QOS, True),
)
PLAINTEXT_WARNING = ('encrypt is false: evidence is written in PLAINTEXT; whoever takes the '
                     'card reads it')
#: No video for this long while the camera should be streaming: WARN.
VIDEO_STALE_S = 3.0


def ros_type_name(msg_type: type) -> str:
    """'sensor_msgs/msg/Imu' for the rclpy class (what rosbag2 stores)."""
    module = msg_type.__module__.split('.')
    return f'{module[0]}/msg/{msg_type.__name__}'


class RecorderNode(Node):
    def __init__(self, **kw) -> None:
        super().__init__('recorder', **kw)
        p = self._declare_all()
        self._p = p
        device_id = p['device_id'] or socket.gethostname()
        signer, key_event = self._open_key(p, device_id)
        recipient = self._recipient(p)
        try:
            self._store = EvidenceStore(Path(p['evidence_dir']),
                                        quota_bytes=p['max_evidence_bytes'])
            self._store.lock()
        except (OSError, SpoolError) as exc:
            raise ParameterError(f'parameter {self.get_name()}.evidence_dir='
                                 f'{p["evidence_dir"]!r} is unusable: {exc}') from exc
        ledger = Ledger(ledger_path(self._store.root), signer, device_id)
        audit = AuditLog(audit_path(self._store.root), signer, device_id)
        self._audit_start(audit, p, signer, key_event, recipient)
        self._ring = LookbackRing(
            keep_s=p['pre_event_s'] + p['lookback_margin_s'], max_bytes=p['max_buffer_bytes'],
            latched_topics=[self.resolve_topic_name(t) for t, _, _, latched in SENSOR_TOPICS
                            if latched])
        self._recorder = Recorder(self._store, self._ring, signer, RecorderConfig(
            pre_event_s=p['pre_event_s'], post_event_s=p['post_event_s'],
            fragment_s=p['fragment_s'], min_free_bytes=p['min_free_bytes'],
            device_id=device_id, officer_id=p['officer_id'],
            software_version=bodycam_ros.__version__,
            clock='sim' if self.get_parameter('use_sim_time').value else 'ros',
            replay_bag=p['replay_bag'], replay_bag_sha256=p['replay_bag_sha256']),
            clock=self._now,
            recipients=[decode_recipient(recipient)] if recipient else None,
            recipient=recipient or '', ledger=ledger, audit=audit)
        self._alerts: dict[str, bool] = {}
        self.video_packets = self.bad_packets = self.bad_commands = 0
        self.sensor_messages = 0
        self._last_video = None
        self._last_state = State.IDLE

        self._status_pub = self.create_publisher(DiagnosticStatus, 'recorder/status', SENSOR_QOS)
        self._diag = Diagnostics(self, hardware_id=str(self._store.root.resolve()))
        self.create_subscription(CompressedImage, 'camera/h264', self._on_video, VIDEO_QOS)
        for topic, msg_type, qos, _ in SENSOR_TOPICS:
            self.create_subscription(msg_type, topic, self._sensor_callback(topic, msg_type),
                                     qos, raw=True)
        self._command_topic = self.resolve_topic_name('recorder/command')
        self.create_subscription(DiagnosticStatus, 'recorder/command', self._on_command,
                                 RELIABLE_QOS)
        # The stop guard's inputs (decoded; the raw copies above go into the sidecar).
        self.create_subscription(Bool, 'holster/weapon_drawn', self._on_weapon, LATCHED_QOS)
        self.create_subscription(DiagnosticStatus, 'bodycam/alerts', self._on_alert,
                                 LATCHED_QOS)
        self.create_timer(0.1, self._tick)
        self.create_timer(p['status_period_s'], self._publish_status)
        self._recorder.start()
        if key_event == 'key_created':
            self.get_logger().warning(f'provision_on_first_run: created the device key in '
                                      f'{Path(p["key_dir"]).resolve()}; register it with the '
                                      'agency (bodycam agency register)')
        if not recipient:
            self.get_logger().warning(PLAINTEXT_WARNING)
        self.get_logger().info(
            f'evidence in {self._store.root.resolve()}, look-back {p["pre_event_s"]:.0f} s '
            f'(<= {p["max_buffer_bytes"] / 1e6:.0f} MB), post-roll {p["post_event_s"]:.0f} s, '
            f'device key {signer.key_id[:16]} ({type(signer).__name__}), encryption '
            + (f'age to {recipient[:16]}...' if recipient else 'NONE'))

    # -- trust -------------------------------------------------------------------------------
    def _open_key(self, p: dict, device_id: str) -> tuple[keys.Signer, str]:
        """The device signer from ``key_dir`` (created there only with provision_on_first_run)."""
        name = self.get_name()
        key_dir, evidence = Path(p['key_dir']), Path(p['evidence_dir'])
        try:
            keys.check_outside(key_dir, evidence)
        except keys.KeyStoreError as exc:
            raise ParameterError(f'parameter {name}.key_dir={p["key_dir"]!r}: {exc}') from exc
        event = 'key_loaded'
        if not (key_dir / keys.DEVICE_INFO).exists():
            if not p['provision_on_first_run']:
                raise ParameterError(
                    f'parameter {name}.key_dir={p["key_dir"]!r} holds no device key: run '
                    f'`bodycam provision --key-dir {p["key_dir"]}` (or set '
                    f'provision_on_first_run:=true)')
            try:
                keys.FileSigner.create(key_dir, device_id, keys.passphrase_from_env(), evidence)
            except (keys.KeyStoreError, OSError) as exc:
                raise ParameterError(f'parameter {name}.key_dir={p["key_dir"]!r}: cannot '
                                     f'provision: {exc}') from exc
            event = 'key_created'
        try:
            return keys.open_signer(key_dir), event
        except (keys.KeyStoreError, OSError) as exc:
            raise ParameterError(f'parameter {name}.key_dir={p["key_dir"]!r}: {exc}') from exc

    def _recipient(self, p: dict) -> str | None:
        """The agency's ``age1...`` recipient, or None when encrypt is false."""
        name = self.get_name()
        if not p['encrypt']:
            return None
        path = p['agency_recipient_file']
        if not path:
            raise ParameterError(f'parameter {name}.agency_recipient_file is empty: evidence '
                                 'is encrypted to the agency (a file holding its age1... '
                                 'recipient), or set encrypt:=false for plaintext')
        try:
            text = Path(path).read_text().strip()
            decode_recipient(text)
        except (OSError, UnicodeDecodeError, AgeError) as exc:
            raise ParameterError(f'parameter {name}.agency_recipient_file={path!r}: not a '
                                 f'readable age recipient file: {exc}') from exc
        return text

    def _audit_start(self, audit: AuditLog, p: dict, signer: keys.Signer, key_event: str,
                     recipient: str | None) -> None:
        """Configuration and key events, once per start."""
        now = self._now()
        params = {k: v for k, v in sorted(p.items())
                  if not any(w in k for w in ('secret', 'password', 'passphrase', 'token'))}
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        try:
            audit.append(key_event, now, key_fingerprint=signer.key_id,
                         backend=type(signer).__name__, key_dir=str(Path(p['key_dir']).resolve()))
            audit.append('config_loaded', now, node=self.get_name(), parameters=params,
                         config_sha256=digest,
                         encryption='age-v1' if recipient else 'none',
                         recipient_fingerprint=hashlib.sha256(
                             recipient.encode()).hexdigest() if recipient else None)
        except (LogError, OSError) as exc:
            raise ParameterError(f'parameter {self.get_name()}.evidence_dir='
                                 f'{p["evidence_dir"]!r}: audit log unusable: {exc}') from exc

    # -- parameters --------------------------------------------------------------------------
    def _declare_all(self) -> dict:
        def d(name, default, description, **kw):
            return declare(self, name, default, description, **kw)

        p = {
            'evidence_dir': d('evidence_dir', 'var/evidence', 'where recording/, spool/, the '
                              'ledger and the audit log live (relative to the working '
                              'directory)'),
            'key_dir': d('key_dir', 'var/keys', 'the device signing key (bodycam provision); '
                         'never inside evidence_dir'),
            'provision_on_first_run': d('provision_on_first_run', False, 'create a file key '
                                        'in key_dir when it holds none (demo/sim units)'),
            'encrypt': d('encrypt', True, 'encrypt every evidence file to the agency (false: '
                         'plaintext, WARN at every start)'),
            'agency_recipient_file': d('agency_recipient_file', '', 'file holding the '
                                       'agency\'s age recipient (age1...); the unit holds '
                                       'only this public key'),
            'device_id': d('device_id', '', 'this unit\'s id in manifests ("" = hostname)'),
            'officer_id': d('officer_id', 'unassigned', 'officer wearing the unit'),
            'pre_event_s': d('pre_event_s', 120.0, 'look-back kept before a trigger [s]',
                             min_value=0.0, max_value=600.0),
            'post_event_s': d('post_event_s', 30.0, 'recording continues this long after a '
                              'stop [s]', min_value=0.0, max_value=600.0),
            'lookback_margin_s': d('lookback_margin_s', 5.0, 'extra look-back for trigger '
                                   'latency (the trigger time precedes the command) [s]',
                                   min_value=0.0, max_value=60.0),
            # 120 s at 8 Mbit/s is 120 MB; 160 MB leaves room for the margin and a GOP.
            'max_buffer_bytes': d('max_buffer_bytes', 160_000_000, 'RAM bound of the video '
                                  'look-back [bytes]', min_value=1_000_000,
                                  max_value=8_000_000_000),
            'min_free_bytes': d('min_free_bytes', 500_000_000, 'free-space floor: below it '
                                'the recorder reports ERROR (disk low) and keeps recording; '
                                'it deletes nothing [bytes]',
                                min_value=0, max_value=1 << 50),
            'max_evidence_bytes': d('max_evidence_bytes', 0, 'space evidence may use at most '
                                    '(0 = the whole disk) [bytes]', min_value=0,
                                    max_value=1 << 50),
            'fragment_s': d('fragment_s', 1.0, 'longest MP4 fragment = most video a crash '
                            'can lose [s]', min_value=0.1, max_value=1.0),
            'replay_bag': d('replay_bag', '', 'the rosbag2 this run replays (bodycam run '
                            '--replay sets it): marks every manifest as a replay'),
            'replay_bag_sha256': d('replay_bag_sha256', '', "that bag's SHA-256"),
            'status_period_s': d('status_period_s', 1.0, 'recorder/status period [s]',
                                 min_value=0.05, max_value=60.0),
        }
        return p

    # -- callbacks ---------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    def _on_video(self, msg: CompressedImage) -> None:
        data = msg.data.tobytes() if hasattr(msg.data, 'tobytes') else bytes(msg.data)
        try:
            key = is_keyframe(data)
        except EncoderError as exc:
            self.bad_packets += 1
            self.get_logger().warning(f'camera/h264: skipped a bad packet ({exc}); '
                                      f'{self.bad_packets} so far', throttle_duration_sec=5.0)
            return
        self.video_packets += 1
        self._last_video = self._now()
        t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self._recorder.on_video(VideoPacket(t, data, key))

    def _sensor_callback(self, topic: str, msg_type: type):
        name, type_name = self.resolve_topic_name(topic), ros_type_name(msg_type)
        return lambda data: self._on_sensor(name, type_name, data)

    def _on_sensor(self, topic: str, msgtype: str, data: bytes) -> None:
        self.sensor_messages += 1
        self._recorder.on_sensor(SensorRecord(self._now(), topic, msgtype, bytes(data)))

    def _on_command(self, msg: DiagnosticStatus) -> None:
        now = self._now()
        # The command itself is evidence: it goes into the sidecar too.
        self._recorder.on_sensor(SensorRecord(now, self._command_topic,
                                              'diagnostic_msgs/msg/DiagnosticStatus',
                                              serialize_message(msg)))
        try:
            cmd = decode_command(from_status(msg))
        except MessageError as exc:
            self.bad_commands += 1
            self.get_logger().warning(f'recorder/command ignored: {exc}',
                                      throttle_duration_sec=2.0)
            return
        result = self._recorder.on_command(Command(cmd.kind.value, cmd.reason.value,
                                                   cmd.trigger_time, cmd.command_id, now))
        if result.startswith('REFUSED'):
            self.get_logger().warning(result)
        else:
            self.get_logger().info(result)
        self._publish_status()

    def _on_weapon(self, msg: Bool) -> None:
        self._recorder.set_guard(weapon_drawn=bool(msg.data))

    def _on_alert(self, msg: DiagnosticStatus) -> None:
        try:
            alert = decode_alert(from_status(msg))
        except MessageError as exc:
            self.get_logger().warning(f'bodycam/alerts ignored: {exc}',
                                      throttle_duration_sec=5.0)
            return
        if alert.name != ALERT_NAME:
            return
        self._alerts[alert.alert_id] = alert.raised
        self._recorder.set_guard(alert_open=any(self._alerts.values()))

    def _tick(self) -> None:
        self._recorder.tick()
        self._log_events()
        st = self._recorder.status()
        if st.state is not self._last_state:
            self._last_state = st.state
            self._publish_status(st)

    # -- status ------------------------------------------------------------------------------
    def _publish_status(self, st: RecorderStatus | None = None) -> None:
        st = st or self._recorder.status()
        self._last_state = st.state
        level, problem = self._health(st)
        if not self._p['encrypt'] and level <= WARN:     # said whatever else is wrong
            level, problem = WARN, '; '.join(filter(None, (PLAINTEXT_WARNING, problem)))
        video_age = (self._now() - self._last_video) if self._last_video else -1.0
        values = dict(
            state=st.state.value, buffered_s=st.buffered_s, buffered_bytes=st.buffered_bytes,
            incident_id=st.incident_id, free_bytes=st.free_bytes,
            triggers=','.join(st.triggers), frames=st.frames, queue_length=st.queue_length,
            pending_bytes=st.pending_bytes, sealed_count=st.sealed,
            recovered_count=st.recovered, quarantined_count=st.quarantined,
            last_sealed=st.last_sealed,
            pre_event_s=self._p['pre_event_s'], video_age_s=video_age,
            fsync_ms=st.sync_ms_mean, disk_error=st.disk_error,
            seal_failures=st.seal_failures, writer_errors=st.writer_errors, problem=problem,
            refused_stops=st.refused_stops, log_errors=st.log_errors,
            lost_frames=st.lost_frames, closing=st.closing,
            encryption='age-v1' if self._p['encrypt'] else 'none',
            evidence_dir=str(self._store.root.resolve()))
        msg = status(f'{self.get_namespace().rstrip("/")}/recorder'.lstrip('/'), level,
                     st.state.value, **values)
        self._status_pub.publish(msg)
        self._diag.set(level, f'{st.state.value}' + (f': {problem}' if problem else ''),
                       **{k: v for k, v in values.items() if k != 'evidence_dir'})

    def _log_events(self) -> None:
        """The recorder's lines at their level: a full disk is never INFO."""
        log = self.get_logger()
        for line in self._recorder.events():
            if line.startswith('ERROR '):
                log.error(line[6:])
            elif line.startswith('WARN ') or 'failed' in line:
                log.warning(line.removeprefix('WARN '))
            else:
                log.info(line)

    def _health(self, st: RecorderStatus) -> tuple[int, str]:
        if st.lost_frames:
            return ERROR, (f'{st.lost_frames} video frame(s) dropped: disk full with the '
                           'memory cap reached')
        if st.closing:
            return ERROR, (f'disk full: {st.closing} incident(s) wait to be closed, '
                           f'{st.pending_bytes} bytes held in memory')
        if st.disk_error:
            return ERROR, f'disk error: {st.disk_error}'
        if st.disk_low:
            return ERROR, (f'disk low: {st.free_bytes} bytes free < min_free_bytes '
                           f'{self._p["min_free_bytes"]}; still recording, deleting nothing')
        if st.quarantined_now:
            return ERROR, (f'{st.quarantined_now} incident(s) could not be sealed and are in '
                           f'{self._store.quarantine}; see quarantine.json in each')
        if st.writer_errors:
            return ERROR, f'{st.writer_errors} writer error(s); see the log'
        if self._last_video is None or self._now() - self._last_video > VIDEO_STALE_S:
            return WARN, 'no video on camera/h264'
        if st.buffered_s + 1.0 < self._p['pre_event_s'] and \
                self._ring.stats().evicted_for_bytes:
            return WARN, 'max_buffer_bytes limits the look-back below pre_event_s'
        if st.log_errors:
            return WARN, f'{st.log_errors} ledger/audit append(s) failed; see the log'
        return OK, ''

    def close(self) -> None:
        """Seal what is being recorded (shutdown) before the process exits."""
        self._recorder.close()
        self._log_events()
        self._store.unlock()


def main(args=None) -> int:
    return run_node(lambda: RecorderNode(), args)


if __name__ == '__main__':
    sys.exit(main())
