"""holster: the debouncer (pure), the lines (sim; GPIO up to the libgpiod edge), the node."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import Bool
from std_srvs.srv import SetBool

from bodycam_ros.core.holster import DrawDetector, LevelSample
from bodycam_ros.drivers.holster import GpioHolsterLine, HolsterError, SimHolsterLine
from bodycam_ros.nodes.holster_node import HolsterNode
from bodycam_ros.rosutil import ERROR, LATCHED_QOS, OK, RELIABLE_QOS
from conftest import spin_for, spin_until


def feed(det: DrawDetector, levels: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
    """(t, drawn) for every sample that completed a change."""
    out = []
    for t, high in levels:
        st = det.update(LevelSample(t, high))
        if st.changed:
            out.append((t, st.drawn))
    return out


# --------------------------------------------------------------------------- debouncer

def test_first_stable_level_is_reported_once() -> None:
    det = DrawDetector(debounce_s=0.05)
    assert not det.known
    assert feed(det, [(0.00, False), (0.03, False), (0.05, False), (0.08, False)]) == [
        (0.05, False)]
    assert det.known and not det.drawn and det.transitions == 0


def test_bounces_shorter_than_debounce_are_ignored() -> None:
    det = DrawDetector(debounce_s=0.05, initial=False)
    # Running: the switch flicks open for 20-40 ms at a time; never 50 ms.
    t, levels = 0.0, []
    for _ in range(20):
        levels += [(t, True), (t + 0.02, True), (t + 0.04, False), (t + 0.06, False)]
        t += 0.08
    assert feed(det, levels) == [] and det.transitions == 0


def test_draw_and_holster_each_count_once_with_their_start_time() -> None:
    det = DrawDetector(debounce_s=0.05, initial=False)
    samples = [(i * 0.01, 1.00 <= i * 0.01 < 3.00) for i in range(400)]
    samples[101] = (1.01, False)   # contact bounce right at the draw
    changes = feed(det, samples)
    assert [d for _, d in changes] == [True, False]
    assert changes[0][0] == pytest.approx(1.07) and changes[1][0] == pytest.approx(3.05)
    assert det.transitions == 2 and det.draws == 1
    st = det.update(LevelSample(4.0, False))
    assert st.since == pytest.approx(3.00) and not st.changed and not st.drawn


def test_zero_debounce_is_immediate_and_negative_is_refused() -> None:
    det = DrawDetector(debounce_s=0.0, initial=False)
    assert feed(det, [(0.0, True), (0.001, False), (0.002, True)]) == [
        (0.0, True), (0.001, False), (0.002, True)]
    with pytest.raises(ValueError, match='debounce_s < 0'):
        DrawDetector(debounce_s=-0.01)


def test_clock_going_backwards_restarts_the_wait() -> None:
    det = DrawDetector(debounce_s=0.05, initial=False)
    assert feed(det, [(10.0, True), (9.0, True), (9.04, True), (9.06, True)]) == [(9.06, True)]


# --------------------------------------------------------------------------- lines

def test_sim_line_follows_the_scenario_and_can_be_forced() -> None:
    now = [1000.0]
    line = SimHolsterLine('patrol', scenario_start=1000.0, clock=lambda: now[0])
    assert line.read() is False
    now[0] = 1000.0 + 124.0                      # patrol: weapon drawn at 124 s
    assert line.read() is True
    line.set(False)
    assert line.read() is False
    line.set(None)
    assert line.read() is True
    with pytest.raises(HolsterError, match='unknown scenario'):
        SimHolsterLine('nope')


def test_gpio_without_the_gpiod_package_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, 'gpiod', None)   # as if not installed
    with pytest.raises(HolsterError, match='pip install gpiod'):
        GpioHolsterLine('/dev/gpiochip0', 17)


def test_gpio_missing_or_wrong_chip_is_a_clear_error() -> None:
    pytest.importorskip('gpiod')
    with pytest.raises(HolsterError, match='/dev/gpiochip97 does not exist'):
        GpioHolsterLine('gpiochip97', 17)
    with pytest.raises(HolsterError, match='/dev/null is not a GPIO chip'):
        GpioHolsterLine('/dev/null', 17)


class FakeRequest:
    """libgpiod's LineRequest at the edge of the world: the line's logical value."""

    def __init__(self, settings) -> None:
        self.settings, self.physical_high, self.released = settings, False, False

    def get_value(self, line):
        from gpiod.line import Value
        if self.released:
            import gpiod
            raise gpiod.RequestReleasedError()
        active = self.physical_high != self.settings.active_low
        return Value.ACTIVE if active else Value.INACTIVE

    def release(self) -> None:
        self.released = True


@pytest.mark.parametrize('active_high', [True, False])
def test_gpio_line_applies_active_level_and_bias(monkeypatch, tmp_path: Path,
                                                 active_high: bool) -> None:
    gpiod = pytest.importorskip('gpiod')
    from gpiod.line import Bias, Direction
    chip = tmp_path / 'gpiochip0'
    chip.touch()
    made = {}

    def request_lines(path, consumer=None, config=None):
        assert path == str(chip) and consumer == 'bodycam-holster' and list(config) == [17]
        made['req'] = FakeRequest(config[17])
        return made['req']

    monkeypatch.setattr(gpiod, 'is_gpiochip_device', lambda p: p == str(chip))
    monkeypatch.setattr(gpiod, 'request_lines', request_lines)
    line = GpioHolsterLine(str(chip), 17, active_high=active_high, bias='pull_up')
    req = made['req']
    assert req.settings.direction == Direction.INPUT and req.settings.bias == Bias.PULL_UP
    req.physical_high = True
    assert line.read() is active_high
    req.physical_high = False
    assert line.read() is (not active_high)
    req.released = True                           # e.g. the chip went away under us
    with pytest.raises(HolsterError, match='released'):
        line.read()
    line.close()
    with pytest.raises(HolsterError, match='closed'):
        line.read()
    with pytest.raises(HolsterError, match='bias'):
        GpioHolsterLine(str(chip), 17, bias='sideways')


# --------------------------------------------------------------------------- node over DDS

class Probe(Node):
    def __init__(self, ctx, name: str = 'probe') -> None:
        super().__init__(name, context=ctx)
        self.drawn: list[bool] = []
        self.diag: list[DiagnosticStatus] = []
        self.create_subscription(Bool, 'holster/weapon_drawn',
                                 lambda m: self.drawn.append(m.data), LATCHED_QOS)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, RELIABLE_QOS)

    def _on_diag(self, arr: DiagnosticArray) -> None:
        self.diag += [s for s in arr.status if s.name == 'holster']

    def last_diag(self) -> dict[str, str]:
        s = self.diag[-1]
        return {'level': s.level, 'message': s.message, **{kv.key: kv.value for kv in s.values}}


def holster_node(ctx, driver=None, **params) -> HolsterNode:
    return HolsterNode(driver, context=ctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in params.items()])


def test_draw_is_published_latched_for_a_late_subscriber(ctx, executor) -> None:
    line = SimHolsterLine()
    executor.add_node(holster_node(ctx, line, debounce_s=0.05))
    probe = Probe(ctx)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.drawn == [False]), probe.drawn
    line.set(True)                      # the sim driver: the only stand-in
    t0 = time.monotonic()
    assert spin_until(executor, lambda: probe.drawn[-1] is True), 'no draw in 5 s'
    assert time.monotonic() - t0 >= 0.05                        # debounced, not instant
    assert spin_until(executor, lambda: probe.diag and probe.last_diag()['state'] == 'drawn')
    d = probe.last_diag()
    assert d['level'] == OK and d['transitions'] == '1' and d['draws'] == '1'
    late = Probe(ctx, 'late_probe')
    executor.add_node(late)
    assert spin_until(executor, lambda: late.drawn), 'late subscriber got no state'
    assert late.drawn == [True]


def test_bounce_is_not_published(ctx, executor) -> None:
    line = SimHolsterLine()
    node = holster_node(ctx, line, debounce_s=0.3, poll_rate=100.0)
    probe = Probe(ctx)
    executor.add_node(node)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.drawn == [False])
    line.set(True)
    spin_for(executor, 0.1)
    line.set(False)
    spin_for(executor, 0.5)
    assert probe.drawn == [False] and node._det.transitions == 0


def test_scenario_draw_reaches_the_topic(ctx, executor) -> None:
    # Start the patrol timeline 2 s before its draw: holstered first, even on a slow machine.
    from bodycam_ros.core.scenario import PATROL
    node = holster_node(ctx, source='sim', scenario='patrol',
                        scenario_start=time.time() - (PATROL.draw_at_s - 2.0), debounce_s=0.05)
    probe = Probe(ctx)
    executor.add_node(node)
    executor.add_node(probe)
    assert spin_until(executor, lambda: True in probe.drawn, 5.0), probe.drawn
    assert probe.drawn[0] is False


def test_set_drawn_service_in_sim_mode(ctx, executor) -> None:
    executor.add_node(holster_node(ctx, source='sim', debounce_s=0.02))
    probe = Probe(ctx)
    executor.add_node(probe)
    client = probe.create_client(SetBool, 'holster/set_drawn')
    assert client.wait_for_service(timeout_sec=5.0)
    fut = client.call_async(SetBool.Request(data=True))
    assert spin_until(executor, fut.done) and fut.result().success
    assert spin_until(executor, lambda: probe.drawn and probe.drawn[-1] is True)
    fut = client.call_async(SetBool.Request(data=False))
    assert spin_until(executor, fut.done) and fut.result().success
    assert spin_until(executor, lambda: probe.drawn[-1] is False)
    assert probe.drawn == [False, True, False] or probe.drawn == [True, False]


def test_missing_gpio_chip_is_an_error_and_retried(ctx, executor) -> None:
    pytest.importorskip('gpiod')
    node = holster_node(ctx, source='gpio', chip='/dev/gpiochip97', line=3, retry_s=0.1)
    probe = Probe(ctx)
    executor.add_node(node)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.diag and probe.last_diag()['level'] == ERROR)
    assert 'gpiochip97 does not exist' in probe.last_diag()['message']
    assert spin_until(executor, lambda: node.reopens >= 3, 3.0)   # alive and retrying
    assert not probe.drawn
    assert probe.create_client(SetBool, 'holster/set_drawn').wait_for_service(0.3) is False


def test_bad_parameters_exit_2_naming_the_parameter(start_process) -> None:
    cases = [('source:=magnet', 'holster.source'), ('debounce_s:=-1.0', 'holster.debounce_s'),
             ('line:=-4', 'holster.line'), ('scenario:=nope', 'holster.scenario'),
             ('bias:=sideways', 'holster.bias')]
    procs = [(start_process('bodycam_ros.nodes.holster_node', '--ros-args', '-p', param), match)
             for param, match in cases]   # side by side: each is a Python + rclpy start-up
    for proc, match in procs:
        assert proc.proc.wait(60) == 2, proc.output()
        assert match in proc.output(), proc.output()


def test_sigint_exits_0_after_publishing(ctx, executor, start_process) -> None:
    proc = start_process('bodycam_ros.nodes.holster_node', '--ros-args', '--params-file',
                         'config/sim.yaml')
    probe = Probe(ctx)
    executor.add_node(probe)
    assert spin_until(executor, lambda: probe.drawn == [False], 15.0), proc.output()
    assert proc.stop(signal.SIGINT) == 0, proc.output()
