"""Random scenarios that both bitlab and real QEMU 7.2 can play (seeded, replayable).

They mix guest writes, every bitmap command (with wrong names and granularities too),
backups of every sync and bitmap mode (valid and invalid combinations), transactions in
both completion modes, NBD exports (of bitmaps too), and queries. They stay away from what crashes or hangs QEMU 7.2
(see shared/reference/real-qemu.md): an empty merge list; an enable/disable action on a
missing bitmap; a transaction touching a bitmap and rolling back a backup of it with
bitmap-mode always; a grouped transaction with non-backup actions after two backups.

Between those steps come *job life-cycle episodes* (:func:`_life`; their own random stream
and names — sources ``s<n>``, targets ``lt<n>``, jobs ``lj<n>`` — so the steps above are what
they were for every seed): a backup (blockdev-backup, sometimes drive-backup creating its
target) or a grouped transaction of backups, with ``auto-finalize``/``auto-dismiss`` false or
not, error policies (``on-source-error``/``on-target-error`` report, ignore, stop, enospc)
and blkdebug errors (EIO or ENOSPC, once or recurring, at once or armed by the first guest
write) on new qcow2 nodes, or on raw over null-co (``sn<n>``; no file: cheaper on real QEMU);
then, in whatever state the job settled (pending, concluded, stopped by an error, paused),
job-* and block-job-* finalize, dismiss, cancel (force or not), pause, resume, complete and
set-speed, on its id, an older one or a missing one, and query-jobs / query-block-jobs.
Real QEMU's outcome never depends on its timing:

- every job has ``x-perf: {max-workers: 1}`` (where an error strikes is then fixed), except a
  single blockdev-backup of a fresh source whose only errors are its reads onto a qcow2 node, its
  first task a read (1 to 4 workers: blkdebug fails a read from a bottom half, before any other
  request completes; with a null-co or drive-backup target, or zero tasks first, QEMU's outcome
  varies from run to run; such a target's host layout is not compared: its parallel copies
  allocate clusters in an order QEMU does not fix), and ``settle-jobs`` follows every
  step that may move a job, so verbs meet settled jobs only;
- a sync ``none`` job (it runs until cancelled) is paused or cancelled before it settles,
  and cancelled right after any resume; cancelled if its target fails writes and its source is a
  node of the mix (the guest's later writes there would copy onto it in parallel, and QEMU hands
  out the host clusters its failed writes freed again in an order that varies);
- an error that recurs is never combined with ``ignore`` (the job would retry forever);
- a write threshold goes only on the target of a single backup with one worker (tasks written in order);
- in a grouped transaction, a failing member reports (a stopped one would keep the others
  waiting forever) and surely fails (it reads data), and its siblings have nothing to copy
  (sync ``top`` of an empty node) or run until cancelled (sync ``none``), so their cancel
  does not race their progress;
- sources are written in any order: qcow2 lays their clusters out in write order and block-copy's
  tasks end where host clusters stop being contiguous (bitlab/block/qcow2_host.py), so where an
  error strikes, and a stopped job's progress, are QEMU's.

A third of the scenarios' nodes have a named file node with a bitmap (``d0f``/``fb``), compared at
the end: guest writes and copy-before-write dirty it at host offsets, with the metadata qcow2 writes.

After 4% of the steps comes an external snapshot episode of :mod:`.gen_snapshot` (its own stream and
names: overlays ``sv<n>``). After 2% of the steps comes an episode of :mod:`.gen_parents` (its own stream and names too:
``ps<n>``, ``po<n>``, ``pj<n>x<m>``): a backup whose filter takes the source's place under an
overlay and an earlier sync=none target. After 5% of the steps comes a write-threshold episode of
:mod:`.gen_threshold` (its own stream), and a throttled backup may get a threshold on its target or source;
``query-blockstats`` (every node's ``wr_highest_offset``; then the named BlockBackends: none) follows the
final ``query-named-block-nodes``.
After 3% of the steps comes a persistent-bitmap episode of :mod:`.gen_persist` (its own stream and
names: ``pp``, bitmaps ``p0``..``p2``): bitmaps stored on closing the image, read by qemu-img, loaded again.
After 3% of the steps comes a copy-offloading episode of :mod:`.gen_copyrange` (its own stream and names: ``cr<n>``,
``ct<n>``): a backup with x-perf ``use-copy-range`` onto a prepared, created or opened target.
After 3% of the steps comes a discard-option episode of :mod:`.gen_discard` (its own stream and names: ``dq<n>``).
After 3% of the steps comes a blkdebug episode of :mod:`.gen_blkdebug` (its own stream and names: ``be<n>``): rules on
any event bitlab fires under a raw or qcow2 node, ``align`` now and then, the requests they fail.
After 3% of the steps comes a blockdev-reopen episode of :mod:`.gen_reopen` (its own stream and names: ``rp``,
``rpf``, ``rq``, bitmaps ``r0``..``r2``): read-only and back with persistent bitmaps, options changed or reset,
the backing file detached, what QEMU refuses; sometimes with a scenario node in the same command.
After 3% of the steps comes a throttling episode of :mod:`.gen_throttle` (its own stream and names: groups ``tz0``,
``tz1``, the throttle node ``tp`` over ``tpq``, jobs ``tj<n>``): groups made, read and changed, guest writes and
backups through the throttle node, the node moved to the other group, both taken down.
After 3% of the steps comes a mirror episode of :mod:`.gen_mirror` (its own stream and names: targets ``mt<n>``,
images ``mn<n>.qcow2``, jobs ``mj<n>``, filters ``mf<n>``): blockdev-mirror or drive-mirror of a scenario node,
ready, guest writes, then the switch-over or a cancel.
After 2% of the steps comes a commit or stream episode of :mod:`.gen_commit` (its own stream and names: images and nodes
``ck<n>b``/``m``/``t``, jobs ``kj<n>``, filters ``kf<n>``): a chain of two or three images committed, the active
layer (ready, guest writes, then job-complete or a cancel) or the middle one (the commit job), or streamed into
its top.
After 60% of the export ops, qemu-img reads an export as a pull-mode backup tool would (its own stream): a map, with
``x-dirty-bitmap`` or not, its info, or a convert of it into a new image (``nc<n>``), mapped.
From seed 29000 on, 15% of the scenarios end with a crash episode of :mod:`.gen_crash` (its own stream): QEMU killed,
the disks and backup targets checked, mapped and repaired.
"""

from __future__ import annotations

import random

from .gen_blkdebug import CHANCE as BLKDEBUG_CHANCE
from .gen_blkdebug import Blkdebugs, blkdebug_episode
from .gen_commit import CHANCE as COMMIT_CHANCE
from .gen_commit import commit_episode, commits_for
from .gen_copyrange import CHANCE as COPYRANGE_CHANCE
from .gen_copyrange import CopyRange, copy_range_episode
from .gen_crash import CRASH_CHANCE, CRASH_SINCE, crash_episode
from .gen_discard import CHANCE as DISCARD_CHANCE
from .gen_discard import Discards, discard_episode
from .gen_mirror import CHANCE as MIRROR_CHANCE
from .gen_mirror import Mirrors, mirror_episode
from .gen_parents import CHANCE as PARENTS_CHANCE
from .gen_parents import Parents, parents_episode
from .gen_peek import CHANCE as PEEK_CHANCE
from .gen_peek import Peeks, peek_episode
from .gen_persist import AMEND_SINCE, DOWNGRADE_SINCE, ZEROES_SINCE, Persist, persist_episode
from .gen_persist import CHANCE as PERSIST_CHANCE
from .gen_reopen import CHANCE as REOPEN_CHANCE
from .gen_reopen import Reopens, reopen_episode
from .gen_running import running_backup
from .gen_snapshot import CHANCE as SNAPSHOT_CHANCE
from .gen_snapshot import Snapshots, snapshot_episode
from .gen_threshold import CHANCE as THRESHOLD_CHANCE
from .gen_threshold import threshold_episode
from .gen_throttle import CHANCE as THROTTLE_CHANCE
from .gen_throttle import Throttles, throttle_episode
from .steps import qmp_step as _qmp
from .steps import random_write

K, M = 1 << 10, 1 << 20
GRANULARITIES = [512, 4096, 65536, 131072, 1 << 20, 64000, 256]  # the last two are refused
SYNCS = ["full", "top", "bitmap", "incremental", "none"]
MODES = [None, "on-success", "always", "never"]
FILE_BITMAP_CHANCE = 0.3  # a scenario's node gets a bitmap on its file node
RESIZE_CHANCE = 0.06  # after a step, a block_resize episode (its own random stream)
CREATE_CHANCE = 0.05  # after a step, a blockdev-create episode (its own random stream)


class _State:
    def __init__(self, rng: random.Random, nodes: list[str]) -> None:
        self.rng = rng
        self.nodes = nodes
        self.bitmaps: dict[str, set[str]] = {n: set() for n in nodes}
        self.targets = 0
        self.jobs = 0
        self.exports: list[str] = []  # export ids that may exist
        self.server = False
        self.pulls = 0  # images qemu-img pulled from an export (nc<n>)
        self.thresholds: random.Random | None = None  # write thresholds' own stream (gen_threshold)
        self.restored = 0  # restores into an export (their backup images: rs<n>.qcow2)
        self.writable: str | None = None  # the name of the writable export the last export op added

    def node(self) -> str:
        return self.rng.choice(self.nodes + (["nope"] if self.rng.random() < 0.05 else []))

    def bitmap(self, node: str, existing: bool = False) -> str:
        have = sorted(self.bitmaps.get(node, ()))
        if have and (existing or self.rng.random() < 0.8):
            return self.rng.choice(have)
        return self.rng.choice(["b0", "b1", "b2", "x"])


def random_scenario(seed: int, index: int = 0, size: int = 8 * M) -> dict:
    """One scenario; the same (seed, index) always gives the same steps."""
    rng = random.Random(f"{seed}/{index}")
    nodes = ["d0", "d1"][: rng.randint(1, 2)]
    st = _State(rng, nodes)
    life = _Life(random.Random(f"{seed}/{index}/life"))
    parents = Parents(random.Random(f"{seed}/{index}/parents"))
    steps: list[dict] = []
    watched = _watched_files(random.Random(f"{seed}/{index}/hostio"), nodes)
    resizes = random.Random(f"{seed}/{index}/resize")
    creates = random.Random(f"{seed}/{index}/create")
    snapshots = Snapshots(random.Random(f"{seed}/{index}/snapshot"), nodes,
                          random.Random(f"{seed}/{index}/snapshot-peek"))
    thresholds = st.thresholds = random.Random(f"{seed}/{index}/threshold")
    persist = Persist(random.Random(f"{seed}/{index}/persist"),
                      random.Random(f"{seed}/{index}/amend") if seed >= AMEND_SINCE else None,
                      random.Random(f"{seed}/{index}/downgrade") if seed >= DOWNGRADE_SINCE else None,
                      random.Random(f"{seed}/{index}/persist-zero") if seed >= ZEROES_SINCE else None)
    copyrange = CopyRange(random.Random(f"{seed}/{index}/copyrange"))
    discards = Discards(random.Random(f"{seed}/{index}/discard"))
    blkdebugs = Blkdebugs(random.Random(f"{seed}/{index}/blkdebug"))
    files: dict[str, dict] = {}
    reopens = Reopens(random.Random(f"{seed}/{index}/reopen"), nodes, files)
    throttles = Throttles(random.Random(f"{seed}/{index}/throttle"), nodes)
    mirrors = Mirrors(random.Random(f"{seed}/{index}/mirror"), nodes)
    commits = commits_for(seed, index)
    clients = random.Random(f"{seed}/{index}/nbd-client")
    restores = random.Random(f"{seed}/{index}/restore")
    peeks = Peeks(random.Random(f"{seed}/{index}/peek"), nodes, random.Random(f"{seed}/{index}/peek-resize"),
                  random.Random(f"{seed}/{index}/peek-fill"))
    for n in nodes:
        steps.append({"qemu-img": ["create", "-f", "qcow2", f"{n}.qcow2", str(size)]})
        file = {"driver": "file", "filename": f"{n}.qcow2"} | ({"node-name": f"{n}f"} if n in watched else {})
        files[n] = file
        steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": n, "file": file}))
        if n in watched:
            steps.append(_qmp("block-dirty-bitmap-add", {"node": f"{n}f", "name": "fb", "granularity": watched[n]}))
    for _ in range(rng.randint(6, 24)):
        op = rng.choices(["write", "add", "manage", "merge", "sha", "query", "backup", "txn", "export", "running"],
                         weights=[30, 12, 10, 5, 5, 4, 10, 8, 6, 1])[0]
        steps += _OPS[op](st, size)
        if op == "export" and st.server and clients.random() < NBD_CLIENT_CHANCE:
            steps += _nbd_client(clients, st)
        if op == "export" and st.writable and restores.random() < RESTORE_CHANCE:
            steps += _restore(restores, st, size)
        if life.rng.random() < LIFE_CHANCE:
            steps += _life(st, life, size)
        if parents.rng.random() < PARENTS_CHANCE:
            steps += parents_episode(parents)
        if resizes.random() < RESIZE_CHANCE:
            steps += _resize(resizes, st, size)
        if creates.random() < CREATE_CHANCE:
            steps += _create(creates, st, size)
        if snapshots.rng.random() < SNAPSHOT_CHANCE:
            steps += snapshot_episode(snapshots, size)
        if thresholds.random() < THRESHOLD_CHANCE:
            steps += threshold_episode(thresholds, nodes, watched, st.targets, size)
        if persist.rng.random() < PERSIST_CHANCE:
            steps += persist_episode(persist, size)
        if copyrange.rng.random() < COPYRANGE_CHANCE:
            steps += copy_range_episode(copyrange, size)
        if discards.rng.random() < DISCARD_CHANCE:
            steps += discard_episode(discards, size)
        if blkdebugs.rng.random() < BLKDEBUG_CHANCE:
            steps += blkdebug_episode(blkdebugs, size)
        if reopens.rng.random() < REOPEN_CHANCE:
            steps += reopen_episode(reopens, size)
        if throttles.rng.random() < THROTTLE_CHANCE:
            steps += throttle_episode(throttles, size)
        if mirrors.rng.random() < MIRROR_CHANCE:
            steps += mirror_episode(mirrors, size, switch=not st.exports)
        if commits.rng.random() < COMMIT_CHANCE:
            steps += commit_episode(commits, size)
        if peeks.rng.random() < PEEK_CHANCE:
            steps += peek_episode(peeks, size)
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    steps.append(_qmp("query-blockstats", {"query-nodes": True}))
    steps.append(_qmp("query-blockstats"))  # named BlockBackends: none (both daemons; exports are anonymous)
    steps.append(_qmp("x-debug-query-block-graph"))
    for node in nodes:
        for name in sorted(st.bitmaps[node]):
            steps.append(_qmp("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": name}))
        if node in watched:
            steps.append(_qmp("x-debug-block-dirty-bitmap-sha256", {"node": f"{node}f", "name": "fb"}))
    crashes = random.Random(f"{seed}/{index}/crash")
    if seed >= CRASH_SINCE and crashes.random() < CRASH_CHANCE:
        steps += crash_episode(crashes, nodes, st.targets, size)
    return {"name": f"random-{seed}-{index}", "steps": steps}


def _create(rng: random.Random, st: _State, size: int) -> list[dict]:
    """blockdev-create of a file, its file node, a qcow2 in it (a random version, cluster size and size,
    now and then one QEMU refuses, or a backing file), each job settled, listed and dismissed; the qcow2
    node, a full backup of a drive into it, then both nodes deleted."""
    st.targets += 1
    name = f"c{st.targets}"
    steps = [_qmp("blockdev-create", {"job-id": f"{name}-file", "options": {
                 "driver": "file", "filename": f"{name}.qcow2", "size": 0}}),
             {"settle-jobs": True}, _qmp("query-jobs"), _qmp("job-dismiss", {"id": f"{name}-file"}),
             _qmp("blockdev-add", {"driver": "file", "node-name": f"{name}f", "filename": f"{name}.qcow2"})]
    opts: dict = {"driver": "qcow2", "file": f"{name}f",
                  "size": rng.choice([size, size, size // 2, 2 * size, size + 512, size + 100])}
    if rng.random() < 0.4:
        opts["cluster-size"] = rng.choice([512, 4096, 65536, 2 << 20, 1000])
    if rng.random() < 0.3:
        opts["version"] = rng.choice(["v2", "v3"])
    if rng.random() < 0.15:
        opts["backing-file"] = f"{rng.choice(st.nodes)}.qcow2"
        if rng.random() < 0.7:
            opts["backing-fmt"] = "qcow2"
    steps += [_qmp("blockdev-create", {"job-id": f"{name}-qcow2", "options": opts}), {"settle-jobs": True},
              _qmp("query-jobs"), _qmp("job-dismiss", {"id": f"{name}-qcow2"}),
              _qmp("blockdev-add", {"driver": "qcow2", "node-name": name, "file": f"{name}f", "backing": None}),
              _qmp("query-named-block-nodes", {"flat": True})]
    if rng.random() < 0.5:
        st.jobs += 1
        steps += [_qmp("blockdev-backup", {"job-id": f"job{st.jobs}", "device": rng.choice(st.nodes), "target": name,
                                           "sync": "full"}), {"settle-jobs": True}]
    steps += [_qmp("blockdev-del", {"node-name": name}), _qmp("blockdev-del", {"node-name": f"{name}f"}),
              {"qemu-img": ["info", f"{name}.qcow2"]}]
    return steps


def _resize(rng: random.Random, st: _State, size: int) -> list[dict]:
    """block_resize of a node (larger, smaller, to nothing, or a size QEMU refuses), a write across the
    old end, the bitmaps' counts and sums, then back to ``size`` (which discards what lay past it)."""
    node = rng.choice(st.nodes)
    new = rng.choice([size + 512 * rng.randrange(1, 4096), 512 * rng.randrange(0, size // 512), 2 * size,
                      size // 2, 0, size + 100, -1])
    where = {"device": node} if rng.random() < 0.3 else {"node-name": node}
    steps = [_qmp("block_resize", {**where, "size": new})]
    if new > size:
        offset = size - 512 * rng.randrange(0, 9)
        steps.append({"write": {"node": node, "offset": offset, "length": min(64 * K, new - offset),
                                "pattern": rng.randrange(1, 256)}})
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    steps += [_qmp("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": name})
              for name in sorted(st.bitmaps[node])]
    steps.append(_qmp("block_resize", {"node-name": node, "size": size}))
    return steps


def _watched_files(rng: random.Random, nodes: list[str]) -> dict[str, int]:
    """Nodes whose file node gets a name (``d0f``) and a bitmap ``fb`` (its granularity): qcow2's data
    and metadata writes dirty it at host offsets. Their own stream: the other steps stay as they were."""
    return {n: rng.choice([512, 65536]) for n in nodes if rng.random() < FILE_BITMAP_CHANCE}


def _write(st: _State, size: int) -> list[dict]:
    rng = st.rng
    node = rng.choice(st.nodes)
    offset = rng.randrange(0, size // 512) * 512
    length = min(rng.choice([512, 4 * K, 64 * K, 100 * K, 256 * K]), size - offset)
    kind = rng.choices(["write", "zero"], weights=[9, 1])[0]
    io: dict = {"node": node, "offset": offset, "length": length}
    if kind == "write":
        io["pattern"] = rng.randrange(1, 256)
    return [{kind: io}]


def _add(st: _State, size: int) -> list[dict]:
    rng = st.rng
    node = st.node()
    name = rng.choice(["b0", "b1", "b2", "", "b0"])
    args: dict = {"node": node, "name": name}
    if rng.random() < 0.8:
        args["granularity"] = rng.choice(GRANULARITIES)
    if rng.random() < 0.2:
        args["disabled"] = True
    gran = args.get("granularity", 65536)
    if node in st.bitmaps and name and name not in st.bitmaps[node] and gran >= 512 and not gran & (gran - 1):
        st.bitmaps[node].add(name)
    return [_qmp("block-dirty-bitmap-add", args)]


def _manage(st: _State, size: int) -> list[dict]:
    rng = st.rng
    node = st.node()
    name = st.bitmap(node)
    cmd = rng.choice(["remove", "clear", "enable", "disable"])
    if cmd == "remove" and node in st.bitmaps:
        st.bitmaps[node].discard(name)
    return [_qmp(f"block-dirty-bitmap-{cmd}", {"node": node, "name": name})]


def _merge(st: _State, size: int) -> list[dict]:
    rng = st.rng
    node = rng.choice(st.nodes)
    sources: list = []
    for _ in range(rng.randint(1, 3)):
        other = rng.choice(st.nodes)
        src = st.bitmap(other)
        sources.append(src if other == node and rng.random() < 0.6 else {"node": other, "name": src})
    return [_qmp("block-dirty-bitmap-merge", {"node": node, "target": st.bitmap(node), "bitmaps": sources})]


def _sha(st: _State, size: int) -> list[dict]:
    node = st.node()
    return [_qmp("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": st.bitmap(node)})]


def _query(st: _State, size: int) -> list[dict]:
    return [_qmp("query-named-block-nodes", {"flat": True}), _qmp("x-debug-query-block-graph")]


def _backup_args(st: _State, size: int, steps: list[dict], *, always_ok: bool = True) -> dict:
    rng = st.rng
    node = rng.choice(st.nodes)
    st.targets += 1
    target = f"t{st.targets}"
    tsize = size if rng.random() < 0.95 else size // 2
    steps.append({"qemu-img": ["create", "-f", "qcow2", f"{target}.qcow2", str(tsize)]})
    steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": target,
                                       "file": {"driver": "file", "filename": f"{target}.qcow2"}}))
    st.jobs += 1
    args: dict = {"job-id": f"job{st.jobs}", "device": node, "target": target, "sync": rng.choice(SYNCS)}
    if rng.random() < 0.8 or args["sync"] in ("bitmap", "incremental"):
        args["bitmap"] = st.bitmap(node)
    mode = rng.choice(MODES if always_ok else [m for m in MODES if m != "always"])
    if mode is not None:
        args["bitmap-mode"] = mode
    return args


def _backup(st: _State, size: int) -> list[dict]:
    steps: list[dict] = []
    args = _backup_args(st, size, steps)
    steps.append(_qmp("blockdev-backup", args))
    if args["sync"] == "none":  # runs until cancelled: let a guest write go through, then cancel
        steps += _write(st, size)
        steps.append(_qmp("job-cancel", {"id": args["job-id"]}))
    steps.append({"settle-jobs": True})
    return steps


def _txn(st: _State, size: int) -> list[dict]:
    rng = st.rng
    steps: list[dict] = []
    if rng.random() < 0.4:  # grouped: backups only (a failing action after two backups hangs 7.2)
        actions = [{"type": "blockdev-backup", "data": _backup_args(st, size, steps)}
                   for _ in range(rng.randint(1, 2))]
        for action in actions:
            if action["data"]["sync"] == "none":
                action["data"]["sync"] = "full"
        steps.append(_qmp("transaction", {"actions": actions, "properties": {"completion-mode": "grouped"}}))
        steps.append({"settle-jobs": True})
        return steps
    actions = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["add", "clear", "disable", "enable", "remove", "merge", "backup", "abort"])
        node = rng.choice(st.nodes)
        if kind == "add":
            data = {"node": node, "name": rng.choice(["b0", "b1", "b2"]), "granularity": 65536}
        elif kind in ("enable", "disable"):
            if not st.bitmaps[node]:
                continue  # an enable/disable action on a missing bitmap crashes QEMU 7.2
            data = {"node": node, "name": st.bitmap(node, existing=True)}
        elif kind in ("clear", "remove"):
            data = {"node": node, "name": st.bitmap(node)}
        elif kind == "merge":
            data = {"node": node, "target": st.bitmap(node), "bitmaps": [st.bitmap(node)]}
        elif kind == "backup":
            data = _backup_args(st, size, steps, always_ok=False)
            if data["sync"] == "none":
                data["sync"] = "full"
        else:
            data = {}
        actions.append({"type": {"add": "block-dirty-bitmap-add", "clear": "block-dirty-bitmap-clear",
                                 "disable": "block-dirty-bitmap-disable", "enable": "block-dirty-bitmap-enable",
                                 "remove": "block-dirty-bitmap-remove", "merge": "block-dirty-bitmap-merge",
                                 "backup": "blockdev-backup", "abort": "abort"}[kind], "data": data})
    if not actions:
        return []
    steps.append(_qmp("transaction", {"actions": actions}))
    steps.append({"settle-jobs": True})
    # ``st.bitmaps`` must only hold bitmaps that surely exist (an enable/disable action on a
    # missing one crashes QEMU 7.2): the transaction may have failed, so adds are not counted
    # and removes are.
    for action in actions:
        if action["type"] == "block-dirty-bitmap-remove":
            st.bitmaps[action["data"]["node"]].discard(action["data"]["name"])
    return steps


def _export(st: _State, size: int) -> list[dict]:
    """NBD exports (pull-mode backup): an exported bitmap is busy, a writable export meets a
    running backup's permissions; ids, names and missing bitmaps or nodes as they come."""
    rng = st.rng
    steps: list[dict] = []
    if not st.server:
        steps.append(_qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}}))
        st.server = True
    kind = rng.choices(["add", "del", "query"], weights=[6, 3, 1])[0]
    st.writable = None
    if kind == "add":
        node = st.node()
        export_id = f"e{rng.randrange(3)}"
        args: dict = {"type": "nbd", "id": export_id, "node-name": node,
                      "name": rng.choice([node, "x0", "x1"]), "writable": rng.random() < 0.5}
        if rng.random() < 0.7:
            args["bitmaps"] = [st.bitmap(node)]
        st.exports.append(export_id)
        steps.append(_qmp("block-export-add", args))
        st.writable = args["name"] if args["writable"] else None
    elif kind == "del":
        export_id = rng.choice(st.exports + ["nope"]) if st.exports else "nope"
        steps.append(_qmp("block-export-del", {"id": export_id}))
    else:
        steps.append(_qmp("query-block-exports"))
    return steps


NBD_CLIENT_CHANCE = 0.6  # after an export op, qemu-img reads an export (own random stream)


def _nbd_client(rng: random.Random, st: _State) -> list[dict]:
    """qemu-img as the backup tool's NBD client (its own random stream): ``map`` (json or human) or ``info`` of
    an export by one of the names exports get, ``map`` with ``x-dirty-bitmap`` of a bitmap it may hold."""
    name = rng.choice(st.nodes + ["x0", "x1"])
    verb = rng.choices(["map", "human", "bitmap", "info", "convert"], weights=[3, 1, 4, 1, 2])[0]
    if verb == "info":
        return [{"qemu-img": ["info", f"nbd+unix:///{name}?socket=nbd.sock"]}]
    if verb == "convert":  # a full pull into a new image, mapped
        st.pulls += 1
        fmt = rng.choice(["raw", "qcow2"])
        out = f"nc{st.pulls}.{fmt}"
        return [{"qemu-img": ["convert", "-f", "raw", "-O", fmt, f"nbd+unix:///{name}?socket=nbd.sock", out]},
                {"qemu-img": ["map", "--output=json", out]}]
    if verb != "bitmap":
        return [{"qemu-img": ["map", *(["--output=json"] if verb == "map" else []),
                              f"nbd+unix:///{name}?socket=nbd.sock"]}]
    node = name if name in st.nodes else rng.choice(st.nodes)
    bitmap = rng.choice(sorted(st.bitmaps[node]) + ["b0"])
    return [{"qemu-img": ["map", "--output=json", "--image-opts", "driver=nbd,server.type=unix,server.path=nbd.sock,"
                          f"export={name},x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}"]}]


RESTORE_CHANCE = 0.5  # after an export op that added a writable export, a restore into it (own random stream)


def _restore(rng: random.Random, st: _State, size: int) -> list[dict]:
    """A restore into the running disk through the writable export just added (its own random stream): a backup
    image of its own (``rs<n>.qcow2``: a few writes through a node, closed: its metadata written back; a backup
    target a node still has open would be read as its file holds it, which bitlab does not model), ``qemu-img
    convert -n`` of it (now and then ``-S``), then the export's map over NBD, or its map with ``x-dirty-bitmap``
    of a bitmap of the node it may hold."""
    st.restored += 1
    src = f"rs{st.restored}"
    steps = [{"qemu-img": ["create", "-f", "qcow2", f"{src}.qcow2", str(size)]},
             _qmp("blockdev-add", {"driver": "qcow2", "node-name": src,
                                   "file": {"driver": "file", "filename": f"{src}.qcow2"}})]
    for _ in range(rng.randint(0, 3)):
        steps.append(random_write(rng, src, size, [4096, 65536, 1 << 20]))
    steps.append(_qmp("blockdev-del", {"node-name": src}))
    sparse = ["-S", rng.choice(["512", "64k"])] if rng.random() < 0.2 else []
    target = f"nbd+unix:///{st.writable}?socket=nbd.sock"
    steps.append({"qemu-img": ["convert", "-n", "-O", "raw", *sparse, f"{src}.qcow2", target]})
    node = st.writable if st.writable in st.nodes else rng.choice(st.nodes)
    if rng.random() < 0.5 and st.bitmaps[node]:
        bitmap = rng.choice(sorted(st.bitmaps[node]))
        steps.append({"qemu-img": ["map", "--output=json", "--image-opts", "driver=nbd,server.type=unix,"
                                   f"server.path=nbd.sock,export={st.writable},x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}"]})
    else:
        steps.append({"qemu-img": ["map", "--output=json", target]})
    return steps


_OPS = {"write": _write, "add": _add, "manage": _manage, "merge": _merge, "sha": _sha, "query": _query,
        "backup": _backup, "txn": _txn, "export": _export, "running": running_backup}


# -- the job life cycle (own random stream and names, so the steps above stay as they were) ------------

LIFE_CHANCE = 0.05  # after each op of the mix, the chance of a job life-cycle episode
ACTIONS = ["report", "ignore", "stop", "enospc"]
THRESHOLD_TARGETS = 0.25  # the chance that a single one-worker backup's target is armed (a write threshold)
WORKERS = [1, 2, 2, 3, 4]  # max-workers of a single backup of a fresh source with no target error
VERBS = ["query-jobs", "query-block-jobs", "finalize", "dismiss", "cancel", "pause", "resume", "complete",
         "set-speed"]


class _Life:
    """What the life-cycle episodes of one scenario share: their random stream and counters."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.nodes = 0  # s<n>: sources, lt<n>: targets
        self.jobs: list[str] = []  # lj<n>, every id used so far
        self.endless: set[str] = set()  # sync 'none' jobs: they run until cancelled
        self.files: list[str] = []  # qcow2 targets with a file, of the episode under way

    def name(self, prefix: str) -> str:
        self.nodes += 1
        return f"{prefix}{self.nodes}"

    def job_id(self) -> str:
        self.jobs.append(f"lj{len(self.jobs) + 1}")
        return self.jobs[-1]


def _image(name: str, size: int, blkdebug: dict | None = None, null: bool = False) -> list[dict]:
    """qemu-img create, then blockdev-add: qcow2 over file, or over blkdebug over file. ``null``: no
    file (cheaper on real QEMU): null-co, or raw over blkdebug over null-co (raw fires the events; without
    read-zeroes null-co is all data to read, yet nothing is allocated for a sync 'top')."""
    if null:
        if blkdebug is None:
            return [_qmp("blockdev-add", {"driver": "null-co", "node-name": name, "size": size})]
        return [_qmp("blockdev-add", {"driver": "raw", "node-name": name, "file": {
            "driver": "blkdebug", "image": {"driver": "null-co", "size": size}, **blkdebug}})]
    file: dict = {"driver": "file", "filename": f"{name}.qcow2"}
    if blkdebug is not None:
        file = {"driver": "blkdebug", "image": file, **blkdebug}
    return [{"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", str(size)]},
            _qmp("blockdev-add", {"driver": "qcow2", "node-name": name, "file": file})]


def _rules(rng: random.Random, event: str, action: str | None, errno: int | None = None,
           armed: bool = False) -> dict:
    """blkdebug options: one error on ``event`` (EIO or ENOSPC), now or (``armed``: never) armed by the
    first guest write. An error that comes back on every retry is never combined with 'ignore' (the
    job would retry forever)."""
    rule: dict = {"event": event, "errno": errno or rng.choice([5, 28])}
    if action == "ignore" or rng.random() < 0.6:
        rule["once"] = True
    if event == "write_aio" or armed or rng.random() < 0.7:
        return {"inject-error": [rule]}
    rule["state"] = 2
    return {"set-state": [{"event": "write_aio", "state": 1, "new_state": 2}], "inject-error": [rule]}


def _source(lf: _Life, steps: list[dict], small: int, action: str | None, errno: int | None = None,
            null_ok: bool = True) -> str:
    """A new source node of ``small`` bytes with data; over blkdebug failing its first (or every) data
    read unless ``action`` is None. The writes go in any order (block status, hence block-copy's tasks,
    follows the host clusters they get). With an error, sometimes (``null_ok``)
    raw over null-co instead: data everywhere for sync 'full', nothing allocated for 'top' (its name
    says it). Not for drive-backup: its target detects zeroes, and what null-co leaves in a read
    buffer is whatever the memory held."""
    rng = lf.rng
    null = null_ok and action is not None and rng.random() < 0.4
    node = lf.name("sn" if null else "s")
    rules = None if action is None else _rules(rng, "read_aio", action, errno, armed=null)
    steps += _image(node, small, rules, null)
    if null:
        return node
    writes = []
    for _ in range(rng.randint(1, 3)):
        offset = rng.randrange(0, small // 512) * 512
        length = min(rng.choice([512, 64 * K, 200 * K]), small - offset)
        writes.append({"node": node, "offset": offset, "length": length, "pattern": rng.randrange(1, 256)})
    steps += [{"write": io} for io in writes]
    return node


def _target(lf: _Life, steps: list[dict], size: int, action: str | None, errno: int | None = None) -> str:
    """A new target node: qcow2 (over blkdebug failing a data write unless ``action`` is None), or
    without a file half the time."""
    name = lf.name("lt")
    null = lf.rng.random() < 0.5
    steps += _image(name, size, None if action is None else _rules(lf.rng, "write_aio", action, errno), null)
    if not null and action is None:  # (where qcow2 fails to write back metadata is not modelled)
        lf.files.append(name)
    return name


def _actions(rng: random.Random, args: dict, allow: list[str]) -> tuple[str | None, str | None]:
    """Error policies (sometimes) and the injected errors' sides: (source action, target action), None
    for no injected error on that side."""
    src = tgt = None
    for side in ("source", "target"):
        if rng.random() < 0.6:
            action = rng.choice(allow)
            args[f"on-{side}-error"] = action
        else:
            action = "report"
        if rng.random() < (0.6 if side == "source" else 0.3):
            if side == "source":
                src = action
            else:
                tgt = action
    return src, tgt


def _job_flags(rng: random.Random, args: dict) -> None:
    for flag in ("auto-finalize", "auto-dismiss"):
        if rng.random() < 0.6:
            args[flag] = rng.random() < 0.3


def _life(st: _State, lf: _Life, size: int) -> list[dict]:
    """One episode: a job (or a grouped transaction of jobs) started and settled, then verbs and
    queries on it in whatever state it settled in (pending, concluded, paused by the user or by an
    error), on wrong ids too; 'settle-jobs' after every step that may move a job."""
    rng = lf.rng
    steps: list[dict] = []
    lf.files = []
    kind = rng.choices(["single", "grouped", "drive"], weights=[6, 3, 1])[0]
    ids = _grouped(st, lf, size, steps) if kind == "grouped" else _single(st, lf, size, steps, kind == "drive")
    for _ in range(rng.randint(1, 5)):
        pick = rng.random()
        job = rng.choice(ids) if pick < 0.75 else rng.choice(lf.jobs) if pick < 0.9 else rng.choice(["nope", "job1"])
        steps += _verb(lf, rng.choice(VERBS), job)
    for target in lf.files:  # one worker copies in a fixed order: the target's host layout is QEMU's
        steps += [{"flush": {"node": target}}, {"qemu-img": ["map", "-U", "--output=json", f"{target}.qcow2"]},
                  {"qemu-img": ["check", "-U", f"{target}.qcow2"]}]
    return steps


def _single(st: _State, lf: _Life, size: int, steps: list[dict], drive: bool) -> list[str]:
    rng = lf.rng
    job = lf.job_id()
    args: dict = {"job-id": job}
    src_err, tgt_err = _actions(rng, args, ACTIONS)
    if drive:
        tgt_err = None
    if src_err is not None or rng.random() < 0.3:
        size = rng.choice([M, 4 * M, size])  # the target's size too
        args["device"] = _source(lf, steps, size, src_err, null_ok=not drive)
        args["sync"] = rng.choice(["full", "full", "top", "none"])
    else:
        node = rng.choice(st.nodes)
        args["device"] = node
        args["sync"] = rng.choice(SYNCS)
        have = sorted(st.bitmaps[node])
        if have and (args["sync"] in ("bitmap", "incremental") or rng.random() < 0.3):
            args["bitmap"] = rng.choice(have)
            if rng.random() < 0.5:
                args["bitmap-mode"] = rng.choice(MODES[1:])
    if drive:
        target = lf.name("lt")
        args.update(target=f"{target}.qcow2", format="qcow2", mode="absolute-paths")
    else:
        args["target"] = _target(lf, steps, size, tgt_err)
    # Where an error strikes does not depend on timing with one worker; with several only when the
    # error is a read of a fresh source written in ascending order (blkdebug fails it from a bottom
    # half, before any other request in flight completes) and the target a qcow2 node: with a
    # null-co one or drive-backup's (detect-zeroes=unmap), QEMU 7.2's outcome varies from run to run.
    # The failing read must also be the first task: zero tasks before it race the error for the
    # target's first L2 table.
    fresh = args["device"].startswith("s") and not args["device"].startswith("sn") and tgt_err is None
    qcow2 = not drive and steps[-1]["qmp"]["arguments"]["driver"] == "qcow2"
    first = min((s["write"]["offset"] for s in steps if s.get("write", {}).get("node") == args["device"]),
                default=size)
    several = fresh and qcow2 and (args["sync"] != "full" or first < 65536)
    args["x-perf"] = {"max-workers": rng.choice(WORKERS) if several else 1}
    if args["x-perf"]["max-workers"] > 1 and args["target"] in lf.files:
        lf.files.remove(args["target"])  # parallel copies allocate its clusters in an order QEMU does not fix
    _job_flags(rng, args)
    if rng.random() < 0.04:
        del args["job-id"]
    # one worker writes in task order: a threshold on the target (on a stream of its own, drawn from the
    # episode's state without moving it) fires on the same request on QEMU every run
    aux = random.Random(f"threshold/{job}/{sum(rng.getstate()[1][:8])}")
    if args["x-perf"]["max-workers"] == 1 and not drive and aux.random() < THRESHOLD_TARGETS:
        steps.append(_qmp("block-set-write-threshold", {"node-name": args["target"],
                                                        "write-threshold": aux.randrange(1, size // 512) * 512}))
    steps.append(_qmp("drive-backup" if drive else "blockdev-backup", args))
    if args["sync"] == "none":
        lf.endless.add(job)
        verb = rng.choice(["pause", "pause", "cancel"])
        if tgt_err is not None and args["device"] in st.nodes:
            # a paused job keeps its copy-before-write filter: the mix's later guest writes on the node copy
            # in parallel onto the failing target, whose failed allocations QEMU frees and hands out again in
            # an order that varies from run to run (wr_highest_offset of its file)
            verb = "cancel"
        steps += _verb(lf, verb, job, settle=False)
    steps.append({"settle-jobs": True})
    return [job]


def _grouped(st: _State, lf: _Life, size: int, steps: list[dict]) -> list[str]:
    """A grouped transaction of backups of new nodes. When one of them fails (an injected error,
    reported: a stopped member would keep the others waiting), the others are cancelled where the
    outcome does not depend on timing: they run until cancelled (sync 'none') or have nothing to copy
    (sync 'top' of an empty node). Without a failure they may copy data."""
    rng = lf.rng
    fail = rng.random() < 0.7
    actions = []
    for i in range(rng.randint(2, 3)):
        args: dict = {"job-id": lf.job_id()}
        for side in ("source", "target"):
            if rng.random() < 0.5:
                args[f"on-{side}-error"] = rng.choice(ACTIONS)
        if i == 0 and fail:
            side = rng.choice(["source", "source", "target"])
            action = rng.choice([None, "report", "enospc"])
            if action is None:
                args.pop(f"on-{side}-error", None)
            else:
                args[f"on-{side}-error"] = action
            errno = 5 if action == "enospc" else rng.choice([5, 28])  # ENOSPC with 'enospc' stops
            source = _source(lf, steps, M, "report" if side == "source" else None, errno)
            target = _target(lf, steps, M, "report" if side == "target" else None, errno)
            sync = "full" if source.startswith("sn") else rng.choice(["full", "top"])  # it surely fails
            args.update(device=source, target=target, sync=sync)
        else:
            source = lf.name("s")
            null = rng.random() < 0.6  # null-co: nothing allocated for a sync 'top'
            steps += _image(source, M, null=null)
            if not null and not fail and rng.random() < 0.5:
                steps.append({"write": {"node": source, "offset": 0, "length": 64 * K, "pattern": 0x5A}})
            sync = rng.choice(["none", "top"]) if fail else rng.choice(["full", "top"])
            args.update(device=source, target=_target(lf, steps, M, None), sync=sync)
        args["x-perf"] = {"max-workers": 1}
        _job_flags(rng, args)
        actions.append({"type": "blockdev-backup", "data": args})
    rng.shuffle(actions)
    steps.append(_qmp("transaction", {"actions": actions, "properties": {"completion-mode": "grouped"}}))
    steps.append({"settle-jobs": True})
    return [a["data"]["job-id"] for a in actions]


def _verb(lf: _Life, verb: str, job: str, settle: bool = True) -> list[dict]:
    """One job command (job-* or block-job-*) on ``job``, then settle; a resumed job that runs until
    cancelled is cancelled at once."""
    rng = lf.rng
    if verb.startswith("query-"):
        return [_qmp(verb)]
    block = rng.random() < 0.5
    if block:
        key = "id" if verb in ("finalize", "dismiss") else "device"
        args: dict = {key: job}
        if verb == "cancel" and rng.random() < 0.5:
            args["force"] = rng.random() < 0.7
        if verb == "set-speed":  # a settled job: its throttled progress is not seen before it ends
            args["speed"] = rng.choice([0, -1, 64 * M])
        steps = [_qmp(f"block-job-{verb}", args)]
    elif verb == "set-speed":
        steps = [_qmp("block-job-set-speed", {"device": job, "speed": 0})]
    else:
        steps = [_qmp(f"job-{verb}", {"id": job})]
    if verb == "resume" and job in lf.endless:
        steps.append(_qmp("job-cancel", {"id": job}))
    if settle:
        steps.append({"settle-jobs": True})
    return steps
