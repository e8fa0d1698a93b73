"""Fast paths of the jobs, their transactions and permissions against the general code they stand in for
(seeded random inputs): copy_status and classify of a single extent, the permission check of a node with
fewer than two parents."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bitlab import Machine
from bitlab.block import perms
from bitlab.block.node import PROTOCOL_DRIVERS, BlockNode, _cut_runs, subtree_ids
from bitlab.jobs.block_copy import BlockCopy, kinds, kinds_few
from tests.graphs import random_graph

K = 1024


def _same(a: tuple, b: tuple) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.tolist() == y.tolist()


@pytest.mark.parametrize("seed", range(20))
def test_kinds_of_few_extents_are_the_general_ones(seed: int) -> None:
    """One to six adjacent extents from a job cluster's start, of any lengths, the last ending anywhere up
    to the range's end (itself anywhere)."""
    rng = random.Random(seed)
    for _ in range(300):
        cs = rng.choice([512, 4 * K, 64 * K, 1 << 20])
        bounds = [rng.randrange(0, 50) * cs]
        for _ in range(rng.randint(1, 6)):
            bounds.append(bounds[-1] + rng.choice([rng.randrange(1, 3 * cs), cs, 2 * cs, 512]))
        end = bounds[-1] + rng.choice([0, 0, rng.randrange(1, 2 * cs)])
        s, e = bounds[:-1], bounds[1:]
        zero = [rng.random() < 0.5 for _ in s]
        _same(kinds_few(s, e, zero, end, cs), kinds(np.array(s), np.array(e), np.array(zero), end, cs))


def _random_image(rng: random.Random, backing: bool) -> tuple[Machine, BlockNode]:
    vm = Machine()
    cs = rng.choice([512, 4 * K, 64 * K])
    size = rng.choice([4 << 20, (4 << 20) + 7 * 512])
    if backing:
        vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cs}", "base.qcow2", str(size))
        vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cs}", "-b", "base.qcow2", "-F", "qcow2",
                    "top.qcow2", str(size))
    else:
        vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cs}", "top.qcow2", str(size))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "top", "discard": "unmap",
                            "file": {"driver": "file", "filename": "top.qcow2"}})
    node = vm.graph.nodes["top"]
    targets = ["top"] + (["top.backing"] if backing else [])
    for _ in range(rng.randint(8, 30)):
        where = targets[-1] if rng.random() < 0.3 else "top"
        at = node if where == "top" else node.backing
        off = rng.randrange(0, size // 512) * 512
        n = min(rng.choice([512, cs, 3 * cs, 17 * 512, 200 * K, 1 << 20]), size - off)
        op = rng.random()
        if op < 0.6:
            at.write(off, n, rng.choice([0, 0x41, 0x42]))
        elif op < 0.8:
            at.write_zeroes(off, n, unmap=rng.random() < 0.5)
        else:
            at.discard(off, n)
    return vm, node


@pytest.mark.parametrize("seed", range(30))
def test_copy_status_of_few_runs_is_the_general_answer(seed: int) -> None:
    """Random qcow2 images (cluster sizes 512 B to 64 KiB, an odd size, a backing file or not) after random
    writes, zero writes and discards; random ranges: wherever the plain-int path answers, the general
    path gives the same extents. A range that starts or ends inside a cluster is answered for its whole
    clusters, then cut to the range."""
    rng = random.Random(seed)
    vm, node = _random_image(rng, backing=seed % 3 == 0)
    answered = 0
    for _ in range(150):
        cs = node.image.cluster_size
        if rng.random() < 0.5:  # a few clusters from a cluster boundary (what classify asks)
            off = rng.randrange(0, node.size // cs) * cs
            length = min(node.size - off, cs * rng.randint(1, 3))
        else:
            off = rng.randrange(0, node.size // 512) * 512
            length = min(rng.randrange(1, node.size - off + 1), rng.choice([512, 4 * K, 64 * K, 1 << 20, node.size]))
        lo, hi = off // cs * cs, max(off + length, min(-(-(off + length) // cs) * cs, node.size))
        starts, ends, vals = node.image.data.extents(lo, hi - lo)
        general = node._copy_status_general(lo, hi - lo, starts.copy(), ends.copy(), vals.copy())
        few = node._copy_status_few(lo, hi, starts.tolist(), ends.tolist(), vals.tolist())
        if few is not None:
            answered += 1
            _same(few, general)
        table = cs * (cs // 8)  # (qcow2 answers for one L2 table at a time)
        if lo // table != (hi - 1) // table:
            general = _cut_runs(*general, table)
        keep = (general[1] > off) & (general[0] < off + length)
        _same(node.copy_status(off, length), _slices((np.maximum(general[0][keep], off),
                                                      np.minimum(general[1][keep], off + length), general[2][keep]),
                                                     node.l2_slice))
    assert answered > 0


def _slices(extents: tuple, span: int) -> tuple:
    """Extents cut at every multiple of ``span`` (qcow2 answers block status one L2 slice at a time)."""
    out: tuple[list, list, list] = ([], [], [])
    for a, b, zero in zip(*(x.tolist() for x in extents)):
        while a < b:
            end = min(b, (a // span + 1) * span)
            for part, value in zip(out, (a, end, zero)):
                part.append(value)
            a = end
    return np.array(out[0], dtype=np.int64), np.array(out[1], dtype=np.int64), np.array(out[2], dtype=bool)


def test_copy_status_ends_at_l2_slices() -> None:
    """4 KiB clusters: an L2 table (a slice) maps 2 MiB; a status answer never crosses its end."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "s.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "s.qcow2"}})
    vm.write("s", 1536 * K, 1024 * K, 0x41)
    node = vm.graph.nodes["s"]
    s, e, zero = node.copy_status(1024 * K, 4096 * K)
    assert list(zip(s.tolist(), e.tolist(), zero.tolist())) == [
        (1024 * K, 1536 * K, True), (1536 * K, 2048 * K, False), (2048 * K, 2560 * K, False),
        (2560 * K, 4096 * K, True), (4096 * K, 5120 * K, True)]


@pytest.mark.parametrize("seed", range(25))
def test_conflict_of_a_node_with_one_parent_is_the_general_check(seed: int) -> None:
    """Random graphs, then random links and BlockBackends tried on a view (so that conflicts and writers
    on read-only nodes occur): every node's check is the all-pairs one, the first error below random
    starts is the first all-pairs error in topological order, and both outcomes occur."""
    rng = random.Random(seed)
    vm = random_graph(rng, 8, child_perms=True)
    nodes = list(vm.graph.nodes.values())
    view = perms.PermView(vm.graph)
    outcomes = set()
    for step in range(40):
        starts = rng.sample(nodes, rng.randint(1, min(3, len(nodes))))
        every = (view.conflict_general(n, view.parents.get(n, []))
                 or (view.lock_conflict(n) if n.driver == "file" else None) for n in view.topological(*starts))
        first = next((text for text in every if text is not None), None)
        assert view.first_error(*starts) == first
        outcomes.add(("first", first is None))
        if rng.random() < 0.5:
            new = BlockNode(f"new{step}")
            new.driver = rng.choice(["qcow2", "raw", "blkdebug", "copy-before-write"])  # type: ignore[misc]
            new.read_only = rng.random() < 0.3
            view.attach(new, rng.choice(["file", "backing", "target", "image"]), rng.choice(nodes))  # no loop
        else:
            view.add_blk(rng.choice(nodes), perms.Blk("blk", rng.randrange(16), rng.randrange(16)))
        for node in nodes:
            edges = view.parents.get(node, [])
            fast = view.conflict(node)
            assert fast == view.conflict_general(node, edges)
            outcomes.add((len(edges) < 2, fast is None))
    assert (True, True) in outcomes and (False, False) in outcomes
    assert ("first", True) in outcomes and ("first", False) in outcomes


def _topological_by_prepending(view: perms.PermView, *starts: BlockNode) -> list[BlockNode]:
    """bdrv_topological_dfs as QEMU writes it: each node prepended after its children."""
    order: list[BlockNode] = []
    found: set[int] = set()

    def dfs(node: BlockNode) -> list[BlockNode]:
        if id(node) in found:
            return []
        found.add(id(node))
        below: list[BlockNode] = []
        for _, child in view.children.get(node, []):
            below = dfs(child) + below
        return [node] + below

    for start in starts:
        order = dfs(start) + order
    return order


@pytest.mark.parametrize("seed", range(25))
def test_topological_order_is_qemus(seed: int) -> None:
    """Random graphs with shared children (new parents linked to random nodes): the reversed post-order is
    QEMU's prepending walk, from one start or several (repeated ones included)."""
    rng = random.Random(seed)
    vm = random_graph(rng, 8, child_perms=True)
    nodes = list(vm.graph.nodes.values())
    view = perms.PermView(vm.graph)
    tops = []
    for step in range(6):
        new = BlockNode(f"new{step}")
        for _ in range(rng.randint(1, 3)):
            view.attach(new, rng.choice(["file", "backing", "target"]), rng.choice(nodes + tops))
        tops.append(new)
    for _ in range(30):
        starts = rng.sample(nodes + tops, rng.randint(1, 4)) + ([rng.choice(nodes)] if rng.random() < 0.3 else [])
        assert [n.node_name for n in view.topological(*starts)] == \
            [n.node_name for n in _topological_by_prepending(view, *starts)]


@pytest.mark.parametrize("seed", range(20))
def test_zeroes_keep_allocation_of_a_target_without_data_is_the_general_answer(seed: int) -> None:
    """Random qcow2 targets (new, zeroed, partly written, discarded) and random batches of zero and data
    tasks: the answer from the target's few runs is the one from the clusters the zero tasks reach."""
    rng = random.Random(seed)
    vm, node = _random_image(rng, backing=False)
    no_data = rng.random() < 0.5
    if no_data:  # a new target, or one with zero writes only
        vm = Machine()
        vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "4M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "t.qcow2"}})
        node = vm.graph.nodes["t"]
        for _ in range(rng.randint(0, 4)):
            node.write_zeroes(rng.randrange(0, 64) * 64 * K, rng.choice([512, 64 * K, 200 * K]),
                              unmap=rng.random() < 0.5)
        if seed % 4 == 1:  # a few data clusters too (bytes of 0 among them): few runs, but not all empty
            for _ in range(rng.randint(1, 3)):
                node.write(rng.randrange(0, 16) * 64 * K, rng.choice([512, 64 * K]), 0 if seed % 8 == 1 else 0x41)
            no_data = False
    bcs = BlockCopy(node, node, 64 * K, vm.scheduler, lambda done, remaining: None)
    short = 0
    for _ in range(40):
        n = rng.randint(1, 6)
        clusters = range(0, 16 if rng.random() < 0.5 else node.size // (64 * K))
        offsets = np.array(sorted(rng.sample(clusters, n)), dtype=np.int64) * 64 * K
        nbytes = np.array([64 * K] * n, dtype=np.int64)
        zero = np.array([rng.random() < 0.7 for _ in range(n)])
        general = bcs._zeroes_keep_allocation_general(offsets, nbytes, zero)
        assert bcs._zeroes_keep_allocation(offsets, nbytes, zero) == general
        _, run_v = node.image.data.runs()
        short += run_v.size <= 16 and zero.any() and general
    assert short > 0 or not no_data


def _plans(bcs: BlockCopy, call, zeroes_only: bool) -> tuple:
    from bitlab.jobs import block_copy
    try:
        block_copy.PLAN_FEW = True
        few = bcs._plan(call, zeroes_only)
        block_copy.PLAN_FEW = False
        general = bcs._plan(call, zeroes_only)
    finally:
        block_copy.PLAN_FEW = True
    return few, general


@pytest.mark.parametrize("seed", range(40))
def test_plans_in_plain_ints_are_the_vectorised_ones(seed: int) -> None:
    """Random sources (qcow2 images after random writes, odd sizes), random dirty bitmaps, cursors, worker
    counts, chunk sizes and horizons, both kinds of plan: the plain-int plan is the vectorised one, array for
    array (dtypes too)."""
    from bitlab.jobs.block_copy import LATENCY_NS, Call
    rng = random.Random(seed)
    vm, node = _random_image(rng, backing=seed % 4 == 0)
    cs = rng.choice([64 * K, 128 * K])
    bcs = BlockCopy(node, node, cs, vm.scheduler, lambda done, remaining: None)
    nbits = bcs.bitmap.nbits
    compared = 0
    for _ in range(30):
        bcs.bitmap.bits.setall(0)
        for _ in range(rng.randint(0, 12)):
            a = rng.randrange(nbits)
            bcs.bitmap.bits[a:min(nbits, a + rng.choice([1, 2, 3, 17, nbits]))] = 1
        if rng.random() < 0.2:
            bcs.bitmap.bits.setall(1)
        call = Call(rng.choice([1, 2, 3, 8, 64]), rng.choice([cs, 2 * cs, 3 * cs, 1 << 20]), lambda c: None,
                    cursor=rng.choice([0, 0, rng.randrange(bcs.len)]))
        vm.scheduler.horizon_ns = rng.choice([None, vm.clock.now_ns + rng.choice([0, LATENCY_NS, 10 ** 6, 10 ** 9])])
        for zeroes_only in (False, True):
            few, general = _plans(bcs, call, zeroes_only)
            assert (few is None) == (general is None)
            if few is not None:
                compared += 1
                for a, b in zip(few, general):
                    if isinstance(a, np.ndarray):
                        assert a.dtype == b.dtype and a.tolist() == b.tolist()
                    else:
                        assert type(a) is type(b) and a == b
    vm.scheduler.horizon_ns = None
    assert compared > 0


@pytest.mark.parametrize("seed", range(12))
def test_format_filename_asks_its_child_for_a_plain_name_only(seed: int) -> None:
    """A format node's plain filename asks its file child for its plain name (FormatNode.plain_filename) instead
    of building the child's whole filename and throwing a ``json:`` one away: the same answer for raw and qcow2
    over file, blkdebug (with and without rules), raw and null-co children."""
    rng = random.Random(seed)
    vm = random_graph(rng, 8)
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "nul", "file": {"driver": "null-co", "size": 1 << 20}})
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "nul2", "file": {"driver": "null-co"}})
    vm.qemu_img("create", "-f", "qcow2", "dbg.qcow2", "1M")
    blkdebug = {"driver": "blkdebug", "image": {"driver": "file", "filename": "dbg.qcow2"}}
    if seed % 2:  # (rules: a ``json:`` filename; none: ``blkdebug::dbg.qcow2``)
        blkdebug["inject-error"] = [{"event": "read_aio"}]
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "dbg", "file": blkdebug})
    vm.qemu_img("create", "-f", "qcow2", "plain.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "plain", "file": {"driver": "file",
                                                                             "filename": "plain.qcow2"}})
    formats = [n for n in vm.graph.nodes.values() if n.driver in ("raw", "qcow2")]
    assert {n.file.driver for n in formats} >= {"file", "null-co", "blkdebug"}
    for node in formats:
        child = node.file.filename
        general = None if child.startswith("json:") else child
        if any(key in node.options for key in node.strong_options) or node.backing_overridden() or \
                node.file.driver not in PROTOCOL_DRIVERS:  # (a format over a format or a filter: json:)
            general = None
        assert node.plain_filename() == general


@pytest.mark.parametrize("seed", range(10))
def test_subtree_ids_are_the_ids_below_a_node(seed: int) -> None:
    """subtree_ids (a walk over nodes, ids taken at the end) is every node reachable from the top, by id."""
    vm = random_graph(random.Random(seed), 10)

    def below(node: BlockNode) -> set[int]:
        return {id(node)}.union(*[below(child) for _, child in node.children])

    for node in vm.graph.nodes.values():
        assert subtree_ids(node, lambda n: n.children) == below(node)


@pytest.mark.parametrize("seed", range(20))
def test_a_batch_of_zero_writes_is_the_zero_writes_one_by_one(seed: int) -> None:
    """Random qcow2 images and random disjoint zero-write ranges (in ascending order or shuffled): the batch
    (which finds the whole clusters holding nothing at once, :meth:`ExtentMap.any_in`) leaves the content the
    same zero writes one by one leave."""
    rng = random.Random(seed)
    batch_vm, batch = _random_image(random.Random(seed), backing=False)
    _, single = _random_image(random.Random(seed), backing=False)
    cs = batch.image.cluster_size
    for _ in range(6):
        n = rng.randint(1, 8)
        starts = sorted(rng.sample(range(0, batch.size // 512, 4), n))
        ranges = [(a * 512, min(rng.choice([512, cs, 2 * cs, 3 * 512]), batch.size - a * 512)) for a in starts]
        ranges = [(a, min(n, b - a)) for (a, n), b in zip(ranges, [r[0] for r in ranges[1:]] + [batch.size])]
        if rng.random() < 0.5:
            rng.shuffle(ranges)
        offsets = np.array([r[0] for r in ranges], dtype=np.int64)
        lengths = np.array([r[1] for r in ranges], dtype=np.int64)
        batch.write_zeroes_batch(offsets, lengths)
        for off, ln in ranges:
            single.write_zeroes(off, ln)
        assert [a.tolist() for a in batch.image.data.runs()] == [a.tolist() for a in single.image.data.runs()]
