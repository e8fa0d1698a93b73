"""What QEMU's iotests harness (``iotests.py``) does, on either bitlab backend: QMP calls logged as
``{"return": …}`` / ``{"error": …}``, ``event_wait`` taking the first matching event not yet taken,
``filter_qmp_event``'s timestamp, and polls that let time pass (the simulator's or the real clock)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bitlab import QMPError

TIMESTAMP = {"microseconds": "USECS", "seconds": "SECS"}


class Log:
    """One iotest's log on one machine: the lines ``iotests.log`` would print, as Python values."""

    def __init__(self, vm: Any) -> None:
        self.vm = vm
        self.lines: list[Any] = []
        self._taken: set[int] = set()  # indexes into vm.events that event_wait returned

    def log(self, line: Any) -> Any:
        self.lines.append(line)
        return line

    def qmp(self, command: str, **args: Any) -> dict:
        """The reply as iotests sees it (not logged); ``job_id=`` is sent as ``job-id``, as iotests does."""
        try:
            return {"return": self.vm.qmp(command, {k.replace("_", "-"): v for k, v in args.items()})}
        except QMPError as err:
            return {"error": err.to_wire()}

    def qmp_log(self, command: str, **args: Any) -> dict:
        """``iotests.log(vm.qmp(...))``."""
        return self.log(self.qmp(command, **args))

    def poll(self, done: Callable[[], Any], limit: int = 5_000) -> Any:
        """Repeat ``done()`` until it is true, letting a little time pass between tries."""
        for _ in range(limit):
            got = done()
            if got:
                return got
            if self.vm.backend == "sim":
                assert self.vm.step(), "nothing left to happen"
            else:
                self.vm.run(until=self.vm.now + 0.002)
        raise AssertionError("condition never came true")

    def event_wait(self, name: str, match: dict | None = None) -> dict:
        """The first ``name`` event not yet taken (whose data holds ``match``'s members), waiting for it;
        its timestamp filtered."""
        def first() -> dict | None:
            for i, event in enumerate(self.vm.events):
                if i not in self._taken and event["event"] == name and \
                        all(event.get("data", {}).get(k) == v for k, v in (match or {}).items()):
                    self._taken.add(i)
                    return event
            return None

        event = self.poll(first)
        return {"data": event.get("data"), "event": name, "timestamp": TIMESTAMP}
