"""live_view: the administration page and live stream of this unit, token-protected.

Subscribes to ``camera/h264`` (remuxed to fragmented MP4 for the browser, never re-encoded),
``camera/image_raw`` (MJPEG fallback: subscribed and encoded only while someone watches it),
and the unit's state: ``bodycam/triggers``, ``bodycam/alerts``, ``bodycam/peer_alert``,
``recorder/status``, ``gps/fix``. Serves HTTP(S) on ``bind:port`` from its own threads; see
:mod:`bodycam_ros.core.live`.

Time: video and position times shown are the messages' stamps (ROS time; sim time on a sim
graph); ``time.monotonic`` only limits rates (MJPEG, fps); access tokens and the page's
``time`` are wall clock (they talk to browsers, which live on it).
"""
from __future__ import annotations

import errno
import math
import socket
import sys
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, NavSatFix, NavSatStatus

from bodycam_ros.core.live import (Alert, LiveError, LiveServer, LiveState, LiveStream, Position,
                                   RecorderState, TriggerState)
from bodycam_ros.core.live.state import LEVELS
from bodycam_ros.core.messages import MessageError, decode_alert, decode_recorder, decode_trigger
from bodycam_ros.core.tokens import TokenAuth, TokenError, live_view_url, load_token
from bodycam_ros.rosutil import (ERROR, LATCHED_QOS, OK, RELIABLE_QOS, SENSOR_QOS, VIDEO_QOS,
                                 WARN, Diagnostics, ParameterError, declare, run_node)
from bodycam_ros.wire import from_status

WEB_DIR = Path(__file__).resolve().parents[1] / 'web'
#: Listen errors worth retrying: the port is taken, or the address is not up yet.
RETRY_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
#: The signed live view URL logged at start is valid this long (as ``bodycam run`` prints).
URL_TTL_S = 86400.0


def _float(v: str | None) -> float | None:
    try:
        f = float(v) if v not in (None, '') else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) else None


def alert_from_status(st: DiagnosticStatus, peer: bool = False) -> Alert:
    """A ``bodycam/alerts``-style DiagnosticStatus as the page's :class:`Alert`.

    Raises:
        MessageError: not an alert (core.messages.decode_alert says which field).
    """
    a = decode_alert(from_status(st))
    return Alert(alert_id=a.alert_id, state=a.state.value, officer_id=a.officer_id,
                 unit_id=a.unit_id, latitude=a.latitude, longitude=a.longitude, stamp=a.stamp,
                 incident_id=a.incident_id, peer=peer, distance_m=_float(a.get('distance_m')))


class LiveViewNode(Node):
    def __init__(self, **kw) -> None:
        super().__init__('live_view', **kw)
        bind = declare(self, 'bind', '127.0.0.1',
                       'address to listen on (127.0.0.1 = this machine only; 0.0.0.0 = all)')
        port = declare(self, 'port', 8080, 'TCP port (0 = any free port)',
                       min_value=0, max_value=65535)
        tls_cert = declare(self, 'tls_cert', '', 'PEM certificate file; with tls_key: HTTPS')
        tls_key = declare(self, 'tls_key', '', 'PEM private key file for tls_cert')
        token_file = declare(self, 'token_file', '',
                             'file holding the access token (else $BODYCAM_LIVE_TOKEN, else '
                             '<ROS_HOME>/bodycam/live_token, created if missing)')
        max_viewers = declare(self, 'max_viewers', 16, 'concurrent video viewers',
                              min_value=1, max_value=256)
        max_queue_s = declare(self, 'max_queue_s', 2.0,
                              'video a viewer may fall behind before it skips to a keyframe [s]',
                              min_value=0.2, max_value=30.0)
        self._mjpeg_rate = declare(self, 'mjpeg_rate', 5.0,
                                   'max MJPEG frames per second (fallback stream)',
                                   min_value=0.1, max_value=30.0)
        self._jpeg_quality = declare(self, 'jpeg_quality', 75, 'MJPEG JPEG quality',
                                     min_value=10, max_value=100)
        session_ttl_s = declare(self, 'session_ttl_s', 43200.0,
                                'how long a page session cookie stays valid [s]',
                                min_value=60.0, max_value=7 * 86400.0)
        unit = declare(self, 'unit_id', '',
                       "this unit's id shown on the page (default: namespace)")
        retry_s = declare(self, 'retry_s', 5.0,
                          'wait before trying again when the port is in use [s]',
                          min_value=0.5, max_value=300.0)
        self._evidence_dir = Path(declare(
            self, 'evidence_dir', 'var/evidence',
            "the recorder's evidence directory: live view sessions go into its audit log"))
        self._key_dir = declare(self, 'key_dir', '',
                                "the recorder's device key directory (signs the audit log); "
                                "'' = sessions are not audited (a WARN says so)")
        self._device_id = declare(self, 'device_id', '',
                                  "this unit as registered with the agency; '' = host name")
        if bool(tls_cert) != bool(tls_key):
            raise ParameterError('parameters live_view.tls_cert and live_view.tls_key must be '
                                 'set together (both PEM files) or both empty')
        try:
            token = load_token(token_file)
            auth = TokenAuth(token)
        except TokenError as exc:
            raise ParameterError(f'parameter live_view.token_file: {exc}') from exc

        self.state = LiveState(unit=unit or self.get_namespace().strip('/'))
        self.stream = LiveStream(max_queue_s=max_queue_s, max_viewers=max_viewers)
        self._token, self._bind, self._tls = token, bind, bool(tls_cert)
        self._make_server = lambda: LiveServer(
            self.stream, self.state, auth, WEB_DIR, bind=bind, port=port, tls_cert=tls_cert,
            tls_key=tls_key, log=self.get_logger().debug, session_ttl_s=session_ttl_s,
            on_session=self._audit)
        self._audit_log = None
        self._audit_tried = -1e9
        self.server: LiveServer | None = None
        self.port = port
        self.base_url = f'{"https" if tls_cert else "http"}://{bind}:{port}/'
        self._listen_error = ''
        self.diag = Diagnostics(self)
        if not self._listen(first=True):
            self._retry = self.create_timer(retry_s, self._listen)

        self._frames = 0
        self._bad_images = 0
        self._last_jpeg = 0.0
        self._last_frames, self._last_rate_t = 0, time.monotonic()
        self.create_subscription(CompressedImage, 'camera/h264', self._on_h264, VIDEO_QOS)
        # camera/image_raw only while an MJPEG viewer watches (see _tick): the camera then
        # has no subscriber and skips the 2.7 MB frames (issue 14).
        self._raw_sub = None
        self.create_subscription(DiagnosticArray, 'bodycam/triggers', self._on_triggers,
                                 RELIABLE_QOS)
        self.create_subscription(DiagnosticStatus, 'bodycam/alerts', self._on_alert, LATCHED_QOS)
        self.create_subscription(DiagnosticStatus, 'bodycam/peer_alert', self._on_peer_alert,
                                 LATCHED_QOS)
        self.create_subscription(DiagnosticStatus, 'recorder/status', self._on_recorder,
                                 SENSOR_QOS)
        self.create_subscription(NavSatFix, 'gps/fix', self._on_fix, SENSOR_QOS)
        self.create_timer(1.0, self._tick)

    def _listen(self, first: bool = False) -> bool:
        """Open the HTTP(S) server. A port in use (another program, or this node's previous
        process not yet gone) is an ERROR diagnostic and a retry, not an exit: launch would
        respawn the node every 2 s forever. Bad TLS files are a configuration error."""
        if self.server is not None:
            return True
        try:
            server = self._make_server()
        except LiveError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno in RETRY_ERRNOS:
                if exc.args[0] != self._listen_error:
                    self.get_logger().error(f'{exc}; retrying')
                self._listen_error = exc.args[0]
                self.diag.set(ERROR, f'not serving: {exc}', url='')
                return False
            if first:
                raise ParameterError(f'parameters live_view.bind/port/tls_*: {exc}') from exc
            self.get_logger().error(f'{exc}; not serving')
            self._listen_error = f'{exc}'
            self._retry.cancel()
            return False
        server.start()
        self.server, self.port, self._listen_error = server, server.port, ''
        if not first:
            self._retry.cancel()
        self.base_url = f'{"https" if self._tls else "http"}://{self._bind}:{self.port}/'
        url = live_view_url(self._bind, self.port, self._token, tls=self._tls,
                            ttl_s=URL_TTL_S)
        self.get_logger().info(f'live view: {url} (token required; this link expires in '
                               f'{URL_TTL_S / 3600:g} h)')
        return True

    # ------------------------------------------------------------------ video
    def _on_h264(self, msg: CompressedImage) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self._frames += 1
        self.stream.push(bytes(msg.data), stamp)

    def _on_image(self, msg: Image) -> None:
        if self.server is None or self.server.jpeg.viewers <= 0:
            return   # nobody on the MJPEG fallback: do not spend CPU on JPEG
        now = time.monotonic()
        if now - self._last_jpeg < 1.0 / self._mjpeg_rate:
            return
        if msg.encoding not in ('bgr8', 'rgb8') or msg.step < msg.width * 3 or \
                len(msg.data) < msg.step * msg.height:
            self._bad_images += 1
            if self._bad_images in (1, 10, 100) or self._bad_images % 1000 == 0:
                self.get_logger().warning(f'camera/image_raw: cannot use {msg.encoding} '
                                          f'{msg.width}x{msg.height} ({self._bad_images} so far)')
            return
        rows = np.frombuffer(msg.data, np.uint8, msg.step * msg.height).reshape(msg.height,
                                                                               msg.step)
        frame = rows[:, :msg.width * 3].reshape(msg.height, msg.width, 3)
        if msg.encoding == 'rgb8':
            frame = frame[:, :, ::-1]
        import cv2   # only for an MJPEG viewer: OpenCV costs ~40 MB a process
        ok, jpeg = cv2.imencode('.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, self._jpeg_quality])
        if ok:
            self._last_jpeg = now
            self.server.jpeg.put(jpeg.tobytes())

    # ------------------------------------------------------------------ state
    def _on_triggers(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            try:
                t = decode_trigger(from_status(st))
            except MessageError as exc:
                self._bad_status(exc)
                continue
            lvl = int(t.level)
            self.state.set_trigger(TriggerState(st.name.rsplit('/', 1)[-1],
                                                LEVELS.get(lvl, str(lvl)), st.message))

    #: Alerts and statuses that did not decode (core.messages), counted and skipped.
    bad_statuses = 0

    def _bad_status(self, exc: MessageError) -> None:
        self.bad_statuses += 1
        self.get_logger().warning(f'ignored a bad status/alert ({self.bad_statuses} so far): '
                                  f'{exc}', throttle_duration_sec=10.0)

    def _on_alert(self, msg: DiagnosticStatus) -> None:
        try:
            self.state.update(alert=alert_from_status(msg))
        except MessageError as exc:
            self._bad_status(exc)

    def _on_peer_alert(self, msg: DiagnosticStatus) -> None:
        try:
            self.state.set_peer_alert(alert_from_status(msg, peer=True))
        except MessageError as exc:
            self._bad_status(exc)

    def _on_recorder(self, msg: DiagnosticStatus) -> None:
        try:
            r = decode_recorder(from_status(msg))
        except MessageError as exc:
            return self._bad_status(exc)
        rec = RecorderState(r.state.value, r.incident_id, r.buffered_s, r.free_bytes)
        if rec != self.state.recorder:
            self.state.update(recorder=rec)

    def _on_fix(self, msg: NavSatFix) -> None:
        if not (math.isfinite(msg.latitude) and math.isfinite(msg.longitude)):
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.state.update(position=Position(msg.latitude, msg.longitude, stamp,
                                            msg.status.status >= NavSatStatus.STATUS_FIX))

    # ------------------------------------------------------------------ health
    def _tick(self) -> None:
        mjpeg = self.server is not None and self.server.jpeg.viewers > 0
        if mjpeg and self._raw_sub is None:
            self._raw_sub = self.create_subscription(Image, 'camera/image_raw', self._on_image,
                                                     SENSOR_QOS)
        elif not mjpeg and self._raw_sub is not None:
            self.destroy_subscription(self._raw_sub)
            self._raw_sub = None
        now = time.monotonic()
        fps = (self._frames - self._last_frames) / max(now - self._last_rate_t, 1e-3)
        self._last_frames, self._last_rate_t = self._frames, now
        if abs(fps - self.state.video_fps) >= 0.5:
            self.state.update(video_fps=fps)
        if self.server is None:
            self.diag.set(ERROR, f'not serving: {self._listen_error}', url='')
            return
        s = self.stream.stats()
        values = dict(url=self.base_url, viewers=s.viewers, frames=s.frames_in,
                      fragments=s.fragments_out, bad_frames=s.bad_frames,
                      viewer_resyncs=s.viewer_resyncs, mjpeg_viewers=self.server.jpeg.viewers,
                      unauthorized=self.server.counters.get('unauthorized', 0))
        if s.frames_in == 0 or now - self.stream.last_frame_time > 3.0:
            self.diag.set(WARN, 'no video from camera/h264', **values)
        elif s.last_error and s.bad_frames and fps < 1.0:
            self.diag.set(ERROR, f'cannot mux the camera stream: {s.last_error}', **values)
        else:
            self.diag.set(OK, f'serving {s.viewers} viewer(s)', **values)

    # -- audit: who watched, when, with which credential ----------------------------------
    def _audit(self, action: str, **details: object) -> None:
        """Append a live view session event to the unit's signed audit log (HTTP thread).

        The device key may appear only after this node starts (the recorder creates it on a
        first run), so opening it is retried, at most every 10 s."""
        log = self._audit_log
        if log is None:
            if not self._key_dir or time.monotonic() - self._audit_tried < 10.0:
                return
            self._audit_tried = time.monotonic()
            from bodycam_ros.core import keys
            from bodycam_ros.core.audit import AuditLog, audit_path
            try:
                signer = keys.open_signer(Path(self._key_dir))
            except (keys.KeyStoreError, OSError) as exc:
                self.get_logger().warning(f'live view sessions not audited yet: {exc}',
                                          throttle_duration_sec=60.0)
                return
            device = self._device_id or socket.gethostname()
            log = self._audit_log = AuditLog(audit_path(self._evidence_dir), signer, device)
        log.append(action, self.get_clock().now().nanoseconds * 1e-9, **details)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def main(args=None) -> int:
    return run_node(lambda: LiveViewNode(), args)


if __name__ == '__main__':
    sys.exit(main())
