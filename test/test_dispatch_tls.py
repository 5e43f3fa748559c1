"""dispatch_bridge transport and secrets (issue 10): the CAD intake serves TLS 1.2+ (a given
certificate, or a self-signed one whose fingerprint is logged to pin), the webhook verifies
its server, ``http://`` is refused without ``allow_insecure_http``, and no secret is a ROS
parameter: tokens come from 0600 files or the environment, and ``ros2 param`` over DDS shows
none of them."""
from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import ssl
import stat
import time
import uuid
import warnings
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import GetParameters, ListParameters
from rclpy.node import Node
from sensor_msgs.msg import NavSatFix, NavSatStatus

from bodycam_ros.core.dispatch import (CadIntake, DispatchError, ensure_self_signed,
                                       server_tls_context)
from bodycam_ros.core.outbox import DeliveryError, Event, WebhookTransport
from bodycam_ros.core.tokens import TokenAuth
from bodycam_ros.nodes.dispatch_bridge_node import DispatchBridgeNode
from bodycam_ros.rosutil import LATCHED_QOS
from conftest import spin_until
from webhook_receiver import Receiver, make_ca

CAD_TOKEN = 'cad-secret-' + uuid.uuid4().hex
HOOK_TOKEN = 'hook-secret-' + uuid.uuid4().hex
NODE = 'bodycam_ros.nodes.dispatch_bridge_node'


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + '\n')
    path.chmod(mode)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def post(port: int, ctx: ssl.SSLContext, body: dict, token: str) -> tuple[int, dict, str]:
    """POST /dispatch over TLS; (status, JSON reply, negotiated TLS version)."""
    conn = http.client.HTTPSConnection('127.0.0.1', port, context=ctx, timeout=10)
    try:
        conn.request('POST', '/dispatch', body=json.dumps(body),
                     headers={'Authorization': f'Bearer {token}',
                              'Content-Type': 'application/json'})
        r = conn.getresponse()
        return r.status, json.loads(r.read()), conn.sock.version()
    finally:
        conn.close()


def plain_http_reply(port: int) -> bytes:
    """What a plain-http client gets back from ``port``: b'' or TLS alert bytes, never HTTP."""
    with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
        s.sendall(b'POST /dispatch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer '
                  + CAD_TOKEN.encode() + b'\r\nContent-Length: 2\r\n\r\n{}')
        out = b''
        try:
            while chunk := s.recv(4096):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


# --------------------------------------------------------------------------- core

def test_cad_intake_tls_round_trip_with_a_real_ssl_client(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    got = []
    intake = CadIntake(TokenAuth(CAD_TOKEN), got.append, port=0,
                       tls=server_tls_context(ca.cert_file, ca.key_file))
    intake.start()
    try:
        client = ssl.create_default_context(cafile=str(ca.ca_file))
        code, doc, version = post(intake.port, client, {'latitude': 38.6, 'longitude': -121.5,
                                                        'assignment_id': 'cad-1'}, CAD_TOKEN)
        assert code == 202 and doc['assignment_id'] == 'cad-1'
        assert version in ('TLSv1.2', 'TLSv1.3')
        assert (got[-1].latitude, got[-1].longitude) == (38.6, -121.5)
        assert post(intake.port, client, {'latitude': 1, 'longitude': 2}, 'x' * 20)[0] == 401
        # Plain http on the TLS port gets no HTTP answer, and nothing is accepted.
        assert not plain_http_reply(intake.port).startswith(b'HTTP/')
        # A client that only speaks TLS 1.1 is refused by the server.
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.set_ciphers('DEFAULT:@SECLEVEL=0')
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError, match='PROTOCOL_VERSION|protocol version'):
            with socket.create_connection(('127.0.0.1', intake.port), timeout=10) as raw:
                old.wrap_socket(raw, server_hostname='127.0.0.1')
        assert intake.accepted == 1 and intake.handler_errors == 0
        # and it still serves after all of that
        assert post(intake.port, client, {'clear': True}, CAD_TOKEN)[0] == 202
    finally:
        intake.close()


def test_cad_intake_refuses_plain_http_without_the_flag(tmp_path: Path) -> None:
    with pytest.raises(DispatchError, match='allow_insecure_http'):
        CadIntake(TokenAuth(CAD_TOKEN), lambda a: None, port=0)
    ca = make_ca(tmp_path)
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)   # TLSv1: deprecated, the point
        weak.minimum_version = ssl.TLSVersion.TLSv1
    weak.load_cert_chain(ca.cert_file, ca.key_file)
    with pytest.raises(DispatchError, match='TLS 1.2'):
        CadIntake(TokenAuth(CAD_TOKEN), lambda a: None, port=0, tls=weak)
    ca.key_file.chmod(0o644)
    with pytest.raises(DispatchError, match='readable by group/others'):
        server_tls_context(ca.cert_file, ca.key_file)


def test_webhook_verifies_the_server_and_refuses_plain_http(tmp_path: Path) -> None:
    ours, theirs = make_ca(tmp_path / 'ours', 'ours'), make_ca(tmp_path / 'theirs', 'theirs')
    with pytest.raises(ValueError, match='allow_insecure_http'):
        WebhookTransport('http://127.0.0.1:9/hook')
    with pytest.raises(ValueError, match='CA file'):
        WebhookTransport('https://127.0.0.1:9/hook', ca_file=str(tmp_path / 'missing.pem'))
    ev = Event(1, 'e1', 'officer_down', {'x': 1})
    rx = Receiver(tls=ours).start()
    impostor = Receiver(tls=theirs).start()
    try:
        WebhookTransport(rx.url, ca_file=str(ours.ca_file), token=HOOK_TOKEN).send(ev)
        assert rx.got[-1]['auth'] == f'Bearer {HOOK_TOKEN}'
        # A server whose certificate our CA did not sign, and our server checked against
        # the system CAs: neither is sent the event (nor the token).
        for url, ca_file in ((impostor.url, str(ours.ca_file)), (rx.url, '')):
            with pytest.raises(DeliveryError, match='CERTIFICATE_VERIFY_FAILED'):
                WebhookTransport(url, ca_file=ca_file, token=HOOK_TOKEN).send(ev)
        # The name is checked too: the certificate is for 127.0.0.1/localhost only.
        host = socket.gethostname()
        if host not in ('localhost',) and _resolves_to_loopback(host):
            with pytest.raises(DeliveryError, match='CERTIFICATE_VERIFY_FAILED|match'):
                WebhookTransport(f'https://{host}:{rx.port}/hook',
                                 ca_file=str(ours.ca_file)).send(ev)
        assert len(rx.got) == 1 and impostor.got == []
    finally:
        rx.stop()
        impostor.stop()


def _resolves_to_loopback(host: str) -> bool:
    try:
        return socket.gethostbyname(host) == '127.0.0.1'
    except OSError:
        return False


def test_self_signed_certificate_is_kept_0600_and_reused(tmp_path: Path) -> None:
    d = tmp_path / 'tls'
    first = ensure_self_signed(d, ['127.0.0.1', 'localhost'], time.time())
    assert first.created
    assert stat.S_IMODE(first.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    again = ensure_self_signed(d, ['127.0.0.1'], time.time())
    assert not again.created and again.sha256 == first.sha256, 'a restart keeps the pin'
    # Near expiry it is renewed, and the pin changes.
    later = ensure_self_signed(d, ['127.0.0.1'], time.time() + 3649 * 86400)
    assert later.created and later.sha256 != first.sha256
    first.key_file.chmod(0o640)
    with pytest.raises(DispatchError, match='chmod 600'):
        ensure_self_signed(d, ['127.0.0.1'], time.time())


# --------------------------------------------------------------------------- node over DDS

def _bridge(ctx, tmp_path: Path, **params) -> DispatchBridgeNode:
    from rclpy.parameter import Parameter
    return DispatchBridgeNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in {
        'source': 'none', 'outbox_dir': str(tmp_path / 'outbox'), 'retry_base_s': 0.1,
        'retry_max_s': 0.5, 'webhook_timeout_s': 2.0, **params}.items()])


def test_node_cad_intake_over_tls_with_a_given_certificate(ctx, executor, tmp_path) -> None:
    ca = make_ca(tmp_path)
    node = _bridge(ctx, tmp_path, source='http', cad_port=0,
                   cad_token_file=str(secret_file(tmp_path / 'cad_token', CAD_TOKEN)),
                   tls_cert_file=str(ca.cert_file), tls_key_file=str(ca.key_file))
    executor.add_node(node)
    probe = Node('probe', context=ctx)
    executor.add_node(probe)
    dest: list[NavSatFix] = []
    probe.create_subscription(NavSatFix, 'dispatch/destination', dest.append, LATCHED_QOS)
    client = ssl.create_default_context(cafile=str(ca.ca_file))
    code, _, _ = post(node._cad.port, client, {'latitude': 38.6, 'longitude': -121.5},
                      CAD_TOKEN)
    assert code == 202
    assert spin_until(executor, lambda: dest, 5.0)
    assert (dest[-1].latitude, dest[-1].longitude) == (38.6, -121.5)
    assert dest[-1].status.status == NavSatStatus.STATUS_FIX
    assert not plain_http_reply(node._cad.port).startswith(b'HTTP/')


def test_node_webhook_over_tls_with_the_ca_file(ctx, executor, tmp_path) -> None:
    """Officer down reaches an HTTPS receiver the bridge verifies with webhook_ca_file; the
    token comes from a 0600 file."""
    ca = make_ca(tmp_path)
    rx = Receiver(tls=ca).start()
    try:
        executor.add_node(_bridge(
            ctx, tmp_path, dispatch_webhook=rx.url, webhook_ca_file=str(ca.ca_file),
            webhook_token_file=str(secret_file(tmp_path / 'hook_token', HOOK_TOKEN))))
        probe = Node('probe', context=ctx)
        executor.add_node(probe)
        pub = probe.create_publisher(DiagnosticStatus, 'bodycam/alerts', LATCHED_QOS)
        pub.publish(DiagnosticStatus(
            name='alert/officer_down', level=DiagnosticStatus.ERROR, message='officer down',
            values=[KeyValue(key=k, value=v) for k, v in dict(
                alert_id='tls-1', state='raised', unit_id='unit_t', officer_id='officer-17',
                latitude='38.5816', longitude='-121.4944', stamp=repr(time.time())).items()]))
        assert spin_until(executor, lambda: rx.got, 10.0), 'not delivered over TLS'
    finally:
        rx.stop()
    assert rx.got[0]['body']['alert_id'] == 'tls-1'
    assert rx.got[0]['auth'] == f'Bearer {HOOK_TOKEN}'


def test_node_self_signed_default_logs_its_pin(start_process, ctx, executor, tmp_path) -> None:
    """source http, no certificate given, allow_insecure_http false: the embedded default
    makes a self-signed certificate in <ROS_HOME>/bodycam/cad_tls and logs its fingerprint; a
    CAD client that pins it round-trips an assignment onto the graph."""
    port, home = free_port(), tmp_path / 'roshome'
    proc = start_process(NODE, '--ros-args', '-p', 'source:=http', '-p', f'cad_port:={port}',
                         '-p', f'outbox_dir:={tmp_path / "ob"}',
                         env={'ROS_HOME': str(home), 'BODYCAM_CAD_TOKEN': CAD_TOKEN})
    tls_dir = home / 'bodycam' / 'cad_tls'
    deadline = time.monotonic() + 60
    while 'CAD intake on' not in proc.output() and time.monotonic() < deadline:
        assert proc.proc.poll() is None, proc.output()
        time.sleep(0.2)
    log = proc.output()
    assert f'CAD intake on https://127.0.0.1:{port}/dispatch' in log, log
    pin = re.search(r'SHA-256 fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})', log)
    assert pin, log
    assert stat.S_IMODE((tls_dir / 'cad_key.pem').stat().st_mode) == 0o600
    probe = Node('probe', context=ctx)
    executor.add_node(probe)
    dest: list[NavSatFix] = []
    probe.create_subscription(NavSatFix, 'dispatch/destination', dest.append, LATCHED_QOS)
    # The CAD client pins the logged fingerprint (the certificate is its own trust anchor).
    client = ssl.create_default_context(cafile=str(tls_dir / 'cad_cert.pem'))
    with socket.create_connection(('127.0.0.1', port), timeout=10) as raw, \
            client.wrap_socket(raw, server_hostname='127.0.0.1') as s:
        seen = ':'.join(f'{b:02X}' for b in hashlib.sha256(s.getpeercert(True)).digest())
    assert seen == pin.group(1)
    assert spin_until(executor, lambda: probe.count_publishers('dispatch/destination'), 20.0)
    code, _, _ = post(port, client, {'latitude': 38.6, 'longitude': -121.5}, CAD_TOKEN)
    assert code == 202
    assert spin_until(executor, lambda: dest and dest[-1].latitude == 38.6, 10.0)
    # Plain http to the embedded default is refused: no HTTP reply.
    assert not plain_http_reply(port).startswith(b'HTTP/')
    assert proc.stop() == 0, proc.output()


def test_refused_configurations_exit_2_naming_the_parameter(start_process, tmp_path) -> None:
    """Plain http without the flag, a secret file or key others can read, a secret given as a
    parameter value, half a certificate pair: each exits 2 naming what to fix."""
    ca = make_ca(tmp_path)
    loose_key = tmp_path / 'loose-key.pem'
    loose_key.write_bytes(ca.key_file.read_bytes())
    loose_key.chmod(0o644)
    cases = {
        'http webhook': (['-p', 'dispatch_webhook:=http://127.0.0.1:9/hook'],
                         'allow_insecure_http'),
        'cad token 0644': (['-p', 'source:=http', '-p', 'cad_port:=0', '-p',
                            f'cad_token_file:={secret_file(tmp_path / "t1", CAD_TOKEN, 0o644)}'],
                           'cad_token_file'),
        'webhook token 0644': (['-p', 'dispatch_webhook:=https://127.0.0.1:9/hook', '-p',
                                'webhook_token_file:='
                                f'{secret_file(tmp_path / "t2", HOOK_TOKEN, 0o644)}'],
                               'webhook_token_file'),
        'tls key 0644': (['-p', 'source:=http', '-p', 'cad_port:=0',
                          '-p', f'tls_cert_file:={ca.cert_file}',
                          '-p', f'tls_key_file:={loose_key}'], 'tls_key_file'),
        'half a pair': (['-p', 'source:=http', '-p', 'cad_port:=0',
                         '-p', f'tls_cert_file:={ca.cert_file}'], 'tls_key_file'),
        'token as parameter': (['-p', f'cad_token:={CAD_TOKEN}'], 'cad_token'),
    }
    env = {'BODYCAM_CAD_TOKEN': CAD_TOKEN}
    procs = {name: start_process(NODE, '--ros-args', '-p', f'outbox_dir:={tmp_path / name}',
                                 *args, env=env) for name, (args, _) in cases.items()}
    for name, (_, needle) in cases.items():
        p = procs[name]
        assert p.proc.wait(60) == 2, (name, p.output())
        out = p.output()
        assert needle in out, (name, out)
        assert 'Traceback' not in out, (name, out)
    assert 'chmod 600' in procs['cad token 0644'].output()
    assert 'secrets are never parameters' in procs['token as parameter'].output()


def _value_text(v) -> str:
    """Every field of a ParameterValue, as text, whatever its type."""
    if v.type == ParameterType.PARAMETER_NOT_SET:
        return ''
    return repr([v.bool_value, v.integer_value, v.double_value, v.string_value,
                 bytes(v.byte_array_value), list(v.bool_array_value),
                 list(v.integer_array_value), list(v.double_array_value),
                 list(v.string_array_value)])


def test_no_secret_in_parameters_over_dds(start_process, ctx, executor, tmp_path) -> None:
    """What `ros2 param list` / `ros2 param get` see of a running bridge with a CAD token, a
    webhook token and a TLS key: every parameter, through the node's parameter services from
    another process, and none holds a secret (only the files' paths)."""
    ca = make_ca(tmp_path)
    key_pem = ca.key_file.read_text()
    rx = Receiver(tls=ca).start()
    proc = start_process(
        NODE, '--ros-args', '-r', '__ns:=/unit_s', '-p', 'source:=http', '-p', 'cad_port:=0',
        '-p', f'cad_token_file:={secret_file(tmp_path / "cad_token", CAD_TOKEN)}',
        '-p', f'tls_cert_file:={ca.cert_file}', '-p', f'tls_key_file:={ca.key_file}',
        '-p', f'dispatch_webhook:={rx.url}', '-p', f'webhook_ca_file:={ca.ca_file}',
        '-p', f'outbox_dir:={tmp_path / "ob"}',
        env={'BODYCAM_DISPATCH_TOKEN': HOOK_TOKEN})
    try:
        probe = Node('param_probe', context=ctx)
        executor.add_node(probe)
        lister = probe.create_client(ListParameters, '/unit_s/dispatch_bridge/list_parameters')
        getter = probe.create_client(GetParameters, '/unit_s/dispatch_bridge/get_parameters')
        assert spin_until(executor, lambda: lister.service_is_ready()
                          and getter.service_is_ready(), 60.0), proc.output()
        fut = lister.call_async(ListParameters.Request(depth=0))
        assert spin_until(executor, fut.done, 10.0)
        names = list(fut.result().result.names)
        fut = getter.call_async(GetParameters.Request(names=names))
        assert spin_until(executor, fut.done, 10.0)
        values = list(fut.result().values)
    finally:
        rx.stop()
    assert len(values) == len(names) and 'cad_token_file' in names, names
    shown = dict(zip(names, map(_value_text, values)))
    assert str(ca.key_file) in shown['tls_key_file'] and 'cad_token' in shown['cad_token_file']
    secrets = {'cad token': CAD_TOKEN, 'webhook token': HOOK_TOKEN,
               'TLS key': key_pem.splitlines()[1]}
    for name, text in shown.items():
        for what, secret in secrets.items():
            assert secret not in text, f'parameter {name} holds the {what}'
    assert proc.proc.poll() is None, proc.output()
