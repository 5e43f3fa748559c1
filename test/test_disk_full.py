"""Evidence on a really full disk (a 1 MB tmpfs; needs root): nothing the recorder holds is
sealed away empty, and a prune the ledger records completes."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bodycam_ros.core import evidence as ev
from bodycam_ros.core.ring import LookbackRing
from bodycam_ros.core.spool import Command, EvidenceStore, Recorder, RecorderConfig
from test_evidence import _can_mount_tmpfs, wait_for
from test_mp4 import encode_clip
from test_upload_prune import file_uploader, pruned, sealed

T0 = 1_700_000_000.0


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / 'small'
    if not _can_mount_tmpfs(mnt):
        pytest.skip('cannot mount a tmpfs here (needs root)')
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(['umount', '-l', str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem."""
    path = directory / 'filler'
    with open(path, 'wb', buffering=0) as f:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    f.write(bytes(size))
            except OSError:
                pass
    return path


def test_an_incident_closed_on_a_full_disk_is_sealed_whole_once_space_returns(small: Path):
    """Seen in the soak: stop and seal while the disk was full sealed an EMPTY 'recovered'
    incident (no triggers, 0-byte files): the bytes held in memory were abandoned."""
    store = EvidenceStore(small / 'ev')
    key = ev.DeviceKey.load_or_create(store.keys)
    rec = Recorder(store, LookbackRing(3.0, 1 << 26), key,
                   RecorderConfig(pre_event_s=1.0, post_event_s=0.2, min_free_bytes=0,
                                  disk_check_s=0.1))
    rec.start()
    try:
        packets = encode_clip(150, first=0)
        big = [p.__class__(p.t, p.data + bytes(16000), p.keyframe) for p in packets]
        rec.on_command(Command('start', 'manual', big[0].t, 'x', big[0].t))
        for p in big:
            rec.on_video(p)
        assert wait_for(lambda: 'No space' in rec.status().disk_error), rec.status()
        rec.on_command(Command('stop', 'manual', big[-1].t, 'y', big[-1].t))
        rec.tick(big[-1].t + 1.0)
        assert wait_for(lambda: rec.status().seal_failures > 0), rec.status()
        assert rec.status().sealed == 0 and rec.status().pending_bytes > 0
        subprocess.run(['mount', '-o', 'remount,size=16m', str(small)], check=True)
        assert wait_for(lambda: rec.status().sealed == 1, 20.0), rec.status()
    finally:
        rec.close()
    assert ev.verify_tree(store.root).ok
    m = json.loads((store.sealed()[0].path / 'manifest.json').read_text())
    assert m['frame_count'] == 150 and not m['recovered'], m
    assert m['triggers'] and m['opened_time'] is not None and m['lost_frames'] == 0
    assert m['empty_reason'] is None


def test_a_prune_the_ledger_records_completes_on_a_full_disk(small: Path, tmp_path: Path):
    """Seen in the soak: the signed 'pruned' entry was written, then pruned.jsonl could not
    be appended (ENOSPC) and the incident stayed on the unit while the ledger said pruned."""
    evd = small / 'ev'
    names = ['a', 'b']
    for i, name in enumerate(names):
        sealed(evd, name, start_time=T0 + i, sensors_size=150_000, seed=i)
    up = file_uploader(tmp_path, evd)
    for name in names:
        up.upload_incident(next(i for i in up._scan().pending if i.path.name == name))
    fill(small)
    pruner = file_uploader(tmp_path, evd, min_free_bytes=1 << 30)
    pruner._maybe_prune(force=True)
    pruner._maybe_prune(force=True)
    left = sorted(p.name for p in (evd / 'spool').iterdir())
    assert left == [], (left, [e.message for e in pruner.events])
    assert pruned(evd) == names
    assert ev.verify_tree(evd).ok, ev.verify_tree(evd).as_dict()


def test_uploads_and_prunes_at_zero_bytes_free(small: Path, tmp_path: Path):
    """Seen in the soak: at 0 bytes free every incident failed on state.json, nothing went
    up, and the summary said 0 left while all were there."""
    evd = small / 'ev'
    names = ['a', 'b']
    for i, name in enumerate(names):
        sealed(evd, name, start_time=T0 + i, sensors_size=150_000, seed=i)
    fill(small)
    up = file_uploader(tmp_path, evd, min_free_bytes=1 << 30)
    result = up.drain(max_failures=2)
    assert sorted(result.verified) == names, [e.message for e in up.events]
    assert result.remaining == 0
    assert sorted(p.name for p in (evd / 'spool').iterdir()) == []
    assert ev.verify_tree(evd).ok, ev.verify_tree(evd).as_dict()
