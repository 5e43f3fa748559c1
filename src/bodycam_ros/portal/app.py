"""The portal's web application (Starlette): the JSON API, the pages, the guard on both.

See ``portal/__init__.py`` for the API. Every endpoint but the login page, static code and
``POST /api/login`` needs a session (401 otherwise); every state-changing request needs the
session's CSRF token in ``X-CSRF-Token`` (403); each endpoint names the permission it needs
(403, audited). Handlers are plain functions run in Starlette's thread pool: the database and
the decryption are blocking.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (FileResponse, HTMLResponse, JSONResponse, PlainTextResponse,
                                 Response, StreamingResponse)
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from bodycam_ros.portal import audit, auth
from bodycam_ros.portal.bucket import Bucket
from bodycam_ros.portal.db import (SCHEMA_VERSION, Database, open_database,
                                   recount_incidents)
from bodycam_ros.portal.evidence import EvidenceCache, PlaybackError
from bodycam_ros.portal.fleet import Fleet, FleetConfig, FleetError
from bodycam_ros.portal.indexer import Indexer

log = logging.getLogger('bodycam.portal')
WEB = Path(__file__).parent / 'web'
COOKIE = 'bodycam_session'
SAFE = frozenset({'GET', 'HEAD', 'OPTIONS'})
#: Media requests (video, proxy, sensors) are audited once per session, incident and kind
#: in this many seconds: a player's Range requests are one viewing, not hundreds.
MEDIA_AUDIT_S = 300.0
PAGES = {'/': 'index.html', '/incident': 'incident.html', '/audit': 'audit.html',
         '/users': 'users.html', '/fleet': 'fleet.html'}
_ITEM_COLUMNS = ('incident_id, device_id, officer_id, sequence, start_time, end_time, '
                 'triggers, verified, problems, has_proxy, present, sort_time')
#: ``page=`` skips at most this many rows (deeper: the ``next`` cursor, which costs the same
#: at any depth); a filtered total is counted exactly up to COUNT_EXACT_MAX matches.
MAX_OFFSET = 10_000
COUNT_EXACT_MAX = 10_000


def encode_cursor(sort_time: float, incident_id: str) -> str:
    """An opaque position in the list: the last row's (sort_time, incident_id)."""
    raw = json.dumps([sort_time, incident_id], separators=(',', ':')).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip('=')


def decode_cursor(value: str, name: str) -> tuple[float, str]:
    try:
        got = json.loads(base64.urlsafe_b64decode(value + '=' * (-len(value) % 4)))
        if isinstance(got, list) and len(got) == 2 and isinstance(got[1], str) and \
                isinstance(got[0], (int, float)) and not isinstance(got[0], bool):
            return float(got[0]), got[1]
    except (ValueError, TypeError):
        pass
    raise ApiError(400, f'{name}={value[:80]!r}: a cursor from a list answer\'s next/prev '
                   'expected')


@dataclass
class PortalConfig:
    bucket: str
    agency_dir: Path
    database: str = ''
    state_dir: Path = Path('var/portal')
    poll_s: float = 1.0
    secure_cookies: bool = False
    s3: dict[str, Any] = field(default_factory=dict)
    #: The fleet (issue 13): units dialing in on /api/link, alerts forwarded to this webhook
    #: (core.outbox format, durable outbox in STATE/dispatch_outbox) when given.
    fleet: FleetConfig = field(default_factory=FleetConfig)
    dispatch_webhook: str = ''
    webhook_token_file: str = ''
    webhook_ca_file: str = ''
    allow_insecure_webhook: bool = False
    #: The incident list: ``page=`` skips at most this many rows; a filtered total is exact
    #: up to this many matches, estimated above.
    max_offset: int = MAX_OFFSET
    count_exact_max: int = COUNT_EXACT_MAX


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b'{}')
    except ValueError as exc:
        raise ApiError(400, f'body is not JSON: {exc}') from exc
    if not isinstance(data, dict):
        raise ApiError(400, 'body must be a JSON object')
    return data


def _time_arg(value: str, name: str, end: bool) -> float:
    """UNIX seconds from a number, a date (``end``: the day after) or an ISO date-time."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        if len(value) == 10:
            d = datetime.strptime(value, '%Y-%m-%d').replace(tzinfo=timezone.utc)
            return (d + timedelta(days=1) if end else d).timestamp()
        dt = datetime.fromisoformat(value.replace('Z', '+00:00'))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    except ValueError as exc:
        raise ApiError(400, f'{name}={value!r}: a date (YYYY-MM-DD), an ISO date-time or UNIX '
                       'seconds expected') from exc


def _int_arg(q: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(name)
    if raw in (None, ''):
        return default
    try:
        v = int(raw)
    except ValueError as exc:
        raise ApiError(400, f'{name}={raw!r}: an integer expected') from exc
    if not lo <= v <= hi:
        raise ApiError(400, f'{name}={v}: {lo}..{hi} expected')
    return v


def _iso(t: Any) -> str | None:
    if not isinstance(t, (int, float)):
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace('+00:00', 'Z')


class Portal:
    """Everything one portal process holds: database, bucket, indexer, cache, limits."""

    def __init__(self, cfg: PortalConfig, now: Callable[[], float] = time.time) -> None:
        self.cfg, self.now = cfg, now
        state = Path(cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db: Database = open_database(cfg.database or str(state / 'portal.db'))
        recount_incidents(self.db)    # counts right even after rows were loaded around us
        self.bucket = Bucket(cfg.bucket, **cfg.s3)
        self.indexer = Indexer(self.db, self.bucket, Path(cfg.agency_dir), cfg.poll_s)
        self.indexer.trust()          # fail at start on an unreadable trust store
        self.cache = EvidenceCache(state, self.bucket, Path(cfg.agency_dir))
        self.limit = auth.RateLimit()
        self.admin_password = auth.ensure_admin(self.db, now())
        self._media_seen: dict[tuple[str, str, str], float] = {}
        self.audit_check = self.check_audit()
        self.exports = state / 'exports'
        self.exports.mkdir(exist_ok=True, mode=0o700)
        self.courier = None
        forward = self._webhook(state) if cfg.dispatch_webhook else None
        self.fleet = Fleet(self.db, self.indexer.trust, self._fleet_audit, cfg.fleet, forward,
                           now)

    # -- the fleet (issue 13) ------------------------------------------------------------
    def _webhook(self, state: Path) -> Callable[[str, str, dict[str, Any]], None]:
        """Alerts to the dispatch webhook through the same durable outbox and courier the
        unit's dispatch bridge uses (officer-down first, in order, retried, idempotent)."""
        from bodycam_ros.core.outbox import Backoff, Courier, Outbox, WebhookTransport
        from bodycam_ros.core.tokens import load_token
        token = load_token(self.cfg.webhook_token_file, env_var='BODYCAM_DISPATCH_TOKEN',
                           create=False, default_name='dispatch_token') \
            if self.cfg.webhook_token_file or os.environ.get('BODYCAM_DISPATCH_TOKEN') else ''
        transport = WebhookTransport(self.cfg.dispatch_webhook, token=token,
                                     ca_file=self.cfg.webhook_ca_file,
                                     allow_insecure_http=self.cfg.allow_insecure_webhook,
                                     user_agent='bodycam-portal/1')
        self.outbox = Outbox(state / 'dispatch_outbox')
        self.courier = Courier(self.outbox, transport, Backoff(0.25, 10.0))

        def forward(kind: str, event_id: str, body: dict[str, Any]) -> None:
            self.outbox.put(event_id, kind, body)
        return forward

    def _fleet_audit(self, action: str, *, client: str | None = None, user: str | None = None,
                     incident_id: str | None = None, status: int | None = None,
                     **details: Any) -> None:
        audit.append(self.db, self.now(), action, user=user, incident_id=incident_id,
                     client=client, status=status, **details)

    def fleet_units(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        return JSONResponse(self.fleet.units())

    def fleet_alerts(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        q = request.query_params
        try:
            return JSONResponse(self.fleet.list_alerts(
                q.get('status', ''), q.get('unit', ''), _int_arg(q, 'limit', 200, 1, 5000)))
        except FleetError as exc:
            raise ApiError(exc.status, str(exc)) from exc

    def fleet_ack(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        aid = request.path_params['alert_id']
        try:
            row = self.fleet.ack_alert(aid, sess.user.name)
        except FleetError as exc:
            self.audit(request, 'alert_ack_refused', user=sess.user.name, status=exc.status,
                       alert_id=aid, reason=str(exc))
            raise ApiError(exc.status, str(exc)) from exc
        self.audit(request, 'alert_ack', user=sess.user.name, status=200, alert_id=aid,
                   incident_id=row['incident_id'] or None, device_id=row['device_id'],
                   kind=row['kind'], latency_s=round(row['ack_at'] - row['received_at'], 3))
        return JSONResponse(row)

    def fleet_live(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        did = request.path_params['device_id']
        try:
            link = self.fleet.live_check(did)
        except FleetError as exc:
            raise ApiError(exc.status, str(exc)) from exc
        self.audit(request, 'live_view', user=sess.user.name, status=200, device_id=did,
                   incident_id=link.state.incident_id or None, viewers=len(link.viewers) + 1)
        return StreamingResponse(self.fleet.live(did), media_type='video/mp4',
                                 headers={'Cache-Control': 'private, no-store',
                                          'X-Content-Type-Options': 'nosniff'})

    def fleet_dispatch(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        import anyio.from_thread
        did = request.path_params['device_id']
        data = _json_body(body) if request.method == 'POST' else {'clear': True}
        clear = bool(data.get('clear'))
        lat, lon = data.get('latitude'), data.get('longitude')
        if not clear:
            for name, v, lim in (('latitude', lat, 90.0), ('longitude', lon, 180.0)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                        not -lim <= float(v) <= lim:
                    raise ApiError(400, f'{name}={v!r}: a number in [-{lim:g}, {lim:g}] '
                                   'expected')
        if did not in {u['device_id'] for u in self.fleet.units()}:
            raise ApiError(404, f'no unit {did!r}')
        out = anyio.from_thread.run(self.fleet.dispatch, did,
                                    None if clear else float(lat), None if clear else float(lon),
                                    sess.user.name, clear)
        self.audit(request, 'dispatch', user=sess.user.name, status=200, device_id=did,
                   dispatch_id=out['id'], latitude=None if clear else float(lat),
                   longitude=None if clear else float(lon), clear=clear,
                   delivered=out['delivered'], queued=out['queued'])
        return JSONResponse(out, 200 if out['delivered'] else 202)

    # -- the audit chain ---------------------------------------------------------------
    def check_audit(self) -> audit.ChainCheck:
        """The chain, and that it still holds the head recorded at the last check (rows cut
        from the end leave a valid, shorter chain; this record catches that)."""
        chk = audit.check_chain(self.db)
        row = self.db.one("SELECT value FROM settings WHERE key = 'audit_head'")
        if row is not None:
            seen = json.loads(row[0])
            got = self.db.one('SELECT hash FROM audit WHERE seq = ?', (seen['seq'],))
            if got is None:
                chk.problems.append(f'the chain ends before seq {seen["seq"]}, which the '
                                    'portal recorded earlier: rows were cut')
            elif got[0] != seen['hash']:
                chk.problems.append(f'seq {seen["seq"]} differs from the row the portal '
                                    'recorded earlier')
        if chk.ok and chk.rows:
            last = self.db.one('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1')
            with self.db.transaction():
                self.db.execute("DELETE FROM settings WHERE key = 'audit_head'")
                self.db.execute("INSERT INTO settings (key, value) VALUES ('audit_head', ?)",
                                (json.dumps({'seq': int(last[0]), 'hash': last[1]}),))
        self.audit_check = chk
        return chk

    def audit(self, request: Request | None, action: str, *, user: str | None = None,
              incident_id: str | None = None, status: int | None = None,
              **details: Any) -> None:
        client = request.client.host if request is not None and request.client else None
        audit.append(self.db, self.now(), action, user=user, incident_id=incident_id,
                     client=client, status=status, **details)

    def _media_audit(self, request: Request, sess: auth.Session, iid: str, kind: str) -> None:
        key = (sess.token_sha256, iid, kind)
        now = self.now()
        if now - self._media_seen.get(key, -1e18) < MEDIA_AUDIT_S:
            return
        self._media_seen[key] = now
        self.audit(request, kind, user=sess.user.name, incident_id=iid, status=200,
                   range=request.headers.get('range'))

    # -- the guard ---------------------------------------------------------------------
    def endpoint(self, permission: str | None,
                 fn: Callable[..., Response]) -> Callable[[Request], Any]:
        """An async Starlette endpoint that checks session, CSRF and ``permission``, then
        runs ``fn(request, session, body)`` in the thread pool."""
        async def handle(request: Request) -> Response:
            body = b'' if request.method in SAFE else await request.body()
            return await run_in_threadpool(self._guarded, request, permission, fn, body)
        return handle

    def _guarded(self, request: Request, permission: str | None,
                 fn: Callable[..., Response], body: bytes) -> Response:
        path = request.url.path
        sess = auth.session_for(self.db, request.cookies.get(COOKIE), self.now())
        if sess is None:
            self.audit(request, 'unauthenticated', status=401, method=request.method, path=path)
            return JSONResponse({'error': 'login required'}, 401)
        if request.method not in SAFE and \
                not auth.csrf_ok(sess, request.headers.get('x-csrf-token')):
            self.audit(request, 'csrf_rejected', user=sess.user.name, status=403,
                       method=request.method, path=path)
            return JSONResponse({'error': 'missing or wrong X-CSRF-Token'}, 403)
        if permission is not None and not sess.user.may(permission):
            self.audit(request, 'forbidden', user=sess.user.name, status=403,
                       incident_id=request.path_params.get('incident_id'),
                       method=request.method, path=path, role=sess.user.role)
            return JSONResponse({'error': f'role {sess.user.role} may not {permission}'}, 403)
        try:
            return fn(request, sess, body)
        except ApiError as exc:
            return JSONResponse({'error': str(exc)}, exc.status)

    # -- login -------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        body = await request.body()
        return await run_in_threadpool(self._login, request, body)

    def _login(self, request: Request, body: bytes) -> Response:
        client = request.client.host if request.client else '?'
        ctype = request.headers.get('content-type', '').split(';')[0].strip()
        if ctype != 'application/json':      # a cross-site form cannot send JSON unasked
            return JSONResponse({'error': 'Content-Type application/json expected'}, 415)
        try:
            data = _json_body(body)
        except ApiError as exc:
            return JSONResponse({'error': str(exc)}, exc.status)
        name, password = data.get('user'), data.get('password')
        if not isinstance(name, str) or not isinstance(password, str):
            return JSONResponse({'error': '{"user": ..., "password": ...} expected'}, 400)
        name = name[:64]
        wait = self.limit.blocked(name, client)
        if wait > 0:
            self.audit(request, 'login_rate_limited', user=name, status=429)
            return JSONResponse({'error': f'too many failed logins; retry in {wait:.0f} s'}, 429,
                                headers={'Retry-After': str(max(1, int(wait + 0.999)))})
        user = auth.authenticate(self.db, name, password)
        if user is None:
            self.limit.failed(name, client)
            self.audit(request, 'login_failed', user=name, status=401)
            return JSONResponse({'error': 'wrong user or password'}, 401)
        self.limit.succeeded(name, client)
        token, csrf = auth.open_session(self.db, user, self.now(), client)
        self.audit(request, 'login', user=user.name, status=200, role=user.role)
        resp = JSONResponse({'user': user.name, 'role': user.role, 'csrf': csrf})
        resp.set_cookie(COOKIE, token, max_age=int(auth.SESSION_S), httponly=True,
                        samesite='strict', secure=self.cfg.secure_cookies, path='/')
        return resp

    def logout(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        auth.close_session(self.db, sess)
        self.audit(request, 'logout', user=sess.user.name, status=200)
        resp = JSONResponse({'ok': True})
        resp.delete_cookie(COOKIE, path='/')
        return resp

    def me(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        return JSONResponse({'user': sess.user.name, 'role': sess.user.role, 'csrf': sess.csrf,
                             'permissions': sorted(auth.PERMISSIONS[sess.user.role]),
                             'expires_at': sess.expires_at})

    def change_password(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        data = _json_body(body)
        if auth.authenticate(self.db, sess.user.name, str(data.get('old_password', ''))) is None:
            self.audit(request, 'password_change_failed', user=sess.user.name, status=403)
            raise ApiError(403, 'old_password is wrong')
        try:
            auth.set_password(self.db, sess.user.name, str(data.get('new_password', '')))
        except auth.AuthError as exc:
            raise ApiError(400, str(exc)) from exc
        self.audit(request, 'password_changed', user=sess.user.name, status=200)
        return JSONResponse({'ok': True, 'note': 'every session of this user was closed'})

    # -- users (admin) -----------------------------------------------------------------
    def users(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        return JSONResponse({'items': auth.list_users(self.db)})

    def create_user(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        data = _json_body(body)
        try:
            u = auth.create_user(self.db, str(data.get('user', '')), str(data.get('role', '')),
                                 str(data.get('password', '')), self.now())
        except auth.AuthError as exc:
            raise ApiError(409 if 'exists' in str(exc) else 400, str(exc)) from exc
        self.audit(request, 'user_created', user=sess.user.name, status=201, created=u.name,
                   role=u.role)
        return JSONResponse({'user': u.name, 'role': u.role}, 201)

    def reset_password(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        name = request.path_params['name']
        try:
            auth.set_password(self.db, name, str(_json_body(body).get('password', '')))
        except auth.AuthError as exc:
            raise ApiError(404 if 'no user' in str(exc) else 400, str(exc)) from exc
        self.audit(request, 'password_reset', user=sess.user.name, status=200, target=name)
        return JSONResponse({'ok': True})

    # -- incidents ---------------------------------------------------------------------
    def incidents(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        return JSONResponse(self.list_incidents(request.query_params))

    def list_incidents(self, q: Any) -> dict[str, Any]:
        """One page, newest first, in index order: ``after``/``before`` continue from a cursor
        (a keyset: the index is entered at the cursor, so page 1000 costs what page 1 does);
        ``page`` skips rows (up to ``max_offset``). The filters run on one table
        (``incident_reasons`` when a reason is asked, which repeats unit, officer and verified);
        only the page's ids then join the wide rows. The total comes from the indexer's
        counts, or a count stopped at ``count_exact_max``, else an estimate
        (``total_is_estimate``)."""
        conds, params, keys = [], [], []
        table = 'incidents'
        if q.get('reason'):
            table = 'incident_reasons'
            conds.append('x.reason = ?')
            params.append(q['reason'])
            keys.append(('reason', q['reason']))
        for arg, column in (('unit', 'device_id'), ('officer', 'officer_id')):
            if q.get(arg):
                conds.append(f'x.{column} = ?')
                params.append(q[arg])
                keys.append((arg, q[arg]))
        span: list[float | None] = [None, None]
        if q.get('date_from'):
            span[0] = _time_arg(q['date_from'], 'date_from', False)
            conds.append('x.sort_time >= ?')
            params.append(span[0])
        if q.get('date_to'):
            span[1] = _time_arg(q['date_to'], 'date_to', True)
            conds.append('x.sort_time < ?')
            params.append(span[1])
        if q.get('verified'):
            v = q['verified'].lower()
            if v not in ('true', 'false', '1', '0'):
                raise ApiError(400, f'verified={q["verified"]!r}: true or false expected')
            conds.append('x.verified = ?')
            params.append(int(v in ('true', '1')))
            keys.append(('verified', str(params[-1])))
        per_page = _int_arg(q, 'per_page', 50, 1, 500)
        after, before = q.get('after'), q.get('before')
        if after and before:
            raise ApiError(400, 'after= and before= together: give one cursor')
        if (after or before) and q.get('page'):
            raise ApiError(400, 'page= with a cursor: give one of them')
        page = _int_arg(q, 'page', 1, 1, 10_000_000)
        offset = (page - 1) * per_page
        if offset > self.cfg.max_offset:
            raise ApiError(400, f'page={page}: skips {offset} rows, more than '
                           f'{self.cfg.max_offset}; '
                           'follow the `next` cursor (after=) to go deeper')
        where_filters = (' WHERE ' + ' AND '.join(conds)) if conds else ''
        filter_params, nconds = list(params), len(conds)
        order = 'DESC'
        if after or before:
            key = decode_cursor(after or before, 'after' if after else 'before')
            conds.append(f'(x.sort_time, x.incident_id) {"<" if after else ">"} (?, ?)')
            params += list(key)
            order = 'DESC' if after else 'ASC'
        where = (' WHERE ' + ' AND '.join(conds)) if conds else ''
        cols = ', '.join(f'i.{c.strip()}' for c in _ITEM_COLUMNS.split(','))
        rows = self.db.query(
            f'SELECT {cols} FROM incidents i WHERE i.incident_id IN ('
            f'SELECT x.incident_id FROM {table} x{where} '
            f'ORDER BY x.sort_time {order}, x.incident_id {order} LIMIT ? OFFSET ?) '
            f'ORDER BY i.sort_time {order}, i.incident_id {order}',    # the database's collation
            [*params, per_page + 1, offset])
        more = len(rows) > per_page
        rows = rows[:per_page]
        if before:
            rows.reverse()
        items = [self._item(r) for r in rows]
        older = more if not before else bool(items)
        newer = (more if before else bool(after) or page > 1) and bool(items)
        total, estimate = self._total(table, where_filters, filter_params, keys, span, nconds)
        return {'items': items, 'total': total, 'total_is_estimate': estimate,
                'page': None if after or before else page, 'per_page': per_page,
                'next': encode_cursor(rows[-1][11], rows[-1][0]) if older else None,
                'prev': encode_cursor(rows[0][11], rows[0][0]) if newer else None}

    def count(self, dim: str = '', value: str = '') -> int:
        """The indexer's count of incidents with one filter value ('' '' : all)."""
        r = self.db.one('SELECT n FROM incident_counts WHERE dim = ? AND value = ?',
                        (dim, value))
        return max(0, int(r[0])) if r else 0

    def _total(self, table: str, where: str, params: list[Any], keys: list[tuple[str, str]],
               span: list[float | None], nconds: int) -> tuple[int, bool]:
        """(total, is_estimate). No filter or one equality filter: the indexer's count
        (exact). Otherwise count up to count_exact_max + 1 matches (exact below it); above,
        estimate from the counts assuming independent filters and start times spread evenly
        between the oldest and newest incident."""
        if nconds == 0:
            return self.count(), False
        if nconds == 1 and len(keys) == 1:
            return self.count(*keys[0]), False
        cap = self.cfg.count_exact_max
        got = self.db.one(f'SELECT COUNT(*) FROM (SELECT 1 FROM {table} x{where} '
                          f'LIMIT {int(cap) + 1}) c', params)
        n = int(got[0]) if got else 0
        if n <= cap:
            return n, False
        everything = max(1, self.count())
        each = [self.count(*k) for k in keys]
        est = float(everything)
        for c in each:
            est *= c / everything
        if span != [None, None]:
            # Two statements: SQLite reads MIN and MAX from the index only one per SELECT.
            lo = (self.db.one('SELECT MIN(sort_time) FROM incidents') or (None,))[0]
            hi = (self.db.one('SELECT MAX(sort_time) FROM incidents') or (None,))[0]
            if lo is not None and hi is not None and hi > lo:
                a, b = max(lo, span[0] if span[0] is not None else lo), \
                    min(hi, span[1] if span[1] is not None else hi)
                est *= max(0.0, b - a) / (hi - lo)
        upper = min(each, default=everything)
        return int(round(min(max(est, cap + 1), upper))), True

    @staticmethod
    def _item(r: tuple[Any, ...]) -> dict[str, Any]:
        return {'incident_id': r[0], 'device_id': r[1], 'officer_id': r[2], 'sequence': r[3],
                'start_time': r[4], 'end_time': r[5], 'start_iso': _iso(r[4]),
                'end_iso': _iso(r[5]), 'triggers': json.loads(r[6]), 'verified': bool(r[7]),
                'verify_problems': json.loads(r[8]), 'has_proxy': bool(r[9]),
                'present': bool(r[10]), 'sort_time': r[11]}

    def row(self, iid: str) -> dict[str, Any]:
        """The indexed incident with its manifest and verification (404 unknown)."""
        r = self.db.one('SELECT incident_id, device_id, officer_id, sequence, start_time, '
                        'end_time, triggers, verified, problems, has_proxy, present, sort_time, '
                        'key_prefix, manifest, manifest_sha256, verification, indexed_at, '
                        'checked_at FROM incidents WHERE incident_id = ?', (iid,))
        if r is None:
            raise ApiError(404, f'no incident {iid!r}')
        item = self._item(r)
        item.update({'key_prefix': r[12], 'manifest': json.loads(r[13]),
                     'manifest_sha256': r[14], 'verification': json.loads(r[15]),
                     'indexed_at': r[16], 'checked_at': r[17]})
        return item

    def custody(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Audit rows for the incident, the device ledger's events and the unit's own audit
        entries naming it, in time order."""
        out: list[dict[str, Any]] = []
        for e in row['verification'].get('ledger_events', []):
            out.append({'source': 'unit ledger', 'time': e['time'], 'action': e['event'],
                        'entry': e['entry'], 'user': row['device_id']})
        data = self.bucket.get(f'{row["device_id"]}/audit.jsonl')
        for line in (data or b'').splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            d = e.get('data') if isinstance(e, dict) else None
            if isinstance(d, dict) and d.get('incident_id') == row['incident_id']:
                out.append({'source': 'unit audit log', 'time': e.get('wall_time'),
                            'action': e.get('event'), 'entry': e.get('seq'),
                            'user': e.get('device_id')})
        rows, _ = audit.rows(self.db, incident_id=row['incident_id'], limit=10_000,
                             newest_first=False)
        out += [{'source': 'portal audit', 'time': a.time, 'action': a.action, 'user': a.user,
                 'client': a.client, 'status': a.status, 'entry': a.seq} for a in rows]
        return sorted(out, key=lambda x: (x['time'] or 0))

    def detail(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        iid = request.path_params['incident_id']
        row = self.row(iid)
        self.audit(request, 'incident_view', user=sess.user.name, incident_id=iid, status=200)
        return JSONResponse(self.describe(row, with_alerts=sess.user.may('media')))

    def describe(self, row: dict[str, Any], with_alerts: bool = True) -> dict[str, Any]:
        m = row['manifest']
        video = m.get('video') or {}
        first = video.get('first_stamp')

        def offset(t: dict[str, Any]) -> float | None:
            rt = t.get('received_time')
            if isinstance(rt, (int, float)) and isinstance(first, (int, float)):
                return round(rt - first, 3)
            if isinstance(t.get('time'), (int, float)) and \
                    isinstance(m.get('start_time'), (int, float)):
                return round(t['time'] - m['start_time'], 3)
            return None

        alerts: list[dict[str, Any]] = []
        alerts_error = None
        if with_alerts and row['present']:
            try:
                alerts = self.cache.sensors(row['incident_id'], row['key_prefix'], m,
                                            row['manifest_sha256'])['alerts']
            except (PlaybackError, OSError, ValueError) as exc:
                alerts_error = str(exc)
        files = []
        for name, e in sorted((m.get('files') or {}).items()):
            if isinstance(e, dict):
                plain = e.get('plaintext') if isinstance(e.get('plaintext'), dict) else None
                files.append({'name': name, 'size': e.get('size'), 'sha256': e.get('sha256'),
                              'encrypted': name.endswith('.age'),
                              'plaintext_name': plain.get('name') if plain else None,
                              'plaintext_size': plain.get('size') if plain else None,
                              'plaintext_sha256': plain.get('sha256') if plain else None,
                              'complete': e.get('complete')})
        iid = row['incident_id']
        v = {k: val for k, val in row['verification'].items() if k != 'ledger_events'}
        return {
            **{k: row[k] for k in ('incident_id', 'device_id', 'officer_id', 'sequence',
                                   'start_time', 'end_time', 'start_iso', 'end_iso',
                                   'verified', 'verify_problems', 'has_proxy', 'present',
                                   'manifest_sha256', 'indexed_at', 'checked_at')},
            'duration_s': (row['end_time'] - row['start_time'])
            if row['end_time'] is not None and row['start_time'] is not None else None,
            'manifest': {k: m.get(k) for k in (
                'format', 'sequence', 'prev_incident_id', 'prev_manifest_sha256',
                'device_key_sha256', 'encryption', 'pre_event_s', 'post_event_s',
                'opened_time', 'sealed_time', 'end_reason', 'frame_count', 'video', 'sensors',
                'gps_track', 'recovered', 'recovery', 'software')},
            'triggers': [{'reason': t.get('reason'), 'time': t.get('time'),
                          'offset_s': offset(t)} for t in m.get('triggers') or []],
            'stops': [{'time': t.get('time'), 'offset_s': offset(t)}
                      for t in m.get('stops') or []],
            'alerts': alerts, 'alerts_error': alerts_error,
            'verification': v,
            'custody': self.custody(row),
            'files': files,
            'links': {'video': f'/api/incidents/{iid}/video.mp4',
                      'proxy': f'/api/incidents/{iid}/proxy.mp4' if row['has_proxy'] else None,
                      'sensors': f'/api/incidents/{iid}/sensors.json',
                      'export': f'/api/incidents/{iid}/export.zip'},
        }

    def video(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        iid = request.path_params['incident_id']
        row = self.row(iid)
        try:
            path = self.cache.plaintext(iid, row['key_prefix'], row['manifest'],
                                        row['manifest_sha256'], 'video.mp4')
        except PlaybackError as exc:
            self.audit(request, 'video_refused', user=sess.user.name, incident_id=iid,
                       status=409, reason=str(exc))
            raise ApiError(409, str(exc)) from exc
        self._media_audit(request, sess, iid, 'video')
        return FileResponse(path, media_type='video/mp4',
                            headers={'Cache-Control': 'private, no-store'})

    def proxy(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        iid = request.path_params['incident_id']
        row = self.row(iid)
        if not row['has_proxy']:
            raise ApiError(404, f'{iid} has no proxy')
        key = f'{row["key_prefix"]}/proxy.mp4'
        path = self.bucket.local_path(key)
        if path is None:
            d = self.cache.incident_dir(iid, row['manifest_sha256'])
            path = d / 'proxy.mp4'
            if not path.exists():
                self.bucket.download(key, path)
        if not path.exists():
            raise ApiError(404, f'{iid}: proxy.mp4 is gone from the bucket')
        self._media_audit(request, sess, iid, 'proxy')
        return FileResponse(path, media_type='video/mp4',
                            headers={'Cache-Control': 'private, no-store'})

    def sensors(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        iid = request.path_params['incident_id']
        row = self.row(iid)
        try:
            data = self.cache.sensors(iid, row['key_prefix'], row['manifest'],
                                      row['manifest_sha256'])
        except PlaybackError as exc:
            raise ApiError(409, str(exc)) from exc
        self._media_audit(request, sess, iid, 'sensors')
        return JSONResponse(data)

    def export(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        from bodycam_ros.portal.export import build_export
        iid = request.path_params['incident_id']
        row = self.row(iid)
        self.audit(request, 'export', user=sess.user.name, incident_id=iid, status=200)
        try:
            path = build_export(self, row, sess.user.name)
        except PlaybackError as exc:
            self.audit(request, 'export_failed', user=sess.user.name, incident_id=iid,
                       status=409, reason=str(exc))
            raise ApiError(409, str(exc)) from exc
        return FileResponse(path, media_type='application/zip', filename=f'incident-{iid}.zip',
                            headers={'Cache-Control': 'private, no-store'})

    def devices(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        rows = self.db.query('SELECT device_id, witness_seq, witness_sha256, max_sequence, '
                             'ledger_ok, problems, checked_at FROM devices ORDER BY device_id')
        return JSONResponse({'items': [
            {'device_id': r[0], 'witness': {'seq': r[1], 'sha256': r[2]},
             'max_sequence': r[3], 'ledger_ok': bool(r[4]), 'problems': json.loads(r[5]),
             'checked_at': r[6]} for r in rows]})

    def status(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        return JSONResponse({'schema_version': self.db.version(), 'database': self.db.dialect,
                             'bucket': self.bucket.url, 'incidents': self.count(),
                             'indexer': {'polls': self.indexer.polls,
                                         'last_error': self.indexer.last_error,
                                         'last_poll_s': round(self.indexer.last_poll_s, 4)}})

    # -- audit -------------------------------------------------------------------------
    def audit_list(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        q = request.query_params
        page = _int_arg(q, 'page', 1, 1, 10_000_000)
        per_page = _int_arg(q, 'per_page', 100, 1, 1000)
        got, total = audit.rows(self.db, incident_id=q.get('incident') or None,
                                user=q.get('user') or None, action=q.get('action') or None,
                                limit=per_page, offset=(page - 1) * per_page)
        self.audit(request, 'audit_view', user=sess.user.name, status=200)
        return JSONResponse({'items': [r.as_dict() for r in got], 'total': total, 'page': page,
                             'per_page': per_page, 'chain': self.audit_check.as_dict()})

    def audit_export(self, request: Request, sess: auth.Session, body: bytes) -> Response:
        self.audit(request, 'audit_export', user=sess.user.name, status=200)
        chk = self.check_audit()

        def lines() -> Any:
            for r in audit.iter_all(self.db):
                yield json.dumps(r.as_dict(), sort_keys=True) + '\n'
            yield json.dumps({'chain': chk.as_dict()}, sort_keys=True) + '\n'
        return StreamingResponse(lines(), media_type='application/x-ndjson', headers={
            'X-Audit-Chain': 'ok' if chk.ok else 'broken',
            'Content-Disposition': 'attachment; filename="portal-audit.jsonl"'})

    # -- pages -------------------------------------------------------------------------
    def page(self, name: str) -> Callable[[Request], Any]:
        def show(request: Request, sess: auth.Session, body: bytes) -> Response:
            path = WEB / name
            if not path.is_file():
                return PlainTextResponse(f'{name} is not installed', 404)
            return FileResponse(path, media_type='text/html',
                                headers={'Cache-Control': 'no-store'})
        inner = self.endpoint(None, show)

        async def handle(request: Request) -> Response:
            if auth.session_for(self.db, request.cookies.get(COOKIE), self.now()) is None:
                await run_in_threadpool(self.audit, request, 'unauthenticated', status=401,
                                        method=request.method, path=request.url.path)
                return HTMLResponse('<!doctype html><meta http-equiv="refresh" '
                                    'content="0;url=/login"><a href="/login">log in</a>', 401)
            return await inner(request)
        return handle

    async def login_page(self, request: Request) -> Response:
        path = WEB / 'login.html'
        if not path.is_file():
            return PlainTextResponse('login.html is not installed', 404)
        return FileResponse(path, media_type='text/html', headers={'Cache-Control': 'no-store'})

    async def not_found(self, request: Request, exc: Exception) -> Response:
        if request.url.path.startswith('/api/') and \
                auth.session_for(self.db, request.cookies.get(COOKIE), self.now()) is None:
            return JSONResponse({'error': 'login required'}, 401)
        return JSONResponse({'error': 'not found'}, 404)

    def app(self) -> Starlette:
        e = self.endpoint
        routes = [
            Route('/api/login', self.login, methods=['POST']),
            Route('/api/logout', e(None, self.logout), methods=['POST']),
            Route('/api/me', e(None, self.me)),
            Route('/api/password', e(None, self.change_password), methods=['POST']),
            Route('/api/users', e('users', self.users)),
            Route('/api/users', e('users', self.create_user), methods=['POST']),
            Route('/api/users/{name}/password', e('users', self.reset_password),
                  methods=['POST']),
            Route('/api/status', e('view', self.status)),
            Route('/api/devices', e('view', self.devices)),
            Route('/api/incidents', e('view', self.incidents)),
            Route('/api/incidents/{incident_id}', e('view', self.detail)),
            Route('/api/incidents/{incident_id}/video.mp4', e('media', self.video),
                  methods=['GET', 'HEAD']),
            Route('/api/incidents/{incident_id}/proxy.mp4', e('media', self.proxy),
                  methods=['GET', 'HEAD']),
            Route('/api/incidents/{incident_id}/sensors.json', e('media', self.sensors)),
            Route('/api/incidents/{incident_id}/export.zip', e('export', self.export)),
            Route('/api/audit', e('audit', self.audit_list)),
            Route('/api/audit/export', e('audit', self.audit_export)),
            WebSocketRoute('/api/link', self.fleet.link),
            Route('/api/units', e('fleet', self.fleet_units)),
            Route('/api/units/{device_id}/live.mp4', e('live', self.fleet_live)),
            Route('/api/units/{device_id}/dispatch', e('dispatch', self.fleet_dispatch),
                  methods=['POST', 'DELETE']),
            Route('/api/alerts', e('fleet', self.fleet_alerts)),
            Route('/api/alerts/{alert_id}/ack', e('ack', self.fleet_ack), methods=['POST']),
            Route('/login', self.login_page),
            Route('/login.html', self.login_page),
            Route('/favicon.ico', lambda r: Response(status_code=204)),
            Mount('/static', StaticFiles(directory=WEB, check_dir=False), name='static'),
        ]
        routes += [Route(p, self.page(n)) for p, n in PAGES.items()]
        routes.append(Route('/{name:str}.html', self._named_page))
        return Starlette(routes=routes, exception_handlers={404: self.not_found},
                         lifespan=self._lifespan)

    async def _named_page(self, request: Request) -> Response:
        name = request.path_params['name']
        if '/' in name or name.startswith('.'):
            return JSONResponse({'error': 'not found'}, 404)
        if name == 'login':
            return await self.login_page(request)
        return await self.page(f'{name}.html')(request)

    def _lifespan(self, app: Starlette) -> Any:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def span(_: Starlette) -> Any:
            self.indexer.start()
            if self.courier is not None:
                self.courier.start()
            try:
                yield
            finally:
                self.fleet.close()
                self.indexer.stop()
        return span(app)

    def close(self) -> None:
        self.indexer.stop()
        if self.courier is not None:
            self.courier.stop()
        self.db.close()


__all__ = ['Portal', 'PortalConfig', 'SCHEMA_VERSION']
