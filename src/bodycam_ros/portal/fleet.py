"""The fleet: units that dial in over the portal link, their state, live video, alerts and
dispatch (issue 13). Protocol: :mod:`bodycam_ros.core.portal_link`.

Everything about connected units lives in the server's event loop (one ``Fleet``; no locks):
the unit's WebSocket handler updates its state, relays its fMP4 to every HTTP viewer, stores
its alerts. The database (alerts, acknowledgements, dispatches, last known state) and the
audit chain are blocking, so they run in the thread pool.

A unit streams once, whatever the number of viewers: the first viewer asks it to
(``watch on``), the portal fans each fragment out to every viewer's bounded queue, and a
viewer that falls behind skips to the next keyframe (it never slows the unit or the others).
A viewer's stream starts with the init segment, then fragments from the next keyframe.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from bodycam_ros.core import portal_link as pl

log = logging.getLogger('bodycam.portal.fleet')
_NS = uuid.UUID('0d1c3f52-9b7e-4a55-8f51-2b9e1c0a7d13')   # portal-made event ids


class FleetError(Exception):
    """A fleet request that cannot be served (the message says why); ``status`` for HTTP."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace('+00:00', 'Z')


@dataclass
class FleetConfig:
    heartbeat_s: float = 15.0          # what units are asked for (at most)
    offline_after_s: float = 45.0      # silent this long: the link is dropped
    hello_timeout_s: float = 10.0
    public_origins: tuple[str, ...] = ()
    max_viewers: int = 32              # per unit
    viewer_queue_s: float = 2.0
    viewer_queue_bytes: int = 8_000_000
    dispatch_ack_s: float = 5.0
    dispatch_queue_s: float = 600.0    # an offline unit gets a dispatch this long after


class RelayViewer:
    """One HTTP viewer's bounded queue; starts at (and resyncs to) a keyframe."""

    def __init__(self, max_queue_s: float, max_queue_bytes: int) -> None:
        self._max_s, self._max_bytes = max_queue_s, max_queue_bytes
        self._q: collections.deque[tuple[bytes, float]] = collections.deque()
        self._bytes = 0
        self._event = asyncio.Event()
        self.init: bytes | None = None
        self.generation: int | None = None
        self._waiting_key = True
        self.closed = False
        self.resyncs = 0
        self.sent = 0

    def start(self, generation: int, init: bytes) -> None:
        if self.generation is None:
            self.generation, self.init = generation, init
            self._event.set()
        elif generation != self.generation:
            self.close()       # a new init segment mid-stream: the player reloads

    def offer(self, f: pl.VideoFrame) -> None:
        if self.closed or f.generation != self.generation:
            return
        if self._waiting_key:
            if not f.keyframe:
                return
            self._waiting_key = False
        elif self._q and (f.stamp - self._q[0][1] > self._max_s
                          or self._bytes + len(f.data) > self._max_bytes):
            self._q.clear()
            self._bytes = 0
            self.resyncs += 1
            if not f.keyframe:
                self._waiting_key = True
                return
        self._q.append((f.data, f.stamp))
        self._bytes += len(f.data)
        self._event.set()

    def close(self) -> None:
        self.closed = True
        self._event.set()

    async def wait_init(self, timeout_s: float) -> bytes | None:
        try:
            await asyncio.wait_for(self._wait(lambda: self.init is not None), timeout_s)
        except asyncio.TimeoutError:
            return None
        return None if self.closed else self.init

    async def _wait(self, pred: Callable[[], bool]) -> None:
        while not pred() and not self.closed:
            self._event.clear()
            await self._event.wait()

    async def take(self) -> bytes | None:
        """Everything queued, joined; None once closed."""
        await self._wait(lambda: bool(self._q))
        if self.closed:
            return None
        out = b''.join(d for d, _ in self._q)
        self._q.clear()
        self._bytes = 0
        self.sent += len(out)
        return out


@dataclass
class UnitLink:
    """One authenticated connection."""
    device_id: str
    ws: WebSocket
    client: str
    connected_at: float
    officer_id: str = ''
    state: pl.UnitState = field(default_factory=pl.UnitState)
    last_seen: float = 0.0
    viewers: list[RelayViewer] = field(default_factory=list)
    init: bytes | None = None
    generation: int | None = None
    codec: str = ''
    streaming: bool = False
    bytes_in: int = 0
    video_bytes_in: int = 0
    fragments_in: int = 0
    acks: dict[str, asyncio.Future] = field(default_factory=dict)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, msg: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send_text(pl.encode(msg))


class Fleet:
    """Units, live relay, alerts and dispatch for one portal process.

    Args:
        db: the portal's :class:`~bodycam_ros.portal.db.Database`.
        trust: returns the current trust store (reloaded when ``devices.json`` changes).
        audit: ``audit(action, client=, user=, incident_id=, status=, **details)`` (blocking).
        forward: ``forward(kind, event_id, body)`` puts an event in the dispatch webhook
            outbox (blocking), or None when no ``--dispatch-webhook`` was given.
    """

    def __init__(self, db: Any, trust: Callable[[], Any], audit: Callable[..., None],
                 cfg: FleetConfig | None = None,
                 forward: Callable[[str, str, dict[str, Any]], None] | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.db, self.trust, self.audit, self.forward = db, trust, audit, forward
        self.cfg = cfg or FleetConfig()
        self.now = now
        self.links: dict[str, UnitLink] = {}
        self.origins: set[str] = {pl.origin_of(o) for o in self.cfg.public_origins}
        self.pending_dispatch: dict[str, tuple[dict[str, Any], float]] = {}
        self.refused = 0
        self._persisted: dict[str, float] = {}

    # ================================================================ the unit's WebSocket
    def _expected_origins(self, ws: WebSocket) -> set[str]:
        """This portal as the unit must have dialed it: the address the connection came in
        on (never the Host header, which a relay sets), and any configured public URL."""
        out = set(self.origins)
        server = ws.scope.get('server')
        if server:
            host, port = server[0], server[1]
            scheme = 'https' if ws.scope.get('scheme') in ('wss', 'https') else 'http'
            host = f'[{host}]' if ':' in str(host) else host
            out.add(pl.origin_of(f'{scheme}://{host}:{port}'))
        return out

    async def link(self, ws: WebSocket) -> None:
        """``/api/link``: challenge, verify against the trust store, then serve the unit."""
        client = ws.client.host if ws.client else '?'
        wanted = ws.scope.get('subprotocols') or []
        await ws.accept(subprotocol=pl.SUBPROTOCOL if pl.SUBPROTOCOL in wanted else None)
        nonce = pl.new_nonce()
        await ws.send_text(pl.encode({'type': 'challenge', 'v': pl.VERSION,
                                      'nonce': nonce.hex()}))
        try:
            raw = await asyncio.wait_for(ws.receive_text(), self.cfg.hello_timeout_s)
            hello = pl.Hello.parse(pl.decode(raw))
        except asyncio.TimeoutError:
            return await self._refuse(ws, client, None, pl.CLOSE_TIMEOUT, 'no hello in time')
        except (pl.LinkError, KeyError) as exc:
            return await self._refuse(ws, client, None, pl.CLOSE_PROTOCOL, str(exc))
        except (WebSocketDisconnect, RuntimeError):
            return
        if hello.origin not in self._expected_origins(ws):
            return await self._refuse(ws, client, hello, pl.CLOSE_ORIGIN,
                                      f'signed for {hello.origin}, this portal is '
                                      f'{", ".join(sorted(self._expected_origins(ws)))}')
        from bodycam_ros.core.trust import TrustError
        try:
            dev = self.trust().verify_signature(
                hello.device_id, pl.auth_message(nonce, hello.device_id, hello.origin),
                hello.signature)
        except (TrustError, pl.LinkError) as exc:
            return await self._refuse(ws, client, hello, pl.CLOSE_UNAUTHORIZED, str(exc))
        now = self.now()
        unit = UnitLink(hello.device_id, ws, client, now, hello.officer_id, last_seen=now,
                        state=pl.UnitState(officer_id=hello.officer_id))
        old = self.links.get(unit.device_id)
        self.links[unit.device_id] = unit
        if old is not None:
            await self._close_quietly(old.ws, pl.CLOSE_REPLACED, 'the unit connected again')
        await run_in_threadpool(self.audit, 'unit_connected', client=client,
                                status=101, device_id=unit.device_id,
                                key_fingerprint=dev.fingerprint, officer_id=hello.officer_id,
                                software=hello.software, origin=hello.origin)
        try:
            await ws.send_text(pl.encode({'type': 'welcome', 'heartbeat_s': self.cfg.heartbeat_s,
                                          'server_time': now, 'watch': False}))
            await self._deliver_pending_dispatch(unit)
            await self._serve(unit)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            await self._gone(unit)

    async def _refuse(self, ws: WebSocket, client: str, hello: pl.Hello | None, code: int,
                      reason: str) -> None:
        self.refused += 1
        await run_in_threadpool(self.audit, 'unit_refused', client=client, status=code,
                                device_id=hello.device_id if hello else None,
                                key_id=hello.key_id if hello else None, reason=reason)
        log.warning('portal link from %s refused (%s): %s', client,
                    hello.device_id if hello else '?', reason)
        await self._close_quietly(ws, code, reason)

    @staticmethod
    async def _close_quietly(ws: WebSocket, code: int, reason: str) -> None:
        try:
            await ws.close(code, reason.encode()[:120].decode('utf-8', 'ignore'))
        except (RuntimeError, OSError):
            pass

    async def _serve(self, unit: UnitLink) -> None:
        while True:
            try:
                msg = await asyncio.wait_for(unit.ws.receive(), self.cfg.offline_after_s)
            except asyncio.TimeoutError:
                await self._close_quietly(unit.ws, pl.CLOSE_TIMEOUT,
                                          f'silent for {self.cfg.offline_after_s:g} s')
                return
            if msg['type'] == 'websocket.disconnect':
                return
            unit.last_seen = self.now()
            if msg.get('bytes') is not None:
                unit.bytes_in += len(msg['bytes'])
                self._video(unit, msg['bytes'])
                continue
            text = msg.get('text') or ''
            unit.bytes_in += len(text)
            try:
                await self._message(unit, pl.decode(text))
            except pl.LinkError as exc:
                log.warning('unit %s: bad message: %s', unit.device_id, exc)

    async def _message(self, unit: UnitLink, m: dict[str, Any]) -> None:
        kind = m['type']
        if kind == 'state':
            old = unit.state
            unit.state = pl.UnitState.parse(m)
            unit.officer_id = unit.state.officer_id or unit.officer_id
            if old.recorder_state != unit.state.recorder_state or \
                    self.now() - self._persisted.get(unit.device_id, 0) > 10.0:
                await run_in_threadpool(self._persist, unit, True)
        elif kind == 'alert':
            await self._alert(unit, pl.AlertMsg.parse(m))
        elif kind == 'stream':
            unit.streaming = bool(m.get('on'))
            if not unit.streaming:
                unit.init = None
            else:
                unit.codec = str(m.get('codec', ''))[:64]
        elif kind == 'dispatch_ack':
            fut = unit.acks.pop(str(m.get('id')), None)
            if fut is not None and not fut.done():
                fut.set_result(self.now())
        elif kind != 'hb':
            raise pl.LinkError(f'unknown message type {kind!r}')

    def _video(self, unit: UnitLink, data: bytes) -> None:
        try:
            f = pl.unpack_video(data)
        except pl.LinkError as exc:
            log.warning('unit %s: %s', unit.device_id, exc)
            return
        unit.video_bytes_in += len(data)
        if f.kind == pl.VIDEO_INIT:
            unit.init, unit.generation, unit.streaming = f.data, f.generation, True
            for v in list(unit.viewers):
                v.start(f.generation, f.data)
            return
        unit.fragments_in += 1
        for v in unit.viewers:
            v.offer(f)

    async def _gone(self, unit: UnitLink) -> None:
        for v in unit.viewers:
            v.close()
        for fut in unit.acks.values():
            if not fut.done():
                fut.cancel()
        if self.links.get(unit.device_id) is not unit:
            return            # replaced by a newer connection of the same unit
        del self.links[unit.device_id]
        now = self.now()
        await run_in_threadpool(self._persist, unit, False)
        await run_in_threadpool(self.audit, 'unit_disconnected', client=unit.client,
                                device_id=unit.device_id, recording=unit.state.recording,
                                connected_s=round(now - unit.connected_at, 1))
        if unit.state.recording:
            a = pl.AlertMsg(f'offline-{unit.device_id}-{int(now * 1000)}',
                            'offline_while_recording', 'raised', now, unit.officer_id,
                            unit.state.position, unit.state.incident_id,
                            'the unit went offline while recording')
            await self._alert(unit, a)

    # ================================================================ alerts
    async def _alert(self, unit: UnitLink, a: pl.AlertMsg) -> None:
        received = self.now()
        row, new = await run_in_threadpool(self.store_alert, unit.device_id, a, received)
        if not new:
            return
        log.warning('alert %s %s from %s (%s)', a.kind, a.state, unit.device_id, a.officer_id)
        await run_in_threadpool(self.audit, 'alert_' + a.state, client=unit.client,
                                incident_id=a.incident_id or None, alert_id=row['id'],
                                device_id=unit.device_id, kind=a.kind,
                                latency_s=round(received - a.t, 3))
        if self.forward is not None:
            await run_in_threadpool(self._forward, unit.device_id, a)

    def _forward(self, device_id: str, a: pl.AlertMsg) -> None:
        pos = {'latitude': a.position.latitude, 'longitude': a.position.longitude} \
            if a.position else None
        if a.kind == 'officer_down':
            # The same document and event id the unit's dispatch bridge sends, so a CAD that
            # hears both drops the second by its Idempotency-Key.
            from bodycam_ros.core.dispatch import EventPolicy
            values = {'alert_id': a.alert_id, 'state': a.state, 'stamp': repr(a.t),
                      'unit_id': device_id, 'officer_id': a.officer_id,
                      'incident_id': a.incident_id,
                      'latitude': repr(pos['latitude']) if pos else '',
                      'longitude': repr(pos['longitude']) if pos else ''}
            out = EventPolicy(device_id, a.officer_id, clock=self.now).on_alert(values)[0]
            event_id, kind, body = out.event_id, out.kind, dict(out.body)
        else:
            kind = 'unit_offline' if a.kind == 'offline_while_recording' else a.kind
            event_id = str(uuid.uuid5(_NS, f'{device_id}/{a.alert_id}/{a.state}'))
            body = {'unit_id': device_id, 'officer_id': a.officer_id, 'time': a.t,
                    'time_iso': _iso(a.t), 'incident_id': a.incident_id,
                    'queued_at': self.now(), 'position': pos, 'state': a.state,
                    'alert_id': a.alert_id, 'message': a.message}
        body['source'] = 'portal'
        self.forward(kind, event_id, body)

    def store_alert(self, device_id: str, a: pl.AlertMsg,
                    received: float) -> tuple[dict[str, Any], bool]:
        """Insert an alert or record its new unit state; (row, whether anything changed)."""
        with self.db.transaction(exclusive=True):
            got = self.db.one('SELECT alert_id, unit_state FROM fleet_alerts WHERE '
                              'device_id = ? AND source_id = ?', (device_id, a.alert_id))
            if got is not None:
                if got[1] == a.state:
                    return self.alert_row(got[0]), False
                self.db.execute('UPDATE fleet_alerts SET unit_state = ?, updated_at = ? '
                                'WHERE alert_id = ?', (a.state, received, got[0]))
                return self.alert_row(got[0]), True
            aid = 'al-' + secrets.token_hex(8)
            self.db.execute(
                'INSERT INTO fleet_alerts (alert_id, device_id, source_id, kind, unit_state, '
                'officer_id, latitude, longitude, raised_at, received_at, incident_id, '
                'message, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                (aid, device_id, a.alert_id, a.kind, a.state, a.officer_id,
                 a.position.latitude if a.position else None,
                 a.position.longitude if a.position else None, a.t, received, a.incident_id,
                 a.message, received))
            return self.alert_row(aid), True

    _ALERT_COLUMNS = ('alert_id, device_id, source_id, kind, unit_state, officer_id, latitude, '
                      'longitude, raised_at, received_at, incident_id, message, ack_by, ack_at, '
                      'updated_at')

    @staticmethod
    def _alert_dict(r: tuple[Any, ...]) -> dict[str, Any]:
        return {'id': r[0], 'device_id': r[1], 'unit': r[1], 'source_id': r[2], 'kind': r[3],
                'unit_state': r[4], 'officer_id': r[5],
                'position': {'latitude': r[6], 'longitude': r[7]} if r[6] is not None else None,
                'time': r[8], 'time_iso': _iso(r[8]), 'received_at': r[9],
                'latency_s': round(r[9] - r[8], 3), 'incident_id': r[10], 'message': r[11],
                'status': 'acknowledged' if r[12] else 'open', 'ack_by': r[12],
                'ack_at': r[13], 'ack_at_iso': _iso(r[13]), 'updated_at': r[14]}

    def alert_row(self, alert_id: str) -> dict[str, Any]:
        r = self.db.one(f'SELECT {self._ALERT_COLUMNS} FROM fleet_alerts WHERE alert_id = ?',
                        (alert_id,))
        if r is None:
            raise FleetError(404, f'no alert {alert_id!r}')
        return self._alert_dict(r)

    def list_alerts(self, status: str = '', device_id: str = '',
                    limit: int = 200) -> list[dict[str, Any]]:
        conds, params = [], []
        if status == 'open':
            conds.append('ack_by IS NULL')
        elif status == 'acknowledged':
            conds.append('ack_by IS NOT NULL')
        elif status not in ('', 'all'):
            raise FleetError(400, f'status={status!r}: open, acknowledged or all expected')
        if device_id:
            conds.append('device_id = ?')
            params.append(device_id)
        where = (' WHERE ' + ' AND '.join(conds)) if conds else ''
        rows = self.db.query(f'SELECT {self._ALERT_COLUMNS} FROM fleet_alerts{where} '
                             'ORDER BY received_at DESC LIMIT ?', [*params, int(limit)])
        return [self._alert_dict(r) for r in rows]

    def ack_alert(self, alert_id: str, user: str) -> dict[str, Any]:
        with self.db.transaction(exclusive=True):
            row = self.alert_row(alert_id)
            if row['ack_by']:
                raise FleetError(409, f'alert {alert_id} was acknowledged by {row["ack_by"]} '
                                 f'at {row["ack_at_iso"]}')
            self.db.execute('UPDATE fleet_alerts SET ack_by = ?, ack_at = ? WHERE alert_id = ?',
                            (user, self.now(), alert_id))
        return self.alert_row(alert_id)

    # ================================================================ units
    def _persist(self, unit: UnitLink, online: bool) -> None:
        now = self.now()
        self._persisted[unit.device_id] = now
        st = json.dumps({**unit.state.message(), 'online': online})
        self.db.execute(
            'INSERT INTO fleet_units (device_id, officer_id, first_seen, last_seen, state) '
            'VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET '
            'officer_id = excluded.officer_id, last_seen = excluded.last_seen, '
            'state = excluded.state', (unit.device_id, unit.officer_id, now, unit.last_seen, st))

    def units(self) -> list[dict[str, Any]]:
        """Every registered unit and every unit ever seen, online first, then by id."""
        seen = {r[0]: r for r in self.db.query(
            'SELECT device_id, officer_id, first_seen, last_seen, state FROM fleet_units')}
        try:
            registered = {d.device_id: d for d in self.trust().devices}
        except Exception:  # noqa: BLE001 - an unreadable trust store still lists who is online
            registered = {}
        out = []
        for did in sorted(set(seen) | set(registered) | set(self.links)):
            link = self.links.get(did)
            dev = registered.get(did)
            if link is not None:
                st, officer, last = link.state, link.officer_id, link.last_seen
            elif did in seen:
                r = seen[did]
                try:
                    st = pl.UnitState.parse(json.loads(r[4]))
                except (ValueError, pl.LinkError):
                    st = pl.UnitState()
                officer, last = r[1], r[3]
            else:
                st, officer, last = pl.UnitState(), '', None
            pos = st.position
            out.append({
                'device_id': did, 'officer_id': officer or st.officer_id,
                'online': link is not None, 'last_seen': last, 'last_seen_iso': _iso(last),
                'connected_since': link.connected_at if link else None,
                'registered': bool(dev is not None and dev.active),
                'recording': st.recording, 'recorder_state': st.recorder_state,
                'incident': st.incident_id or None, 'triggers': list(st.triggers),
                'faults': list(st.faults),
                'position': {'latitude': pos.latitude, 'longitude': pos.longitude,
                             'stamp': pos.stamp} if pos else None,
                'storage': {'free_bytes': st.free_bytes},
                'streaming': bool(link and link.streaming),
                'viewers': len(link.viewers) if link else 0,
                'link': {'client': link.client, 'bytes_in': link.bytes_in,
                         'video_bytes_in': link.video_bytes_in,
                         'fragments_in': link.fragments_in,
                         'viewer_bytes_out': sum(v.sent for v in link.viewers)}
                if link else None,
                'live': f'/api/units/{did}/live.mp4' if link else None,
            })
        out.sort(key=lambda u: (not u['online'], u['device_id']))
        return out

    # ================================================================ live relay
    def live_check(self, device_id: str) -> UnitLink:
        link = self.links.get(device_id)
        if link is None:
            raise FleetError(404 if device_id not in {u['device_id'] for u in self.units()}
                             else 409, f'unit {device_id!r} is not connected')
        if len(link.viewers) >= self.cfg.max_viewers:
            raise FleetError(429, f'{self.cfg.max_viewers} viewers already watch {device_id}')
        return link

    async def live(self, device_id: str) -> AsyncIterator[bytes]:
        """The relayed fMP4: init segment, then fragments from the next keyframe."""
        link = self.links.get(device_id)
        if link is None:
            return
        v = RelayViewer(self.cfg.viewer_queue_s, self.cfg.viewer_queue_bytes)
        link.viewers.append(v)
        if link.init is not None and link.generation is not None:
            v.start(link.generation, link.init)
        try:
            if len(link.viewers) == 1:
                await link.send({'type': 'watch', 'on': True})
            init = await v.wait_init(15.0)
            if init is None:
                return
            yield init
            while True:
                chunk = await v.take()
                if chunk is None:
                    return
                yield chunk
        finally:
            v.close()
            if v in link.viewers:
                link.viewers.remove(v)
            if not link.viewers and self.links.get(device_id) is link:
                # A task of its own: this generator may be finishing under cancellation
                # (the viewer went away), where an await here would be cancelled too.
                asyncio.get_running_loop().create_task(self._unwatch(link))

    async def _unwatch(self, link: UnitLink) -> None:
        if link.viewers:
            return
        try:
            await link.send({'type': 'watch', 'on': False})
        except (RuntimeError, OSError, WebSocketDisconnect):
            pass

    # ================================================================ dispatch
    async def dispatch(self, device_id: str, latitude: float | None, longitude: float | None,
                       by: str, clear: bool = False) -> dict[str, Any]:
        d = pl.DispatchMsg('d-' + secrets.token_hex(8), latitude, longitude, clear, by)
        msg = d.message()
        now = self.now()
        link = self.links.get(device_id)
        await run_in_threadpool(self._store_dispatch, device_id, d, now)
        if link is None:
            self.pending_dispatch[device_id] = (msg, now + self.cfg.dispatch_queue_s)
            return {'id': d.dispatch_id, 'device_id': device_id, 'delivered': False,
                    'queued': True, 'expires_at': now + self.cfg.dispatch_queue_s}
        acked = await self._send_dispatch(link, msg)
        return {'id': d.dispatch_id, 'device_id': device_id, 'delivered': acked is not None,
                'queued': False, 'acked_at': acked}

    async def _send_dispatch(self, link: UnitLink, msg: dict[str, Any]) -> float | None:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        link.acks[msg['id']] = fut
        try:
            await link.send(msg)
            acked = await asyncio.wait_for(fut, self.cfg.dispatch_ack_s)
        except (asyncio.TimeoutError, asyncio.CancelledError, RuntimeError, OSError):
            return None
        finally:
            link.acks.pop(msg['id'], None)
        await run_in_threadpool(self.db.execute, 'UPDATE fleet_dispatches SET delivered_at = ? '
                                'WHERE dispatch_id = ?', (acked, msg['id']))
        return acked

    async def _deliver_pending_dispatch(self, unit: UnitLink) -> None:
        got = self.pending_dispatch.pop(unit.device_id, None)
        if got is not None and got[1] > self.now():
            asyncio.get_running_loop().create_task(self._send_dispatch(unit, got[0]))

    def _store_dispatch(self, device_id: str, d: pl.DispatchMsg, now: float) -> None:
        self.db.execute('INSERT INTO fleet_dispatches (dispatch_id, device_id, latitude, '
                        'longitude, clear, sent_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
                        (d.dispatch_id, device_id, d.latitude, d.longitude, int(d.clear), d.by,
                         now))

    def close(self) -> None:
        for link in self.links.values():
            for v in link.viewers:
                v.close()
