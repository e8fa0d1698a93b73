"""Random mirror episodes (block/mirror.c's job, blockdev.c's blockdev-mirror and drive-mirror).

On a stream of their own (``{seed}/{index}/mirror``) and with names of their own (targets ``mt<n>``, new images
``mn<n>.qcow2``, jobs ``mj<n>``, filters ``mf<n>``), so the other steps of a scenario stay what they were for every
seed. An episode mirrors a scenario node (or, now and then, drive-mirrors it into a new image): into a qcow2 node
of its size (now and then one of another size or cluster size), with a sync mode, granularity, buffer size,
copy mode or filter name picked at random. It waits for ``ready``, lets the guest write to the source, looks at
the job, and ends it: ``job-complete`` (the switch-over), a plain ``block-job-cancel`` (completed without it), a
forced one or ``job-cancel``. Several data requests in flight end in an order QEMU varies from run to run, and
with them the target's host clusters: the episodes map no target.
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp
from .steps import random_write

CHANCE = 0.03  # after each op of the random mix, the chance of an episode
K, M = 1 << 10, 1 << 20


class Mirrors:
    """What the episodes of one scenario share: their random stream, the scenario's nodes, a counter."""

    def __init__(self, rng: random.Random, nodes: list[str]) -> None:
        self.rng = rng
        self.nodes = nodes
        self.n = 0


def mirror_episode(mr: Mirrors, size: int, switch: bool = True) -> list[dict]:
    """One episode; ``switch`` False: no job-complete (a plain cancel instead), for a scenario where an NBD export
    of the source may exist (its switch-over would carry the export, and a bitmap it holds busy stays behind on
    the source: QEMU 7.2 then aborts at a resize of the source, bdrv_dirty_bitmap_truncate's assertion)."""
    rng = mr.rng
    mr.n += 1
    n = mr.n
    jid, target, src = f"mj{n}", f"mt{n}", rng.choice(mr.nodes)
    sync = rng.choice(["full", "full", "top", "none"])
    args: dict = {"job-id": jid, "device": src, "sync": sync}
    if rng.random() < 0.3:
        args["granularity"] = rng.choice([4 * K, 64 * K, M])
    if rng.random() < 0.15:
        args["buf-size"] = rng.choice([64 * K, M])
    if rng.random() < 0.2:
        args["filter-node-name"] = f"mf{n}"
    if rng.random() < 0.15:
        args["copy-mode"] = "write-blocking"
    if rng.random() < 0.2:
        args["on-source-error"] = rng.choice(["report", "stop", "ignore", "enospc"])
    steps: list[dict] = []
    cluster = 64 * K  # (the target's: a new image's default)
    if rng.random() < 0.25:  # drive-mirror into a new image (or an existing one)
        image = f"mn{n}.qcow2"
        mode = "absolute-paths" if rng.random() < 0.8 else "existing"
        if mode == "existing":
            steps.append({"qemu-img": ["create", "-f", "qcow2", image, str(size)]})
        _safe_buffer(args, 64 * K)
        steps.append(_qmp("drive-mirror", {**args, "target": image, "format": "qcow2", "mode": mode}))
    else:
        tsize = size if rng.random() < 0.9 else size // 2  # another size: the job fails as it starts
        create = ["create", "-f", "qcow2"]
        if rng.random() < 0.2:
            cluster = rng.choice([4 * K, 2 * M])
            create += ["-o", f"cluster_size={cluster}"]
        _safe_buffer(args, cluster)
        steps.append({"qemu-img": [*create, f"{target}.qcow2", str(tsize)]})
        steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": target,
                                           "file": {"driver": "file", "filename": f"{target}.qcow2"}}))
        steps.append(_qmp("blockdev-mirror", {**args, "target": target}))
    steps.append({"wait-job": {"id": jid, "status": "ready"}})
    writes = [random_write(rng, src, size, [4 * K, 64 * K, M]) for _ in range(rng.randint(0, 2))]
    steps += _apart(writes, _granularity(args, cluster))
    steps += [{"sleep": 0.25}, _qmp("query-block-jobs")]
    if rng.random() < 0.3:
        steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    steps += end_ready_job(rng, jid, [50, 20, 15, 15], switch)
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    return steps


def _safe_buffer(args: dict, cluster: int) -> None:
    """Keep a ``buf-size`` only where it is one granule (the default granularity: the target's cluster size, 4 KiB
    to 64 KiB). With room for several, an iteration's requests can wait for buffer space before they count as in
    flight (mirror_co_read), and QEMU 7.2 can go ready with some still waiting: BLOCK_JOB_READY's ``len`` and
    ``offset`` then vary from run to run (random scenarios 2033385409/113, 24031/56). The other draws stay."""
    granularity = _granularity(args, cluster)
    if args.get("buf-size", granularity) != granularity:
        del args["buf-size"]


def _granularity(args: dict, cluster: int) -> int:
    """The job's granularity: the one asked for, else the target's cluster size within 4 KiB to 64 KiB."""
    return args.get("granularity", min(max(4 * K, cluster), 64 * K))


def _apart(writes: list[dict], granularity: int) -> list[dict]:
    """The ready job's guest writes but those into a granule an earlier one dirtied: QEMU's job may copy that
    granule between the two writes, and again after the second, so ``len`` and ``offset`` varied from run to run
    (random scenario 619900262/231: 4 MiB once, 3 MiB replayed). The other draws stay."""
    kept: list[dict] = []
    seen: list[tuple[int, int]] = []
    for step in writes:
        write = step["write"]
        first, last = write["offset"] // granularity, (write["offset"] + write["length"] - 1) // granularity
        if not any(first <= b and a <= last for a, b in seen):
            seen.append((first, last))
            kept.append(step)
    return kept


def end_ready_job(rng: random.Random, jid: str, weights: list[int], switch: bool = True) -> list[dict]:
    """A ready job's end, by the ``weights`` of job-complete (the switch-over; a plain cancel instead unless
    ``switch``), a plain block-job-cancel (completed without it), a forced one and job-cancel; then its end."""
    end = rng.choices(["complete", "soft", "force", "job-cancel"], weights=weights)[0]
    if end == "complete" and not switch:
        end = "soft"
    if end == "complete":
        step = _qmp("job-complete", {"id": jid})
    elif end == "job-cancel":
        step = _qmp("job-cancel", {"id": jid})
    else:
        step = _qmp("block-job-cancel", {"device": jid, **({"force": True} if end == "force" else {})})
    return [step, {"wait-job": {"id": jid, "status": "null"}}]


def mirror_scenario(seed: int, index: int = 0) -> dict:
    """A scenario of such episodes alone (``bitlab conformance --focus mirror``): one or two qcow2 nodes of 8 MiB
    with data and a bitmap, then two to six episodes, then the nodes, the graph and the bitmaps."""
    rng = random.Random(f"{seed}/{index}/mirror-focus")
    nodes = ["d0", "d1"][: rng.randint(1, 2)]
    size = 8 * M
    steps: list[dict] = []
    for node in nodes:
        steps.append({"qemu-img": ["create", "-f", "qcow2", f"{node}.qcow2", str(size)]})
        steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": node,
                                           "file": {"driver": "file", "filename": f"{node}.qcow2"}}))
        steps.append(_qmp("block-dirty-bitmap-add", {"node": node, "name": "b0", "granularity": 64 * K}))
        steps.append({"write": {"node": node, "offset": rng.randrange(0, 8) * M, "length": rng.choice([64 * K, M])}})
    mr = Mirrors(random.Random(f"{seed}/{index}/mirror"), nodes)
    for _ in range(rng.randint(2, 6)):
        steps += mirror_episode(mr, size)
    steps += [_qmp("query-named-block-nodes", {"flat": True}), _qmp("x-debug-query-block-graph")]
    steps += [_qmp("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": "b0"}) for node in nodes]
    return {"name": f"mirror-{seed}-{index}", "steps": steps}


__all__ = ["CHANCE", "Mirrors", "end_ready_job", "mirror_episode", "mirror_scenario"]
