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
from ..block.extents import clip_runs
from ._common import Layer
from .compare import status_answers
from .layers import content

SECTOR = 512
BUF = 2 << 20  # IO_BUF_SIZE: a data chunk (an NBD target's opt_transfer and discard alignment are smaller)
REQUEST_MAX = (0x7FFFFFFF // SECTOR) * SECTOR  # BDRV_REQUEST_MAX_SECTORS, in bytes
DATA_FLAG, ZERO_FLAG = 2, 4  # status_answers' data and zero flags
DATA, ZERO, BACKING = 0, 1, 2  # BLK_DATA, BLK_ZERO, BLK_BACKING_FILE


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


def _kinds(flags: np.ndarray | np.integer) -> np.ndarray:
    """convert_iteration_sectors' status of an answer's flags: DATA, ZERO, or BACKING (neither: left to the
    target's backing file)."""
    return np.where(flags & ZERO_FLAG, ZERO, np.where(flags & DATA_FLAG, DATA, BACKING))


def _walk(bounds: np.ndarray, flags: np.ndarray, total: int, src_alignment: int, lo: int, hi: int
          ) -> list[tuple[int, int, int]]:
    """convert_iteration_sectors' status answers for the sectors ``[lo, hi)`` (the whole disk, or stretches of
    status runs :func:`requests` cannot take at once): pieces (first sector, sectors, kind), one status answer a
    piece, cut at the request limit and, past the source's request alignment, back to it."""
    starts = bounds[:-1]
    out = []
    sector = lo
    while sector < hi:
        n = min(total - sector, REQUEST_MAX // SECTOR)
        j = int(np.searchsorted(starts, sector * SECTOR, "right")) - 1
        n = min(n, -(-(int(bounds[j + 1]) - sector * SECTOR) // SECTOR))
        tail = (sector + n) % src_alignment
        if n > tail:
            n -= tail
        out.append((sector, n, int(_kinds(flags[j]))))
        sector += n
    return out


def _chunk_requests(chain: list[Layer], c0: int, n: int, least: int, alignment: int) -> list[tuple[bool, int, int]]:
    """One data chunk's requests (data?, first sector, sectors), sector run by sector run as
    is_allocated_sectors_min goes."""
    buf = _Buffer(*_sector_runs(chain, c0 * SECTOR, (c0 + n) * SECTOR))
    out = []
    at, left, num = 0, n, c0
    while left > 0:
        used, k = _is_allocated_min(buf, at, left, least, num, alignment)
        out.append((used, num, k))
        at, left, num = at + k, left - k, num + k
    return out


def _params(chain: list[Layer], size: int, sparse: int, backing: bool, backing_end: int | None
            ) -> tuple[np.ndarray, np.ndarray, int, int, int, int]:
    """The source's status answers (``bounds``: their starts, then the disk's size; their flags), its request
    alignment, ``-S`` and the target's alignment for it (sectors), the disk's sectors. A target with a backing file
    (``backing``) asks the source's top alone (bdrv_block_status_above down to its backing file, exclusive: its
    unallocated stretches are neither data nor zero, unless they start past that backing file's end); a new one
    cuts the answers where its own backing file ends (``backing_end``, bytes: target_backing_sectors)."""
    if backing and len(chain) > 1:
        starts, flags = status_answers(chain[:1], size)
        unallocated = (flags & 1) == 0
        flags = np.where(unallocated & (starts < chain[1].size), 0, flags)
    else:
        starts, flags = status_answers(chain, size)
    if backing_end is not None and 0 < backing_end < size and backing_end not in starts:
        at = int(np.searchsorted(starts, backing_end))
        starts, flags = np.insert(starts, at, backing_end), np.insert(flags, at, flags[at - 1])
    top = chain[0].image
    src_alignment = top.cluster_size // SECTOR if top.is_qcow2 else 1  # (request alignment: one sector)
    least = sparse // SECTOR
    alignment = 1 << max(least.bit_length() - 1, 0)  # pow2floor(min_sparse); an NBD or qcow2 node's own is 1 sector
    return np.append(starts, size), flags, src_alignment, least, alignment, size // SECTOR


def _pieces(bounds: np.ndarray, flags: np.ndarray, total: int, src_alignment: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_walk` over the whole disk, as arrays (first sectors, sectors, kinds): a status answer that starts
    and ends on the source's alignment, within the request limit, is one piece as it stands (all of them at
    once); stretches of others are walked."""
    lo, hi = bounds[:-1], np.minimum(bounds[1:], total * SECTOR)
    unit = src_alignment * SECTOR
    regular = (lo % unit == 0) & (hi % unit == 0) & (hi > lo) & (hi - lo <= REQUEST_MAX // SECTOR * SECTOR)
    p0, pn, pk = lo // SECTOR, (hi - lo) // SECTOR, _kinds(flags)
    if regular.all():
        return p0, pn, pk
    parts = [(p0[regular], pn[regular], pk[regular])]
    odd = np.flatnonzero(~regular)
    cut = np.flatnonzero(np.diff(odd) > 1) + 1
    for group in np.split(odd, cut):  # (stretches of status answers that are not: walked)
        j, k = int(group[0]), int(group[-1]) + 1
        end = int(lo[k]) // SECTOR if k < lo.size else total
        got = _walk(bounds, flags, total, src_alignment, -(-int(lo[j]) // SECTOR), end)
        parts.append((np.array([g[0] for g in got], dtype=np.int64), np.array([g[1] for g in got], dtype=np.int64),
                      np.array([g[2] for g in got], dtype=pk.dtype)))
    p0, pn, pk = (np.concatenate(x) for x in zip(*parts))
    order = np.argsort(p0, kind="stable")
    return p0[order], pn[order], pk[order]


def _post_backing(p0: np.ndarray, pk: np.ndarray, backing_end: int | None) -> np.ndarray:
    """Zero pieces past the new target's backing file: left to it (post_backing_zero: it reads zeroes there)."""
    if backing_end is None:
        return pk
    return np.where((pk == ZERO) & (p0 * SECTOR >= backing_end), BACKING, pk)


def requests_walk(chain: list[Layer], size: int, sparse: int, backing: bool = False,
                  backing_end: int | None = None) -> list[tuple[str, int, int]]:
    """:func:`requests` the way img_convert goes, one status answer and one chunk at a time (the tests check the
    other against it)."""
    bounds, flags, src_alignment, least, alignment, total = _params(chain, size, sparse, backing, backing_end)
    out: list[tuple[str, int, int]] = []
    for p0, n, kind in _walk(bounds, flags, total, src_alignment, 0, total):
        kind = int(_post_backing(np.array([p0]), np.array([kind]), backing_end)[0])
        if kind == BACKING:
            continue
        if kind == ZERO and least:
            out.append(("zero", p0 * SECTOR, n * SECTOR))
            continue
        for c0 in range(p0, p0 + n, BUF // SECTOR):
            c1 = min(c0 + BUF // SECTOR, p0 + n)
            out += [("data", c0 * SECTOR, (c1 - c0) * SECTOR)] if not least else [
                ("data" if used else "zero", at * SECTOR, k * SECTOR)
                for used, at, k in _chunk_requests(chain, c0, c1 - c0, least, alignment)]
    return out


def requests(chain: list[Layer], size: int, sparse: int, backing: bool = False, backing_end: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The write requests img_convert sends a target that is not zero-initialised (one that is not new, or has a
    backing file: ``backing``, and for a new one, where that ends: ``backing_end``) for the source ``chain`` of
    ``size`` bytes, with ``-S`` ``sparse`` (bytes): (offsets, lengths, zero?) in order. Worked out at once for
    the data chunks on the target's alignment (a block is data if any of its sectors is; a request runs over zero
    stretches shorter than ``-S`` between data, the zero stretches at a chunk's ends and the longer ones are zero
    requests); chunks off it go sector run by sector run (:func:`_chunk_requests`); with ``-S 0`` every chunk is
    data, the zero stretches' too. What the target's backing file is left to, nothing is written."""
    bounds, flags, src_alignment, least, alignment, total = _params(chain, size, sparse, backing, backing_end)
    p0, pn, pk = _pieces(bounds, flags, total, src_alignment)
    pk = _post_backing(p0, pk, backing_end)
    keep = (pn > 0) & (pk != BACKING)
    p0, pn, pz = p0[keep], pn[keep], (pk[keep] == ZERO) & (least > 0)  # (-S 0: zeroes written as data)
    i64 = np.int64
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [(p0[pz], pn[pz], np.ones(int(pz.sum()), dtype=bool))]
    # the data pieces' chunks of BUF
    d0, dn = p0[~pz], pn[~pz]
    per = -(-dn // (BUF // SECTOR))
    owner = np.repeat(np.arange(d0.size), per)
    k = np.arange(owner.size, dtype=i64) - np.repeat(np.cumsum(per) - per, per)
    cs = d0[owner] + k * (BUF // SECTOR)
    ce = np.minimum(cs + BUF // SECTOR, (d0 + dn)[owner])
    if not least:  # -S 0: written as they are
        parts.append((cs, ce - cs, np.zeros(cs.size, dtype=bool)))
        cs = ce = cs[:0]
    odd = (cs % alignment != 0) | (ce % alignment != 0)
    for c0, c1 in zip(cs[odd].tolist(), ce[odd].tolist()):
        got = _chunk_requests(chain, c0, c1 - c0, least, alignment)
        parts.append((np.array([g[1] for g in got], dtype=i64), np.array([g[2] for g in got], dtype=i64),
                      np.array([not g[0] for g in got], dtype=bool)))
    cs, ce = cs[~odd], ce[~odd]
    if cs.size:
        parts.append(_aligned_chunks(chain, size, cs, ce, least, alignment))
    offsets = np.concatenate([p[0] for p in parts])
    order = np.argsort(offsets, kind="stable")
    lengths = np.concatenate([p[1] for p in parts])[order]
    zero = np.concatenate([p[2] for p in parts])[order]
    return offsets[order] * SECTOR, lengths * SECTOR, zero


def cluster_kinds(chain: list[Layer], size: int, cluster: int, backing_end: int | None) -> np.ndarray:
    """A compressed convert into a target with a backing file (``-c -B``): what convert_iteration_sectors makes of
    each target cluster, in order (DATA, ZERO or BACKING). Its steps are whole clusters: a status answer's clusters
    take its kind, a cluster an answer ends inside (and the disk's last, partial one) is read as data."""
    bounds, flags, src_alignment, _, _, total = _params(chain, size, 512, True, backing_end)
    p0, pn, pk = _pieces(bounds, flags, total, src_alignment)
    pk = _post_backing(p0, pk, backing_end)
    keep = pn > 0
    p0, pn, pk = p0[keep] * SECTOR, pn[keep] * SECTOR, pk[keep]
    starts = np.arange(0, size, cluster, dtype=np.int64)
    ends = np.minimum(starts + cluster, size)
    j = np.searchsorted(p0, starts, "right") - 1
    whole = (ends - starts == cluster) & (ends <= p0[j] + pn[j])
    return np.where(whole, pk[j], DATA)


def _aligned_chunks(chain: list[Layer], size: int, cs: np.ndarray, ce: np.ndarray, least: int, alignment: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The requests of data chunks ``[cs, ce)`` (sectors, on ``alignment``): (first sectors, sectors, zero?)."""
    s, e, v = content(chain, int(cs.min()) * SECTOR, int(ce.max()) * SECTOR)
    data = v != 0
    first = s[data] // SECTOR // alignment * alignment  # the blocks any data touches
    last_sector = -(-e[data] // SECTOR)
    last = -(-last_sector // alignment) * alignment
    if first.size:
        reach = np.maximum.accumulate(last)
        new = np.ones(first.size, dtype=bool)
        new[1:] = first[1:] > reach[:-1]
        ends = reach[np.append(np.flatnonzero(new)[1:] - 1, first.size - 1)]
        first, last = first[new], ends
    ds, de, _, ptr = clip_runs(first, last, np.zeros(first.size, dtype=np.int64), cs, ce)
    owner = np.repeat(np.arange(cs.size), np.diff(ptr))
    # a data request runs on over a zero stretch shorter than -S between data of its chunk
    joined = (owner[1:] == owner[:-1]) & (ds[1:] - de[:-1] < least)
    head = np.ones(ds.size, dtype=bool)
    head[1:] = ~joined
    tails = np.append(np.flatnonzero(head)[1:] - 1, ds.size - 1) if ds.size else np.zeros(0, dtype=np.int64)
    ra, rb, rown = ds[head], de[tails], owner[head]
    count = np.bincount(rown, minlength=cs.size)
    rptr = np.concatenate(([0], np.cumsum(count)))
    # zeroes: from each chunk's start to its first data (or its end), from each data request to the next (or the end)
    z1s = cs
    z1e = np.where(count > 0, ra[np.minimum(rptr[:-1], max(ra.size - 1, 0))] if ra.size else ce, ce)
    last_in = np.append(rown[1:] != rown[:-1], True) if ra.size else np.zeros(0, dtype=bool)
    z2s = rb
    z2e = np.where(last_in, ce[rown], np.append(ra[1:], 0)) if ra.size else rb
    zs = np.concatenate((z1s, z2s))
    ze = np.concatenate((z1e, z2e))
    real = ze > zs
    zs, ze = zs[real], ze[real]
    return (np.concatenate((ra, zs)), np.concatenate((rb - ra, ze - zs)),
            np.concatenate((np.zeros(ra.size, dtype=bool), np.ones(zs.size, dtype=bool))))


def write(conn: NbdConnection, chain: list[Layer], reqs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """The requests through the export (data read from ``chain``), then the client's flush as it disconnects."""
    offsets, lengths, zero = reqs
    size = int((offsets + lengths).max()) if offsets.size else 0
    conn.write(offsets, lengths, zero, content(chain, 0, size))
