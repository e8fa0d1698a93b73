"""The machine's virtual image store: the files qemu-img makes and blockdev-add opens."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bitarray import bitarray

from . import compress, hostfs, qcow2_disk
from .extents import PREALLOC, SMALL_RUNS, UNALLOCATED, ZERO, ZERO_ALLOC, ExtentMap
from .qcow2_host import NONE, USED, HostLayout

QCOW2_DEFAULT_CLUSTER = 65536
QCOW2_MAX_L1_ENTRIES = (32 << 20) // 8  # QCOW_MAX_L1_SIZE is 32 MiB of 8-byte entries
# An empty qcow2 file: header, L1 table, refcount table and one refcount block.
QCOW2_EMPTY_CLUSTERS = 3


@dataclass
class StoredBitmap:
    """A persistent bitmap as kept in a qcow2 file (its bitmap directory entry)."""

    name: str
    granularity: int
    bits: bitarray
    enabled: bool = True  # the "auto" flag
    in_use: bool = False  # set while an open image may change it; left set by a crash

    def anew(self) -> StoredBitmap:
        """The bitmap as an open image stores it again: a new entry (new clusters), not in use."""
        return StoredBitmap(self.name, self.granularity, self.bits.copy(), enabled=self.enabled)


def _directory_bytes(bitmaps: list[StoredBitmap]) -> int:
    """The size of a bitmap directory: each entry 24 bytes and its name, padded to 8 bytes."""
    return sum(-(-(24 + len(b.name.encode())) // 8) * 8 for b in bitmaps)


V2_BITMAPS_WARNING = ("warning: This qcow2 v2 image contains bitmaps, but they may have been modified by a program "
                      "without persistent bitmap support; so now they must all be considered inconsistent\nSome "
                      "clusters may be leaked, run 'qemu-img check -r' on the image file to fix.")
"""What qcow2 7.2 warns opening a v2 image with a bitmaps extension (error_printf: no newline at its end)."""


@dataclass
class ImageFile:
    """One file: raw bytes, or a qcow2 image with its virtual disk content and host layout."""

    name: str
    fmt: str  # "raw" or "qcow2"
    size: int  # virtual size (raw: file length)
    data: ExtentMap
    cluster_size: int = 0
    backing_file: str | None = None
    backing_fmt: str | None = None
    bitmaps: list[StoredBitmap] = field(default_factory=list)
    compat: str = "1.1"  # qcow2 version: "1.1" (v3) or "0.10" (v2)
    l1_padded: bool = False  # the L1 table fills whole clusters (a qcow2 file emptied by qemu-img commit)
    # what the host cluster of a data cluster a shrink cut holds past the disk's end (qcow2): runs (guest
    # offsets: starts, ends, values) from the end to the cluster's; see keep_tail
    tail: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)
    unknown: str | None = None  # why bitlab cannot tell what the file holds (it refuses to open it then)
    # a raw file's first block, which QEMU writes as it creates the file (allocate_first_block), is still written:
    # a zero write or discard over the whole of it (fallocate: unwritten or a hole) clears this
    first_block: bool = field(default=True, compare=False)
    # a raw file's blocks allocated without data (unwritten: a zero write's FALLOC_FL_ZERO_RANGE): a block map of
    # hostfs.UNWRITTEN runs over holes, None while there are none; a block holding data is written whatever it says
    unwritten: ExtentMap | None = field(default=None, repr=False, compare=False)
    # host clusters (runs: starts, ends) whose refcount the file holds though nothing references them: what a QEMU
    # killed with the image open left (see crash), until ``qemu-img check -r leaks`` frees them
    leaked: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)
    # the header of a v2 image keeps a bitmaps extension without the autoclear bit v2 has no room for (qemu-img
    # amend downgraded an image with persistent bitmaps): every open warns (V2_BITMAPS_WARNING) and loads none, a
    # read-write open rewrites the header without it; their clusters are leaked (see keep_v2_bitmaps)
    v2_bitmaps: bool = field(default=False, compare=False)
    _layout: HostLayout | None = field(default=None, init=False, repr=False, compare=False)
    _allocated: tuple | None = field(default=None, init=False, repr=False, compare=False)  # (key, allocated_size)

    def _bitmaps_stored(self, old: list[StoredBitmap], new: list[StoredBitmap]) -> None:
        """The bitmap directory was written (``new`` replaces ``old``): on a clean close every bitmap
        written anew in the new directory's order (qcow2_store_persistent_dirty_bitmaps: the loaded ones as
        the directory had them, then the new ones, newest first), or one removed; then the new directory,
        and the old clusters freed."""
        if not old and not new:
            return
        layout = self.layout
        layout.bitmaps_freed.clear()
        kept = {id(b) for b in old}
        for b in [b for b in new if id(b) not in kept]:
            layout.store_bitmap(b.name, *self._bitmap_clusters(b))
        names = {b.name for b in new}
        size = _directory_bytes(new)
        layout.store_directory(-(-size // self.cluster_size), size)
        for b in old:
            if b.name not in names:
                layout.drop_bitmap(b.name)

    def directory_range(self) -> tuple[int, int] | None:
        """Where the bitmap directory is in the file: (byte offset, bytes), None without one (qcow2)."""
        directory = self.layout.directory if self.is_qcow2 and self.bitmaps else None
        return None if directory is None else (directory[0] * self.cluster_size, _directory_bytes(self.bitmaps))

    def _bitmap_clusters(self, bitmap: StoredBitmap) -> tuple[np.ndarray, int]:
        """Which clusters of a bitmap's data hold a set bit, and its table's clusters."""
        cs = self.cluster_size
        raw = np.frombuffer(bitmap.bits.tobytes(), dtype=np.uint8)
        n = -(-raw.size // cs)
        padded = np.zeros(n * cs, dtype=np.uint8)
        padded[:raw.size] = raw
        return padded.reshape(n, cs).any(axis=1), -(-8 * n // cs)

    def __post_init__(self) -> None:
        if self.is_qcow2:
            starts, vals = self.data.runs()
            if starts.size == 1 and vals[0] == UNALLOCATED:  # a new image: follow its writes from the start
                self._follow(HostLayout(self.size, self.cluster_size))

    @property
    def is_qcow2(self) -> bool:
        return self.fmt == "qcow2"

    # -- the host layout ----------------------------------------------------------------------
    def _follow(self, layout: HostLayout) -> None:
        """The layout follows the content's merged writes. (The content map and the layout hold the image
        weakly: no reference cycle, so a store nobody holds is freed at once, without the garbage collector.)"""
        self._layout = layout
        self.data.watch = _Watcher(self)
        layout.on_unhost = _Unhosting(self)
        layout.read_content = _Content(self)

    def _unhosting(self, lo: int, hi: int) -> None:
        """Guest clusters ``[lo, hi)`` are about to lose their host clusters: the file keeps their blocks."""
        assert self._layout is not None
        hostfs.record(self._layout, self.data, lo, hi)

    def keep_host_blocks(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` (whole clusters) become zero clusters that keep their host clusters: the
        file keeps their blocks as they are."""
        if self.is_qcow2:
            cs = self.cluster_size
            hostfs.record(self.layout, self.data, start // cs, -(-end // cs))
            self.layout.fs_plain = False

    def zeroed(self, offset: int, length: int) -> None:
        """A raw file's ``[offset, offset + length)`` was zeroed by fallocate (a zero write or a discard that reached
        it): if that covers the whole first block, the block is no longer written."""
        if not self.is_qcow2 and offset <= 0 and offset + length >= min(hostfs.BLOCK, self.data.size):
            self.first_block = False

    def allocate_blocks(self, offsets: np.ndarray, ends: np.ndarray) -> None:
        """A raw file's byte ranges zeroed by ``fallocate(FALLOC_FL_ZERO_RANGE)``: every block they touch is
        allocated (unwritten where it holds no data: ext4 converts whole blocks, and allocates partial ones that
        were holes)."""
        if self.unwritten is None:
            self.unwritten = hostfs.new_fs()
        hostfs.mark(self.unwritten, offsets, ends - offsets, hostfs.UNWRITTEN)

    def free_blocks(self, offsets: np.ndarray, ends: np.ndarray) -> None:
        """A raw file's byte ranges punched (``FALLOC_FL_PUNCH_HOLE``, or cut off by a shrink): the blocks wholly
        inside them are holes again."""
        if self.unwritten is not None:
            hostfs.punch(self.unwritten, offsets, ends - offsets)

    def preallocate_metadata(self, old: int = 0) -> None:
        """preallocate_co from ``old`` bytes (0: a new qcow2 image, ``preallocation=metadata``; the content already at
        the new length): every cluster from there gets its L2 entry and a host cluster, as one request over them
        allocates them (each L2 table, then its clusters), and the file ends after the last; nothing is written
        into them (PREALLOC). The old last cluster, if it has a host cluster, is left as it is (it shows what it
        holds past ``old``); else it is allocated too, its part before ``old`` copied (perform_cow: what it read,
        written as data). A last cluster the disk ends inside has its part past the end written (perform_cow)."""
        cs, size = self.cluster_size, self.data.size
        head = old // cs * cs
        layout = self.layout
        runs = []
        if old > head:
            c = head // cs
            hs, _, _ = layout.hosted(c, c + 1)
            if hs.size and not layout.zero_flag.peek(c):  # (written in place: nothing to allocate there)
                self.expose_tail(old)
                old = min(head + cs, size)
            else:
                runs.append(self._copied_head(head, old))
        if size > old:
            runs.append((np.array([old]), np.array([size]), np.array([PREALLOC])))
        if not runs:
            return
        starts, ends, values = (np.concatenate(parts) for parts in zip(*runs))
        self.data.write_batch(starts, ends - starts, values)
        self.data.runs()
        layout = self.layout
        layout.fs_plain = False  # (its data clusters are not all allocated: the shortcuts do not hold)
        rest = size % cs
        if rest and size // cs * cs >= int(starts[0]):  # the last cluster, allocated here: its part past the disk's
            last = size // cs  # end is written (its copy on write, perform_cow)
            _, _, shift = layout.hosted(last, last + 1)
            hostfs.mark(layout.fs_blocks(), np.array([(last + int(shift[0])) * cs + rest]), np.array([cs - rest]))

    def preallocate_data(self, mode: str, old: int = 0) -> None:
        """qcow2_co_truncate from ``old`` bytes (the content already at the new length) with ``preallocation=falloc``
        or ``full``: every cluster from the one ``old`` lies in gets its L2 entry and a new host cluster
        (:meth:`HostLayout.preallocate`), the file allocating them (unwritten, or written with zeroes); nothing is
        written into them as qcow2 sees it (PREALLOC: they read zeroes), but for the part of the old last cluster
        before ``old``, which its copy on write copies (perform_cow: what it read, written as data)."""
        cs = self.cluster_size
        head = old // cs * cs
        layout = self.layout
        runs = [(np.array([old]), np.array([self.data.size]), np.array([PREALLOC]))] if self.data.size > old else []
        if old > head:
            if layout.hosted(head // cs, head // cs + 1)[0].size:  # (its host cluster is freed: the file keeps it)
                hostfs.record(layout, self.data, head // cs, head // cs + 1)
            runs.insert(0, self._copied_head(head, old))
        if runs:
            self._write_unwatched(*(np.concatenate(parts) for parts in zip(*runs)))
        self.tail = None
        layout.preallocate(head // cs, mode)

    def _copied_head(self, head: int, old: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A new host cluster's part ``[head, old)`` as its copy on write writes it (perform_cow): what the guest
        cluster read, as data (zeroes read from a hole, a zero cluster or a preallocated one: zero bytes)."""
        s, e, v = self.data.extents(head, old - head)
        return s, e, np.where((v < 0) | (v == PREALLOC), 0, v)

    def truncate_raw(self, size: int, prealloc: str = "off") -> None:
        """handle_aiocb_truncate: a raw file takes the length ``size``, its new stretch a hole (ftruncate),
        allocated unwritten (``falloc``: posix_fallocate) or written with zeroes (``full``); a file that was
        empty has its first block written (allocate_first_block). A shrink cuts the blocks past the end."""
        old = self.data.size
        self.data.resize(size)
        if size > old:
            self.data.write(old, size - old, ZERO_ALLOC if prealloc == "full" else 0)
            if prealloc == "falloc":
                self.allocate_blocks(np.array([old]), np.array([size]))
            if old == 0:
                self.first_block = True
        elif self.unwritten is not None:
            hostfs.cut(self.unwritten, size)
        self.size = size

    def host_blocks(self) -> hostfs.Runs:
        """The file's blocks (see :mod:`bitlab.block.hostfs`): runs (first block, end block, state)."""
        if not self.is_qcow2:
            return hostfs.raw_blocks(self.data, self.first_block, self.unwritten)
        return hostfs.qcow2_blocks(self.layout, self.data, self.file_length())

    def on_disk(self) -> ImageFile:
        """The image as its file describes it, for a reader without the running QEMU's cache (qemu-img ``-U``):
        the L2 tables QEMU changed and has not written back yet as it wrote them last
        (:mod:`bitlab.block.qcow2_disk`); itself where the file holds what the cache does."""
        if self._layout is None:
            return self
        layout = self.layout  # (pending writes merged first)
        found = qcow2_disk.on_disk(layout, self.data)
        if found is None:
            return self
        view = copy.copy(layout)
        view.guest, view.zero_flag, view.free = found.guest, found.zero, found.free
        view.on_unhost = view.read_content = None
        image = _OnDisk.__new__(_OnDisk)
        image.__dict__.update(self.__dict__, data=found.data, _layout=view, _allocated=None, live=self,
                              found=found)
        return image

    def refcount_errors(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Host clusters (runs) whose refcount the file has though nothing references them, and the other way
        round (qemu-img check's leaks and errors): those a killed QEMU left (:meth:`crash`), and in an image read
        as its file describes it while QEMU's caches hold more (:meth:`on_disk`)."""
        empty = (np.zeros(0, dtype=np.int64),) * 2
        return self.leaked or empty, empty

    def crash(self) -> None:
        """QEMU was killed with this image open: the file keeps what QEMU's caches had written back
        (:meth:`on_disk`: the L2 tables as last written, the refcount blocks likewise), the data written into the
        clusters it allocated since stays in the file's blocks, and the clusters whose refcount was written but
        not their link are leaked (qemu-img check: ``Leaked cluster``) until a repair frees them."""
        if not self.is_qcow2 or self._layout is None:
            return
        layout = self.layout
        found = qcow2_disk.on_disk(layout, self.data)
        if layout.stale_l1:  # (an L1 entry on disk points at an L2 table freed again: see Qcow2Node.close_flush)
            self.unknown = (f"bitlab does not know what QEMU 7.2 left in '{self.name}': it was killed with an L1 "
                            "table entry pointing at an L2 table that was freed again")
        if found is None:
            return
        if found.unreferenced[0].size:
            self.unknown = (f"bitlab does not know what QEMU 7.2 left in '{self.name}': it was killed with "
                            "references written whose refcounts were not")
        hostfs.record(layout, self.data, 0, layout.guest.size)  # (the blocks of the clusters their links lose stay)
        refcounts = found.free.copy()
        leaked = found.leaked
        if leaked[0].size:
            refcounts.write_batch(leaked[0], leaked[1] - leaked[0], USED)
            self.leaked = leaked if self.leaked is None else hostfs.union(np.concatenate((self.leaked[0], leaked[0])),
                                                                          np.concatenate((self.leaked[1], leaked[1])))
        self.data = found.data
        self.data.watch = _Watcher(self)
        layout.guest, layout.zero_flag, layout.free = found.guest, found.zero, refcounts
        layout.fs_plain = False
        layout.reopen()

    def keep_v2_bitmaps(self) -> None:
        """A v2 image closed with persistent bitmaps (a downgrade: qcow2_downgrade clears the autoclear bits, and
        the header written keeps the bitmaps extension): from now on a reader finds the extension but not the
        autoclear bit (qcow2_read_extensions), takes every bitmap for inconsistent and loads none, so nothing
        references their tables, data clusters and directory any more: leaked, until ``qemu-img check -r``."""
        layout = self.layout
        runs = [run for runs in layout.bitmap_clusters.values() for run in runs]
        runs += [layout.directory] if layout.directory is not None else []
        layout.bitmap_clusters.clear()
        layout.directory = None
        self.bitmaps = []
        self.v2_bitmaps = True
        if runs:
            starts = np.array([run[0] for run in runs], dtype=np.int64)
            ends = starts + np.array([run[1] for run in runs], dtype=np.int64)
            if self.leaked is not None:
                starts, ends = np.concatenate((self.leaked[0], starts)), np.concatenate((self.leaked[1], ends))
            self.leaked = hostfs.union(starts, ends)

    def opened(self, warn: Callable[[str, str], None] | None, writable: bool) -> bool:
        """qcow2 opens the image (qcow2_read_extensions): a v2 image's bitmaps extension warns (``warn``: the
        qemu-img run's stderr; QEMU's own otherwise, which bitlab does not keep), and a read-write open rewrites
        the header without it (qcow2_update_header: the whole first cluster); whether it did."""
        if not self.v2_bitmaps:
            return False
        if warn is not None:
            warn(self.name, V2_BITMAPS_WARNING)
        self.v2_bitmaps = not writable
        return writable

    def repair_leaks(self) -> int:
        """qemu-img check -r: the leaked clusters' refcounts set to 0 (update_refcount, QCOW2_DISCARD_ALWAYS: their
        discard punches holes, the file child inheriting BDRV_O_UNMAP); how many there were."""
        if self.leaked is None:
            return 0
        starts, ends = self.leaked
        self.leaked = None
        layout = self.layout
        layout.release(starts, ends)
        layout.punch(starts * self.cluster_size, (ends - starts) * self.cluster_size)
        return int((ends - starts).sum())

    def allocated_size(self) -> int:
        """What the file allocates on the host, ``st_blocks * 512`` (``actual-size``, ``disk size``)."""
        layout = self.layout if self.fmt == "qcow2" else None  # (is_qcow2, inline: a hot path)
        if layout is not None and layout.fs_plain:  # (what plain_allocation looks at)
            key: tuple = (self.data.version, layout.top, layout.grown, layout.l1_entries, layout)
        else:
            key = self.allocation_key()
        cached = self.__dict__.get("_allocated")
        if cached is not None and cached[0] == key:
            return cached[1]
        plain = None if layout is None else hostfs.plain_allocation(layout, self.data, self.file_length())
        size = hostfs.allocated_size(self.host_blocks()) if plain is None else plain
        object.__setattr__(self, "_allocated", (key, size))
        return size

    def allocation_key(self) -> tuple:
        """Changes whenever :meth:`allocated_size` (or the file's length) may: a write to the content, or to the
        file's block map (without merging pending writes). (The layout itself, compared by identity.)"""
        layout = self._layout
        if layout is None:
            return self.data.version, None if self.unwritten is None else self.unwritten.version
        return self.data.version, layout.fs.version, len(layout._fs_marks), layout

    def metadata_preallocated(self) -> bool:
        """Whether qcow2 takes this image for one with preallocated metadata (qcow2_detect_metadata_preallocation)."""
        if not self.is_qcow2:
            return False
        layout = self.layout
        if layout.fs_plain and layout.l1_clusters <= 1:
            return False  # (all but the L1 table's tail is allocated: real clusters reach the count, less one)
        return hostfs.metadata_preallocated(layout, self.file_length(), self.allocated_size())

    @property
    def layout(self) -> HostLayout:
        """Where the file's clusters are (qcow2), every write so far taken into account. An image
        made from content alone (a copy) gets its clusters laid out in ascending guest order."""
        data = self.data
        if data._po or data._log:  # writes still pending reach the layout first (ExtentMap.runs merges them)
            data.runs()
        if self._layout is None:
            starts, ends = self._hosted_clusters(0, self.data.size)
            layout = HostLayout.in_guest_order(self.size, self.cluster_size, starts, ends)
            self._zero_flags(layout)
            self._follow(layout)
        assert self._layout is not None
        return self._layout

    def _zero_flags(self, layout: HostLayout) -> None:
        """The layout's zero clusters, as the content has them: clusters reading as zeroes without data."""
        cs = self.cluster_size
        s, e, v = self.data.extents()
        zero, data = (v == ZERO) | (v == ZERO_ALLOC), v >= 0
        if zero.any():
            layout.zero_flag.write_batch(s[zero] // cs, -(-e[zero] // cs) - s[zero] // cs, 1)
            layout.zero_flag.write_batch(s[data] // cs, -(-e[data] // cs) - s[data] // cs, 0)

    def _hosted_clusters(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Runs of clusters (indices) of bytes ``[lo, hi)`` holding a host cluster by their content:
        data, or zeroes that kept their host cluster."""
        cs = self.cluster_size
        s, e, v = self.data.extents(lo, hi - lo)
        keep = (v >= 0) | (v == ZERO_ALLOC)
        if not keep.any():
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        first, last = s[keep] // cs, -(-e[keep] // cs)
        new = np.ones(first.size, dtype=bool)
        new[1:] = first[1:] > last[:-1]
        return first[new], np.maximum.reduceat(last, np.flatnonzero(new))

    def before_merge(self, offsets: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        """The content map merges writes: the layout allocates and frees for them, in order. A zero write or
        discard reaching the cluster whose tail is kept ends it (a zero cluster reads zeroes whole; a data write
        allocating it again fills its tail with the zeroes of its COW)."""
        if self.tail is not None:
            first = int(self.tail[0][0]) // self.cluster_size * self.cluster_size
            zeroing = values < 0
            if ((offsets[zeroing] < first + self.cluster_size) & (ends[zeroing] > first)).any():
                self.tail = None
        if self._layout is not None:
            self._layout.before_merge(offsets, ends, values)

    def after_merge(self, offsets: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        """Where zero writes landed, the layout holds host clusters exactly where the content says."""
        zeroing = values < 0
        if self._layout is None or not zeroing.any() or self._hosts_nothing():
            return
        cs = self.cluster_size
        c0, c1 = int(offsets[zeroing].min()) // cs, -(-int(ends[zeroing].max()) // cs)
        starts, stops = self._hosted_clusters(c0 * cs, min(c1 * cs, self.data.size))
        starts, stops = np.maximum(starts, c0), np.minimum(stops, c1)
        if self._layout.any_compressed:  # (a compressed cluster's data has no host cluster of its own)
            starts, stops = _minus(starts, stops, *self._layout.compressed_runs(c0, c1))
        self._layout.reconcile(c0, c1, starts, stops)

    def _hosts_nothing(self) -> bool:
        """Whether neither the layout nor the content (a few runs of it looked at) has a host cluster anywhere
        (so the layout holds them where the content says: a new image a backup zeroes, say)."""
        assert self._layout is not None
        _, hosted = self._layout.guest.runs()
        if hosted.size != 1 or hosted[0] != NONE:
            return False
        _, vals = self.data.runs()
        if vals.size > SMALL_RUNS:
            return False
        kinds = vals.tolist()
        return max(kinds) < 0 and ZERO_ALLOC not in kinds

    # -- compressed clusters ------------------------------------------------------------------------
    def write_compressed(self, clusters: np.ndarray, sizes: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                         values: np.ndarray) -> np.ndarray:
        """Guest ``clusters`` written compressed one after another (of ``sizes`` bytes: :meth:`compressed_sizes`),
        holding the runs ``[starts, ends)`` of byte ``values``: the layout's bytes for them, then the content (the
        layout has seen it). The caller has checked that none holds a host cluster and that each compresses.
        Returns their host byte offsets."""
        hosts = self.layout.write_compressed(clusters, sizes)
        self._write_unwatched(np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64),
                              np.asarray(values, dtype=np.int64))
        return hosts

    def compressed_sizes(self, clusters: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                         values: np.ndarray) -> np.ndarray:
        """What each of ``clusters`` holding these runs compresses to (:data:`.compress.NOT_COMPRESSIBLE` where it
        does not); ValueError for opaque tokens."""
        return compress.cluster_sizes(starts, ends, values, clusters, self.cluster_size)

    def has_compressed(self) -> bool:
        """Whether the image holds a compressed cluster (qcow2)."""
        layout = self._layout
        return layout is not None and layout.compressed_count() > 0

    # -- the bytes of the last cluster past the disk's end (qcow2) --------------------------------
    def _data_cluster(self, start: int, end: int) -> bool:
        """Whether the cluster of bytes ``[start, end)`` (inside the disk) holds data: it has a host cluster
        whose bytes it reads."""
        return bool((self.data.extents(start, end - start)[2] >= 0).any())

    def keep_tail(self, size: int) -> None:
        """A shrink to ``size`` (the content not cut yet): qcow2_co_truncate frees only the clusters wholly past
        the new end, so a data cluster it cuts keeps in its host cluster the bytes past the end, which a later
        grow shows again (:meth:`expose_tail`); the zeroes of its COW where nothing was written. The part that
        stays is that data cluster's too, even when all its data lies past the end (``qemu-img map``: data)."""
        cs, old = self.cluster_size, self.size
        start, end = size // cs * cs, -(-size // cs) * cs
        if size == end or not self._data_cluster(start, min(old, end)):
            self.tail = None
            return
        s, e, v = self.data.extents(start, size - start)
        if (v < 0).any():  # the part that stays is the data cluster's too, its data all past the end or not
            self._write_unwatched(s[v < 0], e[v < 0], np.zeros(int((v < 0).sum()), dtype=np.int64))
        s, e, v = self.data.extents(size, min(old, end) - size)
        runs = [(s, e, np.maximum(v, 0))]  # (holes, zero clusters' zeroes: zero bytes in a data cluster)
        if old < end:  # what this cluster kept past the old end
            runs.append(self.tail or (np.array([old]), np.array([end]), np.array([0])))
        self.tail = tuple(np.concatenate(parts) for parts in zip(*runs))  # type: ignore[assignment]

    def expose_tail(self, old: int) -> None:
        """A grow from ``old`` (the content already at the new length): the rest of the old last cluster reads
        as that cluster does, qcow2_co_truncate changing none: a zero cluster's zeroes, an unallocated cluster's
        holes, a data cluster's host bytes (those a shrink kept, else the zeroes of its COW). The layout has
        that cluster as it was (nothing is written)."""
        cs = self.cluster_size
        start, end = old // cs * cs, min(-(-old // cs) * cs, self.size)
        if end <= old:
            return
        _, _, kinds = self.data.extents(start, old - start)
        tail, self.tail = self.tail, None
        if (kinds >= 0).any():
            ts, te, tv = tail or (np.array([old]), np.array([-(-old // cs) * cs]), np.array([0]))
            if end < te[-1]:  # a grow inside the cluster: the rest stays kept
                keep = te > end
                self.tail = (np.maximum(ts[keep], end), te[keep], tv[keep])
            inside = ts < end
            runs = (ts[inside], np.minimum(te[inside], end), tv[inside])
        elif kinds[-1] in (ZERO, ZERO_ALLOC):  # (a zero cluster is one whole)
            runs = (np.array([old]), np.array([end]), kinds[-1:])
        else:
            return
        self._write_unwatched(*runs)

    def _write_unwatched(self, starts: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        """Content written without the layout hearing it (the clusters keep their host clusters as they are)."""
        watch, self.data.watch = self.data.watch, None
        self.data.write_batch(starts, ends - starts, values)
        self.data.runs()
        self.data.watch = watch

    def resized(self, size: int) -> None:
        if self._layout is not None:
            self._layout.resize(size)

    def reopened(self) -> None:
        """A qcow2 driver opens the file: free_cluster_index starts again from 0."""
        if self.is_qcow2:
            self.layout.reopen()

    def allocated_clusters(self) -> int:
        """Clusters of the virtual disk holding a host cluster in this file (qcow2): data, or
        zeroes written over data without unmapping it."""
        s, e, _ = self.layout.hosted()
        return int((e - s).sum())

    def l2_tables(self) -> int:
        """L2 tables in the file."""
        return self.layout.l2_count()

    def discard_clusters(self, start: int, end: int, zero: str = "none") -> None:
        """qcow2_cluster_discard over whole clusters ``[start, end)`` (bytes): table by table, an L2
        table where there is none, and the clusters' host clusters freed (``zero``: see HostLayout.discard).
        Call before writing the content it leaves."""
        if self.is_qcow2 and end > start:
            cs = self.cluster_size
            c0, c1 = start // cs, -(-end // cs)
            self.layout.discard(c0, c1, zero)

    def file_length(self) -> int:
        """Length of the host file in bytes (what the protocol node sees).

        A new qcow2 file is header, refcount table and refcount block (one cluster
        each) and the L1 table; it grows to hold the last host cluster ever allocated.
        """
        if self.fmt != "qcow2":  # (is_qcow2, inline: a hot path)
            return self.size
        layout = self.layout
        if layout.grown:
            return layout.partial_end or layout.top * self.cluster_size
        l1_bytes = 8 * layout.l1_entries
        cs = self.cluster_size
        length = QCOW2_EMPTY_CLUSTERS * cs + (-(-l1_bytes // cs) * cs if self.l1_padded else l1_bytes)
        return -(-length // 512) * 512 if layout.end_rounded else length

    def make_empty(self) -> None:
        """qcow2_make_empty, as qemu-img commit leaves the top image: nothing allocated. A v3 file
        without bitmaps is rewritten from scratch (header, refcounts, a whole-cluster L1 table);
        otherwise every cluster is discarded, L2 table by L2 table (which gives every stretch
        without one an L2 table), and the file keeps its length."""
        layout = self.layout
        self.tail = None
        if self.compat != "0.10" and not self.bitmaps:
            self.data.watch = None
            self.data.write(0, self.data.size, UNALLOCATED)
            self.data.runs()
            self.data.watch = _Watcher(self)
            layout.reset()
            self.l1_padded = True  # (make_completely_empty zeroes the L1 table's clusters)
            cs = self.cluster_size
            hostfs.mark(layout.fs_blocks(), np.array([layout.l1_offset]), np.array([layout.l1_clusters * cs]),
                        hostfs.UNWRITTEN)
            layout.fs_plain = False
            return
        self.discard_clusters(0, self.data.size)
        self.data.write(0, self.data.size, UNALLOCATED)


def _minus(starts: np.ndarray, ends: np.ndarray, cut_s: np.ndarray, cut_e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranges ``[starts, ends)`` (sorted, disjoint) without the ranges ``[cut_s, cut_e)`` (sorted, disjoint)."""
    if not cut_s.size or not starts.size:
        return starts, ends
    bounds = np.unique(np.concatenate((starts, ends, cut_s, cut_e)))
    seg = bounds[:-1]

    def inside(s: np.ndarray, e: np.ndarray) -> np.ndarray:
        j = np.searchsorted(s, seg, "right") - 1
        return (j >= 0) & (seg < e[np.maximum(j, 0)])

    keep = inside(starts, ends) & ~inside(cut_s, cut_e)
    s, e = seg[keep], bounds[1:][keep]
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] != e[:-1]
    last = np.append(np.flatnonzero(new)[1:] - 1, s.size - 1)
    return s[new], e[last] if s.size else e


class _StoredBitmaps:
    """``ImageFile.bitmaps``, a field whose assignment writes the bitmap directory: a descriptor with ``__set__``
    only, so reading it is reading the instance's own attribute (no call), and the other fields are plain
    attributes (set after the dataclass is made, which keeps the field)."""

    def __set__(self, image: ImageFile, value: list[StoredBitmap]) -> None:
        """A laid-out image stores the new directory (see :meth:`ImageFile._bitmaps_stored`)."""
        old = image.__dict__.get("bitmaps")
        image.__dict__["bitmaps"] = value
        if old is not None and image.__dict__.get("_layout") is not None:
            image._bitmaps_stored(old, value)


ImageFile.bitmaps = _StoredBitmaps()  # type: ignore[assignment]


class _OnDisk(ImageFile):
    """An image as its file describes it (:meth:`ImageFile.on_disk`), read-only: the file's own blocks and length
    are the live image's."""

    live: ImageFile
    found: qcow2_disk.OnDisk

    def refcount_errors(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return self.found.leaked, self.found.unreferenced

    def host_blocks(self) -> hostfs.Runs:
        return self.live.host_blocks()

    def allocated_size(self) -> int:
        return self.live.allocated_size()

    def allocation_key(self) -> tuple:
        return self.live.allocation_key()

    def file_length(self) -> int:
        return self.live.file_length()

    def metadata_preallocated(self) -> bool:
        return self.live.metadata_preallocated()


class _Content:
    """What an image's content map holds over guest bytes ``[lo, hi)``, through a weak reference to the image
    (see ImageFile._follow)."""

    __slots__ = ("image",)

    def __init__(self, image: ImageFile) -> None:
        self.image = weakref.ref(image)

    def __call__(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        alive = self.image()
        if alive is None:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        return alive.data.extents(lo, hi - lo)


class _Watcher:
    """What an image's content map tells it (each batch of writes merged, a resize), through a weak reference
    to the image (see ImageFile._follow); a map that outlived its image tells nobody."""

    __slots__ = ("image",)

    def __init__(self, image: ImageFile) -> None:
        self.image = weakref.ref(image)

    def before_merge(self, offsets: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        alive = self.image()
        if alive is not None:
            alive.before_merge(offsets, ends, values)

    def after_merge(self, offsets: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        alive = self.image()
        if alive is not None:
            alive.after_merge(offsets, ends, values)

    def resized(self, size: int) -> None:
        alive = self.image()
        if alive is not None:
            alive.resized(size)


class _Unhosting:
    """ImageFile._unhosting through a weak reference to the image (see ImageFile._follow)."""

    __slots__ = ("image",)

    def __init__(self, image: ImageFile) -> None:
        self.image = weakref.ref(image)

    def __call__(self, lo: int, hi: int) -> None:
        alive = self.image()
        if alive is not None:
            alive._unhosting(lo, hi)


def qcow2_l1_fits(size: int, cluster_size: int) -> bool:
    """Whether a qcow2 image of ``size`` bytes needs no more L1 entries than QCOW_MAX_L1_SIZE holds."""
    return -(-size // (cluster_size * cluster_size // 8)) <= QCOW2_MAX_L1_ENTRIES


def header_backing_fmt(fmt: str | None) -> str | None:
    """A backing format as an image header keeps it: bdrv_change_backing_file copies it into BlockDriverState's
    ``backing_format[16]`` (pstrcpy), which qcow2_update_header writes: 15 characters at most."""
    return fmt[:15] if fmt else fmt


def format_image(image: ImageFile, fmt: str, size: int, *, cluster_size: int = QCOW2_DEFAULT_CLUSTER,
                 compat: str = "1.1", backing_file: str | None = None, backing_fmt: str | None = None) -> ImageFile:
    """Write a new, empty image into the file ``image`` (in place: nodes that hold the file see it): a raw
    file of ``size`` zero bytes, or a qcow2 image as qcow2_co_create leaves it (nothing allocated)."""
    object.__setattr__(image, "_layout", None)
    image.data.watch = None
    image.fmt = fmt
    image.size = size
    image.cluster_size = cluster_size if fmt == "qcow2" else 0
    image.backing_file, image.backing_fmt = backing_file, header_backing_fmt(backing_fmt)
    image.bitmaps = []
    image.compat = compat
    image.l1_padded = False
    image.tail = None
    image.unknown = None
    image.unwritten = None
    image.first_block = True  # (a raw file grown from empty has it written: allocate_first_block)
    old = image.__dict__.get("data")
    image.data = ExtentMap(size, fill=UNALLOCATED if fmt == "qcow2" else 0)
    if old is not None:
        image.data.version = old.version + 1  # the file changed (readers that remember a version see it)
    image.__post_init__()
    return image


class ImageStore:
    """Files by name. Names are plain relative paths inside the machine's work directory."""

    def __init__(self) -> None:
        self.files: dict[str, ImageFile] = {}
        # what the file nodes open on an image take and share (file-posix's locks), set by the machine's graph
        self.locks: Callable[[ImageFile], list[tuple[int, int]]] | None = None
        # an NBD client's connection to the machine's NBD server (kind, where, export, context, write), set by the
        # machine
        self.nbd: Callable[[str, str, str, str | None, bool], Any] | None = None
        # the stderr of the qemu-img run under way: the warnings its opens print (see ImageFile.opened)
        self.warn: Callable[[str, str], None] | None = None  # (image name, text)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def __getitem__(self, name: str) -> ImageFile:
        return self.files[name]

    def __iter__(self):
        return iter(self.files.values())

    def add(self, image: ImageFile) -> ImageFile:
        self.files[image.name] = image
        return image

    def remove(self, name: str) -> None:
        del self.files[name]

    def create(
        self,
        name: str,
        fmt: str,
        size: int,
        *,
        cluster_size: int = QCOW2_DEFAULT_CLUSTER,
        backing_file: str | None = None,
        backing_fmt: str | None = None,
        compat: str = "1.1",
    ) -> ImageFile:
        """A new file ``name`` holding a new image (as :func:`format_image` writes one); one of that name goes."""
        image = ImageFile(
            name=name,
            fmt=fmt,
            size=size,
            data=ExtentMap(size, fill=UNALLOCATED if fmt == "qcow2" else 0),
            cluster_size=cluster_size if fmt == "qcow2" else 0,
            backing_file=backing_file,
            backing_fmt=header_backing_fmt(backing_fmt),
            compat=compat,
        )
        return self.add(image)
