"""block-stream (bitlab.qmp.cmd_stream, bitlab.jobs.stream, bitlab.block.cor): QEMU 7.2's stream job.

The job puts a copy-on-read filter above the node it streams into and pulls, 512 KiB at a time, what the node's
backing chain (down to the base's overlay, or ``bottom``) allocates into it; at the end the node's backing link
and the backing file its image names go to the base (none when the whole chain was streamed). The plain tests
assert QEMU 7.2's texts, events and numbers; the ``qemu`` tests play the same steps on both and compare every
reply.
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.conformance.runner import check
from bitlab.errors import QMPError

from .stories import nodes as _nodes
from .stories import play as _play
from .stories import q as _q
from .stories import write as _write
from .test_commit import GRAPH, JOBS, NODES, _chain, _image, _wait

K, M = 1 << 10, 1 << 20
DISK = 64 * M

BASE = _image("base", None, [(0, M, 0x41), (8 * M, 512 * K, 0x42)])
MID = _image("mid", "base", [(M, M, 0x43), (12 * M, 64 * K, 0x47)])
TOP = _image("top", "mid", [(4 * M, 64 * K, 0x44)])
THREE = [*BASE, *MID, *TOP]
BITMAPS = [_q("block-dirty-bitmap-add", {"node": "top", "name": "bt", "granularity": 65536}),
           _q("block-dirty-bitmap-add", {"node": "base", "name": "bb", "granularity": 65536})]
SUMS = [_q("x-debug-block-dirty-bitmap-sha256", {"node": "top", "name": "bt"})]
OFFLINE = [{"qemu-img": ["info", "top.qcow2"]}, {"qemu-img": ["map", "--output=json", "top.qcow2"]}]


def _stream(**args: object) -> dict:
    return _q("block-stream", {"job-id": "s", "device": "top", **args})


# Stream mid into top (base stays below): the copy-on-read filter above top while it runs, len the whole disk,
# top's bitmap untouched by the copies (they are not requests on top); then top's backing is base.
BASIC = [
    *THREE, _q("blockdev-add", _chain("top", "mid", "base")), *BITMAPS, _write("top", 20 * M, 64 * K, 0x45),
    _stream(**{"base-node": "base", "speed": M}), {"sleep": 0.6}, JOBS, _q("query-jobs"), NODES, GRAPH,
    _q("block-job-set-speed", {"device": "s", "speed": 0}), _wait("null", "s"), NODES, GRAPH, *SUMS,
    _q("blockdev-del", {"node-name": "top"}), *OFFLINE,
]

# The whole chain into top: no backing file afterwards; by file name; with bottom; a backing file name of the
# caller's; a filter name; auto-finalize off; a cancel.
VARIANTS = [
    *THREE, _q("blockdev-add", _chain("top", "mid", "base")),
    _stream(**{"base": "base.qcow2", "speed": M}), {"sleep": 0.6}, JOBS,
    _q("block-job-cancel", {"device": "s"}), _wait("null", "s"), NODES,
    _stream(**{"bottom": "mid", "filter-node-name": "cor", "auto-finalize": False}), _wait("pending", "s"), JOBS,
    NODES, _q("job-finalize", {"id": "s"}), _wait("null", "s"), NODES,
    {"qemu-img": ["info", "-U", "top.qcow2"]},
    _q("blockdev-del", {"node-name": "top"}),
    *TOP, _q("blockdev-add", _chain("top", "mid", "base")),
    _stream(**{"base-node": "mid", "backing-file": "other.qcow2"}), _wait("null", "s"), NODES,
    {"qemu-img": ["info", "-U", "top.qcow2"]},
    _stream(), _wait("null", "s"), NODES, _q("blockdev-del", {"node-name": "top"}), *OFFLINE,
]

# A stream job left concluded (auto-dismiss off): its links hold the nodes between until it is dismissed. QEMU
# 7.2 crashes (SIGSEGV) at any listing of the nodes then (query-named-block-nodes, and qemu-storage-daemon's
# backend's own): the copy-on-read filter the job still holds has no child. Not compared: see
# test_a_concluded_stream_holds_its_nodes.
CONCLUDED = [
    *THREE, _q("blockdev-add", _chain("top", "mid", "base")),
    _stream(**{"base-node": "base", "auto-dismiss": False}), _wait("concluded", "s"), NODES, GRAPH, JOBS,
    _q("blockdev-del", {"node-name": "top"}), _q("job-dismiss", {"id": "s"}), NODES, GRAPH,
    _q("blockdev-del", {"node-name": "top"}),
]

# A guest writing and reading while the job runs: the read copies what it reads into top (copy-on-read), the
# job then finds it allocated.
GUEST = [
    *THREE, _q("blockdev-add", _chain("top", "mid", "base")), *BITMAPS,
    _stream(speed=256 * K), {"sleep": 0.5}, JOBS,
    {"read": {"node": "top", "offset": 8 * M, "length": 64 * K}}, _write("top", 12 * M + 4 * K, 4 * K, 0x48), JOBS,
    _q("block-job-set-speed", {"device": "s", "speed": 0}), _wait("null", "s"), NODES, *SUMS,
    _q("blockdev-del", {"node-name": "top"}), *OFFLINE,
]

# On the system emulator the guest's requests drain the throttled job, which then finishes; how far it got as the
# write returns varies with QEMU's timing (a CI run saw it still running at 44 MiB): there, wait for its end first.
_AFTER_IO = GUEST.index(_write("top", 12 * M + 4 * K, 4 * K, 0x48)) + 1
GUEST_SYSTEM = [*GUEST[:_AFTER_IO], _wait("null", "s"), *GUEST[_AFTER_IO:]]

# A copy-on-read node of the caller's over top: a read through it copies into top what a layer down to bottom (mid)
# allocates (the base's data is not copied), or without bottom whatever top does not allocate (zeroes as zero
# clusters); the bottom must exist and be no filter.
COR_NODE = [
    *THREE, _q("blockdev-add", _chain("top", "mid", "base")),
    _q("blockdev-add", {"driver": "copy-on-read", "node-name": "cor", "file": "top", "bottom": "nope"}),
    _q("blockdev-add", {"driver": "copy-on-read", "node-name": "cor", "file": "top", "bottom": "mid"}), NODES, GRAPH,
    {"read": {"node": "cor", "offset": 0, "length": 64 * K}}, {"read": {"node": "cor", "offset": M, "length": 4096}},
    {"read": {"node": "cor", "offset": 20 * M, "length": 4096}}, NODES, _q("blockdev-del", {"node-name": "cor"}),
    _q("blockdev-add", {"driver": "copy-on-read", "node-name": "cor2", "file": "top"}),
    {"read": {"node": "cor2", "offset": 8 * M, "length": 64 * K}},
    {"read": {"node": "cor2", "offset": 16 * M, "length": 64 * K}},
    _q("blockdev-del", {"node-name": "cor2"}), _q("blockdev-del", {"node-name": "top"}), *OFFLINE,
]

# Command errors, in QEMU's order of checks.
ERRORS = [
    *THREE, *_image("lone", None, []),
    _q("blockdev-add", _chain("top", "mid", "base")), _q("blockdev-add", _chain("lone")),
    _stream(base="base.qcow2", **{"base-node": "base"}), _stream(base="base.qcow2", bottom="mid"),
    _stream(bottom="mid", **{"base-node": "base"}),
    _q("block-stream", {"job-id": "s", "device": "nope"}),
    _stream(base="nope.qcow2"), _stream(**{"base-node": "nope"}), _stream(**{"base-node": "top"}),
    _stream(**{"base-node": "lone"}), _stream(bottom="nope"), _stream(bottom="lone"),
    _stream(**{"backing-file": "x.qcow2"}), _q("block-stream", {"device": "top"}), _stream(**{"job-id": "#s"}),
    _stream(speed=-1), _stream(**{"filter-node-name": "base"}), _stream(**{"filter-node-name": "#f"}),
    _q("block-stream", {"job-id": "s", "device": "mid"}), _wait("null", "s"), NODES,
    _q("block-stream", {"job-id": "s", "device": "base"}), _wait("null", "s"),
    _stream(**{"auto-finalize": False}), _wait("pending", "s"),
    _stream(**{"job-id": "t"}), _q("block-stream", {"job-id": "t", "device": "mid"}),
    _q("block-commit", {"job-id": "t", "device": "top"}), _q("blockdev-del", {"node-name": "top"}),
    _q("job-complete", {"id": "s"}), GRAPH, _q("job-cancel", {"id": "s"}), _wait("null", "s"), NODES,
]


def _dbg(event: str = "read_aio") -> list[dict]:
    base = {"driver": "qcow2", "node-name": "base", "file": {
        "driver": "blkdebug", "node-name": "base-dbg", "image": {"driver": "file", "filename": "base.qcow2"},
        "inject-error": [{"event": event, "errno": 5, "once": True}]}}
    return [_q("blockdev-add", base), _q("blockdev-add", {**_chain("top"), "backing": {**_chain("mid"),
                                                                                      "backing": "base"}})]


DEL = [_q("blockdev-del", {"node-name": "top"}), _q("blockdev-del", {"node-name": "base"})]

# A read of the base fails once: report (the job fails), stop (paused; resumed, it goes on), ignore (it goes on
# and fails at the end all the same: the backing file stays).
JOB_ERRORS = [
    *THREE,
    *_dbg(), _stream(), _wait("null", "s"), NODES, *DEL,
    *_dbg(), _stream(**{"on-error": "stop"}), _wait("paused", "s"), JOBS, _q("block-job-resume", {"device": "s"}),
    _wait("null", "s"), NODES, *DEL, *TOP,
    *_dbg(), _stream(**{"on-error": "ignore"}), _wait("null", "s"), NODES, *DEL, *OFFLINE,
]

# A -drive device's snapshot streamed back into the overlay (the job named after the device).
DRIVE = [
    {"hmp": 'qemu-io drive0 "write -P 0x41 0 1M"'},
    _q("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "ov.qcow2", "format": "qcow2"}),
    {"hmp": 'qemu-io drive0 "write -P 0x43 8M 64k"'},
    _q("block-dirty-bitmap-add", {"node": "drive0", "name": "b0", "granularity": 65536}),
    _q("block-stream", {"device": "drive0", "speed": 1}), {"sleep": 0.3}, JOBS, _q("query-block"), NODES,
    _q("block-job-set-speed", {"device": "drive0", "speed": 0}), _wait("null", "drive0"), _q("query-block"),
    NODES, {"qemu-img": ["info", "-U", "ov.qcow2"]},
]
DRIVES = [{"id": "drive0", "file": "d0.qcow2", "format": "qcow2", "size": "64M"}]


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
@pytest.mark.parametrize("steps", [BASIC, VARIANTS, GUEST, ERRORS, JOB_ERRORS, COR_NODE],
                         ids=["basic", "variants", "guest", "errors", "job-errors", "cor-node"])
def test_stream_as_in_qemu(steps, daemon):
    if steps is GUEST and daemon == "system":
        steps = GUEST_SYSTEM
    diffs = check({"name": "stream", "steps": steps}, daemon)
    assert not diffs, "\n".join(str(d) for d in diffs)


@pytest.mark.qemu
def test_stream_of_a_device_as_in_qemu():
    diffs = check({"name": "stream-drive", "drives": DRIVES, "steps": DRIVE}, "system")
    assert not diffs, "\n".join(str(d) for d in diffs)


def test_a_stream_pulls_the_chain_into_the_top_unseen_by_its_bitmaps():
    """QEMU 7.2 (both daemons): len the whole disk, the implicit copy-on-read filter above top while it runs (its
    filename top's), mid the job's intermediate node; after it top is over base, mid is gone, and top's bitmap
    counts only the guest's write (copy-on-read is not a request on top)."""
    vm = _play(BASIC[:BASIC.index(JOBS) + 1])
    (job,) = vm.qmp("query-block-jobs")
    assert (job["type"], job["len"], job["speed"], job["status"]) == ("stream", DISK, M, "running")
    nodes = _nodes(vm)
    (cor,) = [n for n in nodes.values() if n["drv"] == "copy-on-read"]
    assert cor["node-name"].startswith("#block") and cor["file"] == "top.qcow2" and not cor["ro"]
    vm.qmp("block-job-set-speed", {"device": "s", "speed": 0})
    vm.run()
    ends = [(e["event"], e["data"].get("len"), e["data"].get("offset")) for e in vm.events
            if e["event"].startswith("BLOCK_JOB")]
    assert ends == [("BLOCK_JOB_COMPLETED", DISK, DISK)]
    nodes = _nodes(vm)
    assert "mid" not in nodes and nodes["top"]["backing_file"] == "base.qcow2"
    (bt,) = nodes["top"]["dirty-bitmaps"]
    assert bt["count"] == 64 * K  # the guest's write at 20 MiB only


def test_block_stream_errors_in_qemus_order():
    from bitlab.conformance.steps import run_step

    vm = Machine()
    texts = []
    for step in ERRORS[:ERRORS.index(NODES)]:
        reply = run_step(vm, step)
        if isinstance(reply, dict) and "error" in reply:
            texts.append(reply["error"]["desc"])
    assert texts == [
        "'base' and 'base-node' cannot be specified at the same time",
        "'base' and 'bottom' cannot be specified at the same time",
        "'bottom' and 'base-node' cannot be specified at the same time",
        "Cannot find device='nope' nor node-name='nope'", "Can't find 'nope.qcow2' in the backing chain",
        "Cannot find device='' nor node-name='nope'", "Node 'top' is not a backing image of 'top'",
        "Node 'lone' is not a backing image of 'top'", "Cannot find device='' nor node-name='nope'",
        "Node 'lone' is not in a chain starting from 'top'", "backing file specified, but streaming the entire chain",
        "Invalid job ID ''", "Invalid job ID '#s'", "Parameter 'speed' expects a non-negative value",
        "Could not create node: Duplicate nodes with node-name='base'",
        "Could not create node: Invalid node-name: '#f'",
    ]


def test_an_ignored_read_error_still_fails_the_stream():
    """stream_run keeps the first error even where on-error ignores it: the job goes on to the end, then fails
    with it, and the backing file stays (QEMU 7.2, both daemons)."""
    start = JOB_ERRORS.index(_stream(**{"on-error": "ignore"}))
    vm = _play(JOB_ERRORS[:start - len(_dbg())] + JOB_ERRORS[start - len(_dbg()):start + 2])
    ends = [(e["event"], e["data"].get("action"), e["data"].get("error")) for e in vm.events
            if e["event"] in ("BLOCK_JOB_ERROR", "BLOCK_JOB_COMPLETED")]
    assert ends[-2:] == [("BLOCK_JOB_ERROR", "ignore", None), ("BLOCK_JOB_COMPLETED", None, "Input/output error")]
    assert _nodes(vm)["top"]["image"]["backing-filename"] == "mid.qcow2"


def test_a_concluded_stream_holds_its_nodes():
    """Left concluded (auto-dismiss off), the job's links keep mid and keep top busy until job-dismiss. (QEMU 7.2
    crashes at a listing of the nodes there: its copy-on-read filter, which the job still holds, has no child;
    bitlab has dropped the filter.)"""
    vm = _play(CONCLUDED[:CONCLUDED.index(_wait("concluded", "s")) + 1])
    assert set(_nodes(vm)) == {"base", "base-file", "mid", "mid-file", "top", "top-file"}
    with pytest.raises(QMPError, match="Node 'top' is busy: block device is in use by block job: stream"):
        vm.qmp("blockdev-del", {"node-name": "top"})
    vm.qmp("job-dismiss", {"id": "s"})
    assert set(_nodes(vm)) == {"base", "base-file", "top", "top-file"}
    assert vm.qmp("blockdev-del", {"node-name": "top"}) == {}


def test_a_copy_on_read_node_copies_what_a_read_reaches():
    """QEMU 7.2 (both daemons): with bottom, only what a layer down to it allocates is copied into top; the bottom
    must exist."""
    vm = _play(COR_NODE[:COR_NODE.index(GRAPH)])
    with pytest.raises(QMPError, match="Bottom node 'nope' not found"):
        vm.qmp("blockdev-add", {"driver": "copy-on-read", "node-name": "x", "file": "top", "bottom": "nope"})
    assert _nodes(vm)["cor"]["file"].startswith('json:{"driver": "copy-on-read"')
    top = vm.graph.nodes["top"]
    before = top.is_allocated(0, DISK)
    vm.read("cor", 8 * M, 4096)  # the base's data: below bottom, not copied
    assert [a.tolist() for a in top.is_allocated(0, DISK)] == [a.tolist() for a in before]
    vm.read("cor", M, 4096)  # mid's: its cluster copied into top
    s, e, alloc = top.is_allocated(M, 64 * K)
    assert bool(alloc[0]) and int(e[0]) == M + 64 * K


def _reopen(node: str, backing: str | None) -> dict:
    return _q("blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": node, "file": f"{node}-file",
                                               "backing": backing}]})


# The chains the jobs freeze (bdrv_freeze_backing_chain): a blockdev-reopen that would change a frozen link is
# refused, one that would replace a job's implicit filter too; after the job the link can change. (On the system
# emulator: qemu-storage-daemon's backend lets its exports stand aside for blockdev-reopen, and those drains let a
# throttled job copy on until it is done. After the last drain QEMU's job still goes through the rest of the disk a
# chunk per main-loop turn (job_sleep_ns(0) yields): the sleep before the commit's cancel lets it end first, else
# the cancel races it on a loaded machine: 0.2 s lost that race once in a CI run beside other QEMU work.)
FROZEN = [
    *THREE, _q("blockdev-add", _chain("top", "mid", "base")),
    _q("block-commit", {"job-id": "c", "device": "top"}), _wait("ready", "c"),
    _reopen("top", None), _reopen("mid", None), _q("job-cancel", {"id": "c"}), _wait("null", "c"),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "speed": 1}), {"sleep": 0.2},
    # (the reopens' drains let the throttled job finish: wait for it, not a time a loaded machine may not keep)
    _reopen("top", None), _reopen("top", "base"), _reopen("mid", None), _wait("null", "c"),
    _q("job-cancel", {"id": "c"}), _wait("null", "c"),
    _stream(**{"base-node": "base", "speed": 1}), {"sleep": 0.2}, _reopen("top", None), _reopen("mid", None),
    _q("job-cancel", {"id": "s"}), _wait("null", "s"),
    _q("blockdev-add", {"driver": "copy-on-read", "node-name": "cor", "file": "top", "bottom": "mid"}),
    _reopen("top", None), _q("blockdev-del", {"node-name": "cor"}),
    _reopen("mid", None), NODES,
]


@pytest.mark.qemu
def test_frozen_chains_as_in_qemu():
    diffs = check({"name": "frozen", "steps": FROZEN}, "system")
    assert not diffs, "\n".join(str(d) for d in diffs)


def test_a_frozen_link_cannot_change():
    """QEMU 7.2's texts (the system emulator): an active commit freezes top's and mid's backing links, the commit
    job puts its implicit filter under top."""
    vm = _play(FROZEN[:FROZEN.index(_wait("ready", "c")) + 1])
    with pytest.raises(QMPError, match="Cannot change frozen 'backing' link from 'top' to 'mid'"):
        vm.qmp("blockdev-reopen", _reopen("top", None)["qmp"]["arguments"])
    vm.qmp("job-cancel", {"id": "c"})
    vm.run()
    vm.qmp("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "speed": 1})
    with pytest.raises(QMPError, match="Cannot replace implicit backing child of top"):
        vm.qmp("blockdev-reopen", _reopen("top", "base")["qmp"]["arguments"])
