"""blockdev-create's drivers: block/file-posix.c's raw_co_create and block/qcow2.c's qcow2_co_create on the
image store, with QEMU 7.2's checks in QEMU's order and with its texts.

:func:`prepare` runs what QEMU does before the create job first waits for I/O. It raises
:class:`CreateFailed` where QEMU fails there (the job then ends before the command returns), a
:class:`~bitlab.errors.QMPError` saying bitlab does not simulate something where QEMU would go on, and
otherwise returns the rest of the work, which the job runs later and which may still fail (``early``
False: the job ends after the command returned).
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import QMPError, generic
from . import perms, wstats
from .node import BlockNode
from .store import QCOW2_DEFAULT_CLUSTER, QCOW2_EMPTY_CLUSTERS, ImageFile, format_image, qcow2_l1_fits

Work = Callable[[], None]

# Drivers whose block module Debian's qemu-storage-daemon 7.2 does not have (qemu-block-extra; the system
# emulator has blkreplay built in), and the drivers with a create function (BlockdevCreateOptions' branches).
NOT_BUILT = frozenset({"blkreplay", "ftp", "ftps", "gluster", "http", "https", "iscsi", "nfs", "rbd", "ssh"})
CAN_CREATE = frozenset({"file", "gluster", "luks", "nfs", "parallels", "qcow", "qcow2", "qed", "rbd", "ssh", "vdi",
                        "vhdx", "vmdk", "vpc"})
SIMULATED = ("file", "qcow2")
_U64 = 1 << 64
_INT64_MAX = (1 << 63) - 1
BDRV_MAX_LENGTH = _INT64_MAX // (1 << 30) * (1 << 30)  # QEMU_ALIGN_DOWN(INT64_MAX, BDRV_MAX_ALIGNMENT)
CLUSTER_SIZES = frozenset(1 << bits for bits in range(9, 22))  # MIN_CLUSTER_BITS 9 .. MAX_CLUSTER_BITS 21
MIN_EXTL2_CLUSTER = 1 << 14
_V3_HINT = "(use version=v3 or greater)"


class CreateFailed(Exception):
    """The create job fails with QEMU's text; ``early`` if before its first wait for I/O."""

    def __init__(self, message: str, *, early: bool = True, errno: int = _errno.EINVAL) -> None:
        super().__init__(message)
        self.message = message
        self.early = early
        self.errno = errno


def not_simulated(what: str) -> QMPError:
    return generic(f"bitlab does not simulate {what}")


def check_driver(driver: str) -> None:
    """qmp_blockdev_create's checks of the driver, before the job exists."""
    if driver in NOT_BUILT:
        raise generic(f"Block driver '{driver}' not found or not supported")
    if driver not in CAN_CREATE:
        raise generic("Driver does not support blockdev-create")


def prepare(graph: Any, options: dict) -> Work:
    """The driver's create up to its first wait for I/O; returns the rest (see the module's doc)."""
    driver = options["driver"]
    if driver == "file":
        return _prepare_file(graph, options)
    if driver == "qcow2":
        return _prepare_qcow2(graph, options)
    raise not_simulated(f"blockdev-create of '{driver}' images (only {' and '.join(SIMULATED)})")


def _int64(value: int) -> int:
    """A QAPI ``size`` as the C code's int64_t reads it."""
    return value - _U64 if value > _INT64_MAX else value


def _users(graph: Any, image: ImageFile) -> list[BlockNode]:
    """The nodes that have the file open (its protocol nodes and the qcow2 nodes over it)."""
    return [node for node in graph.nodes.values() if node.__dict__.get("image") is image]


def _check_unused(graph: Any, image: ImageFile, filename: str, early: bool) -> None:
    """raw_co_create's file locks (it writes and resizes, sharing all but resize) against the file nodes
    open on the file. QEMU would write a file that a node has open without a conflicting lock (which keeps
    its old length): not simulated."""
    error = perms.lock_error(perms.WRITE | perms.RESIZE, perms.ALL & ~perms.RESIZE, perms.file_locks(graph, image))
    if error is not None:
        raise CreateFailed(error, early=early, errno=_errno.EAGAIN)
    users = _users(graph, image)
    if users:
        raise not_simulated(f"writing the file '{filename}' while node '{users[0].node_name}' has it open")


# -- file ----------------------------------------------------------------------------------------


def _prepare_file(graph: Any, opts: dict) -> Work:
    """raw_co_create: the hint, the file (made at once if new), its locks; then (after the first wait) the
    file emptied and resized."""
    filename = opts["filename"]
    hint = opts.get("extent-size-hint")
    if hint is not None and hint > 0xFFFFFFFF:
        raise CreateFailed("Extent size hint is too large")
    try:
        key = graph.store_key(filename)  # nothing exists outside the work directory, not even a directory
    except QMPError:
        raise CreateFailed(f"Could not create '{filename}': No such file or directory", errno=_errno.ENOENT) from None
    store = graph.store
    if key in store:
        _check_unused(graph, store[key], filename, early=True)
    prealloc = opts.get("preallocation", "off")
    size = _int64(opts["size"])
    image = store[key] if key in store else store.create(key, "raw", 0)  # qemu_create: O_CREAT, no wait

    def create() -> None:
        format_image(image, "raw", 0)  # "Clear the file by truncating it to 0"
        if size < 0 and prealloc != "off":  # (handle_aiocb_truncate: a "shrink" from 0)
            raise CreateFailed("Cannot use preallocation for shrinking files", early=False, errno=_errno.ENOTSUP)
        if prealloc == "metadata":
            raise CreateFailed("Unsupported preallocation mode: metadata", early=False, errno=_errno.ENOTSUP)
        if size < 0:
            raise CreateFailed("Could not resize file: Invalid argument", early=False)
        image.truncate_raw(size, prealloc)

    return create


# -- qcow2 ---------------------------------------------------------------------------------------


def _open_file(graph: Any, ref: dict | str) -> tuple[BlockNode | None, ImageFile | None]:
    """bdrv_open_blockdev_ref of the ``file`` option: a node by name, or a ``file`` node opened here (its
    failure comes after the job's first wait). Returns the node taken by name, and the image file."""
    if isinstance(ref, str):
        try:
            node = graph.lookup_bs(ref)
        except QMPError as err:
            raise CreateFailed(err.desc, errno=_errno.EIO) from None
        return node, node.__dict__.get("image") if node.driver == "file" else None
    name = ref.get("node-name")
    if ref.get("driver") != "file" or set(ref) - {"driver", "filename", "node-name"} \
            or (name is not None and (name in graph.nodes or name in graph.devices)):
        raise not_simulated("an inline 'file' other than {\"driver\": \"file\", \"filename\": ...} (and a new "
                            "node-name): add the node with blockdev-add and name it")
    filename = ref["filename"]
    try:
        key = graph.store_key(filename)
    except QMPError:
        key = None
    if key is None or key not in graph.store:
        raise CreateFailed(f"Could not open '{filename}': No such file or directory", early=False, errno=_errno.EIO)
    return None, graph.store[key]


def cluster_size_error(cluster: int, extended_l2: bool) -> str | None:
    """validate_cluster_size (qcow2_co_create and qcow2_measure both call it): QEMU's error, or None."""
    if cluster not in CLUSTER_SIZES:
        return "Cluster size must be a power of two between 512 and 2048k"
    if extended_l2 and cluster < MIN_EXTL2_CLUSTER:
        return f"Extended L2 entries are only supported with cluster sizes of at least {MIN_EXTL2_CLUSTER} bytes"
    return None


def refcount_bits_error(bits: int, version: int, hint: str) -> str | None:
    """The refcount width's checks (qcow2_co_create, qcow2_opt_get_refcount_bits_del): QEMU's error, or None;
    ``hint``: how the caller's syntax names compat 1.1."""
    if bits > 64 or bits <= 0 or bits & (bits - 1):
        return "Refcount width must be a power of two and may not exceed 64 bits"
    if version < 3 and bits != 16:
        return f"Different refcount widths than 16 bits require compatibility level 1.1 or above {hint}"
    return None


def check_qcow2_options(opts: dict, early: bool) -> tuple[int, int]:
    """qcow2_co_create's validation, in its order; returns (version, cluster size)."""
    def fail(message: str) -> CreateFailed:
        return CreateFailed(message, early=early)

    if _int64(opts["size"]) % 512:
        raise fail("Image size must be a multiple of 512 bytes")
    version = 2 if opts.get("version") == "v2" else 3
    cluster = opts.get("cluster-size", QCOW2_DEFAULT_CLUSTER)
    extended_l2 = opts.get("extended-l2", False)
    if extended_l2 and version < 3:
        raise fail(f"Extended L2 entries are only supported with compatibility level 1.1 and above {_V3_HINT}")
    error = cluster_size_error(cluster, extended_l2)
    if error is not None:
        raise fail(error)
    backing = opts.get("backing-file")
    if backing is not None and opts.get("preallocation", "off") != "off" and not extended_l2:
        raise fail("Backing file and preallocation can only be used at the same time if extended_l2 is on")
    if "backing-fmt" in opts and backing is None:
        raise fail("Backing format cannot be used without backing file")
    if version < 3 and opts.get("lazy-refcounts", False):
        raise fail(f"Lazy refcounts only supported with compatibility level 1.1 and above {_V3_HINT}")
    error = refcount_bits_error(opts.get("refcount-bits", 16), version, _V3_HINT)
    if error is not None:
        raise fail(error)
    data_file_raw = opts.get("data-file-raw", False)
    if data_file_raw and "data-file" not in opts:
        raise fail("data-file-raw requires data-file")
    if data_file_raw and backing is not None:
        raise fail("Backing file and data-file-raw cannot be used at the same time")
    return version, cluster


def _check_data_file(graph: Any, opts: dict, version: int, early: bool) -> None:
    """The external data file: QEMU's checks (one that passes them bitlab does not simulate, see below)."""
    ref = opts.get("data-file")
    if ref is None:
        return
    if version < 3:
        raise CreateFailed("External data files are only supported with compatibility level 1.1 and above "
                           f"{_V3_HINT}", early=early)
    if isinstance(ref, str):
        try:
            graph.lookup_bs(ref)
        except QMPError as err:
            raise CreateFailed(err.desc, early=early, errno=_errno.EIO) from None


def not_simulated_qcow2(opts: dict) -> None:
    """Options QEMU takes that the image store cannot hold."""
    if "data-file" in opts:
        raise not_simulated("qcow2 images with an external data file")
    for key, default, what in (("lazy-refcounts", False, "lazy refcounts"),
                               ("refcount-bits", 16, "refcount widths other than 16 bits"),
                               ("extended-l2", False, "extended L2 entries"),
                               ("compression-type", "zlib", "the zstd compression type")):
        if opts.get(key, default) != default:
            raise not_simulated(f"{what} ('{key}')")


def prealloc_image(image: ImageFile, mode: str) -> None:
    """A new qcow2 image's truncate to its size with ``preallocation`` (qcow2_co_create's blk_co_truncate)."""
    if mode == "metadata":
        image.preallocate_metadata()
    elif mode in ("falloc", "full"):
        image.preallocate_data(mode)


def qcow2_file_length(size: int, cluster_size: int) -> int:
    """The length of the file qcow2_co_create leaves: header, refcount table, refcount block, L1 table."""
    l1_entries = -(-size // (cluster_size * cluster_size // 8)) if size > 0 else 0
    return QCOW2_EMPTY_CLUSTERS * cluster_size + 8 * l1_entries


def _prepare_qcow2(graph: Any, opts: dict) -> Work:
    """qcow2_co_create: the file, the options, the file's permissions (all before the first wait when the
    file is a node taken by name; after it when the job opens a file itself), then the image written."""
    ref = opts["file"]
    early = isinstance(ref, str)
    node, image = _open_file(graph, ref)
    version, cluster = check_qcow2_options(opts, early)
    _check_data_file(graph, opts, version, early)
    if opts.get("compression-type", "zlib") != "zlib" and version < 3:
        raise CreateFailed(f"Non-zlib compression type is only supported with compatibility level 1.1 and above "
                           f"{_V3_HINT}", early=early)
    if node is not None:
        try:  # blk_co_new_with_bs: write and resize, sharing everything
            perms.check_blk(graph, node, perms.WRITE | perms.RESIZE)
        except QMPError as err:
            raise CreateFailed(err.desc, errno=_errno.EPERM) from None
        if node.driver != "file":
            raise not_simulated(f"a qcow2 image written into a '{node.driver}' node (give it a 'file' node)")
        if node.parents:
            raise not_simulated(f"a qcow2 image written into node '{node.node_name}' while another node uses it")
    else:
        assert image is not None and isinstance(ref, dict)
        _check_unused(graph, image, ref["filename"], early=False)
    not_simulated_qcow2(opts)
    assert image is not None
    size = _int64(opts["size"])
    fits = 0 <= size <= BDRV_MAX_LENGTH and qcow2_l1_fits(size, cluster)
    if image.file_length() > qcow2_file_length(size if fits else 0, cluster):
        raise not_simulated("a qcow2 image written over a longer file (QEMU keeps the rest of the file)")
    compat = "0.10" if version == 2 else "1.1"

    def create() -> None:
        if not fits:  # the header of an empty image is written, then blk_co_truncate fails
            format_image(image, "qcow2", 0, cluster_size=cluster, compat=compat)
            _written(node, image)
            if size < 0:
                raise CreateFailed("Could not resize image: Image size cannot be negative", early=False)
            if size > BDRV_MAX_LENGTH:
                raise CreateFailed(f"Could not resize image: offset({size}) exceeds maximum({BDRV_MAX_LENGTH})",
                                   early=False, errno=_errno.EIO)
            raise CreateFailed("Could not resize image: Failed to grow the L1 table: File too large", early=False,
                               errno=_errno.EFBIG)
        format_image(image, "qcow2", size, cluster_size=cluster, compat=compat, backing_file=opts.get("backing-file"),
                     backing_fmt=opts.get("backing-fmt"))
        mode = opts.get("preallocation", "off")
        prealloc_image(image, mode)  # (blk_truncate with it, before the backing file is set)
        _written(node, image, mode)
        encrypt = opts.get("encrypt")
        if encrypt is not None:  # qcow2_set_up_encryption, last: bitlab has no secret objects
            key = encrypt.get("key-secret")
            raise CreateFailed("Parameter 'encrypt.key-secret' is required for cipher" if key is None
                               else f"No secret with id '{key}'", early=False)

    return create


def _written(node: BlockNode | None, image: ImageFile, prealloc: str = "off") -> None:
    """The file node saw the new file written (its dirty bitmaps grow with it and mark it), but for the data clusters
    a preallocation allocated: ftruncate or posix_fallocate (or file-posix's own zeroes) grew the file over them,
    not a write request (the part of a last cluster past the disk's end that ``metadata`` copies on write is one)."""
    if node is None:
        return
    length = image.file_length()
    starts, ends = np.array([0], dtype=np.int64), np.array([length], dtype=np.int64)
    if prealloc != "off" and image.size:
        cs = image.cluster_size
        hs, he, shift = image.layout.hosted()
        lo, hi = (hs + shift) * cs, (he + shift) * cs
        if prealloc == "metadata" and image.size % cs:
            hi[-1] -= cs - image.size % cs  # (the last cluster's tail: written)
        bounds = np.concatenate(([0], np.column_stack((lo, hi)).ravel(), [length]))
        starts, ends = bounds[0::2], bounds[1::2]
        keep = ends > starts
        starts, ends = starts[keep], ends[keep]
    node.note_write(starts, ends - starts)
    if prealloc != "off":
        wstats.grew_by_truncate(node)
