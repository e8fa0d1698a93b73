"""qemu-img map: where each range of the virtual disk comes from, in human or JSON form."""

from __future__ import annotations

import numpy as np

from ..block.store import ImageStore
from . import cmdline, nbd
from ._common import MAP_HEADER, USAGE, KeyFn, Layer, QemuImgError, cvtnum, map_hex, open_chain
from .image_opts import image_args, named_by
from .layers import DATA, UNALLOC, ZERO_HOSTED, ZERO_PLAIN, chain_status, file_status

HUMAN_HEADER = MAP_HEADER


def map_entries(chain: list[Layer], start: int = 0, length: int | None = None) -> list[dict]:
    """MapEntry dicts as qemu-img map merges them (same depth and flags, contiguous host offsets)."""
    s, e, c, d, h, z = file_status(chain, *chain_status(chain))
    end = chain[0].size if length is None else min(chain[0].size, start + length)
    keep = (e > start) & (s < end)
    s, e, c, d, h, z = s[keep], e[keep], c[keep], d[keep], h[keep], z[keep]
    if not s.size or start >= end:
        return []
    cut = start - s[0]
    if cut > 0:
        s[0] = start
        h[0] = h[0] + cut if h[0] >= 0 else -1
    e[-1] = min(e[-1], end)
    present, zero, data = c != UNALLOC, np.isin(c, (UNALLOC, ZERO_PLAIN, ZERO_HOSTED)) | z, c == DATA
    same = np.ones(s.size, dtype=bool)
    same[0] = False
    for key in (d, present, zero, data):
        same[1:] &= key[1:] == key[:-1]
    same[1:] &= np.where(h[1:] >= 0, h[1:] == h[:-1] + (e[:-1] - s[:-1]), h[:-1] < 0) & (s[1:] == e[:-1])
    heads = np.flatnonzero(~same)
    tails = np.append(heads[1:], s.size) - 1
    entries = []
    for i, j in zip(heads.tolist(), tails.tolist()):
        entry = {"start": int(s[i]), "length": int(e[j] - s[i]), "depth": int(d[i]), "present": bool(present[i]),
                 "zero": bool(zero[i]), "data": bool(data[i])}
        if h[i] >= 0:
            entry["offset"] = int(h[i])
        entry["filename"] = chain[int(d[i])].name
        entries.append(entry)
    return entries


def _bool(value: bool) -> str:
    return "true" if value else "false"


def format_json(entries: list[dict]) -> str:
    """dump_map_entry's JSON: one entry a line, in a list."""
    lines = []
    for e in entries:
        text = (f'{{ "start": {e["start"]}, "length": {e["length"]}, "depth": {e["depth"]}, '
                f'"present": {_bool(e["present"])}, "zero": {_bool(e["zero"])}, "data": {_bool(e["data"])}')
        if "offset" in e:
            text += f', "offset": {e["offset"]}'
        lines.append(text + "}")
    return "[" + ",\n".join(lines) + "]\n"


def format_human(entries: list[dict]) -> str:
    """dump_map_entry's table: the ranges that hold data, with their host offset and file; an entry of data
    without one (compressed clusters) ends it with an error."""
    out = [HUMAN_HEADER]
    for e in entries:
        if e["data"] and "offset" not in e:  # (a compressed cluster's data has no host offset of its own)
            raise QemuImgError("qemu-img: File contains external, encrypted or compressed clusters.\n",
                               stdout="".join(out))
        if e["data"] and not e["zero"]:
            out.append(f"{map_hex(e['start']):<16}{map_hex(e['length']):<16}{map_hex(e['offset']):<16}{e['filename']}\n")
    return "".join(out)


def img_map(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img map [-f fmt] [--output=human|json] [-U] [--start-offset=O] [--max-length=L] filename."""
    opts, positional = cmdline.parse("map", args, {"-f", "--output", "-s", "-l", "-U", "--image-opts"},
                                     {"-s": lambda v: cvtnum("start offset", v),
                                      "-l": lambda v: cvtnum("max length", v)})
    if len(positional) != 1:
        raise QemuImgError(f"qemu-img: Expecting one image file name\n{USAGE}")
    output = opts.get("--output", "human")
    if output not in ("human", "json"):
        raise QemuImgError("qemu-img: --output must be used with human or json as argument.\n")
    start = cvtnum("start offset", opts["-s"]) if "-s" in opts else 0
    length = cvtnum("max length", opts["-l"]) if "-l" in opts else None
    shared = "-U" in opts
    if "--image-opts" in opts and "-f" in opts:
        raise QemuImgError("qemu-img: --image-opts and --format are mutually exclusive\n")
    target = nbd.name_of(positional[0], "--image-opts" in opts)
    if target is not None:  # an export of the machine's NBD server
        conn = nbd.connect(store, target, opts.get("-f"))
        return nbd.map_text(conn, target, output, start, length)
    name, fmt, optstr = image_args(opts, positional[0])
    with named_by(optstr, name):
        chain = open_chain(store, key_fn, name, fmt, "force-share" if shared else "shared", on_disk=True)
    entries = map_entries(chain, start, length) or [_empty(start)]
    return format_json(entries) if output == "json" else format_human(entries)


def _empty(start: int) -> dict:
    """Nothing to map (an empty image, a start at or past the end): img_map still dumps its first entry."""
    return {"start": start, "length": 0, "depth": 0, "present": False, "zero": False, "data": False}

