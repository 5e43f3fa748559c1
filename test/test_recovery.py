"""Crash recovery one incident at a time: a damaged clip never blocks the others, the video
as the crash left it is kept beside its repaired copy, a hopeless incident is quarantined
with a reason and the recorder goes on recording; a writer error loses nothing."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.ring import LookbackRing, SensorRecord
from bodycam_ros.core.spool import (EVENTS, VIDEO, Command, EvidenceStore, IncidentWriter,
                                    Recorder, RecorderConfig)
from conftest import ROOT
from test_evidence import fix_record, wait_for
from test_mp4 import encode_clip, frame_counters

TORN = b'\x00\x00\x10\x00moof' + bytes(100)       # a fragment cut off by the crash


def crash_left(store: EvidenceStore, frames: int = 100, t0: float = 1000.0,
               events: list[dict] | None = None) -> Path:
    """An incident as a killed recorder leaves it: no trailer, no close, a torn fragment."""
    d = store.recording / str(uuid.uuid4())
    w = IncidentWriter(d, {'type': 'open', 'incident_id': d.name, 'device_id': 'u1',
                           'officer_id': 'o1', 'wall_time': t0, 'ros_time': t0}, 1.0)
    w.event({'type': 'trigger', 'reason': 'fight', 'trigger_time': t0 + 1.0})
    for e in events or []:
        w.event(e)
    for i, p in enumerate(encode_clip(frames, t0=t0)):
        w.video(p)
        if i % 5 == 0:
            w.sensor(fix_record(p.t, i))
    w.sync()
    w.abandon()
    with open(d / VIDEO, 'ab') as f:
        f.write(TORN)
    return d


def recorder(store: EvidenceStore, **cfg) -> Recorder:
    return Recorder(store, LookbackRing(3.0, 1 << 26), ev.DeviceKey.load_or_create(store.keys),
                    RecorderConfig(**{'min_free_bytes': 0, 'pre_event_s': 1.0,
                                      'post_event_s': 0.2, **cfg}))


def manifest(path: Path) -> dict:
    return json.loads((path / 'manifest.json').read_text())


def verify_cli(path: Path) -> int:
    """0 when the CLI finds the evidence intact. These incidents carry a legacy in-evidence
    key and no trust store, so verify itself exits 1 saying trusted: false (never ok)."""
    r = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'verify', '--json',
                        '--compact', str(path)], capture_output=True, cwd=ROOT, timeout=60)
    out = json.loads(r.stdout) if r.stdout.strip() else {}
    return 0 if r.returncode == 1 and out.get('integrity_ok') and not out['trusted'] else 1


def test_two_crash_left_incidents_the_first_with_a_damaged_moov_are_both_recovered(
        tmp_path: Path):
    store = EvidenceStore(tmp_path / 'ev')
    first = crash_left(store)
    damaged = (first / VIDEO).read_bytes().replace(b'avc1', bytes(4), 1)
    (first / VIDEO).write_bytes(damaged)
    time.sleep(0.01)                      # recovery goes oldest first: the damaged one
    second = crash_left(store, t0=2000.0)
    crash_bytes = (second / VIDEO).read_bytes()
    rec = recorder(store)
    rec.start()
    assert wait_for(lambda: rec.status().recovered == 2, 30.0), rec.events()
    rec.close()
    st = rec.status()
    assert st.writer_errors == 0 and st.quarantined == 0, rec.events()
    assert not any(store.recording.iterdir())
    a, b = (store.spool / first.name), (store.spool / second.name)
    ma, mb = manifest(a), manifest(b)
    assert ma['recovered'] and not ma['recovery']['video_playable']
    assert ma['frame_count'] == 0                        # nothing readable to count
    assert (a / 'video.original.mp4').read_bytes() == damaged   # kept as the crash left it
    assert mb['recovery']['video_playable'] and mb['frame_count'] == 90
    assert frame_counters(b / VIDEO) == list(range(90))
    assert (b / 'video.original.mp4').read_bytes() == crash_bytes
    assert crash_bytes.startswith((b / VIDEO).read_bytes())
    assert {'video.mp4', 'video.original.mp4'} <= set(mb['files'])
    assert mb['recovery']['video_original'] == 'video.original.mp4'
    report = ev.verify_tree(store.root)
    assert report.ok, report.as_dict()
    assert verify_cli(store.root) == 0


def test_recovery_never_truncates_the_crash_left_video(tmp_path: Path):
    store = EvidenceStore(tmp_path / 'ev')
    d = crash_left(store)
    crash_bytes = (d / VIDEO).read_bytes()
    rec = recorder(store)
    rec.start()
    assert wait_for(lambda: rec.status().recovered == 1, 30.0), rec.events()
    rec.close()
    sealed = store.spool / d.name
    assert (sealed / 'video.original.mp4').read_bytes() == crash_bytes
    assert (sealed / VIDEO).read_bytes() == crash_bytes[:-len(TORN)]
    m = manifest(sealed)
    assert m['recovery']['video_dropped_bytes'] == len(TORN)
    assert ev.sha256_bytes(crash_bytes) == m['files']['video.original.mp4']['sha256']
    assert verify_cli(sealed) == 0


def test_a_hopeless_incident_is_quarantined_with_a_reason_and_recording_goes_on(
        tmp_path: Path):
    store = EvidenceStore(tmp_path / 'ev')
    # A NaN trigger time: no canonical (signable) manifest can say it.
    bad = crash_left(store, events=[{'type': 'trigger', 'reason': 'holster',
                                     'trigger_time': float('nan')}])
    bad_files = {p.name: p.read_bytes() for p in bad.iterdir()}
    time.sleep(0.01)
    good = crash_left(store, t0=2000.0)
    rec = recorder(store)
    rec.start()
    assert wait_for(lambda: rec.status().recovered == 1 and rec.status().quarantined == 1,
                    30.0), rec.events()
    assert (store.spool / good.name).is_dir() and not bad.exists()
    q = store.quarantine / bad.name
    reason = json.loads((q / 'quarantine.json').read_text())
    assert reason['incident_id'] == bad.name and reason['stage'] == 'seal'
    assert reason['error_type'] == 'SealError' and 'nan' in reason['error'].lower()
    for name, data in bad_files.items():                 # kept, byte for byte
        assert (q / name).read_bytes() == data
    events = rec.events()
    assert any('quarantined' in e and bad.name in e for e in events), events
    # ...and the recorder still records and seals a new incident.
    packets = encode_clip(60, t0=3000.0)
    for i, p in enumerate(packets):
        rec.on_video(p)
        if i == 40:
            rec.on_command(Command('start', 'manual', p.t, 'c1', p.t))
    rec.on_command(Command('stop', 'manual', packets[-1].t, 'c2', packets[-1].t))
    rec.tick(packets[-1].t + 1.0)
    assert wait_for(lambda: rec.status().sealed == 2, 30.0), rec.events()
    rec.close()
    assert ev.verify_tree(store.root).ok
    again = recorder(store)                              # a restart: not retried, still told
    again.start()
    assert wait_for(lambda: again.status().quarantined == 1)
    again.close()
    assert (q / 'quarantine.json').exists() and again.status().recovered == 0


def test_one_bad_record_in_the_look_back_does_not_lose_the_incident(tmp_path: Path):
    store = EvidenceStore(tmp_path / 'ev')
    rec = recorder(store, pre_event_s=1.0)
    rec.start()
    packets = encode_clip(90)
    for i, p in enumerate(packets):
        rec.on_video(p)
        if i == 45:          # a record the journal cannot hold (topic > 65535 bytes)
            rec.on_sensor(SensorRecord(p.t, '/' + 'x' * 70_000, 'std_msgs/msg/Bool', b'\x01'))
        elif i % 3 == 0:
            rec.on_sensor(fix_record(p.t, i))
        if i == 60:
            rec.on_command(Command('start', 'manual', p.t, 'c1', p.t))
    rec.on_command(Command('stop', 'manual', packets[-1].t, 'c2', packets[-1].t))
    rec.tick(packets[-1].t + 1.0)
    assert wait_for(lambda: rec.status().sealed == 1, 30.0), rec.events()
    rec.close()
    (inc,) = store.sealed()
    m = manifest(inc.path)
    assert frame_counters(inc.path / VIDEO) == list(range(30, 90))
    assert m['frame_count'] == 60 and m['sensors']['messages']['/gps/fix'] > 0
    assert rec.status().writer_errors == 1
    assert not (store.recording / inc.incident_id / EVENTS).exists()
    assert ev.verify_tree(store.root).ok
