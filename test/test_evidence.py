"""Evidence that holds up: signed hash-chained manifests, verify naming every altered file,
crash recovery, disk pressure and a full disk, the MCAP sidecar read back with rosbags."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import NavSatFix, NavSatStatus

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.mp4 import Fmp4Writer
from bodycam_ros.core.ring import LookbackRing, SensorRecord
from bodycam_ros.core.sidecar import JournalWriter, read_journal, read_mcap, write_mcap
from bodycam_ros.core.spool import (EVENTS, JOURNAL, VIDEO, Command, DurableFile,
                                    EvidenceStore, IncidentWriter, Recorder, RecorderConfig)
from conftest import ROOT
from test_mp4 import encode_clip, ffprobe_frames, frame_counters

LAT0, LON0 = 38.5816, -121.4944


def fix_record(t: float, i: int) -> SensorRecord:
    msg = NavSatFix(latitude=LAT0 + i * 1e-5, longitude=LON0, altitude=9.0)
    msg.status.status = NavSatStatus.STATUS_FIX
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int(t % 1 * 1e9)
    return SensorRecord(t, '/gps/fix', 'sensor_msgs/msg/NavSatFix', serialize_message(msg))


def wait_for(pred, timeout_s: float = 10.0) -> bool:
    """For the recorder's own writer thread (no executor to spin here)."""
    end = time.monotonic() + timeout_s
    while not pred() and time.monotonic() < end:
        time.sleep(0.02)
    return bool(pred())


def record_incidents(root: Path, incidents: int = 2, frames: int = 60, **cfg) -> EvidenceStore:
    """Record ``incidents`` clips through the real Recorder with synthetic, continuous time:
    each starts half-way through its ``frames`` and stops at three quarters."""
    store = EvidenceStore(root)
    key = ev.DeviceKey.load_or_create(store.keys)
    rec = Recorder(store, LookbackRing(keep_s=3.0, max_bytes=1 << 26), key,
                   RecorderConfig(**{'pre_event_s': 1.0, 'post_event_s': 0.4,
                                     'min_free_bytes': 0, **cfg}))
    rec.start()
    for i, p in enumerate(encode_clip(frames * incidents)):
        rec.on_video(p)
        if i % 3 == 0:
            rec.on_sensor(fix_record(p.t, i))
        k = i % frames
        if k == frames // 2:
            rec.on_command(Command('start', 'manual', p.t, str(uuid.uuid4()), p.t))
        elif k == frames * 3 // 4:
            rec.on_command(Command('stop', 'manual', p.t, str(uuid.uuid4()), p.t))
        rec.tick(p.t)
    rec.close()
    assert rec.status().sealed == incidents, rec.events()
    return store


@pytest.fixture(scope='module')
def spool_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('evidence') / 'ev'
    record_incidents(root, incidents=3)
    return root


@pytest.fixture
def evidence_root(spool_template: Path, tmp_path: Path) -> Path:
    root = tmp_path / 'ev'
    shutil.copytree(spool_template, root)
    return root


def incidents(root: Path) -> list[Path]:
    return [root / 'spool' / s.incident_id for s in EvidenceStore(root).sealed()]


def test_device_key_is_created_once_private_and_exported(tmp_path: Path):
    k1 = ev.DeviceKey.load_or_create(tmp_path / 'keys')
    assert (tmp_path / 'keys' / 'device_ed25519').stat().st_mode & 0o777 == 0o600
    assert ev.load_public_key(tmp_path / 'keys' / 'device_ed25519.pub') == k1.public_raw
    assert ev.DeviceKey.load_or_create(tmp_path / 'keys').fingerprint == k1.fingerprint
    os.chmod(tmp_path / 'keys' / 'device_ed25519', 0o644)
    with pytest.raises(ev.EvidenceError, match='0600'):
        ev.DeviceKey.load_or_create(tmp_path / 'keys')


def test_sealed_incidents_hold_everything_the_manifest_promises(evidence_root: Path):
    dirs = incidents(evidence_root)
    assert len(dirs) == 3
    prev = ev.GENESIS
    for seq, d in enumerate(dirs, 1):
        assert sorted(p.name for p in d.iterdir()) == ['manifest.json', 'manifest.sig',
                                                       'sensors.mcap', 'video.mp4']
        raw = (d / 'manifest.json').read_bytes()
        m = json.loads(raw)
        assert raw == ev.canonical(m)
        assert m['sequence'] == seq and m['prev_manifest_sha256'] == prev and not m['recovered']
        assert m['incident_id'] == d.name and m['triggers'][0]['reason'] == 'manual'
        # pre_event_s 1 s: starts on the keyframe at or before trigger - 1 s.
        assert m['video']['first_stamp'] <= m['triggers'][0]['time'] - 1.0
        assert m['frame_count'] == ffprobe_frames(d / 'video.mp4') > 0
        counters = frame_counters(d / 'video.mp4')
        assert counters == list(range(counters[0], counters[0] + len(counters)))
        assert counters[0] % 30 == 0                      # a keyframe of the 30-frame GOP
        assert m['gps_track']['fixes'] > 0 and m['gps_track']['distance_m'] > 0
        for name, entry in m['files'].items():
            assert ev.sha256_file(d / name) == (entry['sha256'], entry['size'])
        prev = ev.sha256_bytes(raw)
    assert ev.ChainHead.read(evidence_root / 'chain_head').sha256 == prev
    report = ev.verify_tree(evidence_root)
    assert report.ok and report.key_trusted, report.as_dict()


@pytest.mark.parametrize('name', ['video.mp4', 'sensors.mcap', 'manifest.json', 'manifest.sig'])
def test_any_changed_byte_fails_verify_naming_the_file(evidence_root: Path, name: str):
    for d in incidents(evidence_root):
        path = d / name
        data = path.read_bytes()
        for offset in (0, len(data) // 2, len(data) - 1):
            changed = bytearray(data)
            changed[offset] ^= 0x01
            path.write_bytes(bytes(changed))
            report = ev.verify_tree(evidence_root)
            assert not report.ok
            assert path in report.bad_files, (name, offset, report.as_dict())
            if name != 'manifest.json':
                assert report.bad_files == [path], report.as_dict()
            path.write_bytes(data)
    assert ev.verify_tree(evidence_root).ok


def test_verify_cli_reports_json_and_exit_codes(evidence_root: Path):
    target = incidents(evidence_root)[1] / 'video.mp4'

    def verify(path: Path) -> tuple[int, dict | None, str]:
        res = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'verify', '--json',
                              str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
        return res.returncode, json.loads(res.stdout) if res.stdout else None, res.stderr

    # No --trust: integrity holds, but nothing vouches for the signer (test_verify_trust.py).
    code, out, err = verify(evidence_root / 'spool')
    assert code == 1 and out['integrity_ok'] and not out['trusted'] and out['incidents'] == 3
    assert 'trust store is needed' in err
    code, out, _ = verify(incidents(evidence_root)[0])       # a single incident
    assert code == 1 and out['integrity_ok'] and out['incidents'] == 1
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    (incidents(evidence_root)[2] / 'notes.txt').write_text('slipped in')
    code, out, err = verify(evidence_root)
    assert code == 1 and not out['ok'] and not out['integrity_ok']
    assert out['bad_files'] == sorted([str(target),
                                       str(incidents(evidence_root)[2] / 'notes.txt')])
    assert f'BAD {target}' in err
    code, _, err = verify(evidence_root / 'nope')
    assert code == 2 and 'does not exist' in err


def test_chain_catches_a_deleted_or_foreign_incident(evidence_root: Path, tmp_path: Path):
    dirs = incidents(evidence_root)
    middle = dirs[1]
    shutil.move(middle, tmp_path / middle.name)
    report = ev.verify_tree(evidence_root)
    assert not report.ok and middle / 'manifest.json' in report.bad_files, report.as_dict()
    shutil.move(tmp_path / middle.name, middle)
    newest = dirs[2]
    shutil.rmtree(newest)                                    # the newest, gone
    report = ev.verify_tree(evidence_root)
    assert not report.ok and newest / 'manifest.json' in report.bad_files
    # An incident sealed by another device (its own valid signature) is caught by the key.
    other = record_incidents(tmp_path / 'other', incidents=1)
    foreign = other.sealed()[0].path
    shutil.copytree(foreign, evidence_root / 'spool' / foreign.name)
    report = ev.verify_tree(evidence_root)
    assert evidence_root / 'spool' / foreign.name / 'manifest.json' in report.bad_files


def test_a_pruned_incident_still_verifies(evidence_root: Path):
    """The uploader's prune (ev.prune_incident): the chain link goes to pruned.jsonl first."""
    dirs = incidents(evidence_root)
    m = (dirs[0] / 'manifest.json').read_bytes()
    ev.prune_incident(evidence_root, dirs[0], dirs[0].name, 1, ev.sha256_bytes(m))
    assert not dirs[0].exists() and dirs[1].exists() and dirs[2].exists()
    report = ev.verify_tree(evidence_root)
    assert report.ok, report.as_dict()


def test_recorder_under_disk_pressure_deletes_nothing_not_even_uploaded(evidence_root: Path):
    """One pruner: the uploader. The recorder only reports disk_low and keeps recording."""
    dirs = incidents(evidence_root)
    for d in dirs:
        (d / 'upload.json').write_text(json.dumps({'verified': True}))
    before = {p: p.read_bytes() for d in dirs for p in d.iterdir()}
    used = ev_size(evidence_root)
    store = EvidenceStore(evidence_root, quota_bytes=used + 1000)      # nearly full
    rec = Recorder(store, LookbackRing(3.0, 1 << 26), ev.DeviceKey.load_or_create(store.keys),
                   RecorderConfig(pre_event_s=1.0, post_event_s=0.2, min_free_bytes=used,
                                  disk_check_s=0.05))
    rec.start()
    assert wait_for(lambda: rec.status().disk_low)
    packets = encode_clip(60, t0=5000.0)
    for i, p in enumerate(packets):
        rec.on_video(p)
        if i == 40:
            rec.on_command(Command('start', 'holster', p.t, 'a', p.t))
    rec.on_command(Command('stop', 'holster', packets[-1].t, 'b', packets[-1].t))
    rec.tick(packets[-1].t + 1.0)
    assert wait_for(lambda: rec.status().sealed == 1)                  # still recording
    rec.close()
    assert {p: p.read_bytes() for d in dirs for p in d.iterdir()} == before
    assert not (evidence_root / 'pruned.jsonl').exists()
    assert any('disk low' in e for e in rec.events()) or rec.status().disk_low
    assert len(store.sealed()) == 4 and ev.verify_tree(evidence_root).ok


def ev_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file())


def test_recorder_raises_disk_low_and_keeps_recording_when_nothing_can_go(tmp_path: Path):
    root = tmp_path / 'ev'
    store = EvidenceStore(root, disk_free=lambda _p: 10_000)        # emulated: nearly full
    key = ev.DeviceKey.load_or_create(store.keys)
    rec = Recorder(store, LookbackRing(3.0, 1 << 26), key,
                   RecorderConfig(pre_event_s=1.0, post_event_s=0.2, min_free_bytes=1 << 20,
                                  disk_check_s=0.05))
    rec.start()
    assert wait_for(lambda: rec.status().disk_low)
    packets = encode_clip(60)
    for i, p in enumerate(packets):
        rec.on_video(p)
        if i == 40:
            rec.on_command(Command('start', 'holster', p.t, 'a', p.t))
    assert wait_for(lambda: rec.status().frames == 60)              # still recording
    assert rec.status().disk_low
    assert any('disk low' in e for e in rec.events())
    rec.close()
    assert ev.verify_tree(root).ok


def test_durable_file_survives_enospc_without_losing_a_byte(tmp_path: Path):
    full = {'on': False}
    calls = {'refused': 0}

    def write(fd: int, data: bytes) -> int:
        if full['on']:
            calls['refused'] += 1
            raise OSError(errno.ENOSPC, 'No space left on device')
        return os.write(fd, data[:4096])                    # short writes too

    path = tmp_path / 'v.mp4'
    sink = DurableFile(path, write=write)
    w = Fmp4Writer(sink)
    packets = encode_clip(150)
    for i, p in enumerate(packets):
        full['on'] = 40 <= i < 100                          # the disk fills, then frees
        w.write(p)
        if full['on'] and i > 60:                            # a fragment was refused
            assert sink.error is not None and sink.error.errno == errno.ENOSPC
            assert sink.pending_bytes > 0 and not sink.sync()
    w.close()
    sink.close()
    assert calls['refused'] > 0 and sink.pending_bytes == 0
    assert frame_counters(path) == list(range(150))


def _can_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which('mount'):
        return False
    path.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(path)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(['umount', str(path)], check=True)
    return ok


def test_full_filesystem_errors_then_seals_everything_when_space_returns(tmp_path: Path):
    """A real small filesystem (tmpfs): ENOSPC mid-incident, nothing dropped or deleted."""
    mnt = tmp_path / 'small'
    if not _can_mount_tmpfs(mnt):
        pytest.skip('cannot mount a tmpfs here (needs root); the emulated tests cover the logic')
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mnt)], check=True)
    try:
        store = EvidenceStore(mnt / 'ev')
        key = ev.DeviceKey.load_or_create(store.keys)
        rec = Recorder(store, LookbackRing(3.0, 1 << 26), key,
                       RecorderConfig(pre_event_s=1.0, post_event_s=0.2, min_free_bytes=0,
                                      disk_check_s=0.1))
        rec.start()
        packets = encode_clip(150, first=0)
        # ~2.5 MB of video at this rate: more than the 1 MB filesystem holds.
        big = [p.__class__(p.t, p.data + bytes(16000), p.keyframe) for p in packets]
        rec.on_command(Command('start', 'manual', big[0].t, 'x', big[0].t))
        for p in big:
            rec.on_video(p)
        assert wait_for(lambda: 'No space' in rec.status().disk_error), rec.status()
        assert rec.status().pending_bytes > 0
        subprocess.run(['mount', '-o', 'remount,size=16m', str(mnt)], check=True)
        rec.on_command(Command('stop', 'manual', big[-1].t, 'y', big[-1].t))
        rec.tick(big[-1].t + 1.0)
        rec.close()
        report = ev.verify_tree(store.root)
        assert report.ok, report.as_dict()
        m = json.loads((store.sealed()[0].path / 'manifest.json').read_text())
        assert m['frame_count'] == 150 and not m['recovered']
    finally:
        subprocess.run(['umount', '-l', str(mnt)], check=False)


def test_unsealed_incident_is_repaired_and_sealed_as_recovered(tmp_path: Path):
    store = EvidenceStore(tmp_path / 'ev')
    key = ev.DeviceKey.load_or_create(store.keys)
    d = store.recording / str(uuid.uuid4())
    w = IncidentWriter(d, {'type': 'open', 'incident_id': d.name, 'device_id': 'u1',
                           'officer_id': 'o1', 'wall_time': 1000.0, 'ros_time': 1000.0}, 1.0)
    w.event({'type': 'trigger', 'reason': 'fight', 'trigger_time': 1001.0})
    for i, p in enumerate(encode_clip(100)):
        w.video(p)
        if i % 5 == 0:
            w.sensor(fix_record(p.t, i))
    w.sync()
    w.abandon()                                   # the process died here: no trailer
    with open(d / VIDEO, 'ab') as f:              # ...in the middle of writing a fragment
        f.write(b'\x00\x00\x10\x00moof' + bytes(100))
    with open(d / JOURNAL, 'ab') as f:
        f.write(b'\x99\x00\x00')                  # and of a journal record
    rec = Recorder(store, LookbackRing(3.0, 1 << 26), key, RecorderConfig(min_free_bytes=0))
    rec.start()
    assert wait_for(lambda: rec.status().recovered == 1)
    rec.close()
    (sealed,) = store.sealed()
    m = json.loads((sealed.path / 'manifest.json').read_text())
    assert m['recovered'] and m['end_reason'] == 'recovered'
    assert m['recovery']['video_dropped_bytes'] == 108 and m['recovery']['video_playable']
    assert m['recovery']['sensor_journal_torn_bytes'] == 3
    assert m['triggers'] == [{'reason': 'fight', 'time': 1001.0, 'command_id': None,
                              'received_time': None}]
    # 100 frames, GOP 30: the fragments up to the last keyframe (frame 90) survive.
    assert frame_counters(sealed.path / 'video.mp4') == list(range(90))
    assert m['frame_count'] == 90 and m['sensors']['messages'] == {'/gps/fix': 20}
    assert not (store.recording / d.name).exists() and ev.verify_tree(store.root).ok


def test_interrupted_seal_after_commit_is_only_moved(tmp_path: Path):
    root = tmp_path / 'ev'
    store = record_incidents(root, incidents=1)
    (sealed,) = store.sealed()
    # As if the process died between the chain-head commit and the rename.
    moved = store.recording / sealed.incident_id
    os.replace(sealed.path, moved)
    (moved / EVENTS).write_text('{"type": "open"}\n')
    head = ev.ChainHead.read(root / 'chain_head')
    rec = Recorder(store, LookbackRing(3.0, 1 << 26), ev.DeviceKey.load_or_create(store.keys),
                   RecorderConfig(min_free_bytes=0))
    rec.start()
    rec.close()
    assert ev.ChainHead.read(root / 'chain_head') == head      # not sealed twice
    assert not moved.exists() and ev.verify_tree(root).ok
    assert not (sealed.path / EVENTS).exists()


def test_sidecar_journal_to_mcap_reads_back_with_rosbags(tmp_path: Path):
    recs = [fix_record(1000.0 + i, i) for i in range(5)]
    recs.append(SensorRecord(1003.5, '/unknown', 'nobody_msgs/msg/Nothing', b'\x00\x01\x00\x00'))
    sink = DurableFile(tmp_path / 'j')
    jw = JournalWriter(sink)
    for r in recs:
        jw.write(r)
    sink.close()
    with open(tmp_path / 'j', 'ab') as f:
        f.write(b'\x10\x00\x00\x00junk')
    jr = read_journal(tmp_path / 'j')
    assert jr.records == recs and jr.torn_bytes == 8
    bag = write_mcap(jr.records, tmp_path / 'sensors.mcap')
    assert bag.messages == {'/gps/fix': 5} and bag.skipped == {'nobody_msgs/msg/Nothing': 1}
    assert bag.gps.fixes == 5 and bag.gps.distance_m == pytest.approx(4 * 1.112, rel=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['j', 'sensors.mcap']
    back = list(read_mcap(tmp_path / 'sensors.mcap'))
    assert [(t, ty, ts) for t, ty, ts, _ in back] == \
        [('/gps/fix', 'sensor_msgs/msg/NavSatFix', int((1000.0 + i) * 1e9)) for i in range(5)]
    assert back[2][3].latitude == pytest.approx(LAT0 + 2e-5)


def test_a_copied_subset_verifies_but_an_emptied_spool_does_not(evidence_root: Path,
                                                                 tmp_path: Path):
    dirs = incidents(evidence_root)
    court = tmp_path / 'court'
    for d in dirs[1:]:                          # the last two, handed over without the first
        shutil.copytree(d, court / d.name)
    key = evidence_root / 'keys' / 'device_ed25519.pub'
    report = ev.verify_tree(court, key)
    assert report.ok and report.key_trusted, report.as_dict()
    shutil.rmtree(court / dirs[1].name)
    shutil.copytree(dirs[0], court / dirs[0].name)   # now a gap: 1 and 3
    assert dirs[1].name in str(ev.verify_tree(court, key).bad_files)
    for d in dirs:
        shutil.rmtree(d)
    report = ev.verify_tree(evidence_root)
    assert not report.ok and 'chain_head' in ' '.join(report.chain_errors)


def test_an_unreadable_sensor_journal_is_kept_not_dropped(tmp_path: Path):
    store = EvidenceStore(tmp_path / 'ev')
    d = store.recording / str(uuid.uuid4())
    d.mkdir()
    (d / JOURNAL).write_bytes(b'garbage, not a journal')
    rec = Recorder(store, LookbackRing(3.0, 1 << 26), ev.DeviceKey.load_or_create(store.keys),
                   RecorderConfig(min_free_bytes=0))
    rec.start()
    rec.close()
    (sealed,) = store.sealed()
    m = json.loads((sealed.path / 'manifest.json').read_text())
    assert m['recovery']['sensor_journal_unreadable']
    assert (sealed.path / 'sensors.unreadable').read_bytes() == b'garbage, not a journal'
    assert 'sensors.unreadable' in m['files'] and ev.verify_tree(store.root).ok
