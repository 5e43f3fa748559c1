"""The look-back ring with synthetic time: the real 120 s semantics without a 2-minute wait."""
from __future__ import annotations

import pytest

from bodycam_ros.core.ring import LookbackRing, RingError, SensorRecord, VideoPacket

FPS, GOP = 30, 30


def feed(ring: LookbackRing, seconds: float, t0: float = 1_000.0, size: int = 1000,
         start_frame: int = 0) -> float:
    """Push ``seconds`` of 30 fps video, a keyframe each second (3x size); return last t."""
    t = t0
    for i in range(start_frame, start_frame + int(seconds * FPS)):
        t = t0 + i / FPS
        key = i % GOP == 0
        ring.push_video(VideoPacket(t, bytes(size * 3 if key else size), key))
    return t


def test_default_keeps_120_s_plus_margin_and_clip_starts_on_keyframe_before_trigger():
    ring = LookbackRing(keep_s=120.0 + 5.0, max_bytes=1 << 30)
    now = feed(ring, 300.0)
    st = ring.stats()
    assert 125.0 <= st.buffered_s < 127.0, st          # at least keep_s, at most one GOP more
    trigger = now - 2.0                                  # trigger began 2 s before the command
    snap = ring.snapshot(trigger, pre_event_s=120.0)
    assert snap.video[0].keyframe
    assert snap.start_t <= trigger - 120.0
    # ...and it is the latest keyframe that qualifies: the next one is after trigger - 120.
    next_key = next(p.t for p in snap.video[1:] if p.keyframe)
    assert next_key > trigger - 120.0
    assert snap.video[-1].t == now
    times = [p.t for p in snap.video]
    assert times == sorted(times) and len(times) == round((now - snap.start_t) * FPS) + 1


def test_less_buffered_than_pre_event_starts_at_the_oldest_keyframe():
    ring = LookbackRing(keep_s=125.0, max_bytes=1 << 30)
    ring.push_video(VideoPacket(999.9, b'p', False))     # before any keyframe: undecodable
    now = feed(ring, 10.0)
    snap = ring.snapshot(now, 120.0)
    assert snap.start_t == 1_000.0 and snap.video[0].keyframe
    assert ring.stats().dropped_orphans == 1


def test_byte_bound_evicts_whole_gops_oldest_first_and_keeps_the_newest():
    gop_bytes = 3000 + 29 * 1000
    ring = LookbackRing(keep_s=125.0, max_bytes=10 * gop_bytes)
    now = feed(ring, 60.0)
    st = ring.stats()
    assert st.video_bytes <= 10 * gop_bytes and st.gops == 10
    assert st.evicted_for_bytes == 50
    snap = ring.snapshot(now, 120.0)
    assert snap.video[0].keyframe and snap.start_t == pytest.approx(now - 10 + 1 / FPS)
    tiny = LookbackRing(keep_s=125.0, max_bytes=10)    # smaller than a GOP: the newest stays
    feed(tiny, 3.0)
    assert tiny.stats().gops == 1


def test_sensors_cover_the_clip_and_latched_state_survives_any_age():
    ring = LookbackRing(keep_s=10.0, max_bytes=1 << 30, latched_topics=['/holster/weapon_drawn'])
    ring.push_sensor(SensorRecord(990.0, '/holster/weapon_drawn', 'std_msgs/msg/Bool', b'x'))
    for i in range(4000):                                # 40 s of 100 Hz IMU
        ring.push_sensor(SensorRecord(1000.0 + i / 100, '/imu/data', 'sensor_msgs/msg/Imu',
                                      bytes(300)))
    now = feed(ring, 40.0)
    snap = ring.snapshot(now, 5.0)
    assert snap.sensors[0].topic == '/holster/weapon_drawn'      # current state first
    imu = [r for r in snap.sensors if r.topic == '/imu/data']
    assert imu[0].t >= snap.start_t and imu[0].t - snap.start_t < 0.011
    assert ring.stats().sensor_messages <= 100 * 11 + 1


def test_impossible_bounds_are_refused():
    with pytest.raises(RingError, match='keep_s'):
        LookbackRing(keep_s=-1.0, max_bytes=10)
    with pytest.raises(RingError, match='byte bounds'):
        LookbackRing(keep_s=1.0, max_bytes=0)
