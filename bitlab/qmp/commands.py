"""The command table and QMP dispatch (qapi/qmp-dispatch.c).

Each command is registered once with its QAPI argument type; the table is the
single source for argument checking now and for ``query-qmp-schema`` later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..errors import QMPError
from .qapi import NO_ARGS, Checker, NotFast, QType, Struct, Union_, Visitor, fast_checker, wire_member_order, wire_order

Handler = Callable[[Any, dict], Any]


@dataclass(frozen=True)
class Command:
    name: str
    args: Struct | Union_ | None
    handler: Handler
    returns: QType | None = None
    boxed: bool = False  # arguments are one flat union (blockdev-add)
    wire_ordered: bool = False  # the handler returns its value in wire order already

    @cached_property
    def checker(self) -> Checker:
        """The fast checker of the arguments (:func:`bitlab.qmp.qapi.fast_checker`)."""
        return fast_checker(self.args if self.args is not None else NO_ARGS)


class CommandTable:
    """Commands by name, registered with :meth:`command`."""

    def __init__(self) -> None:
        self.commands: dict[str, Command] = {}

    def command(self, name: str, args: Struct | Union_ | None = None, returns: QType | None = None,
                boxed: bool = False, wire_ordered: bool = False) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.commands[name] = Command(name, args, fn, returns, boxed, wire_ordered)
            return fn
        return register

    def __contains__(self, name: str) -> bool:
        return name in self.commands

    def check_args(self, cmd: Command, arguments: dict | None) -> dict:
        """Visit the arguments as QEMU's generated marshaller does. Well-formed arguments take the
        command's fast checker; anything else (every error) goes through the :class:`Visitor`."""
        args = {} if arguments is None else arguments
        try:
            return cmd.checker(args)
        except NotFast:
            return self.visit_args(cmd, args)

    @staticmethod
    def visit_args(cmd: Command, args: dict) -> dict:
        """The arguments through QEMU's input visitor (every error, with its text)."""
        visitor = Visitor()
        if cmd.args is None:
            return visitor.visit_struct((), args, "", frozenset())
        if isinstance(cmd.args, Union_):
            return visitor.visit(cmd.args, args, None, "")
        return visitor.visit_struct(cmd.args.all_members(), args, "", cmd.args.member_names)

    def dispatch(self, ctx: Any, message: Any) -> dict:
        """Run one wire message; return the wire reply (``return`` or ``error``, ``id``)."""
        msg_id = message.get("id") if isinstance(message, dict) else None
        try:
            result, ordered = self._run(ctx, message)
            reply: dict = {"return": result if ordered else wire_order(result)}
        except QMPError as err:
            reply = {"error": wire_order(err.to_wire())}
            if err.printed and hasattr(ctx, "console_err"):  # (QEMU's stderr: the block modules it looked for)
                ctx.console_err.append(err.printed)
        if isinstance(message, dict) and "id" in message:
            reply["id"] = wire_order(msg_id)
            return {key: reply[key] for key in wire_member_order(tuple(reply))}  # members already ordered
        return reply

    def _run(self, ctx: Any, message: Any) -> tuple[Any, bool]:
        """The command's value, and whether it is in wire order already."""
        if not isinstance(message, dict):
            raise QMPError("QMP input must be a JSON object")
        for key in message:
            if key not in ("execute", "exec-oob", "arguments", "id"):
                raise QMPError(f"QMP input member '{key}' is unexpected")
        oob = "exec-oob" in message
        if oob and "execute" in message:
            raise QMPError("QMP input member 'execute' clashes with 'exec-oob'")
        if not oob and "execute" not in message:
            raise QMPError("QMP input lacks member 'execute'")
        name = message["exec-oob" if oob else "execute"]
        if not isinstance(name, str):
            raise QMPError(f"QMP input member '{'exec-oob' if oob else 'execute'}' must be a string")
        arguments = message.get("arguments")
        if "arguments" in message and not isinstance(arguments, dict):
            raise QMPError("QMP input member 'arguments' must be an object")
        cmd = self.commands.get(name)
        if cmd is None:
            raise QMPError(f"The command {name} has not been found", "CommandNotFound")
        if oob:
            raise QMPError(f"The command {name} does not support OOB")
        args = self.check_args(cmd, arguments)
        result = cmd.handler(ctx, args)
        return ({}, True) if result is None else (result, cmd.wire_ordered)


TABLE = CommandTable()
