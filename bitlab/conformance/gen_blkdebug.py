"""Random blkdebug episodes: the events QEMU 7.2 fires under raw and qcow2 nodes, the requests a rule fails,
and what the image holds afterwards.

On a stream of their own (``{seed}/{index}/blkdebug``) and with names of their own (images ``be<n>.qcow2`` or
``be<n>.raw``, nodes ``be<n>``, blkdebug nodes ``be<n>d``, file nodes ``be<n>f``, backup targets ``bet<n>``, jobs
``bej<n>``), so the other steps of a scenario stay what they were for every seed. An episode makes a qcow2 image
(64 KiB clusters) or a raw one of 1 to 4 MiB, adds its file node and a blkdebug node by themselves (sometimes with
``align`` 512 or 4096, sometimes ``discard=unmap``), then the format node over them; a dirty bitmap goes on the
file node (and on the blkdebug node of a raw image). The blkdebug node gets one to three rules: ``inject-error``
on any event bitlab fires (:data:`EVENTS`), EIO or ENOSPC, mostly ``once``, now and then with an ``iotype``, a
``sector`` (a cluster of the image's metadata or data) or ``immediately``, sometimes armed by a ``set-state``
rule on another event. Then guest requests: writes (``-f`` now and then on raw), ``write -z`` (``-u``), discards,
reads, flushes; sometimes a full backup of the node (one worker) onto a qcow2 target, itself over a blkdebug node
with a rule of its own now and then. It ends with ``query-named-block-nodes`` and ``query-blockstats`` and, if
every rule is ``once``, the nodes deleted and ``qemu-img check`` and ``map`` of a qcow2 image.

Avoided, each for its reason (README "Known differences" and "Where QEMU 7.2 crashes"):

- with ``align``, requests that need a read-modify-write while a rule may fail a read (QEMU 7.2 ignores the failed
  read and writes whatever its bounce buffer held: bitlab refuses to guess), and discards not aligned to it (a
  piece shorter than ``align`` makes QEMU 7.2 divide by zero without ``opt-discard``);
- a bitmap on the blkdebug node of a qcow2 image (a failed write past its end trips QEMU 7.2's assertion), and
  ``discard=unmap`` on the file node (qcow2 discards a cluster it failed to write past the file's end: with a
  bitmap on the file node, the same assertion);
- closing an image under a rule that recurs (QEMU cannot write its metadata back: bitlab refuses to open it again),
  and checking one where a rule may fail the flush after an L1 table entry's write (QEMU leaves the entry pointing
  at a freed L2 table: bitlab refuses to say what the file holds);
- more than one L2 table or refcount block (a write of several pieces runs its tasks in parallel in QEMU; new
  refcount blocks are not simulated for blkdebug);
- flushes of a raw image but FUA writes' (on the system emulator HMP ``qemu-io`` flushes a bare node through a
  BlockBackend that takes no permission, so QEMU 7.2 does not flush the raw node's child: the blkdebug node sees
  the flush events but not the flush; qemu-storage-daemon's writable export, like a guest's device, flushes it,
  as bitlab does; a FUA write's flush holds the write permission on both), so no flush after its writes either;
- ``qemu-img map`` of a raw image (bitlab's holes in raw files are not QEMU's: another episode's concern).
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp

CHANCE = 0.03  # after each op of the random mix, the chance of an episode
K, M = 1 << 10, 1 << 20
EVENTS = ["none", "read_aio", "write_aio", "cluster_alloc", "cluster_alloc_space", "cluster_free", "refblock_alloc",
          "refblock_load", "refblock_update_part", "l2_alloc_write", "l2_update", "l1_update", "reftable_load",
          "flush_to_os", "flush_to_disk", "pwritev", "pwritev_zero", "pwritev_done", "pwritev_rmw_head",
          "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail"]
RAW_EVENTS = ["none", "read_aio", "write_aio", "flush_to_os", "flush_to_disk", "pwritev", "pwritev_zero",
              "pwritev_done", "pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail",
              "pwritev_rmw_after_tail"]
IOTYPES = ["read", "write", "write-zeroes", "discard", "flush"]
# sectors a rule may name in a new qcow2 image of 64 KiB clusters: header, refcount table, refcount block,
# L1 table, the first L2 table, the first data clusters
QCOW2_SECTORS = [0, 128, 256, 384, 512, 640, 768]


class Blkdebugs:
    """What the episodes of one scenario share: their random stream and counters."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.images = 0
        self.jobs = 0


def _rules(rng: random.Random, events: list[str], sectors: list[int], reads_ok: bool) -> dict:
    """One to three inject-error rules (``reads_ok`` False: none may fail a read), maybe armed by a set-state."""
    rules: list[dict] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        rule: dict = {"event": rng.choice(events), "errno": rng.choice([5, 5, 28])}
        if rng.random() < 0.8:
            rule["once"] = True
        if not reads_ok or rng.random() < 0.25:
            rule["iotype"] = rng.choice(IOTYPES if reads_ok else IOTYPES[1:])
        if rng.random() < 0.15:
            rule["sector"] = rng.choice(sectors)
        if rng.random() < 0.15:
            rule["immediately"] = True
        rules.append(rule)
    opts: dict = {"inject-error": rules}
    if rng.random() < 0.3:
        for rule in rules:
            rule["state"] = 2
        opts["set-state"] = [{"event": rng.choice(events), "state": 1, "new_state": 2}]
    return opts


def _request(rng: random.Random, node: str, size: int, unit: int, discards: bool, qcow2: bool) -> dict:
    """One guest request, its offset and length multiples of ``unit``. A raw image's are flushed only by FUA
    writes (see the module's docstring)."""
    kinds = ["write", "write", "zero", "read"] + (["flush"] if qcow2 else []) + (["discard"] if discards else [])
    kind = rng.choice(kinds)
    if kind == "flush":
        return {"flush": {"node": node}}
    offset = rng.randrange(0, size // unit) * unit
    length = min(rng.choice([unit, 4 * unit, 64 * K, 200 * K]) // unit * unit or unit, size - offset)
    io: dict = {"node": node, "offset": offset, "length": length}
    if not qcow2 and kind != "read":
        io["flush"] = False
    if kind == "write":
        if not qcow2 and rng.random() < 0.3:
            io["fua"] = True
        return {"write": io | {"pattern": rng.randrange(1, 256)}}
    if kind == "zero":
        return {"zero": io | ({"unmap": True} if rng.random() < 0.5 else {})}
    if kind == "read":
        return {"read": io | {"pattern": 0}}
    return {"discard": io}


def blkdebug_episode(bd: Blkdebugs, source_size: int) -> list[dict]:
    """One episode (see the module's docstring)."""
    rng = bd.rng
    bd.images += 1
    name = f"be{bd.images}"
    qcow2 = rng.random() < 0.7
    size = rng.choice([M, 2 * M, 4 * M])
    image = f"{name}.{'qcow2' if qcow2 else 'raw'}"
    align = rng.choice([0, 0, 0, 512, 4096])
    discard = rng.random() < 0.4
    reads_ok = align <= 1 or rng.random() < 0.5  # (else no rule may fail a read: read-modify-writes are safe)
    rules = _rules(rng, EVENTS if qcow2 else RAW_EVENTS, QCOW2_SECTORS if qcow2 else [0, 1, 8, 128, 1024], reads_ok)
    unit = align if align > 1 and reads_ok else 512  # (with a rule that may fail a read: no read-modify-write)
    debug = {"driver": "blkdebug", "node-name": f"{name}d", "image": f"{name}f", **rules}
    if align:
        debug["align"] = align
    if discard:
        debug["discard"] = "unmap"
    fmt = {"driver": "qcow2" if qcow2 else "raw", "node-name": name, "file": f"{name}d"}
    if discard:
        fmt["discard"] = "unmap"
    steps: list[dict] = [
        {"qemu-img": ["create", "-f", "qcow2" if qcow2 else "raw", image, str(size)]},
        _qmp("blockdev-add", {"driver": "file", "node-name": f"{name}f", "filename": image}),
        _qmp("blockdev-add", debug),
        _qmp("blockdev-add", fmt),
        _qmp("block-dirty-bitmap-add", {"node": f"{name}f", "name": "bf", "granularity": rng.choice([512, 65536])}),
    ]
    if not qcow2:
        steps.append(_qmp("block-dirty-bitmap-add", {"node": f"{name}d", "name": "bd", "granularity": 512}))
    discards = discard and (align <= 1 or unit % align == 0)
    # (a rule armed as the node opens may fail the format's open: the node is then missing, and the real
    # backend's guest words that error its own way)
    opens = {r["event"] for r in rules["inject-error"] + rules.get("set-state", [])} & {"none", "reftable_load"}
    for _ in range(0 if opens else rng.randint(2, 8)):
        steps.append(_request(rng, name, size, unit, discards, qcow2))
    if qcow2 and not opens and rng.random() < 0.3:
        steps += _backup(bd, name, size)
    steps += [_qmp("query-named-block-nodes", {"flat": True}), _qmp("query-blockstats", {"query-nodes": True})]
    if all(rule.get("once") for rule in rules["inject-error"]):
        steps += [_qmp("blockdev-del", {"node-name": n}) for n in (name, f"{name}d", f"{name}f")]
        if qcow2 and not _fails_l1_flush(rules):
            steps += [{"qemu-img": ["check", image]}, {"qemu-img": ["map", "--output=json", image]}]
    return steps


def _fails_l1_flush(rules: dict) -> bool:
    """Whether a rule may fail the flush after an L1 entry's write (QEMU 7.2 leaves the entry pointing at an L2
    table it freed again: bitlab refuses to say what ``qemu-img check`` finds then)."""
    armed = {r["event"] for r in rules.get("set-state", [])}
    return any(r["event"] in ("l1_update", "pwritev", "pwritev_done") and r.get("iotype") == "flush"
               or r["event"] == "pwritev_done" and "iotype" not in r and "sector" not in r and "l1_update" in armed
               for r in rules["inject-error"])


def _backup(bd: Blkdebugs, node: str, size: int) -> list[dict]:
    """A full backup of ``node`` onto a new qcow2 target, over a blkdebug node with a rule now and then."""
    rng = bd.rng
    bd.jobs += 1
    target, job = f"bet{bd.jobs}", f"bej{bd.jobs}"
    file: dict = {"driver": "file", "filename": f"{target}.qcow2"}
    if rng.random() < 0.5:
        rule = {"event": rng.choice(EVENTS[1:]), "errno": 5, "once": True}
        file = {"driver": "blkdebug", "image": file, "inject-error": [rule]}
    return [{"qemu-img": ["create", "-f", "qcow2", f"{target}.qcow2", str(size)]},
            _qmp("blockdev-add", {"driver": "qcow2", "node-name": target, "file": file}),
            _qmp("blockdev-backup", {"job-id": job, "device": node, "target": target, "sync": "full",
                                     "x-perf": {"max-workers": 1}}),
            {"settle-jobs": True}, _qmp("query-jobs")]


def blkdebug_scenario(seed: int, index: int = 0) -> dict:
    """A scenario of one to four such episodes (``bitlab conformance --focus blkdebug``)."""
    bd = Blkdebugs(random.Random(f"{seed}/{index}/blkdebug"))
    steps: list[dict] = []
    for _ in range(bd.rng.randint(1, 4)):
        steps += blkdebug_episode(bd, M)
    return {"name": f"blkdebug-{seed}-{index}", "steps": steps}
