"""ThreadTuner: the decode thread count follows the machine's load (issue #26), on scripted step times."""

from __future__ import annotations

from collections.abc import Callable

from edgeslm.runtime.threads import ThreadTuner


class Machine:
    """Step times by thread count, a clock that advances by each step, and the cores other programs use."""

    def __init__(self, step: Callable[[int], float], others: float = 0.0) -> None:
        self.step = step
        self.others = others
        self.now = 0.0
        self.tuner = ThreadTuner(2, clock=lambda: self.now, busy=lambda: self.others + self.tuner.n)
        self.slow_steps = 0

    def run(self, steps: int) -> list[int]:
        used = []
        n = self.tuner.n
        for _ in range(steps):
            dt = self.step(n)
            self.now += dt
            used.append(n)
            got = self.tuner.observe(dt)
            if got is not None:
                n = got
        return used


def idle(n: int) -> float:
    return {1: 0.020, 2: 0.011}[n]


def one_core_busy(n: int) -> float:
    return {1: 0.020, 2: 0.300}[n]


def test_an_idle_machine_keeps_every_core_and_probes_rarely() -> None:
    m = Machine(idle)
    used = m.run(5000)  # 55 s of decoding
    assert m.tuner.n == 2 and m.tuner.switches == 0
    assert used.count(1) / len(used) < 0.02  # the probes' cost on an idle machine: well under 5 %


def test_a_busy_core_is_given_up_within_a_few_steps_and_taken_back_when_free() -> None:
    m = Machine(idle)
    m.run(200)
    m.step, m.others = one_core_busy, 1.0
    used = m.run(300)
    assert m.tuner.n == 1
    assert used[:6].count(2) <= 3  # at most a couple of slow steps before it drops a thread
    assert used.count(2) <= 6  # and it does not keep trying more threads while the core stays busy
    m.step, m.others = idle, 0.0
    used = m.run(200)
    assert m.tuner.n == 2 and used[-100:].count(1) == 0


def test_a_try_at_more_threads_under_load_ends_at_its_first_slow_step() -> None:
    m = Machine(one_core_busy, others=1.0)
    m.tuner.n = 1
    m.tuner._recent.extend([0.02] * 6)
    m.others = 0.0  # the check believes a core is free, but it is not
    used = m.run(200)  # 4 s
    runs = [len(r) for r in "".join(map(str, used)).split("1") if r]
    assert runs and max(runs) <= 2 and m.tuner.n == 1  # it tried, and each try ended at once


def test_one_thread_or_a_fixed_count_is_never_changed() -> None:
    t = ThreadTuner(1)
    assert all(t.observe(s) is None for s in [0.01, 1.0, 5.0] * 10)
