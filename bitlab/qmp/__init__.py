"""QMP: the command table, argument checking, and the commands bitlab implements."""

from . import (  # noqa: F401
    cmd_backing_file,
    cmd_bitmap,
    cmd_block,
    cmd_commit,
    cmd_create,
    cmd_export,
    cmd_job,
    cmd_mirror,
    cmd_misc,
    cmd_object,
    cmd_runstate,
    cmd_schema,
    cmd_stream,
    cmd_wstats,
    hmp,
    transaction,
)
from .commands import TABLE

__all__ = ["TABLE"]
