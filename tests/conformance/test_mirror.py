"""The mirror job (bitlab.jobs.mirror, bitlab.qmp.cmd_mirror): blockdev-mirror as QEMU 7.2 runs it.

The plain tests assert QEMU 7.2's texts, events and numbers (measured on qemu-storage-daemon and the system
emulator: tools/probe_mirror.py); the ``qemu`` tests play the same steps on both and compare every reply.
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.conformance.runner import check

from .stories import job_events
from .stories import play as _play
from .stories import q as _q
from .stories import write as _write

K, M = 1 << 10, 1 << 20
DISK = 64 * M


def _img(name: str, size: str = "64M") -> dict:
    return {"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", size]}


def _qcow2(name: str, **opts: object) -> dict:
    return {"driver": "qcow2", "node-name": name,
            "file": {"driver": "file", "filename": f"{name}.qcow2", "node-name": f"{name}-file"}, **opts}


def _mirror(**args: object) -> dict:
    return _q("blockdev-mirror", {"job-id": "j", "device": "s", "target": "t", "sync": "full", **args})


def _wait(status: str, job: str = "j") -> dict:
    return {"wait-job": {"id": job, "status": status}}


JOBS = _q("query-block-jobs")
NODES = _q("query-named-block-nodes", {"flat": True})
# (one data extent: several data requests in flight end in an order that varies in QEMU from run to run, and so
# do the target's host clusters they allocate)
SETUP = [_img("s"), _img("t"), _q("blockdev-add", _qcow2("s")), _q("blockdev-add", _qcow2("t")), _write("s", 0, M)]
DROP = [_q("blockdev-del", {"node-name": "t"}), _q("blockdev-del", {"node-name": "s"}),
        {"qemu-img": ["map", "--output=json", "t.qcow2"]}, {"qemu-img": ["compare", "s.qcow2", "t.qcow2"]}]

# A full mirror of a qcow2 node with data into an empty one: ready with the whole disk copied (blockdev-mirror
# zeroes the target: len 64 MiB), the job's anonymous bitmap on the source, the implicit mirror_top filter above
# it; job-complete switches over (the source's parents, none here, go to the target); the target's map has
# zero clusters where the source has none.
BASIC = [
    *SETUP,
    _q("block-dirty-bitmap-add", {"node": "s", "name": "b0", "granularity": 65536}),
    _mirror(),
    _wait("ready"), JOBS, _q("query-jobs"), NODES, _q("x-debug-query-block-graph"),
    _write("s", 2 * M, M, 0x44), {"sleep": 0.2}, JOBS, NODES,
    _q("job-complete", {"id": "j"}),
    _wait("null"), NODES, _q("x-debug-query-block-graph"),
    *DROP,
]

# The other ends: cancelled while running (throttled: one 16 MiB chunk done), a plain block-job-cancel once
# ready (completed, no switch-over), a forced one and job-cancel (cancelled); auto-finalize off.
CANCEL = [
    *SETUP,
    _mirror(speed=M), {"sleep": 0.5}, JOBS,
    _q("block-job-cancel", {"device": "j"}), _wait("null"),
    _mirror(), _wait("ready"),
    _q("block-job-cancel", {"device": "j"}), _wait("null"), NODES,
    _mirror(), _wait("ready"),
    _q("block-job-cancel", {"device": "j", "force": True}), _wait("null"),
    _mirror(), _wait("ready"),
    _q("job-cancel", {"id": "j"}), _wait("null"),
    _mirror(**{"auto-finalize": False, "auto-dismiss": False}), _wait("ready"),
    _q("job-complete", {"id": "j"}), _wait("pending"), JOBS, NODES,
    _q("job-finalize", {"id": "j"}), _wait("concluded"), JOBS,
    _q("job-dismiss", {"id": "j"}),
    *DROP,
]

# quit with a ready mirror: QEMU's exit cancels it by force (the switch-over never happens).
QUIT = [*SETUP, _mirror(), _wait("ready"), _q("quit")]

# Pause, standby, speed; job-complete while paused waits for the resume.
PAUSE = [
    *SETUP,
    _mirror(speed=M), {"sleep": 0.5},
    _q("job-pause", {"id": "j"}), JOBS, _q("job-pause", {"id": "j"}),
    _q("job-resume", {"id": "j"}), JOBS,
    _q("block-job-set-speed", {"device": "j", "speed": 0}), _wait("ready"),
    _q("block-job-pause", {"device": "j"}), JOBS,
    _q("block-job-set-speed", {"device": "j", "speed": 4096}),
    _q("job-complete", {"id": "j"}), {"sleep": 0.3}, JOBS,
    _q("block-job-resume", {"device": "j"}), _wait("null"),
    *DROP,
]

# Command errors, in QEMU's order of checks.
ERRORS = [
    *SETUP, _img("u", "32M"), _q("blockdev-add", _qcow2("u")),
    _img("o"), _q("blockdev-add", {**_qcow2("o"), "backing": "t"}),
    _q("blockdev-mirror", {"job-id": "j", "device": "nope", "target": "t", "sync": "full"}),
    _q("blockdev-mirror", {"job-id": "j", "device": "s", "target": "nope", "sync": "full"}),
    _q("blockdev-mirror", {"job-id": "j", "device": "s", "target": "s", "sync": "full"}),
    _q("blockdev-mirror", {"job-id": "j", "device": "t", "target": "s", "sync": "full"}),
    _mirror(target="o", granularity=1000), _mirror(target="o", granularity=256),
    _mirror(target="o", granularity=128 * M),
    _mirror(target="o", **{"buf-size": -1}),
    _mirror(target="o", sync="incremental"), _mirror(target="o", sync="bitmap"),
    _mirror(target="o", bitmap="b0"),
    _mirror(target="o", **{"job-id": "#x"}),
    _q("blockdev-mirror", {"device": "s", "target": "o", "sync": "full"}),
    _mirror(target="o", **{"filter-node-name": "t"}), _mirror(target="o", **{"filter-node-name": "#f"}),
    _mirror(target="o", replaces="nope"), _mirror(target="o", replaces="t"),
    _mirror(target="o", speed=-1),
    _mirror(target="u"), _wait("null"),
    _mirror(target="o"), _wait("ready"),
    _mirror(**{"job-id": "k"}), _mirror(target="o", **{"job-id": "k"}),
    _q("blockdev-backup", {"job-id": "k", "device": "s", "target": "t", "sync": "full"}),
    _q("blockdev-del", {"node-name": "s"}), _q("blockdev-del", {"node-name": "o"}),
    _q("job-finalize", {"id": "j"}), _q("job-dismiss", {"id": "j"}),
    _q("job-complete", {"id": "nope"}), _q("block-job-complete", {"device": "nope"}),
    _q("job-cancel", {"id": "j"}), _wait("null"),
    _mirror(speed=M), {"sleep": 0.1},
    _q("job-complete", {"id": "j"}), _q("block-job-complete", {"device": "j"}),
    _q("job-cancel", {"id": "j"}), _wait("null"),
]


# A -drive device mirrored by drive-mirror into a new image: the job is named after the device, copies what is
# allocated (a new qcow2 reads as zeroes: no zeroing), and after the switch-over the device is on the new node;
# the old implicit nodes are closed, and the bitmap on them is gone.
DRIVE = [
    # (a new image over a file QEMU has open: raw_co_create's write lock, for qemu-img and the commands alike)
    {"qemu-img": ["create", "-f", "qcow2", "d1.qcow2", "64M"]},
    _q("drive-mirror", {"device": "drive0", "target": "d1.qcow2", "format": "qcow2", "sync": "full"}),
    _q("drive-backup", {"device": "drive0", "target": "d1.qcow2", "format": "qcow2", "sync": "full"}),
    _q("drive-mirror", {"device": "drive0", "target": "d0.qcow2", "sync": "full"}),
    {"hmp": 'qemu-io drive0 "write -P 0x41 0 1M"'},
    _q("block-dirty-bitmap-add", {"node": "drive0", "name": "b0", "granularity": 65536}),
    {"hmp": 'qemu-io drive0 "write -P 0x42 4M 64k"'},
    _q("drive-mirror", {"device": "drive0", "target": "m.qcow2", "format": "qcow2", "sync": "full",
                        "mode": "absolute-paths"}),
    _wait("ready", "drive0"), _q("query-block"),
    {"hmp": 'qemu-io drive0 "write -P 0x43 8M 64k"'}, {"sleep": 0.3}, JOBS,
    _q("block-job-complete", {"device": "drive0"}), _wait("null", "drive0"),
    _q("query-block"), NODES,
    {"hmp": 'qemu-io drive0 "write -P 0x44 12M 64k"'},
    _q("block-dirty-bitmap-add", {"node": "drive0", "name": "b1", "granularity": 65536}),
    _q("query-block"),
]
DRIVES = [{"id": "drive0", "file": "d0.qcow2", "format": "qcow2", "size": "64M"},
          {"id": "drive1", "file": "d1.qcow2", "format": "qcow2", "size": "64M"}]

# sync top and none over a backing chain: top copies what the overlay allocates, none only what the guest
# writes during the job; drive-mirror gives its new image the source's backing node as it completes.
SYNC = [
    _img("b"), _q("blockdev-add", _qcow2("b")), _write("b", 0, M), _write("b", 3 * M, 64 * K, 0x42),
    _q("blockdev-del", {"node-name": "b"}),
    {"qemu-img": ["create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "s.qcow2", "64M"]},
    _img("t"), _img("u"),
    _q("blockdev-add", _qcow2("s")), _q("blockdev-add", _qcow2("t")), _q("blockdev-add", _qcow2("u")),
    _write("s", M, M, 0x43),
    _mirror(sync="top"), _wait("ready"), JOBS, _q("job-cancel", {"id": "j"}), _wait("null"),
    _mirror(sync="none", target="u"), _wait("ready"),
    _write("s", M, 4 * K, 0x45), {"sleep": 0.3}, JOBS,  # (one request: two in flight end in varying order)
    _q("job-complete", {"id": "j"}), _wait("null"), NODES,
    _q("drive-mirror", {"job-id": "k", "device": "t", "target": "n.qcow2", "sync": "top"}),
    _wait("ready", "k"), _q("job-complete", {"id": "k"}), _wait("null", "k"), NODES,
    {"qemu-img": ["map", "--output=json", "-U", "u.qcow2"]},
    {"qemu-img": ["info", "-U", "n.qcow2"]},
    # a new image naming the source as its backing file, not opened, of 64 KiB clusters, mirrored at 4 KiB
    # granularity: a copy covers the target's whole cluster (mirror_cow_align): a 4 KiB write counts 64 KiB
    _q("drive-mirror", {"job-id": "c", "device": "s", "target": "c.qcow2", "sync": "none", "granularity": 4096}),
    _wait("ready", "c"), _write("s", 5 * M + 4 * K, 4 * K, 0x46), {"sleep": 0.3}, JOBS,
    _q("block-job-cancel", {"device": "c"}), _wait("null", "c"),
]


# copy-mode write-blocking: once the job has marked its first pass, a guest write through the filter is written
# to the target as well before it completes; its granules already dirty (QEMU 7.2's bitmap records the write
# itself first) keep an unaligned head or tail for the background copy. len and offset grow at once.
ACTIVE = [
    *SETUP,
    _mirror(**{"copy-mode": "write-blocking"}, speed=M), {"sleep": 0.5}, JOBS,
    _write("s", 40 * M, 64 * K, 0x51), JOBS,
    _q("block-job-set-speed", {"device": "j", "speed": 0}), _wait("ready"), JOBS,
    _write("s", 2 * M, 64 * K, 0x52), JOBS,
    _write("s", 3 * M + 4 * K, 4 * K, 0x53), JOBS,
    _write("s", 4 * M + 32 * K, M, 0x54), JOBS,
    {"zero": {"node": "s", "offset": 6 * M, "length": 128 * K}}, JOBS,
    {"sleep": 0.3}, JOBS,
    _q("job-complete", {"id": "j"}), _wait("null"),
    _q("blockdev-del", {"node-name": "t"}), _q("blockdev-del", {"node-name": "s"}),
    {"qemu-img": ["compare", "s.qcow2", "t.qcow2"]},
]


def _blkdebug(name: str, event: str, iotype: str) -> dict:
    return {"driver": "qcow2", "node-name": name, "file": {
        "driver": "blkdebug", "node-name": f"{name}-dbg",
        "inject-error": [{"event": event, "iotype": iotype, "errno": 5, "once": True}],
        "image": {"driver": "file", "filename": f"{name}.qcow2"}}}


# Errors while the job copies: a source read (report, stop then resume, ignore). The data is in the last
# iteration's chunk: QEMU's offset at the failure is what the requests done by then copied, and where later
# iterations may start before a failed read lands it depends on QEMU's timing (data at the start of the disk:
# 31 MiB in QEMU, 63 MiB in bitlab).
JOB_ERRORS = [
    _img("s"), _img("t"), _q("blockdev-add", _qcow2("s")), _write("s", 63 * M, M),
    _q("blockdev-del", {"node-name": "s"}),
    _q("blockdev-add", _blkdebug("s", "read_aio", "read")), _q("blockdev-add", _qcow2("t")),
    _mirror(), _wait("null"),
    _q("blockdev-del", {"node-name": "s"}), _q("blockdev-add", _blkdebug("s", "read_aio", "read")),
    _mirror(**{"on-source-error": "stop"}), _wait("paused"), JOBS,
    _q("block-job-resume", {"device": "j"}), _wait("ready"), _q("job-cancel", {"id": "j"}), _wait("null"),
    _q("blockdev-del", {"node-name": "s"}), _q("blockdev-add", _blkdebug("s", "read_aio", "read")),
    _mirror(**{"on-source-error": "ignore"}), _wait("ready"), _q("job-complete", {"id": "j"}), _wait("null"),
    _q("blockdev-del", {"node-name": "s"}), _q("blockdev-del", {"node-name": "t"}),
    {"qemu-img": ["compare", "s.qcow2", "t.qcow2"]},
]


def _events(vm: Machine, job: str = "j") -> list:
    return job_events(vm, job)


def test_a_full_mirror_copies_the_whole_disk_and_switches_over():
    vm = _play(BASIC[:11])
    assert _events(vm) == ["created", "running", "ready", ("BLOCK_JOB_READY", DISK, DISK, None)]
    nodes = {n["node-name"]: n for n in vm.qmp("query-named-block-nodes", {"flat": True})}
    top = next(n for n in nodes.values() if n["drv"] == "mirror_top")
    assert top["node-name"].startswith("#block") and top["file"] == "s.qcow2"
    assert top["image"]["format"] == "mirror_top" and top["image"]["cluster-size"] == 65536
    assert nodes["s"]["dirty-bitmaps"][0] == {"recording": True, "persistent": False, "busy": False,
                                              "granularity": 65536, "count": 0}
    vm.write("s", 2 * M, M)
    assert vm.qmp("query-block-jobs")[0]["len"] == DISK  # the job sleeps in ready: 100 ms slices
    vm.run(until=vm.now + 0.2)
    job = vm.qmp("query-block-jobs")[0]
    assert (job["len"], job["offset"], job["ready"], job["status"]) == (DISK + M, DISK + M, True, "ready")
    vm.qmp("job-complete", {"id": "j"})
    vm.run()
    assert _events(vm)[4:] == ["waiting", "pending", ("BLOCK_JOB_COMPLETED", DISK + M, DISK + M, None),
                               "concluded", "null"]
    assert [n["drv"] for n in vm.qmp("query-named-block-nodes", {"flat": True})] == ["qcow2", "file"] * 2


def test_cancel_before_ready_is_cancelled_after_ready_completed_without_switching():
    vm = _play(CANCEL[:14])
    ends = [e for e in _events(vm) if isinstance(e, tuple)]
    assert ends == [("BLOCK_JOB_CANCELLED", DISK, 16 * M, None), ("BLOCK_JOB_READY", DISK, DISK, None),
                    ("BLOCK_JOB_COMPLETED", DISK, DISK, None)]


def test_command_errors_in_qemus_order():
    from bitlab.conformance.steps import run_step

    vm = Machine()
    texts = []
    for step in ERRORS[:28]:
        reply = run_step(vm, step)
        if isinstance(reply, dict) and "error" in reply:
            texts.append(reply["error"]["desc"])
    assert texts == [
        "Cannot find device='nope' nor node-name='nope'", "Cannot find device='nope' nor node-name='nope'",
        "Can't mirror node into itself", "Need a root block node",
        "Parameter 'granularity' expects a power of 2",
        "Parameter 'granularity' expects a value in range [512B, 64MB]",
        "Parameter 'granularity' expects a value in range [512B, 64MB]",
        "Invalid parameter 'buf-size'",
        "Sync mode 'incremental' not supported", "Sync mode 'bitmap' not supported",
        "Parameter 'bitmap' is unexpected",
        "Invalid job ID '#x'", "Invalid job ID ''",
        "Duplicate nodes with node-name='t'", "Invalid node-name: '#f'",
        "Failed to find node with node-name='nope'", "Node 't' is busy: node is used as backing hd of 'o'",
        "Parameter 'speed' expects a non-negative value",
    ]
    assert _events(vm)[-6:] == ["created", "running", "aborting",
                                ("BLOCK_JOB_COMPLETED", 0, 0, "Source and target image have different sizes"),
                                "concluded", "null"]


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
@pytest.mark.parametrize("steps", [BASIC, CANCEL, PAUSE, ERRORS, QUIT], ids=["basic", "cancel", "pause", "errors",
                                                                            "quit"])
def test_mirror_as_in_qemu(steps, daemon):
    diffs = check({"name": "mirror", "steps": steps}, daemon)
    assert not diffs, "\n".join(str(d) for d in diffs)


@pytest.mark.qemu
def test_drive_mirror_of_a_device_as_in_qemu():
    diffs = check({"name": "drive-mirror", "drives": DRIVES, "steps": DRIVE}, "system")
    assert not diffs, "\n".join(str(d) for d in diffs)


@pytest.mark.qemu
@pytest.mark.parametrize("steps", [SYNC, JOB_ERRORS, ACTIVE], ids=["sync", "job-errors", "active"])
def test_mirror_modes_and_errors_as_in_qemu(steps):
    diffs = check({"name": "mirror", "steps": steps}, "qsd")
    assert not diffs, "\n".join(str(d) for d in diffs)


def test_random_mirror_episodes():
    """``--focus mirror``: reproducible, and the episodes hold what they are there for."""
    from bitlab.conformance.gen_mirror import mirror_scenario
    from bitlab.conformance.runner import play

    assert mirror_scenario(3, 4) == mirror_scenario(3, 4) != mirror_scenario(3, 5)
    steps = [s for i in range(40) for s in mirror_scenario(3, i)["steps"]]
    executes = [s["qmp"]["execute"] for s in steps if "qmp" in s]
    assert {"blockdev-mirror", "drive-mirror", "job-complete", "block-job-cancel", "job-cancel"} <= set(executes)
    syncs = {s["qmp"]["arguments"]["sync"] for s in steps if s.get("qmp", {}).get("execute", "").endswith("-mirror")}
    assert syncs == {"full", "top", "none"}
    outcomes = [play(mirror_scenario(3, i), "sim") for i in range(10)]
    assert all(out.error is None for out in outcomes)
    events = [ev["event"] for out in outcomes for ev in out.events]
    assert {"BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"} <= set(events)


def test_a_ready_jobs_guest_writes_dirty_granules_apart():
    """Two guest writes into one granule of a ready job race its copy of it on QEMU: the episodes keep a write
    only where no earlier one of the same ready phase dirtied a granule (random scenario 619900262/231)."""
    from bitlab.conformance.gen_mirror import _apart
    from bitlab.conformance.generator import random_scenario

    def write(offset: int, length: int) -> dict:
        return {"write": {"node": "d0", "offset": offset, "length": length, "pattern": 1}}

    m = 1 << 20
    writes = [write(3522560, m), write(4943872, m), write(6 * m, 4096), write(5 * m + 4096, 4096),
              write(3526656, 512)]
    assert _apart(writes, m) == writes[:1] + writes[2:4]  # (a write left out dirties nothing)
    assert _apart(writes, 64 << 10) == writes[:3]
    steps = random_scenario(619900262, 231)["steps"]
    ready = next(i for i, s in enumerate(steps) if s.get("wait-job", {}).get("status") == "ready")
    assert [s for s in steps[ready + 1:ready + 3] if "write" in s] == [write(3522560, m) | {
        "write": write(3522560, m)["write"] | {"pattern": 115}}]


@pytest.mark.qemu
def test_conformance_report_focused_on_mirror():
    from bitlab.conformance.report import report

    text, bad = report(5, 22031, focus="mirror")
    assert bad == 0 and "scenarios run                5" in text


def test_the_graph_names_the_jobs_target_backend():
    from bitlab.block.xdbg import link_lines
    from bitlab.viz.graph import graph_layout

    vm = _play(BASIC[:8])
    graph = vm.qmp("x-debug-query-block-graph")
    lines = link_lines(graph)
    assert "(job target) -root-> t: takes write; shares unchanged" in lines
    assert any(line.startswith("j -main node-> #block") and line.endswith("takes read; shares read write unchanged")
               for line in lines)
    assert "BlockBackend\n(unnamed: a job target)" in [box.label for box in graph_layout(graph).boxes]


def test_resize_of_a_switched_sources_exported_bitmap_is_sane():
    """QEMU 7.2 aborts here (bdrv_dirty_bitmap_truncate: the bitmap an export moved away by the switch-over still
    holds busy; found by a random scenario); bitlab resizes the node, its bitmaps with it."""
    vm = Machine()
    for name in ("d0", "mt"):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "8M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b1"})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e2", "node-name": "d0", "writable": True, "bitmaps": ["b1"]})
    vm.qmp("blockdev-mirror", {"job-id": "j", "device": "d0", "target": "mt", "sync": "full"})
    vm.run()
    vm.qmp("job-complete", {"id": "j"})
    vm.run()
    assert vm.qmp("query-block-exports") == [{"type": "nbd", "id": "e2", "node-name": "mt", "shutting-down": False}]
    assert vm.qmp("block_resize", {"node-name": "d0", "size": 16 << 20}) == {}
    assert vm.qmp("query-named-block-nodes", {"flat": True})[-2]["image"]["virtual-size"] == 16 << 20
