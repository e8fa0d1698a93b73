"""Play one story on real QEMU 7.2 and on the simulator: what each returned."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bitlab import Machine


def on_both(story: Callable[..., Any], daemon: str = "qsd", wait_s: float | None = None) -> tuple[Any, Any]:
    """``story(vm)`` on a real ``daemon`` and on a new simulator; (real, simulated). With ``wait_s``,
    ``story(vm, wait)`` where ``wait()`` lets that much time pass on each side's own clock
    (``vm.run(until=...)``: real time for QEMU, simulated time for bitlab)."""
    def play(vm: Machine) -> Any:
        if wait_s is None:
            return story(vm)
        return story(vm, lambda: vm.run(until=vm.now + wait_s))

    with Machine(backend="qemu", daemon=daemon) as real:
        want = play(real)
    return want, play(Machine(daemon=daemon))
