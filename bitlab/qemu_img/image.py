"""qemu-img create, info and check on the machine's image store, with qemu-img's texts."""

from __future__ import annotations

from ..block.drivers import QEMU_DRIVERS
from ..block.info import dump_specific, file_image_info
from ..block.node import round_sector
from ..block.paths import full_backing_filename
from ..block.store import (
    QCOW2_DEFAULT_CLUSTER,
    QCOW2_MAX_L1_ENTRIES,  # noqa: F401  (re-exported by bitlab.qemu_img)
    ImageFile,
    ImageStore,
    qcow2_l1_fits,
)
from ..qmp_order import to_json_pretty, wire_order
from ..units import format_size, parse_size
from ._common import (
    INT64_MAX,
    KeyFn,
    Layer,
    QemuImgError,
    backing_name,
    check_driver,
    cvtnum,
    find_key,
    new_key,
    open_image,
    opened_name,
)
from ._common import options as _options
from ._common import split_args as _split_args
from .image_opts import image_args, named_by
from .layers import layer_runs, split_runs

SIZE_HELP = ("qemu-img: Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n"
             "qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n")
RAW_PROBE_WARNING = (
    "WARNING: Image format was not specified for '{}' and probing guessed raw.\n"
    "         Automatically detecting the format is dangerous for raw images, write operations on block 0 "
    "will be restricted.\n"
    "         Specify the 'raw' format explicitly to remove the restrictions.\n")


def create(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img create [-f fmt] [-b backing] [-F backing_fmt] [-o opts] filename [size]."""
    opts, positional = _split_args(args, {"-f", "-b", "-F", "-o"}, {"-q", "-u"})
    quiet = "-q" in opts
    fmt = opts.get("-f", "raw")
    backing, backing_fmt = opts.get("-b"), opts.get("-F")
    options = _options(opts.get("-o", ""))
    if fmt not in ("raw", "qcow2"):
        if fmt not in QEMU_DRIVERS and positional:  # (img_create's bdrv_find_format)
            raise QemuImgError(f"qemu-img: {positional[0]}: Unknown file format '{fmt}'\n")
        raise QemuImgError(f"qemu-img: bitlab does not simulate the image format '{fmt}'\n")
    if not positional:
        raise QemuImgError("qemu-img: Expecting image file name\nTry 'qemu-img --help' for more information\n")
    filename = positional[0]
    size_text = positional[1] if len(positional) > 1 else options.get("size")
    size: int | None = None
    if len(positional) > 1:  # (img_create's cvtnum)
        size = cvtnum("image size", size_text)
    elif size_text is not None:  # (-o size=: as the size option reads it)
        try:
            size = parse_size(size_text)
        except ValueError:
            raise QemuImgError(SIZE_HELP) from None
        if size > INT64_MAX:
            raise QemuImgError(f"qemu-img: Invalid image size specified. Must be between 0 and {INT64_MAX}.\n")
    if backing and fmt != "qcow2":
        raise QemuImgError(f"qemu-img: {filename}: Backing file not supported for file format '{fmt}'\n")
    if backing and backing == filename:
        raise QemuImgError(f"qemu-img: {filename}: Error: Trying to create an image with the same filename as the "
                           "backing file\n")
    base: ImageFile | None = None
    if backing and "-u" in opts:  # unsafe: the backing file is not opened
        if not backing_fmt:
            raise QemuImgError(f"qemu-img: {filename}: Backing file specified without backing format\n")
    elif backing:
        try:  # relative to the new image's directory
            full = full_backing_filename(filename, backing) or ""
        except ValueError as err:
            raise QemuImgError(f"qemu-img: {filename}: {err}\n") from None
        bkey = find_key(key_fn, full)
        if bkey is None or bkey not in store:
            raise QemuImgError(f"qemu-img: {filename}: Could not open '{full}': No such file or directory\n"
                               "Could not open backing image.\n")
        base = store[bkey]
        if not backing_fmt:
            raise QemuImgError(f"qemu-img: {filename}: Backing file specified without backing format\n"
                               f"Detected format of {base.fmt}.")
    if size is None:
        if base is None:
            raise QemuImgError(f"qemu-img: {filename}: Image creation needs a size parameter\n")
        size = round_sector(base.size) if backing_fmt == base.fmt == "qcow2" else round_sector(base.file_length())
    cluster = parse_size(options.get("cluster_size", QCOW2_DEFAULT_CLUSTER))
    compat = options.get("compat", "1.1")
    if compat in ("v2", "0.10"):
        compat = "0.10"
    elif compat in ("v3", "1.1"):
        compat = "1.1"
    if fmt == "raw":
        line = f"Formatting '{filename}', fmt=raw size={size}\n"
        store.create(_new_key(key_fn, filename, "" if quiet else line), "raw", size)
        return "" if quiet else line
    backing_text = f" backing_file={backing} backing_fmt={backing_fmt}" if backing else ""
    compat_text = f" compat={options['compat']}" if "compat" in options else ""  # as given (v2, 0.10, ...)
    line = (f"Formatting '{filename}', fmt=qcow2 cluster_size={cluster} extended_l2=off "
            f"compression_type=zlib size={size}{compat_text}{backing_text} lazy_refcounts=off refcount_bits=16\n")
    key = _new_key(key_fn, filename, "" if quiet else line)
    if not qcow2_l1_fits(size, cluster):
        raise _too_large(filename, line)
    # qcow2_co_create_opts rounds the size up to a sector, silently (the line above says what was asked)
    store.create(key, "qcow2", round_sector(size), cluster_size=cluster, backing_file=backing, backing_fmt=backing_fmt,
                 compat=compat)
    return "" if quiet else line


def _new_key(key_fn: KeyFn, filename: str, stdout: str) -> str:
    """The new file's name in the store; qemu-img prints its "Formatting" line before it fails."""
    try:
        return new_key(key_fn, filename)
    except QemuImgError as err:
        err.stdout = stdout
        raise


def _too_large(filename: str, stdout: str) -> QemuImgError:
    # qemu-img prints its "Formatting" line before it fails
    return QemuImgError(f"qemu-img: {filename}: The image size is too large for file format 'qcow2' "
                        "(try using a larger cluster size)\n", stdout=stdout)


def _human(info: dict) -> str:
    """bdrv_image_info_dump's text."""
    lines = [f"image: {info['filename']}", f"file format: {info['format']}",
             f"virtual size: {format_size(info['virtual-size'])} ({info['virtual-size']} bytes)",
             f"disk size: {format_size(info['actual-size'])}"]
    if "cluster-size" in info:
        lines.append(f"cluster_size: {info['cluster-size']}")
    if "backing-filename" in info:
        lines.append(f"backing file: {info['backing-filename']}")
        if info.get("full-backing-filename") != info["backing-filename"]:
            lines[-1] += f" (actual path: {info['full-backing-filename']})"
        if "backing-filename-format" in info:
            lines.append(f"backing file format: {info['backing-filename-format']}")
    if "format-specific" in info:
        lines.append("Format specific information:")
        lines += dump_specific(wire_order(info["format-specific"]["data"]), 4)
    return "\n".join(lines) + "\n"


def info(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img info [--output=json] [-f fmt] [-U] [--backing-chain] filename."""
    opts, positional = _split_args(args, {"-f", "--output"},
                                   {"-U", "--force-share", "--backing-chain", "--image-opts"})
    if not positional:
        raise QemuImgError("qemu-img: Expecting one image file name\nTry 'qemu-img --help' for more information\n")
    top, fmt, optstr = image_args(opts, positional[0])
    with named_by(optstr, top):
        return _info(store, opts, top, fmt, key_fn)


def _info(store: ImageStore, opts: dict[str, str], top: str, fmt: str | None, key_fn: KeyFn) -> str:
    """:func:`info` of the image ``top`` opened as ``fmt`` (None: probed)."""
    chain = []
    name: str | None = top
    check_driver(top, fmt)
    while name is not None:
        key = find_key(key_fn, name)
        if key is None or key not in store:
            raise QemuImgError(f"qemu-img: Could not open '{name}': Could not open '{name}': "
                               "No such file or directory\n")
        image = store[key]
        if image.unknown:
            raise QemuImgError(f"qemu-img: {image.unknown}\n")
        if not chain and "-U" not in opts and "--force-share" not in opts:
            open_image(store, key_fn, name, None, "shared")  # the file lock
        if fmt == "qcow2" and not image.is_qcow2:
            raise QemuImgError(f"qemu-img: Could not open '{name}': Image is not in qcow2 format\n")
        fmt = "qcow2" if image.is_qcow2 and fmt in (None, "qcow2") else "raw"
        chain.append(file_image_info(image, fmt=fmt, filename=name))
        if "full-backing-filename" in chain[-1]:  # relative to the image's directory
            chain[-1]["full-backing-filename"] = backing_name(name, image.backing_file or "")
        if "--backing-chain" not in opts or fmt != "qcow2" or not image.backing_file:
            break
        name, fmt = opened_name(backing_name(name, image.backing_file)), image.backing_fmt
    if opts.get("--output") == "json":
        out = [wire_order(i) for i in chain]
        return to_json_pretty(out if "--backing-chain" in opts else out[0]) + "\n"
    return "\n".join(_human(i) for i in chain)


def check(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img check on a qcow2 image: bitlab's images are never corrupt."""
    opts, positional = _split_args(args, {"-f", "--output", "-r"}, {"-U", "-q", "--image-opts"})
    if not positional:
        raise QemuImgError("qemu-img: Expecting one image file name\n")
    name, fmt, optstr = image_args(opts, positional[0])
    with named_by(optstr, name):
        check_driver(name, fmt)
        key = find_key(key_fn, name)
        if key is None or key not in store:
            raise QemuImgError(f"qemu-img: Could not open '{name}': Could not open '{name}': "
                               "No such file or directory\n")
        image = store[key]
        if image.unknown:
            raise QemuImgError(f"qemu-img: {image.unknown}\n")
        if fmt == "qcow2" and not image.is_qcow2:
            raise QemuImgError(f"qemu-img: Could not open '{name}': Image is not in qcow2 format\n")
    if not image.is_qcow2 or fmt == "raw":
        raise QemuImgError("qemu-img: This image format does not support checks\n", 63)
    cs = image.cluster_size
    compressed = image.layout.compressed_count()  # (allocated, compressed and fragmented by nature)
    allocated = image.allocated_clusters() + compressed
    end = image.layout.end_cluster() * cs
    out = "No errors were found on the image.\n"
    if allocated:
        total = -(-image.size // cs)
        fragmented = _fragmented(Layer(name, image)) + compressed
        out += (f"{allocated}/{total} = {allocated * 100 / total:0.2f}% allocated, "
                f"{fragmented * 100 / allocated:0.2f}% fragmented, "
                f"{compressed * 100 / allocated:0.2f}% compressed clusters\n")
    return out + f"Image end offset: {end}\n"


def _fragmented(layer: Layer) -> int:
    """Clusters whose host cluster does not follow the previous host cluster in the same L2 table
    (check_refcounts_l2 counts them table by table, unallocated and plain zero entries between left out)."""
    s, e, _, host = layer_runs(layer)
    cs = layer.image.cluster_size
    span = cs * (cs // 8)
    runs_s = s
    s, e, idx = split_runs(s, e, host >= 0, span)
    hosted = host[idx] >= 0
    s, e, idx = s[hosted], e[hosted], idx[hosted]
    host = host[idx] + s - runs_s[idx]
    table = s // span
    return int(((host[1:] != host[:-1] + (e[:-1] - s[:-1])) & (table[1:] == table[:-1])).sum())
