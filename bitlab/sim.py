"""The simulation scheduler: callbacks at simulated times, run in order.

One scheduler belongs to one Machine (like SimPy's Environment). Nothing sleeps:
:meth:`Scheduler.step` jumps the clock to the next event and runs it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from .clock import SimClock

FOREVER = 1 << 62  # a horizon no simulation reaches


def _spent() -> None:
    """What a timer holds once it has run or was cancelled."""


@dataclass(order=True)
class Timer:
    """A scheduled callback; :meth:`cancel` stops it from running.

    A timer that has run or was cancelled lets go of its callback: whoever keeps the timer (to
    cancel it) does not keep the callback's closure alive, so no reference cycle goes through it
    (a machine nobody holds any more is freed at once, without the garbage collector)."""

    when: int
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True
        self.fn = _spent


class Scheduler:
    """A heap of timers on a :class:`SimClock`.

    The heap holds ``(when, seq, timer)`` tuples: the same order as the timers' own
    (``seq`` is unique, so two entries never compare their timers), compared in C.
    """

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._heap: list[tuple[int, int, Timer]] = []
        self._seq = 0
        # How far the current run() may take the clock (FOREVER: until idle); None outside
        # run(), e.g. in a single step(). Work that does many simulated steps in one event
        # (block-copy's bulk path) goes no further than this.
        self.horizon_ns: int | None = None

    def at(self, when_ns: int, fn: Callable[[], None]) -> Timer:
        self._seq += 1
        timer = Timer(max(when_ns, self.clock.now_ns), self._seq, fn)
        heapq.heappush(self._heap, (timer.when, timer.seq, timer))
        return timer

    def after(self, delay_ns: int, fn: Callable[[], None]) -> Timer:
        return self.at(self.clock.now_ns + max(0, int(delay_ns)), fn)

    def _prune(self) -> None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)

    @property
    def next_time(self) -> int | None:
        self._prune()
        return self._heap[0][0] if self._heap else None

    def step(self) -> bool:
        """Run the next timer; False when nothing is scheduled."""
        self._prune()
        if not self._heap:
            return False
        _, _, timer = heapq.heappop(self._heap)
        if timer.when > self.clock.now_ns:
            self.clock.now_ns = timer.when
        fn, timer.fn = timer.fn, _spent
        fn()
        return True

    def run(self, until_ns: int | None = None, max_steps: int = 10_000_000) -> int:
        """Run timers until none is left or the next is after ``until_ns``; returns steps run."""
        heap = self._heap
        if not heap and until_ns is None:  # nothing scheduled, no time to reach: what the loop below does
            return 0
        steps = 0
        outer, self.horizon_ns = self.horizon_ns, FOREVER if until_ns is None else until_ns
        try:
            while steps < max_steps:
                self._prune()  # as next_time does
                if not heap or (until_ns is not None and heap[0][0] > until_ns):
                    break
                self.step()
                steps += 1
        finally:
            self.horizon_ns = outer
        if until_ns is not None and until_ns > self.clock.now_ns:
            self.clock.now_ns = until_ns
        return steps
