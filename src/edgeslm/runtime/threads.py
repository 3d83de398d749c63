"""How many threads to decode with on a machine the app shares (issue #26, contention).

llama.cpp's worker threads spin at every barrier of a decode step: when another process takes one
of the cores, every step waits for the descheduled thread. SmolLM2-135M on 2 cores with one core
busy: 2 threads decode 4-15 tokens/s, 1 thread 50 (idle: 92 and 51). The right count depends on a
load that changes while the app runs, so it is measured, not guessed. :class:`ThreadTuner` watches
the time of each one-token decode step:

* **fewer threads**: when the recent steps take *alarm* times the best seen at this count (another
  program took a core), or every *interval* seconds, it tries one thread fewer for a few steps and
  keeps it when that is faster;
* **more threads**: when the machine's CPU use (all programs, ours included) leaves a core idle, it
  tries one thread more, and drops the try at its first slow step.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable

__all__ = ["ThreadTuner", "cores_in_use"]


def cores_in_use() -> Callable[[], float | None]:
    """A function giving the cores the whole machine used since its previous call (``None`` at first,
    or without psutil). It keeps its own sample: psutil.cpu_percent's shared one is the app's."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return lambda: None
    last: list[tuple[float, float] | None] = [None]

    def sample() -> tuple[float, float]:
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t) - idle, time.monotonic()

    def used() -> float | None:
        now = sample()
        prev, last[0] = last[0], now
        if prev is None or now[1] - prev[1] <= 0:
            return None
        return max(0.0, now[0] - prev[0]) / (now[1] - prev[1])

    return used


class ThreadTuner:
    """Picks the decode thread count between 1 and *max_threads* from the time steps take.

    :meth:`observe` takes the seconds of each one-token decode step and returns a thread count to
    switch to, or ``None``. A probe runs *probe_steps* steps at the neighbouring count (the first step
    after a switch is not counted) and is kept when its median step is at least *margin* faster; a
    probe is dropped at once when a counted step takes twice the steps before it."""

    def __init__(self, max_threads: int, *, interval: float = 5.0, probe_steps: int = 5, margin: float = 0.1,
                 alarm: float = 2.0, check_every: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 busy: Callable[[], float | None] | None = None) -> None:
        self.max_threads = max(1, int(max_threads))
        self.n = self.max_threads
        self.interval = interval
        self.probe_steps = probe_steps
        self.margin = margin
        self.alarm = alarm
        self.check_every = check_every
        self._clock = clock
        self._busy = busy if busy is not None else cores_in_use()
        self._recent: deque[float] = deque(maxlen=6)
        self._best: dict[int, float] = {}
        self._probe: tuple[int, int, list[float]] | None = None  # (count tried, count to go back to, times)
        self._last_probe = self._last_check = clock()
        self.switches = 0

    def observe(self, seconds: float) -> int | None:
        """Record one decode step of *seconds*; the thread count to use from now on, or ``None``."""
        if self.max_threads == 1:
            return None
        if self._probe is not None:
            return self._probing(seconds)
        self._recent.append(seconds)
        if len(self._recent) < 3:
            return None
        now_median = statistics.median(list(self._recent)[-3:])
        best = self._best.get(self.n)
        if best is None or now_median < best:
            self._best[self.n] = best = now_median
        now = self._clock()
        target = None
        spike = seconds > 2 * self.alarm * best  # one step far off: a core was taken (a false alarm costs a probe)
        if self.n > 1 and (now - self._last_probe >= self.interval
                           or ((spike or now_median > self.alarm * best) and now - self._last_probe >= 0.2)):
            target = self.n - 1
        elif self.n < self.max_threads and now - self._last_check > 4 * self.check_every:
            self._busy()  # a long gap (between calls): what it saw is stale, look again shortly
            self._last_check = now - self.check_every + 0.1
        elif self.n < self.max_threads and now - self._last_check >= self.check_every:
            self._last_check = now
            used = self._busy()
            if used is not None and used < self.n + 0.5:  # a core is idle: ours use about n of them
                target = self.n + 1
        if target is None:
            return None
        self._probe = (target, self.n, [])
        self._last_probe = now
        return target

    def _probing(self, seconds: float) -> int | None:
        target, back, times = self._probe  # type: ignore[misc]
        times.append(seconds)
        before = statistics.median(self._recent)
        if len(times) >= 2 and times[-1] > 2 * before:  # clearly worse: no need to see more of it
            return self._end(target, back, None)
        if len(times) >= 3 and max(times[1:]) < 0.5 * before:  # clearly better: take it now
            return self._end(target, back, statistics.median(times[1:]))
        if len(times) <= self.probe_steps:
            return None
        return self._end(target, back, statistics.median(times[1:]))

    def _end(self, target: int, back: int, tried: float | None) -> int | None:
        probe = self._probe
        self._probe = None
        self._last_probe = self._last_check = self._clock()
        self._busy()  # the next idle-core check covers the time after the probe only
        if tried is not None and tried < (1 - self.margin) * statistics.median(self._recent):
            self.n = target
            self._recent = deque(probe[2][1:] if probe else [], maxlen=6)
            self._best[target] = min(self._best.get(target, tried), tried)
            self.switches += 1
            return None  # already running with it
        return back
