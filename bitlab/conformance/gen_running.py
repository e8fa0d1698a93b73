"""Random steps around a backup that runs while the guest writes (copy-before-write).

The backup (blockdev-backup or drive-backup, alone or in a transaction) starts throttled to
1 byte/s: QEMU 7.2's rate limiter lets the first block-copy request (one job cluster: ``x-perf``
``max-chunk``) through and then sleeps for hours, so once that request has finished the job's
progress is deterministic on real QEMU. While it runs: guest writes (aligned or not), zero
writes and discards on the source, the other node or the target; bitmap commands on the job's
bitmap and others; queries (the copy-before-write filter node shows up); a second backup of the
same node or onto the same target; speed changes, pause, resume, cancel. Then the speed goes to
0 (or the job is cancelled), the jobs settle and the target's *content* is checked with
``qemu-img compare`` against a copy of the source made just before the job started.

Stays away from what is not deterministic on QEMU 7.2: host offsets in a target's ``qemu-img
map`` (block-copy writes its chunks in parallel, allocation order varies); anything but a guest
write before the first requests have finished (hence a wait first: a guest write on a full
backup's first cluster, else a short sleep); speeds that let a second request through.
"""

from __future__ import annotations

import random
from typing import Any

from .gen_threshold import running_threshold
from .steps import qmp_step as _qmp

SETTLE = 0.05  # seconds: a started job's first request (64 KiB) has surely finished on real QEMU
SYNCS = ["full", "full", "top", "bitmap", "incremental", "none"]
MODES = [None, "on-success", "always", "never"]
TINY_SPEEDS = [1, 2, 100, 4096]  # all far below what would let a second request through


def _new_target(st: Any, size: int, steps: list[dict], add: bool = True) -> tuple[str, int]:
    """A new qcow2 target (its name and cluster size: sometimes not 64 KiB), a node unless not ``add``."""
    st.targets += 1
    target = f"t{st.targets}"
    cluster = st.rng.choice([4096, 131072]) if st.rng.random() < 0.15 else 65536
    options = ["-o", f"cluster_size={cluster}"] if cluster != 65536 else []
    steps.append({"qemu-img": ["create", "-f", "qcow2", *options, f"{target}.qcow2", str(size)]})
    if add:
        steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": target,
                                           "file": {"driver": "file", "filename": f"{target}.qcow2"}}))
    return target, cluster


def _start(st: Any, node: str, target: tuple[str, int], sync: str) -> dict:
    """A blockdev-backup step, throttled to 1 byte/s."""
    rng = st.rng
    st.jobs += 1
    # One or four job clusters a request (a request also ends where the source's host clusters stop
    # being contiguous). The job's cluster is the target's if larger than 64 KiB (and a smaller
    # max-chunk an error, now and then).
    chunk = max(65536, target[1]) if rng.random() < 0.9 else 65536
    if rng.random() < 0.3:
        chunk *= 4
    args: dict = {"job-id": f"job{st.jobs}", "device": node, "target": target[0], "sync": sync, "speed": 1,
                  "x-perf": {"max-chunk": chunk}}
    if sync in ("bitmap", "incremental") or rng.random() < 0.4:
        args["bitmap"] = st.bitmap(node)
        if sync != "incremental" or rng.random() < 0.3:
            mode = rng.choice(MODES if rng.random() < 0.1 else MODES[1:])
            if mode is not None:
                args["bitmap-mode"] = mode
    return _qmp("blockdev-backup", args)


def _guest_io(st: Any, size: int, node: str) -> dict:
    rng = st.rng
    if rng.random() < 0.2:  # unaligned
        offset = rng.randrange(0, size - 1)
        length = min(rng.randrange(1, 200_000), size - offset)
    else:
        offset = rng.randrange(0, size // 512) * 512
        length = min(rng.choice([512, 4096, 65536, 100 * 1024, 1 << 20]), size - offset)
    io: dict = {"node": node, "offset": offset, "length": length}
    kind = rng.choices(["write", "zero", "discard"], weights=[16, 3, 1])[0]
    if kind == "write":
        io["pattern"] = rng.randrange(1, 256)
    return {kind: io}


def _bitmap_command(st: Any, node: str, job_bitmap: str | None) -> dict:
    rng = st.rng
    name = job_bitmap if job_bitmap is not None and rng.random() < 0.5 else st.bitmap(node)
    cmd = rng.choice(["add", "clear", "remove", "enable", "disable", "merge", "sha"])
    if cmd == "add":
        new = rng.choice(["b0", "b1", "b2"])
        if new not in st.bitmaps[node]:
            st.bitmaps[node].add(new)
        return _qmp("block-dirty-bitmap-add", {"node": node, "name": new})
    if cmd == "merge":
        other = st.bitmap(node)
        target, source = (name, other) if rng.random() < 0.5 else (other, name)
        return _qmp("block-dirty-bitmap-merge", {"node": node, "target": target, "bitmaps": [source]})
    if cmd == "sha":
        return _qmp("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": name})
    if cmd == "remove":
        st.bitmaps[node].discard(name)  # the set only holds bitmaps that surely exist
    return _qmp(f"block-dirty-bitmap-{cmd}", {"node": node, "name": name})


def running_backup(st: Any, size: int) -> list[dict]:
    """A throttled backup, things done to it and around it while it runs, then its content."""
    rng = st.rng
    steps: list[dict] = []
    node = rng.choice(st.nodes)
    sync = rng.choice(SYNCS)
    if sync in ("bitmap", "incremental") and not st.bitmaps[node] and rng.random() < 0.8:
        steps.append(_qmp("block-dirty-bitmap-add", {"node": node, "name": "b0"}))
        st.bitmaps[node].add("b0")
    if rng.random() < 0.7:  # data to copy after the first request, so that the job runs on
        offset = rng.randrange(0, size // (64 << 10)) * (64 << 10)
        steps.append({"write": {"node": node, "offset": offset, "pattern": rng.randrange(1, 256),
                                "length": min(rng.choice([1, 2, 3]) << 20, size - offset)}})
    ref = f"r{st.targets + 1}.qcow2"  # the source as the job will see it when it starts
    steps.append({"qemu-img": ["convert", "-U", "-O", "qcow2", f"{node}.qcow2", ref]})
    # drive-backup: QEMU opens the target file itself (detect-zeroes=unmap). With sync=none its target has
    # the source as its backing file, where a second backup's filter takes the source's place.
    drive = rng.random() < 0.15
    target, cluster = _new_target(st, size, steps, add=not drive)
    start = _start(st, node, (target, cluster), sync)
    job_bitmap = start["qmp"]["arguments"].get("bitmap")
    if drive:
        start = _qmp("drive-backup", {**start["qmp"]["arguments"], "target": f"{target}.qcow2",
                                      "format": "qcow2", "mode": "existing"})
    if rng.random() < 0.25:  # in a transaction, with a bitmap added after it (which may fail: a rollback)
        new = rng.choice(["b0", "b1", "b2"])
        start = _qmp("transaction", {"actions": [
            {"type": start["qmp"]["execute"], "data": start["qmp"]["arguments"]},
            {"type": "block-dirty-bitmap-add", "data": {"node": node, "name": new}}]})
    armed, after = running_threshold(getattr(st, "thresholds", None), node, target, size, f"job{st.jobs}")
    steps += armed
    steps.append(start)
    steps += after
    jobs = {f"job{st.jobs}": sync}
    fresh = [(node, sync, f"job{st.jobs}")]  # jobs started whose first request nothing waited for yet

    def settle() -> None:
        # Progress, the block-copy bitmap's count, a cancelled job's offset and whether a job
        # with little to copy has ended are only deterministic on real QEMU once the first
        # requests have finished. A guest write on a full backup's first cluster waits for its
        # request (no real time spent); else sleep.
        if fresh and {(n, s) for n, s, _ in fresh} == {(fresh[0][0], "full")}:
            steps.append({"write": {"node": fresh[0][0], "offset": 0, "length": 512,
                                    "pattern": rng.randrange(1, 256)}})
        elif fresh:  # (and on real QEMU until the jobs' first requests have been written, if that is later)
            steps.append({"sleep": SETTLE, "first-requests": [jid for _, s, jid in fresh if s != "none"]})
        fresh.clear()

    for _ in range(rng.randint(2, 7)):
        what = rng.choices(["io", "bitmap", "query", "second", "speed", "pause", "resume", "cancel", "target"],
                           weights=[30, 14, 10, 5, 6, 5, 4, 2, 4])[0]
        if what != "io":  # (a job with one cluster to copy has ended on real QEMU by then)
            settle()
        if what == "io":
            steps.append(_guest_io(st, size, rng.choice(st.nodes)))
        elif what == "bitmap":
            steps.append(_bitmap_command(st, node, job_bitmap))
        elif what == "query":
            query = rng.choice(["query-block-jobs", "query-jobs", "query-named-block-nodes"])
            steps.append(_qmp(query, {"flat": True} if query == "query-named-block-nodes" else None))
            if query == "query-named-block-nodes":  # and the graph with the jobs' links
                steps.append(_qmp("x-debug-query-block-graph"))
        elif what == "second":  # of the same node (a new target), or onto the same target
            same_target = rng.random() < 0.5
            other = (target, cluster) if same_target else _new_target(st, size, steps)
            steps.append(_start(st, rng.choice(st.nodes) if same_target else node, other, rng.choice(SYNCS)))
            args = steps[-1]["qmp"]["arguments"]
            jobs[args["job-id"]] = args["sync"]
            fresh.append((args["device"], args["sync"], args["job-id"]))
        elif what == "target":  # a guest write on the job's target (drive-backup's has no node name)
            steps.append(_guest_io(st, size, node if drive else target))
        elif what == "speed":
            speed = rng.choice(TINY_SPEEDS + [-1])
            steps.append(_qmp("block-job-set-speed", {"device": rng.choice(list(jobs)), "speed": speed}))
        else:  # pause, resume or cancel, through either family of verbs
            verb = rng.choice([f"job-{what}", f"block-job-{what}"])
            steps.append(_qmp(verb, {"id" if verb.startswith("job-") else "device": rng.choice(list(jobs))}))
    settle()
    for name, job_sync in jobs.items():  # let every job finish (a sync=none job runs until cancelled)
        steps.append(_qmp("job-resume", {"id": name}))
        if job_sync == "none" or rng.random() < 0.15:
            steps.append(_qmp("job-cancel", {"id": name}))
        else:
            steps.append(_qmp("block-job-set-speed", {"device": name, "speed": 0}))
    steps.append({"settle-jobs": True})
    if not drive:  # (drive-backup closes its target at the end)
        steps.append({"flush": {"node": target}})  # the target's qcow2 metadata onto its file
    steps.append({"qemu-img": ["compare", "-U", ref, f"{target}.qcow2"]})
    if rng.random() < 0.3:
        steps.append({"qemu-img": ["compare", "-U", f"{node}.qcow2", f"{target}.qcow2"]})
    return steps


def running_scenario(seed: int, index: int = 0, size: int = 8 << 20) -> dict:
    """A scenario built around such backups (``bitlab conformance --focus running``): a few guest
    writes and bitmap commands, and one to six of them; the same (seed, index), the same steps."""
    from . import generator as gen  # (the generator imports this module)
    rng = random.Random(f"running{seed}/{index}")
    st = gen._State(rng, ["d0", "d1"][: rng.randint(1, 2)])
    st.thresholds = random.Random(f"running{seed}/{index}/threshold")
    steps: list[dict] = []
    for n in st.nodes:
        steps.append({"qemu-img": ["create", "-f", "qcow2", f"{n}.qcow2", str(size)]})
        steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": n,
                                           "file": {"driver": "file", "filename": f"{n}.qcow2"}}))
    for _ in range(rng.randint(3, 10)):
        steps += gen._OPS[rng.choices(["write", "add", "manage", "running"], weights=[30, 15, 5, 10])[0]](st, size)
    steps += running_backup(st, size)
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    steps.append(_qmp("x-debug-query-block-graph"))
    for node in st.nodes:
        for name in sorted(st.bitmaps[node]):
            steps.append(_qmp("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": name}))
    return {"name": f"running-{seed}-{index}", "steps": steps}
