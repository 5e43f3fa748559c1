"""``bodycam portal`` as a user starts it, and the versioned schema on both databases."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import ROOT
from pgutil import PgServer

from bodycam_ros.portal.db import SCHEMA_VERSION, Database, DatabaseError, migrate, open_database


def read_until(proc: subprocess.Popen, want: str, timeout_s: float = 60.0) -> list[str]:
    lines: list[str] = []
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip('\n'))
        if want in line:
            return lines
    raise AssertionError(f'no {want!r} in {lines}')


def run_portal(tmp_path: Path) -> subprocess.Popen:
    from spoolutil import agency_for
    agency, _, _ = agency_for(tmp_path)
    env = {**os.environ, 'PYTHONPATH': str(ROOT / 'src'), 'PYTHONUNBUFFERED': '1'}
    return subprocess.Popen(
        [sys.executable, '-m', 'bodycam_ros.cli', 'portal', '--bucket',
         f'file://{tmp_path / "bucket"}', '--agency', str(agency), '--state-dir',
         str(tmp_path / 'state'), '--port', '0'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)


def test_first_start_prints_the_url_and_the_admin_password_once(tmp_path: Path):
    proc = run_portal(tmp_path)
    try:
        lines = read_until(proc, 'admin password:')
        url = next(ln for ln in lines if ln.startswith('portal: http://')).split(' ', 1)[1]
        pw = lines[-1].split('admin password: ', 1)[1]
        r = requests.post(url + 'api/login', json={'user': 'admin', 'password': pw}, timeout=30)
        assert r.status_code == 200 and r.json()['role'] == 'admin'
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    proc = run_portal(tmp_path)
    try:
        lines = read_until(proc, 'schema')
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    assert not any('admin password' in ln for ln in lines + out.splitlines())
    assert (tmp_path / 'state' / 'portal.db').exists()


def test_a_missing_trust_store_is_refused_by_name(tmp_path: Path):
    env = {**os.environ, 'PYTHONPATH': str(ROOT / 'src')}
    r = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'portal', '--agency',
                        str(tmp_path / 'nowhere'), '--bucket', f'file://{tmp_path / "b"}',
                        '--state-dir', str(tmp_path / 's')],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and 'nowhere' in r.stderr, r.stderr


@pytest.fixture(params=['sqlite', 'postgresql'])
def url(request, tmp_path):
    if request.param == 'sqlite':
        yield str(tmp_path / 'portal.db')
        return
    server = PgServer().start()
    try:
        yield server.new_database()
    finally:
        server.stop()


def test_schema_is_versioned_and_migrated_once(url: str):
    db = open_database(url)
    assert db.version() == SCHEMA_VERSION == 3
    assert migrate(db) == []                       # nothing applied twice
    assert sorted(db.query('SELECT version FROM schema_migrations')) == [(1,), (2,), (3,)]
    db.execute('INSERT INTO schema_migrations (version, what, applied_at) VALUES (?, ?, ?)',
               (SCHEMA_VERSION + 1, 'from the future', 0.0))
    db.close()
    with pytest.raises(DatabaseError, match='newer than this portal'):
        open_database(url)


def test_an_unreachable_postgresql_is_named_without_its_password():
    with pytest.raises(DatabaseError, match=r'postgresql://u:\*\*\*@127\.0\.0\.1:1/x'):
        Database('postgresql://u:secret@127.0.0.1:1/x?connect_timeout=2')
