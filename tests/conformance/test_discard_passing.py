"""What reaches a qcow2 node's file child when qcow2 frees clusters, over the discard options.

A 4 MiB qcow2 image with 2 MiB written; a dirty bitmap on its file node (64 KiB granularity); then one
operation that frees clusters: a guest discard of the first 1 MiB, a zero write of it that may unmap
(``write -z -u``), ``block_resize`` to 1 MiB, or ``block-dirty-bitmap-remove`` of a stored persistent
bitmap (512-byte granularity: one data cluster). Seen on the file node: file-posix's discard counters
(``discard-nb-ok``, ``discard-bytes-ok``) and the bitmap's count. The table is qemu-storage-daemon 7.2's
(every case measured): qcow2 passes QCOW2_DISCARD_REQUEST frees (the guest discard, the zero write) only
with ``pass-discard-request`` (default: its own discard=unmap), QCOW2_DISCARD_ALWAYS ones (the shrink, the
stored bitmap) always; the file node then drops them unless it has discard=unmap, which a child opened
with its parent has by default whatever the parent's option, and a node added by itself has not.
"""

from __future__ import annotations

import itertools

import pytest

from bitlab import Machine

M = 1 << 20
QCOW2_DISCARD = (None, "ignore", "unmap")
PASS_REQUEST = (None, True, False)
FILE_DISCARD = (None, "ignore", "unmap")
FORMS = ("inline", "ref")  # the file node given inside the qcow2 node's options, or added before by itself
OPS = ("discard", "zero-unmap", "shrink", "unstore")
CASES = list(itertools.product(QCOW2_DISCARD, PASS_REQUEST, FILE_DISCARD, FORMS, OPS))

# QEMU 7.2, measured:
FILE_TAKES = {(None, "inline"), ("unmap", "inline"), ("unmap", "ref")}  # (file discard, form): unmap
REQUEST_PASSED = {(None, True), ("ignore", True), ("unmap", None), ("unmap", True)}  # (qcow2 discard, pass-...)
# (discard-nb-ok, discard-bytes-ok, the file bitmap's count) when the discard reaches the file, and when not
SEEN = {"discard": ((1, M, M), (0, 0, 0)), "zero-unmap": ((1, M, M), (0, 0, 0)),
        "shrink": ((1, M, 4 * 65536), (0, 0, 4 * 65536)), "unstore": ((1, 65536, 2 * 65536), (0, 0, 65536))}


def _expected(qcow2_discard: str | None, pass_request: bool | None, file_discard: str | None, form: str,
              op: str) -> tuple[int, int, int]:
    reaches = (file_discard, form) in FILE_TAKES
    if op in ("discard", "zero-unmap"):
        reaches = reaches and (qcow2_discard, pass_request) in REQUEST_PASSED
    if op == "discard":  # a guest discard does nothing on a qcow2 node without discard=unmap
        reaches = reaches and qcow2_discard == "unmap"
    return SEEN[op][0 if reaches else 1]


def _case(vm: Machine, i: int, qcow2_discard: str | None, pass_request: bool | None, file_discard: str | None,
          form: str, op: str, listen: bool = True) -> tuple[int, int, int | None]:
    """One case (``listen``: with the bitmap on the file node, else its count is None)."""
    name, image, file_node = f"q{i}", f"q{i}.qcow2", f"q{i}f"
    vm.qemu_img("create", "-f", "qcow2", image, "4M")
    file_opts: dict = {"driver": "file", "filename": image, "node-name": file_node}
    if file_discard is not None:
        file_opts["discard"] = file_discard
    if form == "ref":
        vm.qmp("blockdev-add", file_opts)
    args: dict = {"driver": "qcow2", "node-name": name, "file": file_node if form == "ref" else file_opts}
    if qcow2_discard is not None:
        args["discard"] = qcow2_discard
    if pass_request is not None:
        args["pass-discard-request"] = pass_request
    vm.qmp("blockdev-add", args)
    vm.write(name, 0, 2 * M, pattern=0x11)
    vm.guest_io(name, "flush")
    if op == "unstore":
        vm.qmp("block-dirty-bitmap-add", {"node": name, "name": "pb", "persistent": True, "granularity": 512})
        vm.write(name, 0, 65536, pattern=0x12)
        vm.qmp("blockdev-del", {"node-name": name})
        vm.qmp("blockdev-add", args)
    if listen:
        vm.qmp("block-dirty-bitmap-add", {"node": file_node, "name": "fb", "granularity": 65536})
    if op == "discard":
        vm.guest_io(name, f"discard 0 {M}")
    elif op == "zero-unmap":
        vm.guest_io(name, f"write -z -u 0 {M}")
    elif op == "shrink":
        vm.qmp("block_resize", {"node-name": name, "size": M})
    else:
        vm.qmp("block-dirty-bitmap-remove", {"node": name, "name": "pb"})
    stats = next(s for s in vm.qmp("query-blockstats", {"query-nodes": True}) if s.get("node-name") == file_node)
    node = next(n for n in vm.qmp("query-named-block-nodes", {"flat": True}) if n["node-name"] == file_node)
    count = next((b["count"] for b in node.get("dirty-bitmaps", []) if b["name"] == "fb"), None)
    vm.qmp("blockdev-del", {"node-name": name})
    if form == "ref":
        vm.qmp("blockdev-del", {"node-name": file_node})
    return stats["driver-specific"]["discard-nb-ok"], stats["driver-specific"]["discard-bytes-ok"], count


def _play(vm: Machine, cases: list[tuple], listen: bool = True) -> dict[tuple, tuple[int, int, int | None]]:
    return {case: _case(vm, i, *case, listen=listen) for i, case in enumerate(cases)}


@pytest.mark.parametrize("op", OPS)
def test_what_reaches_the_file_node(op):
    cases = [case for case in CASES if case[-1] == op]
    assert _play(Machine(), cases) == {case: _expected(*case) for case in cases}


@pytest.mark.parametrize("op", OPS)
def test_a_file_node_without_bitmaps_counts_them_alike(op):
    # the counters do not depend on the file node hearing qcow2's writes
    cases = [case for case in CASES if case[-1] == op]
    assert _play(Machine(), cases, listen=False) == {case: _expected(*case)[:2] + (None,) for case in cases}


def test_an_inline_child_may_detect_zeroes_with_unmap_by_default():
    # its discard defaults to unmap (bdrv_inherited_options), whatever the qcow2 node's
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "discard": "ignore", "file": {
        "driver": "file", "filename": "a.qcow2", "node-name": "af", "detect-zeroes": "unmap"}})
    nodes = {n["node-name"]: n["detect_zeroes"] for n in vm.qmp("query-named-block-nodes", {"flat": True})}
    assert nodes == {"a": "off", "af": "unmap"}


@pytest.mark.qemu
def test_both_backends_agree_over_the_matrix():
    with Machine(backend="qemu", daemon="qsd") as real:
        want = _play(real, CASES)
    assert want == {case: _expected(*case) for case in CASES}
    assert _play(Machine(), CASES) == want
    with Machine(backend="qemu", daemon="qsd") as real:
        unheard = _play(real, CASES, listen=False)
    assert unheard == {case: want[case][:2] + (None,) for case in CASES}
    assert _play(Machine(), CASES, listen=False) == unheard


def _merging(vm: Machine, op: str) -> tuple[int, int]:
    """Guest clusters 40, 20 and 60 written in that order (host clusters adjacent, guest order not), then one
    request frees them: the file counts (discard-nb-ok, discard-bytes-ok)."""
    vm.qemu_img("create", "-f", "qcow2", "m.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "m", "discard": "unmap",
                            "file": {"driver": "file", "filename": "m.qcow2", "node-name": "mf"}})
    for cluster in (40, 20, 60):
        vm.write("m", cluster * 65536, 65536, pattern=0x21)
    vm.guest_io("m", "flush")
    if op == "shrink":
        vm.qmp("block_resize", {"node-name": "m", "size": M})
    else:
        vm.guest_io("m", f"{'discard' if op == 'discard' else 'write -z -u'} {M} {3 * M}")
    stats = next(s for s in vm.qmp("query-blockstats", {"query-nodes": True}) if s.get("node-name") == "mf")
    vm.qmp("blockdev-del", {"node-name": "m"})
    return stats["driver-specific"]["discard-nb-ok"], stats["driver-specific"]["discard-bytes-ok"]


MERGED = {"discard": (1, 3 * 65536), "zero-unmap": (1, 3 * 65536), "shrink": (1, 3 * 65536)}  # QEMU 7.2, measured


@pytest.mark.parametrize("op", sorted(MERGED))
def test_one_request_passes_clusters_adjacent_on_the_host_as_one_discard(op):
    assert _merging(Machine(), op) == MERGED[op]


@pytest.mark.qemu
@pytest.mark.parametrize("op", sorted(MERGED))
def test_merging_as_qemu(op):
    with Machine(backend="qemu", daemon="qsd") as real:
        assert _merging(real, op) == MERGED[op]


def _through_blkdebug(vm: Machine, form: str) -> tuple[int, int]:
    """qcow2 over blkdebug over a file, one of them without discard=unmap; a shrink frees 3 MiB: what the file
    counts. ``file-alone``: the file added by itself (ignore), blkdebug inline (unmap by default);
    ``debug-alone``: blkdebug added by itself (ignore) over an inline file (unmap by default); ``inline``: both."""
    vm.qemu_img("create", "-f", "qcow2", "b.qcow2", "4M")
    file: dict | str = {"driver": "file", "filename": "b.qcow2", "node-name": "bf"}
    if form == "file-alone":
        vm.qmp("blockdev-add", file)
        file = "bf"
    debug: dict | str = {"driver": "blkdebug", "node-name": "bd", "image": file}
    if form == "debug-alone":
        vm.qmp("blockdev-add", debug)
        debug = "bd"
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "b", "file": debug})
    vm.write("b", 0, 4 * M, pattern=0x31)
    vm.qmp("block_resize", {"node-name": "b", "size": M})
    stats = next(s for s in vm.qmp("query-blockstats", {"query-nodes": True}) if s.get("node-name") == "bf")
    vm.qmp("blockdev-del", {"node-name": "b"})
    return stats["driver-specific"]["discard-nb-ok"], stats["driver-specific"]["discard-bytes-ok"]


THROUGH = {"file-alone": (0, 0), "debug-alone": (0, 0), "inline": (1, 3 * M)}  # QEMU 7.2, measured


@pytest.mark.parametrize("form", sorted(THROUGH))
def test_every_node_down_to_the_file_must_pass_discards(form):
    assert _through_blkdebug(Machine(), form) == THROUGH[form]


@pytest.mark.qemu
@pytest.mark.parametrize("form", sorted(THROUGH))
def test_through_blkdebug_as_qemu(form):
    with Machine(backend="qemu", daemon="qsd") as real:
        assert _through_blkdebug(real, form) == THROUGH[form]


def _unaligned_zero(vm: Machine, listen: bool) -> tuple[int, int]:
    """``write -z -u`` from 4 KiB over 192 KiB of data: its whole clusters freed, zeroes written into the partial
    ones (``listen``: the file node has a bitmap)."""
    vm.qemu_img("create", "-f", "qcow2", "z.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "z", "discard": "unmap",
                            "file": {"driver": "file", "filename": "z.qcow2", "node-name": "zf"}})
    if listen:
        vm.qmp("block-dirty-bitmap-add", {"node": "zf", "name": "fb"})
    vm.write("z", 0, M, pattern=0x41)
    vm.guest_io("z", "write -z -u 4096 196608")
    stats = next(s for s in vm.qmp("query-blockstats", {"query-nodes": True}) if s.get("node-name") == "zf")
    vm.qmp("blockdev-del", {"node-name": "z"})
    return stats["driver-specific"]["discard-nb-ok"], stats["driver-specific"]["discard-bytes-ok"]


@pytest.mark.parametrize("listen", [False, True])
def test_an_unaligned_zero_write_passes_the_discard_of_its_whole_clusters(listen):
    assert _unaligned_zero(Machine(), listen) == (1, 2 * 65536)  # QEMU 7.2, measured


@pytest.mark.qemu
@pytest.mark.parametrize("listen", [False, True])
def test_an_unaligned_zero_write_as_qemu(listen):
    with Machine(backend="qemu", daemon="qsd") as real:
        assert _unaligned_zero(real, listen) == (1, 2 * 65536)


def _cut_cluster(vm: Machine) -> str:
    """Data written into the second half of a cluster, then a shrink into its first half: ``qemu-img map``."""
    vm.qemu_img("create", "-f", "qcow2", "c.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "c", "file": {"driver": "file", "filename": "c.qcow2"}})
    vm.write("c", M + 40960, 65536, pattern=0x51)
    vm.qmp("block_resize", {"node-name": "c", "size": M + 20480})
    vm.qmp("blockdev-del", {"node-name": "c"})
    return vm.qemu_img("map", "--output=json", "c.qcow2")


CUT_MAP = ('[{ "start": 0, "length": 1048576, "depth": 0, "present": false, "zero": true, "data": false},\n'
           '{ "start": 1048576, "length": 20480, "depth": 0, "present": true, "zero": false, "data": true, '
           '"offset": 327680}]\n')  # QEMU 7.2, measured


def test_a_shrink_keeps_the_data_cluster_it_cuts():
    assert _cut_cluster(Machine()) == CUT_MAP


@pytest.mark.qemu
def test_a_cut_cluster_as_qemu():
    with Machine(backend="qemu", daemon="qsd") as real:
        assert _cut_cluster(real) == CUT_MAP


def _to_the_end(vm: Machine, verb: str) -> tuple[int, int]:
    """A 1 MiB + 32 KiB disk full of data; a discard or ``write -z -u`` from 768 KiB to its end frees four
    whole clusters and the partial last one."""
    vm.qemu_img("create", "-f", "qcow2", "e.qcow2", str(M + 32768))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "e", "discard": "unmap",
                            "file": {"driver": "file", "filename": "e.qcow2", "node-name": "ef"}})
    vm.write("e", 0, M + 32768, pattern=0x61)
    vm.guest_io("e", f"{verb} 786432 {M + 32768 - 786432}")
    stats = next(s for s in vm.qmp("query-blockstats", {"query-nodes": True}) if s.get("node-name") == "ef")
    vm.qmp("blockdev-del", {"node-name": "e"})
    return stats["driver-specific"]["discard-nb-ok"], stats["driver-specific"]["discard-bytes-ok"]


TO_THE_END = {"discard": (2, 5 * 65536), "write -z -u": (2, 5 * 65536)}  # QEMU 7.2, measured


@pytest.mark.parametrize("verb", sorted(TO_THE_END))
def test_the_partial_last_cluster_is_a_request_of_its_own(verb):
    assert _to_the_end(Machine(), verb) == TO_THE_END[verb]


@pytest.mark.qemu
@pytest.mark.parametrize("verb", sorted(TO_THE_END))
def test_to_the_end_as_qemu(verb):
    with Machine(backend="qemu", daemon="qsd") as real:
        assert _to_the_end(real, verb) == TO_THE_END[verb]


def test_a_shrink_s_discards_fire_the_file_node_s_write_threshold():
    # the discards a shrink passes to the file node are write requests there (bdrv_co_write_req_prepare checks
    # the threshold for discards too): seed 15041, scenario 52 (QEMU 7.2: the same event)
    from bitlab.conformance.generator import random_scenario
    from bitlab.conformance.runner import play

    out = play(random_scenario(15041, 52), "sim")
    assert [e["data"] for e in out.events if e["event"] == "BLOCK_WRITE_THRESHOLD"] == [
        {"node-name": "d0f", "write-threshold": 1208320, "amount-exceeded": 36864}]


@pytest.mark.qemu
@pytest.mark.parametrize("seed,index", [(15041, 52), (15032, 116)])
def test_shrinks_under_a_file_node_threshold_match_qemu(seed, index):
    from bitlab.conformance.generator import random_scenario
    from bitlab.conformance.runner import check

    assert check(random_scenario(seed, index)) == []


def _table_between(vm: Machine, op: str) -> tuple[int, int, str, str]:
    """4 KiB clusters (an L2 table maps 2 MiB): host clusters 7-23 hold guest clusters 1024-1040 (L2 table 2),
    24-39 guest clusters 1-16 (table 0), written after them; table 1 has no L2 table. One request frees both
    stretches over table 1: the file node's (discard-nb-ok, discard-bytes-ok), qemu-img check and map."""
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "l.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "l", "discard": "unmap",
                            "file": {"driver": "file", "filename": "l.qcow2", "node-name": "lf"}})
    for offset, length in ((0, 4096), (4 * M, 4096), (4 * M + 4096, 65536), (4096, 65536)):
        vm.write("l", offset, length, pattern=0x71)
    if op == "shrink":
        vm.qmp("block_resize", {"node-name": "l", "size": 4096})
    else:
        vm.guest_io("l", f"{'discard' if op == 'discard' else 'write -z -u'} 4096 {4 * M + 65536}")
    stats = next(s for s in vm.qmp("query-blockstats", {"query-nodes": True}) if s.get("node-name") == "lf")
    vm.qmp("blockdev-del", {"node-name": "l"})
    counts = stats["driver-specific"]["discard-nb-ok"], stats["driver-specific"]["discard-bytes-ok"]
    return *counts, vm.qemu_img("check", "l.qcow2"), vm.qemu_img("map", "--output=json", "l.qcow2")


# QEMU 7.2, measured: before it makes table 1 (l2_allocate, the first cluster the request freed), qcow2 passes the
# discards it cached so far (alloc_clusters_noref: qcow2_process_discards), so table 0's and table 2's stretches,
# adjacent on the host, are two discards, not one; a shrink then frees tables 2 and 1 and the emptied cluster
# (a discard each).
TABLE_BETWEEN = {op: (n, nbytes, "No errors were found on the image.\n" + check) for op, n, nbytes, check in (
    ("discard", 2, 33 * 4096, "1/2048 = 0.05% allocated, 0.00% fragmented, 0.00% compressed clusters\n"
                              "Image end offset: 102400\n"),
    ("zero-unmap", 2, 33 * 4096, "1/2048 = 0.05% allocated, 0.00% fragmented, 0.00% compressed clusters\n"
                                 "Image end offset: 102400\n"),
    ("shrink", 5, 36 * 4096, "1/1 = 100.00% allocated, 0.00% fragmented, 0.00% compressed clusters\n"
                             "Image end offset: 24576\n"))}


@pytest.mark.parametrize("op", sorted(TABLE_BETWEEN))
def test_a_new_l2_table_passes_the_discards_freed_before_it(op):
    assert _table_between(Machine(), op)[:3] == TABLE_BETWEEN[op]


@pytest.mark.qemu
@pytest.mark.parametrize("op", sorted(TABLE_BETWEEN))
def test_a_new_l2_table_between_freed_stretches_as_qemu(op):
    with Machine(backend="qemu", daemon="qsd") as real:
        want = _table_between(real, op)
    assert want[:3] == TABLE_BETWEEN[op]
    assert _table_between(Machine(), op) == want  # qemu-img map too
