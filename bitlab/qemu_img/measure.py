"""qemu-img measure: how large a new image would be, as img_measure and the drivers' bdrv_measure reckon it.

``--size N`` measures an empty image; a file measures a copy of what its backing chain reads (the block
status over the whole chain: runs of data count, zeroes and unallocated ranges do not). For ``-O qcow2``
(qcow2_measure) the fully allocated size is qcow2_calc_prealloc_size's header, L2 and L1 tables, refcount
metadata and data; the required size drops the data clusters no data run touches. ``-O raw`` (raw_measure)
is the virtual size. A qcow2 v3 file's persistent bitmaps add ``bitmaps size``
(qcow2_get_persistent_dirty_bitmap_size). Everything is counted over runs, never per cluster.
"""

from __future__ import annotations

import numpy as np

from ..block import foreign
from ..block.create import cluster_size_error, refcount_bits_error
from ..block.node import STATUS_DATA
from ..block.qcow2_host import refcount_metadata
from ..block.store import QCOW2_DEFAULT_CLUSTER, ImageFile, ImageStore
from ..qmp_order import to_json_pretty, wire_order
from . import nbd, qemu_opts
from ._common import KeyFn, Layer, QemuImgError, cvtnum, open_chain
from .getopt import GetoptError, getopt_long
from .image_opts import named_by, resolve
from .layers import DATA, chain_status, file_status
from .qemu_opts import CREATE_OPTS, CRYPTO_OPTS, FILE_OPTS, PREALLOC_MODES, STRING

L1E_SIZE = 8
QCOW_MAX_L1_SIZE = 0x2000000
_U64 = 1 << 64
LONG_OPTIONS = {"help": False, "image-opts": False, "object": True, "output": True, "size": True,
                "force-share": False}


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def prealloc_size(total: int, cluster_size: int, refcount_order: int, extended_l2: bool) -> int:
    """qcow2_calc_prealloc_size: a fully allocated image of ``total`` bytes (header, L2 tables, L1 table in
    whole clusters, refcount metadata, data)."""
    aligned = _round_up(total, cluster_size)
    l2e = 16 if extended_l2 else 8
    nl2e = _round_up(aligned // cluster_size, cluster_size // l2e)
    nl1e = _round_up(nl2e * l2e // cluster_size, cluster_size // L1E_SIZE)
    meta = cluster_size + nl2e * l2e + nl1e * L1E_SIZE
    blocks, table = refcount_metadata((meta + aligned) // cluster_size, cluster_size, refcount_order)
    meta += (blocks + table) * cluster_size
    return meta + aligned


def data_clusters(chain: list[Layer], cluster_size: int) -> int:
    """The clusters of ``cluster_size`` that a run of data touches (qcow2_measure's walk over
    bdrv_block_status_above: a data run counts from its first cluster's start to its last one's end)."""
    # the host offsets matter only where a layer's file answers for its data (see file_status)
    hosts = any(layer.image.is_qcow2 and layer.image.metadata_preallocated() for layer in chain)
    s, e, c, _d, _h, zero = file_status(chain, *chain_status(chain, hosts=hosts))
    keep = (c == DATA) & ~zero & (e > s)
    return clusters_touched(s[keep], e[keep], cluster_size)


def clusters_touched(starts: np.ndarray, ends: np.ndarray, cluster_size: int) -> int:
    """The clusters sorted, disjoint runs of data touch, each counted once."""
    first, last = starts // cluster_size, (ends - 1) // cluster_size
    if not first.size:
        return 0
    return int((last - first + 1).sum() - np.count_nonzero(first[1:] == last[:-1]))


def bitmaps_size(image: ImageFile, size: int, cluster_size: int) -> int:
    """qcow2_get_persistent_dirty_bitmap_size: each stored bitmap's data and table in whole clusters of the
    new image, and the bitmap directory (an entry of 24 bytes and the name, padded to 8)."""
    total = directory = 0
    for bitmap in image.bitmaps:
        bits = -(-size // bitmap.granularity)
        nbytes = -(-bits // 8)
        clusters = -(-nbytes // cluster_size)
        total += clusters * cluster_size + _round_up(clusters * 8, cluster_size)
        directory += _round_up(24 + len(bitmap.name.encode()), 8)
    return total + _round_up(directory, cluster_size)


def _not_simulated(what: str) -> QemuImgError:
    return QemuImgError(f"qemu-img: bitlab does not simulate {what}\n")


def _crypto(opts: dict, prefix: str) -> None:
    """A LUKS header's size needs its secret: qemu-img without ``--object`` has none."""
    if any(key.startswith(prefix) and key[len(prefix):] in CRYPTO_OPTS and key != f"{prefix}key-secret"
           for key in opts):
        raise _not_simulated("measuring LUKS encryption options")
    secret = opts.get(f"{prefix}key-secret")
    if secret is None:
        raise QemuImgError(f"qemu-img: Parameter '{prefix}key-secret' is required for cipher\n")
    raise QemuImgError(f"qemu-img: No secret with id '{secret}'\n")


def qcow2_measure(opts: dict, chain: list[Layer] | None, data: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """qcow2_measure: the options checked in QEMU's order, then the sizes (BlockMeasureInfo members); ``data``: the
    runs the source's block status calls data (an NBD export's), instead of its chain's."""
    extended_l2 = bool(opts.get("extended_l2", False))
    cs = int(opts.get("cluster_size", QCOW2_DEFAULT_CLUSTER))
    error = cluster_size_error(cs, extended_l2)
    if error is not None:
        raise QemuImgError(f"qemu-img: {error}\n")
    compat = opts.get("compat")
    if compat not in (None, "0.10", "1.1"):
        raise QemuImgError(f"qemu-img: Invalid compatibility level: '{compat}'\n")
    version = 2 if compat == "0.10" else 3
    refcount_bits = int(opts.get("refcount_bits", 16))
    error = refcount_bits_error(refcount_bits, version, "(use compat=1.1 or greater)")
    if error is not None:
        raise QemuImgError(f"qemu-img: {error}\n")
    prealloc = opts.get("preallocation", "off")
    if prealloc not in PREALLOC_MODES:
        raise QemuImgError(f"qemu-img: invalid parameter value: {prealloc}\n")
    if opts.get("encrypt.format") == "luks":
        _crypto(opts, "encrypt.")
    virtual = _round_up(int(opts.get("size", 0)), cs) % _U64  # (a uint64_t)
    l2e = 16 if extended_l2 else 8
    if -(-(virtual // cs) // (cs // l2e)) * L1E_SIZE > QCOW_MAX_L1_SIZE:
        raise QemuImgError("qemu-img: The image size is too large (try using a larger cluster size)\n")
    required = 0
    if chain is not None:  # (the size of the image measured is not checked against the L1 table's limit)
        virtual = _round_up(chain[0].size, cs)
        clusters = clusters_touched(*data, cs) if data is not None else data_clusters(chain, cs)
        required = virtual if "backing_file" in opts else clusters * cs
    if prealloc in ("falloc", "full"):
        required = virtual
    fully = prealloc_size(virtual, cs, refcount_bits.bit_length() - 1, extended_l2)
    info = {"required": fully - virtual + required, "fully-allocated": fully}
    if version >= 3 and chain and chain[0].image.is_qcow2 and chain[0].image.compat != "0.10":
        info["bitmaps"] = bitmaps_size(chain[0].image, chain[0].size, cs)  # (both sides store bitmaps)
    return info


def raw_measure(opts: dict, chain: list[Layer] | None) -> dict:
    """raw_measure: every byte of the virtual disk, whole sectors."""
    size = chain[0].size if chain else _round_up(int(opts.get("size", 0)), 512)
    return {"required": size, "fully-allocated": size}


def _snapshot_param(text: str) -> None:
    """-l snapshot.id=ID,snapshot.name=NAME: parsed as the option is read."""
    if not text.startswith("snapshot."):
        return
    try:
        qemu_opts.parse(text, {"snapshot.id": STRING, "snapshot.name": STRING})
    except QemuImgError as err:
        raise QemuImgError(f"{err.stderr}qemu-img: Failed in parsing snapshot param '{text}'\n") from None


def _output_driver(fmt: str, options: str | None) -> dict:
    """-O's driver as img_measure looks it up, and ``-o`` parsed against its creation options."""
    if foreign.unknown(fmt) or not foreign.creatable(fmt):  # (Debian's modules: not found)
        raise QemuImgError(foreign.creation_error(fmt, "qemu-img: "))
    own = CREATE_OPTS.get(fmt, FILE_OPTS)  # (file-posix's are the file driver's own)
    if fmt not in CREATE_OPTS and fmt != "file" and options is not None \
            and not {name for name, _ in qemu_opts.items(options)} <= FILE_OPTS.keys():
        raise _not_simulated(f"the creation options of '{fmt}'")
    opts = {}
    if options is not None:
        try:
            opts = qemu_opts.parse(options, {**own, **FILE_OPTS})
        except QemuImgError as err:
            raise QemuImgError(f"{err.stderr}qemu-img: Invalid options for file format '{fmt}'\n") from None
    if fmt not in CREATE_OPTS:
        raise QemuImgError(f"qemu-img: Block driver '{fmt}' does not support size measurement\n")
    return opts


def _human(info: dict) -> str:
    out = f"required size: {info['required']}\nfully allocated size: {info['fully-allocated']}\n"
    return out + (f"bitmaps size: {info['bitmaps']}\n" if "bitmaps" in info else "")


def img_measure(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img measure [--output=human|json] [-O fmt] [-o options] [--size N | [-f fmt] [-l snap] [-U] filename].

    As img_measure: each option is taken (and checked) in turn; then one filename or ``--size``; the image
    opened read-only (its chain, the shared file lock unless ``-U``); the output format and its options;
    the driver's measure."""
    output, fmt, out_fmt, options = "human", None, "raw", None
    size: int | None = None
    snapshot = image_opts = force_share = False
    positional: list[str] = []
    try:
        for opt, value in getopt_long(args, "hf:O:o:l:U", LONG_OPTIONS, "measure", positional):
            text = value or ""
            if opt in ("-h", "--help"):
                raise _not_simulated("qemu-img's help (qemu-img prints it and exits with 0)")
            if opt == "-f":
                fmt = text
            elif opt == "-O":
                out_fmt = text
            elif opt == "-o":  # accumulate_options
                if not qemu_opts.valid_option_list(text):
                    raise QemuImgError(f"qemu-img: Invalid option list: {text}\n")
                options = text if options is None else f"{options},{text}"
            elif opt == "-l":
                _snapshot_param(text)
                snapshot = True
            elif opt in ("-U", "--force-share"):
                force_share = True
            elif opt == "--object":
                raise _not_simulated("--object")
            elif opt == "--image-opts":
                image_opts = True
            elif opt == "--output":
                if text not in ("human", "json"):
                    raise QemuImgError("qemu-img: --output must be used with human or json as argument.\n")
                output = text
            else:  # --size
                size = cvtnum("image size", text)
    except GetoptError as err:
        raise QemuImgError(f"{err.message}\nqemu-img: bitlab does not simulate qemu-img's help "
                           "(qemu-img prints it and exits with 0)\n") from None
    if len(positional) > 1:
        raise QemuImgError("qemu-img: At most one filename argument is allowed.\n")
    filename = positional[0] if positional else None
    if filename is None and (image_opts or fmt is not None or snapshot):
        raise QemuImgError("qemu-img: --image-opts, -f, and -l require a filename argument.\n")
    if filename is not None and size is not None:
        raise QemuImgError("qemu-img: --size N cannot be used together with a filename.\n")
    if filename is None and size is None:
        raise QemuImgError("qemu-img: Either --size N or one filename must be specified.\n")
    chain, data = None, None
    target = None if filename is None else nbd.name_of(filename, image_opts)
    if target is not None:  # an export of the machine's NBD server: what its block status calls data
        if image_opts and fmt is not None:
            raise QemuImgError("qemu-img: --image-opts and --format are mutually exclusive\n")
        conn = nbd.connect(store, target, fmt)
        chain = [nbd.layer(conn, target, content=False)]  # (measure reads block status, no data)
        runs_s, runs_e, codes = nbd.map_runs(conn)
        data = (runs_s[codes == STATUS_DATA], runs_e[codes == STATUS_DATA])
        if snapshot:
            raise QemuImgError("qemu-img: Failed to load snapshot: Block format 'raw' used by device '' does not "
                               "support temporarily loading internal snapshots\n")
    elif filename is not None:
        optstr = None
        if image_opts:  # (img_open: the options name the image, -f may not)
            if fmt is not None:
                raise QemuImgError("qemu-img: --image-opts and --format are mutually exclusive\n")
            optstr, (filename, fmt) = filename, resolve(filename)
        with named_by(optstr, filename):
            chain = open_chain(store, key_fn, filename, fmt, "force-share" if force_share else "shared", on_disk=True)
        if snapshot:  # bitlab's images have no internal snapshots
            reason = "Can't find snapshot" if chain[0].image.is_qcow2 else \
                "Block format 'raw' used by device '' does not support temporarily loading internal snapshots"
            raise QemuImgError(f"qemu-img: Failed to load snapshot: {reason}\n")
    opts = _output_driver(out_fmt, options)
    if size is not None:
        opts["size"] = size
    if out_fmt == "luks":
        _crypto(opts, "")
    info = qcow2_measure(opts, chain, data) if out_fmt == "qcow2" else raw_measure(opts, chain)
    return to_json_pretty(wire_order(info)) + "\n" if output == "json" else _human(info)
