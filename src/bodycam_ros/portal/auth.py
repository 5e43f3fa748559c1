"""People: users with one role, argon2id password hashes, server-side sessions, a login rate
limit.

A session is a random 256-bit token in an HttpOnly, SameSite=Strict cookie; the database keeps
only its SHA-256 (a stolen database opens no session), with the user, an expiry and the
session's CSRF token. Every state-changing request must echo that CSRF token in
``X-CSRF-Token`` (double submit: a page on another origin can neither read it nor set the
header without a CORS preflight the portal never answers).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from bodycam_ros.portal.db import Database

ROLES = ('admin', 'supervisor', 'auditor', 'dispatcher')
#: What each role may do. ``view``: the incident list and pages; ``media``: video, sensors;
#: ``export``: court export; ``audit``: the audit log; ``users``: user administration;
#: ``fleet``: units and alerts; ``live``: a unit's live video; ``ack``: acknowledge alerts;
#: ``dispatch``: send a unit a destination. A dispatcher works the fleet, not evidence.
_FLEET = frozenset({'fleet', 'live', 'ack', 'dispatch'})
PERMISSIONS = {
    'admin': frozenset({'view', 'media', 'export', 'audit', 'users', 'settings'}) | _FLEET,
    'supervisor': frozenset({'view', 'media', 'export'}) | _FLEET,
    'auditor': frozenset({'view', 'audit'}),
    'dispatcher': _FLEET,
}
SESSION_S = 12 * 3600.0
_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._@-]{0,63}')
_hasher = PasswordHasher()


class AuthError(RuntimeError):
    """A user, role or password that is not acceptable (the message says which)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    token_sha256: str
    expires_at: float


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_user(name: str, role: str, password: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AuthError(f'user name {name!r}: 1-64 letters, digits and ._@- expected')
    if role not in ROLES:
        raise AuthError(f'role {role!r}: one of {", ".join(ROLES)} expected')
    if not isinstance(password, str) or len(password) < 10:
        raise AuthError('password: at least 10 characters expected')


def create_user(db: Database, name: str, role: str, password: str, now: float) -> User:
    check_user(name, role, password)
    with db.transaction():
        if db.one('SELECT 1 FROM users WHERE name = ?', (name,)):
            raise AuthError(f'user {name!r} exists already')
        db.execute('INSERT INTO users (name, password_hash, role, created_at) '
                   'VALUES (?, ?, ?, ?)', (name, _hasher.hash(password), role, now))
    return User(name, role)


def set_password(db: Database, name: str, password: str) -> None:
    row = db.one('SELECT role FROM users WHERE name = ?', (name,))
    if row is None:
        raise AuthError(f'no user {name!r}')
    check_user(name, row[0], password)
    db.execute('UPDATE users SET password_hash = ? WHERE name = ?', (_hasher.hash(password), name))
    db.execute('DELETE FROM sessions WHERE user_name = ?', (name,))


def list_users(db: Database) -> list[dict[str, object]]:
    return [{'user': r[0], 'role': r[1], 'created_at': r[2], 'disabled': bool(r[3])}
            for r in db.query('SELECT name, role, created_at, disabled FROM users ORDER BY name')]


def ensure_admin(db: Database, now: float) -> str | None:
    """Create ``admin`` with a random password when there are no users; return the password
    (shown once) or None."""
    if db.one('SELECT 1 FROM users LIMIT 1'):
        return None
    password = secrets.token_urlsafe(15)
    create_user(db, 'admin', 'admin', password, now)
    return password


def authenticate(db: Database, name: str, password: str) -> User | None:
    row = db.one('SELECT name, role, password_hash, disabled FROM users WHERE name = ?',
                 (name,))
    if row is None:
        try:                     # the same cost for an unknown user: no timing oracle
            _hasher.verify(_DUMMY, password)
        except (VerificationError, InvalidHashError):
            pass
        return None
    try:
        _hasher.verify(row[2], password)
    except (VerificationError, InvalidHashError):
        return None
    if row[3]:
        return None
    if _hasher.check_needs_rehash(row[2]):
        db.execute('UPDATE users SET password_hash = ? WHERE name = ?',
                   (_hasher.hash(password), name))
    return User(row[0], row[1])


_DUMMY = _hasher.hash('not a password of anyone')


def open_session(db: Database, user: User, now: float, client: str | None) -> tuple[str, str]:
    """(cookie token, csrf token)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    db.execute('INSERT INTO sessions (token_sha256, user_name, csrf, created_at, expires_at, '
               'client) VALUES (?, ?, ?, ?, ?, ?)',
               (_sha(token), user.name, csrf, now, now + SESSION_S, client))
    return token, csrf


def session_for(db: Database, token: str | None, now: float) -> Session | None:
    if not token or len(token) > 200:
        return None
    row = db.one('SELECT s.token_sha256, s.csrf, s.expires_at, u.name, u.role, u.disabled '
                 'FROM sessions s JOIN users u ON u.name = s.user_name '
                 'WHERE s.token_sha256 = ?', (_sha(token),))
    if row is None or row[2] < now or row[5]:
        return None
    return Session(User(row[3], row[4]), row[1], row[0], row[2])


def close_session(db: Database, session: Session) -> None:
    db.execute('DELETE FROM sessions WHERE token_sha256 = ?', (session.token_sha256,))


def csrf_ok(session: Session, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(session.csrf.encode(), str(header).encode())


class RateLimit:
    """At most ``failures`` failed logins per (user, client address) in ``window_s``."""

    def __init__(self, failures: int = 5, window_s: float = 60.0) -> None:
        self.failures, self.window_s = failures, window_s
        self._seen: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._seen.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def blocked(self, user: str, client: str, now: float | None = None) -> float:
        """Seconds until another attempt is allowed (0: allowed now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._recent((user, client), now)
            return q[0] + self.window_s - now if len(q) >= self.failures else 0.0

    def failed(self, user: str, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent((user, client), now).append(now)
            if len(self._seen) > 100_000:        # bounded under a spray of names
                self._seen = {k: v for k, v in self._seen.items() if v}

    def succeeded(self, user: str, client: str) -> None:
        with self._lock:
            self._seen.pop((user, client), None)
