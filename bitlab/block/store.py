"""The machine's virtual image store: the files qemu-img makes and blockdev-add opens."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from bitarray import bitarray

from .extents import UNALLOCATED, ZERO_ALLOC, ExtentMap

QCOW2_DEFAULT_CLUSTER = 65536
# An empty qcow2 file: header, L1 table, refcount table and one refcount block.
QCOW2_EMPTY_CLUSTERS = 3


def _distinct_units(starts: np.ndarray, ends: np.ndarray, used: np.ndarray, unit: int) -> int:
    """How many ``unit``-sized blocks the runs marked ``used`` touch (runs sorted and disjoint)."""
    if not used.any():
        return 0
    first = starts[used] // unit
    last = (ends[used] - 1) // unit
    return int((last - first + 1).sum()) - int(np.count_nonzero(first[1:] == last[:-1]))


@dataclass
class StoredBitmap:
    """A persistent bitmap as kept in a qcow2 file (its bitmap directory entry)."""

    name: str
    granularity: int
    bits: bitarray
    enabled: bool = True  # the "auto" flag
    in_use: bool = False  # set while an open image may change it; left set by a crash


@dataclass
class ImageFile:
    """One file: raw bytes, or a qcow2 image with its virtual disk content."""

    name: str
    fmt: str  # "raw" or "qcow2"
    size: int  # virtual size (raw: file length)
    data: ExtentMap
    cluster_size: int = 0
    backing_file: str | None = None
    backing_fmt: str | None = None
    bitmaps: list[StoredBitmap] = field(default_factory=list)
    compat: str = "1.1"  # qcow2 version: "1.1" (v3) or "0.10" (v2)
    lockers: list = field(default_factory=list)  # format nodes holding the file's "write" lock
    l1_padded: bool = False  # the L1 table fills whole clusters (a qcow2 file emptied by qemu-img commit)
    l2_kept: set[int] = field(default_factory=set)  # L2 tables written for data writes that then failed
    _host_clusters: int = 0  # high-water mark: a qcow2 file never shrinks (but make_empty may truncate it)
    _seen_version: int = -1  # the data version _host_clusters was last updated for

    @property
    def is_qcow2(self) -> bool:
        return self.fmt == "qcow2"

    def allocated_clusters(self) -> int:
        """Clusters of the virtual disk holding a host cluster in this file (qcow2): data, or
        zeroes written over data without unmapping it."""
        return self._host_usage()[1]

    def l2_tables(self) -> int:
        """L2 tables in use: one per L2-table-sized stretch holding any data."""
        return self._host_usage()[0]

    def _host_usage(self) -> tuple[int, int]:
        """(L2 tables in use, clusters holding a host cluster), from one look at the runs."""
        starts, vals = self.data.runs()
        ends = np.empty_like(starts)
        ends[:-1] = starts[1:]
        ends[-1] = self.data.size
        per_l2 = self.cluster_size * (self.cluster_size // 8)
        l2 = _distinct_units(starts, ends, vals != UNALLOCATED, per_l2)
        l2 += sum(1 for i in self.l2_kept if not self._l2_used(i))
        return l2, _distinct_units(starts, ends, (vals >= 0) | (vals == ZERO_ALLOC), self.cluster_size)

    def _l2_used(self, index: int) -> bool:
        """Whether L2 table ``index`` maps anything."""
        per_l2 = self.cluster_size * (self.cluster_size // 8)
        return bool((self.data.extents(index * per_l2, per_l2)[2] != UNALLOCATED).any())

    def note_failed_write(self, offset: int) -> None:
        """A data write at ``offset`` (an unallocated cluster) failed after qcow2 had written the
        cluster's L2 table (l2_allocate, before the data write): the table stays in the file."""
        index = offset // (self.cluster_size * (self.cluster_size // 8))
        if self.is_qcow2 and not self._l2_used(index):
            self.l2_kept.add(index)
            self._seen_version = -1

    def file_length(self) -> int:
        """Length of the host file in bytes (what the protocol node sees).

        A new qcow2 file is header, refcount table and refcount block (one cluster
        each) and the L1 table; every L2 table and data cluster adds a cluster.
        """
        if not self.is_qcow2:
            return self.size
        cs = self.cluster_size
        per_l2 = cs * (cs // 8)
        l1_bytes = 8 * -(-self.size // per_l2)
        head = QCOW2_EMPTY_CLUSTERS * cs
        allocated = self.note_allocation()
        if not allocated:
            return head + (-(-l1_bytes // cs) * cs if self.l1_padded else l1_bytes)
        return head + -(-l1_bytes // cs) * cs + allocated * cs

    def note_allocation(self) -> int:
        """Record host clusters in use (L2 tables and data); returns the high-water mark. Data writes only
        ever add host clusters, so it is enough to call this before anything that may free them (zero
        writes, discards) and whenever the file length is read."""
        if self.is_qcow2 and self._seen_version != self.data.version:
            self._host_clusters = max(self._host_clusters, sum(self._host_usage()))
            self._seen_version = self.data.version
        return self._host_clusters

    def make_empty(self) -> None:
        """qcow2_make_empty, as qemu-img commit leaves the top image: nothing allocated. A v3 file
        without bitmaps is rewritten from scratch (header, refcounts, a whole-cluster L1 table);
        otherwise every cluster is discarded and the file keeps its length."""
        self.note_allocation()  # the length it keeps
        self.data.write(0, self.data.size, UNALLOCATED)
        if self.compat != "0.10" and not self.bitmaps:
            self.data = ExtentMap(self.size, fill=UNALLOCATED)
            self._host_clusters, self._seen_version = 0, -1
            self.l2_kept.clear()
            self.l1_padded = True


class ImageStore:
    """Files by name. Names are plain relative paths inside the machine's work directory."""

    def __init__(self) -> None:
        self.files: dict[str, ImageFile] = {}

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
    ) -> ImageFile:
        image = ImageFile(
            name=name,
            fmt=fmt,
            size=size,
            data=ExtentMap(size, fill=UNALLOCATED if fmt == "qcow2" else 0),
            cluster_size=cluster_size if fmt == "qcow2" else 0,
            backing_file=backing_file,
            backing_fmt=backing_fmt,
        )
        return self.add(image)
