"""Guest I/O as qemu-io requests, shared by the simulator and the real-QEMU backend."""

from __future__ import annotations

from .history import history_of
from .units import parse_size


class GuestIO:
    """``write``/``write_zeroes``/``discard``/``read`` on top of a backend's ``guest_io``."""

    def guest_io(self, node: str, command: str) -> str:
        """Run one qemu-io command where a guest of ``node`` would issue it; qemu-io's output."""
        raise NotImplementedError

    def write(self, node: str, offset: int | str, length: int | str, pattern: int = 0xCD) -> str:
        """A guest write of ``pattern`` bytes (``qemu-io write -P``); sizes take suffixes ("64k")."""
        return self._noted(node, f"write -P {pattern:#x}", offset, length, pattern)

    def write_zeroes(self, node: str, offset: int | str, length: int | str) -> str:
        return self._noted(node, "write -z", offset, length, 0)

    def discard(self, node: str, offset: int | str, length: int | str) -> str:
        """A guest discard; bitlab's history assumes the range then reads zeroes (no backing file)."""
        return self._noted(node, "discard", offset, length, 0)

    def _noted(self, node: str, verb: str, offset: int | str, length: int | str, value: int) -> str:
        off, ln = parse_size(offset), parse_size(length)
        out = self.guest_io(node, f"{verb} {off} {ln}")
        history_of(self).note_write(node, off, ln, value)
        return out

    def read(self, node: str, offset: int | str, length: int | str, pattern: int | None = None) -> str:
        """A guest read; with ``pattern``, qemu-io verifies the bytes."""
        opt = f"-P {pattern:#x} " if pattern is not None else ""
        return self.guest_io(node, f"read {opt}{parse_size(offset)} {parse_size(length)}")
