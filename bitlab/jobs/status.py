"""JobStatus, QEMU's transition table (JobSTT) and verb table (JobVerbTable), job.c."""

from __future__ import annotations

STATUSES = ("undefined", "created", "running", "paused", "ready", "standby", "waiting", "pending",
            "aborting", "concluded", "null")

_STT_ROWS = {
    "undefined": "01000000000",
    "created":   "00100000101",
    "running":   "00011010100",
    "paused":    "00100000000",
    "ready":     "00000110100",
    "standby":   "00001000000",
    "waiting":   "00000001100",
    "pending":   "00000000110",
    "aborting":  "00000000110",
    "concluded": "00000000001",
    "null":      "00000000000",
}
TRANSITIONS: dict[str, frozenset[str]] = {
    src: frozenset(dst for dst, bit in zip(STATUSES, row) if bit == "1") for src, row in _STT_ROWS.items()
}

_VERB_ROWS = {
    "cancel":    "01111111000",
    "pause":     "01111100000",
    "resume":    "01111100000",
    "set-speed": "01111100000",
    "complete":  "00001100000",
    "finalize":  "00000001000",
    "dismiss":   "00000000010",
}
VERBS: dict[str, frozenset[str]] = {
    verb: frozenset(st for st, bit in zip(STATUSES, row) if bit == "1") for verb, row in _VERB_ROWS.items()
}

# Statuses in which job_is_completed() is true.
COMPLETED = frozenset({"waiting", "pending", "aborting", "concluded", "null"})
