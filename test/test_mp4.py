"""Fragmented MP4 from the camera's own encoder: continuous, ≤ 1 s fragments, repairable."""
from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from bodycam_ros.core.h264 import H264Encoder
from bodycam_ros.core.mp4 import Fmp4Writer, Mp4Error, _boxes, probe, repair
from bodycam_ros.core.ring import VideoPacket
from bodycam_ros.drivers.camera import TestPatternSource, decode_frame_counter

W, H, FPS = 320, 240, 30


def encode_clip(n: int, gop: int = FPS, t0: float = 1_000.0, first: int = 0) -> list[VideoPacket]:
    """``n`` test-pattern frames (counters first..first+n-1) through the camera's encoder."""
    src = TestPatternSource(W, H, FPS)
    enc = H264Encoder(W, H, FPS, 400_000, gop)
    out = []
    for i in range(first, first + n):
        t = t0 + i / FPS
        au = enc.encode(src.render(i, t))
        out.append(VideoPacket(t, au.data, au.is_keyframe))
    return out


def frame_counters(path: Path) -> list[int]:
    """Decode a clip and read every frame's burnt-in counter."""
    import av
    with av.open(str(path)) as c:
        return [decode_frame_counter(f.to_ndarray(format='bgr24')) for f in c.decode(video=0)]


def ffprobe_frames(path: Path) -> int:
    """Frames counted by ffprobe (an independent reader), failing on any error it reports."""
    res = subprocess.run(['ffprobe', '-v', 'error', '-count_frames', '-select_streams', 'v:0',
                          '-show_entries', 'stream=nb_read_frames', '-of', 'csv=p=0', str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    return int(res.stdout.strip())


def box_kinds(path: Path) -> list[str]:
    with open(path, 'rb') as f:
        return [k for k, _, _ in _boxes(f, path.stat().st_size)]


def write_mp4(path: Path, packets: list[VideoPacket], fragment_s: float = 1.0) -> Fmp4Writer:
    with open(path, 'wb') as f:
        w = Fmp4Writer(f, fragment_s)
        for p in packets:
            w.write(p)
        w.close()
    return w


def test_remux_is_continuous_and_readable_by_ffprobe(tmp_path: Path):
    packets = encode_clip(90)
    w = write_mp4(tmp_path / 'v.mp4', packets)
    assert (w.frames, w.keyframes, w.width, w.height) == (90, 3, W, H)
    assert frame_counters(tmp_path / 'v.mp4') == list(range(90))
    assert ffprobe_frames(tmp_path / 'v.mp4') == 90
    info = probe(tmp_path / 'v.mp4')
    assert info.frames == 90 and info.duration_s == pytest.approx(3.0, abs=0.05)


def test_fragments_are_at_most_one_second_even_with_a_longer_gop(tmp_path: Path):
    packets = encode_clip(150, gop=60)         # keyframes every 2 s, 5 s of video
    write_mp4(tmp_path / 'v.mp4', packets, fragment_s=1.0)
    kinds = box_kinds(tmp_path / 'v.mp4')
    assert kinds[:2] == ['ftyp', 'moov']
    assert kinds.count('moof') >= 5             # ≥ one fragment per second
    assert frame_counters(tmp_path / 'v.mp4') == list(range(150))


def test_clip_starts_only_on_a_keyframe(tmp_path: Path):
    packets = encode_clip(60)[10:]              # starts mid-GOP
    w = write_mp4(tmp_path / 'v.mp4', packets)
    assert w.skipped == 20 and w.first_t == packets[20].t
    assert frame_counters(tmp_path / 'v.mp4') == list(range(30, 60))


def test_repair_drops_only_a_torn_last_fragment(tmp_path: Path):
    path = tmp_path / 'v.mp4'
    packets = encode_clip(120)
    sink = io.BytesIO()
    w = Fmp4Writer(sink, 1.0)
    sizes = []
    for p in packets:
        if w.write(p):                          # a fragment just reached the sink
            sizes.append(len(sink.getvalue()))
    # A crash in the middle of writing the third fragment: half of it on disk.
    cut = sizes[1] + (sizes[2] - sizes[1]) // 2
    path.write_bytes(sink.getvalue()[:cut])
    rep = repair(path)
    assert rep.playable and rep.fragments == 2
    assert rep.size_after == sizes[1] and path.stat().st_size == sizes[1]
    assert frame_counters(path) == list(range(60))
    assert ffprobe_frames(path) == 60
    assert repair(path).dropped_bytes == 0      # idempotent


def test_header_only_file_is_left_alone(tmp_path: Path):
    path = tmp_path / 'v.mp4'
    torn = b'\x00\x00\x00\x18ftypisom'           # torn inside the first box
    path.write_bytes(torn)
    rep = repair(path)
    assert not rep.playable and path.read_bytes() == torn


def test_keyframe_without_parameter_sets_is_refused():
    from bodycam_ros.core.h264 import iter_nal_units
    key = next(p for p in encode_clip(1))
    idr_only = b''.join(b'\x00\x00\x00\x01' + n.data for n in iter_nal_units(key.data)
                        if n.type == 5)
    with pytest.raises(Mp4Error):
        Fmp4Writer(io.BytesIO()).write(VideoPacket(1.0, idr_only, True))
