"""Live view sessions are evidence-affecting actions: who watched, when, with which
credential (issue 10, "audit trail on the unit"). The HTTP server reports start, stop and
refusals; the live_view node signs them into the unit's audit log beside the recorder's."""
from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

from conftest import spin_until
from test_live_view import TOKEN, WEB, _get, encode_pattern

from bodycam_ros.core import keys
from bodycam_ros.core.audit import audit_path, verify_audit
from bodycam_ros.core.live import LiveServer, LiveState, LiveStream
from bodycam_ros.core.tokens import TokenAuth


class KeyTrust:
    """The one registered key, as the agency trust store would answer."""

    def __init__(self, raw: bytes, device: str) -> None:
        self.raw, self.device = raw, device

    def device_for_key(self, raw: bytes) -> str | None:
        return self.device if raw == self.raw else None


def test_server_reports_start_stop_and_refusals_without_the_secret() -> None:
    events: list[tuple[str, dict]] = []
    stream = LiveStream()
    srv = LiveServer(stream, LiveState(unit='u'), TokenAuth(TOKEN), WEB, port=0,
                     first_frame_timeout_s=1.0,
                     on_session=lambda action, **d: events.append((action, d)))
    srv.start()
    try:
        base = f'http://127.0.0.1:{srv.port}'
        frames = encode_pattern(40)
        for data, stamp, _, _ in frames[:5]:
            stream.push(data, stamp)
        conn = http.client.HTTPConnection('127.0.0.1', srv.port, timeout=5)
        conn.request('GET', '/stream.mp4', headers={'Authorization': f'Bearer {TOKEN}'})
        resp = conn.getresponse()
        assert resp.status == 200
        for data, stamp, _, _ in frames[5:]:
            stream.push(data, stamp)
        got = resp.read1(65536)
        conn.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(a == 'live_view_stop' for a, _ in events):
            stream.push(*frames[-1][:2])       # the server notices the closed socket on a write
            time.sleep(0.05)
        for _ in range(3):                      # a refused client is audited once a minute
            assert _get(base + '/stream.mp4', {'Authorization': 'Bearer wrong-0123456789'})[0] \
                == 401
    finally:
        srv.close()
    actions = [a for a, _ in events]
    assert actions.count('live_view_start') == 1 and actions.count('live_view_denied') == 1
    assert 'live_view_stop' in actions, actions
    start = dict(events)['live_view_start']
    stop = dict(events)['live_view_stop']
    assert start['credential'] == 'bearer' and start['stream'] == 'mp4'
    assert len(start['credential_sha256']) == 16 and TOKEN not in repr(events)
    assert stop['session_id'] == start['session_id'] and stop['bytes'] >= 0 and got


def test_node_signs_sessions_into_the_units_audit_log(ctx, executor, tmp_path: Path) -> None:
    from rclpy.parameter import Parameter

    from bodycam_ros.nodes.live_view_node import LiveViewNode
    signer = keys.FileSigner.create(tmp_path / 'keys', 'unit-a')
    evidence = tmp_path / 'evidence'
    evidence.mkdir(mode=0o700)
    token_file = tmp_path / 'token'
    token_file.write_text(TOKEN + '\n')
    token_file.chmod(0o600)
    node = LiveViewNode(context=ctx, parameter_overrides=[
        Parameter('port', value=0), Parameter('token_file', value=str(token_file)),
        Parameter('key_dir', value=str(tmp_path / 'keys')),
        Parameter('evidence_dir', value=str(evidence)), Parameter('device_id', value='unit-a')])
    executor.add_node(node)
    assert spin_until(executor, lambda: node.server is not None, 10)
    base = f'http://127.0.0.1:{node.server.port}'
    assert _get(base + '/', {'Authorization': 'Bearer not-the-token-0123'})[0] == 401
    assert _get(base + '/api/state', {'Authorization': f'Bearer {TOKEN}'})[0] == 200
    log = audit_path(evidence)
    assert spin_until(executor, lambda: log.exists() and log.stat().st_size > 0, 5)
    report = verify_audit(log, KeyTrust(signer.public_key_bytes(), 'unit-a'))
    assert report.ok, report.as_dict()
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [e['event'] for e in lines] == ['live_view_denied'] and TOKEN not in text
    assert lines[0]['device_id'] == 'unit-a' and lines[0]['data']['path'] == '/'
