"""`bodycam install-service` and the supervisor's sd_notify, against real systemd tools and a
real unix datagram socket (what systemd listens on as $NOTIFY_SOCKET)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bodycam_ros.commands.install_service import ServiceError, unit_text
from bodycam_ros.sdnotify import Notifier, watchdog_period_s

VENV_BODYCAM = Path(sys.prefix) / 'bin' / 'bodycam'


def _install(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'install-service',
                           '--output', str(tmp_path), *extra],
                          capture_output=True, text=True, timeout=60)


def _verify(unit: Path) -> subprocess.CompletedProcess:
    if shutil.which('systemd-analyze') is None:
        if os.environ.get('CI'):
            pytest.fail('systemd-analyze missing: scripts/install-test-deps.sh installs systemd')
        pytest.skip('no systemd-analyze (Debian package systemd)')
    return subprocess.run(['systemd-analyze', 'verify', str(unit)], capture_output=True,
                          text=True, timeout=60)


def test_generated_unit_passes_systemd_analyze_verify(tmp_path: Path):
    assert VENV_BODYCAM.is_file(), f'{VENV_BODYCAM}: install the package (make install)'
    r = _install(tmp_path, '--prefix', sys.prefix, '--domain-id', '17')
    assert r.returncode == 0, r.stderr
    unit = tmp_path / 'bodycam.service'
    v = _verify(unit)
    # Not only the exit code: systemd-analyze only warns (exit 0) on a value it cannot parse.
    assert v.returncode == 0 and v.stdout + v.stderr == '', v.stdout + v.stderr
    text = unit.read_text()
    for line in ('Type=notify', 'NotifyAccess=main', 'WatchdogSec=30', 'Restart=on-failure',
                 'User=bodycam', 'StateDirectory=bodycam bodycam/evidence bodycam/keys',
                 'StateDirectoryMode=0700', 'ConfigurationDirectory=bodycam',
                 'StandardOutput=journal', 'Environment=ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST',
                 'Environment=ROS_DOMAIN_ID=17', 'KillMode=mixed', 'UMask=0077',
                 f'ExecStart={VENV_BODYCAM.absolute()} run --quiet --no-portal'):
        assert line in text, f'{line!r} not in the unit:\n{text}'
    assert '--composed all' in text
    users = (tmp_path / 'sysusers.d' / 'bodycam.conf').read_text()
    assert 'u bodycam - ' in users and 'm bodycam video' in users and 'm bodycam iio' in users


def test_a_broken_unit_fails_verify(tmp_path: Path):
    """The check can fail: an ExecStart that does not exist, or a value systemd rejects."""
    r = _install(tmp_path, '--prefix', str(tmp_path / 'nowhere'))
    assert r.returncode == 0 and 'does not exist' in r.stderr
    v = _verify(tmp_path / 'bodycam.service')
    assert v.returncode != 0 and 'nowhere/bin/bodycam' in v.stdout + v.stderr
    bad = tmp_path / 'bad' / 'bodycam.service'
    bad.parent.mkdir()
    bad.write_text(unit_text('bodycam', VENV_BODYCAM, 0, 30, 'all').replace(
        'WatchdogSec=30', 'WatchdogSec=thirty'))
    v = _verify(bad)
    assert 'thirty' in v.stdout + v.stderr


def test_bad_settings_are_named():
    with pytest.raises(ServiceError, match='--domain-id 300'):
        unit_text('bodycam', VENV_BODYCAM, 300, 30, 'all')
    with pytest.raises(ServiceError, match="--user 'root; rm'"):
        unit_text('root; rm', VENV_BODYCAM, 0, 30, 'all')
    r = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'install-service',
                        '--composed', 'camra'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "'camra'" in r.stderr


def test_watchdog_period_follows_systemd():
    assert watchdog_period_s({'WATCHDOG_USEC': '30000000'}) == 15.0
    assert watchdog_period_s({'WATCHDOG_USEC': '30000000', 'WATCHDOG_PID': '1'}) is None
    assert watchdog_period_s({}) is None


def _receiver(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / 'notify.sock'))
    sock.settimeout(0.2)
    return sock


def _drain(sock: socket.socket, seconds: float) -> list[str]:
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            got += sock.recv(4096).decode().split('\n')
        except TimeoutError:
            pass
    return got


def test_notifier_abstract_and_path_sockets(tmp_path: Path):
    sock = _receiver(tmp_path)
    assert Notifier(str(tmp_path / 'notify.sock')).send('READY=1', 'STATUS=x')
    assert _drain(sock, 0.5) == ['READY=1', 'STATUS=x']
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind('\0bodycam-test-%d' % os.getpid())
    abstract.settimeout(2)
    assert Notifier('@bodycam-test-%d' % os.getpid()).send('WATCHDOG=1')
    assert abstract.recv(100) == b'WATCHDOG=1'
    assert not Notifier('').enabled and not Notifier('').send('READY=1')


def test_run_notifies_ready_and_feeds_the_watchdog_only_while_every_node_reports(
        tmp_path: Path):
    """A real `bodycam run` with $NOTIFY_SOCKET: READY=1 once every node reported, WATCHDOG=1
    every period; a node that stops reporting (SIGSTOP: hung, as a deadlocked or dead node
    looks from outside) stops the feed within ALIVE_S; it resumes when the node does."""
    sock = _receiver(tmp_path)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / 'notify.sock'),
               WATCHDOG_USEC='1000000')          # feed every 0.5 s
    proc = subprocess.Popen([sys.executable, '-m', 'bodycam_ros.cli', 'run', '--quiet',
                             '--nodes', 'imu,gps,holster', '--log-dir', str(tmp_path / 'logs')],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        got = _drain(sock, 0.1)
        end = time.monotonic() + 60
        while 'WATCHDOG=1' not in got and time.monotonic() < end and proc.poll() is None:
            got += _drain(sock, 1.0)
        assert 'READY=1' in got and 'WATCHDOG=1' in got, got
        assert got.index('READY=1') < got.index('WATCHDOG=1'), got
        assert got.count('WATCHDOG=1') >= 1
        steady = _drain(sock, 3.0)
        assert steady.count('WATCHDOG=1') >= 4, steady      # ~6 expected at 0.5 s

        imu = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                   if 'bodycam_ros.nodes.imu_node' in ' '.join(p.cmdline()))
        imu.send_signal(signal.SIGSTOP)
        try:
            _drain(sock, 7.0)                       # ALIVE_S (5 s) plus a period
            starved = _drain(sock, 3.0)
            assert 'WATCHDOG=1' not in starved, starved
            assert any(s.startswith('STATUS=waiting for imu') for s in starved), starved
        finally:
            imu.send_signal(signal.SIGCONT)
        end = time.monotonic() + 30
        back: list[str] = []
        while 'WATCHDOG=1' not in back and time.monotonic() < end:
            back += _drain(sock, 1.0)
        assert 'WATCHDOG=1' in back, back
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert 'watchdog: not fed, no status from imu' in out, out
    assert 'STOPPING=1' in _drain(sock, 0.5)
