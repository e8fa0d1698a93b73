"""Real time: the same engine on the wall clock (like SimPy's ``rt``).

:class:`WallClock` reads the time of day, but steadily: it is ``time.time_ns()``
taken once, moved on by ``time.monotonic_ns()``, so it never jumps back when the
system clock is set. "Moving" it to a later time means waiting for that time.

:class:`RealtimeScheduler` is the simulation :class:`~bitlab.sim.Scheduler` whose
timers fire when the wall clock reaches them. Driven synchronously, :meth:`step`
and :meth:`run` sleep until the next timer is due (SimPy's
``RealtimeEnvironment``). Attached to an asyncio loop (:meth:`attach`), it never
sleeps: it arms one ``loop.call_at`` for its earliest timer and runs the timers
that are due when that fires; :meth:`run_due` runs them at any other moment (the
QMP server calls it after every command). Jobs throttled with ``speed`` thus copy
at that rate in real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .clock import SimClock
from .sim import Scheduler, Timer

NS = 1_000_000_000


class WallClock(SimClock):
    """Nanoseconds since the epoch, monotonic: it only moves forward, at the pace of real time."""

    def __init__(self) -> None:  # noqa: D107 - no start time: it is now
        self._offset = time.time_ns() - time.monotonic_ns()

    @property  # type: ignore[override]
    def now_ns(self) -> int:
        return self._offset + time.monotonic_ns()

    @now_ns.setter
    def now_ns(self, value: int) -> None:
        """Setting a later time waits for it; an earlier one (or now) changes nothing."""
        delay = value - self.now_ns
        if delay > 0:
            time.sleep(delay / NS)

    def advance(self, ns: int) -> None:
        """Wait ``ns`` nanoseconds."""
        if ns < 0:
            raise ValueError("time does not run backwards")
        self.now_ns = self.now_ns + ns


class RealtimeScheduler(Scheduler):
    """Timers on a :class:`WallClock`, fired when it reaches them.

    ``max_burst`` bounds the timers one :meth:`run_due` runs, so a job that keeps
    scheduling zero-delay work cannot starve the loop's I/O. ``on_error`` receives
    an exception a timer raised while the loop drove it (the timer is dropped, the
    others go on); without it the exception propagates.
    """

    def __init__(self, clock: WallClock | None = None, *, max_burst: int = 1000,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        super().__init__(clock if clock is not None else WallClock())
        self.max_burst = max_burst
        self.on_error = on_error
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: int | None = None
        self._running = False  # inside run_due: it re-arms once at the end

    # -- asyncio ------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let ``loop`` fire the timers from now on."""
        self._loop = loop
        self._arm()

    def detach(self) -> None:
        """Stop firing timers from the loop (they stay scheduled)."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._armed_for = self._loop = None

    @property
    def attached(self) -> bool:
        return self._loop is not None

    def at(self, when_ns: int, fn: Callable[[], None]) -> Timer:
        timer = super().at(when_ns, fn)
        if self._loop is not None and not self._running and (self._armed_for is None or timer.when < self._armed_for):
            self._arm()
        return timer

    def run_due(self) -> int:
        """Run the timers whose time has come (at most ``max_burst``); returns how many ran."""
        steps = 0
        self._running = True
        try:
            while steps < self.max_burst:
                nxt = self.next_time
                if nxt is None or nxt > self.clock.now_ns:
                    break
                steps += 1
                try:
                    self.step()
                except Exception as err:  # noqa: BLE001 - one broken timer must not stop the others
                    if self.on_error is None:
                        raise
                    self.on_error(err)
        finally:
            self._running = False
            if self._loop is not None:
                self._arm()
        return steps

    def _arm(self) -> None:
        """One loop timer, at the earliest timer's time."""
        nxt = self.next_time
        if self._handle is not None:
            if nxt is not None and self._armed_for == nxt:
                return
            self._handle.cancel()
            self._handle = self._armed_for = None
        if nxt is None or self._loop is None or self._loop.is_closed():
            return
        delay = max(0, nxt - self.clock.now_ns) / NS
        self._handle = self._loop.call_later(delay, self._fire)
        self._armed_for = nxt

    def _fire(self) -> None:
        self._handle = self._armed_for = None
        self.run_due()
