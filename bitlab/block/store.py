"""The machine's virtual image store: the files qemu-img makes and blockdev-add opens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from bitarray import bitarray

from .extents import UNALLOCATED, ZERO, ZERO_ALLOC, ExtentMap
from .qcow2_host import HostLayout

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
    unknown: str | None = None  # why bitlab cannot tell what the file holds (it refuses to open it then)
    _layout: HostLayout | None = field(default=None, init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value) -> None:
        old = self.__dict__.get("bitmaps")
        object.__setattr__(self, name, value)
        if name == "bitmaps" and self.__dict__.get("_layout") is not None and old is not None:
            self._bitmaps_stored(old, value)

    def _bitmaps_stored(self, old: list[StoredBitmap], new: list[StoredBitmap]) -> None:
        """The bitmap directory was written (``new`` replaces ``old``): on a clean close every bitmap
        written anew in the new directory's order (qcow2_store_persistent_dirty_bitmaps: the loaded ones as
        the directory had them, then the new ones, newest first), or one removed; then the new directory,
        and the old clusters freed."""
        if not old and not new:
            return
        layout = self.layout
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
        self._layout = layout
        self.data.watch = self

    @property
    def layout(self) -> HostLayout:
        """Where the file's clusters are (qcow2), every write so far taken into account. An image
        made from content alone (a copy) gets its clusters laid out in ascending guest order."""
        self.data.runs()  # writes still pending reach the layout first
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
        """The content map merges writes: the layout allocates and frees for them, in order."""
        if self._layout is not None:
            self._layout.before_merge(offsets, ends, values)

    def after_merge(self, offsets: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        """Where zero writes landed, the layout holds host clusters exactly where the content says."""
        zeroing = values < 0
        if self._layout is None or not zeroing.any():
            return
        cs = self.cluster_size
        c0, c1 = int(offsets[zeroing].min()) // cs, -(-int(ends[zeroing].max()) // cs)
        starts, stops = self._hosted_clusters(c0 * cs, min(c1 * cs, self.data.size))
        self._layout.reconcile(c0, c1, np.maximum(starts, c0), np.minimum(stops, c1))

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

    def discard_clusters(self, start: int, end: int) -> None:
        """qcow2_cluster_discard over whole clusters ``[start, end)`` (bytes): table by table, an L2
        table where there is none, and the clusters' host clusters freed. Call before writing the
        content it leaves."""
        if self.is_qcow2 and end > start:
            cs = self.cluster_size
            c0, c1 = start // cs, -(-end // cs)
            self.layout.discard(c0, c1)

    def file_length(self) -> int:
        """Length of the host file in bytes (what the protocol node sees).

        A new qcow2 file is header, refcount table and refcount block (one cluster
        each) and the L1 table; it grows to hold the last host cluster ever allocated.
        """
        if not self.is_qcow2:
            return self.size
        layout = self.layout
        if layout.grown:
            return layout.partial_end or layout.top * self.cluster_size
        l1_bytes = 8 * layout.l1_entries
        cs = self.cluster_size
        return QCOW2_EMPTY_CLUSTERS * cs + (-(-l1_bytes // cs) * cs if self.l1_padded else l1_bytes)

    def make_empty(self) -> None:
        """qcow2_make_empty, as qemu-img commit leaves the top image: nothing allocated. A v3 file
        without bitmaps is rewritten from scratch (header, refcounts, a whole-cluster L1 table);
        otherwise every cluster is discarded, L2 table by L2 table (which gives every stretch
        without one an L2 table), and the file keeps its length."""
        layout = self.layout
        if self.compat != "0.10" and not self.bitmaps:
            self.data.watch = None
            self.data.write(0, self.data.size, UNALLOCATED)
            self.data.runs()
            self.data.watch = self
            layout.reset()
            self.l1_padded = True
            return
        self.discard_clusters(0, self.data.size)
        self.data.write(0, self.data.size, UNALLOCATED)


def qcow2_l1_fits(size: int, cluster_size: int) -> bool:
    """Whether a qcow2 image of ``size`` bytes needs no more L1 entries than QCOW_MAX_L1_SIZE holds."""
    return -(-size // (cluster_size * cluster_size // 8)) <= QCOW2_MAX_L1_ENTRIES


def format_image(image: ImageFile, fmt: str, size: int, *, cluster_size: int = QCOW2_DEFAULT_CLUSTER,
                 compat: str = "1.1", backing_file: str | None = None, backing_fmt: str | None = None) -> ImageFile:
    """Write a new, empty image into the file ``image`` (in place: nodes that hold the file see it): a raw
    file of ``size`` zero bytes, or a qcow2 image as qcow2_co_create leaves it (nothing allocated)."""
    object.__setattr__(image, "_layout", None)
    image.data.watch = None
    image.fmt = fmt
    image.size = size
    image.cluster_size = cluster_size if fmt == "qcow2" else 0
    image.backing_file, image.backing_fmt = backing_file, backing_fmt
    image.bitmaps = []
    image.compat = compat
    image.l1_padded = False
    image.unknown = None
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
            backing_fmt=backing_fmt,
            compat=compat,
        )
        return self.add(image)
