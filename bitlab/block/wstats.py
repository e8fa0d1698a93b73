"""What a node counts of the write requests reaching it: its write threshold, its highest write, a file
node's discards.

Write thresholds (QEMU's block/write-threshold.c): ``block-set-write-threshold`` arms a node, and the
first write request to that node whose end passes the threshold sends ``BLOCK_WRITE_THRESHOLD`` and
disarms it (the threshold goes back to 0).

The check is made where QEMU makes it, in bdrv_co_write_req_prepare: for every write, write-zeroes and
discard request that reaches the node (a discard only where the node passes discards on: discard=unmap),
before the request runs, whoever sent it (a guest, a backup job's block-copy, qcow2 writing its file at
host offsets). ``amount-exceeded`` is the request's end minus the threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # (node.py imports this module)
    from .node import BlockNode

Emit = Callable[[str, dict], Any]


def set_threshold(node: BlockNode, threshold: int, emit: Emit) -> None:
    """bdrv_write_threshold_set: 0 disarms; ``emit`` sends the event when a request passes it."""
    node.write_threshold = threshold
    node.threshold_emit = emit if threshold else None


def _fire(node: BlockNode, end: int) -> None:
    threshold, emit = node.write_threshold, node.threshold_emit
    node.write_threshold, node.threshold_emit = 0, None  # autodisable (before the event: a listener sees 0)
    if emit is not None:
        emit("BLOCK_WRITE_THRESHOLD", {"node-name": node.node_name, "amount-exceeded": end - threshold,
                                       "write-threshold": threshold})


def check(node: BlockNode, offset: int, length: int) -> None:
    """One request ``[offset, offset + length)`` reaches an armed ``node``."""
    if offset + length > node.write_threshold:
        _fire(node, offset + length)


def check_batch(node: BlockNode, offsets: np.ndarray, lengths: np.ndarray) -> None:
    """Requests reaching an armed ``node`` in this order: the first one past the threshold fires."""
    if node.write_threshold >= 1 << 63:  # (no request ends there)
        return
    ends = np.asarray(offsets, dtype=np.int64) + np.asarray(lengths, dtype=np.int64)
    past = np.flatnonzero(ends > node.write_threshold)
    if past.size:
        _fire(node, int(ends[past[0]]))


def note_highest(node: BlockNode, offsets: np.ndarray, lengths: np.ndarray) -> None:
    """Write requests completed on ``node``: bs->wr_highest_offset (bdrv_co_write_req_finish)."""
    end = int((np.asarray(offsets, dtype=np.int64) + np.asarray(lengths, dtype=np.int64)).max())
    if end > node.wr_highest_offset:
        node.wr_highest_offset = end


def note_discards(node: BlockNode, offsets: np.ndarray, lengths: np.ndarray) -> None:
    """Discards a format driver above passed to ``node`` (a file node counts them: raw_account_discard)."""
    if node.driver == "file":
        node.discards = (node.discards[0] + len(offsets), node.discards[1] + int(np.sum(lengths)))
