"""The QMP events bitlab emits, with their QAPI data types (qapi/job.json, qapi/block-core.json).

``EVENTS`` is to events what the command table is to commands: the one place
``query-qmp-schema`` learns which events exist and what their ``data`` holds.
Only events the engine actually sends are listed.
"""

from __future__ import annotations

from ..jobs.status import STATUSES
from .qapi import BOOL, INT, STR, UINT64, Enum, Struct, m, struct

JobType = Enum("JobType", (
    "commit", "stream", "mirror", "backup", "create", "amend", "snapshot-load", "snapshot-save",
    "snapshot-delete",
))
JobStatus = Enum("JobStatus", STATUSES)
IoOperationType = Enum("IoOperationType", ("read", "write"))
BlockErrorAction = Enum("BlockErrorAction", ("ignore", "report", "stop"))

ShutdownCause = Enum("ShutdownCause", (
    "none", "host-error", "host-qmp-quit", "host-qmp-system-reset", "host-signal", "host-ui", "guest-shutdown",
    "guest-reset", "guest-panic", "subsystem-reset", "snapshot-load",
))

EVENTS: dict[str, Struct | None] = {
    "SHUTDOWN": struct("q_obj_SHUTDOWN-arg", m("guest", BOOL), m("reason", ShutdownCause)),  # Machine(daemon="system")
    "STOP": None,
    "RESUME": None,
    "BLOCK_JOB_COMPLETED": struct(
        "q_obj_BLOCK_JOB_COMPLETED-arg",
        m("type", JobType), m("device", STR), m("len", INT), m("offset", INT), m("speed", INT), m("*error", STR),
    ),
    "BLOCK_JOB_CANCELLED": struct(
        "q_obj_BLOCK_JOB_CANCELLED-arg",
        m("type", JobType), m("device", STR), m("len", INT), m("offset", INT), m("speed", INT),
    ),
    "BLOCK_JOB_ERROR": struct(
        "q_obj_BLOCK_JOB_ERROR-arg", m("device", STR), m("operation", IoOperationType), m("action", BlockErrorAction),
    ),
    "BLOCK_JOB_READY": struct(
        "q_obj_BLOCK_JOB_READY-arg",
        m("type", JobType), m("device", STR), m("len", INT), m("offset", INT), m("speed", INT),
    ),
    "BLOCK_JOB_PENDING": struct("q_obj_BLOCK_JOB_PENDING-arg", m("type", JobType), m("id", STR)),
    "JOB_STATUS_CHANGE": struct("q_obj_JOB_STATUS_CHANGE-arg", m("id", STR), m("status", JobStatus)),
    "BLOCK_EXPORT_DELETED": struct("q_obj_BLOCK_EXPORT_DELETED-arg", m("id", STR)),
    "BLOCK_WRITE_THRESHOLD": struct(
        "q_obj_BLOCK_WRITE_THRESHOLD-arg", m("node-name", STR), m("amount-exceeded", UINT64),
        m("write-threshold", UINT64),
    ),
}
"""Event name -> the QAPI type of its ``data`` (None: it has none), in QEMU's schema order."""
