"""Random blockdev-reopen episodes (block.c bdrv_reopen_*, qcow2's bitmaps on reopen).

On a stream of their own (``{seed}/{index}/reopen``) and with names of their own (an image ``rp``, its file node
``rpf`` when it is added on its own, a backing image ``rq`` now and then, bitmaps ``r0``..``r2``), so the other
steps of a scenario stay what they were for every seed. The first episode makes ``rp``. An episode adds bitmaps
(persistent or not), writes, clears, removes, enables and merges them, and reopens: read-only or read-write,
with ``discard``, ``detect-zeroes``, ``cache.no-flush`` and qcow2 options or without (back to their defaults),
the file by reference (when added on its own) or as options, the backing file reopened, detached or replaced
by a node of its own (``rr``, which it then reads through); or with
something QEMU refuses (another driver or file name, a missing node, a missing ``backing``, ``force-share``,
detect-zeroes ``unmap`` without discard). Now and then a scenario node is reopened too, in the same command
(its jobs drained). After each reopen, ``qemu-img info -U`` shows the stored bitmaps' flags, and the episode
ends with the nodes and the bitmaps' sums.
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp
from .steps import random_manage, random_write

CHANCE = 0.03  # after each op of the random mix, the chance of an episode
NAMES = ["r0", "r1", "r2"]
K = 1 << 10


class Reopens:
    """What the episodes of one scenario share: their random stream and ``rp``'s state."""

    def __init__(self, rng: random.Random, nodes: list[str], files: dict[str, dict]) -> None:
        self.rng = rng
        self.nodes = nodes  # the scenario's nodes, and their file options as blockdev-add gave them
        self.files = files
        self.made = False
        self.separate = False  # rpf added on its own (the file given by reference)
        self.backing = False  # rp.qcow2 names rq.qcow2, opened with it
        self.detached = False  # rp's backing detached by a reopen
        self.other = False  # rr (a node of its own) made rp's backing by a reopen


def _file(re: Reopens) -> dict | str:
    return "rpf" if re.separate else {"driver": "file", "filename": "rp.qcow2"}


def _options(re: Reopens, **extra: object) -> dict:
    """rp's options as a reopen keeping its children gives them."""
    opts: dict = {"driver": "qcow2", "node-name": "rp", "file": _file(re)}
    if re.other:
        opts["backing"] = "rr"
    elif re.backing:
        opts["backing"] = None if re.detached else {"driver": "qcow2", "file": {"driver": "file",
                                                                              "filename": "rq.qcow2"}}
    return opts | extra


def _make(re: Reopens, size: int) -> list[dict]:
    rng = re.rng
    re.made = True
    re.separate = rng.random() < 0.4
    re.backing = rng.random() < 0.3
    steps: list[dict] = []
    if re.backing:
        steps += [{"qemu-img": ["create", "-f", "qcow2", "rq.qcow2", str(size)]},
                  {"qemu-img": ["create", "-f", "qcow2", "-b", "rq.qcow2", "-F", "qcow2", "rp.qcow2"]}]
    else:
        steps.append({"qemu-img": ["create", "-f", "qcow2", "rp.qcow2", str(size)]})
    if re.separate:
        steps.append(_qmp("blockdev-add", {"driver": "file", "node-name": "rpf", "filename": "rp.qcow2"}))
    steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": "rp", "file": _file(re)}))
    return steps


def reopen_episode(re: Reopens, size: int) -> list[dict]:
    """One episode (see the module's docstring)."""
    rng = re.rng
    steps: list[dict] = [] if re.made else _make(re, size)
    for _ in range(rng.randint(2, 7)):
        steps += _action(re, size)
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    steps += [_qmp("x-debug-block-dirty-bitmap-sha256", {"node": "rp", "name": name}) for name in NAMES]
    return steps


def _action(re: Reopens, size: int) -> list[dict]:
    rng = re.rng
    kind = rng.choices(["add", "write", "manage", "merge", "reopen", "refused"], weights=[4, 4, 3, 1, 6, 2])[0]
    name = rng.choice(NAMES)
    if kind == "add":
        return [_qmp("block-dirty-bitmap-add", {"node": "rp", "name": name, "persistent": rng.random() < 0.7,
                                                "granularity": rng.choice([4096, 65536])})]
    if kind == "write":
        return [random_write(rng, "rp", size, [4 * K, 64 * K, 256 * K])]
    if kind == "manage":
        return [random_manage(rng, "rp", name)]
    if kind == "merge":
        return [_qmp("block-dirty-bitmap-merge", {"node": "rp", "target": name, "bitmaps": [rng.choice(NAMES)]})]
    if kind == "refused":
        return [_qmp("blockdev-reopen", {"options": [_refused(re)]})]
    extra: dict = {}
    if rng.random() < 0.5:
        extra["read-only"] = rng.random() < 0.6
    if rng.random() < 0.3:
        extra["discard"] = rng.choice(["ignore", "unmap"])
    if rng.random() < 0.2:
        extra["detect-zeroes"] = rng.choice(["off", "on"])
    if rng.random() < 0.15:
        extra["cache"] = {"no-flush": rng.random() < 0.5}
    if rng.random() < 0.15:
        extra["pass-discard-request"] = rng.random() < 0.5
    opts = _options(re, **extra)
    steps: list[dict] = []
    if re.backing and not re.detached and rng.random() < 0.25:
        opts["backing"] = None
        re.detached = True
    elif not re.other and rng.random() < 0.1:  # another node as the backing file (it shares its writes)
        steps += [{"qemu-img": ["create", "-f", "qcow2", "rr.qcow2", str(size)]},
                  _qmp("blockdev-add", {"driver": "qcow2", "node-name": "rr",
                                        "file": {"driver": "file", "filename": "rr.qcow2"}}),
                  {"write": {"node": "rr", "offset": 0, "length": 64 * K, "pattern": 0x72}}]
        opts["backing"] = "rr"
        re.other = True
    listed = [opts]
    if rng.random() < 0.2:  # a scenario node too (its jobs drained; read-write, its options as they were)
        node = rng.choice(re.nodes)
        listed.insert(rng.randrange(2), {"driver": "qcow2", "node-name": node, "file": re.files[node]})
    steps += [_qmp("blockdev-reopen", {"options": listed}), {"qemu-img": ["info", "-U", "--output=json", "rp.qcow2"]}]
    if re.other and rng.random() < 0.5:  # what rp reads where it has no data of its own
        steps.append({"read": {"node": "rp", "offset": 0, "length": 64 * K, "pattern": 0x72}})
    return steps


def _refused(re: Reopens) -> dict:
    rng = re.rng
    kind = rng.choice(["driver", "filename", "missing", "no-name", "force-share", "zeroes", "backing"])
    if kind == "driver":
        return _options(re, driver="raw")
    if kind == "filename":
        return _options(re, file={"driver": "file", "filename": "other.qcow2"})
    if kind == "missing":
        return _options(re) | {"node-name": "rx"}
    if kind == "no-name":
        return {k: v for k, v in _options(re).items() if k != "node-name"}
    if kind == "force-share":
        return _options(re, **{"force-share": True, "read-only": True})
    if kind == "zeroes":
        return _options(re, discard="ignore", **{"detect-zeroes": "unmap"})
    opts = _options(re)
    opts.pop("backing", None)  # backing left out: refused when rp has one
    return opts
