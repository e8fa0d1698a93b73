"""Random discard-option episodes: what qcow2 frees and what its file node counts, over the discard options.

On a stream of their own (``{seed}/{index}/discard``) and with names of their own (images ``dq<n>.qcow2``,
nodes ``dq<n>``, file nodes ``dq<n>f``, blkdebug nodes ``dq<n>d``, backup targets ``dqt<n>``, jobs ``dqj<n>``), so
the other steps of a scenario stay what they were for every seed. An episode opens a qcow2 image with random
``discard`` (unset, ignore, unmap), ``pass-discard-request`` (unset, true, false) and ``detect-zeroes`` (unset,
off, on, unmap; on the file node not unmap) on the qcow2 node and on its file node, the file given inline or
added before by itself, sometimes with a blkdebug node between them (inline too, or added by itself); writes
data, then guest discards, ``write -z``, ``write -z -u``, writes of zeroes (``write -P 0``: detect-zeroes), shrinks
(``block_resize``) and now and then a full backup of the node onto a target with such options that held data (its
zero clusters become zero writes there). It ends with ``query-blockstats`` (``query-nodes``: the file node's
``discard-nb-ok``/``discard-bytes-ok``), the node closed, and ``qemu-img check`` of the image (``map`` too where
its file node cannot punch holes: see :func:`_inspect`).

Not here: ``detect-zeroes: unmap`` on the file node. qcow2 writing zeroes (data) into clusters it allocates at the
end of its file then punches holes past the end on QEMU 7.2, which leaves the file short of its clusters (``qemu-img
check``: "counting reference for region exceeding the end of the file"); bitlab does not simulate that (README
"Known differences").

Images (and backup targets) have 64 KiB or 4 KiB clusters: at 4 KiB an 8 MiB disk has four L2 tables, so a request
freeing clusters over a stretch without one makes one (qcow2_cluster_discard, zero_in_l2_slice), passing the discards
it cached so far first. Not 512 bytes: an 8 MiB disk's file then outgrows its refcount table (64 refcount blocks of
128 KiB) and a shrink frees the refcount blocks it leaves empty (qcow2_shrink_reftable), neither simulated (README
"Known differences").

A named file node (or blkdebug node) gets a dirty bitmap, so it hears qcow2's host writes one by one; without one
its ``wr_highest_offset`` comes from the file's growth (bitlab/block/wstats.py), compared all the same.
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp

CHANCE = 0.03  # after each op of the random mix, the chance of an episode
K, M = 1 << 10, 1 << 20
DISCARD = [None, "ignore", "unmap"]
PASS = [None, True, False]
DETECT = [None, "off", "on", "unmap"]
FILE_DETECT = [None, "off", "on"]  # not unmap: see the module's docstring
CLUSTERS = [65536, 65536, 4096]  # the images' cluster sizes (4 KiB: several L2 tables; not 512 B: see the docstring)


class Discards:
    """What the episodes of one scenario share: their random stream and how many images and targets exist."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.images = 0
        self.targets = 0


def _create(rng: random.Random, image: str, size: int) -> list[str]:
    """``qemu-img create`` of a qcow2 image of a random cluster size."""
    cluster = rng.choice(CLUSTERS)
    options = ["-o", f"cluster_size={cluster}"] if cluster != 65536 else []
    return ["create", "-f", "qcow2", *options, image, str(size)]


def _options(rng: random.Random, opts: dict, qcow2: bool = False) -> dict:
    """``opts`` with random discard options (detect-zeroes=unmap with discard=unmap: else QEMU may refuse the node,
    and the real backend's guest I/O on a missing node words its error its own way)."""
    discard, detect = rng.choice(DISCARD), rng.choice(DETECT if qcow2 else FILE_DETECT)
    if detect == "unmap":
        discard = "unmap"
    if discard is not None:
        opts["discard"] = discard
    if detect is not None:
        opts["detect-zeroes"] = detect
    if qcow2 and (passing := rng.choice(PASS)) is not None:
        opts["pass-discard-request"] = passing
    return opts


def _unmaps(file: dict, inline: bool) -> bool:
    """Whether a file node has discard=unmap (a child opened with its parent has it by default)."""
    return file.get("discard", "unmap" if inline else "ignore") == "unmap"


def _open(rng: random.Random, name: str) -> tuple[list[dict], list[str], str | None, bool]:
    """The steps opening ``name`` (qcow2 over maybe a blkdebug over a file), the nodes added by themselves
    (deleted after the qcow2 node, in this order), the node that gets a bitmap (None: all auto-named), and
    whether the file node unmaps (punches holes in the host file)."""
    image = f"{name}.qcow2"
    debug = rng.random() < 0.3
    file_alone = rng.random() < 0.4
    debug_alone = debug and rng.random() < 0.4
    named = file_alone or debug_alone or rng.random() < 0.5
    file = _options(rng, {"driver": "file", "filename": image} | ({"node-name": f"{name}f"} if named else {}))
    steps: list[dict] = []
    alone: list[str] = []
    unmaps = _unmaps(file, not file_alone)
    if file_alone:
        steps.append(_qmp("blockdev-add", file))
        alone.append(f"{name}f")
        file = f"{name}f"
    below: dict | str = file
    if debug:
        below = {"driver": "blkdebug", "image": file} | ({"node-name": f"{name}d"} if named else {})
        if debug_alone:
            steps.append(_qmp("blockdev-add", below))
            alone.insert(0, f"{name}d")
            below = f"{name}d"
    steps.append(_qmp("blockdev-add", _options(rng, {"driver": "qcow2", "node-name": name, "file": below}, True)))
    watched = f"{name}f" if named else None
    if watched:
        steps.append(_qmp("block-dirty-bitmap-add", {"node": watched, "name": "dqb",
                                                     "granularity": rng.choice([512, 65536])}))
    return steps, alone, watched, unmaps


def _range(rng: random.Random, size: int) -> tuple[int, int]:
    """A request inside the disk: 4 KiB-aligned mostly, 512-aligned now and then."""
    unit = 4 * K if rng.random() < 0.8 and size >= 4 * K else 512  # (a shrink may leave less than 4 KiB)
    offset = rng.randrange(0, size // unit) * unit
    return offset, min(rng.choice([4 * K, 64 * K, 192 * K, M]), size - offset)


def _io(rng: random.Random, node: str, size: int) -> dict:
    """One guest request: data, zeroes written as data, a discard, ``write -z`` or ``write -z -u``."""
    kind = rng.choices(["data", "zeroes", "discard", "zero", "zero-unmap"], weights=[3, 2, 3, 2, 3])[0]
    offset, length = _range(rng, size)
    io: dict = {"node": node, "offset": offset, "length": length}
    if kind in ("data", "zeroes"):
        return {"write": io | {"pattern": rng.randrange(1, 256) if kind == "data" else 0}}
    if kind == "discard":
        return {"discard": io}
    return {"zero": io | ({"unmap": True} if kind == "zero-unmap" else {})}


def _backup(de: Discards, node: str, size: int) -> list[dict]:
    """A full backup of ``node`` onto a new target with random discard options that held data; the target's
    counters, then the target closed and its image mapped and checked."""
    rng = de.rng
    de.targets += 1
    target, job = f"dqt{de.targets}", f"dqj{de.targets}"
    file = _options(rng, {"driver": "file", "filename": f"{target}.qcow2"})
    steps = [{"qemu-img": _create(rng, f"{target}.qcow2", size)},
             _qmp("blockdev-add", _options(rng, {"driver": "qcow2", "node-name": target, "file": file}, True))]
    for _ in range(rng.randint(1, 3)):
        offset, length = _range(rng, size)
        steps.append({"write": {"node": target, "offset": offset, "length": length, "pattern": rng.randrange(1, 256)}})
    steps += [_qmp("blockdev-backup", {"job-id": job, "device": node, "target": target, "sync": "full",
                                       "x-perf": {"max-workers": 1}}), {"settle-jobs": True},
              _qmp("query-blockstats", {"query-nodes": True}), _qmp("blockdev-del", {"node-name": target})]
    return steps + _inspect(f"{target}.qcow2", _unmaps(file, True))


def discard_episode(de: Discards, size: int) -> list[dict]:
    """One episode (see the module's docstring)."""
    rng = de.rng
    de.images += 1
    name = f"dq{de.images}"
    steps: list[dict] = [{"qemu-img": _create(rng, f"{name}.qcow2", size)}]
    opened, alone, watched, unmaps = _open(rng, name)
    steps += opened
    for _ in range(rng.randint(2, 5)):  # data to free
        offset, length = _range(rng, size)
        steps.append({"write": {"node": name, "offset": offset, "length": length, "pattern": rng.randrange(1, 256)}})
    current = size
    for _ in range(rng.randint(3, 8)):
        kind = rng.choices(["io", "shrink", "grow", "backup"], weights=[10, 2, 1, 1])[0]
        if kind == "io":
            steps.append(_io(rng, name, current))
        elif kind == "shrink" and current > M:
            current = rng.randrange(1, current // 512) * 512
            steps.append(_qmp("block_resize", {"node-name": name, "size": current}))
        elif kind == "grow":  # (after a shrink into a cluster too: the rest of it reads as that cluster does)
            current = min(size, current + rng.randrange(1, 4096) * 512)
            steps.append(_qmp("block_resize", {"node-name": name, "size": current}))
        elif kind == "backup":
            steps += _backup(de, name, current)
    steps.append(_qmp("query-blockstats", {"query-nodes": True}))
    if watched:
        steps.append(_qmp("x-debug-block-dirty-bitmap-sha256", {"node": watched, "name": "dqb"}))
    steps.append(_qmp("blockdev-del", {"node-name": name}))
    steps += [_qmp("blockdev-del", {"node-name": node}) for node in alone]
    return steps + _inspect(f"{name}.qcow2", unmaps)


def _inspect(image: str, unmaps: bool) -> list[dict]:
    """``qemu-img map`` and ``check`` of a closed image (``unmaps``: whether its file node punched holes in it,
    which ``map`` may ask the host file system about: bitlab.block.hostfs)."""
    return [{"qemu-img": ["map", "--output=json", image]}, {"qemu-img": ["check", image]}]
