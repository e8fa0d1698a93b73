"""blockdev-reopen (bitlab.block.reopen): read-only and back with persistent bitmaps, QEMU's option checks, a
writer above the node, a backing child detached, jobs drained.

The plain tests assert QEMU 7.2's values (measured on the system emulator and qemu-storage-daemon); the
``qemu`` tests play the same steps on both daemons and compare every reply (automatic node names and host
allocation masked) and every job's events.
"""

from __future__ import annotations

import json

import pytest

from bitlab import Machine
from bitlab.conformance.runner import check
from bitlab.conformance.steps import run_step

K, M = 1 << 10, 1 << 20


def _q(execute: str, arguments: dict | None = None) -> dict:
    return {"qmp": {"execute": execute, **({"arguments": arguments} if arguments is not None else {})}}


def _img(name: str, *extra: str) -> dict:
    return {"qemu-img": ["create", "-f", "qcow2", *extra, f"{name}.qcow2", *([] if "-b" in extra else ["4M"])]}


def _file(name: str) -> dict:
    return {"driver": "file", "filename": f"{name}.qcow2"}


def _reopen(*options: dict) -> dict:
    return _q("blockdev-reopen", {"options": list(options)})


def _n(name: str, **extra: object) -> dict:
    """The options of qcow2 node ``name`` over its own file, as blockdev-add gave them."""
    return {"driver": "qcow2", "node-name": name, "file": _file(name), **extra}


NODES = _q("query-named-block-nodes", {"flat": True})
INFO = {"qemu-img": ["info", "-U", "--output=json", "d.qcow2"]}

# A persistent bitmap and a plain one across read-only and back, with the bitmap commands in between, then
# every option check of qmp_blockdev_reopen and bdrv_reopen_prepare bitlab simulates.
BITMAPS = [
    _img("d"),
    _q("blockdev-add", {"driver": "file", "node-name": "df", "filename": "d.qcow2"}),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "d", "file": "df"}),
    _q("block-dirty-bitmap-add", {"node": "d", "name": "b0", "persistent": True}),
    _q("block-dirty-bitmap-add", {"node": "d", "name": "b1"}),
    _q("block-dirty-bitmap-add", {"node": "d", "name": "b4", "persistent": True, "disabled": True}),
    {"write": {"node": "d", "offset": 0, "length": 64 * K}},
    _reopen({"driver": "qcow2", "node-name": "d", "file": "df", "read-only": True}),
    INFO, NODES,
    {"write": {"node": "d", "offset": 64 * K, "length": 64 * K}},
    _q("block-dirty-bitmap-clear", {"node": "d", "name": "b0"}),
    _q("block-dirty-bitmap-clear", {"node": "d", "name": "b1"}),
    _q("block-dirty-bitmap-add", {"node": "d", "name": "b2", "persistent": True}),
    _q("block-dirty-bitmap-enable", {"node": "d", "name": "b4"}),
    _q("block-dirty-bitmap-merge", {"node": "d", "target": "b1", "bitmaps": ["b0"]}),
    _q("block-dirty-bitmap-merge", {"node": "d", "target": "b0", "bitmaps": ["b1"]}),
    _q("block-dirty-bitmap-remove", {"node": "d", "name": "b0"}),
    _q("x-debug-block-dirty-bitmap-sha256", {"node": "d", "name": "b0"}),
    INFO, NODES,
    # read-only again: qcow2 would store b2 (added read-only), and cannot
    _reopen({"driver": "qcow2", "node-name": "d", "file": "df", "read-only": True}),
    _reopen({"driver": "qcow2", "node-name": "d", "file": "df"}),
    INFO,
    {"write": {"node": "d", "offset": 192 * K, "length": 64 * K}},
    NODES,
    _reopen({"driver": "qcow2", "node-name": "d", "file": "df", "read-only": True}),
    INFO,
    _reopen({"driver": "qcow2", "node-name": "d", "file": "df"}),
    # the checks, in QEMU's order
    _reopen({"driver": "qcow2", "node-name": "d"}),
    _reopen({"driver": "qcow2", "file": "df"}),
    _reopen({"driver": "qcow2", "node-name": "nope", "file": "df"}),
    _reopen({"driver": "raw", "node-name": "d", "file": "df"}),
    _reopen({"driver": "file", "node-name": "df", "filename": "other.qcow2"}),
    _reopen({"driver": "file", "node-name": "df", "filename": "d.qcow2", "read-only": True}),
    _reopen({"driver": "qcow2", "node-name": "d", "file": _file("d")}),
    _reopen({"driver": "qcow2", "node-name": "d", "file": "df", "force-share": True, "read-only": True}),
    _reopen({"driver": "qcow2", "node-name": "d", "file": "df", "cache-size": -1}),
    _reopen({"driver": "qcow2", "node-name": "d", "file": "df", "detect-zeroes": "unmap"}),
    # a node listed twice: the second options win
    _reopen({"driver": "qcow2", "node-name": "d", "file": "df"},
            {"driver": "qcow2", "node-name": "d", "file": "df", "read-only": True}),
    NODES, INFO,
]

CACHE_FLAGS = _reopen(_n("b", cache={"no-flush": True}, **{"detect-zeroes": "on", "pass-discard-request": True}))
DETACH = _reopen(_n("o", backing=None))  # detached (and closed)

# Options of nodes opened with children of their own: what may be left out, what may change.
OPTIONS = [
    _img("a"), _img("b"), _img("o", "-b", "a.qcow2", "-F", "qcow2"), _img("t"),
    _q("blockdev-add", {"driver": "null-co", "node-name": "nul", "size": M}),
    _reopen({"driver": "null-co", "node-name": "nul", "read-only": True}),
    _reopen({"driver": "null-co", "node-name": "nul", "size": 2 * M}),
    _reopen({"driver": "null-co", "node-name": "nul", "size": M, "read-only": True}),
    _q("blockdev-add", _n("b", discard="unmap", cache={"direct": True}, **{"cache-size": M})),
    _reopen(_n("b")),  # discard stays unmap (BDRV_O_UNMAP is kept), cache.direct and cache-size go back
    NODES,
    _reopen(_n("b", file={**_file("b"), "aio": "native"})),
    _reopen(_n("b", file={**_file("b"), "locking": "off"})),
    CACHE_FLAGS,
    NODES,
    _reopen(_n("b", **{"detect-zeroes": "unmap"})),
    _reopen(_n("b", discard="ignore", **{"detect-zeroes": "unmap"})),
    _q("blockdev-add", _n("t", file={**_file("t"), "aio": "threads", "locking": "auto"})),
    _reopen(_n("t")),
    _q("blockdev-add", _n("o")),
    _reopen(_n("o")),
    _reopen(_n("o", backing="o")),
    _reopen(_n("o", backing="nope")),
    _reopen(_n("o", backing={"driver": "qcow2", "file": _file("a")})),  # the backing node, reopened
    _reopen(_n("o", backing={"driver": "qcow2", "file": _file("a"), "read-only": False})),
    NODES,
    DETACH,
    NODES,
    _reopen(_n("o", backing={"driver": "qcow2", "file": _file("a")})),
    _reopen(_n("o", backing=None, **{"read-only": True}), _n("b", **{"read-only": True})),
    NODES,
    _q("blockdev-add", {"driver": "copy-before-write", "node-name": "cbw", "file": "b", "target": "t"}),
    _reopen({"driver": "copy-before-write", "node-name": "cbw", "file": "b", "target": "t"}),
    _q("blockdev-add", {"driver": "snapshot-access", "node-name": "sa", "file": "cbw"}),
    _reopen({"driver": "snapshot-access", "node-name": "sa", "file": "cbw"}),
    _reopen(_n("t", file=_file("t") | {"aio": "threads", "locking": "auto"}, **{"read-only": True})),
    _q("blockdev-add", {"driver": "raw", "node-name": "r", "file": {"driver": "null-co", "size": M}}),
    _reopen({"driver": "raw", "node-name": "r", "file": {"driver": "null-co", "size": M}, "read-only": True}),
    _reopen({"driver": "raw", "node-name": "r", "file": {"driver": "null-co"}}),
    _reopen({"driver": "raw", "node-name": "r", "file": {"driver": "null-co", "size": M, "node-name": "x"}}),
    _q("blockdev-add", {"driver": "blkdebug", "node-name": "bd", "image": {"driver": "null-co"}, "align": 4096}),
    _reopen({"driver": "blkdebug", "node-name": "bd", "image": {"driver": "null-co"}, "align": 4096}),
    _reopen({"driver": "blkdebug", "node-name": "bd", "image": {"driver": "null-co"}}),
    _reopen({"driver": "blkdebug", "node-name": "bd", "image": {"driver": "null-co"}, "align": 4096,
             "read-only": True}),
    NODES,
]

# A backup writing into the node: going read-only fails at the permission check, after qcow2 stored its
# bitmaps and made them read-only (QEMU 7.2 does not undo that: a guest write then fails with EPERM, as a node
# with a read-only bitmap refuses writes). Then jobs drained by a reopen of their source.
WRITER = [
    _img("d"), _img("s"),
    _q("blockdev-add", _n("d")),
    _q("block-dirty-bitmap-add", {"node": "d", "name": "b0", "persistent": True}),
    {"write": {"node": "d", "offset": 0, "length": 64 * K}},
    _q("blockdev-add", _n("s")),
    {"write": {"node": "s", "offset": 0, "length": 2 * M}},
    _q("blockdev-backup", {"job-id": "j", "device": "s", "target": "d", "sync": "full", "speed": 64 * K}),
    _reopen(_n("d", **{"read-only": True})),
    {"qemu-img": ["info", "-U", "--output=json", "d.qcow2"]},
    _q("block-dirty-bitmap-clear", {"node": "d", "name": "b0"}),
    _q("job-cancel", {"id": "j"}), {"settle-jobs": True},
    {"write": {"node": "d", "offset": 0, "length": 64 * K}},  # EPERM: a read-only bitmap on the node
    _reopen(_n("d", **{"read-only": True})),
    _reopen(_n("d")),
    {"qemu-img": ["info", "-U", "--output=json", "d.qcow2"]},
    _q("block-dirty-bitmap-clear", {"node": "d", "name": "b0"}),
    _q("blockdev-backup", {"job-id": "j2", "device": "d", "target": "s", "sync": "full", "speed": 64 * K}),
    _reopen(_n("d")),
    _reopen(_n("d", **{"read-only": True})),
    _q("job-cancel", {"id": "j2"}), {"settle-jobs": True},
    NODES,
]


# Another backing node, by reference: the guest reads through it; a node of the image's own backing file
# gives the plain filename back, a null-co node is taken as well, the node itself is a cycle.
REBACK = [
    _img("a"), _img("x"), _img("o", "-b", "a.qcow2", "-F", "qcow2"),
    _q("blockdev-add", _n("x")),
    {"write": {"node": "x", "offset": 0, "length": 64 * K, "pattern": 0x58}},
    _q("blockdev-add", _n("o")),
    _reopen(_n("o", backing="x")),
    {"read": {"node": "o", "offset": 0, "length": 64 * K, "pattern": 0x58}},
    NODES, _q("query-named-block-nodes"),
    {"write": {"node": "x", "offset": 64 * K, "length": 64 * K, "pattern": 0x59}},  # the backing link shares writes
    _q("blockdev-del", {"node-name": "x"}),
    _reopen(_n("o", backing=None)),
    _reopen(_n("o", backing="x")),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "y", "file": _file("a"), "read-only": True}),
    _reopen(_n("o", backing="y")),
    NODES,
    _q("blockdev-del", {"node-name": "x"}),
    _q("blockdev-add", {"driver": "null-co", "node-name": "nul", "size": 4 * M}),
    _reopen(_n("o", backing="nul")),
    _reopen(_n("o", backing="o")),
    _q("x-debug-query-block-graph"),
]


# Generic options: cache.direct and auto-read-only change, force-share may not (not even to false), a file's
# locking neither; qcow2's runtime options may; a second listed node that does not exist fails the lot.
GENERIC = [
    _img("d"),
    _q("blockdev-add", _n("d")),
    _reopen(_n("d", cache={"direct": True})),
    NODES,
    _reopen(_n("d", **{"auto-read-only": True})),
    _reopen(_n("d", **{"force-share": False})),
    _reopen(_n("d", **{"read-only": True, "force-share": True})),
    _reopen(_n("d", file={**_file("d"), "locking": "off"})),
    _reopen(_n("d", **{"lazy-refcounts": False, "cache-clean-interval": 5, "overlap-check": "none"})),
    _reopen(_n("d"), {"driver": "file", "node-name": "zz", "filename": "d.qcow2"}),
    NODES,
]


def _play(steps: list[dict]) -> list:
    vm = Machine()
    return [run_step(vm, step) for step in steps]


def _at(replies: list, steps: list[dict], step: dict, nth: int = 0):
    """The reply to the ``nth`` step equal to ``step``."""
    return [r for s, r in zip(steps, replies) if s == step][nth]


def _desc(reply: dict) -> str | None:
    return reply.get("error", {}).get("desc")


def test_read_only_and_back_keeps_the_persistent_bitmaps():
    replies = _play(BITMAPS)
    flags = [[(b["name"], b["flags"]) for b in json.loads(r["stdout"])["format-specific"]["data"]["bitmaps"]]
             for s, r in zip(BITMAPS, replies) if s is INFO]
    assert flags[0] == [("b4", []), ("b0", ["auto"])]  # stored at the reopen: not in use
    assert flags[2] == [("b4", ["in-use"]), ("b0", ["in-use", "auto"])]  # read-write: in use again
    assert flags[3] == [("b4", ["auto"]), ("b0", ["auto"]), ("b2", ["auto"])]  # b2 (added read-only) appended
    texts = [_desc(r) for s, r in zip(BITMAPS, replies) if "qmp" in s]
    readonly = "Bitmap 'b0' is readonly and cannot be modified"
    assert texts.count(readonly) == 3  # clear, merge into it, remove: the stored bitmap is read-only
    assert [r for s, r in zip(BITMAPS, replies) if "write" in s] == [
        {"ok": True}, {"ok": False, "error": "Block node is read-only"}, {"ok": True}]
    assert [t for t in texts if t and t != readonly] == [
        "No write access",
        "Parameter 'options[0].file' is missing",
        "node-name not specified",
        "Failed to find node with node-name='nope'",
        "Cannot change the option 'driver'",
        "Cannot change the option 'filename'",
        "Read-only block node 'df' cannot support read-write users",
        "Cannot change the option 'file.driver'",
        "Cannot change the option 'force-share'",
        "Parameter 'cache-size' expects a non-negative number below 2^64",
        "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
    ]
    last = [n for n in _at(replies, BITMAPS, NODES, -1)["return"] if n["node-name"] == "d"][0]
    assert last["ro"] is True  # listed twice: the second options won


def test_option_checks_say_what_qemu_says():
    texts = [_desc(r) for s, r in zip(OPTIONS, _play(OPTIONS)) if s.get("qmp", {}).get("execute") == "blockdev-reopen"]
    assert texts == [
        "Option 'size' cannot be reset to its default value",
        "Cannot change the option 'size'",
        None, None,
        "Cannot change the option 'aio'",
        "Cannot change the option 'locking'",
        None, None,
        "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
        "Option 'locking' cannot be reset to its default value",
        "backing is missing for 'o'",
        "Making 'o' a backing child of 'o' would create a cycle",
        "Cannot find device='' nor node-name='nope'",
        None, None, None,
        "Cannot change the option 'backing.driver'",  # no backing child left to reopen with them
        None,
        "Block format 'copy-before-write' used by node 'cbw' does not support reopening files",
        "Block format 'snapshot-access' used by node 'sa' does not support reopening files",
        "Read-only block node 't' cannot support read-write users",
        None,
        "Option 'size' cannot be reset to its default value",
        "Cannot change the option 'node-name'",
        None,
        "Option 'align' cannot be reset to its default value",
        None,
    ]


def _until(steps: list[dict], step: dict) -> Machine:
    """A machine that played ``steps`` up to ``step`` (that very step object) included."""
    vm = Machine()
    for each in steps[:next(i for i, s in enumerate(steps) if s is step) + 1]:
        run_step(vm, each)
    return vm


def test_flags_and_backing_follow_the_reopen():
    assert CACHE_FLAGS["qmp"]["arguments"]["options"][0]["detect-zeroes"] == "on"
    nodes = {n["node-name"]: n for n in _until(OPTIONS, CACHE_FLAGS).qmp("query-named-block-nodes", {"flat": True})}
    assert (nodes["b"]["detect_zeroes"], nodes["b"]["cache"]["no-flush"], nodes["b"]["cache"]["direct"]) == (
        "on", True, False)
    assert DETACH["qmp"]["arguments"]["options"][0]["backing"] is None
    nodes = {n["node-name"]: n for n in _until(OPTIONS, DETACH).qmp("query-named-block-nodes", {"flat": True})}
    assert "backing_file" not in nodes["o"] and nodes["o"]["file"].startswith('json:{"backing": null')
    assert [n["image"]["filename"] for n in nodes.values()].count("a.qcow2") == 0  # the backing node closed


def test_a_failed_read_only_reopen_leaves_the_bitmaps_stored_and_read_only():
    replies = _play(WRITER)
    texts = [_desc(r) for s, r in zip(WRITER, replies) if s.get("qmp", {}).get("execute") in (
        "blockdev-reopen", "block-dirty-bitmap-clear")]
    assert texts == ["Read-only block node 'd' cannot support read-write users",
                     "Bitmap 'b0' is readonly and cannot be modified",  # QEMU 7.2: stored, read-only, on a RW node
                     None, None, None, None, None]
    assert [r for s, r in zip(WRITER, replies) if "write" in s][2] == {
        "ok": False, "stdout": "write failed: Operation not permitted\n", "stderr": "", "returncode": 1}
    flags = [json.loads(r["stdout"])["format-specific"]["data"]["bitmaps"][0]["flags"]
             for s, r in zip(WRITER, replies) if "qemu-img" in s and s["qemu-img"][0] == "info"]
    assert flags == [["auto"], ["in-use", "auto"]]


def test_a_reopen_drains_the_jobs_on_its_node():
    vm = _until(WRITER, WRITER[-4])
    statuses = [e["data"]["status"] for e in vm.events if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == "j2"]
    # blockdev-backup's own drained section, then each reopen's (QEMU: the same)
    assert statuses == ["created", "running"] + ["paused", "running"] * 3


def test_generic_options():
    texts = [_desc(r) for s, r in zip(GENERIC, _play(GENERIC)) if s.get("qmp", {}).get("execute") == "blockdev-reopen"]
    assert texts == [None, None, "Cannot change the option 'force-share'", "Cannot change the option 'force-share'",
                     "Cannot change the option 'locking'", None, "Failed to find node with node-name='zz'"]


def test_another_backing_node_by_reference():
    replies = _play(REBACK)
    reads = [r for s, r in zip(REBACK, replies) if "read" in s]
    assert len(reads) == 1 and "Pattern verification failed" not in reads[0]["stdout"]  # x's data, through o
    files = [{n["node-name"]: n["file"] for n in r["return"]} for s, r in zip(REBACK, replies) if s is NODES]
    assert files[0]["o"] == ('json:{"backing": {"driver": "qcow2", "file": {"driver": "file", "filename": '
                             '"x.qcow2"}}, "driver": "qcow2", "file": {"driver": "file", "filename": "o.qcow2"}}')
    assert files[1]["o"] == "o.qcow2"  # y opened a.qcow2: the image's own backing file again
    texts = [_desc(r) for s, r in zip(REBACK, replies)
             if "qmp" in s and s["qmp"]["execute"] != "query-named-block-nodes"]
    assert "Node 'x' is busy: node is used as backing hd of 'o'" in texts
    assert texts[-2] == "Making 'o' a backing child of 'o' would create a cycle"
    assert texts.count(None) == len(texts) - 2


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["system", "qsd"])
@pytest.mark.parametrize("steps", [BITMAPS, OPTIONS, WRITER, REBACK, GENERIC],
                         ids=["bitmaps", "options", "writer", "reback", "generic"])
def test_blockdev_reopen_as_in_qemu(steps, daemon):
    diffs = check({"name": "reopen", "steps": steps}, daemon)
    assert [d.render() for d in diffs] == []


@pytest.mark.qemu
def test_drained_jobs_pause_and_resume_as_on_the_system_emulator():
    """Pause/resume pairs, which the conformance comparison leaves out, counted here as they come."""
    def statuses(vm) -> list:
        out = []
        for step in WRITER[:len(WRITER) - 3]:
            at = len(vm.events)
            run_step(vm, step)
            if vm.backend != "sim":
                vm.run(until=vm.now + 0.05)  # (the events of the drained section arrive)
            got = [e["data"]["status"] for e in vm.events[at:]
                   if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == "j2"]
            if got:
                out.append(got)
        return out

    with Machine(backend="qemu", daemon="system") as real:
        want = statuses(real)
    assert statuses(Machine()) == want == [["created", "running", "paused", "running"], ["paused", "running"],
                                          ["paused", "running"]]
