"""``bodycam replay BAG``: play a rosbag2 into the graph with real rclpy publishers.

MCAP or sqlite3 (also a bare ``.db3`` from ROS 2 Crystal/Dashing, with its old type names),
original timing scaled by ``--rate``, ``/clock`` (rosgraph_msgs/Clock) with ``--clock`` for
nodes on ``use_sim_time``. Messages go out as the bag holds them (CDR, published raw on a
publisher of the right type); the first one of every topic is deserialised with rclpy first,
so a type that does not match this machine's definition is skipped with the reason instead
of reaching a subscriber as garbage. QoS per topic is what the graph's subscribers expect
(sensor data for sensors, latched for holster and dispatch, reliable for video).

``bodycam run --replay BAG`` uses :class:`ReplayRun` to run the graph on the bag instead of
its simulated sensors.
"""
from __future__ import annotations

import argparse
import importlib
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bodycam_ros.core.replay import (GRAPH_INPUTS, IMAGE_TYPES, Bag, Plan, QosKind,
                                     ReplayError, bag_sha256, check_rate, clock_ns, due_s,
                                     graph_relative, parse_remap, plan)

#: ros2 bag play's default ``--clock`` frequency.
CLOCK_HZ = 40.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('bag', type=Path, help='rosbag2 directory, .mcap or .db3 file')
    p.add_argument('--rate', type=float, default=1.0, help='playback speed (1 = as recorded)')
    p.add_argument('--loop', action='store_true', help='play again from the start at the end')
    p.add_argument('--topics', nargs='+', default=[], metavar='TOPIC',
                   help='play only these bag topics')
    p.add_argument('--remap', action='append', default=[], metavar='FROM:=TO',
                   help='publish bag topic FROM on TO (repeatable)')
    p.add_argument('--start', type=float, default=0.0, metavar='S',
                   help='start S seconds into the bag')
    p.add_argument('--clock', type=float, nargs='?', const=CLOCK_HZ, default=0.0, metavar='HZ',
                   help=f'publish /clock with the bag time (default {CLOCK_HZ:g} Hz)')
    p.add_argument('--inputs-only', action='store_true',
                   help="play only the graph's sensor inputs (never recorded triggers, alerts "
                        'or recorder commands), under --namespace')
    p.add_argument('--namespace', default='', help='with --inputs-only: the unit namespace')
    p.add_argument('--wait-subscribers', type=int, default=0, metavar='N',
                   help='before playing, wait for N /clock subscribers (nodes on sim time) '
                        'and a subscriber on every graph input played')
    p.add_argument('--wait-per-topic', type=int, default=1, metavar='K',
                   help='with --wait-subscribers: K subscribers on every sensor input played '
                        '(run --replay: trigger_fusion and the recorder)')
    p.add_argument('--delay', type=float, default=1.0, metavar='S',
                   help='after the subscribers match, hold the clock S seconds more before '
                        'playing: a subscriber finishes matching after the publisher sees it, '
                        'and best effort drops what comes before (the first GPS fix, here)')
    p.add_argument('--wait-timeout', type=float, default=120.0, metavar='S',
                   help='give up waiting for subscribers after S seconds and play anyway')


def message_class(msgtype: str) -> type | None:
    """The rclpy message class of ``pkg/msg/Name``, or None where the package is absent."""
    pkg, _, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{pkg}.msg'), name, None)
    except ImportError:
        return None


def _qos(kind: QosKind):
    from bodycam_ros import rosutil
    return {QosKind.SENSOR: rosutil.SENSOR_QOS, QosKind.LATCHED: rosutil.LATCHED_QOS,
            QosKind.RELIABLE: rosutil.RELIABLE_QOS, QosKind.VIDEO: rosutil.VIDEO_QOS}[kind]


@dataclass
class Stats:
    published: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    bag_s: float = 0.0


class Player:
    """Publishes a bag's planned topics on one rclpy node, paced by the wall clock."""

    def __init__(self, node, bag: Bag, the_plan: Plan, rate: float, clock_hz: float,
                 echo=print) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.serialization import deserialize_message
        from rosgraph_msgs.msg import Clock

        self._node, self._bag, self._rate, self._echo = node, bag, rate, echo
        self.stats = Stats(skipped=list(the_plan.skipped))
        self._pubs = {}
        self._clock_pub = None
        self._clock_msg = Clock()
        if clock_hz > 0:
            # As rclpy's TimeSource subscribes: best effort, depth 1 (rclcpp::ClockQoS).
            self._clock_pub = node.create_publisher(
                Clock, '/clock', QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        self._tick_s = 1.0 / clock_hz if clock_hz > 0 else math.inf
        firsts = {}
        for msg in bag.messages([p.src for p in the_plan.play]):
            firsts.setdefault(msg.topic, msg.data)
            if len(firsts) == len(the_plan.play):
                break
        for p in the_plan.play:
            cls = message_class(p.msgtype)
            try:
                if p.src in firsts:
                    deserialize_message(firsts[p.src], cls)
            except Exception as exc:   # noqa: BLE001  rclpy raises a bare RuntimeError etc.
                self.stats.skipped.append((p.src, f'{p.msgtype} does not deserialise here '
                                                  f'({type(exc).__name__}: {exc})'))
                continue
            self._pubs[p.src] = (p, node.create_publisher(cls, p.dst, _qos(p.qos)))
        for src, why in self.stats.skipped:
            echo(f'replay: skipping {src}: {why}')
        for p, _ in self._pubs.values():
            echo(f'replay: {p.src} ({p.msgtype}, {p.count} msgs) -> {p.dst} [{p.qos.value}]')

    def publish_clock(self, t_ns: int) -> None:
        if self._clock_pub is not None:
            self._clock_msg.clock.sec, self._clock_msg.clock.nanosec = divmod(t_ns, 1_000_000_000)
            self._clock_pub.publish(self._clock_msg)

    def wait_for_subscribers(self, clock_subs: int, timeout_s: float, t_ns: int,
                             per_topic: int = 1, settle_s: float = 1.0) -> bool:
        """Hold the clock at ``t_ns`` until the graph listens (``per_topic`` subscribers on
        each sensor input: a latched message a late matcher gets late, in bag time ``rate``
        times later, was a 4 s error at rate 4 here); True if it does in time."""
        inputs = [(pub, 1 if graph_relative(p.dst) == 'camera/h264' else per_topic)
                  for p, pub in self._pubs.values() if graph_relative(p.dst) in GRAPH_INPUTS]
        end = time.monotonic() + timeout_s

        def ready() -> bool:
            clock_ok = self._clock_pub is None or \
                self._clock_pub.get_subscription_count() >= clock_subs
            return clock_ok and all(pub.get_subscription_count() >= k for pub, k in inputs)
        while not ready() and time.monotonic() < end:
            self.publish_clock(t_ns)
            time.sleep(0.05)
        ok = ready()
        settle = time.monotonic() + settle_s     # let every endpoint finish matching
        while time.monotonic() < settle:
            self.publish_clock(t_ns)
            time.sleep(0.05)
        return ok

    def play(self, start_ns: int | None = None) -> Stats:
        """One pass over the bag; returns counts, wall and bag seconds."""
        wall0 = time.monotonic()
        first = last = None
        next_tick = wall0
        for msg in self._bag.messages(list(self._pubs), start_ns):
            if first is None:
                first = msg.t_ns
                self.publish_clock(first)
            due = wall0 + due_s(msg.t_ns, first, self._rate)
            while True:
                now = time.monotonic()
                if now >= next_tick:
                    self.publish_clock(clock_ns(first, now - wall0, self._rate, msg.t_ns))
                    next_tick = now + self._tick_s
                if now >= due:
                    break
                time.sleep(max(0.0, min(due, next_tick) - now))
            p, pub = self._pubs[msg.topic]
            pub.publish(msg.data)
            self.stats.published[p.src] = self.stats.published.get(p.src, 0) + 1
            last = msg.t_ns
        if last is not None:
            self.publish_clock(last)
        self.stats.wall_s += time.monotonic() - wall0
        self.stats.bag_s += (last - first) / 1e9 if first is not None else 0.0
        return self.stats

    def linger(self, seconds: float, t_ns: int) -> None:
        """Keep the clock at the end and let reliable/latched messages drain."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.publish_clock(t_ns)
            time.sleep(min(0.05, self._tick_s))


def open_plan(path: Path, topics: Sequence[str] = (), remaps: Sequence[str] = (),
              inputs_only: bool = False, namespace: str = '') -> tuple[Bag, Plan]:
    """Open the bag and decide what to play (raises ReplayError)."""
    pairs = [parse_remap(r) for r in remaps]
    bag = Bag(path)
    bag.open()
    try:
        return bag, plan(bag.topics, include=topics, remap=pairs, inputs_only=inputs_only,
                         namespace=namespace,
                         known_type=lambda t: message_class(t) is not None)
    except ReplayError:
        bag.close()
        raise


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(args: argparse.Namespace) -> int:
    from bodycam_ros import bringup
    bringup.ros_env_defaults()
    try:
        rate = check_rate(args.rate)
        if args.start < 0 or args.clock < 0:
            raise ReplayError(f'--start {args.start} and --clock {args.clock} must be >= 0')
        bag, the_plan = open_plan(args.bag, args.topics, args.remap, args.inputs_only,
                                  args.namespace)
    except ReplayError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    if not the_plan.play:
        for src, why in the_plan.skipped:
            print(f'replay: skipping {src}: {why}', file=sys.stderr)
        print(f'error: nothing in {args.bag} to play', file=sys.stderr)
        bag.close()
        return 2

    import rclpy
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions
    signal.signal(signal.SIGTERM, _interrupt)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = Node('bodycam_replay')
    code = 0
    try:
        player = Player(node, bag, the_plan, rate, args.clock,
                        echo=lambda s: print(s, flush=True))
        start_ns = bag.start_ns + int(args.start * 1e9) if args.start else None
        if args.wait_subscribers:
            if not player.wait_for_subscribers(args.wait_subscribers, args.wait_timeout,
                                               start_ns or bag.start_ns, args.wait_per_topic,
                                               args.delay):
                print(f'replay: not every subscriber after {args.wait_timeout:g} s; '
                      'playing anyway', flush=True)
        print(f'replay: playing {args.bag} ({bag.duration_s:.1f} s) at rate {rate:g}'
              + (' with /clock' if args.clock else ''), flush=True)
        while True:
            stats = player.play(start_ns)
            if not args.loop:
                break
        player.linger(1.0, bag.end_ns - 1)
        total = sum(stats.published.values())
        print(f'replay: done, {total} messages, {stats.bag_s:.1f} s of bag in '
              f'{stats.wall_s:.1f} s ({stats.bag_s / max(stats.wall_s, 1e-9):.1f}x real time)',
              flush=True)
    except KeyboardInterrupt:
        code = 130
    finally:
        bag.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return code


@dataclass
class ReplayRun:
    """What ``bodycam run --replay BAG`` changes: which nodes run, their parameters, the
    player process, and when the run is over (the bag played)."""
    bag: Path
    rate: float
    names: list[str]
    node_params: dict[str, dict[str, object]]
    notes: list[str]
    namespace: str = ''
    proc: object = None
    _ended: float | None = None

    @classmethod
    def prepare(cls, bag_path: Path, rate: float, names: Sequence[str],
                namespace: str = '') -> ReplayRun:
        """Decide from the bag's topics which sensor nodes it replaces (raises ReplayError)."""
        check_rate(rate)
        bag, the_plan = open_plan(bag_path, inputs_only=True, namespace=namespace)
        bag.close()
        if not the_plan.play:
            raise ReplayError(f'bag {str(bag_path)!r} holds none of the graph inputs '
                              f'({", ".join(GRAPH_INPUTS)}) nor an image topic')
        rels = {graph_relative(p.dst) for p in the_plan.play}
        images = [p for p in the_plan.play if p.msgtype in IMAGE_TYPES and
                  graph_relative(p.dst) is None]
        drop = {node for node, topic in (('imu', 'imu/data'), ('gps', 'gps/fix'),
                                         ('holster', 'holster/weapon_drawn'))
                if topic in rels}
        params: dict[str, dict[str, object]] = {}
        notes = [f'replay: {p.src} -> {p.dst}' for p in the_plan.play]
        notes += [f'replay: not played: {src} ({why})' for src, why in the_plan.skipped]
        if 'camera/h264' in rels:
            drop.add('camera')
            notes.append('replay: camera from the bag (camera/h264)')
        elif images:
            params['camera'] = {'source': 'topic', 'image_topic': images[0].dst}
            notes.append(f'replay: camera from the bag ({images[0].src})')
        else:
            notes.append('replay: no video in the bag: camera test pattern')
        if 'dispatch/destination' in rels:
            params['dispatch_bridge'] = {'source': 'none'}
        path = Path(bag_path).resolve()
        params['recorder'] = {'replay_bag': str(path), 'replay_bag_sha256': bag_sha256(path)}
        kept = [n for n in names if n not in drop]
        notes.append('replay: sensor nodes replaced by the bag: ' + (', '.join(
            sorted(drop & set(names))) or 'none'))
        return cls(path, rate, kept, params, notes, namespace)

    def write_params(self, path: Path) -> Path:
        """A params file: every node on sim time, plus the per-node replay settings."""
        import yaml
        doc = {f'/**/{n}': {'ros__parameters': {'use_sim_time': True,
                                                **self.node_params.get(n, {})}}
               for n in self.names}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=True))
        return path

    def argv(self) -> list[str]:
        return [sys.executable, '-m', 'bodycam_ros.cli', 'replay', str(self.bag),
                '--rate', repr(self.rate), '--clock', '--inputs-only',
                '--namespace', self.namespace, '--wait-subscribers', str(len(self.names)),
                '--delay', '3', '--wait-per-topic',
                str(len({'trigger_fusion', 'recorder'} & set(self.names)) or 1)]

    def start(self, log_dir: Path) -> None:
        import subprocess
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / 'replay.log', 'ab') as out:
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def done(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def finished(self, drain_s: float = 2.0) -> bool:
        """True ``drain_s`` after the player exited (the graph handles what it just got)."""
        if not self.done():
            return False
        if self._ended is None:
            self._ended = time.monotonic()
            print(f'bodycam: the bag has played (player exit {self.proc.returncode}); '
                  'stopping, the recorder seals', flush=True)
        return time.monotonic() - self._ended >= drain_s

    def stop(self) -> int | None:
        """Stop the player if it still runs; its exit code."""
        import subprocess
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
