"""The agency portal next to a unit's graph, for ``bodycam run`` (issue 12, item 6).

A newcomer runs the patrol and watches its incident appear in the portal within minutes: the
portal is ``bodycam portal`` as a child process of the run's supervisor (its own session, its
log in ``LOG_DIR/portal/portal.log``, 0700, since the first start prints the admin password
there), on the run's bucket and agency. The run prints the portal's own ``portal:`` lines (URL,
first admin password) as they appear in that log, and stops the portal after the nodes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

#: The lines of the portal's log the run repeats on its terminal.
SHOWN = ('portal: http', 'portal: admin password:', 'portal: AUDIT CHAIN BROKEN')


def configured(params: Path, node: str, key: str) -> Any:
    """``key`` from the ``/**/<node>`` (or ``<node>``) section of a params file, else None."""
    import yaml
    doc = yaml.safe_load(Path(params).read_text()) or {}
    for section in (f'/**/{node}', node):
        value = ((doc.get(section) or {}).get('ros__parameters') or {}).get(key)
        if value not in (None, ''):
            return value
    return None


def portal_argv(bucket: str, agency: Path, state_dir: Path, port: int) -> list[str]:
    return [sys.executable, '-m', 'bodycam_ros.cli', 'portal', '--bucket', bucket,
            '--agency', str(agency.resolve()), '--state-dir', str(state_dir.resolve()),
            '--port', str(port)]


def why_not(bucket: str, agency: Path) -> str:
    """'' when a local portal can serve this run, else the reason it is not started."""
    from bodycam_ros.core import trust
    if not bucket.startswith('file://'):
        return (f'bucket {bucket} is not local; run `bodycam portal --bucket {bucket} '
                '--agency DIR` where the agency keeps its key')
    if not (agency / trust.REGISTRY).is_file():
        return f'no agency trust store in {agency} (run with the recorder to create the demo one)'
    return ''


class LogTail:
    """New complete lines of a growing log file, read without blocking."""

    def __init__(self, path: Path) -> None:
        self.path, self._offset, self._rest = path, 0, b''

    def lines(self) -> list[str]:
        try:
            with open(self.path, 'rb') as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *done, self._rest = (self._rest + data).split(b'\n')
        return [ln.decode('utf-8', 'replace') for ln in done]

    def shown(self) -> list[str]:
        return [ln for ln in self.lines() if ln.startswith(SHOWN)]


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


class LocalPortal:
    """``bodycam portal`` under its own supervisor: restarted if it crashes, stopped last."""

    def __init__(self, argv: list[str], log_dir: Path) -> None:
        from bodycam_ros import bringup
        self.sup = bringup.Supervisor([bringup.Child('portal', argv)],
                                      log_dir=private_dir(log_dir))
        self.tail = LogTail(log_dir / 'portal.log')

    def start(self) -> LocalPortal:
        self.sup.start()
        return self

    def poll(self) -> list[str]:
        """Supervisor events and the portal's URL / admin password lines, once each."""
        return self.sup.poll() + self.tail.shown()

    def stop(self) -> int | None:
        return self.sup.stop()['portal']


def start(bucket: str | None, params: Path, agency: Path, state_dir: Path, port: int,
          log_dir: Path) -> tuple[LocalPortal | None, str]:
    """The run's portal (or None) and a line to print ('' if none)."""
    url = bucket or configured(params, 'uploader', 'bucket') or 'file://var/bucket'
    reason = why_not(url, agency)
    if reason:
        return None, f'portal: not started: {reason}'
    return LocalPortal(portal_argv(url, agency, state_dir, port), log_dir / 'portal').start(), \
        f'portal: starting on {url} (agency {agency}, state {state_dir}; --no-portal to skip)'
