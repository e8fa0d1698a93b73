"""Block nodes (BlockDriverState) and the drivers bitlab models.

A node has a driver, a size, children, and dirty bitmaps (newest first, as QEMU's
``QLIST_INSERT_HEAD`` keeps them). Guest I/O enters at a node, dirties every
enabled bitmap there (block/io.c ``bdrv_co_write_req_finish``), then reaches the
data: the image file for ``raw``/``qcow2``, nowhere for ``null-co``.
"""

from __future__ import annotations

import errno
import json
from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from ..bitmap import DEFAULT, DirtyBitmap, check_bitmap, merge_ranges
from ..errors import generic
from ..qmp_order import wire_order
from . import compress, hostfs, qcow2_opts, qcow2_trace, wstats
from .extents import (
    PREALLOC,
    UNALLOCATED,
    ZERO,
    ZERO_ALLOC,
    clip_runs,
    fill_holes,
    partial_cluster_holes,
    range_items,
    touched_mask,
)
from .ioerror import BlockIOError
from .qcow2_host import NONE
from .store import ImageFile, header_backing_fmt

SECTOR = 512
QCOW_MAX_L1_SIZE = 32 << 20  # bytes of L1 table qcow2 accepts
FEW_EXTENTS = 16  # copy_status works in plain ints up to this many runs
# bdrv_block_status_above's DATA and ZERO flags as codes (status_codes): zero only (0, also what fill_holes puts
# past a backing file's end), data, data that reads as zeroes (a qcow2 data cluster the file has a hole under),
# neither (null-co without read-zeroes)
STATUS_ZERO, STATUS_DATA, STATUS_DATA_ZERO, STATUS_NONE = 0, 1, 2, 3
_FILE_ZERO = -4  # (in _file_answers' runs: a data piece the file answers as zeroes)


def round_sector(n: int) -> int:
    """bdrv_getlength: node lengths are whole 512-byte sectors."""
    return -(-n // SECTOR) * SECTOR


def _merge_flag_runs(starts: np.ndarray, ends: np.ndarray, flags: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted adjacent runs with a bool each, neighbours with the same bool merged."""
    if flags.size <= 1:
        return starts, ends, flags
    new = np.ones(flags.size, dtype=bool)
    new[1:] = flags[1:] != flags[:-1]
    last = np.append(np.flatnonzero(new)[1:] - 1, flags.size - 1)
    return starts[new], ends[last], flags[new]


def subtree_ids(top: BlockNode, children: Callable[[BlockNode], list[tuple[str, BlockNode]]]) -> set[int]:
    """The ids of ``top`` and of every node below it, following ``children(node)`` (role, child) links."""
    seen = {top}  # (nodes hash by identity)
    todo = [top]
    while todo:
        for _, child in children(todo.pop()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return set(map(id, seen))


def _cut_runs(starts: np.ndarray, ends: np.ndarray, flags: np.ndarray, step: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs ``(starts, ends, flags)`` cut at every multiple of ``step`` inside them."""
    extra = (ends - 1) // step - starts // step
    if not extra.any():
        return starts, ends, flags
    idx = np.repeat(np.arange(starts.size), extra + 1)
    k = np.arange(idx.size) - np.repeat(np.cumsum(extra + 1) - (extra + 1), extra + 1)
    new_s = np.where(k == 0, starts[idx], (starts[idx] // step + k) * step)
    return new_s, np.append(new_s[1:], ends[-1]), flags[idx]


class BlockNode:
    """Common node behaviour; drivers override the data path and the image info."""

    driver = ""
    write_threshold: int = 0  # block-set-write-threshold (wstats): 0 while disarmed
    threshold_emit: wstats.Emit | None = None
    wr_highest_offset: int = 0  # the end of the highest write request that reached the node (not discards)
    discards: tuple[int, int] = (0, 0)  # file-posix: discards done (requests, bytes)
    write_gen: int = 0  # bs->write_gen: write, write-zeroes and discard requests that reached the node
    flushed_gen: int = 0  # bs->flushed_gen: write_gen at the last flush that succeeded
    reopens: int = 0  # blockdev-reopens committed on this node (its options, flags and filename may differ)

    def __init__(self, node_name: str, *, auto_named: bool = False, options: dict | None = None) -> None:
        opts = options or {}
        self.node_name = node_name
        self.auto_named = auto_named
        self.options = opts
        self.read_only: bool = bool(opts.get("read-only", False))
        self.discard_unmap: bool = opts.get("discard", "ignore") == "unmap"
        self.detect_zeroes: str = opts.get("detect-zeroes", "off")
        cache = opts.get("cache", {})
        self.cache_direct: bool = bool(cache.get("direct", False))
        self.cache_no_flush: bool = bool(cache.get("no-flush", False))
        self.bitmaps: list[DirtyBitmap] = []
        self.children: list[tuple[str, BlockNode]] = []
        self.parents: int = 0
        self.filtered_by: BlockNode | None = None  # a backup's copy-before-write filter above
        self.job_blocker: str | None = None  # why a running job keeps other jobs off this node

    # -- geometry -----------------------------------------------------------------
    @property
    def size(self) -> int:
        raise NotImplementedError

    @property
    def cluster_size(self) -> int | None:
        """The driver's cluster size, None if it reports none (raw, file, null-co)."""
        return None

    def child(self, role: str) -> BlockNode | None:
        for r, node in self.children:
            if r == role:
                return node
        return None

    @property
    def backing(self) -> BlockNode | None:
        for role, node in self.children:  # (child("backing"), without a second call: a hot look-up)
            if role == "backing":
                return node
        return None

    # -- bitmaps ------------------------------------------------------------------
    def find_bitmap(self, name: str) -> DirtyBitmap | None:
        for bm in self.bitmaps:
            if bm.name == name:
                return bm
        return None

    def add_bitmap(self, bm: DirtyBitmap) -> None:
        self.bitmaps.insert(0, bm)

    untracked = False  # a driver's own write (copy-on-read's): no request here, so no threshold, stats or bitmaps

    def _dirty(self, offset: int, length: int, discard: bool = False) -> None:
        """A write, write-zeroes or discard request reaches this node: its write threshold, its highest
        write, its bitmaps."""
        if self.untracked:
            return
        if self.write_threshold:
            wstats.check(self, offset, length)
        self.write_gen += 1
        if offset + length > self.wr_highest_offset and not discard:
            self.wr_highest_offset = offset + length
        for bm in self.bitmaps:
            if not bm.disabled:
                bm.set_range(offset, length)

    def _dirty_batch(self, offsets: np.ndarray, lengths: np.ndarray, discard: bool = False) -> None:
        if self.untracked:
            return
        if self.write_threshold:
            wstats.check_batch(self, offsets, lengths)
        self.write_gen += len(offsets)
        if len(offsets) and not discard:  # (a discard moves no highest write: bdrv_co_write_req_finish)
            wstats.note_highest(self, offsets, lengths)
        for bm in self.bitmaps:
            if not bm.disabled:
                bm.set_ranges(offsets, lengths)

    # -- guest I/O ----------------------------------------------------------------
    def zero_detected(self) -> bool | None:
        """detect-zeroes (bdrv_aligned_pwritev): a write request whose buffer is all zeroes becomes a
        write-zeroes request; None if the node does not detect, else whether it may unmap."""
        if self.detect_zeroes == "off":
            return None
        return self.detect_zeroes == "unmap"

    def write(self, offset: int, length: int, value: int) -> None:
        """A tracked write request of ``value`` bytes (a zero write if the node detects zeroes)."""
        unmap = self.zero_detected() if value == 0 else None
        if unmap is not None:
            self.write_zeroes(offset, length, unmap=unmap)
            return
        self._dirty(offset, length)
        self._store(offset, length, value)

    def write_buffer(self, offset: int, length: int, starts: np.ndarray, ends: np.ndarray,
                     values: np.ndarray, detect: bool = True) -> None:
        """One write request of ``[offset, offset + length)`` whose buffer holds the runs (a block-copy
        bounce buffer): with detect-zeroes an all-zero buffer becomes a write-zeroes request (not for
        ``detect=False``: block-copy's copy_range, which passes no buffer)."""
        unmap = None if values.any() or not detect else self.zero_detected()
        if unmap is not None:
            self.write_zeroes(offset, length, unmap=unmap)
        else:
            if self.write_threshold and not self.untracked:  # the request, not the runs of its buffer
                wstats.check(self, offset, length)
            self._write_buffer_data(offset, length, starts, ends, values, detect)

    def _write_buffer_data(self, offset: int, length: int, starts: np.ndarray, ends: np.ndarray,
                           values: np.ndarray, detect: bool) -> None:
        """:meth:`write_buffer`'s data request, its threshold checked: here the runs of its buffer."""
        self.write_batch(starts, ends - starts, values)

    def write_batch(self, offsets: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> None:
        self._dirty_batch(offsets, lengths)
        self._store_batch(offsets, lengths, values)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        """``write -z`` (``unmap``: BDRV_REQ_MAY_UNMAP, ``write -z -u``): dirties like a write; formats
        may store it without data."""
        self._dirty(offset, length)
        self._store_zeroes(offset, length, unmap)

    def write_zeroes_batch(self, offsets: np.ndarray, lengths: np.ndarray, unmap: bool = False) -> None:
        """Many :meth:`write_zeroes` (ranges that do not overlap); drivers may do them at once."""
        for off, ln in zip(np.asarray(offsets).tolist(), np.asarray(lengths).tolist()):
            self.write_zeroes(off, ln, unmap)

    def _store_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self._store(offset, length, 0)

    def write_compressed(self, offset: int, length: int, starts: np.ndarray, ends: np.ndarray,
                         values: np.ndarray) -> None:
        """A write request with BDRV_REQ_WRITE_COMPRESSED (``write -c``) whose buffer holds the runs: a driver
        that cannot compress fails it with ENOTSUP (bdrv_driver_pwritev_compressed); filters are not simulated."""
        if self.driver in ("raw", "file", "null-co", "null-aio", "host_device"):
            if length:  # (the request was tracked: bdrv_co_write_req_finish dirties it whatever it returned)
                self._dirty(offset, length)
            raise BlockIOError(errno.ENOTSUP, "write")
        raise generic(f"bitlab does not simulate a compressed write through a {self.driver} node")

    def discard(self, offset: int, length: int) -> None:
        """A discard: ignored entirely unless the node was opened with discard=unmap."""
        if not self.discard_unmap:
            return
        self._dirty(offset, length, discard=True)
        self._unmap(offset, length)

    def read_extents(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What a guest reads: runs (starts, ends, values), through backing files (no I/O events)."""
        raise NotImplementedError

    def pread(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A read request: like :meth:`read_extents`, but drivers report I/O (blkdebug may fail it)."""
        return self.read_extents(offset, length)

    def block_status(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs (starts, ends, is_data): False where the range reads as zeroes without data."""
        starts, ends, vals = self.read_extents(offset, length)
        return starts, ends, np.ones(starts.size, dtype=bool)

    @property
    def reports_zeroes(self) -> bool:
        """Whether block status calls what reads as zeroes zero (a file's holes); null-co does only with
        read-zeroes (null_co_block_status), so a raw node above it has data everywhere."""
        return True

    def copy_status(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block status extent by extent, as bdrv_block_status_above answers block-copy: runs (starts,
        ends, zero), cut wherever QEMU's answer ends. Here: maximal runs of :meth:`block_status`."""
        starts, ends, is_data = self.block_status(offset, length)
        return _merge_flag_runs(starts, ends, ~np.asarray(is_data, dtype=bool))

    def status_codes(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """bdrv_block_status_above's DATA and ZERO flags over the range, as an NBD server's ``base:allocation``
        reports them: runs (starts, ends, STATUS_* codes). Here: :meth:`copy_status`'s zeroes, data elsewhere."""
        starts, ends, zero = self.copy_status(offset, length)
        return starts, ends, np.where(zero, STATUS_ZERO, STATUS_DATA)

    def is_allocated(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Maximal runs (starts, ends, allocated) in this node's own layer (bdrv_is_allocated)."""
        return np.array([offset]), np.array([offset + length]), np.array([True])

    def flush(self) -> None:
        """bdrv_co_flush: blkdebug's ``flush_to_os`` event on the primary child, the driver's write-back
        (qcow2: its caches), then, if anything was written to the node since its last flush (and unless
        cache.no-flush), ``flush_to_disk`` and the driver's flush; then the children it writes, each
        flushed even if one fails. A read-only node flushes nothing. BlockIOError if a step failed."""
        if self.read_only:
            return
        gen = self.write_gen
        primary = self.child("file") or self.child("image")
        if primary is not None:
            primary.debug_event("flush_to_os")
        self._flush_to_os()
        if not self.cache_no_flush and gen != self.flushed_gen:
            if primary is not None:
                primary.debug_event("flush_to_disk")
            self._flush_to_disk()
        error = None
        for role, child in self.children:
            if role in ("file", "image"):
                try:
                    child.flush()
                except BlockIOError as err:
                    error = error or err
        if error is not None:
            raise error
        self.flushed_gen = gen

    def _flush_to_os(self) -> None:
        """The driver's bdrv_co_flush_to_os (what it caches written back)."""

    def _flush_to_disk(self) -> None:
        """The driver's bdrv_co_flush_to_disk."""

    # -- resizing -----------------------------------------------------------------
    def resize(self, size: int, prealloc: str = "off") -> None:
        """bdrv_co_truncate (block_resize; qemu-img resize may ask for ``prealloc``, which raw and file nodes
        take): the driver changes the node's length, then its dirty bitmaps take the new length. QMPError with
        QEMU's text where it or the driver refuses."""
        if self.read_only:
            raise generic("Image is read-only")
        if prealloc == "off":
            self._truncate(size)
        elif self.driver in ("raw", "file", "qcow2"):
            self._truncate(size, prealloc)  # type: ignore[call-arg]
        else:
            raise generic(f"bitlab does not simulate resizing a {self.driver} node with preallocation '{prealloc}'")
        self.bitmaps_follow()

    def bitmaps_follow(self) -> None:
        """bdrv_dirty_bitmap_truncate: every bitmap takes the node's length."""
        for bm in self.bitmaps:
            bm.truncate(self.size)

    def _truncate(self, size: int) -> None:
        """The driver's truncate: filters pass it to the node they filter, others cannot resize."""
        below = self.child("file") if self.driver == "copy-before-write" else self.child("image") \
            if self.driver == "blkdebug" else None
        if below is None:
            raise generic("Image format driver does not support resize")
        below.resize(size)

    def debug_event(self, event: str) -> None:
        """BLKDBG_EVENT reaching this node: only blkdebug reacts."""

    def debug_check(self, iotype: str, offset: int | None, length: int) -> None:
        """A request reaching this node: only blkdebug may fail it."""

    def hears_host_writes(self) -> bool:
        """Whether writes a format driver makes to this node matter here: a dirty bitmap or a write
        threshold on it."""
        return bool(self.bitmaps) or self.write_threshold > 0

    def note_write(self, offsets: np.ndarray, lengths: np.ndarray, discard: bool = False) -> None:
        """Writes a format driver above made at these byte ranges of this node (its data kept above):
        a write past the end grows the node and its bitmaps (bdrv_co_write_req_finish), then dirties."""
        if self.write_threshold and len(offsets):
            wstats.check_batch(self, offsets, lengths)
        self.write_gen += len(offsets)
        if len(offsets):
            (wstats.note_discards if discard else wstats.note_highest)(self, offsets, lengths)
        if not self.bitmaps or not len(offsets):
            return
        end = round_sector(int((offsets + lengths).max()))
        for bm in self.bitmaps:
            bm.grow(end)
        self._dirty_batch(offsets, lengths, discard)

    def _store(self, offset: int, length: int, value: int) -> None:
        raise NotImplementedError

    def _store_batch(self, offsets: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> None:
        raise NotImplementedError

    def _unmap(self, offset: int, length: int) -> None:
        raise NotImplementedError

    # -- reporting ----------------------------------------------------------------
    strong_options: tuple[str, ...] = ()

    def full_options(self) -> dict:
        """What bdrv_refresh_filename would put in a ``json:`` filename."""
        opts: dict = {"driver": self.driver}
        for key in self.strong_options:
            if key in self.options:
                opts[key] = self.options[key]
        for role, child in self.children:
            opts[role] = child.full_options()
        return opts

    def plain_filename(self) -> str | None:
        """The filename when no option forces the ``json:`` form, else None."""
        return None

    @property
    def filename(self) -> str:
        plain = self.plain_filename()
        if plain is not None:
            return plain
        return "json:" + json.dumps(wire_order(self.full_options()))


class NullNode(BlockNode):
    """``null-co``: a disk of a given size that forgets what is written."""

    driver = "null-co"

    def __init__(self, node_name: str, *, size: int, read_zeroes: bool = False, driver: str = "null-co",
                 **kw) -> None:
        super().__init__(node_name, **kw)
        self.driver = driver
        self._size = size
        self.read_zeroes = read_zeroes

    strong_options = ("size", "read-zeroes", "latency-ns")

    @property
    def size(self) -> int:
        return round_sector(self._size)

    def plain_filename(self) -> str | None:
        if any(key in self.options for key in self.strong_options):
            return None
        return f"{self.driver}://"

    @property
    def reports_zeroes(self) -> bool:
        return self.read_zeroes

    def status_codes(self, offset, length):
        """null_co_block_status: zeroes with read-zeroes, else neither data nor zeroes."""
        code = STATUS_ZERO if self.read_zeroes else STATUS_NONE
        return np.array([offset]), np.array([offset + length]), np.array([code])

    def is_allocated(self, offset, length):
        """Neither data nor zeroes without read-zeroes: not allocated (bdrv_co_block_status)."""
        return np.array([offset]), np.array([offset + length]), np.array([self.read_zeroes])

    def read_extents(self, offset, length):
        return np.array([offset]), np.array([offset + length]), np.array([0])

    def _store(self, offset, length, value):
        pass

    def _store_batch(self, offsets, lengths, values):
        pass

    def write_zeroes_batch(self, offsets, lengths, unmap=False):
        self._dirty_batch(offsets, lengths)

    def discard(self, offset, length):
        """null-co never tracks a discard, whatever the discard option says."""


class FileNode(BlockNode):
    """``file``: the protocol node over one file of the image store."""

    driver = "file"

    def __init__(self, node_name: str, *, image: ImageFile, **kw) -> None:
        super().__init__(node_name, **kw)
        self.image = image
        layout = image.layout if image.is_qcow2 and image._layout is not None else None  # (pending writes merged)
        # a qcow2 file's end at open (None: not laid out yet, taken at the first write): see wstats.highest
        self.wr_mark: int | None = None if layout is None else wstats.grown_end(layout)

    @property
    def size(self) -> int:
        return round_sector(self.image.file_length())

    def hears_host_writes(self) -> bool:
        return bool(self.bitmaps) or self.write_threshold > 0 or wstats.highest_unknown(self)

    def status_codes(self, offset, length):
        """file-posix's block status (SEEK_DATA/SEEK_HOLE): data where the file has written blocks, zeroes in its
        holes and unwritten blocks and past its end."""
        ps, pe, zero, _ = hostfs.file_pieces(self.image.host_blocks(), np.array([offset]), np.array([offset + length]))
        return ps, pe, np.where(zero, STATUS_ZERO, STATUS_DATA)

    def _truncate(self, size, prealloc="off"):
        """raw_co_truncate (file-posix): the file takes the new length (:meth:`ImageFile.truncate_raw`)."""
        image = self.image
        if image.is_qcow2:  # only reachable on a file node without its qcow2 parent
            raise generic("bitlab does not simulate resizing the file of a qcow2 image by itself")
        if prealloc != "off" and size < image.data.size:
            raise generic("Cannot use preallocation for shrinking files")
        if prealloc not in ("off", "falloc", "full"):
            raise generic(f"Unsupported preallocation mode: {prealloc}")
        image.truncate_raw(size, prealloc)

    def full_options(self) -> dict:
        return {"driver": "file", "filename": self.options.get("filename", self.image.name)}

    def plain_filename(self) -> str | None:
        return self.options.get("filename", self.image.name)

    def read_extents(self, offset, length):
        if self.image.is_qcow2:  # raw bytes of a qcow2 file are not modelled
            return np.array([offset]), np.array([offset + length]), np.array([0])
        s, e, v = self.image.data.extents(offset, length)
        return s, e, np.where(v == ZERO_ALLOC, 0, v)  # (written zeroes read as zeroes)

    def _store(self, offset, length, value):
        if not self.image.is_qcow2:  # (zeroes a request writes as data are written: they keep their blocks)
            self.image.data.write(offset, length, value if value else ZERO_ALLOC)

    def _store_batch(self, offsets, lengths, values):
        if not self.image.is_qcow2:
            values = np.asarray(values)
            self.image.data.write_batch(offsets, lengths, np.where(values == 0, ZERO_ALLOC, values))

    def write_zeroes_batch(self, offsets, lengths, unmap=False):
        self._dirty_batch(offsets, lengths)
        self._zero_range(np.asarray(offsets, dtype=np.int64), np.asarray(lengths, dtype=np.int64), unmap)

    def _store_zeroes(self, offset, length, unmap=False):
        self._zero_range(np.array([offset], dtype=np.int64), np.array([length], dtype=np.int64), unmap)

    def _zero_range(self, offsets: np.ndarray, lengths: np.ndarray, punch: bool = True) -> None:
        """A raw file's ranges zeroed by fallocate: a discard, or a zero write that may unmap, punches holes
        (handle_aiocb_write_zeroes_unmap: FALLOC_FL_PUNCH_HOLE), its whole blocks become holes; a zero write that
        may not (``punch`` False) zeroes the range (FALLOC_FL_ZERO_RANGE): every block it touches stays or becomes
        allocated, those it covers whole unwritten, a hole it covers in part too. A block it covers in part (the
        file's partial last block too) stays written if it was, holding written zeroes there; a first block
        covered whole is no longer written (:meth:`ImageFile.zeroed`)."""
        image = self.image
        if image.is_qcow2 or not offsets.size:
            return
        data = image.data
        ends = np.minimum(offsets + lengths, data.size)
        keep = ends > offsets
        offsets, ends = offsets[keep], ends[keep]
        if not offsets.size:
            return
        block = hostfs.BLOCK
        head, tail = offsets // block, (ends - 1) // block  # partial where the range does not cover the block whole
        blocks = np.unique(np.concatenate((head[(offsets % block != 0) | (ends - head * block < block)],
                                           tail[(ends % block != 0) | (ends - tail * block < block)])))
        if blocks.size:
            lo, hi = blocks * block, np.minimum(blocks * block + block, data.size)
            _, _, bv, ptr = clip_runs(*data.extents(), lo, hi)
            owner = np.repeat(np.arange(blocks.size), np.diff(ptr))
            written = np.bincount(owner, weights=bv != 0, minlength=blocks.size) > 0
            blocks, lo, hi = blocks[written], lo[written], hi[written]
        data.write_batch(offsets, ends - offsets, 0)
        if blocks.size:  # (the zeroed part of each written block it covers in part)
            zs, ze, _, _ = clip_runs(offsets, ends, np.zeros(offsets.size, dtype=np.int64), lo, hi)
            data.write_batch(zs, ze - zs, ZERO_ALLOC)
        if bool((offsets <= 0).any()):
            image.zeroed(0, int(ends[offsets <= 0].max()))
        if punch:
            image.free_blocks(offsets, ends)
        else:
            image.allocate_blocks(offsets, ends)

    def note_write(self, offsets, lengths, discard=False):
        """A qcow2 node's discards that reach the file (it has ``discard=unmap``) punch holes in it."""
        if discard and self.discard_unmap and self.image.is_qcow2 and len(offsets):
            self.image.layout.punch(offsets, lengths)
        super().note_write(offsets, lengths, discard)

    def _unmap(self, offset, length):
        """A discard request that reached the file (a qcow2 node's over blkdebug: it punches a hole)."""
        self.discards = (self.discards[0] + 1, self.discards[1] + length)  # raw_account_discard
        if not self.image.is_qcow2:
            self._zero_range(np.array([offset], dtype=np.int64), np.array([length], dtype=np.int64))
        else:
            self.image.layout.punch(np.array([offset]), np.array([length]))


def _held(values: np.ndarray) -> np.ndarray:
    """Content values of a qcow2 cluster holding data or a host cluster (not unallocated, not a plain zero one)."""
    return (values != UNALLOCATED) & (values != ZERO)


PROTOCOL_DRIVERS = frozenset(("file", "null-co", "null-aio", "blkdebug"))
"""The drivers bitlab has that QEMU opens with bdrv_file_open (protocol drivers)."""


class FormatNode(BlockNode):
    """A format driver over a ``file`` child."""

    @property
    def file(self) -> BlockNode:
        for role, node in self.children:  # (child("file"), without a second call: a hot look-up)
            if role == "file":
                return node
        raise AssertionError(f"format node '{self.node_name}' without a file child")

    def plain_filename(self) -> str | None:
        """bdrv_refresh_filename: the file child's name, if that child is a protocol node (bdrv_file_open: a
        format over another format or a filter has none) and no strong option or overridden backing file needs
        the options."""
        file = self.file
        if file.driver not in PROTOCOL_DRIVERS or any(key in self.options for key in self.strong_options) or \
                self.backing_overridden():
            return None
        child = file.plain_filename()  # (its ``json:`` form, if it has no plain one, would be built for nothing)
        return None if child is None or child.startswith("json:") else child

    def backing_overridden(self) -> bool:
        return False


def raw_window_error(opts: dict, real_size: int) -> str | None:
    """raw_apply_options' checks of ``offset`` and ``size`` against the length of the file below, with its texts."""
    offset = int(opts.get("offset", 0))
    if offset > real_size:
        return f"Offset ({offset}) cannot be greater than size of the containing file ({real_size})"
    if "size" not in opts:
        return None
    size = int(opts["size"])
    if real_size - offset < size:
        return (f"The sum of offset ({offset}) and size ({size}) has to be smaller or equal to the  actual size of "
                f"the containing file ({real_size})")  # (QEMU's two spaces)
    if size % 512:
        return "Specified size is not multiple of 512"
    return None


class RawNode(FormatNode):
    """``raw``: passes every request to its file child, at the same offset or, with the ``offset`` and ``size``
    options, inside that window of it (raw_adjust_offset: requests, block status and reads shifted)."""

    driver = "raw"
    strong_options = ("offset", "size")

    @property
    def shift(self) -> int:
        """Where the node starts in its file (the ``offset`` option)."""
        return int(self.options.get("offset", 0))

    @property
    def size(self) -> int:
        """raw_getlength: the file's length after the offset, at most ``size`` (0 if the file got shorter)."""
        if "offset" not in self.options and "size" not in self.options:
            return self.file.size
        rest = max(self.file.size - self.shift, 0)
        return min(int(self.options["size"]), rest) if "size" in self.options else rest

    def _back(self, starts: np.ndarray, ends: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
        """Runs the file answered, in the node's offsets."""
        o = self.shift
        return (starts, ends, values) if not o else (starts - o, ends - o, values)

    def _truncate(self, size, prealloc="off"):
        """raw_co_truncate: a fixed ``size`` cannot change; otherwise the file is resized (after the
        ``offset``)."""
        if "size" in self.options:
            raise generic("Cannot resize fixed-size raw disks")
        self.file.resize(size + self.shift, prealloc)

    def write(self, offset, length, value):
        unmap = self.zero_detected() if value == 0 else None
        if unmap is not None:
            self.write_zeroes(offset, length, unmap=unmap)
            return
        self._dirty(offset, length)
        self.file.debug_event("write_aio")
        self.file.write(offset + self.shift, length, value)

    def pread(self, offset, length):
        self.file.debug_event("read_aio")
        return self._back(*self.file.pread(offset + self.shift, length))

    def is_allocated(self, offset, length):
        return self._back(*self.file.is_allocated(offset + self.shift, length))  # BDRV_BLOCK_RAW: the file answers

    def status_codes(self, offset, length):
        """BDRV_BLOCK_RAW: the file answers, at the mapped offset."""
        return self._back(*self.file.status_codes(offset + self.shift, length))

    def block_status(self, offset, length):
        if type(self.file) is FileNode and not self.file.image.is_qcow2:
            # file-posix (SEEK_DATA/SEEK_HOLE): data in the written 4 KiB blocks, written zeroes too
            starts, ends, codes = self._back(*self.file.status_codes(offset + self.shift, length))
            return starts, ends, codes == STATUS_DATA
        starts, ends, vals = self.read_extents(offset, length)
        if not self.file.reports_zeroes:
            return starts, ends, np.ones(starts.size, dtype=bool)
        return starts, ends, vals != 0

    def write_batch(self, offsets, lengths, values):
        self._dirty_batch(offsets, lengths)
        if len(offsets):
            self.file.debug_event("write_aio")  # raw_co_pwritev
        self.file.write_batch(np.asarray(offsets) + self.shift, lengths, values)

    def _write_buffer_data(self, offset, length, starts, ends, values, detect):
        """One request here is one request on the file (raw_co_pwritev): its write threshold sees the whole
        request, not the runs of its buffer."""
        self._dirty_batch(starts, ends - starts)
        self.file.debug_event("write_aio")
        o = self.shift
        self.file.write_buffer(offset + o, length, starts + o, ends + o, values, detect)

    def write_zeroes(self, offset, length, unmap=False):
        self._dirty(offset, length)
        # raw_co_pwrite_zeroes passes the flags, and bdrv_co_pwrite_zeroes drops BDRV_REQ_MAY_UNMAP for a child
        # opened without discard=unmap (a request from a BlockBackend keeps it)
        self.file.write_zeroes(offset + self.shift, length, unmap and self.file.discard_unmap)

    def write_zeroes_batch(self, offsets, lengths, unmap=False):
        self._dirty_batch(offsets, lengths)
        self.file.write_zeroes_batch(np.asarray(offsets) + self.shift, lengths, unmap and self.file.discard_unmap)

    def discard(self, offset, length):
        if not self.discard_unmap:
            return
        self._dirty(offset, length, discard=True)
        self.file.discard(offset + self.shift, length)

    def read_extents(self, offset, length):
        return self._back(*self.file.read_extents(offset + self.shift, length))


class Qcow2Node(FormatNode):
    """``qcow2``: the virtual disk lives in the image's extent map; holes read the backing."""

    driver = "qcow2"

    def __init__(self, node_name: str, *, image: ImageFile, **kw) -> None:
        super().__init__(node_name, **kw)
        self.image = image
        image.reopened()
        self.l2_slice = qcow2_opts.l2_slice_bytes(image.cluster_size, image.size)  # (read_cache_sizes at open)
        self.auto_backing_file: str | None = None  # the backing file's name as opened, resolved (graph)
        self._seeing = 0  # nesting of _file_sees
        self._one_buffer = False  # the data writes under way are one buffer's runs (one request)
        self._prealloc: bool | None = None  # s->metadata_preallocation, once checked (see _metadata_prealloc)
        self.tracing = False  # an operation runs step by step for a blkdebug node below (qcow2_trace)
        self.trace_requests: list | None = None  # its data requests (offsets, ends, values)

    @property
    def size(self) -> int:
        return round_sector(self.image.size)

    @property
    def cluster_size(self) -> int | None:
        return self.image.cluster_size

    def backing_overridden(self) -> bool:
        """bdrv_backing_overridden: the backing in use is not the one the image names."""
        backing = self.backing
        if backing is None:
            return bool(self.image.backing_file)
        auto = self.auto_backing_file if self.auto_backing_file is not None else self.image.backing_file
        return backing.filename != auto

    def fill_cow(self) -> None:
        """Give the partly written clusters the bytes qcow2 copied on write from the backing chain when it
        allocated them (bitlab keeps only what was written), before the backing chain changes under the image
        (a stream's new backing node): they keep reading what they did."""
        image, backing = self.image, self.backing
        if backing is None:
            return
        q_s, q_e = partial_cluster_holes(*image.data.extents(), image.cluster_size, image.data.size)
        if not q_s.size:
            return
        lo, hi = int(q_s[0]), min(int(q_e[-1]), backing.size)
        if hi <= lo:
            return
        bs, be, bv = backing.read_extents(lo, hi - lo)
        bv = np.where(np.asarray(bv) < 0, 0, bv)  # (what reads as zeroes, unallocated below too)
        ps, pe, pv, _ = clip_runs(np.asarray(bs), np.asarray(be), bv, q_s, np.minimum(q_e, hi))
        image.data.write_batch(ps, pe - ps, pv)

    def full_options(self) -> dict:
        """bdrv_refresh_filename: the backing node's options only where it is not the one the image names."""
        opts = super().full_options()
        if self.backing is None and self.image.backing_file:
            opts["backing"] = None
        elif "backing" in opts and not self.backing_overridden():
            del opts["backing"]
        return opts

    def write_buffer(self, offset, length, starts, ends, values, detect=True):
        """A buffer of several runs is one write request: qcow2 allocates its clusters together (contiguous,
        table by table), not run by run."""
        if starts.size < 2:
            super().write_buffer(offset, length, starts, ends, values, detect)
            return
        self._one_buffer = True
        try:
            super().write_buffer(offset, length, starts, ends, values, detect)
        finally:
            self._one_buffer = False

    def _compressed_at(self, lo: int, hi: int) -> bool:
        """Whether a cluster of bytes ``[lo, hi)`` is a compressed cluster (the writes before taken into account)."""
        layout = self.image._layout
        if layout is None or not layout.any_compressed:
            return False
        cs = self.image.cluster_size
        return self.image.layout.compressed_in(lo // cs, -(-hi // cs))

    def _refuse_compressed(self, lo: int, hi: int, what: str) -> None:
        """A request of ``what`` meeting a compressed cluster (bytes ``[lo, hi)``) over a blkdebug node, whose rules
        would see qcow2's steps for it (bitlab does not simulate them), is refused, not answered wrongly."""
        if self._compressed_at(lo, hi) and (self.tracing or self.child("file") is not None
                                            and self.file.driver == "blkdebug"):
            raise generic(f"bitlab does not simulate {what} over a compressed cluster over blkdebug")

    def write_compressed(self, offset, length, starts, ends, values):
        """qcow2_co_pwritev_compressed_part: whole clusters only (the disk's last one may end inside: its task pads
        it with zeroes), else EINVAL; one task a cluster (:meth:`write_compressed_clusters`). An empty request
        rounds the file's length up to a whole sector. Tasks of several clusters run in parallel in QEMU (their
        bytes packed in the order they finish): bitlab packs in guest order."""
        image = self.image
        cs = image.cluster_size
        if length == 0:
            if self.detect_zeroes != "off":
                raise generic("bitlab does not simulate an empty compressed write to a node with detect-zeroes")
            image.layout.align_end()
            return
        if self.detect_zeroes != "off" and not np.asarray(values).any():
            # bdrv_aligned_pwritev: a buffer of zeroes becomes a zero write before the driver sees the flag
            self.write_zeroes(offset, length, unmap=self.detect_zeroes == "unmap")
            return
        if offset % cs or (length % cs and offset + length != self.size):
            self._dirty(offset, length)  # (a failed request dirties its range all the same)
            raise BlockIOError(errno.EINVAL, "write")
        c0, c1 = offset // cs, -(-(offset + length) // cs)
        self.write_compressed_clusters(np.arange(c0, c1, dtype=np.int64), np.full(c1 - c0, cs), starts, ends,
                                       values, detect=False, request=(offset, length))

    def write_compressed_clusters(self, clusters: np.ndarray, lengths: np.ndarray, starts: np.ndarray,
                                  ends: np.ndarray, values: np.ndarray, detect: bool = True,
                                  request: tuple[int, int] | None = None) -> None:
        """Compressed write requests of one cluster each (``lengths``: the disk's last one may be shorter), in
        order, their buffers the runs ``[starts, ends)``: qcow2_co_pwritev_compressed_task deflates each cluster
        (:mod:`.compress`) and takes bytes for it (:meth:`.HostLayout.write_compressed`); a cluster that already
        has a host offset fails with EIO (qcow2_alloc_compressed_cluster_offset). What bitlab does not simulate
        it refuses before writing anything. On a node with detect-zeroes (``detect``: each cluster its own
        request) a cluster of zeroes is a zero write (unmapping with ``unmap``), in its place in the order. The
        node's bitmaps, write threshold and highest offset see each cluster's request (or the one ``request``,
        offset and length, the clusters make), failed or not (bdrv_co_write_req_finish)."""
        image = self.image
        cs = image.cluster_size
        if detect and self.detect_zeroes != "off":
            starts, ends, values = (np.asarray(a, dtype=np.int64) for a in (starts, ends, values))
            n = clusters.size
            at = np.searchsorted(clusters, starts // cs)  # (the clusters each nonzero run touches, by position)
            upto = np.searchsorted(clusters, -(-ends // cs))
            nonzero = values != 0
            zero = ~touched_mask(at[nonzero], upto[nonzero], n)
            if zero.any():
                cut = np.flatnonzero(zero[1:] != zero[:-1]) + 1
                for a, b in zip(np.concatenate(([0], cut)).tolist(), np.concatenate((cut, [n])).tolist()):
                    if zero[a]:
                        self.write_zeroes_batch(clusters[a:b] * cs, lengths[a:b], unmap=self.detect_zeroes == "unmap")
                    else:
                        s, e, v, _ = clip_runs(starts, ends, values, clusters[a:a + 1] * cs,
                                               clusters[b - 1:b] * cs + lengths[b - 1:b])
                        self.write_compressed_clusters(clusters[a:b], lengths[a:b], s, e, v, detect=False)
                return
        def made() -> None:  # (written or failed with an errno, the requests were made; a refusal makes none)
            if request:
                self._dirty(*request)
            else:
                self._dirty_batch(clusters * cs, lengths)

        try:
            sizes = self._compress_sizes(clusters, starts, ends, values)
        except BlockIOError:
            made()
            raise
        made()
        with self._file_sees() as listen:
            hosts = image.write_compressed(clusters, sizes, starts, ends, values)
            if listen:
                self.file.note_write(*image.layout.drain_written())
                self.file.note_write(hosts, sizes)
            else:
                self.file.write_gen += 1

    def compressed_write_meets_host(self, clusters: np.ndarray) -> bool:
        """Whether one of guest ``clusters`` (ascending) already has a host offset (data, a zero cluster that kept
        its host cluster, or a compressed cluster): qcow2_alloc_compressed_cluster_offset fails its write (EIO)."""
        layout = self.image.layout
        c0, c1 = int(clusters[0]), int(clusters[-1]) + 1
        hs, he, _ = layout.hosted(c0, c1)
        c_s, c_e = layout.compressed_runs(c0, c1)
        rs, re = np.concatenate((hs, c_s)), np.concatenate((he, c_e))
        if not rs.size:
            return False
        order = np.argsort(rs)
        j = np.searchsorted(rs[order], clusters, "right") - 1
        return bool(((j >= 0) & (clusters < re[order][np.maximum(j, 0)])).any())

    def _compress_sizes(self, clusters: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                        values: np.ndarray) -> np.ndarray:
        """The compressed size of each cluster, once bitlab knows it can simulate their writes exactly (else a
        GenericError saying what it does not simulate); a single cluster that already has a host offset raises
        EIO as qcow2 does."""
        image = self.image
        why = None
        if self.child("file") is None or self.file.driver != "file":
            why = f"a compressed write to a qcow2 node over a {self.file.driver} node"
        layout = image.layout
        if why is None and self.compressed_write_meets_host(clusters):
            if clusters.size == 1:
                raise BlockIOError(errno.EIO, "write")
            why = "compressed writes of several clusters meeting one that has a host offset (QEMU's tasks race)"
        sizes = None
        if why is None:
            try:
                sizes = image.compressed_sizes(clusters, starts, ends, values)
            except ValueError:
                why = "compressing opaque content (bitlab knows no bytes for it)"
        if sizes is not None and (sizes == compress.NOT_COMPRESSIBLE).any():
            why = "a compressed write of a cluster that does not compress (QEMU writes it as a normal cluster)"
        elif sizes is not None and not layout.compressed_fit(clusters, sizes):
            why = "compressed clusters that need a new refcount block"
        elif sizes is not None and layout.free_byte_offset_reused(int(clusters[0]), int(sizes[0])):
            why = ("a compressed write into a host cluster freed and allocated again since the last chunk went there "
                   "(QEMU 7.2 puts the chunk there all the same: a corrupt image)")
        if why is not None:
            raise generic(f"bitlab does not simulate {why}")
        return sizes

    def read_extents(self, offset, length):
        starts, ends, vals = self.image.data.extents(offset, length)
        vals = np.where((vals == ZERO) | (vals == ZERO_ALLOC) | (vals == PREALLOC), 0, vals)
        holes = vals == UNALLOCATED
        if not holes.any():
            return starts, ends, vals
        backing = self.backing
        if backing is None:
            return starts, ends, np.where(holes, 0, vals)
        return fill_holes(starts, ends, vals, holes, backing.size, backing.read_extents)

    def _store(self, offset, length, value):
        self._write_data(np.array([offset]), np.array([offset + length]), np.array([value]))

    # -- I/O at host offsets: what the file child sees ------------------------------------------
    @contextmanager
    def _file_sees(self, always: bool = False, frees: bool = False) -> Iterator[bool]:
        """Around a change of the image: the metadata writes it makes reach the file child (its
        bitmaps) at their host offsets, and the discards of the clusters it frees where they pass
        (``always``: QCOW2_DISCARD_ALWAYS frees, else QCOW2_DISCARD_REQUEST ones; see
        :meth:`_passes_discards`). Yields whether the file child hears writes at all.

        A file child that hears no writes still counts the discards that reach it (raw_account_discard)
        where the change may free clusters (``frees``: a discard, a zero write, a shrink); data writes
        and flushes free none, so they leave the content's pending writes unmerged."""
        if self.tracing:  # (the steps recorded reach the file themselves: see qcow2_trace)
            yield False
            return
        listen = self.file.hears_host_writes()
        outer = not self._seeing
        counts = not listen and frees and self._passes_discards(always)
        if (listen or counts) and outer:
            # (older writes, made while nobody listened: their highest)
            wstats.note_unheard_end(self.file, self.image.layout.drain_written_end())
            self.image.layout.drain_discarded()
        self._seeing += 1
        try:
            yield listen
        finally:
            self._seeing -= 1
        if listen:
            self._tell_file(always)
        elif self.image._layout is not None:
            if self.image._layout.written:  # (metadata requests reached the file: its write generation)
                self.file.write_gen += 1
                wstats.note_unheard_end(self.file, self.image._layout.drain_written_end())
            if counts:  # (the file node's discard counters only: it has no bitmap or threshold)
                offsets, lengths = self.image.layout.drain_discarded()
                if len(offsets):
                    self.file.note_write(offsets, lengths, discard=True)
            elif outer:  # (a change within one that frees clusters, e.g. its partial clusters' data: the outer counts)
                self.image._layout.discarded.clear()
            self.image._layout.written.clear()

    def _tell_file(self, always: bool) -> None:
        """A file child that hears writes gets the metadata writes made so far, then the discards of the clusters
        freed where they pass (qcow2_process_discards; a file without unmap ignores them)."""
        layout = self.image.layout
        self.file.note_write(*layout.drain_written())
        offsets, lengths = layout.drain_discarded(ordered=self._threshold_below())
        if self._passes_discards(always):
            self.file.note_write(offsets, lengths, discard=True)

    # -- persistent bitmaps' metadata (qcow2-bitmap.c), as the file node sees it ----------------------
    def _bitmap_metadata(self, writes: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Metadata writes to the file node, in order, each followed by qcow2_update_header (the whole
        first cluster): its highest write, threshold and bitmaps see them."""
        header = (np.zeros(1, dtype=np.int64), np.array([self.image.cluster_size], dtype=np.int64))
        parts = [part for write in writes for part in (write, header)]
        self.file.note_write(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def header_written(self) -> None:
        """qcow2_update_header (a v2 image's bitmaps extension dropped as it opens, a backing file renamed): the
        whole first cluster written to the file node."""
        self.file.note_write(np.zeros(1, dtype=np.int64), np.array([self.image.cluster_size], dtype=np.int64))

    def change_backing_file(self, name: str | None, fmt: str | None) -> None:
        """bdrv_change_backing_file: the name (and format) the image gives its backing file, and the name the
        node compares its backing node with; qcow2_change_backing_file writes the header."""
        self.image.backing_file, self.image.backing_fmt = name, header_backing_fmt(fmt)
        self.auto_backing_file = name
        self.header_written()

    def _directory(self) -> tuple[np.ndarray, np.ndarray]:
        where = self.image.directory_range()
        if where is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.array([where[0]], dtype=np.int64), np.array([where[1]], dtype=np.int64)

    def mark_bitmaps_in_use(self) -> None:
        """update_ext_header_and_dir_in_place (an open read-write marks its stored bitmaps in use): the header,
        the bitmap directory rewritten in place, the header again."""
        if self.image.directory_range() is None:  # (a layout built from content alone has no directory)
            return
        self._bitmap_metadata([(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)), self._directory()])

    def unstore_bitmap(self, name: str) -> None:
        """qcow2_co_remove_persistent_dirty_bitmap: the bitmap leaves the image at once. update_ext_header_and_dir
        writes what allocating the new directory wrote, the directory and flushes the caches (qcow2_flush_caches)
        if a bitmap is left, then writes the header; then free_bitmap_clusters discards the bitmap's data clusters
        (QCOW2_DISCARD_ALWAYS: see :meth:`_passes_discards`)."""
        image = self.image
        layout = image.layout
        data = layout.bitmap_clusters.get(name, [])[:-1]  # (its table comes last)
        image.bitmaps = [sb for sb in image.bitmaps if sb.name != name]
        allocated = layout.drain_written()
        directory = self._directory()
        if image.bitmaps:  # (a new directory stored: qcow2_flush_caches; none left: only the header)
            layout.flush()
        flushed = layout.drain_written()
        written = tuple(np.concatenate([a, b, c]) for a, b, c in zip(allocated, directory, flushed))
        self._bitmap_metadata([written])
        file = self.file
        if data and self._passes_discards(always=True):
            cs = image.cluster_size
            file.note_write(np.array([r[0] * cs for r in data], dtype=np.int64),
                            np.array([r[1] * cs for r in data], dtype=np.int64), discard=True)

    def discard_freed_bitmaps(self) -> None:
        """The persistent bitmaps were just stored anew (a clean close): free_bitmap_clusters discards the old
        ones' data clusters (QCOW2_DISCARD_ALWAYS, see :meth:`_passes_discards`), which punches holes in the file."""
        layout = self.image.layout
        runs, layout.bitmaps_freed = layout.bitmaps_freed, []
        if runs and self._passes_discards(always=True):
            cs = self.image.cluster_size
            self.file.note_write(np.array([r[0] * cs for r in runs], dtype=np.int64),
                                 np.array([r[1] * cs for r in runs], dtype=np.int64), discard=True)

    def _threshold_below(self) -> bool:
        """Whether the file child, or a blkdebug node on the way to it, has a write threshold armed (it sees the
        discards qcow2 passes one by one, in the order of qcow2's list)."""
        node = self.file
        while node.driver == "blkdebug" and not node.write_threshold:
            node = node.child("image")
        return bool(node.write_threshold)

    def _passes_discards(self, always: bool = False, below: bool = True) -> bool:
        """Whether the discards of the clusters this node frees reach its file child (update_refcount,
        qcow2_process_discards): qcow2 passes QCOW2_DISCARD_ALWAYS ones (shrinking, a stored bitmap removed)
        always, QCOW2_DISCARD_REQUEST ones (a guest discard, a zero write that may unmap) if
        ``pass-discard-request`` (default: this node opened with discard=unmap); the file child then drops them
        unless it was opened with discard=unmap (a child opened with its parent defaults to unmap whatever
        the parent's option, bdrv_inherited_options; a node added by itself to ignore). A blkdebug node between
        them passes them on (blkdebug_co_pdiscard) only if it has discard=unmap too: every node down to the file
        drops a discard without it (bdrv_co_pdiscard)."""
        if not always and not self.options.get("pass-discard-request", self.discard_unmap):
            return False
        if not below:  # (qcow2's own choice: the nodes below take theirs as the requests reach them)
            return True
        node = self.file
        while node.driver == "blkdebug":
            below = node.child("image")
            if not node.discard_unmap or below is None:
                return False
            node = below
        return node.discard_unmap

    def _tables_used(self, offset: int, length: int) -> None:
        """The L2 tables of ``[offset, offset + length)`` looked up while no blkdebug rule below watched: QEMU has
        them in its cache from now on (no ``l2_load`` for them later)."""
        file = self.child("file")
        layout = self.image._layout
        if file is not None and file.driver == "blkdebug" and layout is not None and length > 0:
            cs = self.image.cluster_size
            layout.tables_used(offset // cs, -(-(offset + length) // cs))

    def _cow_ranges(self, offsets: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The host-side extent of data writes ``[offsets, ends)``: a partly written cluster that gets a
        host cluster now (none yet, or a zero cluster keeping one) is written whole (the zero or backing
        COW around the data: handle_alloc_space, perform_cow)."""
        cs = self.image.cluster_size
        g_s, g_v = self.image.layout.guest.runs()
        d_s, d_v = self.image.data.runs()

        def fresh(cluster: np.ndarray) -> np.ndarray:
            hosted = g_v[np.searchsorted(g_s, cluster, "right") - 1] != NONE
            zero_alloc = d_v[np.searchsorted(d_s, cluster * cs, "right") - 1] == ZERO_ALLOC
            return ~hosted | zero_alloc

        head, tail = offsets // cs, (ends - 1) // cs
        lo = np.where((offsets % cs != 0) & fresh(head), head * cs, offsets)
        hi = np.where((ends % cs != 0) & fresh(tail), (tail + 1) * cs, ends)
        return lo, hi

    def _write_data(self, offsets: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        """Data writes ``[offsets, ends)`` (one request, or a buffer's runs) reach the image: the file child's
        bitmaps are dirtied at their host offsets (newly allocated clusters whole), with the metadata writes
        they cause; over a blkdebug node whose rules may see them, step by step (:mod:`.qcow2_trace`)."""
        self._refuse_compressed(int(offsets[0]), int(ends[-1]), "a write")
        blk = qcow2_trace.tracer(self, qcow2_trace.WRITE_EVENTS)
        if blk is not None:
            qcow2_trace.run(self, blk, lambda: self._write_data(offsets, ends, values), int(ends[-1] - offsets[0]))
            return
        cs = self.image.cluster_size
        if (int(offsets[0]) | int(ends[-1])) % cs:
            # (a copy on write past the end of the disk, in its last partial cluster, is never zeroes)
            past_end = self.size % cs != 0 and int(ends[-1]) > self.size - self.size % cs
            if self._prealloc is None:
                self._cow_asks_status(offsets, ends)
            if self.backing is not None or past_end or self._compressed_at(int(offsets[0]), int(ends[-1])):
                self._note_cow(offsets, ends)  # (a compressed cluster's COW copies its data: perform_cow)
        if self.tracing:  # (one request, whatever runs its buffer holds: the layout marks its pieces)
            self.trace_requests.append((offsets, ends, values))
            layout, data = self.image.layout, self.image.data
            lo, hi = int(offsets[0]), int(ends[-1])
            layout.log.append(("req", lo, hi))
            layout._request(lo // layout.cs, -(-hi // layout.cs))
            watch, data.watch = data.watch, None  # (the layout has seen the request)
            try:
                data.write_batch(offsets, ends - offsets, values)
                data.runs()
            finally:
                data.watch = watch
            return
        self._tables_used(int(offsets[0]), int(ends[-1] - offsets[0]))
        with self._file_sees() as listen:
            if not listen:
                self.file.write_gen += 1  # (bdrv_co_write_req_finish: a blkdebug file's flush then reaches its rules)
                self._merge_writes(offsets, ends, values)
                return
            lo, hi = self._cow_ranges(offsets, ends)
            self._merge_writes(offsets, ends, values)
            layout = self.image.layout
            self.file.note_write(*layout.drain_written())  # the allocation's metadata goes first (l2_allocate)
            _, h, n = layout.host_pieces(lo, hi)
            self.file.note_write(h, n)

    def _merge_writes(self, offsets: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        """The data writes reach the image's content; a buffer's runs as one request (the layout merges them
        at once, apart from any other write)."""
        data = self.image.data
        if not self._one_buffer or offsets.size < 2:
            data.write_batch(offsets, ends - offsets, values)
            return
        layout = self.image.layout  # (the writes before merged first)
        layout.one_request = True
        try:
            data.write_batch(offsets, ends - offsets, values)
            data.runs()
        finally:
            layout.one_request = False

    def _cow_asks_status(self, offsets: np.ndarray, ends: np.ndarray) -> None:
        """A data write about to fill part of a cluster that gets a host cluster now asks block status of
        the copy on write around it (handle_alloc_space, is_zero_cow: bdrv_is_allocated_above), which checks
        the image as it is before the write (:meth:`_metadata_prealloc`)."""
        start, end = int(offsets[0]), int(ends[-1])
        lo, hi = self._cow_ranges(np.array([start]), np.array([end]))
        if int(lo[0]) != start or int(hi[0]) != end:
            self._metadata_prealloc()

    def _cluster_span(self, offset: int, length: int) -> tuple[int, int]:
        """``[offset, offset + length)`` widened to the whole clusters it touches (the disk's end cuts the last)."""
        cs = self.image.cluster_size
        return offset // cs * cs, max(offset + length, min(-(-(offset + length) // cs) * cs, self.size))

    def pread(self, offset, length):
        """A read request: qcow2_co_preadv_part's steps run through a blkdebug node below whose rules may see
        them (:func:`.qcow2_trace.read_items`); the backing file reads its holes."""
        blk = qcow2_trace.tracer(self, qcow2_trace.READ_EVENTS)
        if blk is not None:
            blk.run(qcow2_trace.read_items(self, offset, length))
        else:
            self._tables_used(offset, length)
            backing = self.backing
            if backing is not None:
                lo, hi = self._cluster_span(offset, length)
                starts, ends, vals = self.image.data.extents(lo, hi - lo)
                holes = vals == UNALLOCATED
                for s, e in zip(np.maximum(starts[holes], offset), np.minimum(ends[holes], offset + length)):
                    if s < min(e, backing.size):
                        backing.pread(int(s), int(min(e, backing.size) - s))
        return self.read_extents(offset, length)

    def block_status(self, offset, length):
        self._tables_used(offset, length)
        starts, ends, vals = self.image.data.extents(offset, length)
        is_data = vals >= 0
        backing = self.backing
        holes = vals == UNALLOCATED
        if backing is None or not holes.any():
            return starts, ends, is_data
        s, e, d = fill_holes(starts, ends, is_data.astype(np.int64), holes, backing.size,
                                       backing.block_status)
        return s, e, d.astype(bool)

    def copy_status(self, offset, length, recurse=True):
        """qcow2_co_block_status through the backing chain: a run of clusters of one kind is one extent
        (data: clusters holding any data; zero clusters; zero clusters keeping a host cluster; unallocated
        ones, which the backing file answers, zeroes past its end or without one). A data extent, and
        one of zero clusters keeping theirs, ends where its host clusters stop being contiguous in the file
        (count_contiguous_subclusters); any extent at the end of an L2 slice (qcow2_get_host_offset answers
        one slice: 2 MiB of 4 KiB clusters, 32 KiB of 512-byte ones; the backing file is asked no further).
        A range that starts or ends inside a cluster is answered for the whole cluster (a job cluster smaller
        than the image's: data written anywhere in a cluster makes all of it data), then cut to the range.
        If the image looks as if its metadata were preallocated (:meth:`_metadata_prealloc`), the file answers
        for the data extents (``recurse``; not for qcow2's copy_range, which reads the L2 tables only)."""
        out = self._status_runs(offset, length, recurse)
        layout = self.image._layout
        if layout is not None and layout.any_compressed:
            out = self._compressed_apart(out, offset, offset + length)
        span = self.l2_slice
        return out if offset // span == (offset + length - 1) // span else _cut_runs(*out, span)

    def status_codes(self, offset, length):
        """:meth:`copy_status`'s answers with their DATA flag kept: a data piece the file answers as zeroes
        (BDRV_BLOCK_RECURSE, an image that looks preallocated) is data that reads as zeroes; holes are the backing
        file's answer (zeroes past its end or without one)."""
        return self._status_runs(offset, length, True, codes=True)

    def _compressed_apart(self, runs: tuple[np.ndarray, np.ndarray, np.ndarray], lo: int, hi: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Status runs cut at both ends of every compressed cluster: qcow2 answers for one at a time
        (count_contiguous_subclusters)."""
        cs = self.image.cluster_size
        c_s, c_e = self.image.layout.compressed_runs(lo // cs, -(-hi // cs))
        starts, ends, flags = runs
        if not c_s.size or not len(starts):
            return runs
        cuts = range_items(c_s, c_e - c_s + 1) * cs  # (each compressed cluster's start, and the end of a run)
        cuts = cuts[(cuts > starts[0]) & (cuts < ends[-1])]
        new = np.union1d(starts, cuts)
        owner = np.searchsorted(starts, new, "right") - 1
        return new, np.append(new[1:], ends[-1]), flags[owner]

    def _status_runs(self, offset: int, length: int, recurse: bool, codes: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`copy_status` before the cuts at L2 slices (``codes``: :meth:`status_codes`)."""
        lo, hi = self._cluster_span(offset, length)
        self._tables_used(lo, hi - lo)
        if (lo, hi) != (offset, offset + length):
            s, e, zero = self._status_runs(lo, hi - lo, recurse, codes)
            keep = (e > offset) & (s < offset + length)
            return np.maximum(s[keep], offset), np.minimum(e[keep], offset + length), zero[keep]
        split = recurse and (self._prealloc if self._prealloc is not None else self._metadata_prealloc())
        starts, ends, vals = self.image.data.extents(offset, length)
        few = None
        if starts.size <= FEW_EXTENTS and not split and not codes:
            few = self._copy_status_few(offset, offset + length, starts.tolist(), ends.tolist(), vals.tolist())
        return few if few is not None else self._copy_status_general(offset, length, starts, ends, vals, split,
                                                                     codes)

    def _metadata_prealloc(self) -> bool:
        """qcow2_detect_metadata_preallocation, as qcow2_co_block_status runs it the first time anything asks
        this node for block status (s->metadata_preallocation_checked): whether the image looks as if its
        metadata were preallocated (:func:`bitlab.block.hostfs.metadata_preallocated`); then block status asks
        the file about data clusters (BDRV_BLOCK_RECURSE) until the node is closed."""
        if self._prealloc is None:  # (over blkdebug, bdrv_get_allocated_file_size fails: -ENOTSUP, never detected)
            self._prealloc = self.file.driver != "blkdebug" and self.image.metadata_preallocated()
        return self._prealloc

    def _cow_zeroable(self, lo: int, hi: int) -> bool:
        """Whether a copy on write region ``[lo, hi)`` counts as zeroes for qcow2 (is_zero_cow: one answer of
        bdrv_is_allocated_above from this node down covers the whole region, and it is unallocated all the
        way down, or a zero cluster, or past the end of a shorter backing file), so that qcow2 zeroes the new
        clusters (file-posix: unwritten) instead of copying (written). A region reaching past this node's end
        (the tail of a disk's last, partial cluster) is not: the answer stops at the end (measured with strace on
        QEMU 7.2: such a write's cluster is written whole, zeroes included, not zeroed by fallocate)."""
        if hi > self.size:
            return False
        node, length = self, hi - lo
        while isinstance(node, Qcow2Node):
            if lo >= node.size:  # (zeroes past the end of a layer, answered for the whole request)
                return length == hi - lo
            kind, n = node._cluster_run(lo, min(length, node.size - lo))
            if kind != UNALLOCATED:
                return kind in (ZERO, ZERO_ALLOC) and n == hi - lo
            length = min(length, n)
            node = node.backing
        return node is None and length == hi - lo  # (a raw or other layer answers data)

    def _cluster_run(self, lo: int, length: int) -> tuple[int, int]:
        """qcow2_get_host_offset's run from ``lo``: the kind of its cluster (data as 0, ZERO, ZERO_ALLOC or
        UNALLOCATED), and how many bytes of ``[lo, lo + length)`` clusters of that kind cover in a row."""
        cs = self.image.cluster_size
        c0 = lo // cs
        s, e, v = self.image.data.extents(c0 * cs, -(-(lo + length) // cs) * cs - c0 * cs)
        first, last = s // cs - c0, -(-e // cs) - c0  # the clusters each run touches
        n = int(last[-1])
        kinds = np.full(n, UNALLOCATED, dtype=np.int64)
        for value in (ZERO_ALLOC, ZERO):  # (a cluster holds one kind of zeroes, or data, or nothing)
            hit = v == value
            kinds[touched_mask(first[hit], last[hit], n)] = value
        kinds[touched_mask(first[v >= 0], last[v >= 0], n)] = 0
        same = np.flatnonzero(kinds != kinds[0])
        end = (c0 + (int(same[0]) if same.size else n)) * cs
        return int(kinds[0]), min(end, lo + length) - lo

    def _note_cow(self, offsets: np.ndarray, ends: np.ndarray) -> None:
        """A data write over part of a cluster that gets a host cluster now: qcow2 zeroes the new clusters
        first unless the copy on write around the data finds the backing file's data (is_zero_cow), and then
        copies it, writing the head and tail clusters whole (``layout.cow_written``, for hostfs)."""
        start, end = int(offsets[0]), int(ends[-1])
        lo, hi = self._cow_ranges(np.array([start]), np.array([end]))
        lo, hi = int(lo[0]), int(hi[0])
        if lo == start and hi == end:
            return
        if not (self._cow_zeroable(lo, start) if lo < start else True) or \
                not (self._cow_zeroable(end, hi) if end < hi else True):
            cs = self.image.cluster_size  # (a cluster the write starts or ends in that had a host cluster: no COW)
            for c, copied in ((lo // cs, lo < start), ((hi - 1) // cs, hi > end)):
                if copied:
                    self.image.layout.cow_written.write(c, 1, hostfs.COPIED)

    def _file_answers(self, starts: np.ndarray, ends: np.ndarray, vals: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs of the image's content with its data runs cut where the file's answer (SEEK_DATA/SEEK_HOLE
        at their host offsets) ends: a piece where the file has a hole or unwritten blocks becomes _FILE_ZERO
        (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO, which block-copy takes for zeroes)."""
        layout = self.image.layout
        is_data = vals >= 0
        if layout.any_compressed and starts.size:  # (no BDRV_BLOCK_RECURSE for a compressed cluster: no host offset)
            starts, ends, vals = self._compressed_apart((starts, ends, vals), int(starts[0]), int(ends[-1]))
            cs = self.image.cluster_size
            c_s, c_e = layout.compressed_runs(int(starts[0]) // cs, -(-int(ends[-1]) // cs))
            j = np.searchsorted(c_s, starts // cs, "right") - 1
            compressed = (j >= 0) & (starts // cs < c_e[np.maximum(j, 0)]) if c_s.size else False
            is_data = (vals >= 0) & ~compressed
        data = np.flatnonzero(is_data)
        if not data.size:
            return starts, ends, vals
        idx, host, n = layout.host_pieces(starts[data], ends[data])
        first = np.ones(idx.size, dtype=bool)  # the first piece of each run
        first[1:] = idx[1:] != idx[:-1]
        before = np.cumsum(n) - n  # the guest offset of each piece: its run's start, plus the pieces before it
        g_start = starts[data][idx] + before - before[np.maximum.accumulate(np.where(first, np.arange(idx.size), 0))]
        ps, pe, zero, owner = hostfs.file_pieces(self.image.host_blocks(), host, host + n)
        g_s = g_start[owner] + ps - host[owner]
        g_e = g_s + (pe - ps)
        others = np.setdiff1d(np.arange(vals.size), data)
        out_s = np.concatenate((starts[others], g_s))
        order = np.argsort(out_s, kind="stable")
        out_e = np.concatenate((ends[others], g_e))
        out_v = np.concatenate((vals[others], np.where(zero, _FILE_ZERO, vals[data][idx][owner])))
        return out_s[order], out_e[order], out_v[order]

    def _copy_status_few(self, lo: int, hi: int, starts: list[int], ends: list[int],
                         vals: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """:meth:`_copy_status_general` step by step in plain ints, for the few runs ``starts/ends/vals`` of the
        range ``[lo, hi)`` (numpy's cost per call dwarfs the work then). None where the backing file would
        answer (holes under a backing file): ask the general path."""
        cs = self.image.cluster_size
        data = [v >= 0 for v in vals]
        if any(data):
            if not all(s % cs == 0 and (e % cs == 0 or e == hi) for s, e, d in zip(starts, ends, data) if d):
                # a cluster holding any data is a data cluster: whole clusters, merged (touching ones too)
                merged: list[list[int]] = []
                for s, e, d in zip(starts, ends, data):
                    if not d:
                        continue
                    first, last = s // cs, (e - 1) // cs
                    if merged and first <= merged[-1][1] + 1:
                        merged[-1][1] = max(merged[-1][1], last)
                    else:
                        merged.append([first, last])
                d_s = [max(first * cs, lo) for first, _ in merged]
                d_e = [min((last + 1) * cs, hi) for _, last in merged]
                pieces = [(s, e, 0) for s, e in zip(d_s, d_e)]
                others = [(s, e, v) for s, e, v, d in zip(starts, ends, vals, data) if not d]
                for g_s, g_e in zip([lo] + d_e, d_s + [hi]):  # the gaps between: the other runs, clipped
                    if g_e > g_s:
                        pieces += [(max(s, g_s), min(e, g_e), v) for s, e, v in others if e > g_s and s < g_e]
                pieces.sort()
                starts, ends, vals = [p[0] for p in pieces], [p[1] for p in pieces], [p[2] for p in pieces]
            else:  # whole clusters already: neighbouring data runs are one extent
                key = [0 if d else v for v, d in zip(vals, data)]
                new = [k for k in range(len(key)) if k == 0 or key[k] != key[k - 1]]
                starts = [starts[k] for k in new]
                ends = [ends[k - 1] for k in new[1:]] + [ends[-1]]
                vals = [key[k] for k in new]
        if any(data) or ZERO_ALLOC in vals:
            # an extent of data or of zero clusters keeping theirs is one stretch of contiguous host clusters
            # (qcow2_get_host_offset: count_contiguous_subclusters checks the offsets of both kinds)
            g_s, g_v = self.image.layout.guest.runs()
            a, b = int(g_s.searchsorted(lo // cs, "right")), int(g_s.searchsorted(-(-hi // cs), "left"))
            if b > a:
                run_s, run_v = g_s[a - 1:b].tolist(), g_v[a - 1:b].tolist()
                cuts = [run_s[k] * cs for k in range(1, len(run_s)) if run_v[k - 1] != NONE and run_v[k] != NONE]
                kept = []
                for cut in cuts:
                    j = bisect_right(starts, cut) - 1
                    if (vals[j] >= 0 or vals[j] == ZERO_ALLOC) and starts[j] != cut:
                        kept.append((cut, vals[j]))
                if kept:
                    pieces = sorted(list(zip(starts, vals)) + kept, key=lambda p: p[0])
                    starts, vals = [p[0] for p in pieces], [p[1] for p in pieces]
                    ends = starts[1:] + [ends[-1]]
        if self.backing is not None and UNALLOCATED in vals:
            return None
        return (np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64),
                np.array([v < 0 for v in vals], dtype=bool))

    def _copy_status_general(self, offset: int, length: int, starts: np.ndarray, ends: np.ndarray,
                             vals: np.ndarray, split: bool = False, codes: bool = False
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`copy_status` of the image's runs ``starts/ends/vals`` over the range, vectorised (``split``:
        the file answers for the data extents; ``codes``: :meth:`status_codes`' answer)."""
        cs = self.image.cluster_size
        lo, hi = offset, offset + length
        data = vals >= 0
        if data.any() and not ((starts[data] % cs == 0) & ((ends[data] % cs == 0) | (ends[data] == hi))).all():
            # a cluster holding any data is a data cluster: whole clusters, merged
            first, last = merge_ranges(starts[data] // cs, (ends[data] - 1) // cs)
            d_s, d_e = np.maximum(first * cs, lo), np.minimum((last + 1) * cs, hi)
            gap_s = np.concatenate(([lo], d_e))
            gap_e = np.concatenate((d_s, [hi]))
            keep = gap_e > gap_s
            z_s, z_e, z_v, _ = clip_runs(starts[~data], ends[~data], vals[~data], gap_s[keep], gap_e[keep])
            starts = np.concatenate((d_s, z_s))
            order = np.argsort(starts, kind="stable")
            starts = starts[order]
            ends = np.concatenate((d_e, z_e))[order]
            vals = np.concatenate((np.zeros(d_s.size, dtype=np.int64), z_v))[order]
        elif data.any():  # whole clusters already: neighbouring data runs are one extent
            key = np.where(data, 0, vals)
            new = np.ones(key.size, dtype=bool)
            new[1:] = key[1:] != key[:-1]
            last = np.append(np.flatnonzero(new)[1:] - 1, key.size - 1)
            starts, ends, vals = starts[new], ends[last], key[new]
        hosted = (vals >= 0) | (vals == ZERO_ALLOC)
        if hosted.any():  # an extent of data or of zero clusters keeping theirs is one stretch of contiguous
            # host clusters (qcow2_get_host_offset: count_contiguous_subclusters checks both kinds' offsets)
            g_s, g_v = self.image.layout.guest.runs()
            a, b = int(g_s.searchsorted(lo // cs, "right")), int(g_s.searchsorted(-(-hi // cs), "left"))
            # where the host offset jumps between two clusters that have host clusters
            both = (g_v[a - 1:b - 1] != NONE) & (g_v[a:b] != NONE)
            cuts = g_s[a:b][both] * cs
            j = np.searchsorted(starts, cuts, "right") - 1
            cuts = cuts[hosted[j] & (starts[j] != cuts)]
            if cuts.size:
                at = np.searchsorted(starts, cuts)
                vals = np.insert(vals, at, vals[at - 1])
                starts = np.insert(starts, at, cuts)
                ends = np.append(starts[1:], ends[-1])
        if split:
            starts, ends, vals = self._file_answers(starts, ends, vals)
        if codes:
            code = np.select([vals >= 0, vals == _FILE_ZERO], [STATUS_DATA, STATUS_DATA_ZERO], STATUS_ZERO)
            backing = self.backing
            holes = vals == UNALLOCATED
            if backing is None or not holes.any():
                return starts, ends, code
            return fill_holes(starts, ends, code, holes, backing.size, backing.status_codes)
        is_data = (vals >= 0).astype(np.int64)
        holes = vals == UNALLOCATED
        backing = self.backing
        if backing is None or not holes.any():
            return starts, ends, is_data == 0

        def backing_status(off: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            s, e, zero = backing.copy_status(off, n)
            return s, e, (~zero).astype(np.int64)

        s, e, d = fill_holes(starts, ends, is_data, holes, backing.size, backing_status)
        return s, e, d == 0

    def is_allocated(self, offset, length):
        """Whole clusters, as the L2 table maps them: a cluster holding data or zeroes is allocated in
        this layer even where only some of its bytes were written through this node (qcow2 copied the
        rest from the backing file). Maximal runs."""
        self._metadata_prealloc()  # (bdrv_is_allocated asks qcow2 for block status)
        cs, end = self.image.cluster_size, offset + length
        lo, hi = offset // cs * cs, min(-(-end // cs) * cs, self.image.data.size)
        starts, ends, vals = self.image.data.extents(lo, max(hi - lo, 0))
        mapped = vals != UNALLOCATED
        first, last = starts[mapped] // cs * cs, -(-ends[mapped] // cs) * cs
        if first.size:  # clusters touched by data or zeroes, overlapping stretches joined
            new = np.ones(first.size, dtype=bool)
            new[1:] = first[1:] > np.maximum.accumulate(last)[:-1]
            first, last = first[new], np.maximum.reduceat(last, np.flatnonzero(new))
        first, last = np.clip(first, offset, end), np.clip(last, offset, end)
        bounds = np.concatenate(([offset], np.column_stack((first, last)).ravel(), [end]))
        s, e = bounds[:-1], bounds[1:]
        flags = np.zeros(s.size, dtype=bool)
        flags[1::2] = True
        keep = e > s
        return s[keep], e[keep], flags[keep]

    def _flush_to_os(self):
        """qcow2_co_flush_to_os writes back the L2 table and refcount block caches."""
        blk = qcow2_trace.tracer(self, qcow2_trace.FLUSH_EVENTS)
        if blk is not None and self.image._layout is not None:
            qcow2_trace.write_back(self, blk)
        else:
            self.write_back()

    def _truncate(self, size, prealloc="off"):
        """qcow2_co_truncate (``prealloc``: qemu-img resize --preallocation, :meth:`_new_length`). Shrinking
        discards the clusters past the new end (an L2 table where none was, as qcow2_cluster_discard does), frees
        the L2 tables the L1 table no longer needs, writes the caches and the refcount table, and cuts the file
        after its last cluster in use; a data cluster it cuts keeps its bytes past the end
        (:meth:`ImageFile.keep_tail`). Growing makes the L1 table larger if it must (a new table elsewhere), shows
        the rest of the old last cluster as that cluster reads (:meth:`ImageFile.expose_tail`) and, where the
        backing file is longer than the old disk, writes zeroes into the new stretch (:meth:`_zero_grown`; a v2
        image fails there). The header's size field is written, then both caches (qcow2_update_options renews
        them: the L2 table cache flushed, then the refcount block cache), so a reader of the file (``qemu-img -U``)
        sees every table after a resize."""
        if size % 512:
            raise generic("The new size must be a multiple of 512")
        if size < self.image.size:
            self._refuse_compressed(size, self.image.size, "shrinking")
        if self.image.bitmaps:  # (qcow2_truncate_bitmaps_check reads the bitmap directory)
            qcow2_trace.directory_read(self)
        blk = qcow2_trace.tracer(self, qcow2_trace.RESIZE_EVENTS)
        if blk is not None:
            raise generic(f"bitlab does not simulate the blkdebug events and requests of a qcow2 resize "
                          f"(blkdebug '{blk.node_name}')")
        image, cs = self.image, self.image.cluster_size
        for stored in image.bitmaps:  # qcow2_truncate_bitmaps_check, in the bitmap directory's order
            loaded = next((bm for bm in self.bitmaps if bm.name == stored.name), None)
            if loaded is None:
                raise generic("Cannot resize qcow2 with persistent bitmaps that were not loaded")
            check_bitmap(loaded, DEFAULT)
        old = image.size
        if prealloc != "off":
            self._prealloc_checks(old, size, prealloc)
        layout = image.layout
        backing = self.backing
        zeroes = size > old and backing is not None and backing.size > old  # BDRV_REQ_ZERO_WRITE
        fails = zeroes and image.compat == "0.10" and size > -(-old // cs) * cs  # (v2 has no zero clusters)
        with self._file_sees(always=True, frees=True) as listen:
            if size < old:
                image.keep_tail(size)
                keep, old_end = -(-size // cs) * cs, -(-old // cs) * cs
                if keep < old_end:
                    image.discard_clusters(keep, old_end)
                    image.data.write(keep, old - keep, UNALLOCATED)
                    layout = image.layout  # (the write merged before the L1 table shrinks)
                    if listen:  # qcow2_cluster_discard's writes (a dependency's flush, a new L2 table), its discards
                        self._tell_file(always=True)
                layout.shrink_l1(layout.l1_needed(size))
                layout.shrink_reftable()  # (the caches are written at the end: a refcount block dropped here never is)
            elif size > old and layout.l1_needed(size) > layout.l1_entries:
                if 8 * layout.l1_needed(size) > QCOW_MAX_L1_SIZE:
                    raise generic("Failed to grow the L1 table: File too large")
                layout.grow_l1(layout.l1_needed(size))
            if not fails:
                self._new_length(old, size, zeroes, listen, prealloc)
                image.layout.caches_renewed()
        if fails:  # (the L1 table grew first)
            raise generic("Failed to zero out new clusters: Operation not supported")
        if size < old:  # the file was cut: its node (and any filter over it) takes the new length
            node = self.file
            while node is not None:
                node.bitmaps_follow()
                node = node.child("image") if node.driver == "blkdebug" else None

    def _new_length(self, old: int, size: int, zeroes: bool, listen: bool, prealloc: str = "off") -> None:
        """The end of :meth:`_truncate` from ``old`` to ``size``: the content takes the new length (a grow shows
        the rest of the old last cluster, with ``zeroes`` writes zeroes; with ``prealloc`` the new clusters are
        preallocated), the header's size field is written (seen by the file node where ``listen``: it hears
        writes), and a shrink cuts the file."""
        image, cs = self.image, self.image.cluster_size
        image.data.resize(size)
        image.size = size
        if size < old:
            self._keep_last_cluster(size)
        elif prealloc in ("falloc", "full"):
            image.preallocate_data(prealloc, old)
            wstats.grew_by_truncate(self.file)
        elif prealloc == "metadata":
            image.preallocate_metadata(old)
            wstats.grew_by_truncate(self.file)
        elif size > old:
            image.expose_tail(old)
        if zeroes:
            self._zero_grown(old, size)
        table, clusters = image.layout.reftable  # (a shrink rewrites the refcount table first: qcow2_shrink_reftable)
        header = ((np.array([table * cs, 24]), np.array([clusters * cs, 8])) if size < old
                  else (np.array([24]), np.array([8])))
        if listen:  # (before it: a shrink's caches written (qcow2_shrink_reftable), a grow's new L1 table)
            self.file.note_write(*image.layout.drain_written())
            self.file.note_write(*header)  # (shrinking: the refcount table rewritten first)
        else:
            wstats.note_unheard(self.file, header)
        if size < old:
            wstats.cut_file(self.file, image.layout.truncate_file)

    def _prealloc_checks(self, old: int, size: int, prealloc: str) -> None:
        """qcow2_co_truncate's for a preallocating truncate (qemu-img resize ``--preallocation``), and what bitlab
        does not simulate of it: an image with a backing file (the old last cluster's copy on write would copy the
        backing file's bytes; a longer backing file zeroes the new stretch, BDRV_REQ_ZERO_WRITE), an old last
        cluster that is compressed."""
        if size < old:
            raise generic("Preallocation can't be used for shrinking an image")
        if self.backing is not None or self.image.backing_file:
            raise generic("bitlab does not simulate resizing a qcow2 node with a backing file with preallocation")
        cs = self.image.cluster_size
        if self._compressed_at(old // cs * cs, old):
            raise generic("bitlab does not simulate resizing a qcow2 node with preallocation from inside a "
                          "compressed cluster")

    def _zero_grown(self, old: int, size: int) -> None:
        """qcow2_co_truncate with BDRV_REQ_ZERO_WRITE (the backing file is longer than the old disk): the new
        clusters become zero clusters, then the rest of the old last cluster is written as zero bytes (a data
        write, which gives that cluster a host cluster if it had none). Nobody's bitmaps are dirtied."""
        cs = self.image.cluster_size
        start = min(-(-old // cs) * cs, size)
        if size > start:
            self._zero_clusters(start, size)
        if start > old:
            self._write_data(np.array([old]), np.array([start]), np.array([0]))

    def _keep_last_cluster(self, size: int) -> None:
        """A shrink keeps the host cluster of a last cluster the new end cuts, though the data written into it may
        lie past the end: what is left of it inside the disk is data (the zeroes of its COW; without a backing
        file, which the COW would have copied instead), as ``qemu-img map`` shows."""
        image, cs = self.image, self.image.cluster_size
        tail = size // cs * cs
        if size == tail or self.backing is not None or not image.layout.hosted(tail // cs, tail // cs + 1)[0].size:
            return
        starts, ends, vals = image.data.extents(tail, size - tail)
        holes = vals == UNALLOCATED
        if holes.any():
            image.data.write_batch(starts[holes], (ends - starts)[holes], 0)

    def close_flush(self) -> None:
        """bdrv_close: the node is flushed (a failure goes unreported), then qcow2_inactivate flushes the
        caches once more; over a blkdebug node whose rules may see it, with their events and requests."""
        if self.image._layout is not None and self.image.layout.stale_l1:
            self.image.unknown = (f"bitlab does not know what QEMU 7.2 left in '{self.image.name}': node "
                                  f"'{self.node_name}' failed to flush an L1 table entry it wrote, and the entry "
                                  "points at an L2 table that was freed again")
        blk = qcow2_trace.tracer(self, qcow2_trace.FLUSH_EVENTS | {"flush_to_os", "flush_to_disk"})
        if blk is None or self.read_only or self.image._layout is None:
            self.write_back()
            return
        try:
            self.flush()
        except BlockIOError:
            pass
        try:
            qcow2_trace.write_back(self, blk)
        except BlockIOError:  # (QEMU leaves the file without metadata bitlab keeps: nobody may use it now)
            self.image.unknown = (f"bitlab does not know what QEMU 7.2 left in '{self.image.name}': its qcow2 "
                                  f"metadata could not be written back when node '{self.node_name}' closed "
                                  f"(blkdebug '{blk.node_name}')")

    def write_back(self) -> None:
        """The caches' dirty L2 tables and refcount blocks are written (a flush, or closing the node)."""
        if self.image._layout is None or self.child("file") is None:  # (nothing dirty is known; no file yet)
            return
        with self._file_sees():
            self.image.layout.flush()

    def _store_batch(self, offsets, lengths, values):
        if not len(offsets):
            return
        offsets = np.asarray(offsets, dtype=np.int64)
        values = np.broadcast_to(np.asarray(values, dtype=np.int64), offsets.shape)
        self._write_data(offsets, offsets + np.asarray(lengths, dtype=np.int64), values)

    def _whole_clusters(self, offset: int, length: int) -> tuple[int, int]:
        cs = self.image.cluster_size
        start = -(-offset // cs) * cs
        end = (offset + length) // cs * cs
        if offset + length >= self.size:
            end = -(-self.size // cs) * cs
        return start, max(start, end)

    def write_zeroes(self, offset, length, unmap=False):
        self._refuse_compressed(offset, offset + length, "a zero write")
        blk = qcow2_trace.tracer(self, qcow2_trace.WRITE_EVENTS, flushed=True)
        if blk is not None:
            self._dirty(offset, length)
            # (v2 has no zero clusters: without a backing file qcow2 discards, table by table too; with one the
            # block layer writes zeroes instead)
            by_table = self.image.compat != "0.10" or self.backing is None
            # bdrv_co_do_pwrite_zeroes: each piece (head, whole clusters, tail) a request of its own, the next only
            # once it succeeded (a failed fallback write of the head's zero bytes stops it)
            for lo, hi in self._zero_pieces(offset, length) if by_table else [(offset, offset + length)]:
                qcow2_trace.run(self, blk, lambda lo=lo, hi=hi: self._store_zeroes(lo, hi - lo, unmap), hi - lo,
                                frees=True, done=(lo, lambda upto, lo=lo: self._store_zeroes(lo, upto - lo, unmap))
                                if by_table else None)
            return
        self._tables_used(offset, length)
        with self._file_sees(frees=True):
            super().write_zeroes(offset, length, unmap)

    def discard(self, offset, length):
        if self.discard_unmap:
            self._refuse_compressed(offset, offset + length, "a discard")
        blk = qcow2_trace.tracer(self, qcow2_trace.WRITE_EVENTS, flushed=True) if self.discard_unmap else None
        if blk is not None:
            self._dirty(offset, length, discard=True)
            qcow2_trace.run(self, blk, lambda: self._unmap(offset, length), length, frees=True,
                            done=(offset, lambda upto: self._unmap(offset, upto - offset)))
            return
        self._tables_used(offset, length)
        with self._file_sees(frees=True):
            super().discard(offset, length)

    def write_zeroes_batch(self, offsets, lengths, unmap=False):
        if len(offsets):
            self._refuse_compressed(int(np.min(offsets)), int(np.max(np.asarray(offsets) + np.asarray(lengths))),
                                    "a zero write")
        blk = qcow2_trace.tracer(self, qcow2_trace.WRITE_EVENTS, flushed=True)
        if blk is not None:  # (one request after another)
            for off, ln in zip(np.asarray(offsets).tolist(), np.asarray(lengths).tolist()):
                self.write_zeroes(off, ln, unmap)
            return
        if len(offsets) and self.file.driver == "blkdebug":  # (what _tables_used looks at first)
            lo = int(np.min(offsets))
            self._tables_used(lo, int(np.max(np.asarray(offsets) + np.asarray(lengths))) - lo)
        with self._file_sees(frees=True):
            self._write_zeroes_batch(offsets, lengths, unmap)

    def _write_zeroes_batch(self, offsets, lengths, unmap=False):
        """:meth:`_store_zeroes` for many ranges (that must not overlap): whole clusters that hold
        nothing (or anything, with ``unmap``) become zero clusters in one extent-map batch, other
        ranges go one by one."""
        offsets = np.asarray(offsets, dtype=np.int64)
        ends = offsets + np.asarray(lengths, dtype=np.int64)
        if not (offsets[1:] >= offsets[:-1]).all():  # (in ascending order, the usual case, nothing to sort)
            order = np.argsort(offsets, kind="stable")
            overlap = np.any(ends[order[:-1]] > offsets[order[1:]])
        else:
            overlap = np.any(ends[:-1] > offsets[1:])
        if overlap or self.image.compat == "0.10":  # (v2: no zero clusters) range by range
            super().write_zeroes_batch(offsets, ends - offsets, unmap)
            return
        self._dirty_batch(offsets, ends - offsets)
        cs = self.image.cluster_size
        whole = (offsets % cs == 0) & ((ends % cs == 0) | (ends >= self.size)) & (ends > offsets)
        if whole.any() and not unmap:  # whole clusters holding nothing simply become zero clusters
            index = np.flatnonzero(whole)
            whole[index[self.image.data.any_in(offsets[index], ends[index], _held)]] = False
        plain = np.flatnonzero(whole)  # with unmap, every whole cluster drops its host cluster
        if plain.size:
            self.image.data.write_batch(offsets[plain], ends[plain] - offsets[plain], ZERO)
        for off, end in zip(offsets[~whole].tolist(), ends[~whole].tolist()):
            if end > off:
                self._store_zeroes(off, end - off, unmap)

    def _store_zeroes(self, offset, length, unmap=False):
        """qcow2_co_pwrite_zeroes: whole clusters become zero clusters (no data). A partly covered
        cluster that already reads as zeroes becomes a zero cluster too; otherwise its part is
        written as zero bytes (the generic fallback). A zero cluster keeps the host cluster it had
        unless ``unmap`` (BDRV_REQ_MAY_UNMAP: zero_in_l2_slice frees it). A v2 image has no zero
        clusters: without a backing file its clusters are unallocated instead, with one the zeroes
        are written as data."""
        if self.image.compat == "0.10" and self.backing is not None:
            self._write_data(np.array([offset]), np.array([offset + length]), np.array([0]))
            return
        cs = self.image.cluster_size
        for lo, hi in self._zero_pieces(offset, length):
            if lo % cs == 0 and (hi % cs == 0 or hi >= self.size) and hi - lo >= cs:
                self._zero_clusters(lo, hi, unmap)
            else:
                self._zero_part(lo, hi, unmap)

    def _zero_pieces(self, offset: int, length: int) -> list[tuple[int, int]]:
        """The pieces bdrv_co_do_pwrite_zeroes splits a zero write into, in order: head, whole clusters, tail (one
        or two partial clusters), empty ones left out."""
        cs = self.image.cluster_size
        end = offset + length
        start, stop = self._whole_clusters(offset, length)
        if stop > start:
            pieces = [(offset, start), (start, stop), (stop, end)]
        else:
            boundary = min((offset // cs + 1) * cs, end)
            pieces = [(offset, boundary), (boundary, end)]
        return [(lo, hi) for lo, hi in pieces if hi > lo]

    def _zero_part(self, lo: int, hi: int, unmap: bool) -> None:
        """Zeroes over part ``[lo, hi)`` of one cluster: a zero cluster if it may be one, else zero bytes."""
        zero = ZERO if self.image.compat != "0.10" else UNALLOCATED
        cs = self.image.cluster_size
        c_start = lo // cs * cs
        c_end = min(c_start + cs, self.size)
        if lo == c_start and hi >= c_end:
            self._zero_clusters(c_start, c_end, unmap)
        elif self._zero_cluster_possible(c_start, c_end, lo, hi):
            hosted = zero == ZERO and not unmap and self.image.data.value_at(c_start) == ZERO_ALLOC
            self.image.data.write(c_start, c_end - c_start, ZERO_ALLOC if hosted else zero)
        else:  # the generic fallback: a write of zero bytes
            self._write_data(np.array([lo]), np.array([hi]), np.array([0]))

    def _zero_clusters(self, start: int, end: int, unmap: bool = False) -> None:
        """Whole clusters become zero clusters; those holding a host cluster keep it unless ``unmap``.
        In a v2 image (no backing file here) they are unallocated."""
        if self.image.compat == "0.10":
            self.image.data.write(start, end - start, UNALLOCATED)
            return
        if unmap:
            self.image.data.write(start, end - start, ZERO)
            return
        cs = self.image.cluster_size
        starts, ends, vals = self.image.data.extents(start, end - start)
        hosted = (vals >= 0) | (vals == ZERO_ALLOC)
        if hosted.any() and self._compressed_at(start, end):  # (zero_in_l2_slice unmaps compressed clusters always)
            c_s, c_e = self.image.layout.compressed_runs(start // cs, -(-end // cs))
            j = np.searchsorted(c_s, starts // cs, "right") - 1
            hosted &= ~((j >= 0) & (starts // cs < c_e[np.maximum(j, 0)]))  # (a data run lies in one cluster kind)
        if not hosted.any():
            self.image.data.write(start, end - start, ZERO)
            return
        # the clusters keeping their host cluster, and the zero clusters between: one request
        first, last = merge_ranges(starts[hosted] // cs, (ends[hosted] - 1) // cs)
        keep_s, keep_e = first * cs, np.minimum((last + 1) * cs, end)
        if (vals == PREALLOC).any():  # (preallocated clusters keep their holes: the file keeps its blocks)
            for a, b in zip(keep_s.tolist(), keep_e.tolist()):
                self.image.keep_host_blocks(a, b)
        gap_s, gap_e = np.append(start, keep_e), np.append(keep_s, end)
        offs = np.concatenate((keep_s, gap_s))
        lens = np.concatenate((keep_e - keep_s, gap_e - gap_s))
        vals = np.concatenate((np.full(keep_s.size, ZERO_ALLOC), np.full(gap_s.size, ZERO)))
        order = np.argsort(offs, kind="stable")
        self.image.data.write_batch(offs[order], lens[order], vals[order])

    def _zero_cluster_possible(self, c_start: int, c_end: int, lo: int, hi: int) -> bool:
        """qcow2_co_pwrite_zeroes on part ``[lo, hi)`` of one cluster: it becomes a zero cluster if it
        holds no data and the rest of it (head and tail) already reads as zeroes."""
        _, _, vals = self.image.data.extents(c_start, c_end - c_start)
        if (vals >= 0).any():  # (is_zero asks block status all the same: the head's, or else the tail's)
            if lo > c_start or hi < min(c_end, self.image.data.size):
                self._metadata_prealloc()
            return False
        return not self.status_data(c_start, lo) and not self.status_data(hi, c_end)

    def status_data(self, start: int, end: int) -> bool:
        """Whether block status reports data anywhere in ``[start, end)``, as qcow2 answers it: for
        whole clusters (a cluster holding any data is data), unallocated ones from the backing file."""
        end = min(end, self.image.data.size)
        if end <= start:
            return False
        self._metadata_prealloc()  # (is_zero asks block status)
        cs = self.image.cluster_size
        lo, hi = start // cs * cs, min(-(-end // cs) * cs, self.image.data.size)
        starts, ends, vals = self.image.data.extents(lo, hi - lo)
        if (vals >= 0).any():
            return True
        backing = self.backing
        if backing is None:
            return False
        holes = vals == UNALLOCATED  # whole clusters here: writes that leave part of a cluster are data
        for s, e in zip(np.maximum(starts[holes], start).tolist(), np.minimum(ends[holes], end).tolist()):
            if s >= min(e, backing.size):
                continue
            if isinstance(backing, Qcow2Node):
                if backing.status_data(s, min(e, backing.size)):
                    return True
            elif backing.block_status(s, min(e, backing.size) - s)[2].any():
                return True
        return False

    def _unmap(self, offset, length):
        # qcow2 discards whole clusters only (qcow2_cluster_discard, not a full discard): with a
        # backing file, or where the cluster was allocated, a v3 image keeps a zero cluster; an
        # unallocated cluster without backing stays so.
        start, end = self._whole_clusters(offset, length)
        if end <= start:
            return
        if self.image.compat != "0.10" or self.backing is None:
            cs = self.image.cluster_size
            last = self.size // cs * cs if self.size % cs else end  # a partial last cluster: a request of its own
            zero = "none" if self.image.compat == "0.10" else "all" if self.backing is not None else "hosted"
            for lo, hi in ((start, last), (last, end)) if start < last < end else ((start, end),):
                self.image.discard_clusters(lo, hi, zero)
        if self.image.compat == "0.10":  # no zero clusters in v2: with a backing file nothing happens
            if self.backing is None:
                self.image.data.write(start, end - start, UNALLOCATED)
        elif self.backing is not None:
            self.image.data.write(start, end - start, ZERO)
        else:
            cs = self.image.cluster_size
            starts, ends, vals = self.image.data.extents(start, end - start)
            held = vals != UNALLOCATED
            lo, hi = starts[held] // cs * cs, np.minimum(-(-ends[held] // cs) * cs, end)
            self.image.data.write_batch(lo, hi - lo, ZERO)
