"""qemu-img bitmap: persistent bitmaps of an image changed offline (qemu-img.c img_bitmap).

The image is opened read-write as a node without its backing file (BDRV_O_NO_BACKING: a missing backing
file does not matter, nor does a source whose backing file is the image), the actions run in command-line
order as the QMP commands do (an ``--add`` makes a persistent bitmap), and the image is closed, which
stores the bitmaps, even after an action failed: the actions before it stay done.
"""

from __future__ import annotations

from ..block import perms
from ..block.graph import BlockGraph
from ..block.node import BlockNode
from ..block.store import ImageStore
from ..errors import QMPError
from ..qmp.cmd_bitmap import add_bitmap, merge_bitmaps, qmp_clear, qmp_disable, qmp_enable, qmp_remove
from . import cmdline
from ._common import KeyFn, QemuImgError, cvtnum, find_key, open_image
from .image import RAW_PROBE_WARNING
from .image_opts import image_args, named_by

ACTIONS = {"--add": "add", "--remove": "remove", "--clear": "clear", "--enable": "enable", "--disable": "disable"}


class _Offline:
    """What the QMP bitmap commands need of a machine: qemu-img's graph, nodes named by node name."""

    def __init__(self, graph: BlockGraph) -> None:
        self.graph = graph

    def device_or_node_name(self, node: BlockNode) -> str:
        return node.node_name


def _parse(args: list[str]) -> tuple[dict[str, str], list[tuple[str, str]], list[str]]:
    """getopt_long(":b:f:F:g:h"): options (last one wins), the actions in order, the other words."""
    ordered: list[tuple[str, str]] = []
    opts, positional = cmdline.parse("bitmap", args, {"-b", "-f", "-F", "-g", "--image-opts", "--merge", *ACTIONS},
                                     {"-g": lambda v: cvtnum("granularity", v)}, ordered)
    actions = [(ACTIONS[key], "") if key in ACTIONS else ("merge", value) for key, value in ordered
               if key in ACTIONS or key == "--merge"]
    if "-g" in opts:
        opts["-g"] = str(cvtnum("granularity", opts["-g"]))
    return opts, actions, positional


def img_bitmap(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
    [-b source_file [-F source_fmt]] [-g granularity] [-f fmt | --image-opts] filename bitmap."""
    opts, actions, positional = _parse(args)
    granularity = int(opts.get("-g", "0"))
    if not actions:
        raise QemuImgError("qemu-img: Need at least one of --add, --remove, --clear, --enable, --disable, or --merge\n")
    if granularity and not any(op == "add" for op, _ in actions):
        raise QemuImgError("qemu-img: granularity only supported with --add\n")
    if "-F" in opts and "-b" not in opts:
        raise QemuImgError("qemu-img: -F only supported with -b\n")
    if "-b" in opts and not any(op == "merge" for op, _ in actions):
        raise QemuImgError("qemu-img: Merge bitmap source file only supported with --merge\n")
    if len(positional) != 2:
        raise QemuImgError("qemu-img: Expecting filename and bitmap name\n")
    filename, fmt, optstr = image_args(opts, positional[0])
    bitmap = positional[1]
    with named_by(optstr, filename):
        image = open_image(store, key_fn, filename, fmt, "write", qcow2_open=False)  # (the graph opens it)
    warning = "" if fmt or image.is_qcow2 else RAW_PROBE_WARNING.format(filename)
    graph = BlockGraph(store, "/")
    try:
        with named_by(optstr, filename):
            node = _open(graph, key_fn, filename, image.is_qcow2, read_only=False)
        source = node
        if "-b" in opts:
            src_name = opts["-b"]
            src_image = open_image(store, key_fn, src_name, opts.get("-F"), "shared", qcow2_open=False)
            source = _open(graph, key_fn, src_name, src_image.is_qcow2, read_only=True)
        vm = _Offline(graph)
        for op, src in actions:
            try:
                _act(vm, op, node, source, bitmap, src, granularity)
            except QMPError as err:
                raise QemuImgError(f"{warning}qemu-img: Operation {op} on bitmap {bitmap} failed: {err.desc}\n"
                                   ) from None
    finally:
        graph.close_all()  # (the bitmaps are stored, whatever failed)
    return ""


def _open(graph: BlockGraph, key_fn: KeyFn, filename: str, qcow2: bool, read_only: bool) -> BlockNode:
    """The image as a node with an automatic name (``#block…``), as img_open gives it: img_bitmap opens the
    image and the ``-b`` source with BDRV_O_NO_BACKING."""
    opts = {"driver": "qcow2" if qcow2 else "raw", "file": {"driver": "file", "filename": find_key(key_fn, filename)}}
    try:
        node = graph.open(opts, read_only=read_only, no_backing=True)
    except QMPError as err:
        hint = f"Is another process using the image [{filename}]?\n" if perms.is_lock_error(err.desc) else ""
        raise QemuImgError(f"qemu-img: Could not open '{filename}': {err.desc}\n{hint}") from None
    graph.monitor_owned.add(node.node_name)
    return node


def _act(vm: _Offline, op: str, node: BlockNode, source: BlockNode, bitmap: str, src: str,
         granularity: int) -> None:
    """One action, as the QMP command (qemu-img passes the granularity on as a uint32)."""
    where = {"node": node.node_name, "name": bitmap}
    if op == "add":
        args: dict = {**where, "persistent": True}
        if granularity:
            args["granularity"] = granularity & 0xFFFFFFFF
        add_bitmap(vm, args)
    elif op == "merge":
        merge_bitmaps(vm, {"node": node.node_name, "target": bitmap,
                           "bitmaps": [{"node": source.node_name, "name": src}]})
    else:
        {"remove": qmp_remove, "clear": qmp_clear, "enable": qmp_enable, "disable": qmp_disable}[op](vm, where)
