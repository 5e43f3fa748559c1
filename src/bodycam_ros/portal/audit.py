"""The portal's audit trail: an append-only, hash-chained table.

Every row carries ``prev`` (the previous row's ``hash``, GENESIS for the first) and ``hash``,
the SHA-256 of the canonical JSON of its own fields (seq, time, user, action, incident_id,
client, status, details, prev). Editing, deleting or reordering a row through SQL breaks the
chain at that row; :func:`check_chain` names it. Appends take the database's exclusive
transaction so two processes never fork the chain. Cutting the newest rows leaves a valid
shorter chain: the portal records its head in ``settings`` after each check and in every
export, so an auditor holding an earlier export sees the cut.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bodycam_ros.portal.db import Database

GENESIS = '0' * 64
_COLUMNS = 'seq, time, user_name, action, incident_id, client, status, details, prev, hash'


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(',', ':'), ensure_ascii=True,
                      allow_nan=False).encode('ascii')


def row_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(fields)).hexdigest()


@dataclass(frozen=True)
class AuditRow:
    seq: int
    time: float
    user: str | None
    action: str
    incident_id: str | None
    client: str | None
    status: int | None
    details: dict[str, Any]
    prev: str
    hash: str

    def fields(self) -> dict[str, Any]:
        """What the hash covers."""
        return {'seq': self.seq, 'time': self.time, 'user': self.user, 'action': self.action,
                'incident_id': self.incident_id, 'client': self.client, 'status': self.status,
                'details': self.details, 'prev': self.prev}

    def as_dict(self) -> dict[str, Any]:
        return {**self.fields(), 'hash': self.hash}

    @classmethod
    def from_db(cls, r: tuple[Any, ...]) -> AuditRow:
        try:
            details = json.loads(r[7])
        except ValueError:
            details = {'unreadable': str(r[7])}
        return cls(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5],
                   None if r[6] is None else int(r[6]), details, r[8], r[9])


def append(db: Database, now: float, action: str, *, user: str | None = None,
           incident_id: str | None = None, client: str | None = None,
           status: int | None = None, **details: Any) -> AuditRow:
    """Add one row at the head of the chain."""
    with db.transaction(exclusive=True):
        last = db.one('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1')
        seq, prev = (int(last[0]) + 1, last[1]) if last else (1, GENESIS)
        row = AuditRow(seq, float(now), user, action, incident_id, client, status,
                       dict(details), prev, '')
        row = AuditRow(**{**row.__dict__, 'hash': row_hash(row.fields())})
        db.execute(f'INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                   (row.seq, row.time, row.user, row.action, row.incident_id, row.client,
                    row.status, canonical(row.details).decode(), row.prev, row.hash))
    return row


def rows(db: Database, *, incident_id: str | None = None, user: str | None = None,
         action: str | None = None, limit: int = 100, offset: int = 0,
         newest_first: bool = True) -> tuple[list[AuditRow], int]:
    """A page of rows and the total matching."""
    where, params = _where(incident_id, user, action)
    total = db.one(f'SELECT COUNT(*) FROM audit{where}', params)
    order = 'DESC' if newest_first else 'ASC'
    got = db.query(f'SELECT {_COLUMNS} FROM audit{where} ORDER BY seq {order} LIMIT ? OFFSET ?',
                   [*params, int(limit), int(offset)])
    return [AuditRow.from_db(r) for r in got], int(total[0] if total else 0)


def _where(incident_id: str | None, user: str | None,
           action: str | None) -> tuple[str, list[Any]]:
    conds, params = [], []
    for col, val in (('incident_id', incident_id), ('user_name', user), ('action', action)):
        if val:
            conds.append(f'{col} = ?')
            params.append(val)
    return (' WHERE ' + ' AND '.join(conds)) if conds else '', params


def iter_all(db: Database, batch: int = 5000) -> Iterator[AuditRow]:
    """Every row in chain order, in batches (the export streams this)."""
    after = 0
    while True:
        got = db.query(f'SELECT {_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?',
                       (after, batch))
        if not got:
            return
        for r in got:
            yield AuditRow.from_db(r)
        after = int(got[-1][0])


@dataclass
class ChainCheck:
    rows: int = 0
    head: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {'ok': self.ok, 'rows': self.rows, 'head': self.head, 'problems': self.problems}


def check_chain(db: Database, limit_problems: int = 50) -> ChainCheck:
    """Recompute every row's hash and link; name each row that does not hold."""
    chk = ChainCheck()
    prev, want_seq = GENESIS, 1
    for row in iter_all(db):
        chk.rows += 1
        bad = []
        if row.seq != want_seq:
            bad.append(f'seq {row.seq} follows {want_seq - 1} (rows {want_seq}..{row.seq - 1} '
                       'deleted)')
        if row.prev != prev:
            bad.append(f'seq {row.seq}: prev does not match the hash of the row before it')
        if row_hash(row.fields()) != row.hash:
            bad.append(f'seq {row.seq}: hash does not match its fields (the row was edited)')
        if bad and len(chk.problems) < limit_problems:
            chk.problems.extend(bad)
        prev, want_seq = row.hash, row.seq + 1
    chk.head = prev
    return chk
