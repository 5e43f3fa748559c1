"""``bodycam report INCIDENT --agency DIR [--out report.html]``: one incident, offline.

Writes the portal's incident page as ONE self-contained HTML file (styles, code and data
inline; no request leaves the file): the player, the timeline of triggers, alerts and stops,
the speed, |acceleration| and tilt plots, the GPS track with a scale bar, the verification in
words and the chain of custody. An engineer opens it from a laptop with no network.

The view is the portal's own: the incident is indexed and verified by ``portal.indexer``
against the agency trust store (signature, registered device, chain, ledger), described by
``Portal.describe``, and decrypted by ``portal.evidence.EvidenceCache`` (both hashes checked
against the signed manifest, a crash-left video repaired). Nothing is decided twice here.

INCIDENT is an incident directory (in a unit's spool, a copied bucket, or alone) or
``file://BUCKET/<device>/<date>/<incident>``. The device's ledger and sibling incidents are
used when they sit where a spool or a bucket keeps them; an incident alone says in the
report that its ledger is not there. A video up to ``--embed-max-mb`` is embedded; a larger
one is written next to the report (``<report>.video.mp4``, 0600) and linked relatively.
Exit 0 verified, 1 not verified (the report is still written, saying why), 2 bad input.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WEB = Path(__file__).resolve().parent.parent / 'portal' / 'web'
LEDGER_FILES = ('ledger.jsonl', 'audit.jsonl')


class ReportError(RuntimeError):
    """Input the report cannot be made from; the message names it."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('incident', metavar='INCIDENT_DIR_OR_URL',
                   help='an incident directory or file://BUCKET/<device>/<date>/<incident>')
    p.add_argument('--agency', type=Path, required=True, metavar='DIR',
                   help="the agency's directory: trust store and encryption key")
    p.add_argument('--out', type=Path, default=Path('report.html'), metavar='FILE',
                   help='the HTML file to write (default report.html)')
    p.add_argument('--embed-max-mb', type=float, default=25.0, metavar='MB',
                   help='embed the decrypted video up to this size, else link it beside the '
                        'report (default 25)')
    p.add_argument('--passphrase-file', type=Path, default=None, metavar='FILE',
                   help='file holding the agency key passphrase (0600)')


# ------------------------------------------------------------------ a bucket for one device

def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def stage(incident: Path, root: Path) -> tuple[str, str]:
    """Lay the incident out as a one-device ``file://`` bucket under ``root`` (symlinks, no
    copies), with the device's ledger, audit log and sibling incidents when they are where a
    bucket or a spool keeps them. Returns (device_id, incident_id)."""
    from bodycam_ros.core import evidence as ev
    try:
        manifest = json.loads((incident / ev.MANIFEST).read_bytes())
    except (OSError, ValueError) as exc:
        raise ReportError(f'{incident}: no readable {ev.MANIFEST}: {exc}') from exc
    device, iid = str(manifest.get('device_id') or ''), incident.name
    if not device or '/' in device or device.startswith('.'):
        raise ReportError(f'{incident}: manifest device_id {device!r} is not a device name')
    dev_root = root / device
    bucket_dev = incident.parent.parent
    spool = incident.parent
    if (bucket_dev / 'ledger.jsonl').is_file() and bucket_dev.name == device:
        # A bucket's device folder: <device>/ledger.jsonl, <device>/<date>/<incident>/
        for p in bucket_dev.rglob('*'):
            if p.is_file() and not any(x.startswith('.') for x in p.relative_to(bucket_dev).parts):
                _link(p, dev_root / p.relative_to(bucket_dev))
        return device, iid
    if spool.name == 'spool' and (spool.parent / 'ledger.jsonl').is_file():
        # A unit's evidence directory: ledger.jsonl, audit.jsonl, spool/<incident>/
        for name in LEDGER_FILES:
            if (spool.parent / name).is_file():
                _link(spool.parent / name, dev_root / name)
        for inc in spool.iterdir():
            if (inc / ev.MANIFEST).is_file():
                for p in inc.iterdir():
                    if p.is_file() and not p.name.startswith('.'):
                        _link(p, dev_root / 'spool' / inc.name / p.name)
        return device, iid
    for p in incident.iterdir():
        if p.is_file() and not p.name.startswith('.'):
            _link(p, dev_root / 'alone' / iid / p.name)
    return device, iid


def locate(target: str) -> Path:
    """The incident directory of a path or a ``file://`` URL."""
    if target.startswith('s3://'):
        raise ReportError(f'{target}: s3:// is not read here; open it in `bodycam portal` or '
                          'copy the device folder locally (aws s3 sync) and report from it')
    path = Path(target[len('file://'):]) if target.startswith('file://') else Path(target)
    if not path.is_dir():
        raise ReportError(f'{target}: not an incident directory')
    return path.resolve()


# ------------------------------------------------------------------ the view

def build_view(incident: Path, agency: Path, work: Path, identity: Any = None
               ) -> tuple[dict[str, Any], dict[str, Any] | None, str, Path | None, str]:
    """(detail, sensors, sensors note, decrypted video or None, video note) as the portal
    would serve them."""
    from bodycam_ros.portal.app import ApiError, Portal, PortalConfig
    from bodycam_ros.portal.evidence import PlaybackError
    device, iid = stage(incident, work / 'bucket')
    portal = Portal(PortalConfig(bucket=f'file://{work / "bucket"}', agency_dir=agency,
                                 state_dir=work / 'state'))
    try:
        if identity is not None:
            portal.cache.use_identity(identity)
        portal.indexer.poll()
        try:
            row = portal.row(iid)
        except ApiError as exc:
            raise ReportError(f'{incident}: not indexed ({exc}); is it a sealed incident of '
                              f'device {device}?') from exc
        detail = portal.describe(row)
        sensors, note = None, ''
        try:
            sensors = portal.cache.sensors(iid, row['key_prefix'], row['manifest'],
                                           row['manifest_sha256'])
            note = ('from sensors.mcap, decrypted and checked against the signed hash; speed '
                    f'from {sensors.get("speed_source")}')
        except (PlaybackError, OSError, ValueError) as exc:
            note = f'sensors unavailable: {exc}'
        video, vnote = None, ''
        try:
            video = portal.cache.plaintext(iid, row['key_prefix'], row['manifest'],
                                           row['manifest_sha256'], 'video.mp4')
            vnote = 'full clip, decrypted and checked against the signed hashes'
            if not (row['manifest'].get('files') or {}).get('video.mp4.age', {}).get(
                    'plaintext'):
                vnote = 'crash-left clip, decrypted and repaired to its last whole fragment'
        except (PlaybackError, OSError) as exc:
            vnote = f'video refused: {exc}'
        return detail, sensors, note, video, vnote
    finally:
        portal.close()


def _inline(html: str, data: dict[str, Any], banner: str) -> str:
    """incident.html with the stylesheet, the scripts and the data inline."""
    css = (WEB / 'portal.css').read_text()
    scripts = {name: (WEB / name).read_text() for name in ('common.js', 'incident.js')}
    for name, code in scripts.items():
        if '</script' in code.lower():
            raise ReportError(f'{name} holds "</script": it cannot be inlined')
    blob = json.dumps(data, sort_keys=True).replace('<', '\\u003c')
    link = '<link rel="stylesheet" href="/static/portal.css">'
    if link not in html:
        raise ReportError('incident.html has no portal.css link to inline')
    html = html.replace(link, f'<style>\n{css}</style>')
    for name, code in scripts.items():
        tag = f'<script src="/static/{name}"></script>'
        if tag not in html:
            raise ReportError(f'incident.html has no {tag}')
        extra = f'<script>window.BODYCAM_REPORT = {blob};</script>\n' \
            if name == 'common.js' else ''
        html = html.replace(tag, f'{extra}<script>\n{code}</script>')
    html = html.replace('<main>', f'<main>\n{banner}', 1)
    return html


def write_report(target: str, agency: Path, out: Path, embed_max_bytes: int,
                 identity: Any = None, now: float | None = None) -> dict[str, Any]:
    """Write the report (and the linked video when too big to embed); returns a summary."""
    from bodycam_ros.core.fsio import write_atomic
    incident = locate(target)
    with tempfile.TemporaryDirectory(prefix='bodycam-report-') as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        detail, sensors, snote, video, vnote = build_view(incident, agency, work, identity)
        # Problems name the staged bucket, which is gone when the report is read.
        staged = f'file://{work / "bucket"}'
        detail = json.loads(json.dumps({**detail, 'links': {}}).replace(
            staged + '/', '').replace(staged, ''))
        vinfo: dict[str, Any] = {'label': vnote}
        linked = None
        if video is not None:
            size = video.stat().st_size
            if size <= embed_max_bytes:
                vinfo['base64'] = base64.b64encode(video.read_bytes()).decode()
                vinfo['label'] = f'{vnote} (embedded, {size / 1e6:.1f} MB)'
            else:
                linked = out.with_name(out.stem + '.video.mp4')
                tmpv = linked.with_name('.' + linked.name + '.part')
                shutil.copyfile(video, tmpv)
                os.chmod(tmpv, 0o600)
                os.replace(tmpv, linked)
                vinfo['href'] = linked.name
                vinfo['label'] = f'{vnote} (beside this file: {linked.name})'
    stamp = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(time.time() if now is None
                                                                else now))
    banner = ('<p class="card" id="report-banner"><b>Offline report</b> made by '
              f'<span class="mono">bodycam report</span> at {stamp} from '
              f'<span class="mono">{_esc(target)}</span>, checked against the trust store '
              f'of <span class="mono">{_esc(str(agency))}</span>. It holds decrypted '
              'evidence: keep it where the agency keeps evidence.</p>')
    data = {'detail': detail, 'sensors': sensors, 'sensors_note': snote, 'video': vinfo,
            'generated': stamp, 'source': target}
    html = _inline((WEB / 'incident.html').read_text(), data, banner)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, html.encode(), mode=0o600)
    return {'out': str(out), 'video': str(linked) if linked else
            ('embedded' if 'base64' in vinfo else None), 'incident_id': detail['incident_id'],
            'verified': detail['verified'], 'problems': detail['verify_problems']}


def _esc(s: str) -> str:
    return (s.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')
            .replace('"', '&quot;'))


def main(args: argparse.Namespace) -> int:
    from bodycam_ros.core import trust as tr
    if args.embed_max_mb < 0:
        print(f'error: --embed-max-mb {args.embed_max_mb}: >= 0 expected', file=sys.stderr)
        return 2
    try:
        identity = tr.load_encryption_private(
            args.agency, tr.agency_passphrase(args.passphrase_file))
    except (tr.TrustError, OSError) as exc:
        print(f'error: --agency {args.agency}: {exc}', file=sys.stderr)
        return 2
    try:
        res = write_report(args.incident, args.agency, args.out,
                           int(args.embed_max_mb * 1e6), identity)
    except (ReportError, OSError, tr.TrustError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print(f'report: {res["out"]}')
    if res['video'] and res['video'] != 'embedded':
        print(f'report: video {res["video"]}')
    if res['verified']:
        print(f'report: {res["incident_id"]} verified')
        return 0
    for p in res['problems']:
        print(f'NOT VERIFIED {res["incident_id"]}: {p}', file=sys.stderr)
    return 1
