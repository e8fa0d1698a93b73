"""Random persistent-bitmap episodes: bitmaps stored in a qcow2 image and loaded again.

On a stream of their own (``{seed}/{index}/persist``) and with names of their own (an image ``pp`` with file node
``ppf``, bitmaps ``p0``..``p2``), so the other steps of a scenario stay what they were for every seed. The first
episode makes ``pp`` (a random cluster size, sometimes a v2 image, which refuses persistent bitmaps). An episode
adds bitmaps, persistent or not (a granularity QEMU refuses now and then, on the file node too), in a transaction
sometimes rolled back by an ``abort``, writes, and removes, clears, enables, disables and merges; then closes the
image (``blockdev-del``: the persistent bitmaps are stored), reads it with ``qemu-img info`` and ``check``, now and
then changes it with ``qemu-img bitmap``, and opens it again: the bitmaps come back, their flags and sums compared.
Sometimes ``qemu-img convert --bitmaps`` then copies it (``ppc<n>.qcow2``), closed or open (``-U``: its bitmaps
are in use there, so inconsistent to the copy). From seed :data:`AMEND_SINCE` on, ``qemu-img amend`` now and then
changes the closed image (a v2 image upgraded) or is refused an option it keeps; from :data:`DOWNGRADE_SINCE` on it
may downgrade a v3 one (its bitmaps lost, their clusters leaked), and from :data:`ZEROES_SINCE` on the episodes write
zeroes too (zero clusters, which a downgrade expands).

Not here: ``qemu-img map`` of the closed image. Stored bitmaps often make QEMU take it for an image with
preallocated metadata (qcow2_detect_metadata_preallocation), and map then asks the host file system about each
data cluster (bitlab.block.hostfs), whose answer on QEMU varied from run to run under load (CI dry run: seed
14001, scenario 115, step 197; the host's page cache and write-back): README "Known differences".
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp
from .steps import random_manage, random_write

CHANCE = 0.03  # after each op of the random mix, the chance of an episode
NAMES = ["p0", "p1", "p2"]
GRANULARITIES = [512, 4096, 65536, 1 << 20, 1000]  # the last is refused
K = 1 << 10


AMEND_SINCE = 30200  # seeds from this one on: qemu-img amend of the closed image now and then (own stream)
DOWNGRADE_SINCE = 33100  # from this seed on, now and then a downgrade of a v3 image (own stream): its bitmaps lost
ZEROES_SINCE = 33200  # from this seed on, now and then a zero write into the open image (own stream): zero clusters


class Persist:
    """What the episodes of one scenario share: their random stream and whether ``pp`` exists; ``amends``, from seed
    :data:`AMEND_SINCE` on, the stream of the ``qemu-img amend`` steps (older seeds keep their episodes), and from
    :data:`DOWNGRADE_SINCE` on, ``downgrades``: whether one downgrades a v3 image instead; from :data:`ZEROES_SINCE`
    on, ``zeroes``: the zero writes an episode makes (zero clusters, which a downgrade expands)."""

    def __init__(self, rng: random.Random, amends: random.Random | None = None,
                 downgrades: random.Random | None = None, zeroes: random.Random | None = None) -> None:
        self.rng = rng
        self.amends = amends
        self.downgrades = downgrades
        self.zeroes = zeroes
        self.made = False
        self.v2 = False
        self.copies = 0  # ppc<n>.qcow2: qemu-img convert --bitmaps copies


def _open() -> dict:
    return _qmp("blockdev-add", {"driver": "qcow2", "node-name": "pp",
                                 "file": {"driver": "file", "filename": "pp.qcow2", "node-name": "ppf"}})


def persist_episode(pe: Persist, size: int) -> list[dict]:
    """One episode (see the module's docstring)."""
    rng = pe.rng
    steps: list[dict] = []
    if not pe.made:
        pe.made = True
        pe.v2 = rng.random() < 0.1
        opts = [f"cluster_size={rng.choice([4096, 65536, 65536, 1 << 20])}"] + (["compat=0.10"] if pe.v2 else [])
        steps += [{"qemu-img": ["create", "-f", "qcow2", "-o", ",".join(opts), "pp.qcow2", str(size)]}, _open()]
    for _ in range(rng.randint(2, 7)):
        steps += _action(rng, size)
    if pe.zeroes is not None and pe.zeroes.random() < 0.5:  # (whole 4 KiB blocks; unmapped or not)
        zero = random_write(pe.zeroes, "pp", size, [4 * K, 64 * K, 192 * K])["write"]
        steps.append({"zero": {"node": "pp", "offset": zero["offset"], "length": zero["length"],
                               **({"unmap": True} if pe.zeroes.random() < 0.3 else {})}})
    steps += [_qmp("query-named-block-nodes", {"flat": True}), _qmp("blockdev-del", {"node-name": "pp"}),
              {"qemu-img": ["info", "pp.qcow2"]}, {"qemu-img": ["check", "pp.qcow2"]}]
    steps += _amend(pe)
    if rng.random() < 0.4:
        verbs = rng.sample(["--add", "--remove", "--clear", "--enable", "--disable", "--merge"], rng.randint(1, 2))
        argv = ["bitmap"]
        for verb in verbs:
            argv += [verb, rng.choice(NAMES)] if verb == "--merge" else [verb]
        if "--add" in verbs and rng.random() < 0.5:
            argv += ["-g", str(rng.choice(GRANULARITIES))]
        steps += [{"qemu-img": argv + ["pp.qcow2", rng.choice(NAMES)]}, {"qemu-img": ["info", "pp.qcow2"]}]
    steps += [_open(), _qmp("query-named-block-nodes", {"flat": True})]
    steps += [_qmp("x-debug-block-dirty-bitmap-sha256", {"node": "pp", "name": name}) for name in NAMES]
    if rng.random() < 0.3:  # a copy with its bitmaps, of the open image (-U: its bitmaps are in use) or not
        pe.copies += 1
        copy = f"ppc{pe.copies}.qcow2"
        shared = rng.random() < 0.3
        argv = ["convert", "--bitmaps"] + (["--skip-broken-bitmaps"] if rng.random() < 0.5 else [])
        argv += (["-U"] if shared else []) + ["-O", "qcow2", "pp.qcow2", copy]
        steps += ([] if shared else [_qmp("blockdev-del", {"node-name": "pp"})])
        steps += [{"qemu-img": argv}, {"qemu-img": ["info", copy]}, {"qemu-img": ["check", copy]}]
        steps += ([] if shared else [_open()])
    return steps


def _amend(pe: Persist) -> list[dict]:
    """Now and then (its own stream) ``qemu-img amend`` of the closed image: a v2 image upgraded (it can hold
    persistent bitmaps then), a v3 one downgraded (from :data:`DOWNGRADE_SINCE` on), or an option the image keeps as
    it is (QEMU's error)."""
    rng = pe.amends
    if rng is None or rng.random() >= 0.3:
        return []
    if not pe.v2 and pe.downgrades is not None and pe.downgrades.random() < 0.4:
        pe.v2 = True  # (QEMU keeps the bitmaps in the v2 header, which no reader loads: their clusters leaked)
        steps = [{"qemu-img": ["amend", "-o", pe.downgrades.choice(["compat=0.10", "compat=v2"]), "pp.qcow2"]},
                 {"qemu-img": ["info", "pp.qcow2"]}, {"qemu-img": ["check", "pp.qcow2"]}]
        return steps + ([{"qemu-img": ["check", "-r", "leaks", "pp.qcow2"]}] if pe.downgrades.random() < 0.5 else [])
    if pe.v2 and rng.random() < 0.7:
        pe.v2 = False
        options = rng.choice(["compat=1.1", "compat=v3", "compat=1.1,lazy_refcounts=off"])
    else:
        options = rng.choice(["compat=1.1", "backing_file=pp-base.qcow2", "refcount_bits=16", "compat=2",
                              "cluster_size=4096", "data_file_raw=off"])
    return [{"qemu-img": ["amend", "-o", options, "pp.qcow2"]}, {"qemu-img": ["info", "pp.qcow2"]}]


def _action(rng: random.Random, size: int) -> list[dict]:
    kind = rng.choices(["add", "write", "manage", "merge", "txn", "info"], weights=[5, 4, 3, 1, 1, 1])[0]
    name = rng.choice(NAMES)
    if kind == "add":
        args: dict = {"node": "pp" if rng.random() < 0.9 else "ppf", "name": name,
                      "persistent": rng.random() < 0.8}
        if rng.random() < 0.6:
            args["granularity"] = rng.choice(GRANULARITIES)
        if rng.random() < 0.2:
            args["disabled"] = True
        return [_qmp("block-dirty-bitmap-add", args)]
    if kind == "write":  # whole 4 KiB blocks (see the module's docstring)
        return [random_write(rng, "pp", size, [4 * K, 64 * K, 192 * K])]
    if kind == "manage":
        return [random_manage(rng, "pp", name)]
    if kind == "merge":
        return [_qmp("block-dirty-bitmap-merge", {"node": "pp", "target": name,
                                                  "bitmaps": rng.sample(NAMES, rng.randint(1, 2))})]
    if kind == "txn":  # a persistent add, then a remove (maybe of it), sometimes rolled back
        actions = [{"type": "block-dirty-bitmap-add", "data": {"node": "pp", "name": name, "persistent": True}},
                   {"type": "block-dirty-bitmap-remove", "data": {"node": "pp", "name": rng.choice(NAMES)}}]
        if rng.random() < 0.5:
            actions.append({"type": "abort", "data": {}})
        return [_qmp("transaction", {"actions": actions})]
    return [{"qemu-img": ["info", "-U", "pp.qcow2"]}]
