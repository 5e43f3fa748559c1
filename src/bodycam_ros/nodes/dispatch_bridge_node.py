"""dispatch_bridge node: the link between the unit and dispatch (CAD), and between units.

In: ``dispatch/destination`` (sensor_msgs/NavSatFix, LATCHED_QOS: a late joiner gets the
current dispatch; status NO_FIX = no dispatch / dispatch cleared) from ``source``:

* ``sim``: the shared scenario's ``dispatch_at(t)`` (``scenario``, ``scenario_start``).
* ``http``: CAD POSTs assignments to an authenticated HTTPS endpoint (``cad_bind:cad_port``,
  ``POST``/``DELETE /dispatch`` with a bearer token; :class:`core.dispatch.CadIntake`). The
  certificate is ``tls_cert_file``/``tls_key_file``, else a self-signed one kept in
  ``tls_dir`` whose SHA-256 fingerprint is logged for the CAD client to pin.
* ``none``: publishes nothing (a unit without a dispatch link).

Out: officer-down alerts, and by ``forward_events`` weapon-drawn and incident started/sealed,
to dispatch through a durable on-disk outbox delivered in order to ``dispatch_webhook`` with
an ``Idempotency-Key`` (see :mod:`bodycam_ros.core.outbox`).
Units: this unit's own officer-down alert is republished on the shared absolute topic
``/bodycam/peer_alerts``; another unit's alert there becomes ``bodycam/peer_alert`` here with
the distance to it, and a ``recorder/command`` start (reason ``peer_alert``) when within
``peer_trigger_radius_m``.

Secrets (the CAD and webhook bearer tokens, the TLS key) are never parameter values: they come
from 0600 files or the environment, and a parameter only names the file, so ``ros2 param get``
on the DDS domain reveals none. A secret-looking parameter (``cad_token``) is refused.
``http://`` is refused for the webhook and the intake unless ``allow_insecure_http``.

Time: the sim scenario and the ``peer_alert`` start's trigger time use the node clock (ROS
time; sim time under ``use_sim_time``, ``scenario_start`` in ROS s); CAD and alert times are
the sender's; the wall clock only dates the self-signed certificate and webhook deliveries.
"""
from __future__ import annotations

import os
import socket
import ssl
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import NavSatFix, NavSatStatus

from bodycam_ros.core import scenario as scen
from bodycam_ros.core.dispatch import (EVENT_KINDS, Assignment, CadIntake, DispatchError,
                                       EventPolicy, PeerAlert, PeerAlerts, PeerDecision,
                                       ensure_self_signed, server_tls_context)
from bodycam_ros.core.messages import (PEER_ALERT_NAME, AlertState, CommandKind, DownAlert,
                                       MessageError, Reason, RecorderCommand, decode_alert,
                                       decode_recorder, decode_trigger, encode_alert,
                                       encode_command)
from bodycam_ros.core.outbox import (Backoff, Courier, Event, Outbox, OutboxError,
                                     WebhookTransport)
from bodycam_ros.core.tokens import TokenAuth, TokenError, default_token_path, load_token
from bodycam_ros.rosutil import (ERROR, LATCHED_QOS, OK, RELIABLE_QOS, SENSOR_QOS, WARN,
                                 Diagnostics, ParameterError, declare, run_node)
from bodycam_ros.wire import from_status, to_status

PEER_TOPIC = '/bodycam/peer_alerts'
SOURCES = ('sim', 'http', 'none')
#: A parameter whose name has one of these and does not end in _file would hold a secret.
SECRET_WORDS = ('token', 'secret', 'password', 'passphrase', 'credential', 'api_key')


def _coord(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class DispatchBridgeNode(Node):
    def __init__(self, **kw) -> None:
        super().__init__('dispatch_bridge', **kw)
        self._refuse_secret_parameters()
        ns = self.get_namespace().strip('/')
        self._source = declare(self, 'source', 'none', 'where dispatches come from: sim '
                               '(scenario), http (CAD POSTs) or none', choices=SOURCES)
        name = declare(self, 'scenario', '', f'sim scenario ({", ".join(scen.SCENARIOS)})'
                       "; '' = idle")
        start = declare(self, 'scenario_start', 0.0, 'scenario epoch [ROS s]; 0 = node start',
                        min_value=0.0, max_value=1e12)
        cad_bind = declare(self, 'cad_bind', '127.0.0.1', 'CAD intake address (source=http)')
        cad_port = declare(self, 'cad_port', 8081, 'CAD intake TCP port (0 = any free)',
                           min_value=0, max_value=65535)
        cad_token_file = declare(self, 'cad_token_file', '',
                                 'CAD bearer token file (else $BODYCAM_CAD_TOKEN, else '
                                 '<ROS_HOME>/bodycam/cad_token, created)')
        webhook = declare(self, 'dispatch_webhook', '',
                          'HTTPS URL that receives dispatch events ("" = keep them queued)')
        webhook_token_file = declare(self, 'webhook_token_file', '',
                                     'bearer token for the webhook (else '
                                     '$BODYCAM_DISPATCH_TOKEN, else none)')
        webhook_ca = declare(self, 'webhook_ca_file', '', 'CA bundle that verifies the '
                             'webhook server (PEM; "" = the system CAs)')
        allow_http = declare(self, 'allow_insecure_http', False,
                             'accept an http:// webhook and serve the CAD intake without TLS '
                             '(tests and loopback only)')
        tls_cert = declare(self, 'tls_cert_file', '', 'CAD intake certificate chain (PEM); '
                           '"" with tls_key_file "" = a self-signed one in tls_dir')
        tls_key = declare(self, 'tls_key_file', '', 'private key of tls_cert_file (PEM, 0600)')
        tls_dir = declare(self, 'tls_dir', '', 'where the self-signed CAD certificate is kept '
                          '("" = <ROS_HOME>/bodycam/cad_tls)')
        timeout_s = declare(self, 'webhook_timeout_s', 5.0, 'per-attempt timeout [s]',
                            min_value=0.1, max_value=120.0)
        retry_base = declare(self, 'retry_base_s', 0.25, 'first retry delay [s]',
                             min_value=0.01, max_value=60.0)
        retry_max = declare(self, 'retry_max_s', 10.0, 'longest retry delay [s]',
                            min_value=0.1, max_value=600.0)
        evidence_dir = declare(self, 'evidence_dir', 'var/evidence',
                               'evidence root; the outbox defaults to <evidence_dir>/dispatch')
        outbox_dir = declare(self, 'outbox_dir', '', 'durable outbox directory')
        forward = list(declare(self, 'forward_events', list(EVENT_KINDS),
                               'events sent to dispatch (officer_down is always sent)'))
        self._unit = declare(self, 'unit_id', '', 'this unit (default: namespace, else host)') \
            or ns or socket.gethostname()
        officer = declare(self, 'officer_id', '', 'officer wearing this unit')
        radius = declare(self, 'peer_trigger_radius_m', 0.0,
                         "start recording when another unit's officer is down this close "
                         '[m] (0 = never)', min_value=0.0, max_value=1e6)
        try:
            self._policy = EventPolicy(self._unit, officer, forward)
        except DispatchError as exc:
            raise ParameterError(f'parameter dispatch_bridge.forward_events: {exc}') from exc
        self._peers = PeerAlerts(self._unit, radius)

        # -- out: durable outbox + courier (no link configured: nothing is stored, so a
        # webhook added weeks later is not sent stale alerts)
        self._outbox: Outbox | None = None
        self._courier: Courier | None = None
        if webhook:
            box_dir = Path(outbox_dir or Path(evidence_dir) / 'dispatch' / 'outbox')
            try:
                self._outbox = Outbox(box_dir)
            except OutboxError as exc:
                raise ParameterError(f'parameter dispatch_bridge.outbox_dir: {exc}') from exc
            for problem in self._outbox.problems:   # bad pending files moved aside at start
                self.get_logger().error(f'dispatch outbox: {problem}')
            try:
                token = load_token(webhook_token_file, env_var='BODYCAM_DISPATCH_TOKEN',
                                   create=False, default_name='dispatch_token') \
                    if webhook_token_file or os.environ.get('BODYCAM_DISPATCH_TOKEN') else ''
            except TokenError as exc:
                raise ParameterError(f'parameter dispatch_bridge.webhook_token_file: {exc}') \
                    from exc
            try:
                transport = WebhookTransport(webhook, token=token, timeout_s=timeout_s,
                                             ca_file=webhook_ca, allow_insecure_http=allow_http)
                backoff = Backoff(retry_base, max(retry_base, retry_max))
            except ValueError as exc:
                raise ParameterError(
                    f'parameters dispatch_bridge.dispatch_webhook/webhook_ca_file/'
                    f'allow_insecure_http: {exc}') from exc
            self._courier = Courier(self._outbox, transport, backoff, self._on_delivered,
                                    self._on_rejected)
            self._courier.start()
        self._latency: list[float] = []

        # -- in: dispatch assignments
        self._dest_pub = self.create_publisher(NavSatFix, 'dispatch/destination', LATCHED_QOS)
        self._cad: CadIntake | None = None
        self._current: tuple[float, float] | None = None
        self._published = 0
        self._cad_pin = ''
        if self._source == 'http':
            try:
                auth = TokenAuth(load_token(cad_token_file, env_var='BODYCAM_CAD_TOKEN',
                                            default_name='cad_token'))
            except TokenError as exc:
                raise ParameterError(f'parameter dispatch_bridge.cad_token_file: {exc}') from exc
            tls = self._cad_tls(tls_cert, tls_key, tls_dir, cad_bind, allow_http)
            try:
                self._cad = CadIntake(auth, self._on_assignment, bind=cad_bind, port=cad_port,
                                      tls=tls, allow_insecure_http=allow_http,
                                      log=self.get_logger().debug)
            except DispatchError as exc:
                raise ParameterError(f'parameters dispatch_bridge.cad_bind/cad_port: {exc}') \
                    from exc
            self._cad.start()
            self.get_logger().info(f'CAD intake on {self._cad.scheme}://{cad_bind}:'
                                   f'{self._cad.port}/dispatch'
                                   + (f' (certificate SHA-256 {self._cad_pin})'
                                      if self._cad_pin else ''))
            if tls is None:
                self.get_logger().warning('CAD intake serves plain http '
                                          '(allow_insecure_http): the bearer token and '
                                          'destinations cross the network in clear')
        try:
            self._scenario = scen.get(name or 'idle')
        except ValueError as exc:
            raise ParameterError(f'parameter {self.get_name()}.scenario={name!r}: {exc}') from exc
        self._start = start          # 0: the node clock at the first sim poll
        if self._source == 'sim':
            self._publish_destination(None)   # no dispatch yet: NO_FIX, so subscribers know
            self.create_timer(0.2, self._poll_sim)

        # -- units
        self._peer_out = self.create_publisher(DiagnosticStatus, PEER_TOPIC, LATCHED_QOS)
        self._peer_local = self.create_publisher(DiagnosticStatus, 'bodycam/peer_alert',
                                                 LATCHED_QOS)
        self._rec_cmd = self.create_publisher(DiagnosticStatus, 'recorder/command', RELIABLE_QOS)
        self.create_subscription(DiagnosticStatus, PEER_TOPIC, self._on_peer, LATCHED_QOS)
        self.create_subscription(DiagnosticStatus, 'bodycam/alerts', self._on_alert, LATCHED_QOS)
        self.create_subscription(DiagnosticArray, 'bodycam/triggers', self._on_triggers,
                                 RELIABLE_QOS)
        self.create_subscription(DiagnosticStatus, 'recorder/status', self._on_recorder,
                                 SENSOR_QOS)
        self.create_subscription(NavSatFix, 'gps/fix', self._on_fix, SENSOR_QOS)
        self._bad = 0
        self._last_error = ''
        self.diag = Diagnostics(self, hardware_id=f'dispatch:{self._source}')
        self.create_timer(1.0, self._report)

    # ------------------------------------------------------------------ secrets, TLS
    def _refuse_secret_parameters(self) -> None:
        """Exit 2 on a secret given as a parameter value (YAML or ``-p``), declared or not:
        anyone on the DDS domain can read parameters, and YAML files get copied around."""
        for name in self._parameter_overrides:   # every value given to this node
            low = name.lower()
            if any(w in low for w in SECRET_WORDS) and not low.endswith('_file'):
                raise ParameterError(
                    f'parameter {self.get_name()}.{name}: secrets are never parameters; put '
                    'it in a file only its owner can read (chmod 600) and give its path in '
                    'the *_file parameter (cad_token_file, webhook_token_file), or use the '
                    'environment')

    def _cad_tls(self, cert: str, key: str, tls_dir: str, bind: str,
                 allow_http: bool) -> ssl.SSLContext | None:
        """The intake's TLS context: the given pair, else a self-signed one (pin logged);
        None only for plain http by request."""
        if bool(cert) != bool(key):
            raise ParameterError('parameters dispatch_bridge.tls_cert_file and tls_key_file '
                                 'must be given together')
        try:
            if cert:
                return server_tls_context(cert, key)
            if allow_http:
                return None
            d = Path(tls_dir) if tls_dir else default_token_path().with_name('cad_tls')
            hosts = ['localhost', '127.0.0.1', '::1', socket.gethostname()]
            if bind not in ('', '0.0.0.0', '::'):
                hosts.insert(0, bind)
            ident = ensure_self_signed(d, hosts, time.time())
            self._cad_pin = ident.sha256
            self.get_logger().info(
                f'CAD intake: {"new " if ident.created else ""}self-signed certificate '
                f'{ident.cert_file}, SHA-256 fingerprint {ident.sha256} (pin it in the CAD '
                'client, or set tls_cert_file/tls_key_file)')
            return server_tls_context(ident.cert_file, ident.key_file)
        except DispatchError as exc:
            raise ParameterError(f'parameters dispatch_bridge.tls_cert_file/tls_key_file/'
                                 f'tls_dir: {exc}') from exc

    # ------------------------------------------------------------------ dispatch in
    def _publish_destination(self, dest: tuple[float, float] | None) -> None:
        msg = NavSatFix()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = 'map'
        msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_UNKNOWN
        if dest is None:
            msg.status.status = NavSatStatus.STATUS_NO_FIX
            msg.latitude = msg.longitude = msg.altitude = float('nan')
        else:
            msg.status.status = NavSatStatus.STATUS_FIX
            msg.latitude, msg.longitude = dest
            msg.altitude = float('nan')
        self._current = dest
        self._dest_pub.publish(msg)
        self._published += 1

    def _now(self) -> float:
        """The node clock (ROS time) in seconds; 0 while sim time has had no /clock."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _poll_sim(self) -> None:
        now = self._now()
        if now <= 0.0:
            return                      # sim time before the first /clock
        self._start = self._start or now
        dest = self._scenario.dispatch_at(now - self._start)
        if dest != self._current:
            self._publish_destination(dest)
            self.get_logger().info(f'dispatch: {dest}' if dest else 'dispatch cleared')

    def _on_assignment(self, a: Assignment) -> None:   # CAD request thread
        dest = None if a.clear else (a.latitude, a.longitude)
        self.get_logger().info(f'CAD assignment {a.assignment_id}: '
                               + (f'{dest[0]:.6f}, {dest[1]:.6f}' if dest else 'cleared'))
        self._publish_destination(dest)

    # ------------------------------------------------------------------ events out
    def _enqueue(self, outgoing) -> None:
        for o in outgoing:
            if self._outbox is None:
                self.get_logger().info(f'dispatch event {o.kind} {o.body.get("state", "")} '
                                       '(no dispatch_webhook: not sent)')
                continue
            try:
                ev = self._outbox.put(o.event_id, o.kind, o.body)
            except OutboxError as exc:
                self._last_error = str(exc)
                self.get_logger().error(f'dispatch event {o.kind} NOT stored: {exc}',
                                        throttle_duration_sec=5.0)
                continue
            if ev is not None:
                state = o.body.get('state')
                self.get_logger().info(f'dispatch event #{ev.seq} {ev.kind}'
                                       + (f' {state}' if state else '') + ' queued')

    def _on_delivered(self, ev: Event, t: float) -> None:   # courier thread
        raised = ev.body.get('time')
        if ev.kind == 'officer_down' and raised:
            self._latency.append(t - float(raised))
        self.get_logger().info(f'dispatch event #{ev.seq} {ev.kind} delivered')

    def _on_rejected(self, ev: Event, why: str) -> None:   # courier thread
        self.get_logger().error(f'dispatch {why}; moved to {self._outbox.dir}/quarantine, '
                                'the queue goes on')

    def _on_alert(self, msg: DiagnosticStatus) -> None:
        if not msg.name.endswith('officer_down'):
            return
        wire = from_status(msg)
        try:
            alert = decode_alert(wire)
            out = self._policy.on_alert(dict(wire.values))
        except (MessageError, DispatchError) as exc:
            return self._skip(exc)
        self._enqueue(out)
        # Share with other units, with our unit id and best position.
        body = out[0].body
        pos = body.get('position') or {}
        self._peers.own_alert_ids.add(alert.alert_id)
        shared = replace(alert, unit_id=body['unit_id'], officer_id=body['officer_id'],
                         latitude=_coord(pos.get('latitude')),
                         longitude=_coord(pos.get('longitude')), stamp=float(body['time']),
                         incident_id=body.get('incident_id', ''))
        try:
            self._peer_out.publish(to_status(encode_alert(shared)))
        except MessageError as exc:
            self._skip(exc)

    def _on_triggers(self, msg: DiagnosticArray) -> None:
        reports = []
        for st in msg.status:
            try:
                reports.append(decode_trigger(from_status(st)))
            except MessageError as exc:
                self._skip(exc)
        self._enqueue(self._policy.on_triggers(
            (t.source.value, int(t.level), t.message) for t in reports))

    def _on_recorder(self, msg: DiagnosticStatus) -> None:
        try:
            r = decode_recorder(from_status(msg))
        except MessageError as exc:
            return self._skip(exc)
        self._enqueue(self._policy.on_recorder(r.state.value, r.incident_id, r.last_sealed))

    def _on_fix(self, msg: NavSatFix) -> None:
        if msg.status.status < NavSatStatus.STATUS_FIX or msg.latitude != msg.latitude:
            return
        self._policy.position = (msg.latitude, msg.longitude)
        for d in self._peers.on_fix(msg.latitude, msg.longitude):
            self._act(d)

    # ------------------------------------------------------------------ other units
    def _on_peer(self, msg: DiagnosticStatus) -> None:
        wire = from_status(msg)
        try:
            decode_alert(wire)
            a = PeerAlert.from_values(dict(wire.values))
        except (MessageError, DispatchError) as exc:
            return self._skip(exc)
        d = self._peers.on_alert(a)
        if d is not None:
            self._act(d)

    def _act(self, d: PeerDecision) -> None:
        a = d.alert
        local = DownAlert(
            a.alert_id, AlertState(a.state), a.stamp, a.unit_id, a.officer_id, a.latitude,
            a.longitude, a.incident_id,
            f'officer down: {a.unit_id}' + (f', {d.distance_m:.0f} m away'
                                            if d.distance_m is not None else ''),
            PEER_ALERT_NAME,
            (('distance_m', '' if d.distance_m is None else f'{d.distance_m:.1f}'),))
        try:
            self._peer_local.publish(to_status(encode_alert(local)))
        except MessageError as exc:
            self._skip(exc)
        if d.start_recording:
            self.get_logger().warning(f'{a.unit_id} officer down {d.distance_m:.0f} m away: '
                                      'starting recording')
            self._rec_cmd.publish(to_status(encode_command(RecorderCommand(
                CommandKind.START, Reason.PEER_ALERT, self._now(), str(uuid.uuid4()),
                f'peer alert from {a.unit_id}',
                (('alert_id', a.alert_id), ('peer_unit', a.unit_id))))))

    # ------------------------------------------------------------------ health
    def _skip(self, exc: Exception) -> None:
        self._bad += 1
        self._last_error = str(exc)
        self.get_logger().warning(f'ignored bad input ({self._bad} so far): {exc}',
                                  throttle_duration_sec=10.0)

    def _report(self) -> None:
        dest = self._current
        values = dict(unit_id=self._unit, source=self._source, scenario=self._scenario.name,
                      published=self._published, bad_inputs=self._bad,
                      destination=f'{dest[0]:.6f}, {dest[1]:.6f}' if dest else '')
        if self._cad is not None:
            values.update(cad_port=self._cad.port, cad_scheme=self._cad.scheme,
                          cad_accepted=self._cad.accepted, cad_rejected=self._cad.rejected)
            if self._cad_pin:
                values['cad_cert_sha256'] = self._cad_pin
        if self._latency:
            values['last_alert_latency_s'] = round(self._latency[-1], 3)
        if self._courier is None:
            level, message = OK, 'no dispatch_webhook configured: events are not sent'
        else:
            s = self._courier.stats()
            values.update(webhook=s.transport, pending=s.pending, delivered=s.delivered,
                          attempts=s.attempts, oldest_pending_s=round(s.oldest_age_s, 1),
                          last_error=s.last_error or self._last_error, rejected=s.rejected,
                          quarantined=s.quarantined, last_rejection=s.last_rejection)
            if s.failures_in_row:
                level, message = WARN, (f'dispatch unreachable: {s.pending} pending, oldest '
                                        f'{s.oldest_age_s:.0f} s ({s.last_error})')
            else:
                level, message = OK, f'dispatch reachable, {s.pending} pending'
            if s.quarantined:
                # Stays ERROR until an operator has looked at (and removed) what is there.
                level = ERROR
                message = (f'{s.quarantined} dispatch event(s) in quarantine '
                           f'({self._outbox.dir}/quarantine); {message}')
        self.diag.set(level, message, **values)

    def close(self) -> None:
        if self._courier is not None:
            self._courier.stop()
        if self._cad is not None:
            self._cad.close()


def main(args=None) -> int:
    return run_node(lambda: DispatchBridgeNode(), args)


if __name__ == '__main__':
    sys.exit(main())
