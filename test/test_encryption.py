"""age v1 encryption at rest: round trips, the real ``age`` binary both ways, crashes,
tampering, PyAV muxing fMP4 straight into the encrypting writer, rosbag2 MCAP through it."""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bodycam_ros.core import encryption as enc
from bodycam_ros.core.encryption import (
    CHUNK, CHUNK_CT, NONCE, AgeError, AgeWriter, decode_identity, decode_recipient, decrypt,
    encode_identity, encode_recipient, identity_file, parse_identity_file, payload_overhead,
)
from bodycam_ros.core.h264 import H264Encoder
from bodycam_ros.core.mp4 import Fmp4Writer, repair
from bodycam_ros.core.ring import VideoPacket
from bodycam_ros.core.spool import DurableFile
from bodycam_ros.drivers.camera import TestPatternSource, decode_frame_counter

AGE = shutil.which('age')
needs_age = pytest.mark.skipif(AGE is None, reason='age missing: scripts/install-test-deps.sh')
AGENCY = X25519PrivateKey.from_private_bytes(hashlib.sha256(b'test agency').digest())
OTHER = X25519PrivateKey.from_private_bytes(hashlib.sha256(b'another agency').digest())


def data_of(n: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible test bytes."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b'%d:%d' % (seed, i)).digest()
        i += 1
    return bytes(out[:n])


def encrypt_file(path: Path, data: bytes, recipients=None, step: int = 10_000) -> AgeWriter:
    with AgeWriter(path, recipients or [AGENCY.public_key()]) as w:
        for i in range(0, len(data), step):
            w.write(data[i:i + step])
    return w


def decrypt_bytes(source, identity=AGENCY, **kw) -> tuple[bytes, enc.DecryptResult]:
    out = io.BytesIO()
    res = decrypt(source, identity, out, **kw)
    return out.getvalue(), res


def write_identity(tmp_path: Path, key: X25519PrivateKey) -> Path:
    p = tmp_path / 'identity.txt'
    p.write_text(identity_file(key, created='2024-01-01T00:00:00Z'))
    p.chmod(0o600)
    return p


# -- keys ------------------------------------------------------------------------------------
def test_bech32_keys_match_the_spec_example_and_round_trip():
    # The X25519 identity and recipient printed in the age spec (C2SP age.md).
    ident = decode_identity(
        'AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX')
    assert ident.private_bytes_raw() == b'BBBB' * 8
    assert encode_recipient(ident.public_key()) == \
        'age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj'
    assert decode_recipient(encode_recipient(AGENCY.public_key())).public_bytes_raw() == \
        AGENCY.public_key().public_bytes_raw()
    assert decode_identity(encode_identity(AGENCY)).private_bytes_raw() == \
        AGENCY.private_bytes_raw()
    assert [k.private_bytes_raw() for k in parse_identity_file(identity_file(AGENCY))] == \
        [AGENCY.private_bytes_raw()]


@pytest.mark.parametrize('text, match', [
    ('age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwq', 'checksum'),
    ('age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujWJ', 'mixed case'),
    ('AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX', 'recipient'),
    ('age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq', 'bech32'),
])
def test_bad_recipient_strings_are_named(text, match):
    with pytest.raises(AgeError, match=match):
        decode_recipient(text)


@needs_age
def test_we_read_an_identity_file_made_by_age_keygen(tmp_path: Path):
    p = tmp_path / 'k.txt'
    subprocess.run(['age-keygen', '-o', str(p)], check=True, capture_output=True)
    (key,) = parse_identity_file(p.read_text())
    assert f'# public key: {encode_recipient(key.public_key())}' in p.read_text()


# -- round trip ------------------------------------------------------------------------------
@pytest.mark.parametrize('n', [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_round_trip_sizes_hashes_and_overhead(tmp_path: Path, n: int):
    data = data_of(n)
    path = tmp_path / 'f.age'
    w = encrypt_file(path, data)
    raw = path.read_bytes()
    assert w.plaintext_size == n and w.plaintext_sha256() == hashlib.sha256(data).hexdigest()
    assert w.ciphertext_size == len(raw)
    assert w.ciphertext_sha256() == hashlib.sha256(raw).hexdigest()
    assert len(raw) == w.header_size + n + payload_overhead(n)
    assert oct(path.stat().st_mode & 0o777) == '0o600'
    got, res = decrypt_bytes(path)
    assert got == data and res.complete and res.torn_bytes == 0
    assert res.plaintext_sha256 == w.plaintext_sha256()
    assert res.ciphertext_sha256 == w.ciphertext_sha256()
    assert res.chunks == max(1, -(-n // CHUNK))


def test_writer_is_a_non_seekable_file_and_never_overwrites(tmp_path: Path):
    path = tmp_path / 'f.age'
    w = AgeWriter(path, [AGENCY.public_key()])
    assert (w.seekable(), w.writable(), w.readable()) == (False, True, False)
    w.write(b'abc')
    assert w.tell() == 3
    with pytest.raises(AgeError, match='after close'):
        w.close()
        w.write(b'x')
    with pytest.raises(FileExistsError):
        AgeWriter(path, [AGENCY.public_key()])
    with pytest.raises(AgeError, match='no recipients'):
        AgeWriter(tmp_path / 'g.age', [])
    with pytest.raises(AgeError, match='after close'):
        AgeWriter(io.BytesIO(), [AGENCY.public_key()]).plaintext_sha256()


def test_scan_measures_the_file_without_the_key(tmp_path: Path):
    w = encrypt_file(tmp_path / 'f.age', data_of(3 * CHUNK + 10),
                     [OTHER.public_key(), AGENCY.public_key()])
    lay = enc.scan(tmp_path / 'f.age')
    assert (lay.header_size, lay.recipients, lay.full_chunks, lay.tail_bytes) == \
        (w.header_size, 2, 3, 10 + 16)
    assert lay.max_plaintext == 3 * CHUNK + 10 and lay.size == w.ciphertext_size
    (tmp_path / 'p').write_bytes(b'\x00\x00\x00\x18ftypisom')
    with pytest.raises(AgeError, match='not an age v1 file'):
        enc.scan(tmp_path / 'p')


def test_several_recipients_each_decrypt(tmp_path: Path):
    data = data_of(100_000)
    encrypt_file(tmp_path / 'f.age', data, [OTHER.public_key(), AGENCY.public_key()])
    assert decrypt_bytes(tmp_path / 'f.age', AGENCY)[0] == data
    assert decrypt_bytes(tmp_path / 'f.age', OTHER)[0] == data


def test_wrong_identity_is_a_clear_error_and_writes_nothing(tmp_path: Path):
    encrypt_file(tmp_path / 'f.age', data_of(1000))
    out = io.BytesIO()
    with pytest.raises(AgeError, match='no identity matches.*1 X25519 stanza') as ei:
        decrypt(tmp_path / 'f.age', OTHER, out)
    assert encode_recipient(OTHER.public_key()) in str(ei.value) and out.getvalue() == b''


# -- the real age binary ---------------------------------------------------------------------
@needs_age
@pytest.mark.parametrize('n', [0, 5, CHUNK, 2 * CHUNK + 77])
def test_age_cli_decrypts_our_files(tmp_path: Path, n: int):
    data = data_of(n, seed=n)
    encrypt_file(tmp_path / 'f.age', data, [OTHER.public_key(), AGENCY.public_key()])
    ident = write_identity(tmp_path, AGENCY)
    res = subprocess.run([AGE, '-d', '-i', str(ident), str(tmp_path / 'f.age')],
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == data


@needs_age
@pytest.mark.parametrize('n', [0, 5, CHUNK, 2 * CHUNK + 77])
def test_we_decrypt_files_made_by_age_cli(tmp_path: Path, n: int):
    data = data_of(n, seed=n)
    (tmp_path / 'plain').write_bytes(data)
    subprocess.run([AGE, '-r', encode_recipient(OTHER.public_key()),
                    '-r', encode_recipient(AGENCY.public_key()),
                    '-o', str(tmp_path / 'f.age'), str(tmp_path / 'plain')],
                   check=True, capture_output=True, timeout=60)
    got, res = decrypt_bytes(tmp_path / 'f.age')
    assert got == data and res.complete


@needs_age
def test_age_cli_rejects_a_truncated_file_too(tmp_path: Path):
    """The reference reader agrees that a cut file is not a complete one."""
    encrypt_file(tmp_path / 'f.age', data_of(3 * CHUNK))
    raw = (tmp_path / 'f.age').read_bytes()
    (tmp_path / 'cut.age').write_bytes(raw[:-100])
    ident = write_identity(tmp_path, AGENCY)
    res = subprocess.run([AGE, '-d', '-i', str(ident), str(tmp_path / 'cut.age')],
                         capture_output=True, timeout=60)
    assert res.returncode != 0


# -- crashes ---------------------------------------------------------------------------------
def test_crash_after_durable_flush_keeps_every_complete_chunk(tmp_path: Path):
    data = data_of(5 * CHUNK + 1234)
    path = tmp_path / 'f.age'
    w = AgeWriter(path, [AGENCY.public_key()])
    w.write(data)
    assert w.durable_flush()
    w.abandon()                               # the process dies: no final chunk
    got, res = decrypt_bytes(path)
    assert not res.complete and res.torn_bytes == 0
    assert got == data[:5 * CHUNK] and res.chunks == 5
    assert len(data) - len(got) <= CHUNK      # the documented bound on loss
    with pytest.raises(AgeError, match='truncated: 5 complete chunk'):
        decrypt_bytes(path, allow_truncated=False)


@pytest.mark.parametrize('cut', [1, 16, 1000, CHUNK_CT - 1, CHUNK_CT, CHUNK_CT + 20])
def test_torn_tail_keeps_the_authenticated_chunks_before_it(tmp_path: Path, cut: int):
    data = data_of(4 * CHUNK + 999)
    w = encrypt_file(tmp_path / 'f.age', data)
    raw = (tmp_path / 'f.age').read_bytes()
    start = w.header_size + NONCE + 2 * CHUNK_CT     # chunks 0 and 1 whole, then `cut` bytes
    (tmp_path / 'cut.age').write_bytes(raw[:start + cut])
    got, res = decrypt_bytes(tmp_path / 'cut.age')
    assert not res.complete
    whole = 2 + cut // CHUNK_CT
    assert got == data[:whole * CHUNK] and res.chunks == whole
    assert res.torn_bytes == cut % CHUNK_CT


@pytest.mark.parametrize('keep', [0, 10, 100])
def test_file_cut_inside_the_header_yields_nothing_and_says_incomplete(tmp_path: Path, keep):
    encrypt_file(tmp_path / 'f.age', data_of(100))
    (tmp_path / 'cut.age').write_bytes((tmp_path / 'f.age').read_bytes()[:keep])
    got, res = decrypt_bytes(tmp_path / 'cut.age')
    assert got == b'' and not res.complete


# -- tampering -------------------------------------------------------------------------------
@pytest.mark.parametrize('chunk', [0, 2, 4])
def test_flipped_byte_names_the_chunk_and_nothing_after_it_is_written(tmp_path: Path, chunk):
    data = data_of(5 * CHUNK)                     # five full chunks: the last one is full too
    w = encrypt_file(tmp_path / 'f.age', data)
    raw = bytearray((tmp_path / 'f.age').read_bytes())
    raw[w.header_size + NONCE + chunk * CHUNK_CT + 777] ^= 0x01
    out = io.BytesIO()
    with pytest.raises(AgeError, match=f'chunk {chunk} failed authentication') as ei:
        decrypt(io.BytesIO(bytes(raw)), AGENCY, out)
    assert ei.value.chunk == chunk
    assert out.getvalue() == data[:chunk * CHUNK]


@pytest.mark.parametrize('where', ['stanza', 'mac', 'nonce'])
def test_flipped_header_byte_is_an_error(tmp_path: Path, where):
    w = encrypt_file(tmp_path / 'f.age', data_of(3 * CHUNK))
    raw = bytearray((tmp_path / 'f.age').read_bytes())
    pos = {'stanza': raw.index(b'\n-> X25519 ') + 15,
           'mac': raw.index(b'\n--- ') + 10,
           'nonce': w.header_size + 3}[where]
    raw[pos] = ord('A') if raw[pos] != ord('A') else ord('B')
    with pytest.raises(AgeError) as ei:
        decrypt_bytes(io.BytesIO(bytes(raw)))
    assert ei.value.chunk == (0 if where == 'nonce' else None)


def test_swapped_chunks_and_appended_bytes_are_errors(tmp_path: Path):
    w = encrypt_file(tmp_path / 'f.age', data_of(3 * CHUNK + 10))
    raw = (tmp_path / 'f.age').read_bytes()
    p = w.header_size + NONCE
    c = [raw[p + i * CHUNK_CT:p + (i + 1) * CHUNK_CT] for i in range(4)]
    swapped = raw[:p] + c[1] + c[0] + c[2] + c[3]
    with pytest.raises(AgeError, match='chunk 0'):
        decrypt_bytes(io.BytesIO(swapped))
    # A byte appended after a full final chunk: that chunk is no longer last.
    full = tmp_path / 'full.age'
    encrypt_file(full, data_of(3 * CHUNK))
    with pytest.raises(AgeError, match='chunk 2'):
        decrypt_bytes(io.BytesIO(full.read_bytes() + b'x'))
    # After a short final chunk it is indistinguishable from a torn write: not complete.
    got, res = decrypt_bytes(io.BytesIO(raw + b'x'))
    assert not res.complete and res.torn_bytes == 10 + 16 + 1 and got == data_of(3 * CHUNK)


# -- video and the sensor bag ----------------------------------------------------------------
W, H, FPS = 320, 240, 30


def encode_clip(n: int) -> list[VideoPacket]:
    """``n`` test-pattern frames through the camera's own encoder (Annex B, SPS on IDRs)."""
    src, encoder = TestPatternSource(W, H, FPS), H264Encoder(W, H, FPS, 400_000, FPS)
    out = []
    for i in range(n):
        t = 1000.0 + i / FPS
        au = encoder.encode(src.render(i, t))
        out.append(VideoPacket(t, au.data, au.is_keyframe))
    return out


def ffprobe_frames(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(['ffprobe', '-v', 'error', '-count_frames', '-select_streams', 'v:0',
                           '-show_entries', 'stream=nb_read_frames', '-of', 'csv=p=0',
                           str(path)], capture_output=True, text=True, timeout=60)


def frame_counters(path: Path) -> list[int]:
    import av
    with av.open(str(path)) as c:
        return [decode_frame_counter(f.to_ndarray(format='bgr24')) for f in c.decode(video=0)]


@pytest.fixture(scope='module')
def clip() -> list[VideoPacket]:
    return encode_clip(4 * FPS + 10)


def test_pyav_muxes_fmp4_straight_into_the_age_writer(tmp_path: Path, clip):
    """The recorder's composition: Fmp4Writer -> AgeWriter -> DurableFile, no seeking."""
    path = tmp_path / 'video.mp4.age'
    sink = DurableFile(path)
    w = AgeWriter(sink, [AGENCY.public_key()])
    mp4 = Fmp4Writer(w, fragment_s=1.0)
    for p in clip:
        if mp4.write(p):
            assert w.durable_flush()
    mp4.close()
    w.close()
    sink.close()
    assert w.ciphertext_sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    bad = ffprobe_frames(path)
    assert bad.returncode != 0                    # the ciphertext is not video
    out = tmp_path / 'video.mp4'
    with open(out, 'wb') as f:
        res = decrypt(path, AGENCY, f)
    assert res.complete and res.plaintext_sha256 == w.plaintext_sha256()
    good = ffprobe_frames(out)
    assert good.returncode == 0 and not good.stderr.strip(), good.stderr
    assert int(good.stdout) == len(clip)
    assert frame_counters(out) == list(range(len(clip)))


def test_crash_mid_clip_loses_at_most_the_unflushed_tail(tmp_path: Path, clip):
    path = tmp_path / 'video.mp4.age'
    w = AgeWriter(path, [AGENCY.public_key()])
    mp4 = Fmp4Writer(w, fragment_s=1.0)
    flushed_at = 0
    for p in clip:
        if mp4.write(p):
            w.durable_flush()
            flushed_at = w.plaintext_size
    w.abandon()                                   # power cut: no trailer, no final chunk
    out = tmp_path / 'video.mp4'
    with open(out, 'wb') as f:
        res = decrypt(path, AGENCY, f)
    assert not res.complete and res.plaintext_bytes >= flushed_at - CHUNK
    fixed = tmp_path / 'repaired.mp4'
    assert repair(out, fixed).playable            # the agency drops the torn fragment
    good = ffprobe_frames(fixed)
    assert good.returncode == 0 and not good.stderr.strip(), good.stderr
    counters = frame_counters(fixed)
    assert counters == list(range(len(counters))) and len(counters) >= 2 * FPS


def test_rosbag2_mcap_streams_through_the_age_writer(tmp_path: Path):
    """rosbags' MCAP storage only writes and tells, so it can write into an AgeWriter; the
    only plaintext it puts on disk first is the MCAP magic and the library's name."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.storage_mcap import McapWriter

    from bodycam_ros.core.sidecar import _typestore, read_mcap

    class AgeMcap(McapWriter):
        def __init__(self, path, compression, recipients):
            super().__init__(path, compression)
            self.bio.close()
            head = self.path.read_bytes()
            self.path.unlink()
            self.bio = self.age = AgeWriter(self.path, recipients)
            self.bio.write(head)

    class AgeBagWriter(Writer):
        STORAGE_PLUGINS = {**Writer.STORAGE_PLUGINS,
                           StoragePlugin.MCAP: partial(AgeMcap, recipients=[AGENCY.public_key()])}

    ts = _typestore()
    Imu = ts.types['sensor_msgs/msg/Imu']
    Header, Time = ts.types['std_msgs/msg/Header'], ts.types['builtin_interfaces/msg/Time']
    V3, Q = ts.types['geometry_msgs/msg/Vector3'], ts.types['geometry_msgs/msg/Quaternion']
    cov = np.zeros(9)
    bag = tmp_path / 'bag'
    writer = AgeBagWriter(bag, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    conn = writer.add_connection('/imu/data', Imu.__msgtype__, typestore=ts)
    for i in range(500):
        msg = Imu(Header(Time(1000 + i // 100, i % 100 * 10_000_000), 'imu'), Q(0, 0, 0, 1), cov,
                  V3(0, 0, i * 0.01), cov, V3(0, 0, 9.81), cov)
        writer.write(conn, 1_000_000_000_000 + i * 10_000_000,
                     ts.serialize_cdr(msg, Imu.__msgtype__))
    writer.close()
    age_file = bag / 'bag.mcap'
    assert not age_file.read_bytes().startswith(b'\x89MCAP')
    out = tmp_path / 'sensors.mcap'
    with open(out, 'wb') as f:
        assert decrypt(age_file, AGENCY, f).complete
    msgs = list(read_mcap(out))
    assert len(msgs) == 500 and msgs[-1][3].angular_velocity.z == pytest.approx(4.99)


# -- random damage ---------------------------------------------------------------------------
_PLAIN = data_of(2 * CHUNK + 3000, seed=7)
_BUF = io.BytesIO()
with AgeWriter(_BUF, [AGENCY.public_key()]) as _w:
    _w.write(_PLAIN)
_CIPHER = _BUF.getvalue()


@st.composite
def damaged(draw) -> bytes:
    raw = bytearray(_CIPHER)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(['flip', 'cut', 'insert', 'delete', 'set']))
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == 'flip' and raw:
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == 'cut':
            del raw[pos:]
        elif kind == 'insert':
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=40))
        elif kind == 'delete':
            del raw[pos:pos + draw(st.integers(1, 40))]
        elif kind == 'set' and raw:
            raw[pos] = draw(st.sampled_from(b'\n -=A/+0\x00\xff'))
    return bytes(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_damaged_files_give_a_named_error_or_authentic_plaintext_only(raw: bytes):
    out = io.BytesIO()
    try:
        res = decrypt(io.BytesIO(raw), AGENCY, out)
    except AgeError:
        assert _PLAIN.startswith(out.getvalue())  # even on error: only authentic bytes
        return
    got = out.getvalue()
    assert got == _PLAIN if res.complete else _PLAIN.startswith(got)
    assert res.plaintext_sha256 == hashlib.sha256(got).hexdigest()
