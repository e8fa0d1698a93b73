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
    if len(offsets) == 1:  # (one request: its end, without numpy)
        end = int(offsets[0]) + int(lengths[0])
    else:
        end = int((np.asarray(offsets, dtype=np.int64) + np.asarray(lengths, dtype=np.int64)).max())
    if end > node.wr_highest_offset:
        node.wr_highest_offset = end


def note_discards(node: BlockNode, offsets: np.ndarray, lengths: np.ndarray) -> None:
    """Discards a format driver above passed to ``node`` (a file node counts them: raw_account_discard)."""
    if node.driver == "file":
        node.discards = (node.discards[0] + len(offsets), node.discards[1] + int(np.sum(lengths)))


# -- a qcow2 file's highest write, without hearing every write ---------------------------------------------------
# qcow2 writes its file at host offsets. Telling a file node each of those writes costs the image's pending
# writes being laid out at once, write by write, so a file node hears them only while it needs them: a bitmap
# or a threshold on it (node.hears_host_writes), or while its highest write is not known otherwise.
# It is known otherwise once the file has grown since the node opened: qcow2 grows its file only by writing
# (a new cluster is written whole, a new L1 table to its last entry: the layout's ``partial_end``), so the
# file's end then is a write's end, and no write inside the file passes it. ``wr_mark`` is the end the file had
# when the node opened (or was last cut by a qcow2 shrink); a file that grew past it wrote its end.
def grown_end(layout: Any) -> int:
    """The end of a qcow2 file once qcow2 allocated in it (0 before: nothing was written past its start); a
    compressed cluster's end rounded up to a sector by a truncate (``padded_from``) is no write's."""
    if not layout.grown:
        return 0
    end = layout.partial_end or layout.top * layout.cs
    padded = layout.padded_from
    return padded if padded is not None and end == -(-padded // 512) * 512 else end


def highest_unknown(node: Any) -> bool:
    """Whether a file node must hear a qcow2 parent's writes to know its highest write: the file (as laid out
    so far: writes still pending can only grow it, or write below its end) has not grown since the node
    opened, and no write heard reached its end."""
    image = node.image
    layout = image._layout if image.fmt == "qcow2" else None
    if layout is None:
        return False
    end = grown_end(layout)
    if node.wr_mark is None:
        node.wr_mark = end
    return end <= node.wr_mark and node.wr_highest_offset < end


def _grown_part(file: Any, align: int = 1) -> int:
    """The file's end if qcow2 grew it since ``file`` opened (every pending write laid out), else 0; padded to
    ``align`` (a blkdebug node's request alignment above: the file sees the padded request too)."""
    image = file.image
    if image.fmt != "qcow2" or image._layout is None or file.wr_mark is None:
        return 0
    end = grown_end(image.layout)
    return -(-end // align) * align if end > file.wr_mark else 0


def _path(node: Any) -> list:
    """``node`` and, for a blkdebug node, the nodes below it down to the file (their ``image`` children)."""
    path = [node]
    while path[-1].driver == "blkdebug" and path[-1].child("image") is not None:
        path.append(path[-1].child("image"))
    return path


def highest(node: Any) -> int:
    """bs->wr_highest_offset: the writes the node heard, and for a file node of a qcow2 image (or a blkdebug node
    over one) the end the file reached growing (see above)."""
    path = _path(node)
    file = path[-1]
    if file.driver != "file":
        return node.wr_highest_offset
    align = max((n.align for n in path[:-1]), default=1)
    return max(node.wr_highest_offset, _grown_part(file, align))


def cut_file(node: Any, cut: Callable[[], None]) -> None:
    """A qcow2 shrink cuts its file (``cut``) below ``node`` (its file child): the highest writes keep the end
    the file had reached, and the file's new end is where it grows from."""
    path = _path(node)
    for n in path:
        n.wr_highest_offset = highest(n)
    cut()
    file = path[-1]
    if file.driver == "file" and file.image._layout is not None:
        file.wr_mark = grown_end(file.image.layout)


def grew_by_truncate(node: Any) -> None:
    """A preallocating truncate grew the qcow2 file below ``node`` without writing its end (ftruncate,
    posix_fallocate or file-posix's own zeroes): the file's new end is no write's, and where it grows from; the
    dirty bitmaps take the new length (bdrv_co_write_req_finish of the truncate)."""
    path = _path(node)
    file = path[-1]
    if file.driver == "file" and file.image._layout is not None:
        file.wr_mark = max(file.wr_mark or 0, grown_end(file.image.layout))
    for n in path:
        n.bitmaps_follow()


def note_unheard(node: Any, writes: tuple[np.ndarray, np.ndarray]) -> None:
    """Writes a qcow2 node made to its file child ``node`` while it did not hear them (their bitmaps and
    thresholds nothing to see): only the highest writes of ``node`` and the nodes below it move."""
    offsets, lengths = writes
    if len(offsets):
        note_unheard_end(node, int((np.asarray(offsets, dtype=np.int64) + np.asarray(lengths, dtype=np.int64)).max()))


def note_unheard_end(node: Any, end: int) -> None:
    """:func:`note_unheard` given the writes' highest end (0: there were none)."""
    if not end:
        return
    align = 1
    for n in _path(node):
        align = max(align, getattr(n, "align", 1))
        padded = -(-end // align) * align
        if padded > n.wr_highest_offset:
            n.wr_highest_offset = padded
