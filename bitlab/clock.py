"""The machine's simulated clock: nanoseconds since the epoch, moved only on purpose."""

from __future__ import annotations

# The timestamp of the first event in QEMU's own bitmaps documentation.
DEFAULT_START_NS = 1447192343_615698_000


class SimClock:
    """Deterministic time. Nothing sleeps; :meth:`advance` moves it."""

    def __init__(self, start_ns: int = DEFAULT_START_NS) -> None:
        self.now_ns = start_ns

    def advance(self, ns: int) -> None:
        if ns < 0:
            raise ValueError("time does not run backwards")
        self.now_ns += ns

    def timestamp(self) -> dict:
        """QMP's event timestamp: ``{"seconds", "microseconds"}``."""
        micros = self.now_ns // 1000
        return {"seconds": micros // 1_000_000, "microseconds": micros % 1_000_000}
