"""Replay speed: one hour of a shift's sensors through trigger_fusion, as a multiple of real time.

    python -m bench.replay [--rates 20,60] [--minutes 60]

Builds a rosbag2 MCAP of ``--minutes`` of IMU at 100 Hz (the 20 SisFall trials, 200 Hz
decimated to 100 Hz, looped: falls, jogging and daily activities) and GPS at 1 Hz (the B&G
Zeus NMEA log, looped), written with rosbags. Then, for each rate, plays it with
``bodycam replay --rate R --clock`` into a real trigger_fusion process on ``use_sim_time``
and counts the officer-down start commands it sends. Baseline, measured in the same run: the
same samples through the same detector classes in one process, as ``bodycam eval`` feeds
them (no DDS, no clock). A rate counts as kept up with when trigger_fusion finds as many
officer-down events as the baseline.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / 'shared' / 'data'
T0_NS = 1_700_000_000 * 10**9
#: SisFall trials lie still ~6 s after the fall: officer_down as bodycam eval runs it on them.
DOWN_HOLD_S = 3.0


def samples(minutes: float):
    """(t, accel, gyro) at 100 Hz for ``minutes``, SisFall trials back to back, looped."""
    from bodycam_ros.core.imu_formats import load_sisfall
    trials = [load_sisfall(p) for p in sorted((DATA / 'imu' / 'sisfall').glob('[DF]*.txt'))]
    out, t, end = [], 0.0, minutes * 60.0
    while t < end:
        for rec in trials:
            acc, gyr = rec.accel[::2].tolist(), rec.gyro[::2].tolist()
            for a, w in zip(acc, gyr):
                out.append((t, a, w))
                t += 0.01
                if t >= end:
                    return out
    return out


def fixes(minutes: float):
    from bodycam_ros.core.nmea import iter_fixes
    lines = (DATA / 'gps' / 'nmea' / 'bundg_zeus_9.log').read_text(errors='replace').splitlines()
    one = [f for f in iter_fixes(lines) if f.has_fix]
    return [one[i % len(one)] for i in range(int(minutes * 60))]


def write_bag(path: Path, imu, gps) -> Path:
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from sensor_msgs.msg import Imu, NavSatFix, NavSatStatus
    ts = get_typestore(Stores.ROS2_JAZZY)
    msg = Imu()
    fix = NavSatFix()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        ci = w.add_connection('/imu/data', 'sensor_msgs/msg/Imu', typestore=ts)
        cg = w.add_connection('/gps/fix', 'sensor_msgs/msg/NavSatFix', typestore=ts)
        g = 0
        for t, a, gy in imu:
            ns = T0_NS + int(round(t * 1e9))
            while g < len(gps) and g <= t:
                f = gps[g]
                fix.header.stamp.sec, fix.header.stamp.nanosec = divmod(T0_NS + g * 10**9, 10**9)
                fix.status.status = NavSatStatus.STATUS_FIX
                fix.latitude, fix.longitude, fix.altitude = f.lat, f.lon, f.alt
                fix.position_covariance_type = NavSatFix.COVARIANCE_TYPE_APPROXIMATED
                fix.position_covariance = [9.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 25.0]
                w.write(cg, T0_NS + g * 10**9, serialize_message(fix))
                g += 1
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 10**9)
            (msg.linear_acceleration.x, msg.linear_acceleration.y,
             msg.linear_acceleration.z) = a
            msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z = gy
            w.write(ci, ns, serialize_message(msg))
    return path / f'{path.name}.mcap'


def baseline(imu) -> tuple[float, dict[str, int]]:
    """The three IMU detectors over the samples, as bodycam eval runs each: seconds, counts."""
    from bodycam_ros.commands.eval import make_detector
    from bodycam_ros.core.detectors import DownEventKind
    dets = {n: make_detector(n, DOWN_HOLD_S)
            for n in ('officer_down', 'foot_pursuit', 'fight')}
    counts = dict.fromkeys(dets, 0)
    t0 = time.perf_counter()
    for t, a, w in imu:
        for name, det in dets.items():
            out = det.update(t, a, w)
            if name == 'officer_down':
                counts[name] += sum(ev.kind is DownEventKind.DOWN for ev in out)
            elif out:
                counts[name] += 1
    return time.perf_counter() - t0, counts


def replay(bag: Path, rate: float, work: Path) -> tuple[float, int, str]:
    """Play into a trigger_fusion process; (player wall s, officer_down starts, player line)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticStatus
    from rclpy.node import Node

    from bodycam_ros import bringup
    from bodycam_ros.rosutil import RELIABLE_QOS
    env = {**os.environ, 'PYTHONPATH': str(ROOT / 'src')}
    files = [ROOT / 'config' / 'sim.yaml', bringup.write_overrides(
        work / 'tf.yaml', {'use_sim_time': True, 'down_hold_s': DOWN_HOLD_S},
        ['trigger_fusion'])]
    log = open(work / f'trigger_fusion-{rate:g}.log', 'wb')
    tf = subprocess.Popen(bringup.node_argv('trigger_fusion', files), env=env, stdout=log,
                          stderr=subprocess.STDOUT)
    rclpy.init()
    node = Node('bench_replay_probe')
    starts = []
    node.create_subscription(DiagnosticStatus, 'recorder/command', lambda m: starts.append(
        {kv.key: kv.value for kv in m.values}.get('reason')), RELIABLE_QOS)
    player = subprocess.Popen(
        [sys.executable, '-m', 'bodycam_ros.cli', 'replay', str(bag), '--rate', str(rate),
         '--clock', '--inputs-only', '--wait-subscribers', '1'], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while player.poll() is None:
        rclpy.spin_once(node, timeout_sec=0.1)
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    out = player.stdout.read()
    tf.send_signal(2)
    tf.wait(30)
    log.close()
    node.destroy_node()
    rclpy.shutdown()
    done = [ln for ln in out.splitlines() if ln.startswith('replay: done')]
    wall = float(done[0].split(' in ')[1].split(' s')[0]) if done else float('nan')
    return wall, starts.count('officer_down'), (done[0] if done else out[-500:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rates', default='20,60')
    ap.add_argument('--minutes', type=float, default=60.0)
    args = ap.parse_args()
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    work = Path(tempfile.mkdtemp(prefix='bench-replay-'))
    imu, gps = samples(args.minutes), fixes(args.minutes)
    t0 = time.perf_counter()
    bag = write_bag(work / 'shift', imu, gps)
    print(f'bag: {len(imu)} IMU + {len(gps)} GPS messages ({args.minutes:g} min), written in '
          f'{time.perf_counter() - t0:.1f} s, {bag.stat().st_size / 1e6:.0f} MB')
    base_s, counts = baseline(imu)
    shift_s = args.minutes * 60.0
    print(f'baseline (bodycam eval path, in-process, 3 detectors): {base_s:.1f} s = '
          f'{shift_s / base_s:.0f}x real time; events {counts}')
    for rate in (float(r) for r in args.rates.split(',')):
        wall, downs, line = replay(bag, rate, work)
        kept = 'kept up' if downs == counts['officer_down'] else \
            f'FELL BEHIND ({downs} of {counts["officer_down"]} officer_down)'
        print(f'replay --rate {rate:g}: {shift_s / wall:.1f}x real time ({wall:.1f} s), '
              f'{base_s / wall:.2f}x the baseline speed; trigger_fusion {kept}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
