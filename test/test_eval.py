"""`bodycam eval` on the real recordings in ../shared/data: the accuracy floors of the issue,
measured with the one parameter set the trigger_fusion node runs.

SisFall (Sucerquia et al., Sensors 2017) and UMAFall (Casilari et al., Procedia Comp. Sci.
2017) trials; gpsd regression NMEA logs (BSD-2-Clause).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bodycam_ros.commands.eval import is_positive
from conftest import ROOT, shared_data


def bodycam_eval(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'eval', *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=check)


def report(*args: str) -> dict:
    return json.loads(bodycam_eval(*args, '--json').stdout)


@pytest.fixture(scope='module')
def imu_dirs() -> tuple[str, str]:
    return str(shared_data('imu', 'sisfall')), str(shared_data('imu', 'umafall'))


def test_officer_down_floor(imu_dirs):
    """Both datasets, one per --format, with the 3 s hold SisFall's short trials need."""
    sis = report('--detector', 'officer_down', '--format', 'sisfall', '--down-hold-s', '3',
                 *imu_dirs)
    uma = report('--detector', 'officer_down', '--format', 'umafall', '--down-hold-s', '3',
                 *imu_dirs)
    assert len(sis['files']) == 20 and all(f['file'][0] in 'DF' for f in sis['files'])
    assert len(uma['files']) == 7 and all(f['file'].startswith('UMAFall_') for f in uma['files'])
    files = sis['files'] + uma['files']
    pos = [f for f in files if f['positive']]
    neg = [f for f in files if not f['positive']]
    assert len(pos) == 11 and len(neg) == 16             # 8 SisFall + 3 UMAFall falls
    assert sum(f['fired'] for f in pos) / len(pos) >= 0.90
    assert not [f['file'] for f in neg if f['fired']]    # no D-trial, no ADL
    assert sis['params']['down_hold_s'] == 3.0
    for f in pos:
        if f['fired']:   # after the fall and the hold, inside the trial
            assert 3.0 < f['first_fire_s'] < f['duration_s']
    assert sis['summary']['fp'] == uma['summary']['fp'] == 0


def test_officer_down_default_hold_on_umafall(imu_dirs):
    # UMAFall trials hold ~11 s after the fall: even the node's default 10 s hold catches them.
    uma = report('--detector', 'officer_down', imu_dirs[1])
    assert uma['params']['down_hold_s'] == 10.0
    assert uma['summary']['tp'] == 3 and uma['summary']['fp'] == 0


def test_foot_pursuit_floor(imu_dirs):
    r = report('--detector', 'foot_pursuit', *imu_dirs)
    jogging = [f for f in r['files'] if f['positive']]
    assert sorted(f['label'] for f in jogging) == ['ADL_Jogging', 'D03', 'D04']
    assert all(f['fired'] and f['first_fire_s'] <= 5.0 for f in jogging), jogging
    walking = [f for f in r['files'] if f['label'] in ('D01', 'D02', 'ADL_Walking')]
    assert len(walking) == 3 and not any(f['fired'] for f in walking)
    # The one other file it fires on is F05, "fall forward while JOGGING": a real jog.
    others = [f['label'] for f in r['files'] if f['fired'] and not f['positive']]
    assert others in ([], ['F05'])


def test_fight_never_fires_on_daily_activities(imu_dirs):
    r = report('--detector', 'fight', *imu_dirs)
    assert r['summary']['n_pos'] == 0 and r['summary']['sensitivity'] is None
    adl = [f for f in r['files'] if f['label'].startswith(('D', 'ADL'))]
    assert len(adl) == 16 and not any(f['fired'] for f in adl)


def test_table_output_names_every_trial(imu_dirs):
    out = bodycam_eval('--detector', 'officer_down', '--down-hold-s', '3', imu_dirs[1]).stdout
    assert 'UMAFall_Subject_02_Fall_lateralFall' in out and 'sensitivity 100.0 %' in out


def test_labels_from_file_names():
    assert is_positive('officer_down', 'F13_SA01_R01.txt')
    assert is_positive('officer_down', 'UMAFall_Subject_02_Fall_forwardFall_1_2016.csv')
    assert not is_positive('officer_down', 'D13_SA02_R01.txt')
    assert is_positive('foot_pursuit', 'D03_SA01_R01.txt')
    assert is_positive('foot_pursuit', 'UMAFall_Subject_02_ADL_Jogging_1_2016.csv')
    assert not is_positive('foot_pursuit', 'D02_SA01_R01.txt')
    assert not is_positive('fight', 'D04_SA01_R01.txt')


def test_dispatch_proximity_entries_and_exits_on_real_nmea():
    boat = shared_data('gps', 'nmea', 'bundg_zeus_9.log')   # 430 m over 146 s at ~3 m/s
    r = report('--detector', 'dispatch_proximity', '--format', 'nmea',
               '--destination', '52.850155,5.313617', '--radius-m', '200', str(boat))
    (f,) = r['files']
    assert [e['event'] for e in f['events']] == ['enter', 'exit']
    enter, exit_ = f['events']
    assert enter['utc'].startswith('2018-08-20T09:47') and enter['distance_m'] < 5
    assert exit_['distance_m'] > 300          # 200 m radius + 100 m hysteresis
    assert not f['inside_at_end'] and f['ignored'] == 0


def test_dispatch_proximity_skips_no_fix_and_poor_accuracy():
    walker = shared_data('gps', 'nmea', 'haicom-305N.log')  # first ~9 s without a fix
    r = report('--detector', 'dispatch_proximity', '--format', 'nmea',
               '--destination=-27.2108,153.0522', '--radius-m', '100', str(walker))
    (f,) = r['files']
    assert f['ignored'] >= 6 and f['accepted'] + f['ignored'] == f['fixes']
    assert [e['event'] for e in f['events']] == ['enter'] and f['inside_at_end']
    assert r['radius_m'] == 100.0 and r['summary']['entries'] == 1


@pytest.mark.parametrize('args,needle', [
    (['--detector', 'dispatch_proximity', '--format', 'nmea', 'x.log'], '--destination'),
    (['--detector', 'fight', '/no/such/dir'], 'no such file'),
    (['--detector', 'fight', '--down-hold-s', '3', 'x.txt'], 'officer_down only'),
    (['--detector', 'officer_down', '--down-hold-s', '1', 'x.txt'], 'down_hold_s'),
])
def test_bad_arguments_exit_2_with_a_reason(args, needle):
    p = bodycam_eval(*args, check=False)
    assert p.returncode == 2 and needle in p.stderr


def test_a_trial_without_the_waist_sensor_is_named_skipped_and_the_rest_reported(tmp_path):
    """Some UMAFall Subject_09 trials have no sensor 2: eval stopped there and reported nothing.

    The dataset here is the real 7 trials plus a real trial with its waist rows (sensor 2)
    removed, under a Subject_09 name.
    """
    uma = shared_data('imu', 'umafall')
    for f in sorted(uma.glob('UMAFall_*.csv')):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    walk = next(uma.glob('UMAFall_Subject_02_ADL_Walking_*.csv'))
    lines = walk.read_text(encoding='utf-8', errors='replace').splitlines(keepends=True)
    kept = [ln for ln in lines if ln.startswith('%') or ln.rstrip().rstrip(';')[-2:] != ';2']
    assert len(lines) - len(kept) > 800     # every waist row went
    bad = tmp_path / 'UMAFall_Subject_09_ADL_Walking_1_2017-04-04_11-03-11.csv'
    bad.write_text(''.join(kept))
    p = bodycam_eval('--detector', 'officer_down', '--json', str(tmp_path))
    r = json.loads(p.stdout)
    assert len(r['files']) == 7 and r['summary']['tp'] == 3 and r['summary']['skipped'] == 1
    (s,) = r['skipped']
    assert s['file'] == bad.name and 'sensor 2' in s['reason']
    assert bad.name in p.stderr and 'skipped' in p.stderr
    table = bodycam_eval('--detector', 'officer_down', str(tmp_path)).stdout
    assert f'skipped {bad.name}' in table and 'sensitivity 100.0 %' in table


def test_only_unusable_files_exit_2_naming_them(tmp_path):
    bad = tmp_path / 'UMAFall_Subject_09_ADL_Walking_1_2017-04-04_11-03-11.csv'
    bad.write_text('% Sensor ID: 2\n1;1;0.1;0.2;0.3;0;0\n')
    p = bodycam_eval('--detector', 'fight', str(bad), check=False)
    assert p.returncode == 2 and bad.name in p.stderr and 'skipped' in p.stderr
