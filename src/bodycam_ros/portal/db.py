"""One thin SQL layer over SQLite (embedded default) and PostgreSQL (psycopg 3).

The portal writes its SQL once, with ``?`` placeholders and portable types; this module
translates placeholders for psycopg and the few type words that differ (``{blob}``,
``{real}``) in the migrations. Each thread gets its own connection (SQLite in WAL mode lets
readers run beside the indexer's writes; PostgreSQL connections are cheap at this scale), so
request threads never queue behind one another on a Python lock.

The schema is versioned: ``schema_migrations`` holds every applied version, and
:func:`migrate` applies the newer entries of :data:`MIGRATIONS` in order, each in its own
transaction (under an advisory lock on PostgreSQL, so two portals starting at once do not
race).
"""
from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: ``incident_counts`` rebuilt from the tables (migration 3, :func:`recount_incidents`).
COUNT_STATEMENTS = [
    "INSERT INTO incident_counts (dim, value, n) SELECT '', '', COUNT(*) FROM incidents",
    "INSERT INTO incident_counts (dim, value, n) SELECT 'unit', device_id, COUNT(*) "
    'FROM incidents GROUP BY device_id',
    "INSERT INTO incident_counts (dim, value, n) SELECT 'officer', officer_id, COUNT(*) "
    'FROM incidents GROUP BY officer_id',
    "INSERT INTO incident_counts (dim, value, n) SELECT 'verified', CAST(verified AS TEXT), "
    'COUNT(*) FROM incidents GROUP BY verified',
    "INSERT INTO incident_counts (dim, value, n) SELECT 'reason', reason, COUNT(*) "
    'FROM incident_reasons GROUP BY reason',
]

#: Migrations in order: (version, what, statements). Never edit an applied one; add one.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, 'users, sessions, incident index, devices, audit', [
        """CREATE TABLE users (
            name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
            created_at {real} NOT NULL, disabled INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE sessions (
            token_sha256 TEXT PRIMARY KEY, user_name TEXT NOT NULL, csrf TEXT NOT NULL,
            created_at {real} NOT NULL, expires_at {real} NOT NULL, client TEXT)""",
        """CREATE TABLE incidents (
            incident_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, officer_id TEXT NOT NULL,
            sequence BIGINT, start_time {real}, end_time {real}, sort_time {real} NOT NULL,
            key_prefix TEXT NOT NULL, triggers TEXT NOT NULL, reasons TEXT NOT NULL,
            manifest TEXT NOT NULL, manifest_sha256 TEXT NOT NULL, listing TEXT NOT NULL,
            has_proxy INTEGER NOT NULL, present INTEGER NOT NULL, verified INTEGER NOT NULL,
            problems TEXT NOT NULL, verification TEXT NOT NULL, indexed_at {real} NOT NULL,
            checked_at {real} NOT NULL)""",
        # Every list filter has an index ending in (sort_time, incident_id): the page is read
        # in index order and stops at LIMIT; the reason table repeats the other filter
        # columns so a reason search never touches the wide incidents table until its page.
        'CREATE INDEX incidents_time ON incidents (sort_time, incident_id)',
        'CREATE INDEX incidents_device ON incidents (device_id, sort_time, incident_id)',
        'CREATE INDEX incidents_officer ON incidents (officer_id, sort_time, incident_id)',
        'CREATE INDEX incidents_verified ON incidents (verified, sort_time, incident_id)',
        """CREATE TABLE incident_reasons (
            incident_id TEXT NOT NULL, reason TEXT NOT NULL, sort_time {real} NOT NULL,
            device_id TEXT NOT NULL, officer_id TEXT NOT NULL, verified INTEGER NOT NULL,
            PRIMARY KEY (incident_id, reason))""",
        'CREATE INDEX incident_reasons_time ON incident_reasons (reason, sort_time, incident_id)',
        'CREATE INDEX incident_reasons_device ON incident_reasons '
        '(reason, device_id, sort_time, incident_id)',
        'CREATE INDEX incident_reasons_officer ON incident_reasons '
        '(reason, officer_id, sort_time, incident_id)',
        """CREATE TABLE devices (
            device_id TEXT PRIMARY KEY, witness_seq BIGINT, witness_sha256 TEXT,
            max_sequence BIGINT, ledger_ok INTEGER NOT NULL, problems TEXT NOT NULL,
            report TEXT NOT NULL, listing TEXT NOT NULL, checked_at {real} NOT NULL)""",
        """CREATE TABLE audit (
            seq BIGINT PRIMARY KEY, time {real} NOT NULL, user_name TEXT, action TEXT NOT NULL,
            incident_id TEXT, client TEXT, status INTEGER, details TEXT NOT NULL,
            prev TEXT NOT NULL, hash TEXT NOT NULL)""",
        'CREATE INDEX audit_incident ON audit (incident_id, seq)',
        'CREATE INDEX audit_user ON audit (user_name, seq)',
        """CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    ]),
    (2, 'fleet: units seen over the portal link, alerts and acknowledgements, dispatches', [
        """CREATE TABLE fleet_units (
            device_id TEXT PRIMARY KEY, officer_id TEXT NOT NULL, first_seen {real} NOT NULL,
            last_seen {real}, state TEXT NOT NULL)""",
        """CREATE TABLE fleet_alerts (
            alert_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, source_id TEXT NOT NULL,
            kind TEXT NOT NULL, unit_state TEXT NOT NULL, officer_id TEXT NOT NULL,
            latitude {real}, longitude {real}, raised_at {real} NOT NULL,
            received_at {real} NOT NULL, incident_id TEXT NOT NULL, message TEXT NOT NULL,
            ack_by TEXT, ack_at {real}, updated_at {real} NOT NULL)""",
        'CREATE UNIQUE INDEX fleet_alerts_source ON fleet_alerts (device_id, source_id)',
        'CREATE INDEX fleet_alerts_received ON fleet_alerts (received_at)',
        """CREATE TABLE fleet_dispatches (
            dispatch_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, latitude {real},
            longitude {real}, clear INTEGER NOT NULL, sent_by TEXT NOT NULL,
            created_at {real} NOT NULL, delivered_at {real})""",
    ]),
    (3, 'incident list: counts kept by the indexer, indexes for keyset pages with verified', [
        # One row per (filter, value): '' '' is every incident; 'unit'/'officer'/'verified'/
        # 'reason' one filter value each. The indexer keeps them with every write
        # (indexer.bump_counts), so a total needs no COUNT(*) over the table.
        """CREATE TABLE incident_counts (
            dim TEXT NOT NULL, value TEXT NOT NULL, n BIGINT NOT NULL,
            PRIMARY KEY (dim, value))""",
        # Verified combined with a unit or a trigger reason: read in (sort_time, incident_id)
        # order straight from the index, and counted without touching the table.
        'CREATE INDEX incidents_device_verified ON incidents '
        '(device_id, verified, sort_time, incident_id)',
        'CREATE INDEX incident_reasons_verified ON incident_reasons '
        '(reason, verified, sort_time, incident_id)',
    ] + COUNT_STATEMENTS),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
_TYPES = {'sqlite': {'real': 'REAL', 'blob': 'BLOB'},
          'postgresql': {'real': 'DOUBLE PRECISION', 'blob': 'BYTEA'}}
_LOCK_KEY = 0x626f6479      # pg advisory lock id ("body")


class DatabaseError(RuntimeError):
    """A database URL that cannot be opened or a schema that cannot be brought up to date."""


class Database:
    """A URL (``sqlite:///path``, a plain path, or ``postgresql://...``) and per-thread
    connections to it."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith(('postgresql://', 'postgres://')):
            self.dialect = 'postgresql'
            try:
                import psycopg  # noqa: F401
            except ImportError as exc:
                raise DatabaseError('postgresql:// needs psycopg (pip install psycopg[binary])'
                                    ) from exc
        else:
            self.dialect = 'sqlite'
            path = url[len('sqlite:///'):] if url.startswith('sqlite:///') else url
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self.connection()         # fail now, naming the URL, rather than on the first request

    @property
    def safe_url(self) -> str:
        """The URL without a password, for messages."""
        return re.sub(r'://([^:/@]+):[^@]*@', r'://\1:***@', self.url)

    def connection(self) -> Any:
        conn = getattr(self._local, 'conn', None)
        if conn is not None:
            return conn
        try:
            if self.dialect == 'postgresql':
                import psycopg
                conn = psycopg.connect(self.url, autocommit=True)
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=30.0)
                conn.execute('PRAGMA journal_mode=WAL')
                conn.execute('PRAGMA synchronous=NORMAL')
                conn.execute('PRAGMA foreign_keys=ON')
        except Exception as exc:  # noqa: BLE001 - sqlite3/psycopg errors: name the URL
            raise DatabaseError(f'cannot open database {self.safe_url}: {exc}') from exc
        self._local.conn = conn
        self._local.depth = 0
        with self._lock:
            self._all.append(conn)
        return conn

    def sql(self, text: str) -> str:
        return text.replace('?', '%s') if self.dialect == 'postgresql' else text

    def execute(self, text: str, params: Sequence[Any] = ()) -> int:
        cur = self.connection().execute(self.sql(text), tuple(params))
        return cur.rowcount

    def executemany(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        conn = self.connection()
        if self.dialect == 'postgresql':
            with conn.cursor() as cur:
                cur.executemany(self.sql(text), [tuple(r) for r in rows])
        else:
            conn.executemany(text, [tuple(r) for r in rows])

    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.connection().execute(self.sql(text), tuple(params)).fetchall())

    def one(self, text: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self.connection().execute(self.sql(text), tuple(params)).fetchone()

    @contextmanager
    def transaction(self, exclusive: bool = False) -> Iterator[Database]:
        """One transaction on this thread's connection (nested calls join it).
        ``exclusive`` serialises writers across processes (the audit chain's append)."""
        conn = self.connection()
        if self._local.depth:
            self._local.depth += 1
            try:
                yield self
            finally:
                self._local.depth -= 1
            return
        if self.dialect == 'postgresql':
            with conn.transaction():
                if exclusive:
                    conn.execute('SELECT pg_advisory_xact_lock(%s)', (_LOCK_KEY,))
                self._local.depth = 1
                try:
                    yield self
                finally:
                    self._local.depth = 0
            return
        conn.execute('BEGIN IMMEDIATE' if exclusive else 'BEGIN')
        self._local.depth = 1
        try:
            yield self
        except BaseException:
            conn.execute('ROLLBACK')
            raise
        else:
            conn.execute('COMMIT')
        finally:
            self._local.depth = 0

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing from another thread at shutdown
                pass
        self._local = threading.local()

    def version(self) -> int:
        try:
            row = self.one('SELECT MAX(version) FROM schema_migrations')
        except Exception:  # noqa: BLE001 - table missing: sqlite3/psycopg raise differently
            if self.dialect == 'postgresql':
                self.connection().rollback()
            return 0
        return int(row[0] or 0) if row else 0


def migrate(db: Database, now: float | None = None, upto: int | None = None) -> list[int]:
    """Apply every migration newer than the database (up to version ``upto``: a staged
    upgrade); returns the versions applied."""
    now = time.time() if now is None else now
    applied: list[int] = []
    with db.transaction(exclusive=True):
        db.execute(f'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, '
                   f'what TEXT NOT NULL, applied_at {_TYPES[db.dialect]["real"]} NOT NULL)')
    for version, what, statements in MIGRATIONS:
        if upto is not None and version > upto:
            break
        with db.transaction(exclusive=True):
            if db.one('SELECT 1 FROM schema_migrations WHERE version = ?', (version,)):
                continue
            for stmt in statements:
                db.execute(stmt.format(**_TYPES[db.dialect]))
            db.execute('INSERT INTO schema_migrations (version, what, applied_at) '
                       'VALUES (?, ?, ?)', (version, what, now))
            applied.append(version)
    have = db.version()
    if have > SCHEMA_VERSION:
        raise DatabaseError(f'{db.safe_url} has schema version {have}, newer than this '
                            f'portal ({SCHEMA_VERSION}): upgrade bodycam_ros')
    return applied


def recount_incidents(db: Database) -> None:
    """Rebuild ``incident_counts`` from the tables: heals counts after rows were written
    around the indexer (a restore, a bulk load)."""
    with db.transaction(exclusive=True):
        db.execute('DELETE FROM incident_counts')
        for stmt in COUNT_STATEMENTS:
            db.execute(stmt)


def open_database(url: str) -> Database:
    """Open and migrate."""
    db = Database(url)
    migrate(db)
    return db
