"""QMP: the command table, argument checking, and the commands bitlab implements."""

from . import cmd_bitmap, cmd_block, cmd_create, cmd_export, cmd_job, cmd_misc, cmd_schema, hmp, transaction  # noqa: F401
from .commands import TABLE

__all__ = ["TABLE"]
