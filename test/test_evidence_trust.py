"""Evidence a stolen unit cannot read, on the recorder's real code path (issue 10).

The Recorder writes through age to a test agency: nothing on disk decodes, the agency decrypts
to the hashes the signed manifest names; a crash-left encrypted incident is sealed as found
and still yields its complete chunks; every seal is one signed ledger entry, in order; the
audit log has the opens, seals, configuration and key; modes are 0700/0600; the device key
is refused inside the evidence directory; and a forged stop over DDS from another process is
refused while the weapon is drawn."""
from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import Bool

from bodycam_ros.core import evidence as ev
from bodycam_ros.core import keys
from bodycam_ros.core.audit import AuditLog, audit_path
from bodycam_ros.core.encryption import decode_recipient
from bodycam_ros.core.ledger import Ledger, ledger_path
from bodycam_ros.core.mp4 import repair
from bodycam_ros.core.ring import LookbackRing
from bodycam_ros.core.sidecar import read_journal, read_mcap
from bodycam_ros.core.spool import Command, EvidenceStore, Recorder, RecorderConfig
from bodycam_ros.rosutil import LATCHED_QOS
from conftest import ROOT, spin_until
from spoolutil import agency_for, decrypt_file, decrypted_incident
from test_evidence import fix_record, wait_for
from test_mp4 import encode_clip, ffprobe_frames, frame_counters
from test_recorder_node import Probe, command, make_recorder, sealed, values

FRAMES = 60


def ffprobe_fails(path: Path) -> bool:
    r = subprocess.run(['ffprobe', '-v', 'error', str(path)], capture_output=True, timeout=60)
    return r.returncode != 0


def unit(tmp_path: Path, **cfg) -> tuple[EvidenceStore, Recorder, keys.FileSigner]:
    """The recorder as the node builds it: key outside the evidence, ledger, audit, age."""
    _, recipient_file, _ = agency_for(tmp_path)
    signer = keys.FileSigner.create(tmp_path / 'keys', 'unit-t', None, tmp_path / 'ev') \
        if not (tmp_path / 'keys' / keys.DEVICE_INFO).exists() \
        else keys.open_signer(tmp_path / 'keys')
    store = EvidenceStore(tmp_path / 'ev')
    recipient = recipient_file.read_text().strip()
    rec = Recorder(store, LookbackRing(keep_s=3.0, max_bytes=1 << 26), signer,
                   RecorderConfig(**{'pre_event_s': 1.0, 'post_event_s': 0.4,
                                     'min_free_bytes': 0, 'device_id': 'unit-t', **cfg}),
                   recipients=[decode_recipient(recipient)], recipient=recipient,
                   ledger=Ledger(ledger_path(store.root), signer, 'unit-t'),
                   audit=AuditLog(audit_path(store.root), signer, 'unit-t'))
    return store, rec, signer


def record(rec: Recorder, incidents: int, t0: float = 1000.0) -> None:
    """Start half-way through each ``FRAMES``, stop at three quarters (as test_evidence)."""
    for i, p in enumerate(encode_clip(FRAMES * incidents, t0=t0)):
        rec.on_video(p)
        if i % 3 == 0:
            rec.on_sensor(fix_record(p.t, i))
        k = i % FRAMES
        if k == FRAMES // 2:
            rec.on_command(Command('start', 'manual', p.t, str(uuid.uuid4()), p.t))
        elif k == FRAMES * 3 // 4:
            rec.on_command(Command('stop', 'manual', p.t, str(uuid.uuid4()), p.t))
        rec.tick(p.t)


def test_nothing_on_disk_decodes_and_the_agency_gets_the_signed_plaintext(tmp_path: Path):
    store, rec, signer = unit(tmp_path)
    rec.start()
    record(rec, 3)
    rec.close()
    assert rec.status().sealed == 3, rec.events()
    clips = [s.path for s in store.sealed()]
    assert len(clips) == 3
    identity = agency_for(tmp_path)[2]
    for clip in clips:
        m = json.loads((clip / ev.MANIFEST).read_text())
        assert m['format'] == 'bodycam-incident/2'
        assert m['encryption'] == {'scheme': 'age-v1',
                                   'recipient': (tmp_path / 'agency_recipient.txt')
                                   .read_text().strip()}
        assert set(m['files']) == {'video.mp4.age', 'sensors.mcap.age'}
        for name in m['files']:
            assert ffprobe_fails(clip / name), f'{name} decodes on the unit'
            assert (clip / name).read_bytes().startswith(b'age-encryption.org/v1\n')
        assert not any(p.name.endswith(('.mp4', '.mcap', '.journal')) for p in clip.iterdir())
        e = m['files']['video.mp4.age']
        assert e['complete'] and e['plaintext']['name'] == 'video.mp4' and e['torn_bytes'] == 0
        assert m['device_key_sha256'] == signer.key_id
        plain = decrypted_incident(clip, identity, tmp_path / 'plain' / clip.name)
        assert ffprobe_frames(plain['video.mp4']) == m['frame_count'] > 0
        counters = frame_counters(plain['video.mp4'])
        assert counters == list(range(counters[0], counters[0] + len(counters)))
        fixes = [x for x in read_mcap(plain['sensors.mcap']) if x[0] == '/gps/fix']
        assert len(fixes) == m['sensors']['messages']['/gps/fix'] == m['gps_track']['fixes']
    assert ev.verify_tree(store.root).ok
    # The ledger: one signed 'sealed' entry per incident, in sequence order.
    entries = Ledger(ledger_path(store.root), signer, 'unit-t').entries()
    seals = [e for e in entries if e.event in ('sealed', 'recovered')]
    assert [(e.event, e.data['sequence'], e.data['incident_id']) for e in seals] == \
        [('sealed', i + 1, c.name) for i, c in enumerate(clips)]
    assert all(e.data['manifest_sha256'] == ev.sha256_bytes((c / ev.MANIFEST).read_bytes())
               for e, c in zip(seals, clips))
    audit = [e.event for e in AuditLog(audit_path(store.root), signer, 'unit-t').log.entries()]
    assert audit.count('incident_opened') == 3 and audit.count('incident_sealed') == 3
    # 0700 directories, 0600 files: evidence is the unit's business alone.
    for d in (store.root, store.spool, store.recording, *clips):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for f in [p for c in clips for p in c.iterdir()] + [ledger_path(store.root),
                                                       audit_path(store.root)]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


CRASHER = '''
import sys, time
sys.path.insert(0, 'test')
from pathlib import Path
from test_evidence_trust import unit, crash_clip
tmp = Path(sys.argv[1])
store, rec, signer = unit(tmp)
rec.start()
clip = crash_clip()
rec.on_video(clip[0])
from bodycam_ros.core.spool import Command
from test_evidence import fix_record
rec.on_command(Command('start', 'fight', clip[0].t, 'c1', clip[0].t))
for i, p in enumerate(clip[1:], 1):
    rec.on_video(p)
    if i % 3 == 0:
        rec.on_sensor(fix_record(p.t, i))
while rec.status().frames < len(clip):
    time.sleep(0.05)
time.sleep(1.5)                     # one more sync pass, then the power cut
print(rec.status().incident_id, flush=True)
time.sleep(600)
'''


def crash_clip():
    return encode_clip(6 * 30, t0=2000.0)


def test_crash_left_encrypted_incident_is_sealed_as_found_and_still_decrypts(tmp_path: Path):
    agency_for(tmp_path)
    proc = subprocess.Popen([sys.executable, '-c', CRASHER, str(tmp_path)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        incident = proc.stdout.readline().strip()
    finally:
        proc.kill()                               # SIGKILL: nothing more reaches the disk
        proc.wait(10)
    assert incident, proc.stderr.read()
    crashed = tmp_path / 'ev'
    assert (crashed / 'recording' / incident / 'sensors.journal.age').exists()
    assert (crashed / 'recording' / incident / 'video.mp4.age').stat().st_size > 100_000
    signer = keys.open_signer(tmp_path / 'keys')

    store2 = EvidenceStore(crashed)
    rec2 = Recorder(store2, LookbackRing(3.0, 1 << 26), signer, RecorderConfig(min_free_bytes=0),
                    recipients=[decode_recipient(
                        (tmp_path / 'agency_recipient.txt').read_text())],
                    recipient='', ledger=Ledger(ledger_path(crashed), signer, 'unit-t'))
    rec2.start()
    assert wait_for(lambda: (crashed / 'spool' / incident).exists()), rec2.events()
    rec2.close()
    out = crashed / 'spool' / incident
    m = json.loads((out / ev.MANIFEST).read_text())
    assert m['recovered'] and m['end_reason'] == 'recovered'
    assert m['encryption']['scheme'] == 'age-v1'
    assert set(m['files']) >= {'video.mp4.age', 'sensors.journal.age'}
    for name, e in m['files'].items():
        assert e['complete'] is False and e['plaintext'] is None, name
        assert ffprobe_fails(out / name)
    assert m['recovery']['incomplete_files'] == sorted(m['files'])
    assert ev.verify_tree(crashed).ok
    # The agency: every complete chunk decrypts; the clip repairs; the journal reads.
    identity = agency_for(tmp_path)[2]
    e = m['files']['video.mp4.age']
    res = decrypt_file(out / 'video.mp4.age', identity, tmp_path / 'torn.mp4')
    assert not res.complete and res.chunks == e['chunks'] >= 2
    assert res.ciphertext_sha256 == e['sha256']
    assert repair(tmp_path / 'torn.mp4', tmp_path / 'video.mp4').playable
    counters = frame_counters(tmp_path / 'video.mp4')
    assert counters[:1] == [0] and counters == list(range(len(counters)))
    assert len(counters) >= 3 * 30            # all but the last fragment and age chunk
    decrypt_file(out / 'sensors.journal.age', identity, tmp_path / 'journal')
    assert len(read_journal(tmp_path / 'journal').records) >= 20
    (seal_entry,) = [x for x in Ledger(ledger_path(crashed), signer, 'unit-t').entries()
                     if x.event in ('sealed', 'recovered')]
    assert seal_entry.event == 'recovered' and seal_entry.data['incident_id'] == incident


def test_a_crash_between_seal_and_ledger_heals_on_start(tmp_path: Path):
    store, rec, signer = unit(tmp_path)
    rec.ledger = None                         # the append that a crash prevented
    rec.start()
    record(rec, 1)
    rec.close()
    (clip,) = store.sealed()
    _, rec2, _ = unit(tmp_path)
    rec2.start()
    rec2.close()
    seals = [e for e in Ledger(ledger_path(store.root), signer, 'unit-t').entries()
             if e.event == 'sealed']
    assert [e.data['incident_id'] for e in seals] == [clip.incident_id]


def run_recorder(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'bodycam_ros.nodes.recorder_node',
                           '--ros-args', '-p', f'evidence_dir:={tmp_path / "ev"}', *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_key_dir_inside_the_evidence_dir_is_refused(tmp_path: Path):
    inside = tmp_path / 'ev' / 'keys'
    r = run_recorder(tmp_path, '-p', f'key_dir:={inside}', '-p', 'provision_on_first_run:=true',
                     '-p', f'agency_recipient_file:={agency_for(tmp_path)[1]}')
    assert r.returncode == 2, r.stdout + r.stderr
    assert 'key_dir' in r.stdout and 'inside the evidence directory' in r.stdout
    assert not inside.exists()


def test_no_key_without_provisioning_exits_2_saying_how(tmp_path: Path):
    r = run_recorder(tmp_path, '-p', f'key_dir:={tmp_path / "keys"}',
                     '-p', f'agency_recipient_file:={agency_for(tmp_path)[1]}')
    assert r.returncode == 2, r.stdout + r.stderr
    assert f'bodycam provision --key-dir {tmp_path / "keys"}' in r.stdout
    r = run_recorder(tmp_path, '-p', f'key_dir:={tmp_path / "keys"}',
                     '-p', 'provision_on_first_run:=true')
    assert r.returncode == 2 and 'agency_recipient_file' in r.stdout


def test_plaintext_only_when_asked_with_a_warning_at_start_and_in_diagnostics(
        ctx, executor, tmp_path: Path):
    rec = make_recorder(ctx, tmp_path, encrypt=False, post_event_s=0.0)
    probe = Probe(context=ctx)
    executor.add_node(rec)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.cmd.get_subscription_count() > 0 and
                      probe.status, 15.0)
    assert spin_until(executor, lambda: any('PLAINTEXT' in values(s)['problem']
                                            for s in probe.status), 5.0)
    probe.cmd.publish(command('start', 'manual', time.time()))
    assert spin_until(executor, lambda: probe.states()[-1:] == ['RECORDING'], 10.0)
    probe.cmd.publish(command('stop', 'manual', time.time()))
    assert spin_until(executor, lambda: sealed(tmp_path / 'ev'), 10.0)
    m = json.loads((sealed(tmp_path / 'ev')[0] / ev.MANIFEST).read_text())
    assert m['encryption'] == {'scheme': 'none'}


FORGER = '''
import sys, time, uuid, rclpy
from rclpy.node import Node
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from bodycam_ros.rosutil import RELIABLE_QOS
rclpy.init()
n = Node('forger')
pub = n.create_publisher(DiagnosticStatus, 'recorder/command', RELIABLE_QOS)
end = time.monotonic() + 20
while pub.get_subscription_count() < 1 and time.monotonic() < end:
    rclpy.spin_once(n, timeout_sec=0.1)
pub.publish(DiagnosticStatus(name='stop', message='stop (manual)', values=[
    KeyValue(key='reason', value='manual'), KeyValue(key='trigger_time', value=repr(time.time())),
    KeyValue(key='command_id', value=str(uuid.uuid4()))]))
for _ in range(20):
    rclpy.spin_once(n, timeout_sec=0.05)
print('forged stop sent', flush=True)
'''


def test_a_forged_stop_from_another_process_is_refused_while_the_weapon_is_drawn(
        ctx, executor, tmp_path: Path):
    rec = make_recorder(ctx, tmp_path, post_event_s=0.0)
    probe = Probe(context=ctx)
    executor.add_node(rec)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.cmd.get_subscription_count() > 0 and
                      probe.holster.get_subscription_count() > 0, 15.0)
    probe.holster.publish(Bool(data=True))
    probe.cmd.publish(command('start', 'holster', time.time()))
    assert spin_until(executor, lambda: probe.states()[-1:] == ['RECORDING'], 10.0)
    incident = values(probe.status[-1])['incident_id']
    forger = subprocess.Popen([sys.executable, '-c', FORGER], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert spin_until(executor, lambda: forger.poll() is not None, 60.0)
    finally:
        if forger.poll() is None:
            forger.kill()
    assert 'forged stop sent' in forger.stdout.read()
    assert spin_until(executor, lambda: int(values(probe.status[-1])['refused_stops']) == 1,
                      10.0)
    spin_until(executor, lambda: False, 1.0)
    last = values(probe.status[-1])
    assert probe.status[-1].message == 'RECORDING' and last['incident_id'] == incident
    assert not sealed(tmp_path / 'ev')
    # Holstered, a stop (from whoever) ends the incident as before.
    probe.holster.publish(Bool(data=False))
    spin_until(executor, lambda: False, 0.5)
    probe.cmd.publish(command('stop', 'holster', time.time()))
    assert spin_until(executor, lambda: sealed(tmp_path / 'ev'), 15.0)
    m = json.loads((sealed(tmp_path / 'ev')[0] / ev.MANIFEST).read_text())
    assert m['incident_id'] == incident and len(m['stops']) == 1


def test_a_stop_is_refused_while_an_officer_down_alert_is_open(ctx, executor, tmp_path: Path):
    from bodycam_ros.core.messages import AlertState, DownAlert, encode_alert
    from bodycam_ros.wire import to_status
    rec = make_recorder(ctx, tmp_path, post_event_s=0.0)
    probe = Probe(context=ctx)
    alerts = probe.create_publisher(DiagnosticStatus, 'bodycam/alerts', LATCHED_QOS)
    executor.add_node(rec)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.cmd.get_subscription_count() > 0 and
                      alerts.get_subscription_count() > 0, 15.0)
    alerts.publish(to_status(encode_alert(DownAlert('a1', AlertState.RAISED, time.time(),
                                                    'unit-test'))))
    probe.cmd.publish(command('start', 'officer_down', time.time()))
    assert spin_until(executor, lambda: probe.states()[-1:] == ['RECORDING'], 10.0)
    probe.cmd.publish(command('stop', 'manual', time.time()))
    assert spin_until(executor, lambda: int(values(probe.status[-1])['refused_stops']) == 1,
                      10.0)
    alerts.publish(to_status(encode_alert(DownAlert('a1', AlertState.CANCELLED, time.time(),
                                                    'unit-test'))))
    spin_until(executor, lambda: False, 0.5)
    probe.cmd.publish(command('stop', 'manual', time.time()))
    assert spin_until(executor, lambda: sealed(tmp_path / 'ev'), 15.0)

