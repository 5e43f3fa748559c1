"""portal_link node: this unit's one outbound connection to the agency portal (issue 13).

Dials ``portal_url`` (a WebSocket over TLS: ``wss://``; plain ``ws://`` only with
``allow_insecure_http``), proves who it is by signing the portal's challenge with the device
key in ``key_dir`` (file or PKCS#11, as the recorder uses it), then keeps the portal told:
state (triggers, recorder state and incident, position, storage) on change at most once a
second and a heartbeat otherwise, alerts (officer down, weapon drawn) at once, and the live
fMP4 video (the same remux of ``camera/h264`` the live view serves, never re-encoded) only
while someone at the portal watches or while the unit records. A destination the portal
sends is published on ``dispatch/destination`` (latched NavSatFix, as dispatch_bridge does).

Nothing on the unit waits on the portal: this node only subscribes (and publishes the
dispatch); the link runs in its own thread with its own asyncio loop, reconnecting with
exponential backoff and jitter after a cut. Bytes sent are counted and published in
diagnostics (``idle_bytes_per_hour``, ``stream_bytes_per_minute``, ``wire_bytes_sent``: the
kernel's TCP count, TLS included). Protocol: :mod:`bodycam_ros.core.portal_link`.
"""
from __future__ import annotations

import asyncio
import collections
import math
import socket
import ssl
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, NavSatFix, NavSatStatus
from std_msgs.msg import Bool

from bodycam_ros.core import keys
from bodycam_ros.core import portal_link as pl
from bodycam_ros.core.live import LiveError, LiveStream, ViewerClosed
from bodycam_ros.core.messages import Level, MessageError, decode_alert, decode_recorder, \
    decode_trigger
from bodycam_ros.rosutil import (ERROR, LATCHED_QOS, OK, RELIABLE_QOS, SENSOR_QOS, VIDEO_QOS,
                                 WARN, Diagnostics, ParameterError, declare, run_node)
from bodycam_ros.wire import from_status

#: Offset of ``tcpi_bytes_acked`` in Linux ``struct tcp_info`` (stable since 4.1).
_TCPI_BYTES_ACKED = 120


def tcp_bytes_acked(sock: Any) -> int | None:
    """Bytes the peer acknowledged on this TCP socket (Linux), TLS and WebSocket framing
    included; None where the kernel does not say."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return struct.unpack_from('=Q', info, _TCPI_BYTES_ACKED)[0] \
            if len(info) >= _TCPI_BYTES_ACKED + 8 else None
    except (OSError, AttributeError):
        return None


class PortalClient:
    """The link, without ROS: a thread running an asyncio loop that keeps one WebSocket to
    the portal. The node (any thread) calls :meth:`set_state`, :meth:`alert` and
    :meth:`push_video`; none of them blocks on the network."""

    def __init__(self, portal_url: str, signer: Any, device_id: str, officer_id: str = '', *,
                 ca_file: str = '', allow_insecure: bool = False,
                 on_dispatch: Callable[[pl.DispatchMsg], None] | None = None,
                 log: Callable[[str, str], None] | None = None,
                 stream_while_recording: bool = True, heartbeat_s: float = 15.0,
                 min_interval_s: float = 1.0, position_min_m: float = 10.0,
                 reconnect_base_s: float = 0.5, reconnect_max_s: float = 30.0,
                 max_queue_s: float = 2.0, software: str = 'bodycam_ros') -> None:
        self.url = pl.link_url(portal_url, allow_insecure)
        self.origin = pl.origin_of(portal_url)
        self._ssl: ssl.SSLContext | None = None
        if self.url.startswith('wss://'):
            try:
                ctx = ssl.create_default_context(cafile=ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise pl.LinkError(f'portal CA file {ca_file!r}: {exc}') from exc
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._ssl = ctx
        elif ca_file:
            raise pl.LinkError(f'a CA file ({ca_file}) was given for a plain ws:// portal')
        self.signer, self.device_id = signer, device_id
        self._on_dispatch, self._log = on_dispatch, log or (lambda level, msg: None)
        self._stream_recording = stream_while_recording
        self._software = software
        self._max_queue_s = max_queue_s
        self.coalescer = pl.StateCoalescer(min_interval_s, heartbeat_s, position_min_m)
        self.reconnect = pl.Reconnect(reconnect_base_s, reconnect_max_s)
        self.meter = pl.ByteMeter()
        self._lock = threading.Lock()
        self._state = pl.UnitState(officer_id=officer_id)
        self._alerts: collections.deque[pl.AlertMsg] = collections.deque(maxlen=256)
        self._watch = False
        self._stream: LiveStream | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name='portal-link', daemon=True)
        self._sock: Any = None
        # what diagnostics and tests read
        self.connected = False
        self.connects = self.refusals = self.failures = 0
        self.dispatches = self.bad_messages = 0
        self.last_error = ''
        self.received_bytes = 0
        self.wire_bytes_before = 0      # kernel-counted bytes of earlier connections
        self._wire_last = 0             # this connection's, at the last look
        self.generations = 0            # video streams started

    # -- from the node (any thread) -----------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def set_state(self, **changes: Any) -> None:
        with self._lock:
            new = replace(self._state, **changes)
            changed = new != self._state
            self._state = new
        if changed:
            self._poke()

    @property
    def state(self) -> pl.UnitState:
        with self._lock:
            return self._state

    def alert(self, a: pl.AlertMsg) -> None:
        with self._lock:
            self._alerts.append(a)
        self._poke()

    def push_video(self, annexb: bytes, stamp: float) -> None:
        """Camera callback: muxed only while a stream is on (nobody watching costs nothing)."""
        stream = self._stream
        if stream is not None:
            stream.push(annexb, stamp)

    @property
    def video_wanted(self) -> bool:
        return self.connected and (self._watch or (self._stream_recording
                                                   and self.state.recording))

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def wire_bytes_sent(self) -> int | None:
        if self._sock is not None:
            now = tcp_bytes_acked(self._sock)
            if now is None:
                return None
            self._wire_last = max(self._wire_last, now)
        return self.wire_bytes_before + self._wire_last

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        self._poke()
        self._thread.join(timeout_s)

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass    # the loop closed while stopping

    # -- the link thread ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            try:
                asyncio.run(self._main())
            except Exception as exc:  # noqa: BLE001 - the link must outlive any bug: retry
                self.last_error = f'link thread: {type(exc).__name__}: {exc}'
                time.sleep(1.0)

    async def _main(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        while not self._stopping:
            refused = False
            try:
                async with connect(self.url, ssl=self._ssl, subprotocols=[pl.SUBPROTOCOL],
                                   open_timeout=10, ping_interval=30, ping_timeout=20,
                                   close_timeout=2, max_size=1 << 20, compression=None,
                                   user_agent_header=f'{self._software} portal_link') as ws:
                    await self._session(ws)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                reason = exc.rcvd.reason if exc.rcvd is not None else 'no close frame'
                refused = code in (pl.CLOSE_UNAUTHORIZED, pl.CLOSE_ORIGIN)
                self.refusals += refused
                self._fail(f'portal closed the link ({code}: {reason})',
                           'error' if refused else 'warning')
            except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI,
                    pl.LinkError) as exc:
                self._fail(f'{type(exc).__name__}: {exc}', 'warning')
            finally:
                self._disconnected()
            if self._stopping:
                break
            delay = self.reconnect.next_delay(refused)
            self._log('info', f'portal link: reconnecting in {delay:.1f} s')
            try:
                await asyncio.wait_for(self._sleep_until_stop(), delay)
            except asyncio.TimeoutError:
                pass

    async def _sleep_until_stop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    def _fail(self, why: str, level: str) -> None:
        self.failures += 1
        if why != self.last_error:
            self._log(level, f'portal link: {why}')
        self.last_error = why

    def _disconnected(self) -> None:
        self.wire_bytes_sent()             # the closed socket may no longer answer
        self.wire_bytes_before += self._wire_last
        self._wire_last = 0
        self._sock = None
        self.connected = False
        self._watch = False
        self.meter.tick(time.monotonic(), False, connected=False)

    async def _send(self, ws: Any, data: str | bytes, kind: str) -> None:
        await ws.send(data)
        n = len(data.encode() if isinstance(data, str) else data)
        self.meter.add(kind, pl.ws_frame_bytes(n))

    async def _recv(self, ws: Any, timeout_s: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(ws.recv(), timeout_s)
        self.received_bytes += len(raw)
        if isinstance(raw, bytes):
            raise pl.LinkError('the portal sent a binary frame during the handshake')
        return pl.decode(raw)

    async def _session(self, ws: Any) -> None:
        nonce = pl.parse_challenge(await self._recv(ws, 10.0))
        msg = pl.auth_message(nonce, self.device_id, self.origin)
        signature = await asyncio.to_thread(self.signer.sign, msg)    # PKCS#11 may take ms
        hello = pl.Hello(self.device_id, self.state.officer_id, self.signer.key_id,
                         self.origin, signature, self._software)
        await self._send(ws, pl.encode(hello.message()), 'control')
        welcome = await self._recv(ws, 10.0)
        if welcome.get('type') != 'welcome':
            raise pl.LinkError(f'expected welcome, got {welcome.get("type")!r}')
        hb = welcome.get('heartbeat_s')
        if isinstance(hb, (int, float)) and 0.2 <= hb <= 3600:
            self.coalescer.heartbeat_s = min(self.coalescer.heartbeat_s, float(hb))
        self._sock = ws.transport.get_extra_info('socket') if ws.transport else None
        self._watch = bool(welcome.get('watch'))
        self.coalescer.reset()
        self.reconnect.connected()
        self.connected, self.last_error = True, ''
        self.connects += 1
        self.meter.tick(time.monotonic(), False)
        self._log('info', f'portal link: connected to {self.origin} as {self.device_id} '
                  f'(connection {self.connects})')
        tasks = [asyncio.create_task(self._reader(ws)), asyncio.create_task(self._writer(ws))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _reader(self, ws: Any) -> None:
        while True:
            raw = await ws.recv()
            self.received_bytes += len(raw)
            if isinstance(raw, bytes):
                self.bad_messages += 1
                continue
            try:
                m = pl.decode(raw)
                if m['type'] == 'watch':
                    self._watch = bool(m.get('on'))
                    self._wake.set()
                elif m['type'] == 'dispatch':
                    d = pl.DispatchMsg.parse(m)
                    self.dispatches += 1
                    if self._on_dispatch is not None:
                        self._on_dispatch(d)
                    await self._send(ws, pl.encode({'type': 'dispatch_ack', 'id': d.dispatch_id,
                                                    't': time.time()}), 'control')
                elif m['type'] != 'hb':
                    self.bad_messages += 1
            except pl.LinkError as exc:
                self.bad_messages += 1
                self._log('warning', f'portal link: ignored a bad message: {exc}')

    async def _writer(self, ws: Any) -> None:
        pump: asyncio.Task | None = None
        try:
            while not self._stopping:
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
                while True:          # alerts first, each at once
                    with self._lock:
                        a = self._alerts[0] if self._alerts else None
                    if a is None:
                        break
                    await self._send(ws, pl.encode(a.message_dict()), 'alert')
                    with self._lock:
                        if self._alerts and self._alerts[0] is a:
                            self._alerts.popleft()
                if self.video_wanted and pump is None:
                    pump = asyncio.create_task(self._pump(ws))
                elif not self.video_wanted and pump is not None:
                    pump.cancel()
                    await asyncio.gather(pump, return_exceptions=True)
                    pump = None
                    await self._send(ws, pl.encode({'type': 'stream', 'on': False}), 'control')
                if pump is not None and pump.done():
                    pump.result()    # raises what ended it (the connection closed)
                st = replace(self.state, streaming=pump is not None, t=round(time.time(), 3))
                msg = self.coalescer.due(st, time.monotonic())
                if msg is not None:
                    await self._send(ws, pl.encode(msg), 'state' if msg['type'] == 'state'
                                     else 'heartbeat')
                self.meter.tick(time.monotonic(), pump is not None)
                self.wire_bytes_sent()         # sampled while the socket is open
        finally:
            if pump is not None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)

    async def _pump(self, ws: Any) -> None:
        """One video stream: mux from now on, send the init segment, then fragments from the
        next keyframe; a new init (the camera changed size) starts a new generation."""
        stream = LiveStream(max_queue_s=self._max_queue_s, max_viewers=1)
        self._stream = stream
        try:
            while True:
                try:
                    viewer = await asyncio.to_thread(stream.subscribe, 1.0)
                except LiveError:
                    continue          # no keyframe yet
                self.generations += 1
                gen = self.generations
                await self._send(ws, pl.encode({'type': 'stream', 'on': True, 'generation': gen,
                                                'codec': viewer.codec}), 'control')
                await self._send(ws, pl.pack_video(pl.VIDEO_INIT, True, gen, 0, time.time(),
                                                   viewer.init_segment), 'video')
                try:
                    while True:
                        for f in await asyncio.to_thread(viewer.take, 0.25):
                            await self._send(ws, pl.pack_video(pl.VIDEO_FRAGMENT, f.keyframe,
                                                               gen, f.seq, f.stamp, f.data),
                                             'video')
                except ViewerClosed:
                    continue
                finally:
                    stream.unsubscribe(viewer)
        finally:
            self._stream = None
            stream.close()


# ================================================================================ ROS node
class PortalLinkNode(Node):
    def __init__(self, **kw: Any) -> None:
        super().__init__('portal_link', **kw)
        url = declare(self, 'portal_url', '', 'the agency portal, https://host[:port] (the link '
                      'dials <url>/api/link over wss); "" = no link (the node exits 2)')
        ca_file = declare(self, 'portal_ca_file', '', 'CA bundle (PEM) that verifies the '
                          'portal certificate ("" = the system CAs)')
        insecure = declare(self, 'allow_insecure_http', False,
                           'accept a plain http:// (ws://) portal: loopback tests only')
        key_dir = declare(self, 'key_dir', 'var/keys', 'the device signing key '
                          '(bodycam provision), the one the agency registered')
        device_id = declare(self, 'device_id', '', 'this unit\'s id ("" = hostname)') \
            or socket.gethostname()
        officer_id = declare(self, 'officer_id', '', 'officer wearing this unit')
        by_rec = declare(self, 'stream_while_recording', True,
                         'send video while the unit records even if nobody watches')
        heartbeat_s = declare(self, 'heartbeat_s', 15.0, 'longest silence on the link [s] '
                              '(the portal may ask for less)', min_value=0.5, max_value=600.0)
        min_interval_s = declare(self, 'state_min_interval_s', 1.0, 'state updates at most '
                                 'this often [s]', min_value=0.05, max_value=60.0)
        pos_m = declare(self, 'position_min_m', 10.0, 'a move this far is a state update [m]',
                        min_value=0.0, max_value=10000.0)
        base_s = declare(self, 'reconnect_base_s', 0.5, 'first reconnect delay [s] (doubles, '
                         'with jitter)', min_value=0.01, max_value=60.0)
        max_s = declare(self, 'reconnect_max_s', 30.0, 'longest reconnect delay [s]',
                        min_value=0.1, max_value=3600.0)
        max_queue_s = declare(self, 'max_queue_s', 2.0, 'video the link may fall behind '
                              'before it skips to a keyframe [s]', min_value=0.2,
                              max_value=30.0)
        if not url:
            raise ParameterError('parameter portal_link.portal_url is empty: give the portal '
                                 '(bodycam run --portal URL)')
        try:
            signer = keys.open_signer(Path(key_dir))
        except (keys.KeyStoreError, OSError) as exc:
            raise ParameterError(f'parameter portal_link.key_dir={key_dir!r}: {exc}') from exc
        self._officer = officer_id
        try:
            self.client = PortalClient(
                url, signer, device_id, officer_id, ca_file=ca_file, allow_insecure=insecure,
                on_dispatch=self._on_dispatch, log=self._log,
                stream_while_recording=by_rec, heartbeat_s=heartbeat_s,
                min_interval_s=min_interval_s, position_min_m=pos_m, reconnect_base_s=base_s,
                reconnect_max_s=max(base_s, max_s), max_queue_s=max_queue_s)
        except pl.LinkError as exc:
            raise ParameterError(f'parameters portal_link.portal_url/portal_ca_file/'
                                 f'allow_insecure_http: {exc}') from exc
        if not self.client.url.startswith('wss://'):
            self.get_logger().warning(f'portal link {self.client.url} is not TLS '
                                      '(allow_insecure_http): loopback tests only')
        self._triggers: dict[str, int] = {}
        self._holster_alert = ''
        self._alerts_seen: set[tuple[str, str]] = set()
        self._bad = 0
        self._dest_pub = self.create_publisher(NavSatFix, 'dispatch/destination', LATCHED_QOS)
        self.create_subscription(DiagnosticArray, 'bodycam/triggers', self._on_triggers,
                                 RELIABLE_QOS)
        self.create_subscription(DiagnosticStatus, 'bodycam/alerts', self._on_alert, LATCHED_QOS)
        self.create_subscription(DiagnosticStatus, 'recorder/status', self._on_recorder,
                                 SENSOR_QOS)
        self.create_subscription(NavSatFix, 'gps/fix', self._on_fix, SENSOR_QOS)
        # The holster's own debounced topic, not trigger_fusion's periodic status: the alert
        # leaves the moment the weapon is out.
        self.create_subscription(Bool, 'holster/weapon_drawn', self._on_drawn, LATCHED_QOS)
        self.create_subscription(CompressedImage, 'camera/h264', self._on_h264, VIDEO_QOS)
        self.diag = Diagnostics(self, hardware_id=f'portal:{self.client.origin}')
        self.create_timer(1.0, self._report)
        self.client.start()
        self.get_logger().info(f'portal link: dialing {self.client.url} as {device_id} '
                               f'(key {signer.key_id[:16]})')

    def _log(self, level: str, msg: str) -> None:      # link thread
        # One call site per severity: rclpy refuses a second severity from the same line.
        if level == 'error':
            self.get_logger().error(msg)
        elif level == 'warning':
            self.get_logger().warning(msg)
        else:
            self.get_logger().info(msg)

    # -- topics in -------------------------------------------------------------------------
    def _position(self) -> pl.Position | None:
        return self.client.state.position

    def _on_triggers(self, msg: Any) -> None:
        for st in msg.status:
            try:
                t = decode_trigger(from_status(st))
            except MessageError as exc:
                self._skip(exc)
                continue
            self._triggers[t.source.value] = int(t.level)
        active = tuple(s for s, lvl in self._triggers.items() if lvl == Level.WARN)
        faults = tuple(s for s, lvl in self._triggers.items() if lvl == Level.ERROR)
        self.client.set_state(triggers=active, faults=faults)

    def _on_drawn(self, msg: Any) -> None:
        self._holster(bool(msg.data), 'weapon drawn' if msg.data else 'weapon holstered')

    def _holster(self, drawn: bool, message: str) -> None:
        """Weapon drawn is an alert for people at the portal (raised, then cleared)."""
        now = time.time()
        if drawn and not self._holster_alert:
            self._holster_alert = str(uuid.uuid4())
            self.client.alert(pl.AlertMsg(self._holster_alert, 'weapon_drawn', 'raised', now,
                                          self._officer, self._position(),
                                          self.client.state.incident_id, message))
        elif not drawn and self._holster_alert:
            self.client.alert(pl.AlertMsg(self._holster_alert, 'weapon_drawn', 'cleared', now,
                                          self._officer, self._position(),
                                          self.client.state.incident_id, message))
            self._holster_alert = ''

    def _on_alert(self, msg: Any) -> None:
        if not msg.name.endswith('officer_down'):
            return
        try:
            a = decode_alert(from_status(msg))
        except MessageError as exc:
            return self._skip(exc)
        key = (a.alert_id, a.state.value)
        if key in self._alerts_seen:       # latched: a re-delivery is not a new alert
            return
        self._alerts_seen.add(key)
        pos = pl.Position(a.latitude, a.longitude) if a.latitude is not None and \
            a.longitude is not None else self._position()
        self.client.alert(pl.AlertMsg(a.alert_id, 'officer_down', a.state.value, a.stamp,
                                      a.officer_id or self._officer, pos, a.incident_id,
                                      a.message))

    def _on_recorder(self, msg: Any) -> None:
        try:
            r = decode_recorder(from_status(msg))
        except MessageError as exc:
            return self._skip(exc)
        self.client.set_state(recorder_state=r.state.value,
                              incident_id=r.incident_id if r.state.value != 'IDLE' else '',
                              free_bytes=r.free_bytes)

    def _on_fix(self, msg: Any) -> None:
        if not (math.isfinite(msg.latitude) and math.isfinite(msg.longitude)) or \
                msg.status.status < NavSatStatus.STATUS_FIX:
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.client.set_state(position=pl.Position(round(msg.latitude, 7),
                                                   round(msg.longitude, 7), round(stamp, 3)))

    def _on_h264(self, msg: Any) -> None:
        if self.client.streaming:
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            self.client.push_video(bytes(msg.data), stamp)

    # -- dispatch out ----------------------------------------------------------------------
    def _on_dispatch(self, d: pl.DispatchMsg) -> None:    # link thread
        fix = NavSatFix()
        fix.header.stamp = self.get_clock().now().to_msg()
        fix.header.frame_id = 'map'
        fix.position_covariance_type = NavSatFix.COVARIANCE_TYPE_UNKNOWN
        fix.altitude = float('nan')
        if d.clear or d.latitude is None or d.longitude is None:
            fix.status.status = NavSatStatus.STATUS_NO_FIX
            fix.latitude = fix.longitude = float('nan')
        else:
            fix.status.status = NavSatStatus.STATUS_FIX
            fix.latitude, fix.longitude = d.latitude, d.longitude
        self._dest_pub.publish(fix)
        self.get_logger().info(f'portal dispatch {d.dispatch_id} by {d.by or "?"}: '
                               + ('cleared' if d.clear else f'{d.latitude:.6f}, '
                                  f'{d.longitude:.6f}'))

    # -- health ----------------------------------------------------------------------------
    def _skip(self, exc: Exception) -> None:
        self._bad += 1
        self.get_logger().warning(f'ignored bad input ({self._bad} so far): {exc}',
                                  throttle_duration_sec=10.0)

    def _report(self) -> None:
        c = self.client
        m = c.meter
        idle, streamed = m.idle_per_hour(), m.stream_per_minute()
        values = dict(url=c.url, connected=c.connected, connects=c.connects,
                      refusals=c.refusals, failures=c.failures, streaming=c.streaming,
                      generations=c.generations, bytes_sent=m.total,
                      bytes_video=m.by_kind.get('video', 0),
                      bytes_state=m.by_kind.get('state', 0),
                      bytes_heartbeat=m.by_kind.get('heartbeat', 0),
                      bytes_alert=m.by_kind.get('alert', 0),
                      bytes_control=m.by_kind.get('control', 0),
                      idle_s=round(m.idle_s, 1), stream_s=round(m.stream_s, 1),
                      idle_bytes_per_hour='' if idle is None else round(idle),
                      stream_bytes_per_minute='' if streamed is None else round(streamed),
                      wire_bytes_sent=c.wire_bytes_sent() or '',
                      bytes_received=c.received_bytes, dispatches=c.dispatches,
                      bad_inputs=self._bad + c.bad_messages, last_error=c.last_error)
        if c.connected:
            self.diag.set(OK, f'connected to {c.origin}'
                          + (' (streaming video)' if c.streaming else ''), **values)
        elif c.refusals and 'closed the link (44' in c.last_error:
            self.diag.set(ERROR, f'refused by the portal: {c.last_error}', **values)
        else:
            self.diag.set(WARN, f'portal unreachable: {c.last_error or "connecting"}', **values)

    def close(self) -> None:
        self.client.stop()


def main(args: list[str] | None = None) -> int:
    return run_node(lambda: PortalLinkNode(), args)


if __name__ == '__main__':
    sys.exit(main())
