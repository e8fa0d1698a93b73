"""Monitor commands: capabilities, version, the command list."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..errors import QMPError
from .commands import TABLE
from .qapi import Array, Enum, m, struct

QMPCapability = Enum("QMPCapability", ("oob",))
QmpCapabilitiesArg = struct("q_obj_qmp_capabilities-arg", m("*enable", Array(QMPCapability)))

QEMU_VERSION = {"major": 7, "minor": 2, "micro": 0}


@TABLE.command("qmp_capabilities", QmpCapabilitiesArg)
def qmp_capabilities(vm: Any, args: dict) -> None:
    """A Machine's monitor is already in command mode, as after negotiation."""
    raise QMPError("Capabilities negotiation is already complete, command ignored", "CommandNotFound")


@TABLE.command("query-version")
def qmp_query_version(vm: Any, args: dict) -> dict:
    """QEMU 7.2.0's version; the package names bitlab, so no one mistakes it for QEMU."""
    return {"qemu": dict(QEMU_VERSION), "package": f"bitlab {__version__}"}


@TABLE.command("query-commands")
def qmp_query_commands(vm: Any, args: dict) -> list:
    return [{"name": name} for name in reversed(TABLE.commands)]


@TABLE.command("quit")
def qmp_quit(vm: Any, args: dict) -> None:
    """Stop the emulator. In-process nothing stops; ``bitlab serve`` closes after replying."""
    vm.quit_requested = True
