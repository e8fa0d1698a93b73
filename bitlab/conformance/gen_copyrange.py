"""Random copy-offloading episodes: backups with x-perf ``use-copy-range`` (block/block-copy.c COPY_RANGE_*).

On a stream of their own (``{seed}/{index}/copyrange``) and with names of their own (sources ``cr<n>``, targets
``ct<n>``, jobs ``cj<n>``, a bitmap ``cb``), so the other steps of a scenario stay what they were for every seed.
An episode makes a fresh qcow2 source (a random cluster size; sometimes a size that is not a multiple of the
clusters, or of 512 bytes; sometimes over blkdebug, which copy_range cannot pass: the first task falls back to read
and write, and a read error may strike), writes data, zero-filled data, zeroes and discards in any order, sometimes
with a bitmap ``cb`` added halfway, and backs it up: drive-backup onto an image prepared with ``qemu-img create`` (mode
``existing``, with or without ``format``, sometimes on top of the previous episode's target as its backing file,
which QEMU opens with it: a zero write on part of a cluster reads the rest there) or one it creates
(``absolute-paths``), or blockdev-backup onto a qcow2 node with or without ``detect-zeroes``; the target's clusters
64 KiB, 4 KiB (several L2 tables: zero tasks make theirs in task order) or 2 MiB; sync full, top or
bitmap; ``use-copy-range`` mostly on, a max-chunk now and then. Sometimes the job is throttled to its first
request while the guest writes (copy-before-write copies through the same method, with up to 64 workers: only
where several workers are fixed, see below; seed 19155 scenario 132 varied from run to run on QEMU itself
before), never over all it has left:
on the system emulator the real backend's guest writes (HMP qemu-io) drain the node, and a job asleep with
nothing left would complete there (README "Known differences"). Then the target's ``qemu-img map`` and
``check``, and the bitmap's sum.

Stays away from what QEMU does not fix: several workers only where copy_range works (it allocates the target's
clusters as each task starts, in order; read and write allocate them in the order parallel reads complete) and
the source's, the target's and the job's clusters are all 64 KiB. Otherwise a task may allocate part of what it
copies only after a yield, while the next tasks allocate: where it crosses the end of what one of the target's
L2 tables maps (2 MiB for 4 KiB clusters), or where a job cluster mixes unallocated and data clusters of the
source and the zeroes written for the first wait for a new L2 table (qcow2 hands its lock to the next task).
And no blkdebug under a target (qcow2_co_copy_range_to allocates before blkdebug answers ENOTSUP: not simulated).
"""

from __future__ import annotations

import random

from .gen_running import SETTLE
from .steps import qmp_step as _qmp

K, M = 1 << 10, 1 << 20
CHANCE = 0.03  # after each op of the random mix, the chance of an episode


class CopyRange:
    """What the episodes of one scenario share: their random stream, a counter, the last target image."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.count = 0
        self.last: tuple[str, int] | None = None  # the last prepared target image and its size


def _writes(rng: random.Random, node: str, size: int, count: int) -> list[dict]:
    steps = []
    for _ in range(count):
        offset = rng.randrange(0, size // 512) * 512
        length = min(rng.choice([512, 4 * K, 64 * K, 200 * K, M, 3 * M]), size - offset)
        kind = rng.choices(["write", "zero", "discard"], weights=[10, 2, 1])[0]
        io: dict = {"node": node, "offset": offset, "length": length}
        if kind == "write":
            io["pattern"] = 0 if rng.random() < 0.35 else rng.randrange(1, 256)  # zero-filled data too
        steps.append({kind: io})
    return steps


def copy_range_episode(cr: CopyRange, size: int) -> list[dict]:
    """One episode (see the module's docstring)."""
    rng = cr.rng
    cr.count += 1
    n = cr.count
    src, tgt, job = f"cr{n}", f"ct{n}", f"cj{n}"
    ssize = rng.choice([M, 4 * M, size, 4 * M + 512 * rng.randrange(1, 2048), 4 * M + rng.randrange(1, 512)])
    cluster = rng.choice([65536, 65536, 65536, 4096, 2 * M])
    blkdebug = rng.random() < 0.15
    read_error = blkdebug and rng.random() < 0.5
    file: dict = {"driver": "file", "filename": f"{src}.qcow2"}
    if blkdebug:
        file = {"driver": "blkdebug", "image": file}
        if read_error:
            file["inject-error"] = [{"event": "read_aio", "errno": 5, "once": True}]
    steps: list[dict] = [
        {"qemu-img": ["create", "-f", "qcow2", "-o", f"cluster_size={cluster}", f"{src}.qcow2", str(ssize)]},
        _qmp("blockdev-add", {"driver": "qcow2", "node-name": src, "file": file})]
    steps += _writes(rng, src, ssize, rng.randint(1, 4))
    bitmap = rng.random() < 0.4
    if bitmap:
        steps.append(_qmp("block-dirty-bitmap-add", {"node": src, "name": "cb",
                                                      "granularity": rng.choice([512, 65536, 2 * M])}))
        steps += _writes(rng, src, ssize, rng.randint(1, 3))
    copy_range = rng.random() < 0.85
    kind = rng.choices(["existing", "absolute", "node"], weights=[5, 2, 3])[0]
    tcluster = rng.choice([65536, 65536, 4096, 2 * M]) if kind != "absolute" else 65536
    # several workers where the target's layout does not depend on QEMU's timing (see the module's docstring)
    several = copy_range and not blkdebug and tcluster == cluster == 65536
    args: dict = {"job-id": job, "device": src,
                  "sync": rng.choice(["full", "full", "top"] + (["bitmap", "bitmap"] if bitmap else [])),
                  "x-perf": {"use-copy-range": copy_range,
                             "max-workers": rng.choice([1, 1, 4, 64]) if several else 1}}
    if rng.random() < 0.15:
        args["x-perf"]["max-chunk"] = rng.choice([64 * K, 4 * M, 32 * M])
    if args["sync"] == "bitmap":
        args.update(bitmap="cb", **{"bitmap-mode": rng.choice(["on-success", "always", "never"])})
    prepare = ["create", "-f", "qcow2", "-o", f"cluster_size={tcluster}"]
    if kind == "existing":
        if cr.last is not None and rng.random() < 0.4:  # an incremental chain: the backing file is not opened
            prepare += ["-b", f"{cr.last[0]}.qcow2", "-F", "qcow2"]
        steps.append({"qemu-img": prepare + [f"{tgt}.qcow2", str(ssize)]})
        cr.last = (tgt, ssize)
        args.update(target=f"{tgt}.qcow2", mode="existing")
        if rng.random() < 0.7:
            args["format"] = "qcow2"
    elif kind == "absolute":
        args.update(target=f"{tgt}.qcow2", format="qcow2", mode="absolute-paths")
    else:
        steps.append({"qemu-img": prepare + [f"{tgt}.qcow2", str(ssize)]})
        node: dict = {"driver": "qcow2", "node-name": tgt, "file": {"driver": "file", "filename": f"{tgt}.qcow2"}}
        node.update(rng.choice([{}, {"detect-zeroes": "on"}, {"detect-zeroes": "unmap", "discard": "unmap"}]))
        steps.append(_qmp("blockdev-add", node))
        args["target"] = tgt
    # (throttled, the guest's writes go through copy-before-write, whose copy of a write's range has up to 64
    # workers whatever x-perf says: only where several workers are fixed, see above, is the target's layout)
    throttled = not blkdebug and ssize >= 4 * M and rng.random() < 0.3 and several
    if throttled:  # data first and last: the first request copies the first, the guest's writes miss the last
        args["speed"] = 1
        steps += [{"write": {"node": src, "offset": offset, "length": 4 * K, "pattern": rng.randrange(1, 256)}}
                  for offset in (0, ssize - 64 * K)]
    steps.append(_qmp("drive-backup" if kind != "node" else "blockdev-backup", args))
    if throttled:  # its first request has been copied: guest writes go through copy-before-write
        steps.append({"sleep": SETTLE, "first-requests": [job]})
        steps += _writes(rng, src, ssize // 4, rng.randint(1, 3))
        steps.append(_qmp("query-block-jobs"))
        steps.append(_qmp("block-job-set-speed", {"device": job, "speed": 0}))
    steps.append({"settle-jobs": True})
    if kind == "node":
        steps += [{"flush": {"node": tgt}}, _qmp("blockdev-del", {"node-name": tgt})]
    steps += [{"qemu-img": ["map", "--output=json", f"{tgt}.qcow2"]}, {"qemu-img": ["check", f"{tgt}.qcow2"]}]
    if bitmap:
        steps.append(_qmp("x-debug-block-dirty-bitmap-sha256", {"node": src, "name": "cb"}))
    steps.append(_qmp("blockdev-del", {"node-name": src}))
    return steps


__all__ = ["CHANCE", "CopyRange", "copy_range_episode"]
