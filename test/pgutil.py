"""A real PostgreSQL server for the tests, from Debian's ``postgresql`` package.

initdb + pg_ctl into a temporary directory on a free loopback port; as root the server runs
as the ``postgres`` user (PostgreSQL refuses to run as root). Each test gets its own database.
Outside CI a machine without PostgreSQL skips these tests; in CI (``CI`` set) it fails.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    found = shutil.which('pg_ctl')
    if found:
        return Path(found).resolve().parent
    hits = sorted(glob.glob('/usr/lib/postgresql/*/bin/pg_ctl'))
    return Path(hits[-1]).parent if hits else None


def require_pg() -> Path:
    b = pg_bin()
    if b is None:
        msg = 'PostgreSQL (Debian package postgresql) is not installed'
        if os.environ.get('CI'):
            pytest.fail(msg + ' (scripts/install-test-deps.sh installs it)')
        pytest.skip(msg)
    return b


class PgServer:
    def __init__(self) -> None:
        from portalutil import free_port
        self.bin = require_pg()
        self.dir = Path(tempfile.mkdtemp(prefix='bodycam-pg-'))
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = 'postgres' if _has_user('postgres') else 'nobody'
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o700)
        self.data = self.dir / 'data'

    def _run(self, *cmd: str) -> None:
        full = [str(self.bin / cmd[0]), *cmd[1:]]
        if self.user:
            full = ['runuser', '-u', self.user, '--', *full]
        res = subprocess.run(full, capture_output=True, text=True, timeout=120, cwd=self.dir)
        assert res.returncode == 0, f'{cmd[0]} failed: {res.stdout}\n{res.stderr}'

    def start(self) -> PgServer:
        self._run('initdb', '-D', str(self.data), '-A', 'trust', '-U', 'postgres',
                  '--no-sync', '-E', 'UTF8')
        self._run('pg_ctl', '-D', str(self.data), '-l', str(self.dir / 'log'), '-w', '-t', '60',
                  '-o', f'-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 '
                  '-c fsync=off -c synchronous_commit=off -c full_page_writes=off', 'start')
        return self

    @property
    def admin_url(self) -> str:
        return f'postgresql://postgres@127.0.0.1:{self.port}/postgres'

    def new_database(self) -> str:
        import psycopg
        name = 't_' + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE {name}')
        return f'postgresql://postgres@127.0.0.1:{self.port}/{name}'

    def stop(self) -> None:
        try:
            self._run('pg_ctl', '-D', str(self.data), '-m', 'fast', '-w', 'stop')
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
