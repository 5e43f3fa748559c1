"""core.h264: the encoder's stream contract and the Annex B helpers, checked by decoding."""
from __future__ import annotations

import subprocess

import av
import cv2
import numpy as np
import pytest
from av.video.frame import PictureType

from bodycam_ros.core.h264 import (NAL_IDR, NAL_PPS, NAL_SPS, AccessUnit, EncoderError,
                                   H264Encoder, has_parameter_sets, is_keyframe,
                                   iter_nal_units, nal_types)
from bodycam_ros.drivers.camera import TestPatternSource, decode_frame_counter
from conftest import shared_data

W, H = 320, 240


def video_frames(n: int, width: int = W, height: int = H) -> list[np.ndarray]:
    """The first ``n`` frames of the real sample video, resized (BGR)."""
    frames = []
    with av.open(str(shared_data('video', 'one-by-one-person-detection.mp4'))) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(width=width, height=height, format='bgr24'))
            if len(frames) == n:
                break
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-9))


def decode_all(units: list[bytes]) -> list[av.VideoFrame]:
    dec = av.CodecContext.create('h264', 'r')
    out = []
    for data in units:
        out.extend(dec.decode(av.Packet(data)))
    out.extend(dec.decode(None))
    return out


# ------------------------------------------------------------------ Annex B helpers

def test_nal_helpers_split_three_and_four_byte_start_codes():
    sps, pps, sei, idr = b'\x67\x42\x00\x1f', b'\x68\xce\x38\x80', b'\x06\x05\x01', b'\x65\x88\x84'
    buf = b'\x00\x00\x00\x01' + sps + b'\x00\x00\x01' + pps + b'\x00\x00\x01' + sei \
        + b'\x00\x00\x00\x01' + idr + b'\x00\x00'    # trailing_zero_8bits
    units = list(iter_nal_units(buf))
    assert [u.data for u in units] == [sps, pps, sei, idr]
    assert nal_types(buf) == [NAL_SPS, NAL_PPS, 6, NAL_IDR]
    assert is_keyframe(buf) and has_parameter_sets(buf)
    p_slice = b'\x00\x00\x00\x01\x41\x9a\x02'
    assert nal_types(p_slice) == [1]
    assert not is_keyframe(p_slice) and not has_parameter_sets(p_slice)
    # An IDR whose parameter sets were lost is a keyframe a decoder cannot start from.
    assert is_keyframe(b'\x00\x00\x01' + idr) and not has_parameter_sets(b'\x00\x00\x01' + idr)
    assert nal_types(b'') == []


@pytest.mark.parametrize('bad', [b'\x00\x00\x00\x1c\x65\x88', b'\x17\x01\x00\x00\x01\x65'])
def test_non_annexb_bytes_are_rejected(bad):
    # AVCC (length-prefixed, as inside MP4) or junk before the first start code.
    with pytest.raises(EncoderError, match='start code|not Annex B'):
        nal_types(bad)


# ------------------------------------------------------------------ encoder contract

def test_one_access_unit_per_frame_with_fixed_gop_and_headers_on_every_idr():
    gop = 7
    frames = video_frames(40)
    with H264Encoder(W, H, fps=10, bitrate=400_000, gop=gop) as enc:
        units = [enc.encode(f) for f in frames]   # encode() itself fails on 0 or 2 packets
        assert enc.flush() == []                  # zero latency: nothing held back
    assert all(isinstance(u, AccessUnit) for u in units)
    assert [u.pts for u in units] == list(range(40))
    keys = [i for i, u in enumerate(units) if u.is_keyframe]
    assert keys == list(range(0, 40, gop)), 'keyframes must be exactly periodic'
    for i, u in enumerate(units):
        assert is_keyframe(u.data) == u.is_keyframe, f'frame {i}: IDR flag vs NAL types'
        assert has_parameter_sets(u.data) == u.is_keyframe, f'frame {i}: SPS/PPS placement'
        assert nal_types(u.data)[0] in (NAL_SPS, 6, 9, 1), 'AU must start with headers or slice'


def test_each_packet_decodes_immediately_without_b_frames():
    """A decoder gets frame i back right after packet i: no reordering delay anywhere."""
    frames = video_frames(30)
    dec = av.CodecContext.create('h264', 'r')
    dec.options = {'flags': 'low_delay'}
    with H264Encoder(W, H, fps=10, bitrate=400_000, gop=10) as enc:
        for i, f in enumerate(frames):
            out = dec.decode(av.Packet(enc.encode(f).data))
            assert len(out) == 1, f'frame {i}: decoder returned {len(out)} frames'
            kind = PictureType(out[0].pict_type)
            assert kind == (PictureType.I if i % 10 == 0 else PictureType.P), f'frame {i}: {kind}'
            assert psnr(out[0].to_ndarray(format='bgr24'), f) > 28, f'frame {i} quality'
    assert dec.has_b_frames == 0


def test_stream_opens_in_ffprobe_from_any_keyframe(tmp_path):
    """Cut at the second IDR (as the recorder does): ffprobe, an independent reader, decodes
    every frame at the configured size."""
    frames = video_frames(45)
    with H264Encoder(W, H, fps=10, bitrate=300_000, gop=15) as enc:
        units = [enc.encode(f) for f in frames]
    cut = b''.join(u.data for u in units[15:])
    path = tmp_path / 'cut.h264'
    path.write_bytes(cut)
    out = subprocess.run(['ffprobe', '-v', 'error', '-count_frames', '-select_streams', 'v:0',
                          '-show_entries', 'stream=codec_name,width,height,nb_read_frames,'
                          'has_b_frames', '-of', 'csv=p=0', str(path)],
                         capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == f'h264,{W},{H},0,30', out.stdout + out.stderr
    with av.open(str(path), format='h264') as c:   # PyAV's own demuxer, from the file
        assert len(list(c.decode(video=0))) == 30


def test_bitrate_is_held_near_target_on_real_video():
    """10 s of the real sample video at 10 fps: the average rate lands near the target."""
    frames = video_frames(100)
    target = 300_000
    with H264Encoder(W, H, fps=10, bitrate=target, gop=10) as enc:
        total = sum(len(enc.encode(f).data) for f in frames)
    rate = total * 8 / 10.0
    assert 0.8 * target < rate < 1.2 * target, f'{rate:.0f} bit/s for target {target}'


def test_test_pattern_survives_encoding_with_its_counter():
    src = TestPatternSource(W, H, 30)
    with H264Encoder(W, H, fps=30, bitrate=150_000, gop=30) as enc:
        units = [enc.encode(src.render(1000 + i, 0.0)).data for i in range(20)]
    assert [decode_frame_counter(f.to_ndarray(format='bgr24')) for f in decode_all(units)] \
        == list(range(1000, 1020))


def test_accepts_video_frames_and_rejects_wrong_input():
    with H264Encoder(W, H, fps=30, bitrate=200_000, gop=5) as enc:
        vf = av.VideoFrame.from_ndarray(np.zeros((H, W, 3), np.uint8), format='bgr24')
        assert enc.encode(vf.reformat(format='yuv420p')).is_keyframe
        with pytest.raises(EncoderError, match=r'\(240, 320, 3\) uint8'):
            enc.encode(np.zeros((H, W + 2, 3), np.uint8))
        with pytest.raises(EncoderError, match='uint8'):
            enc.encode(np.zeros((H, W, 3), np.float32))
        with pytest.raises(EncoderError, match='need a numpy'):
            enc.encode(b'raw')
        assert not enc.encode(cv2.blur(np.zeros((H, W, 3), np.uint8), (3, 3))).is_keyframe
    with pytest.raises(EncoderError, match='closed'):
        enc.encode(np.zeros((H, W, 3), np.uint8))


@pytest.mark.parametrize('kw, match', [
    (dict(width=321), 'even'), (dict(fps=0), 'fps'), (dict(gop=0), 'gop'),
    (dict(bitrate=5), 'bitrate')])
def test_bad_settings_are_named(kw, match):
    args = dict(width=W, height=H, fps=30, bitrate=500_000, gop=30) | kw
    with pytest.raises(EncoderError, match=match):
        H264Encoder(**args)
