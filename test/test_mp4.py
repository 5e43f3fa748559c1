"""Fragmented MP4 from the camera's own encoder: continuous, ≤ 1 s fragments, repairable;
probe and repair hold their contract on mutated files (hypothesis)."""
from __future__ import annotations

import io
import struct
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_repair_drops_only_a_torn_last_fragment_into_a_copy(tmp_path: Path):
    path, out = tmp_path / 'v.mp4', tmp_path / 'repaired.mp4'
    packets = encode_clip(120)
    sink = io.BytesIO()
    w = Fmp4Writer(sink, 1.0)
    sizes = []
    for p in packets:
        if w.write(p):                          # a fragment just reached the sink
            sizes.append(len(sink.getvalue()))
    # A crash in the middle of writing the third fragment: half of it on disk.
    cut = sizes[1] + (sizes[2] - sizes[1]) // 2
    torn = sink.getvalue()[:cut]
    path.write_bytes(torn)
    rep = repair(path, out)
    assert rep.playable and rep.fragments == 2
    assert path.read_bytes() == torn            # the original is evidence: never touched
    assert rep.size_after == sizes[1] and out.read_bytes() == torn[:sizes[1]]
    assert frame_counters(out) == list(range(60))
    assert ffprobe_frames(out) == 60
    assert repair(out, tmp_path / 'again.mp4').dropped_bytes == 0      # idempotent


def test_header_only_file_is_left_alone(tmp_path: Path):
    path = tmp_path / 'v.mp4'
    torn = b'\x00\x00\x00\x18ftypisom'           # torn inside the first box
    path.write_bytes(torn)
    rep = repair(path, tmp_path / 'out.mp4')
    assert not rep.playable and path.read_bytes() == torn
    assert not (tmp_path / 'out.mp4').exists()


def test_probe_names_a_damaged_sample_entry_as_mp4error(tmp_path: Path):
    """Regression: a zeroed codec fourcc in moov gave AttributeError ('width')."""
    path = tmp_path / 'v.mp4'
    path.write_bytes(clean_fmp4().replace(b'avc1', bytes(4), 1))
    with pytest.raises(Mp4Error, match='v.mp4'):
        probe(path)


def test_probe_names_undecodable_metadata_as_mp4error(tmp_path: Path):
    """Regression: a non-UTF-8 byte in the handler name gave UnicodeDecodeError."""
    data = bytearray(clean_fmp4())
    hdlr = data.index(b'hdlr')
    name = hdlr + 4 + 4 + 4 + 4 + 12            # version/flags, pre_defined, type, reserved
    data[name] = 0xFF
    path = tmp_path / 'v.mp4'
    path.write_bytes(bytes(data))
    try:
        probe(path)
    except Mp4Error:
        pass


@lru_cache(maxsize=1)
def clean_fmp4() -> bytes:
    """2 s of the test pattern through the project's own muxer (what the recorder writes)."""
    sink = io.BytesIO()
    w = Fmp4Writer(sink, 1.0)
    for p in encode_clip(60):
        w.write(p)
    w.close()
    return sink.getvalue()


@st.composite
def mutated_fmp4(draw) -> bytes:
    """Real fMP4 bytes with flips, overwritten box sizes, cuts and inserted junk."""
    data = bytearray(clean_fmp4())
    boxes = []
    pos = 0
    while pos + 8 <= len(data):                 # every box header, nested ones too
        boxes.append(pos)
        size, kind = struct.unpack('>I4s', data[pos:pos + 8])
        container = kind in (b'moov', b'trak', b'mdia', b'minf', b'stbl', b'moof', b'traf',
                             b'mvex', b'dinf')
        pos = pos + 8 if container else pos + max(size, 8)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(['flip', 'byte', 'size', 'cut', 'insert']))
        if not data:
            break
        if op == 'flip':
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 'byte':
            i = draw(st.integers(0, min(len(data), 2000) - 1))    # mostly the header
            data[i] = draw(st.integers(0, 255))
        elif op == 'size':
            b = draw(st.sampled_from(boxes))
            if b + 4 <= len(data):
                data[b:b + 4] = struct.pack('>I', draw(st.sampled_from(
                    [0, 1, 7, 8, 9, 0x7FFFFFFF, 0xFFFFFFFF, draw(st.integers(0, 1 << 20))])))
        elif op == 'cut':
            data = data[:draw(st.integers(0, len(data)))]
        else:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


_PROPS = settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])


@_PROPS
@given(data=mutated_fmp4())
def test_probe_raises_only_mp4error_on_mutated_files(tmp_path: Path, data: bytes):
    path = tmp_path / 'm.mp4'
    path.write_bytes(data)
    try:
        info = probe(path)
    except Mp4Error:
        return
    assert info.frames >= 0 and info.keyframes <= info.frames


@_PROPS
@given(data=mutated_fmp4())
def test_repair_never_touches_the_original_and_keeps_a_prefix(tmp_path: Path, data: bytes):
    src, dst = tmp_path / 'm.mp4', tmp_path / 'r.mp4'
    dst.unlink(missing_ok=True)
    src.write_bytes(data)
    rep = repair(src, dst)
    assert src.read_bytes() == data
    assert rep.size_before == len(data) and 0 <= rep.size_after <= len(data)
    if rep.playable:
        assert dst.read_bytes() == data[:rep.size_after]
        assert repair(dst, tmp_path / 'r2.mp4').dropped_bytes == 0
        try:
            probe(dst)
        except Mp4Error:
            pass
    else:
        assert not dst.exists()


def test_keyframe_without_parameter_sets_is_refused():
    from bodycam_ros.core.h264 import iter_nal_units
    key = next(p for p in encode_clip(1))
    idr_only = b''.join(b'\x00\x00\x00\x01' + n.data for n in iter_nal_units(key.data)
                        if n.type == 5)
    with pytest.raises(Mp4Error):
        Fmp4Writer(io.BytesIO()).write(VideoPacket(1.0, idr_only, True))
