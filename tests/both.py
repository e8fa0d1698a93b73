"""Play one story on real QEMU 7.2 and on the simulator: what each returned."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bitlab import Machine


def on_both(story: Callable[..., Any], daemon: str = "qsd", real_wait: Callable[[], None] | None = None
            ) -> tuple[Any, Any]:
    """``story(vm)`` (or ``story(vm, wait)``, given how each side lets time pass: real time for QEMU, the
    simulated clock for bitlab) on a real ``daemon`` and on a new simulator; (real, simulated)."""
    sim = Machine()
    with Machine(backend="qemu", daemon=daemon) as real:
        want = story(real) if real_wait is None else story(real, real_wait)
    got = story(sim) if real_wait is None else story(sim, lambda: sim.run(until=sim.now + 0.2))
    return want, got
