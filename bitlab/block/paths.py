"""QEMU's rules for the file name a backing file is opened under (util/cutils.c ``path_combine``,
block.c ``bdrv_get_full_backing_filename_from_filename`` / ``bdrv_make_absolute_filename``).

A relative backing file name is relative to the directory of the image that names it, joined as
text: ``sub/top.qcow2`` naming ``../base.qcow2`` opens ``sub/../base.qcow2`` (QEMU never
normalises the name it shows). Absolute names and names with a protocol prefix (``file:x``) are
taken as they are.
"""

from __future__ import annotations

from .node import BlockNode, FileNode


def path_is_absolute(path: str) -> bool:
    """cutils.c path_is_absolute (POSIX): a leading '/'."""
    return path.startswith("/")


def path_has_protocol(path: str) -> bool:
    """cutils.c path_has_protocol: a ':' before the first '/'."""
    for char in path:
        if char in ":/":
            return char == ":"
    return False


def path_combine(base: str, filename: str) -> str:
    """cutils.c path_combine: ``filename`` relative to the directory of ``base`` (text, kept as is)."""
    if path_is_absolute(filename):
        return filename
    start = base.index(":") + 1 if path_has_protocol(base) else 0
    return base[:max(start, base.rfind("/") + 1)] + filename


def full_backing_filename(backed: str, backing: str) -> str | None:
    """bdrv_get_full_backing_filename_from_filename: the name ``backing`` is opened under when the
    image ``backed`` names it; None for an empty name.

    Raises ValueError with QEMU's text for a relative name in an image known by a ``json:`` name.
    """
    if not backing:
        return None
    if path_has_protocol(backing) or path_is_absolute(backing):
        return backing
    if not backed or backed.startswith("json:"):
        raise ValueError(f"Cannot use relative backing file names for '{backed}'")
    return path_combine(backed, backing)


PATH_MAX, NAME_MAX = 4096, 255  # Linux: a path's bytes with its NUL, a name's in it


def name_too_long(path: str) -> bool:
    """open(2) fails with ENAMETOOLONG ("File name too long"): the path or a name in it is too long. A backing
    chain whose names grow as they are joined (``sub/../sub/../…``: a chain that loops through a directory)
    ends so in QEMU."""
    raw = path.encode()
    return len(raw) >= PATH_MAX or any(len(part) > NAME_MAX for part in raw.split(b"/"))


def strip_file_protocol(filename: str) -> str | None:
    """The path a name with a protocol prefix opens: ``file:x`` opens ``x``; None for a name with any
    other protocol (``nbd:``, ``json:``, ...), which bitlab does not simulate. Names without a
    protocol come back unchanged."""
    if not path_has_protocol(filename):
        return filename
    protocol, _, rest = filename.partition(":")
    return rest if protocol == "file" else None


def node_dirname_base(node: BlockNode) -> str:
    """What bdrv_dirname takes a node's directory from: the file name of the protocol node under it,
    reached through primary children (a format's ``file``, blkdebug's ``image``); "" if none."""
    while not isinstance(node, FileNode):
        child = node.child("file") or node.child("image")
        if child is None:
            return ""
        node = child
    return node.plain_filename() or ""


def node_full_backing_filename(node: BlockNode, backing: str) -> str | None:
    """bdrv_get_full_backing_filename: the name the backing file ``backing`` (as the image header has
    it) of format node ``node`` is opened under; what ``full-backing-filename`` shows."""
    if not backing:
        return None
    if path_has_protocol(backing) or path_is_absolute(backing):
        return backing
    return path_combine(node_dirname_base(node), backing)
