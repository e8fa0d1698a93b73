"""block-commit (bitlab.qmp.cmd_commit, bitlab.jobs.commit, bitlab.jobs.mirror): QEMU 7.2's commit jobs.

An active commit (the top is the active layer) is a mirror job of type ``commit`` into the base: ready, then
``job-complete`` switches the top's parents over to the base. A commit below the active layer is the commit
job: a ``commit_top`` filter above the committed node, 512 KiB chunks, and at the end the overlay's backing link
(and the backing file named in its image) on the base. The plain tests assert QEMU 7.2's texts, events and
numbers; the ``qemu`` tests play the same steps on both and compare every reply.
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.conformance.runner import check
from bitlab.errors import QMPError

from .stories import job_events
from .stories import nodes as _nodes
from .stories import play as _play
from .stories import q as _q
from .stories import write as _write

K, M = 1 << 10, 1 << 20
DISK = 64 * M


def _wait(status: str, job: str = "c") -> dict:
    return {"wait-job": {"id": job, "status": status}}


def _file(name: str) -> dict:
    return {"driver": "file", "filename": f"{name}.qcow2", "node-name": f"{name}-file"}


def _chain(*names: str) -> dict:
    """blockdev-add options of the first name over the others, nested as backing nodes."""
    opts: dict | None = None
    for name in reversed(names):
        node = {"driver": "qcow2", "node-name": name, "file": _file(name)}
        if opts is not None:
            node["backing"] = opts
        opts = node
    assert opts is not None
    return opts


def _image(name: str, backing: str | None, writes: list[tuple[int, int, int]]) -> list[dict]:
    """An image (over ``backing``) with data written while it is open alone."""
    create = ["create", "-f", "qcow2"] + (["-b", f"{backing}.qcow2", "-F", "qcow2"] if backing else [])
    steps: list[dict] = [{"qemu-img": [*create, f"{name}.qcow2", "64M"]}]
    if writes:
        steps.append(_q("blockdev-add", {"driver": "qcow2", "node-name": "w", "file": _file(name), "backing": None}))
        steps += [_write("w", offset, length, pattern) for offset, length, pattern in writes]
        steps.append(_q("blockdev-del", {"node-name": "w"}))
    return steps


JOBS = _q("query-block-jobs")
NODES = _q("query-named-block-nodes", {"flat": True})
GRAPH = _q("x-debug-query-block-graph")
BASE = _image("base", None, [(0, M, 0x41), (8 * M, 512 * K, 0x42)])
MID = _image("mid", "base", [(M, M, 0x43), (12 * M, 64 * K, 0x47)])
TOP = _image("top", "mid", [(4 * M, 64 * K, 0x44)])
TWO = [*BASE, *_image("top", "base", [(M, M, 0x43), (12 * M, 64 * K, 0x47)])]
THREE = [*BASE, *MID, *TOP]
BITMAPS = [_q("block-dirty-bitmap-add", {"node": "top", "name": "bt", "granularity": 65536}),
           _q("block-dirty-bitmap-add", {"node": "base", "name": "bb", "granularity": 65536})]
SUMS = [_q("x-debug-block-dirty-bitmap-sha256", {"node": "base", "name": "bb"})]
# (the base's host clusters: where several of an active commit's requests are in flight, the order they end in
# varies in QEMU, and so does where their clusters go (see the mirror's stories); the commit job copies one
# chunk at a time)
OFFLINE = [{"qemu-img": ["info", "--backing-chain", "top.qcow2"]}, {"qemu-img": ["map", "--output=json", "top.qcow2"]}]
BASE_MAP = [{"qemu-img": ["map", "--output=json", "base.qcow2"]}]

# Active commit of a two-image chain: a mirror job of type commit; the base, opened read-only as a backing node,
# is made writable; its bitmap records every cluster the job copies (and a guest write once ready); job-complete
# puts the base where the top was (the top, added by blockdev-add, stays, over the base).
ACTIVE = [
    *TWO, _q("blockdev-add", _chain("top", "base")), *BITMAPS, _write("top", 16 * M, 64 * K, 0x45), NODES,
    _q("block-commit", {"job-id": "c", "device": "top"}),
    _wait("ready"), JOBS, _q("query-jobs"), NODES, GRAPH, *SUMS,
    _write("top", 20 * M, 64 * K, 0x46), {"sleep": 0.3}, JOBS, NODES,
    _q("job-complete", {"id": "c"}), _wait("null"), NODES, GRAPH, *SUMS,
    _q("blockdev-del", {"node-name": "top"}), NODES, _q("blockdev-del", {"node-name": "base"}),
    *OFFLINE,
]

# The ends of an active commit: cancelled while running (throttled), a plain cancel once ready (completed, no
# switch-over), forced; auto-finalize off. The base stays writable after each.
ACTIVE_CANCEL = [
    *TWO, _q("blockdev-add", _chain("top", "base")), *BITMAPS,
    _q("block-commit", {"job-id": "c", "device": "top", "speed": 512 * K}), {"sleep": 0.5}, JOBS,
    _q("block-job-cancel", {"device": "c"}), _wait("null"), NODES,
    _q("block-commit", {"job-id": "c", "device": "top"}), _wait("ready"),
    _q("block-job-cancel", {"device": "c"}), _wait("null"), NODES,
    _q("block-commit", {"job-id": "c", "device": "top"}), _wait("ready"),
    _q("block-job-cancel", {"device": "c", "force": True}), _wait("null"), NODES,
    _q("block-commit", {"job-id": "c", "device": "top", "auto-finalize": False, "auto-dismiss": False}),
    _wait("ready"), _q("job-complete", {"id": "c"}), _wait("pending"), JOBS,
    _q("job-finalize", {"id": "c"}), _wait("concluded"), JOBS, _q("job-dismiss", {"id": "c"}), NODES, *SUMS,
]

# Active commit of three images: the middle one is the job's intermediate node; after the switch-over the nested
# nodes nobody holds are gone.
ACTIVE_THREE = [
    *THREE, _q("blockdev-add", _chain("top", "mid", "base")), *BITMAPS,
    _q("block-commit", {"job-id": "c", "device": "top"}), _wait("ready"), JOBS, NODES, GRAPH, *SUMS,
    _q("job-complete", {"id": "c"}), _wait("null"), NODES, GRAPH,
    _q("blockdev-del", {"node-name": "top"}), NODES,
    *OFFLINE,
]

# A commit below the active layer: the commit job (commit_top above mid, 512 KiB chunks, len = the disk), then
# top's backing link and the backing file its image names go to the base; the base is read-only again.
INTERMEDIATE = [
    *THREE, _q("blockdev-add", _chain("top", "mid", "base")), *BITMAPS,
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "base-node": "base", "speed": M}),
    {"sleep": 0.6}, JOBS, _q("query-jobs"), NODES, GRAPH,
    _q("block-job-set-speed", {"device": "c", "speed": 0}), _wait("null"), NODES, GRAPH, *SUMS,
    _q("blockdev-del", {"node-name": "top"}),
    *OFFLINE, *BASE_MAP,
]

# The same by file names, a backing file name of the caller's, a cancel, auto-finalize off.
INTERMEDIATE_NAMES = [
    *THREE, _q("blockdev-add", _chain("top", "mid", "base")),
    _q("block-commit", {"job-id": "c", "device": "top", "top": "mid.qcow2", "base": "base.qcow2", "speed": M}),
    {"sleep": 0.6}, JOBS, _q("block-job-cancel", {"device": "c"}), _wait("null"), NODES,
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "backing-file": "other-name.qcow2",
                        "auto-finalize": False}), _wait("pending"), JOBS, NODES,
    _q("job-finalize", {"id": "c"}), _wait("null"), NODES,
    _q("blockdev-del", {"node-name": "top"}),
    {"qemu-img": ["info", "top.qcow2"]},
]

# A commit job left concluded (auto-dismiss off): its links hold mid (and keep top busy) until it is dismissed.
CONCLUDED = [
    *THREE, _q("blockdev-add", _chain("top", "mid", "base")),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "auto-dismiss": False}),
    _wait("concluded"), NODES, GRAPH, JOBS, _q("blockdev-del", {"node-name": "top"}),
    _q("job-dismiss", {"id": "c"}), NODES, GRAPH, _q("blockdev-del", {"node-name": "top"}),
]

# Command errors, in QEMU's order of checks.
ERRORS = [
    *THREE, *_image("lone", None, []),
    _q("blockdev-add", _chain("top", "mid", "base")), _q("blockdev-add", _chain("lone")),
    _q("block-commit", {"job-id": "c", "device": "nope"}),
    _q("block-commit", {"job-id": "c", "device": "mid"}),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "top": "mid.qcow2"}),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "nope"}),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "lone"}),
    _q("block-commit", {"job-id": "c", "device": "top", "top": "nope.qcow2"}),
    _q("block-commit", {"job-id": "c", "device": "top", "base-node": "base", "base": "base.qcow2"}),
    _q("block-commit", {"job-id": "c", "device": "top", "base-node": "nope"}),
    _q("block-commit", {"job-id": "c", "device": "top", "base-node": "lone"}),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "base-node": "top"}),
    _q("block-commit", {"job-id": "c", "device": "top", "base": "nope.qcow2"}),
    _q("block-commit", {"job-id": "c", "device": "lone"}),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "base"}),
    _q("block-commit", {"job-id": "c", "device": "top", "backing-file": "x.qcow2"}),
    _q("block-commit", {"device": "top"}),
    _q("block-commit", {"job-id": "#c", "device": "top"}),
    _q("block-commit", {"device": "top", "top-node": "mid"}),
    _q("block-commit", {"job-id": "#c", "device": "top", "top-node": "mid"}),
    _q("block-commit", {"job-id": "c", "device": "top", "speed": -1}),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "speed": -1}),
    _q("block-commit", {"job-id": "c", "device": "top", "filter-node-name": "base"}),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "filter-node-name": "#f"}),
    NODES,
    _q("block-commit", {"job-id": "c", "device": "top"}), _wait("ready"),
    _q("block-commit", {"job-id": "d", "device": "top", "top-node": "mid"}),
    _q("block-commit", {"job-id": "c", "device": "lone"}),
    _q("blockdev-backup", {"job-id": "b", "device": "top", "target": "lone", "sync": "full"}),
    _q("blockdev-del", {"node-name": "top"}),
    _q("job-complete", {"id": "c"}),
    _q("job-cancel", {"id": "c"}), _wait("null"),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "auto-finalize": False}),
    _wait("pending"), _q("job-complete", {"id": "c"}), _q("block-commit", {"job-id": "d", "device": "top"}),
    _q("block-commit", {"job-id": "d", "device": "top", "top-node": "mid"}), NODES, GRAPH,
    _q("job-cancel", {"id": "c"}), _wait("null"), NODES,
]


# The snapshot-based backup of old: an external snapshot of a -drive device (its image becomes the read-only
# backing file), the guest writes into the overlay, then an active commit (named after the device) puts the
# device back on its image. The persistent bitmap on the image records the commit's writes; the overlay's
# implicit nodes close.
DRIVE = [
    {"hmp": 'qemu-io drive0 "write -P 0x41 0 1M"'},
    _q("block-dirty-bitmap-add", {"node": "drive0", "name": "b0", "granularity": 65536, "persistent": True}),
    {"hmp": 'qemu-io drive0 "write -P 0x42 4M 64k"'},
    _q("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "ov.qcow2", "format": "qcow2"}),
    {"hmp": 'qemu-io drive0 "write -P 0x43 8M 64k"'}, _q("query-block"),
    _q("block-commit", {"device": "drive0"}), _wait("ready", "drive0"), JOBS, _q("query-block"),
    {"hmp": 'qemu-io drive0 "write -P 0x44 12M 64k"'}, {"sleep": 0.3}, JOBS,
    _q("block-job-complete", {"device": "drive0"}), _wait("null", "drive0"), _q("query-block"), NODES,
    _q("x-debug-block-dirty-bitmap-sha256", {"node": "drive0", "name": "b0"}),
    {"qemu-img": ["info", "-U", "ov.qcow2"]}, {"qemu-img": ["map", "--output=json", "-U", "ov.qcow2"]},
    {"hmp": 'qemu-io drive0 "write -P 0x45 16M 64k"'}, _q("query-block"),
]
DRIVES = [{"id": "drive0", "file": "d0.qcow2", "format": "qcow2", "size": "64M"}]


def _dbg_base(*above: str, event: str = "write_aio") -> list[dict]:
    """The base on its own, over a blkdebug node failing one request, then the images ``above`` over it (a
    backing node given by options would be opened with the file name its overlay names, which blkdebug's image
    cannot take)."""
    base = {"driver": "qcow2", "node-name": "base", "file": {
        "driver": "blkdebug", "node-name": "base-dbg", "image": _file("base"),
        "inject-error": [{"event": event, "errno": 5, "once": True}]}}
    opts: dict | str = "base"
    for name in reversed(above):
        opts = {**_chain(name), "backing": opts}
    return [_q("blockdev-add", base), _q("blockdev-add", opts)]


DEL = [_q("blockdev-del", {"node-name": "top"}), _q("blockdev-del", {"node-name": "base"})]

# Errors while the jobs copy: a write into the base fails once (report, stop then resume, ignore), for an
# active commit (of one extent: where several requests are in flight, which of them QEMU writes first varies)
# and for the commit job.
JOB_ERRORS = [
    *BASE, *_image("top", "base", [(4 * M, 64 * K, 0x44)]),
    *_dbg_base("top"), _q("block-commit", {"job-id": "c", "device": "top"}), _wait("null"), NODES, *DEL,
    *_dbg_base("top"), _q("block-commit", {"job-id": "c", "device": "top", "on-error": "stop"}), _wait("paused"),
    JOBS, _q("block-job-resume", {"device": "c"}), _wait("ready"), _q("job-cancel", {"id": "c"}), _wait("null"),
    *DEL, *MID, *TOP,
    *_dbg_base("top", "mid"), _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid"}),
    _wait("null"), NODES, *DEL,
    *_dbg_base("top", "mid"),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "on-error": "stop"}), _wait("paused"),
    JOBS, _q("block-job-resume", {"device": "c"}), _wait("null"), NODES, *DEL,
    *_dbg_base("top", "mid"),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "on-error": "ignore"}), _wait("null"),
    NODES, *DEL,
    {"qemu-img": ["map", "--output=json", "base.qcow2"]}, {"qemu-img": ["info", "top.qcow2"]},
]

# Pause, resume and speed of the commit job: paused while it sleeps (the rate limit's wait), it goes on with the
# next chunk at once when resumed.
PAUSE = [
    *THREE, _q("blockdev-add", _chain("top", "mid", "base")),
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid", "speed": 256 * K}), {"sleep": 0.5},
    JOBS, _q("job-pause", {"id": "c"}), JOBS, {"sleep": 1}, JOBS, _q("job-resume", {"id": "c"}), {"sleep": 0.1}, JOBS,
    {"sleep": 1}, JOBS, _q("block-job-set-speed", {"device": "c", "speed": 0}), _wait("null"), NODES,
]

# A base smaller than the top grows (both jobs); a base added on its own, read-only, is made writable for the
# job (and read-only again after the commit job, not after an active commit).
SIZES = [
    *_image("base", None, [(0, M, 0x41)]), {"qemu-img": ["resize", "base.qcow2", "32M"]},
    *_image("mid", "base", [(40 * M, 64 * K, 0x42)]), *_image("top", "mid", [(48 * M, 64 * K, 0x43)]),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "base", "file": _file("base"), "read-only": True}),
    _q("blockdev-add", {**_chain("top", "mid"), "backing": {**_chain("mid"), "backing": "base"}}), NODES,
    _q("block-commit", {"job-id": "c", "device": "top", "top-node": "mid"}), _wait("null"), NODES,
    _q("block-commit", {"job-id": "c", "device": "top"}), _wait("ready"), NODES,
    _q("job-complete", {"id": "c"}), _wait("null"), NODES,
    _q("blockdev-del", {"node-name": "top"}), _q("blockdev-del", {"node-name": "base"}),
    {"qemu-img": ["info", "base.qcow2"]}, {"qemu-img": ["map", "--output=json", "base.qcow2"]},
]


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
@pytest.mark.parametrize("steps", [ACTIVE, ACTIVE_CANCEL, ACTIVE_THREE, INTERMEDIATE, INTERMEDIATE_NAMES, ERRORS,
                                   CONCLUDED],
                         ids=["active", "active-cancel", "active-three", "intermediate", "intermediate-names",
                              "errors", "concluded"])
def test_commit_as_in_qemu(steps, daemon):
    diffs = check({"name": "commit", "steps": steps}, daemon)
    assert not diffs, "\n".join(str(d) for d in diffs)


@pytest.mark.qemu
def test_snapshot_then_active_commit_of_a_device_as_in_qemu():
    diffs = check({"name": "commit-drive", "drives": DRIVES, "steps": DRIVE}, "system")
    assert not diffs, "\n".join(str(d) for d in diffs)


@pytest.mark.qemu
@pytest.mark.parametrize("steps", [JOB_ERRORS, PAUSE, SIZES], ids=["job-errors", "pause", "sizes"])
def test_commit_errors_pauses_sizes_as_in_qemu(steps):
    diffs = check({"name": "commit", "steps": steps}, "qsd")
    assert not diffs, "\n".join(str(d) for d in diffs)


def _events(vm: Machine, job: str = "c") -> list:
    return job_events(vm, job, with_type=True)


def _count(vm: Machine, node: str, name: str) -> int:
    return next(b["count"] for b in _nodes(vm)[node]["dirty-bitmaps"] if b.get("name") == name)


def test_an_active_commit_is_a_mirror_into_the_base():
    """QEMU 7.2 (both daemons): ready with what the top allocates copied (1 MiB + 64 KiB + the guest's 64 KiB),
    the base writable and its bitmap dirty where the job wrote; job-complete puts the base in the top's place."""
    vm = _play(ACTIVE[:ACTIVE.index(_wait("ready")) + 1])
    assert _events(vm) == ["created", "running", "ready", ("BLOCK_JOB_READY", "commit", 1179648, 1179648, None)]
    nodes = _nodes(vm)
    top = next(n for n in nodes.values() if n["drv"] == "mirror_top")
    assert top["file"] == "top.qcow2" and not top["ro"] and not nodes["base"]["ro"]
    assert _count(vm, "base", "bb") == 1179648 and _count(vm, "top", "bt") == 64 * K
    vm.write("top", 20 * M, 64 * K)
    vm.run(until=vm.now + 0.3)
    vm.qmp("job-complete", {"id": "c"})
    vm.run()
    assert _events(vm)[4:] == ["waiting", "pending", ("BLOCK_JOB_COMPLETED", "commit", 1245184, 1245184, None),
                               "concluded", "null"]
    nodes = _nodes(vm)
    assert [n["drv"] for n in nodes.values()] == ["qcow2", "file"] * 2  # the filter is gone
    assert not nodes["base"]["ro"] and _count(vm, "base", "bb") == 1245184
    assert nodes["top"]["image"]["backing-filename"] == "base.qcow2"  # the top stays (blockdev-add holds it)


def test_the_commit_job_copies_in_chunks_and_relinks_the_overlay():
    """Below the active layer: the commit job, len the whole disk, commit_top (read-only) above mid while it
    runs; then top's backing node and the backing file its image names are the base, mid is gone, and the base
    is read-only again."""
    steps = INTERMEDIATE[:INTERMEDIATE.index(JOBS) + 1]
    vm = _play(steps)
    job = vm.qmp("query-block-jobs")[0]
    assert (job["type"], job["len"], job["speed"], job["busy"]) == ("commit", DISK, M, False)
    nodes = _nodes(vm)
    (filt,) = [n for n in nodes.values() if n["drv"] == "commit_top"]
    assert filt["ro"] and filt["file"] == "mid.qcow2" and not nodes["base"]["ro"]
    vm.qmp("block-job-set-speed", {"device": "c", "speed": 0})
    vm.run()
    assert _events(vm) == ["created", "running", "waiting", "pending",
                           ("BLOCK_JOB_COMPLETED", "commit", DISK, DISK, None), "concluded", "null"]
    nodes = _nodes(vm)
    assert "mid" not in nodes and nodes["base"]["ro"]
    assert nodes["top"]["backing_file"] == "base.qcow2" and _count(vm, "base", "bb") == M + 64 * K


def test_block_commit_errors_in_qemus_order():
    from bitlab.conformance.steps import run_step

    vm = Machine()
    texts = []
    for step in ERRORS[:ERRORS.index(NODES)]:
        reply = run_step(vm, step)
        if isinstance(reply, dict) and "error" in reply:
            texts.append((reply["error"]["class"], reply["error"]["desc"]))
    assert texts[0] == ("DeviceNotFound", "Device 'nope' not found")
    assert [desc for _, desc in texts[1:]] == [
        "Need a root block node", "'top-node' and 'top' are mutually exclusive",
        "Cannot find device='' nor node-name='nope'", "'lone' is not in this backing file chain",
        "Top image file nope.qcow2 not found", "'base-node' and 'base' are mutually exclusive",
        "Cannot find device='' nor node-name='nope'", "'lone' is not in this backing file chain",
        "'top' is not in this backing file chain", "Can't find 'nope.qcow2' in the backing chain",
        "cannot commit an image into itself", "cannot commit an image into itself",
        "'backing-file' specified, but 'top' is the active layer", "Invalid job ID ''", "Invalid job ID '#c'",
        "Invalid job ID ''", "Invalid job ID '#c'", "Parameter 'speed' expects a non-negative value",
        "Parameter 'speed' expects a non-negative value", "Duplicate nodes with node-name='base'",
        "Invalid node-name: '#f'",
    ]
    # the commit job is created before its speed and its filter's name are checked (created, then null)
    assert _events(vm) == ["created", "null"] * 3


def test_a_snapshot_committed_back_keeps_the_devices_bitmap_recording():
    vm = Machine(daemon="system")
    vm.add_drive("drive0", "64M", file="d0.qcow2")
    for step in DRIVE[:DRIVE.index(_wait("ready", "drive0")) + 1]:
        run_step_ok(vm, step)
    (dev,) = vm.qmp("query-block")
    assert dev["inserted"]["node-name"].startswith("#block") and dev["inserted"]["drv"] == "qcow2"
    vm.qmp("block-job-complete", {"device": "drive0"})
    vm.run()
    (dev,) = vm.qmp("query-block")
    assert dev["inserted"]["file"] == "d0.qcow2" and "backing_file" not in dev["inserted"]
    (b0,) = dev["inserted"]["dirty-bitmaps"]
    assert (b0["name"], b0["count"], b0["recording"]) == ("b0", 2 * 64 * K, True)  # 4M, then the commit's 8M


def run_step_ok(vm: Machine, step: dict) -> None:
    from bitlab.conformance.steps import run_step

    run_step(vm, step)


def test_random_commit_episodes():
    """``--focus commit``: reproducible, and the episodes hold what they are there for."""
    from bitlab.conformance.gen_commit import commit_scenario
    from bitlab.conformance.runner import play

    assert commit_scenario(3, 4) == commit_scenario(3, 4) != commit_scenario(3, 5)
    steps = [s for i in range(30) for s in commit_scenario(3, i)["steps"]]
    commits = [s["qmp"]["arguments"] for s in steps if s.get("qmp", {}).get("execute") == "block-commit"]
    assert any("top-node" in a for a in commits) and any("top-node" not in a for a in commits)
    assert any("base-node" in a for a in commits) and any(a.get("auto-finalize") is False for a in commits)
    executes = {s["qmp"]["execute"] for s in steps if "qmp" in s}
    assert {"job-complete", "block-job-cancel", "job-cancel", "job-finalize"} <= executes
    outcomes = [play(commit_scenario(3, i), "sim") for i in range(8)]
    assert all(out.error is None for out in outcomes)
    ends = {(ev["event"], ev["data"]["type"]) for out in outcomes for ev in out.events
            if ev["event"].startswith("BLOCK_JOB_")}
    assert {("BLOCK_JOB_READY", "commit"), ("BLOCK_JOB_COMPLETED", "commit"), ("BLOCK_JOB_CANCELLED", "commit")} <= ends


def test_an_active_commits_guest_writes_dirty_granules_apart(monkeypatch):
    """As the mirror episodes': a ready active commit's guest writes each dirty 64 KiB granules (the base's
    clusters) no earlier write of the ready phase dirtied, as a second write into one races the job's copy of it on
    QEMU; the other draws stay (a write left out takes nothing from the random stream)."""
    from bitlab.conformance import gen_commit

    def ready_writes(scenario: dict) -> list[list[tuple[int, int]]]:
        out, phase = [], None
        for step in scenario["steps"]:
            if step.get("wait-job", {}).get("status") == "ready":
                phase = []
                out.append(phase)
            elif "write" in step and phase is not None:
                w = step["write"]
                phase.append((w["offset"] >> 16, (w["offset"] + w["length"] - 1) >> 16))
            elif "qmp" in step:
                phase = None
        return out

    kept = [ready_writes(gen_commit.commit_scenario(7, i)) for i in range(100, 140)]
    for phases in kept:
        for phase in phases:
            assert all(b < c or d < a for i, (a, b) in enumerate(phase) for c, d in phase[:i])
    monkeypatch.setattr(gen_commit, "_apart", lambda writes, granularity: writes)
    drawn = [ready_writes(gen_commit.commit_scenario(7, i)) for i in range(100, 140)]
    assert kept != drawn and [len(p) for p in kept] == [len(p) for p in drawn]  # (as many ready phases each)
    assert all(set(k) <= set(d) for ks, ds in zip(kept, drawn) for k, d in zip(ks, ds))


@pytest.mark.qemu
def test_conformance_report_focused_on_commit():
    from bitlab.conformance.report import report

    text, bad = report(5, 23201, focus="commit")
    assert bad == 0 and "scenarios run                5" in text


def test_io_held_by_a_finished_job_is_refused():
    """A mirror or active commit that has finished (here pending: auto-finalize off) keeps its source drained
    until its switch-over; QEMU holds a guest's request until then (where it lands depends on the switch-over):
    bitlab refuses it, naming the job, instead of writing where QEMU would not."""
    vm = _play([*TWO, _q("blockdev-add", _chain("top", "base")),
                _q("block-commit", {"job-id": "c", "device": "top", "auto-finalize": False}), _wait("ready"),
                _q("job-complete", {"id": "c"}), _wait("pending")])
    for io in (lambda: vm.write("top", 0, 4096), lambda: vm.read("top", 0, 4096)):
        with pytest.raises(QMPError, match="bitlab does not simulate I/O while job 'c' \\(pending\\) keeps 'top' "
                                           "drained: QEMU holds the request until the job is finalized"):
            io()
    vm.write("base", 0, 4096)  # (below the source: not drained)
    vm.qmp("job-finalize", {"id": "c"})
    vm.run()
    assert vm.write("top", 0, 4096).startswith("wrote 4096/4096")
