"""qemu-img create, info and check on the machine's image store, with qemu-img's texts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..block import foreign, perms
from ..block.create import CreateFailed, check_qcow2_options, not_simulated_qcow2, prealloc_image
from ..block.drivers import QEMU_DRIVERS
from ..block.extents import range_items
from ..block.info import file_image_info, image_info_dump
from ..block.node import round_sector
from ..block.paths import full_backing_filename, name_too_long
from ..block.store import (
    QCOW2_MAX_L1_ENTRIES,  # noqa: F401  (re-exported by bitlab.qemu_img)
    ImageFile,
    ImageStore,
    qcow2_l1_fits,
)
from ..errors import QMPError
from ..qmp_order import to_json_pretty, wire_order
from . import cmdline, nbd, qemu_opts
from ._common import (
    USAGE,
    KeyFn,
    Layer,
    QemuImgError,
    QemuImgOutput,
    backing_name,
    check_driver,
    cvtnum,
    find_key,
    loop_error,
    new_key,
    open_chain,
    open_image,
    opened_name,
)
from .image_opts import image_args, named_by
from .layers import layer_runs, split_runs
from .qemu_opts import PREALLOC_MODES

SIZE_HELP = ("qemu-img: Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n"
             "qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n")
RAW_PROBE_WARNING = (
    "WARNING: Image format was not specified for '{}' and probing guessed raw.\n"
    "         Automatically detecting the format is dangerous for raw images, write operations on block 0 "
    "will be restricted.\n"
    "         Specify the 'raw' format explicitly to remove the restrictions.\n")


def create(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img create [-q] [-f fmt] [-b backing] [-F backing_fmt] [-u] [-o opts] filename [size].

    As img_create, then bdrv_img_create: ``-o`` read against the format's creation options (and
    file-posix's), the size given once, ``-b``/``-F`` over ``backing_file``/``backing_fmt``, the backing file
    opened for its size (not with ``-u``); the "Formatting" line; then the driver's create (qcow2's checks,
    as blockdev-create's; on failure the new file is deleted)."""
    opts, positional = cmdline.parse("create", args, {"-f", "-b", "-F", "-o", "-q", "-u"})
    quiet = "-q" in opts
    fmt = opts.get("-f", "raw")
    if not positional:
        raise QemuImgError(f"qemu-img: Expecting image file name\n{USAGE}")
    filename = positional[0]
    size: int | None = cvtnum("image size", positional[1]) if len(positional) > 1 else None
    if len(positional) > 2:
        raise QemuImgError(f"qemu-img: Unexpected argument: {positional[2]}\n{USAGE}")
    if "-o" in opts and qemu_opts.has_help(opts["-o"]):
        raise QemuImgError("qemu-img: bitlab does not simulate 'qemu-img create -o help'\n")
    if fmt not in ("raw", "qcow2"):  # (bdrv_img_create's)
        raise QemuImgError(foreign.creation_error(fmt, f"qemu-img: {filename}: "))

    def fail(message: str, stdout: str = "") -> QemuImgError:
        return QemuImgError(f"qemu-img: {filename}: {message}\n", stdout=stdout)

    desc = {**qemu_opts.FILE_OPTS, **qemu_opts.CREATE_OPTS[fmt]}
    try:
        values = qemu_opts.parse(opts.get("-o", ""), desc)
    except QemuImgError as err:
        raise fail(err.stderr.removeprefix("qemu-img: ").rstrip("\n")) from None
    given = dict(qemu_opts.items(opts.get("-o", "")))
    if "size" in values:
        if size is not None:
            raise fail("The image size must be specified only once")
        size = int(values["size"])
    if "-b" in opts:
        if fmt != "qcow2":
            raise fail(f"Backing file not supported for file format '{fmt}'")
        given["backing_file"] = values["backing_file"] = opts["-b"]
    if "-F" in opts:
        if fmt != "qcow2":
            raise fail(f"Backing file format not supported for file format '{fmt}'")
        given["backing_fmt"] = values["backing_fmt"] = opts["-F"]
    backing, backing_fmt = values.get("backing_file"), values.get("backing_fmt")
    assert backing is None or isinstance(backing, str)
    assert backing_fmt is None or isinstance(backing_fmt, str)
    if backing is not None and backing == filename:
        raise fail("Error: Trying to create an image with the same filename as the backing file")
    if backing == "":
        raise fail("Expected backing file name, got empty string")
    base: ImageFile | None = None
    if backing and "-u" not in opts:
        found = foreign.looked_up(backing_fmt)  # (bdrv_open's driver, before it looks for the file)
        if found is not None:
            raise QemuImgError(f"{found[0]}qemu-img: {filename}: {found[1]}\nCould not open backing image.\n")
        try:  # relative to the new image's directory
            full = full_backing_filename(filename, backing) or ""
        except ValueError as err:
            raise fail(str(err)) from None
        bkey = find_key(key_fn, full)
        if bkey is None or bkey not in store:
            raise fail(f"Could not open '{full}': No such file or directory\nCould not open backing image.")
        base = store[bkey]
        if backing_fmt not in foreign.SIMULATED:  # (read-only, without I/O: its size is all it wants)
            found = foreign.opened(full, backing_fmt, base, write=False, no_io=True)
            if found is None:
                raise QemuImgError(foreign.not_simulated(backing_fmt))
            raise QemuImgError(f"{found[0]}qemu-img: {filename}: {found[1]}\nCould not open backing image.\n")
        if backing_fmt == "qcow2" and not base.is_qcow2:  # (qcow2_open: its magic)
            raise fail("Image is not in qcow2 format\nCould not open backing image.")
        if base.is_qcow2 and backing_fmt in (None, "qcow2"):  # (opened with its chain, read-only)
            base.opened(store.warn, False)
        missing = _chain_error(base, full, key_fn, store, backing_fmt)
        if missing is not None:
            raise QemuImgError(f"{missing[0]}qemu-img: {filename}: {missing[1]}\nCould not open backing image.\n")
        if not backing_fmt:
            raise QemuImgError(f"qemu-img: {filename}: Backing file specified without backing format\n"
                               f"Detected format of {base.fmt}.")
    elif backing and not backing_fmt:
        raise fail("Backing file specified without backing format")
    if size is None:
        if base is None:
            raise fail("Image creation needs a size parameter")
        size = round_sector(base.size) if backing_fmt == base.fmt == "qcow2" else round_sector(base.file_length())
    line = "" if quiet else _formatting(filename, fmt, desc, given, values, size)
    if fmt == "raw":
        prealloc = str(values.get("preallocation", "off"))
        if prealloc not in PREALLOC_MODES:
            raise fail(f"invalid parameter value: {prealloc}", line)
        key = _new_key(key_fn, filename, line)
        _check_unlocked(store, key, filename, line)
        image = store.create(key, "raw", 0)  # raw_co_create: the file emptied, then resized (preallocated)
        if prealloc == "metadata":
            raise fail("Unsupported preallocation mode: metadata", line)
        image.truncate_raw(size, prealloc)
        return line
    version, cluster = qcow2_create_checks(values, size, fail, line)
    key = _new_key(key_fn, filename, line)
    _check_unlocked(store, key, filename, line)
    if not qcow2_l1_fits(size, cluster):
        raise _too_large(filename, line)
    # qcow2_co_create_opts rounds the size up to a sector, silently (the line above says what was asked)
    image = store.create(key, "qcow2", round_sector(size), cluster_size=cluster, backing_file=backing or None,
                         backing_fmt=backing_fmt, compat="0.10" if version == 2 else "1.1")
    prealloc_image(image, str(values.get("preallocation", "off")))
    return line


def _check_unlocked(store: ImageStore, key: str, filename: str, line: str) -> None:
    """raw_co_create takes the file's write lock before it truncates it: a file a running QEMU has open (a
    node's locks do not share writes) cannot be created again."""
    if key in store and store.locks is not None:
        error = perms.lock_error(perms.WRITE | perms.RESIZE, perms.ALL, store.locks(store[key]))
        if error is not None:
            raise QemuImgError(f"qemu-img: {filename}: {error}\nIs another process using the image [{filename}]?\n",
                               stdout=line)


def _formatting(filename: str, fmt: str, desc: dict[str, str], given: dict[str, str],
                values: dict[str, int | bool | str], size: int) -> str:
    """bdrv_img_create's "Formatting" line: qemu_opts_print over the creation options in the format's order
    (file-posix's after), each set one as given (a size or number as read), else its default."""
    names = [*qemu_opts.CREATE_OPTS[fmt], *(n for n in qemu_opts.FILE_OPTS if n not in qemu_opts.CREATE_OPTS[fmt])]
    defaults = qemu_opts.DEFAULTS.get(fmt, {})
    parts = []
    for name in names:
        if name == "size":
            parts.append(f"size={size}")
        elif name in given:
            value = values[name] if desc[name] in (qemu_opts.SIZE, qemu_opts.NUMBER) else given[name]
            parts.append(f"{name}={value}")
        elif name in defaults:
            parts.append(f"{name}={defaults[name]}")
    return f"Formatting '{filename}', fmt={fmt} {' '.join(parts)}\n"


def qcow2_create_checks(values: dict[str, int | bool | str], size: int, fail: Callable[..., QemuImgError],
                        line: str = "") -> tuple[int, int]:
    """qcow2_co_create_opts and qcow2_co_create's checks of ``-o``'s values (``fail(message, stdout)`` makes the
    error as the caller words it; ``line``: what was printed before), then what bitlab does not simulate;
    returns (version, cluster size)."""
    qapi = _qcow2_create_options(values, size, fail, line)
    try:
        version, cluster = check_qcow2_options(qapi, early=True)
        if qapi.get("compression-type", "zlib") != "zlib" and version < 3:
            raise CreateFailed("Non-zlib compression type is only supported with compatibility level 1.1 and above "
                               "(use version=v3 or greater)")
    except CreateFailed as err:
        raise fail(err.message, line) from None
    try:
        not_simulated_qcow2(qapi)
    except QMPError as err:
        raise QemuImgError(f"qemu-img: {err.desc}\n", stdout=line) from None
    if "encrypt" in qapi:
        raise QemuImgError("qemu-img: bitlab does not simulate encrypted qcow2 images\n", stdout=line)
    return version, cluster


QCOW2_ENUMS = {"version": ("v2", "v3"), "backing-fmt": QEMU_DRIVERS, "preallocation": PREALLOC_MODES,
               "compression-type": ("zlib", "zstd")}
"""The enum members of BlockdevCreateOptionsQcow2 that -o sets, in the order the QAPI visitor meets them."""


def _qcow2_create_options(values: dict[str, int | bool | str], size: int, fail: Callable[..., QemuImgError],
                          line: str) -> dict:
    """qcow2_co_create_opts: the -o values as BlockdevCreateOptionsQcow2 (compat 0.10/1.1 as v2/v3, the legacy
    names renamed), the QAPI visitor's enum checks."""
    renames = {"backing_file": "backing-file", "backing_fmt": "backing-fmt", "cluster_size": "cluster-size",
               "lazy_refcounts": "lazy-refcounts", "extended_l2": "extended-l2", "refcount_bits": "refcount-bits",
               "compat": "version", "data_file": "data-file", "data_file_raw": "data-file-raw",
               "compression_type": "compression-type", "preallocation": "preallocation"}
    qapi: dict = {"size": round_sector(size)}  # (qcow2_co_create_opts rounds it up to a sector, silently)
    for name, value in values.items():
        if name in renames:
            qapi[renames[name]] = {"0.10": "v2", "1.1": "v3"}.get(value, value) if name == "compat" else value
        elif name == "encryption" and value or name.startswith("encrypt."):
            qapi["encrypt"] = True
    for key, allowed in QCOW2_ENUMS.items():
        if key in qapi and qapi[key] not in allowed:
            raise fail(f"Parameter '{key}' does not accept value '{qapi[key]}'", line)
    return qapi


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


def info(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img info [--output=json] [-f fmt] [-U] [--backing-chain] filename."""
    opts, positional = cmdline.parse("info", args, {"-f", "--output", "-U", "--backing-chain", "--image-opts"})
    if len(positional) != 1:
        raise QemuImgError(f"qemu-img: Expecting one image file name\n{USAGE}")
    if opts.get("--output", "human") not in ("human", "json"):
        raise QemuImgError("qemu-img: --output must be used with human or json as argument.\n")
    if "--image-opts" in opts and "-f" in opts:
        raise QemuImgError("qemu-img: --image-opts and --format are mutually exclusive\n")
    target = nbd.name_of(positional[0], "--image-opts" in opts)
    if target is not None:  # an export of the machine's NBD server
        return nbd.info(nbd.connect(store, target, opts.get("-f")), target, opts.get("--output", "human"))
    top, fmt, optstr = image_args(opts, positional[0])
    with named_by(optstr, top):
        return _info(store, opts, top, fmt, key_fn)


def _info(store: ImageStore, opts: dict[str, str], top: str, fmt: str | None, key_fn: KeyFn) -> str:
    """:func:`info` of the image ``top`` opened as ``fmt`` (None: probed)."""
    chain = []
    name: str | None = top
    seen = {top}  # (collect_image_info_list: the names opened, as strings)
    while name is not None:
        error = foreign.before_file(name, fmt)
        if error is not None:
            raise QemuImgError(error)
        if name_too_long(name):  # (a loop through a directory: its names grow)
            raise QemuImgError(f"qemu-img: Could not open '{name}': Could not open '{name}': File name too long\n")
        key = find_key(key_fn, name)
        if key is None or key not in store:
            raise QemuImgError(f"qemu-img: Could not open '{name}': Could not open '{name}': "
                               "No such file or directory\n")
        image = store[key]
        if image.unknown:
            raise QemuImgError(f"qemu-img: {image.unknown}\n")
        if not chain and "-U" not in opts:
            open_image(store, key_fn, name, None, "shared", qcow2_open=False)  # the file lock
        if fmt not in foreign.SIMULATED:  # (opened without I/O: BDRV_O_NO_IO)
            raise QemuImgError(foreign.open_error(name, name, fmt, image, write=False, no_io=True))
        if fmt == "qcow2" and not image.is_qcow2:
            raise QemuImgError(f"qemu-img: Could not open '{name}': Image is not in qcow2 format\n")
        fmt = "qcow2" if image.is_qcow2 and fmt in (None, "qcow2") else "raw"
        if fmt == "qcow2":  # (each image of the chain opened by itself: BDRV_O_NO_BACKING)
            image.opened(store.warn, False)
        chain.append(file_image_info(image, fmt=fmt, filename=name))
        if "full-backing-filename" in chain[-1]:  # relative to the image's directory
            chain[-1]["full-backing-filename"] = backing_name(name, image.backing_file or "")
        if "--backing-chain" not in opts or fmt != "qcow2" or not image.backing_file:
            break
        below = backing_name(name, image.backing_file)
        if below in seen:
            raise QemuImgError(f"qemu-img: Backing file '{below}' creates an infinite loop.\n")
        seen.add(below)
        name, fmt = opened_name(below), image.backing_fmt
    if opts.get("--output") == "json":
        out = [wire_order(i) for i in chain]
        return to_json_pretty(out if "--backing-chain" in opts else out[0]) + "\n"
    return "\n".join(image_info_dump(i) for i in chain)


def _repair_mode(text: str) -> None:
    """check's -r, as img_check's loop reads it."""
    if text not in ("leaks", "all"):
        raise QemuImgError(f"qemu-img: Unknown option value for -r (expecting 'leaks' or 'all'): {text}\n{USAGE}")


def check(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img check [-q] [-f fmt | --image-opts] [--output=human|json] [-r leaks|all] [-U] filename on a
    qcow2 image: leaked clusters a killed QEMU left (ImageFile.crash) are reported, and with ``-r`` repaired
    (bitlab's images are never corrupt otherwise); with ``-U`` an image a running
    QEMU holds open is read as its file describes it (ImageFile.on_disk), where a refcount the cache wrote back
    before the links counts as leaked (status 3). The image is opened read-only with the shared file lock
    (``-U``: sharing everything), read-write with ``-r``."""
    opts, positional = cmdline.parse("check", args, {"-f", "--output", "-r", "-T", "-U", "-q", "--image-opts"},
                                     {"-r": _repair_mode})
    if len(positional) != 1:
        raise QemuImgError(f"qemu-img: Expecting one image file name\n{USAGE}")
    output = opts.get("--output", "human")
    if output not in ("human", "json"):
        raise QemuImgError("qemu-img: --output must be used with human or json as argument.\n")
    cmdline.check_cache(opts, "-T", "source cache")
    target = None if "-r" in opts or "-U" in opts else nbd.name_of(positional[0], "--image-opts" in opts)
    if target is not None and "--image-opts" in opts and "-f" in opts:
        raise QemuImgError("qemu-img: --image-opts and --format are mutually exclusive\n")
    if target is not None:  # an export: raw, which has no checks
        nbd.connect(store, target, opts.get("-f"))
        raise QemuImgError("qemu-img: This image format does not support checks\n", 63)
    name, fmt, optstr = image_args(opts, positional[0])
    with named_by(optstr, name):
        if "-r" in opts and "-U" in opts:
            check_driver(name, fmt)
            raise QemuImgError(f"qemu-img: Could not open '{name}': force-share=on can only be used with "
                               "read-only images\n")
        lock = "force-share" if "-U" in opts else "write" if "-r" in opts else "shared"
        if fmt == "raw":  # (no backing file; a qcow2 file's bytes are not read)
            image = open_image(store, key_fn, name, None, lock, on_disk=True, qcow2_open=False)
        else:  # (img_check opens the backing chain too: a missing file fails the check)
            image = open_chain(store, key_fn, name, fmt, lock, on_disk=True, content=False)[0].image
    if not image.is_qcow2 or fmt == "raw":  # (-r opens it read-write: a probed raw image's warning first)
        warning = RAW_PROBE_WARNING.format(name) if "-r" in opts and not fmt else ""
        raise QemuImgError(f"{warning}qemu-img: This image format does not support checks\n", 63)
    repaired = ""  # (qcow2_check_refcounts compares once, then again fixing: each pass prints its lines)
    if "-r" in opts:  # (-r all: corruptions too; bitlab's images have none)
        (leak_s, leak_e), _ = image.refcount_errors()
        found = _refcount_lines(leak_s, leak_e, leak_s[:0], leak_e[:0])
        repaired = found + found.replace("Leaked cluster", "Repairing cluster")
    fixed = image.repair_leaks() if "-r" in opts else 0
    (leak_s, leak_e), (bad_s, bad_e) = image.refcount_errors()
    leaks, corruptions = int((leak_e - leak_s).sum()), int((bad_e - bad_s).sum())
    stderr = repaired + (_refcount_lines(leak_s, leak_e, bad_s, bad_e) if leaks or corruptions else "")
    status = 2 if corruptions else 3 if leaks else 0
    if "-q" in opts:
        if status:
            raise QemuImgError(stderr, status)
        return QemuImgOutput("", stderr)
    cs = image.cluster_size
    compressed = image.layout.compressed_count()  # (allocated, compressed and fragmented by nature)
    allocated = image.allocated_clusters() + compressed
    total = -(-image.size // cs)
    fragmented = _fragmented(Layer(name, image)) + compressed if allocated else 0
    end = max(image.layout.end_cluster(), int(leak_e[-1]) if leaks else 0) * cs
    if output == "json":  # ImageCheck: a member only where it is not zero
        result = {"filename": name, "format": "qcow2", "check-errors": 0, "image-end-offset": end,
                  "corruptions": corruptions, "leaks": leaks, "leaks-fixed": fixed, "total-clusters": total,
                  "allocated-clusters": allocated, "fragmented-clusters": fragmented,
                  "compressed-clusters": compressed}
        out = to_json_pretty(wire_order({k: v for k, v in result.items() if v or k == "check-errors"
                                         or isinstance(v, str)})) + "\n"
        if status:
            raise QemuImgError(stderr, status, out)
        return QemuImgOutput(out, stderr)
    out = ("The following inconsistencies were found and repaired:\n\n"
           f"    {fixed} leaked clusters\n    0 corruptions\n\n"
           "Double checking the fixed image now...\n") if fixed else ""
    if not status:
        out += "No errors were found on the image.\n"
    else:
        out += (f"\n{corruptions} errors were found on the image.\nData may be corrupted, or further writes to the "
                "image may corrupt it.\n") if corruptions else ""
        if leaks:
            out += (f"\n{leaks} leaked clusters were found on the image.\n"
                    "This means waste of disk space, but no harm to data.\n")
    if allocated:
        out += (f"{allocated}/{total} = {allocated * 100 / total:0.2f}% allocated, "
                f"{fragmented * 100 / allocated:0.2f}% fragmented, "
                f"{compressed * 100 / allocated:0.2f}% compressed clusters\n")
    out += f"Image end offset: {end}\n"
    if status:
        raise QemuImgError(stderr, status, out)
    return QemuImgOutput(out, stderr)


def _refcount_lines(leak_s: np.ndarray, leak_e: np.ndarray, bad_s: np.ndarray, bad_e: np.ndarray) -> str:
    """qcow2's compare_refcounts lines, cluster by cluster in ascending order (one line per cluster, as QEMU prints
    them): a refcount nothing references (``Leaked cluster``), a reference without a refcount (``ERROR``)."""
    leaked, bad = range_items(leak_s, leak_e - leak_s), range_items(bad_s, bad_e - bad_s)
    clusters = np.concatenate((leaked, bad))
    kinds = np.concatenate((np.zeros(leaked.size, dtype=bool), np.ones(bad.size, dtype=bool)))
    order = np.argsort(clusters, kind="stable")
    lines = ("Leaked cluster {} refcount=1 reference=0\n", "ERROR cluster {} refcount=0 reference=1\n")
    return "".join(lines[k].format(c) for c, k in zip(clusters[order].tolist(), kinds[order].tolist()))


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


def _chain_error(image: ImageFile, name: str, key_fn: Any, store: Any,
                 backing_fmt: str | None) -> tuple[str, str] | None:
    """bdrv_img_create opens the backing file with its own backing chain: a file missing further down
    fails it, each level prepending "Could not open backing file: " (bdrv_open_backing_file): (the lines printed
    first, the reason). Each qcow2 image
    opened so warns if it is a v2 image with bitmaps (:meth:`ImageFile.opened`). ``backing_fmt``: the format
    ``image`` (the backing file) is opened with (raw: no chain below it)."""
    depth, opened, fmt = 1, {name}, backing_fmt
    while image.backing_file and fmt != "raw":
        try:
            full = full_backing_filename(name, image.backing_file) or ""
        except ValueError:
            return None
        fmt = image.backing_fmt
        levels = "Could not open backing file: " * depth
        found = foreign.looked_up(fmt)  # (bdrv_open looks the driver up first)
        if found is not None:
            return found[0], levels + found[1]
        if name_too_long(full):  # (a loop through a directory: its names grow)
            return "", levels + f"Could not open '{full}': File name too long"
        key = find_key(key_fn, full)
        if key is None or key not in store:
            return "", levels + f"Could not open '{full}': No such file or directory"
        if fmt not in foreign.SIMULATED:
            found = foreign.opened(full, fmt, store[key], write=False, no_io=True)
            if found is None:
                raise QemuImgError(foreign.not_simulated(fmt))
            return found[0], levels + found[1]
        if fmt == "qcow2" and not store[key].is_qcow2:
            return "", levels + "Image is not in qcow2 format"
        if full in opened:  # (the same name again: it never ends)
            raise loop_error(full)
        opened.add(full)
        image, name, depth = store[key], full, depth + 1
        if image.is_qcow2 and fmt in (None, "qcow2"):
            image.opened(store.warn, False)
    return None
