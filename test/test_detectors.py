"""Trigger detectors, fed exactly as the node and `bodycam eval` feed them: timestamped
samples in order. Real recordings where the behaviour is about real motion; the scenario's
synthesis or hand-made fixes where the behaviour is about logic (hysteresis, timers)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bodycam_ros.core import scenario
from bodycam_ros.core.detectors import (ONE_MILE_M, DetectorError, DispatchProximity,
                                        DownEventKind, DownPhase, Fight, Fix, FootPursuit,
                                        Manual, OfficerDown, OfficerDownParams, Source,
                                        WeaponDrawn)
from bodycam_ros.core.detectors.foot_pursuit import FootPursuitParams
from bodycam_ros.core.geodesy import offset
from bodycam_ros.core.imu_formats import load
from conftest import shared_data

G = 9.80665
DEST = (38.60, -121.49)


def feed(det, rec, t0: float = 0.0, until: float = math.inf):
    """Every sample of a recording into a detector; returns (t, result) of each non-empty one."""
    out = []
    for i in range(len(rec.t)):
        t = float(rec.t[i]) + t0
        if t > until:
            break
        r = det.update(t, rec.accel[i], None if rec.gyro is None else rec.gyro[i])
        if r:
            out.append((t, r))
    return out


def synth(det, activity: scenario.Activity, t0: float, t1: float, rate: float = 100.0):
    """The scenario's IMU synthesis for one activity into a detector."""
    out = []
    for k in range(int(t0 * rate), int(t1 * rate)):
        t = k / rate
        s = scenario.synth_imu(activity, t - t0, t)
        r = det.update(t, s.accel, s.gyro)
        if r:
            out.append((t, r))
    return out


# ------------------------------------------------------------------- dispatch_proximity

def at(distance_m: float, t: float, **kw) -> Fix:
    lat, lon = offset(*DEST, -distance_m, 0.0)
    return Fix(t, lat, lon, **kw)


def test_dispatch_enters_at_the_mile_and_exits_only_past_the_hysteresis():
    det = DispatchProximity(hysteresis_m=100.0)
    det.set_destination(0.0, *DEST)
    assert det.update(at(1700.0, 1.0)) is None and not det.state().active
    crossing = det.update(at(1600.0, 2.0))
    assert crossing is not None and crossing.entered
    assert crossing.distance_m == pytest.approx(1600.0, abs=0.5)
    st = det.state()
    assert st.active and st.since == 2.0 and st.values['distance_m'] == pytest.approx(1600, abs=1)
    assert det.update(at(1650.0, 3.0)) is None and det.state().active     # wander at the line
    assert det.update(at(1705.0, 4.0)) is None and det.state().active
    exit_ = det.update(at(1712.0, 5.0))
    assert exit_ is not None and not exit_.entered and not det.state().active


def test_dispatch_ignores_no_fix_and_inaccurate_fixes():
    det = DispatchProximity(max_accuracy_m=30.0)
    det.set_destination(0.0, *DEST)
    assert det.update(at(10.0, 1.0, has_fix=False)) is None
    assert det.update(at(10.0, 2.0, accuracy_m=80.0)) is None
    assert not det.state().active and det.ignored == 2
    assert det.update(at(10.0, 3.0, accuracy_m=5.0)).entered
    assert det.update(at(5000.0, 4.0, accuracy_m=500.0)) is None      # a bad fix cannot exit
    assert det.state().active and det.ignored == 3


def test_dispatch_already_inside_when_dispatched_and_cleared_by_no_fix():
    det = DispatchProximity()
    assert det.update(at(300.0, 1.0)) is None
    assert det.state().message == 'no dispatch' and not det.state().active
    entered = det.set_destination(2.0, *DEST)
    assert entered is not None and entered.entered and det.state().active
    left = det.clear_destination(3.0)
    assert left is not None and not left.entered
    st = det.state()
    assert not st.active and st.message == 'no dispatch'


def test_dispatch_radius_is_geodesic_one_mile_by_default():
    det = DispatchProximity()
    assert det.radius_m == ONE_MILE_M
    det.set_destination(0.0, *DEST)
    assert det.update(at(ONE_MILE_M + 0.5, 1.0)) is None
    assert det.update(at(ONE_MILE_M - 0.5, 2.0)).entered


def test_dispatch_bad_parameters_name_themselves():
    with pytest.raises(DetectorError, match='radius_m'):
        DispatchProximity(radius_m=0.0)
    with pytest.raises(DetectorError, match='max_accuracy_m'):
        DispatchProximity(max_accuracy_m=-1.0)


# ------------------------------------------------------------------------ weapon drawn

def test_weapon_drawn_fires_at_once_and_one_redraw_is_one_activation():
    det = WeaponDrawn(debounce_s=0.0, clear_s=2.0)
    assert det.state().values['drawn'] == 'false' and not det.known
    assert not det.update(0.0, False)
    assert det.update(10.0, True)                 # the draw: active immediately
    st = det.state()
    assert st.active and st.since == 10.0 and st.source is Source.HOLSTER
    assert not det.update(11.0, False)            # re-holstered ...
    assert det.state().active                     # ... but not yet for clear_s
    assert not det.update(12.0, True)             # drawn again: the same activation
    assert det.state().since == 10.0 and det.draws == 1
    det.update(13.0, False)
    det.tick(14.9)
    assert det.state().active
    det.tick(15.1)
    assert not det.state().active


def test_weapon_drawn_debounce_ignores_a_bounce():
    det = WeaponDrawn(debounce_s=0.05, clear_s=0.0)
    det.update(0.0, False)
    assert not det.update(1.0, True) and not det.update(1.02, False)   # 20 ms bounce
    det.tick(1.2)
    assert not det.state().active
    assert not det.update(2.0, True)
    assert det.tick(2.06) and det.state().since == 2.0


# ------------------------------------------------------------------------------ manual

def test_manual_start_is_idempotent_until_stopped():
    m = Manual()
    assert m.start(5.0) and not m.start(6.0)
    assert m.state().active and m.state().since == 5.0
    m.stop()
    assert not m.state().active and m.start(7.0)


# ------------------------------------------------------------------------ officer_down

def test_officer_down_on_a_real_fall_then_the_alert_after_the_dismiss_window():
    rec = load(shared_data('imu', 'sisfall', 'F01_SA01_R01.txt'))
    det = OfficerDown(OfficerDownParams(down_hold_s=3.0, dismiss_s=2.0))
    events = [ev for _, evs in feed(det, rec) for ev in evs]
    assert [e.kind for e in events] == [DownEventKind.DOWN, DownEventKind.ALERT]
    down, alert = events
    # SisFall F01: the impact is at 7.1 s (13.8 g); lying still from ~8 s.
    assert 10.0 <= down.t <= 12.0 and down.impact
    assert alert.t == pytest.approx(down.t + 2.0, abs=0.3)
    st = det.state()
    assert st.active and st.values['phase'] == 'alert' and 6.8 <= st.since <= 7.5
    assert st.values['angle_deg'] > 80


@pytest.mark.parametrize('name', ['D12_SA01_R01.txt', 'D13_SA02_R01.txt', 'D14_SA01_R01.txt',
                                  'D11_SA01_R01.txt', 'D18_SA01_R01.txt', 'D19_SA01_R01.txt'])
def test_officer_down_not_on_lying_down_collapsing_in_a_chair_stumbling_or_jumping(name):
    rec = load(shared_data('imu', 'sisfall', name))
    det = OfficerDown(OfficerDownParams(down_hold_s=3.0))
    assert feed(det, rec) == [] and not det.state().active


def test_officer_down_dismissed_by_getting_up_within_the_window():
    det = OfficerDown(OfficerDownParams(down_hold_s=3.0, dismiss_s=20.0))
    synth(det, scenario.Activity.STILL, 0.0, 5.0)
    synth(det, scenario.Activity.FALLING, 5.0, 5.5)
    got = synth(det, scenario.Activity.LYING, 5.5, 12.0)
    assert [ev.kind for _, evs in got for ev in evs] == [DownEventKind.DOWN]
    assert det.phase is DownPhase.PENDING
    got = synth(det, scenario.Activity.STILL, 12.0, 16.0)      # stands up
    assert [ev.kind for _, evs in got for ev in evs] == [DownEventKind.DISMISSED]
    assert not det.state().active and all(e.kind is not DownEventKind.ALERT for e in det.events)


def test_officer_down_cancel_and_the_slow_collapse_path():
    det = OfficerDown(OfficerDownParams(down_hold_s=3.0, down_hold_no_impact_s=20.0,
                                        dismiss_s=5.0))
    synth(det, scenario.Activity.STILL, 0.0, 3.0)
    # No impact: lying still must last down_hold_no_impact_s, not down_hold_s.
    got = synth(det, scenario.Activity.LYING, 3.0, 30.0)
    kinds = [(ev.kind, round(t)) for t, evs in got for ev in evs]
    assert kinds[0][0] is DownEventKind.DOWN and 22 <= kinds[0][1] <= 25, kinds
    assert not det.events[0].impact and det.state().confidence < 0.9
    assert det.cancel(30.0).kind is DownEventKind.CANCELLED
    assert det.cancel(30.5) is None and not det.state().active


def test_officer_down_alert_is_raised_by_time_alone_when_the_imu_stops():
    det = OfficerDown(OfficerDownParams(down_hold_s=3.0, dismiss_s=4.0))
    synth(det, scenario.Activity.FALLING, 0.0, 0.5)
    synth(det, scenario.Activity.LYING, 0.5, 5.0)
    assert det.phase is DownPhase.PENDING
    assert det.tick(20.0)[0].kind is DownEventKind.ALERT and det.alert_open


def test_officer_down_hold_is_settable_down_to_3_s_only():
    with pytest.raises(DetectorError, match='down_hold_s'):
        OfficerDownParams(down_hold_s=2.0).validate()
    with pytest.raises(DetectorError, match='down_hold_no_impact_s'):
        OfficerDownParams(down_hold_s=30.0, down_hold_no_impact_s=10.0).validate()


def test_officer_down_works_from_timestamps_at_20_hz():
    """UMAFall's waist tag streams at ~20 Hz: same parameters, same decision."""
    rec = load(shared_data('imu', 'umafall',
                           'UMAFall_Subject_02_Fall_forwardFall_1_2016-06-13_20-43-52.csv'))
    assert rec.rate_hz < 25
    det = OfficerDown(OfficerDownParams(down_hold_s=3.0))
    got = feed(det, rec)
    assert got and got[0][1][0].kind is DownEventKind.DOWN and got[0][0] < 8.0


# ------------------------------------------------------------------------ foot_pursuit

@pytest.mark.parametrize('name', ['D03_SA01_R01.txt', 'D04_SA01_R01.txt'])
def test_foot_pursuit_catches_jogging_within_5_s(name):
    rec = load(shared_data('imu', 'sisfall', name))
    det = FootPursuit()
    fired = feed(det, rec, until=30.0)
    assert fired and fired[0][0] <= 5.0
    st = det.state()
    assert st.active and 2.3 <= st.values['cadence_hz'] <= 4.0 and st.values['energy_g'] > 0.5


@pytest.mark.parametrize('name', ['D01_SA01_R01.txt', 'D02_SA01_R01.txt'])
def test_foot_pursuit_never_fires_on_walking(name):
    rec = load(shared_data('imu', 'sisfall', name))     # 100 s each, slow and quick
    det = FootPursuit()
    assert feed(det, rec) == [] and det.evaluations > 300


def run_with_gps(det, speed_mps: float, good: bool, seconds: float = 8.0):
    """Running IMU with a GPS speed every second, as gps/vel arrives."""
    fired = []
    for k in range(int(seconds)):
        det.update_gps(float(k), speed_mps, good)
        fired += synth(det, scenario.Activity.RUNNING, float(k), k + 1.0)
    return fired


def test_foot_pursuit_gps_vetoes_a_vehicle_and_confirms_a_runner():
    det = FootPursuit()
    assert run_with_gps(det, 15.0, good=True) == []        # bumpy ride at 54 km/h
    assert 'vehicle' in det.state().values['gps_veto']
    assert run_with_gps(FootPursuit(), 0.3, good=True) == []   # running on the spot
    # A bad fix says nothing: the IMU decides alone.
    assert run_with_gps(FootPursuit(), 15.0, good=False)
    det = FootPursuit()
    fired = run_with_gps(det, 4.5, good=True)
    assert fired and fired[0][0] <= 5.0 and det.state().confidence > 0.9


def test_foot_pursuit_clears_after_running_stops():
    det = FootPursuit(FootPursuitParams(clear_s=3.0))
    assert synth(det, scenario.Activity.RUNNING, 0.0, 8.0)
    synth(det, scenario.Activity.STILL, 8.0, 10.0)
    assert det.state().active
    synth(det, scenario.Activity.STILL, 10.0, 14.0)
    assert not det.state().active


# ------------------------------------------------------------------------------- fight

def test_fight_on_a_struggle_not_on_running():
    det = Fight()
    fired = synth(det, scenario.Activity.FIGHTING, 0.0, 12.0)
    assert fired and fired[0][0] <= 7.0
    st = det.state()
    assert st.active and st.values['periodicity'] < 0.4 and st.values['spread_deg'] > 30
    synth(det, scenario.Activity.LYING, 12.0, 20.0)
    assert not det.state().active
    assert synth(Fight(), scenario.Activity.RUNNING, 0.0, 30.0) == []


@pytest.mark.parametrize('name', ['D04_SA01_R01.txt', 'D18_SA01_R01.txt', 'D19_SA01_R01.txt',
                                  'D08_SA02_R01.txt', 'D13_SA02_R01.txt'])
def test_fight_not_on_jogging_stumbling_jumping_sitting_or_lying_down(name):
    rec = load(shared_data('imu', 'sisfall', name))
    assert feed(Fight(), rec) == []


def test_fight_not_on_a_fall():
    """A fall's one impact passes the per-window test only while it is in the window."""
    rec = load(shared_data('imu', 'sisfall', 'F05_SA01_R01.txt'))   # 18.8 g while jogging
    assert feed(Fight(), rec) == []


# ---------------------------------------------------------------- robustness to input

def test_out_of_order_and_non_finite_samples_are_skipped():
    det = OfficerDown()
    assert det.update(1.0, (0.0, 0.0, G)) == []
    assert det.update(0.5, (0.0, 0.0, G)) == []             # out of order: skipped
    assert det.update(1.1, (math.nan, 0.0, G)) == []        # NaN: skipped
    assert det._win.rejected == 2                            # noqa: SLF001
    det.update(1.2, np.array([0.0, 0.0, G]))                 # numpy rows work too
