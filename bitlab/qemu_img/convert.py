"""qemu-img convert: a chain's content copied into a new, flat raw or qcow2 image."""

from __future__ import annotations

import numpy as np

from ..block import batch_writes, foreign
from ..block.create import prealloc_image
from ..block.extents import ZERO_ALLOC, clip_runs, touched_mask
from ..block.graph import BlockGraph
from ..block.node import BlockNode
from ..block.store import ImageFile, ImageStore
from ..errors import QMPError
from . import cmdline, convert_nbd, nbd, qemu_opts
from ._common import (
    KeyFn,
    QemuImgError,
    QemuImgOutput,
    cvtnum,
    find_key,
    lock_hint,
    new_key,
    open_chain,
    open_image,
)
from .image import qcow2_create_checks
from .layers import content

MAX_COROUTINES = 16  # img_convert's -m
MAX_SPARSE = 16 << 20  # MAX_BUF_SECTORS sectors
SPARSE_RANGE_ERROR = ("qemu-img: Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 "
                      "up to 16777216. Select 0 to disable sparse detection (fully allocates output).\n")


def _coroutines(text: str) -> None:
    """-m, as img_convert's loop checks it."""
    value = cmdline.c_long(text)
    if value is None or not 1 <= value <= MAX_COROUTINES:
        raise QemuImgError("qemu-img: Invalid number of coroutines. Allowed number of coroutines is between 1 and "
                           f"{MAX_COROUTINES}\n")


def _sparse_size(text: str) -> int:
    """-S, as img_convert's loop checks it: a size, whole sectors, at most MAX_BUF_SECTORS of them."""
    sparse = cvtnum("buffer size for sparse output", text)
    if sparse % 512 or sparse > MAX_SPARSE:
        raise QemuImgError(SPARSE_RANGE_ERROR)
    return sparse


def img_convert(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img convert [-c] [-f fmt] [-O raw|qcow2] [-o options] [--bitmaps [--skip-broken-bitmaps]] [-q] [-p] [-U]
    filename output_filename.

    Zero stretches are not written (the new image reads zeroes there): a qcow2 target allocates
    only the clusters holding non-zero bytes; with ``-S 0`` every byte is written (fully allocated).
    ``--bitmaps`` copies the source's persistent bitmaps (see :func:`_copy_bitmaps`).
    """
    opts, positional = cmdline.parse("convert", args, {"-f", "-O", "-o", "-S", "-m", "-r", "-T", "-q", "-U", "-W",
                                                       "--bitmaps", "--skip-broken-bitmaps", "-c", "-n", "-B", "-F"},
                                     {"-S": _sparse_size, "-m": _coroutines, "-r": lambda v: cvtnum("rate limit", v)})
    bitmaps = "--bitmaps" in opts
    if "--skip-broken-bitmaps" in opts and not bitmaps:
        raise QemuImgError("qemu-img: Use of --skip-broken-bitmaps requires --bitmaps\n")
    if "-n" in opts and "-o" in opts:
        raise QemuImgError("qemu-img: -o has no effect when skipping image creation\n")
    if len(positional) < 2:
        raise QemuImgError("qemu-img: Must specify image file name\n")
    cmdline.check_cache(opts, "-T", "source cache")
    if len(positional) > 2:
        raise QemuImgError("qemu-img: bitlab does not simulate converting several images into one\n")
    sparse = _sparse_size(opts["-S"]) if "-S" in opts else 4096  # zero stretches this long are not written
    lock = "force-share" if "-U" in opts else "shared"
    chain = nbd.open_chain(store, positional[0], opts.get("-f"))  # the sources first (an NBD export: one layer)
    if chain is not None and bitmaps:
        raise QemuImgError("qemu-img: bitlab does not simulate 'qemu-img convert --bitmaps' from an NBD export\n")
    if chain is not None and "-B" in opts:
        raise QemuImgError("qemu-img: bitlab does not simulate 'qemu-img convert -B' from an NBD export\n")
    if chain is None:
        chain = open_chain(store, key_fn, positional[0], opts.get("-f"), lock, on_disk=True)
    fmt = opts.get("-O", "raw")
    if nbd.is_nbd(positional[1]):
        return _into_export(store, opts, chain, positional[1], fmt, sparse)
    if "-n" in opts:
        return _into_existing(store, key_fn, opts, chain, positional[1], fmt, sparse)
    if fmt not in ("raw", "qcow2"):
        raise QemuImgError(foreign.creation_error(fmt, "qemu-img: "))
    if "-o" in opts and qemu_opts.has_help(opts["-o"]):
        raise QemuImgError("qemu-img: bitlab does not simulate 'qemu-img convert -o help'\n")
    values = qemu_opts.parse(opts.get("-o", ""), {**qemu_opts.FILE_OPTS, **qemu_opts.CREATE_OPTS[fmt]})
    for option, name, what in (("-B", "backing_file", "Backing file"), ("-F", "backing_fmt", "Backing file format")):
        if option in opts:  # add_old_style_options
            if fmt != "qcow2":
                raise QemuImgError(f"qemu-img: {what} not supported for file format '{fmt}'\n")
            values[name] = opts[option]
    backing = values.get("backing_file")
    assert backing is None or isinstance(backing, str)
    if backing is not None and "backing_fmt" not in values:
        raise QemuImgError("qemu-img: Use of backing file requires explicit backing format\n")
    if backing == "":
        raise QemuImgError("qemu-img: bitlab does not simulate an empty backing file name (qemu-img 7.2 crashes on it: "
                           "a segmentation fault)\n")
    if "-c" in opts and fmt == "raw":
        raise QemuImgError("qemu-img: Compression not supported for this file format\n")
    if fmt == "raw" and not sparse:  # (a raw file's holes are its zero blocks here: written zeroes would be too)
        raise QemuImgError("qemu-img: bitlab does not simulate a fully allocated raw output (-S 0)\n")
    if bitmaps:
        _check_bitmaps(chain[0].image, "--skip-broken-bitmaps" in opts)
    size = chain[0].size
    prealloc = str(values.get("preallocation", "off"))
    if "-c" in opts and prealloc != "off":
        raise QemuImgError("qemu-img: Compression and preallocation not supported at the same time\n")
    if "-c" in opts and backing is not None and not sparse:
        raise QemuImgError("qemu-img: bitlab does not simulate 'qemu-img convert -c -S 0' into an image with a "
                           "backing file\n")
    if values.get("nocow") or "extent_size_hint" in values:
        raise QemuImgError("qemu-img: bitlab does not simulate these -o options of 'qemu-img convert'\n")
    s, e, v = content(chain, 0, size)
    out = positional[1]

    def fail(message: str, stdout: str = "") -> QemuImgError:
        return QemuImgError(f"qemu-img: {out}: error while converting {fmt}: {message}\n", stdout=stdout)

    if fmt == "qcow2":
        version, cluster = qcow2_create_checks(values, size, fail)
    key = new_key(key_fn, out, f"error while converting {fmt}: ")
    if fmt == "raw":  # raw_co_create: the file emptied, then resized (preallocated: see ImageFile.truncate_raw)
        target = store.create(key, "raw", 0)
        if prealloc == "metadata":
            raise fail("Unsupported preallocation mode: metadata")
        target.truncate_raw(size, prealloc)
    else:
        target = store.create(key, "qcow2", size, cluster_size=cluster, compat="0.10" if version == 2 else "1.1",
                              backing_file=backing, backing_fmt=values.get("backing_fmt"))  # type: ignore[arg-type]
        prealloc_image(target, prealloc)
    if bitmaps and not target.is_qcow2:
        raise QemuImgError(f"qemu-img: Format driver '{fmt}' does not support bitmaps\n")
    if backing is not None:  # not zero-initialised: requests as into an image that exists, opened with its backing
        _write_through(store, key_fn, chain, out, "qcow2", sparse, backing=True, new=True, compressed="-c" in opts)
    elif "-c" in opts:
        _write_compressed(target, s, e, v, sparse)
    else:
        if not sparse:  # -S 0: zeroes written too (fully allocated)
            target.data.write_batch(s, e - s, v)
        else:  # a new file: img_convert's data requests (it reads zeroes: no zero ones), their zeroes written
            offsets, lengths, zero = convert_nbd.requests(chain, size, sparse)
            ds, de, dv, _ = clip_runs(s, e, v, offsets[~zero], offsets[~zero] + lengths[~zero])
            target.data.write_batch(ds, de - ds, np.where(dv <= 0, 0 if target.is_qcow2 else ZERO_ALLOC, dv))
    if bitmaps:
        return _copy_bitmaps(chain[0].image, target)
    return ""


def _into_existing(store: ImageStore, key_fn: KeyFn, opts: dict[str, str], chain: list, out: str, fmt: str,
                   sparse: int) -> str:
    """-n: the output exists and is opened (read-write, its file lock) as ``fmt``; it must be at least as large
    as the source; the requests a restore sends (:func:`_write_through`): the source's data written over it, with
    the zeroes of its data requests, and its zero stretches as zeroes, which a raw file punches as holes
    (blk_make_zero is not tried: no fallback on a file); past the source's end it keeps what it held. A qcow2
    output: see :func:`_into_qcow2`."""
    if fmt not in ("raw", "qcow2"):
        open_image(store, key_fn, out, fmt, "write")  # (a driver bitlab does not simulate: its open's error)
        raise QemuImgError(foreign.not_simulated(fmt))
    if fmt == "qcow2":
        return _into_qcow2(store, key_fn, opts, chain, out, sparse)
    if "-c" in opts:
        raise QemuImgError("qemu-img: Compression not supported for this file format\n")
    if not sparse:
        raise QemuImgError("qemu-img: bitlab does not simulate a fully allocated raw output (-S 0)\n")
    if "--bitmaps" in opts:
        _check_bitmaps(chain[0].image, "--skip-broken-bitmaps" in opts)
    target = open_image(store, key_fn, out, fmt, "write")
    size = chain[0].size
    if -(-target.file_length() // 512) * 512 < size:
        raise QemuImgError("qemu-img: output file is smaller than input file\n")
    if "--bitmaps" in opts:
        raise QemuImgError(f"qemu-img: Format driver '{fmt}' does not support bitmaps\n")
    _write_through(store, key_fn, chain, out, "raw", sparse, backing="-B" in opts)
    return ""


def _write_through(store: ImageStore, key_fn: KeyFn, chain: list, out: str, driver: str, sparse: int,
                   backing: bool = False, new: bool = False, compressed: bool = False) -> None:
    """The requests img_convert sends a target that is not zero-initialised (:mod:`.convert_nbd`: one that is not
    ``new``, or has a ``backing`` file) through ``out`` opened as a ``driver`` node over its file, with its backing
    chain (read-write; BDRV_O_UNMAP unless ``-S 0``: its zero writes may free clusters or punch holes; its
    persistent bitmaps loaded), in batches in the order that shows; then its flush; closed, it stores them."""
    graph = BlockGraph(store, "/")
    try:
        node = graph.add({"driver": driver, "node-name": "qemu-img", "discard": "unmap" if sparse else "ignore",
                          "file": {"driver": "file", "filename": find_key(key_fn, out)}})
    except QMPError as err:
        raise QemuImgError(f"{err.printed}qemu-img: Could not open '{out}': {err.desc}\n"
                           f"{lock_hint(store, key_fn, out, err.desc)}") from None
    try:
        size = chain[0].size
        if node.size // 512 < -(-size // 512):
            raise QemuImgError("qemu-img: output file is smaller than input file\n")
        below = node.backing if new else None  # target_backing_sectors: the new target's backing file's sectors
        end = None if below is None else -(-below.size // 512) * 512
        if compressed:
            _compressed_through(node, chain, size, end)
        else:
            offsets, lengths, zero = (convert_nbd.requests(chain, size, sparse, backing, end) if backing
                                      else convert_nbd.requests(chain, size, sparse))
            batch_writes.write_plan(node, offsets, lengths, zero, content(chain, 0, size))
        node.flush()
    finally:
        graph.close_all()


def _compressed_through(node: BlockNode, chain: list, size: int, backing_end: int | None) -> None:
    """-c into a new image over a backing file (:func:`.convert_nbd.cluster_kinds`), one cluster after another:
    a data cluster holding something written compressed, one of zeroes and the source's zero clusters as zero
    writes (the target is not zero-initialised), what the backing file shows left alone; then the empty
    compressed write that rounds the file up to a sector."""
    cs = node.image.cluster_size
    kinds = convert_nbd.cluster_kinds(chain, size, cs, backing_end)
    s, e, v = content(chain, 0, size)
    n = kinds.size
    nonzero = touched_mask(s[v != 0] // cs, -(-e[v != 0] // cs), n)
    action = np.where(kinds == convert_nbd.BACKING, 0, np.where((kinds == convert_nbd.DATA) & nonzero, 1, 2))
    cut = np.flatnonzero(action[1:] != action[:-1]) + 1
    try:
        for a, b in zip(np.concatenate(([0], cut)).tolist(), np.concatenate((cut, [n])).tolist()):
            if action[a] == 1:
                clusters = np.arange(a, b, dtype=np.int64)
                lengths = np.minimum((clusters + 1) * cs, size) - clusters * cs
                ps, pe, pv, _ = clip_runs(s, e, v, np.array([a * cs]), np.array([min(b * cs, size)]))
                node.write_compressed_clusters(clusters, lengths, ps, pe, pv, detect=False)
            elif action[a] == 2:
                node.write_zeroes(a * cs, min(b * cs, size) - a * cs, unmap=True)
        node.write_compressed(0, 0, *(np.zeros(0, dtype=np.int64),) * 3)
    except QMPError as err:
        raise QemuImgError(f"qemu-img: {err.desc}\n") from None


def _into_qcow2(store: ImageStore, key_fn: KeyFn, opts: dict[str, str], chain: list, out: str, sparse: int) -> str:
    """-n into a qcow2 image that exists (a restore into a disk that is not running): opened read-write with its
    backing chain (BDRV_O_UNMAP: zero writes may free clusters), its persistent bitmaps loaded; the requests
    img_convert sends a target that is not new (:mod:`.convert_nbd`: the zero stretches written as zeroes too, so
    those bitmaps count the whole source), then its flush; closed, it stores the bitmaps."""
    if "-c" in opts:
        raise QemuImgError("qemu-img: bitlab does not simulate a compressed 'qemu-img convert -n' into a qcow2 image\n")
    if "--bitmaps" in opts:
        _check_bitmaps(chain[0].image, "--skip-broken-bitmaps" in opts)
        raise QemuImgError("qemu-img: bitlab does not simulate 'qemu-img convert -n --bitmaps' into a qcow2 image\n")
    open_image(store, key_fn, out, "qcow2", "write")  # (its lock and format, as qemu-img checks them first)
    _write_through(store, key_fn, chain, out, "qcow2", sparse, backing="-B" in opts)
    return ""


def _into_export(store: ImageStore, opts: dict[str, str], chain: list, out: str, fmt: str, sparse: int) -> str:
    """-n into a writable NBD export (:mod:`.convert_nbd`): opened as ``fmt`` (raw: what an export shows), the
    source's size at most the export's, then every request QEMU sends, then the client's flush."""
    if "-n" not in opts:
        raise QemuImgError("qemu-img: bitlab does not simulate qemu-img convert creating an image on an NBD export "
                           "(use -n to write into it)\n")
    if nbd.is_nbd(chain[0].name):
        raise QemuImgError("qemu-img: bitlab does not simulate qemu-img convert from one NBD export into another\n")
    if not sparse:
        raise QemuImgError("qemu-img: bitlab does not simulate a fully allocated output (-S 0) on an NBD export\n")
    target = nbd.from_filename(out)
    conn = nbd.connect(store, target, fmt, write=True)
    if "--bitmaps" in opts:
        raise QemuImgError("qemu-img: Format driver 'raw' does not support bitmaps\n")
    if "-c" in opts:
        raise QemuImgError("qemu-img: Compression not supported for this file format\n")
    size = chain[0].size
    if conn.size // 512 < -(-size // 512):
        raise QemuImgError("qemu-img: output file is smaller than input file\n")
    backing = "-B" in opts  # (the source's top alone)
    reqs = convert_nbd.requests(chain, size, sparse, True) if backing else convert_nbd.requests(chain, size, sparse)
    convert_nbd.write(conn, chain, reqs)
    return ""


def _write_compressed(target: ImageFile, s: np.ndarray, e: np.ndarray, v: np.ndarray, sparse: int) -> None:
    """-c: convert_co_write writes whole target clusters (the last one to the disk's end) compressed, in order
    (``-W`` or not: each write waits for the one before), leaving out those that read zeroes unless ``-S 0``;
    then an empty compressed write rounds the file's length up to a sector. What bitlab does not simulate
    (content it has no bytes for, a cluster that does not compress, a new refcount block) it refuses."""
    cs = target.cluster_size
    n = -(-target.size // cs)
    if sparse:
        clusters = np.flatnonzero(touched_mask(s[v != 0] // cs, -(-e[v != 0] // cs), n))
    else:
        clusters = np.arange(n, dtype=np.int64)
    if clusters.size:
        try:
            sizes = target.compressed_sizes(clusters, s, e, v)
        except ValueError:
            raise QemuImgError("qemu-img: bitlab does not simulate compressing opaque content\n") from None
        if (sizes < 0).any():
            raise QemuImgError("qemu-img: bitlab does not simulate a compressed write of a cluster that does not "
                               "compress (QEMU writes it as a normal cluster)\n")
        if not target.layout.compressed_fit(clusters, sizes):
            raise QemuImgError("qemu-img: bitlab does not simulate compressed clusters that need a new refcount "
                               "block\n")
        new = np.flatnonzero(np.diff(clusters, prepend=-2) != 1)  # the written clusters as ranges, their runs
        q_s = clusters[new] * cs
        q_e = np.minimum((clusters[np.append(new[1:], clusters.size) - 1] + 1) * cs, target.size)
        ps, pe, pv, _ = clip_runs(s, e, v, q_s, q_e)
        target.write_compressed(clusters, sizes, ps, pe, pv)
    target.layout.align_end()


def _check_bitmaps(source: ImageFile, skip_broken: bool) -> None:
    """convert_check_bitmaps: a qcow2 v3 source; no bitmap left in use, unless skipped."""
    if not source.is_qcow2 or source.compat == "0.10":
        raise QemuImgError("qemu-img: Source lacks bitmap support\n")
    broken = [b.name for b in reversed(source.bitmaps) if b.in_use]  # (as loaded: the newest first)
    if broken and not skip_broken:
        raise QemuImgError(f"qemu-img: Cannot copy inconsistent bitmap '{broken[0]}'\n"
                           "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it\n")


def _copy_bitmaps(source: ImageFile, target: ImageFile) -> QemuImgOutput:
    """convert_copy_bitmaps: each consistent persistent bitmap of the source added to the target with its
    granularity and enabled state, then merged; stored when the target closes, in the source's order. What it
    prints: a warning for each inconsistent one it skips (``--skip-broken-bitmaps``), as loaded (newest first)."""
    target.bitmaps = [b.anew() for b in source.bitmaps if not b.in_use]
    return QemuImgOutput("", "".join(f"qemu-img: warning: Skipping inconsistent bitmap '{b.name}'\n"
                                     for b in reversed(source.bitmaps) if b.in_use))

