"""Block drivers bitlab does not simulate, over a file it does (qemu-img's ``-f vmdk``, a backing format, a
blockdev-add of a bochs node over a file node): how QEMU 7.2's drivers turn such a file down, with their texts.

bitlab's files are raw or qcow2, and a raw file holds byte patterns, so a driver's magic number never matches and
its open fails the same way for every such file; where the failure depends on bytes bitlab cannot tell (a
cloop or vdi header read from a qcow2 file, a raw file holding opaque data), or where QEMU's driver opens the
file (blkdebug, file, preallocate, snapshot-access, a read-write copy-on-read), bitlab refuses instead.
Debian's qemu-img 7.2 has the modular drivers (qemu-block-extra) as modules it does not find: it names the
module, then knows no such driver.
"""

from __future__ import annotations

from ..errors import QMPError
from .create import NOT_BUILT
from .drivers import QEMU_DRIVERS
from .extents import ZERO, ZERO_ALLOC
from .store import ImageFile

SIMULATED = (None, "raw", "qcow2")
MODULES = {"ftp": "curl", "ftps": "curl", "http": "curl", "https": "curl", "gluster": "gluster", "iscsi": "iscsi",
           "nfs": "nfs", "rbd": "rbd", "ssh": "ssh"}
# drivers with creation options (or a protocol driver's fallback) besides raw, qcow2 and luks (qemu_opts.CREATE_OPTS)
CREATABLE = frozenset({"file", "host_cdrom", "host_device", "nbd", "nvme", "parallels", "qcow", "qed", "vdi", "vhdx",
                       "vmdk", "vpc"})
# protocol drivers that parse the file name (bdrv_fill_options: before any file is opened, whether it exists or not)
BY_NAME = {
    "blkverify": 'A block device must be specified for "raw"',
    "nbd": "File name string for NBD must start with 'nbd:'",
    "null-aio": "The only allowed filename for this driver is 'null-aio://'",
    "null-co": "The only allowed filename for this driver is 'null-co://'",
    "nvme": "'device' option is required",
    "vvfat": "File name string must start with 'fat:'",
}
# the driver's open over the file, for every file bitlab has
FIXED = {
    "blklogwrites": 'A block device must be specified for "log"',
    "bochs": "Image not in Bochs format",
    "compress": "Compression is not supported for underlying format: file",
    "copy-before-write": "Parameter 'target' is missing",
    "parallels": "Image not in Parallels format",
    "qed": "Image not in QED format",
    "quorum": "Number of provided children must be 1 or more",
    "replication": "Missing the option mode",
    "throttle": "Please specify a throttle group",
}
# drivers whose open succeeds over such a file (copy-on-read: read-write only), which bitlab does not simulate
OPENS = frozenset({"blkdebug", "copy-on-read", "file", "preallocate", "snapshot-access"})
# format drivers that take a file child and turn bitlab's files down (blockdev-add)
FORMATS = frozenset({"bochs", "cloop", "compress", "dmg", "luks", "parallels", "qcow", "qed", "vdi", "vhdx", "vmdk",
                     "vpc"})
READ_ONLY = frozenset({"bochs", "cloop", "dmg"})  # bdrv_apply_auto_read_only first: "Image is read-only" to write
VDI_DISK_SIZE_MAX = 0x1fffff8000000
VDI_SIGNATURE = 0xbeda107f
CLOOP_MAX_BLOCK_SIZE = 64 * 1024 * 1024


def attaches_first(fmt: str, write: bool) -> bool:
    """Whether the driver attaches its file child (the child's permissions and file locks checked: "Block node is
    read-only", "Failed to get shared "write" lock") before its own error: not luks (its key) nor compress (its
    child's format), nor a read-only driver opened to write."""
    return fmt not in ("luks", "compress") and not (write and fmt in READ_ONLY)


def module_lines(fmt: str, *, extra: tuple[str, ...] = ()) -> str:
    """What Debian's QEMU prints looking for the block modules it does not have."""
    names = ((f"block-{MODULES[fmt]}",) if fmt in MODULES else ()) + extra
    return "".join(f"qemu: module block-{name} not found, do you want to install qemu-block-extra package?\n"
                   for name in names)


def unknown(fmt: str | None) -> bool:
    """A format Debian's qemu-img 7.2 has no driver for (not one of QEMU's, a module not installed, blkreplay)."""
    return fmt not in SIMULATED and (fmt not in QEMU_DRIVERS or fmt in NOT_BUILT)


def not_simulated(fmt: str) -> str:
    return f"qemu-img: bitlab does not simulate the image format '{fmt}'\n"


def looked_up(fmt: str | None) -> tuple[str, str] | None:
    """What fails as bdrv_open looks up the driver ``fmt`` names, or as a protocol driver parses the file name, before
    the file is looked for: (the lines printed first, the reason), None if nothing does."""
    if unknown(fmt):
        return module_lines(fmt or ""), f"Unknown driver '{fmt}'"
    if fmt in BY_NAME:
        return "", BY_NAME[fmt]
    return None


def opened(path: str, fmt: str, image: ImageFile, *, write: bool, no_io: bool) -> tuple[str, str] | None:
    """What fails as the driver ``fmt`` bitlab does not simulate opens the file ``image`` (``path``: its name without a
    protocol prefix), read-write if ``write``, without I/O (qemu-img info's BDRV_O_NO_IO) if ``no_io``: (the lines
    printed first, the reason); None where QEMU would open it, or its answer depends on bytes bitlab does not have
    (bitlab refuses: :func:`not_simulated`)."""
    reason = _reason(path, fmt, image, write, no_io)
    if reason is None:
        return None
    before = module_lines(fmt, extra=("block-dmg-bz2", "block-dmg-lzfse")) if fmt == "dmg" and not write else ""
    return before, reason  # (dmg_open looks for its decompression modules after the read-only check)


def creatable(fmt: str) -> bool:
    """Whether the driver has creation options (bdrv_img_create goes on to them)."""
    return fmt in CREATABLE or fmt in ("raw", "qcow2", "luks")


def qmp_error(found: tuple[str, str]) -> QMPError:
    """What :func:`looked_up` or :func:`opened` found, as QMP says it: the reason without its hint line, the lines
    before it on the emulator's stderr."""
    return QMPError(found[1].split("\n")[0], printed=found[0])


def creation_error(fmt: str, where: str) -> str:
    """qemu-img's error (stderr) making an image of a format bitlab does not simulate (bdrv_find_format, then the
    driver's creation options), its text after ``where`` (``"qemu-img: "`` and what the command names), or bitlab's
    refusal."""
    if unknown(fmt):
        return f"{module_lines(fmt)}{where}Unknown file format '{fmt}'\n"
    if not creatable(fmt):
        return f"{where}Format driver '{fmt}' does not support image creation\n"
    return not_simulated(fmt)


def before_file(name: str, fmt: str | None) -> str | None:
    """qemu-img's error (stderr) for ``name`` from :func:`looked_up`."""
    found = looked_up(fmt)
    return None if found is None else could_not_open(name, found)


def open_error(name: str, path: str, fmt: str, image: ImageFile, *, write: bool, no_io: bool) -> str:
    """qemu-img's error (stderr) for ``name`` from :func:`opened`, or bitlab's refusal."""
    found = opened(path, fmt, image, write=write, no_io=no_io)
    return not_simulated(fmt) if found is None else could_not_open(name, found)


def could_not_open(name: str, found: tuple[str, str]) -> str:
    return f"{found[0]}qemu-img: Could not open '{name}': {found[1]}\n"


def _reason(path: str, fmt: str, image: ImageFile, write: bool, no_io: bool) -> str | None:
    if write and fmt in READ_ONLY:
        return "Image is read-only"
    if fmt in FIXED:
        return FIXED[fmt]
    length = image.file_length()
    if fmt in ("host_device", "host_cdrom"):
        return f"'{fmt}' driver requires '{path}' to be either a character or block device"
    if fmt == "copy-on-read":
        return None if write else "Block node is read-only"
    if fmt == "luks":  # (without I/O it reads the header; with it, it wants the key first)
        return "Volume is not in LUKS format" if no_io else "Parameter 'key-secret' is required for cipher"
    if fmt == "qcow":
        if image.is_qcow2:
            version = 2 if image.compat == "0.10" else 3
            return f"qcow (v1) does not support qcow version {version}\nTry the 'qcow2' driver instead."
        return "Image not in qcow format"
    if fmt == "vhdx":
        return f"Could not open '{path}': Invalid argument"
    if fmt == "vmdk":
        return "File is too small, not a valid image" if length == 0 else "invalid VMDK image descriptor"
    if fmt == "vpc":
        return "File too small for a VHD header" if length == 0 else "invalid VPC image"
    if fmt == "dmg":  # (its length in whole sectors, as bdrv_getlength gives it)
        return "dmg file must be at least 512 bytes long" if length == 0 else \
            "Could not locate UDIF trailer in dmg file"
    if fmt == "cloop":
        return _cloop(image)
    if fmt == "vdi":
        return _vdi(image)
    return None


def _raw_bytes(image: ImageFile, offset: int, length: int) -> bytes | None:
    """Bytes ``[offset, offset + length)`` of a raw file (zeroes past its end), None where bitlab does not know them
    (a qcow2 file's metadata, opaque data)."""
    if image.is_qcow2:
        return None
    out = bytearray(length)
    size = image.file_length()
    for i in range(max(0, min(length, size - offset))):  # (a header's few bytes)
        value = image.data.value_at(offset + i)
        if value in (ZERO, ZERO_ALLOC) or value < 0:
            continue
        if value > 255:
            return None
        out[i] = value
    return bytes(out)


def _cloop(image: ImageFile) -> str | None:
    """cloop_open's checks of the block size (big-endian, at byte 128)."""
    raw = _raw_bytes(image, 128, 4)
    if raw is None:
        return None
    block_size = int.from_bytes(raw, "big")
    if block_size % 512:
        return f"block_size {block_size} must be a multiple of 512"
    if block_size == 0:
        return "block_size cannot be zero"
    if block_size > CLOOP_MAX_BLOCK_SIZE:
        return f"block_size {block_size} must be 64 MB or less"
    return None


def _vdi(image: ImageFile) -> str | None:
    """vdi_open's first checks of its header: the disk size (little-endian, at 0x170), then the signature (0x40)."""
    size, signature = _raw_bytes(image, 0x170, 8), _raw_bytes(image, 0x40, 4)
    if size is None or signature is None:
        return None
    disk_size = int.from_bytes(size, "little")
    if disk_size > VDI_DISK_SIZE_MAX:
        return f"Unsupported VDI image size (size is {disk_size:#x}, max supported is {VDI_DISK_SIZE_MAX:#x})"
    magic = int.from_bytes(signature, "little")
    return None if magic == VDI_SIGNATURE else f"Image not in VDI format (bad signature {magic:08x})"
