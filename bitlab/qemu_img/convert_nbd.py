"""qemu-img convert -n into a writable NBD export: a restore into a running disk, request by request as QEMU 7.2's
img_convert sends them (convert_iteration_sectors, convert_co_write, is_allocated_sectors_min).

The target is not new, so it is not zero-initialised: every stretch the source's block status calls zero, and every
zero stretch of at least ``-S`` bytes (4 KiB) inside its data, is written as zeroes (``BDRV_REQ_MAY_UNMAP``), the rest
as data, in order — the export's node (and each of its bitmaps) sees a write over the whole of the source's size.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from ..block.export import NbdConnection
from ._common import Layer
from .compare import status_answers
from .layers import content

SECTOR = 512
BUF = 2 << 20  # IO_BUF_SIZE: a data chunk (an NBD target's opt_transfer and discard alignment are smaller)
REQUEST_MAX = (0x7FFFFFFF // SECTOR) * SECTOR  # BDRV_REQUEST_MAX_SECTORS, in bytes
ZERO_FLAG = 4  # status_answers' zero flag


def _sector_runs(chain: list[Layer], lo: int, hi: int) -> tuple[list[int], list[bool]]:
    """The sectors of ``[lo, hi)`` as runs of the same zero-ness: (the sector each run starts at, relative to
    ``lo``; whether its sectors hold data), and the end as a last start."""
    s, e, v = content(chain, lo, hi)
    data = v != 0
    first, last = s[data] // SECTOR, -(-e[data] // SECTOR)  # sectors any data touches
    n = (hi - lo) // SECTOR
    mark = np.zeros(n + 1, dtype=np.int64)
    np.add.at(mark, first - lo // SECTOR, 1)
    np.add.at(mark, last - lo // SECTOR, -1)
    used = np.cumsum(mark[:-1]) > 0
    change = np.flatnonzero(np.diff(used.astype(np.int8))) + 1
    starts = [0, *change.tolist()]
    return starts + [n], [bool(used[k]) for k in starts]


class _Buffer:
    """A data chunk's sectors for is_allocated_sectors: runs of data and zero sectors."""

    def __init__(self, starts: list[int], used: list[bool]) -> None:
        self.starts, self.used = starts, used

    def run_at(self, sector: int) -> tuple[bool, int]:
        """Whether the sector holds data, and how many sectors from it on are the same."""
        k = bisect_right(self.starts, sector) - 1
        return self.used[k], self.starts[k + 1] - sector


def _is_allocated(buf: _Buffer, at: int, n: int, sector_num: int, alignment: int) -> tuple[bool, int]:
    """is_allocated_sectors: a first run of the same kind, its end aligned to the target's ``alignment``."""
    used, i = buf.run_at(at)
    if i >= n:
        return used, n
    is_zero = not used
    tail = (sector_num + i) & (alignment - 1)
    if tail:
        if is_zero and i <= tail:
            is_zero = False  # (the next sector is data, which rewrites this tail anyway)
        if not is_zero:
            i = min(i + alignment - tail, n)
        else:
            i -= tail
    return not is_zero, i


def _is_allocated_min(buf: _Buffer, at: int, n: int, least: int, sector_num: int, alignment: int
                      ) -> tuple[bool, int]:
    """is_allocated_sectors_min: after data, zero stretches shorter than ``least`` sectors count as data."""
    least = min(least, n)
    used, pnum = _is_allocated(buf, at, n, sector_num, alignment)
    if not used:
        return False, pnum
    num_used = num_checked = pnum
    at, n, sector_num = at + pnum, n - pnum, sector_num + pnum
    while n > 0:
        used, pnum = _is_allocated(buf, at, n, sector_num, alignment)
        at, n, sector_num, num_checked = at + pnum, n - pnum, sector_num + pnum, num_checked + pnum
        if used:
            num_used = num_checked
        elif pnum >= least:
            break
    return True, num_used


def requests(chain: list[Layer], size: int, sparse: int) -> list[tuple[str, int, int]]:
    """The write requests (``"data"`` or ``"zero"``, offset, length) img_convert sends a target that is not new
    for the source ``chain`` of ``size`` bytes, with ``-S`` ``sparse`` (bytes, > 0)."""
    starts, flags = status_answers(chain, size)
    top = chain[0].image
    src_alignment = top.cluster_size // SECTOR if top.is_qcow2 else 1  # (request alignment: one sector)
    least = sparse // SECTOR
    alignment = max(1 << (least.bit_length() - 1), 1)  # pow2floor(min_sparse); an NBD node's own is 1 sector
    out: list[tuple[str, int, int]] = []
    sector, total = 0, size // SECTOR
    next_status, zero = 0, False
    bounds = np.append(starts, size)
    while sector < total:
        n = min(total - sector, REQUEST_MAX // SECTOR)
        if next_status <= sector:
            j = int(np.searchsorted(starts, sector * SECTOR, "right")) - 1
            n = min(n, -(-(int(bounds[j + 1]) - sector * SECTOR) // SECTOR))
            tail = (sector + n) % src_alignment
            if n > tail:
                n -= tail
            zero = bool(flags[j] & ZERO_FLAG)
            next_status = sector + n
        n = min(n, next_status - sector)
        if not zero:
            n = min(n, BUF // SECTOR)
            buf = _Buffer(*_sector_runs(chain, sector * SECTOR, (sector + n) * SECTOR))
            at, left, num = 0, n, sector
            while left > 0:
                used, k = _is_allocated_min(buf, at, left, least, num, alignment)
                out.append(("data" if used else "zero", num * SECTOR, k * SECTOR))
                at, left, num = at + k, left - k, num + k
        else:
            out.append(("zero", sector * SECTOR, n * SECTOR))
        sector += n
    return out


def write(conn: NbdConnection, chain: list[Layer], reqs: list[tuple[str, int, int]]) -> None:
    """The requests through the export (data read from ``chain``), then the client's flush as it disconnects."""
    conn.write([(kind, offset, length, content(chain, offset, offset + length) if kind == "data" else None)
                for kind, offset, length in reqs])
