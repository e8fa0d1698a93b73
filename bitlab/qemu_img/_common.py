"""What every qemu-img subcommand shares: its error, getopt-like parsing, opening images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..block import foreign, perms
from ..block.paths import full_backing_filename, name_too_long, strip_file_protocol
from ..block.store import ImageFile, ImageStore
from ..errors import QMPError
from ..units import SizeTooLarge, parse_size

KeyFn = Callable[[str], str]
USAGE = "Try 'qemu-img --help' for more information\n"
INT64_MAX = (1 << 63) - 1
MAP_HEADER = f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File\n"  # qemu-img map's human table


def map_hex(value: int) -> str:
    """C's ``%#-16" PRIx64`` without its padding (qemu-img map's table): no 0x for zero."""
    return f"{value:#x}" if value else "0"


NBD_SCHEMES = {"nbd": "inet", "nbd+tcp": "inet", "nbd+unix": "unix"}  # QEMU's NBD driver's protocols, their transport
# the protocol prefixes QEMU 7.2's block drivers take (Debian's build: the built-in ones, and those of the modules in
# qemu-block-extra); any other prefix is an "Unknown protocol"
QEMU_PROTOCOLS = frozenset(("file", "host_device", "host_cdrom", "fat", "null-co", "null-aio", "blkdebug", "blkverify",
                            "nvme", "json", "http", "https", "ftp", "ftps", "ssh", "nfs", "iscsi", "iser", "rbd",
                            "gluster", "gluster+tcp", "gluster+unix", "gluster+rdma", *NBD_SCHEMES))


class QemuImgError(Exception):
    """qemu-img failed: ``stderr`` holds its message, ``returncode`` its exit status."""

    def __init__(self, stderr: str, returncode: int = 1, stdout: str = "") -> None:
        super().__init__((stderr or stdout).strip())
        self.stderr = stderr
        self.returncode = returncode
        self.stdout = stdout


class QemuImgOutput(str):
    """What a qemu-img that succeeded printed: its stdout (the string itself), and ``stderr``, its warnings."""

    stderr: str

    def __new__(cls, stdout: str, stderr: str = "") -> QemuImgOutput:
        out = super().__new__(cls, stdout)
        out.stderr = stderr
        return out


def cvtnum(name: str, text: str) -> int:
    """qemu-img's cvtnum: a size (qemu_strtosz) from 0 to INT64_MAX, or QEMU's error naming ``name``: the
    suffix help for what does not parse, the range for what does but is too large (2^64 and past it too)."""
    try:
        value = parse_size(text)
    except SizeTooLarge:
        value = INT64_MAX + 1
    except ValueError:
        raise QemuImgError(f"qemu-img: Invalid {name} specified. You may use k, M, G, T, P or E suffixes for\n"
                           "qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n") from None
    if value > INT64_MAX:
        raise QemuImgError(f"qemu-img: Invalid {name} specified. Must be between 0 and {INT64_MAX}.\n")
    return value


def find_key(key_fn: KeyFn, name: str) -> str | None:
    """The store's name for a file to open, or None where nothing can exist (outside the work
    directory), so that the caller answers as for a missing file."""
    path = strip_file_protocol(name)
    if path is None and name.split(":", 1)[0] in NBD_SCHEMES:  # (info, map, measure, convert and compare read exports)
        raise QemuImgError(f"qemu-img: Could not open '{name}': bitlab simulates qemu-img reading an NBD export "
                           "(info, map, measure, convert from it, compare) and convert -n into one, not this\n")
    if path is None and name.split(":", 1)[0] not in QEMU_PROTOCOLS:
        raise QemuImgError(f"qemu-img: Could not open '{name}': Unknown protocol '{name.split(':', 1)[0]}'\n")
    if path is None:
        raise QemuImgError(f"qemu-img: Could not open '{name}': bitlab does not simulate this protocol\n")
    try:
        return key_fn(path)
    except QMPError:
        return None


def new_key(key_fn: KeyFn, name: str, context: str = "") -> str:
    """The store's name for a file to create; outside the work directory no directory exists, so
    qemu-img's "Could not create" (after ``context``, e.g. "error while converting raw: ")."""
    try:
        return key_fn(name)
    except QMPError:
        raise QemuImgError(f"qemu-img: {name}: {context}Could not create '{name}': No such file or directory\n") \
            from None


@dataclass
class Layer:
    """One image of an opened chain: the name qemu-img shows for it, and the file."""

    name: str
    image: ImageFile

    @property
    def size(self) -> int:
        """Virtual size in bytes (whole sectors, as the block layer sees it)."""
        size = self.image.size if self.image.is_qcow2 else self.image.file_length()
        return -(-size // 512) * 512


def backing_name(overlay: str, backing: str) -> str:
    """The name a backing file is opened under: relative to the overlay's directory, joined as QEMU
    joins it (``sub/top.qcow2`` naming ``../base.qcow2`` opens ``sub/../base.qcow2``)."""
    return full_backing_filename(overlay, backing) or ""


def opened_name(name: str) -> str:
    """The name an image opened as ``name`` goes by: ``file:x`` is ``x`` (file-posix strips its prefix)."""
    return strip_file_protocol(name) or name


def check_driver(name: str, fmt: str | None) -> None:
    """A format given with ``-f``, looked up before the file is opened: one qemu-img has no driver for is unknown
    (``Unknown driver``, after the module it looked for), one bitlab does not simulate is refused as such."""
    if fmt not in foreign.SIMULATED:
        raise QemuImgError(foreign.before_file(name, fmt) if foreign.unknown(fmt) else foreign.not_simulated(fmt))


def open_image(store: ImageStore, key_fn: KeyFn, name: str, fmt: str | None = None, lock: str | None = None,
               on_disk: bool = False, qcow2_open: bool = True, content: bool = True) -> ImageFile:
    """The file ``name`` opened with format ``fmt`` (probed when None), or qemu-img's error.

    ``lock`` is what qemu-img asks of the file's locks: ``"shared"`` to read (no ``-U``: it reads and
    shares no writes), ``"force-share"`` to read sharing everything (``-U``: it still reads, which a node that
    does not share a consistent read, a mirror's target, refuses), ``"write"`` to change it (it also writes
    and resizes), against the file nodes a
    running QEMU has open on it (bitlab.block.perms.lock_error). ``on_disk``: a reader's image, as the file
    describes it (ImageFile.on_disk: without what a running QEMU's cache holds). ``qcow2_open``: qcow2 opens the
    image as QEMU's qemu-img does here (:meth:`ImageFile.opened`: a v2 image's bitmaps warn, each time); False
    where bitlab looks at a file QEMU does not open again (a lock probe, a chain QEMU already has open).
    ``content``: the caller reads what the image holds (bitlab has no bytes of a qcow2 file to read it as raw).
    """
    error = foreign.before_file(name, fmt)
    if error is not None:
        raise QemuImgError(error)
    path = strip_file_protocol(name)
    if path is not None and name_too_long(path):
        raise QemuImgError(f"qemu-img: Could not open '{name}': Could not open '{path}': File name too long\n")
    key = find_key(key_fn, name)
    if key is None or key not in store:
        raise QemuImgError(f"qemu-img: Could not open '{name}': Could not open '{name}': No such file or directory\n")
    image = store[key]
    if image.unknown:
        raise QemuImgError(f"qemu-img: {image.unknown}\n")
    holders = store.locks(image) if store.locks is not None and (lock or on_disk) else None
    if lock and holders is not None:
        perm = perms.READ | (perms.WRITE | perms.RESIZE if lock == "write" else 0)
        shared = perms.ALL if lock == "force-share" else perms.READ | perms.WRITE_UNCHANGED
        error = perms.lock_error(perm, shared, holders)
        if error is not None:
            raise QemuImgError(f"qemu-img: Could not open '{name}': {error}\n"
                               f"Is another process using the image [{name}]?\n")
    if fmt not in foreign.SIMULATED:  # (the driver's open, over the file opened with its lock)
        raise QemuImgError(foreign.open_error(name, path or name, fmt, image, write=lock == "write", no_io=False))
    if fmt == "qcow2" and not image.is_qcow2:
        raise QemuImgError(f"qemu-img: Could not open '{name}': Image is not in qcow2 format\n")
    if fmt == "raw" and image.is_qcow2 and content:
        raise QemuImgError(f"qemu-img: bitlab does not simulate reading the qcow2 file '{name}' as raw\n")
    if image.is_qcow2 and fmt != "raw" and qcow2_open:
        image.opened(store.warn, lock == "write")
    if lock == "write":
        image.reopened()
    elif on_disk and image.is_qcow2 and holders and any(p & perms.WRITE for p, _ in holders):
        image = image.on_disk()  # (QEMU has it open read-write: its cache may hold more than the file)
    return image


def inner_reason(err: QemuImgError, name: str) -> str:
    """The reason inside an open error, as a caller nests it: without the "Could not open 'x': " qemu-img puts
    before what failed at its own level (a missing file's reason names it again: file-posix's own text; a format's
    does not: "Image is not in qcow2 format")."""
    reason = err.stderr[len(printed_before(err)):].removeprefix("qemu-img: ").rstrip("\n")
    return reason.removeprefix(f"Could not open '{name}': ")


def printed_before(err: QemuImgError) -> str:
    """The lines an open error comes after (the block modules QEMU looked for as it opened: "qemu: module ...")."""
    lines = err.stderr.splitlines(keepends=True)
    count = next((i for i, line in enumerate(lines) if not line.startswith("qemu: ")), len(lines))
    return "".join(lines[:count])


def lock_hint(store: ImageStore, key_fn: KeyFn, out: str, desc: str) -> str:
    """The hint qemu-img adds to a lock error (``desc``) opening ``out`` or a file of its backing chain, naming that
    file."""
    prefix = "Could not open backing file: "
    depth, reason = 0, desc
    while reason.startswith(prefix):
        depth, reason = depth + 1, reason[len(prefix):]
    if not perms.is_lock_error(reason):
        return ""
    name = out
    for _ in range(depth):  # (each level opened it by its name as the level above resolves it)
        image = store[find_key(key_fn, name) or ""]
        name = opened_name(backing_name(name, image.backing_file or ""))
    return f"Is another process using the image [{name}]?\n"


def loop_error(name: str) -> QemuImgError:
    """A backing chain that names a file again below it by the name it was opened under above: qemu-img 7.2 opens
    it again and again (each open a new BlockDriverState) and never returns, which bitlab does not simulate."""
    return QemuImgError(f"qemu-img: bitlab does not simulate a backing chain that loops ('{name}' is a backing file "
                        "of itself): qemu-img 7.2 opens it again and again and does not return\n")


def open_chain(store: ImageStore, key_fn: KeyFn, name: str, fmt: str | None = None, lock: str | None = None,
               on_disk: bool = False, qcow2_open: bool = True, content: bool = True) -> list[Layer]:
    """``name`` and its backing files, top first, as qemu-img opens them (``lock``, ``on_disk``, ``qcow2_open``,
    ``content``: see open_image; ``on_disk`` for reading alone). A file that fails further down is named after one
    "Could not open backing file: " per level (bdrv_open_backing_file prepends it at each)."""
    chain = [Layer(name, open_image(store, key_fn, name, fmt, lock, on_disk, qcow2_open, content))]
    names = {name}
    # the backing files' file locks: read-only, sharing no writes (bdrv_default_perms_for_cow) unless -U shares all
    below_lock = None if lock is None else "force-share" if lock == "force-share" else "shared"
    while chain[-1].image.is_qcow2 and chain[-1].image.backing_file and fmt != "raw":
        top = chain[-1]
        fmt = top.image.backing_fmt  # (the next layer's)
        below = opened_name(backing_name(top.name, top.image.backing_file or ""))
        try:
            image = open_image(store, key_fn, below, top.image.backing_fmt, below_lock, on_disk, qcow2_open, content)
        except QemuImgError as err:
            reason = "Could not open backing file: " * len(chain) + inner_reason(err, below)
            raise QemuImgError(f"{printed_before(err)}qemu-img: Could not open '{name}': {reason}\n") from None
        if lock == "write" and image is chain[0].image:  # (opened again below itself: its file lock)
            error = perms.lock_error(perms.READ, perms.READ | perms.WRITE_UNCHANGED,
                                     [(perms.READ | perms.WRITE | perms.RESIZE, perms.READ)])
            raise QemuImgError(f"qemu-img: Could not open '{name}': {'Could not open backing file: ' * len(chain)}"
                               f"{error}\nIs another process using the image [{below}]?\n")
        if below in names:  # (the same name again: it never ends)
            raise loop_error(below)
        names.add(below)
        chain.append(Layer(below, image))  # (a loop whose names grow ends with a name too long)
    return chain
