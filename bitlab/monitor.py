"""A QMP monitor's Python face: ``qmp(name, arguments)`` on top of wire-shaped ``execute``."""

from __future__ import annotations

from typing import Any

from .errors import QMPError


def command(name: str, arguments: dict | None = None) -> dict:
    """The wire message for one command (no ``arguments`` member when there are none)."""
    message: dict = {"execute": name}
    if arguments is not None:
        message["arguments"] = arguments
    return message


def reply_value(reply: dict) -> Any:
    """A reply's ``return`` value, or :class:`QMPError` with QEMU's class and text."""
    if "error" in reply:
        raise QMPError(reply["error"]["desc"], reply["error"]["class"])
    return reply["return"]


class Monitor:
    """``qmp`` for anything that answers wire-shaped messages with :meth:`execute`."""

    def execute(self, message: dict) -> dict:
        raise NotImplementedError

    def qmp(self, name: str, arguments: dict | None = None) -> Any:
        """Run a command; return its value or raise :class:`QMPError` (QEMU's class and text)."""
        return reply_value(self.execute(command(name, arguments)))
