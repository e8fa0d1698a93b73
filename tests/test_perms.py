"""Block-layer permissions (bitlab/block/perms.py) against qemu-storage-daemon / qemu-system 7.2.

Every case below was played on real QEMU 7.2 (qemu-storage-daemon through QMP, and the system
emulator for devices and HMP ``qemu-io``); the texts are QEMU's. The plain tests play them on
bitlab; the ``qemu`` tests play them on ``Machine(backend="qemu")`` (qemu-storage-daemon, whose
own guest exports stand aside for these commands, and the system emulator).
"""

from __future__ import annotations

import contextlib

import pytest

from bitlab import Machine
from bitlab.errors import QMPError

from .graphs import block_graph, node_edges

M = 1 << 20
NBD = ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})


def qcow2(name: str, image: str, backing: object = None, **extra: object) -> tuple[str, dict]:
    """A qcow2 node over a file node ``<name>F``; ``backing`` a node name, None (no backing) or "auto"."""
    args: dict = {"driver": "qcow2", "node-name": name,
                  "file": {"driver": "file", "filename": image, "node-name": name + "F"}, **extra}
    if backing != "auto":
        args["backing"] = backing
    return "blockdev-add", args


def export(export_id: str, node: str, writable: bool = True) -> tuple[str, dict]:
    return "block-export-add", {"type": "nbd", "id": export_id, "node-name": node, "writable": writable}


def backup(device: str, target: str, job: str = "j", **extra: object) -> tuple[str, dict]:
    return "blockdev-backup", {"device": device, "target": target, "sync": "full", "job-id": job, **extra}


def conflict(node: str, perm: str, required: str, unshared: str) -> str:
    """QEMU's bdrv_a_allow_b text; ``required`` / ``unshared`` are 'user role' pairs."""
    (r_user, r_role), (u_user, u_role) = required.rsplit(" ", 1), unshared.rsplit(" ", 1)
    return (f"Permission conflict on node '{node}': permissions '{perm}' are both required by {r_user} "
            f"(uses node '{node}' as '{r_role}' child) and unshared by {u_user} (uses node '{node}' as '{u_role}' "
            "child).")


BLK = "an unnamed block device root"
SLOW = {"speed": 1, "x-perf": {"max-chunk": 65536}}  # one request, then asleep: the job runs on
F_WRITER_VS_OV = conflict("f", "write", BLK, "node 'ov' backing")
F, OV, T = qcow2("f", "a.qcow2"), qcow2("ov", "b.qcow2", backing="f"), qcow2("t", "c.qcow2")

# (name, steps, the reply of the last step: "ok" or QEMU's error text)
CASES = [
    ("overlay backup, backing written (no parent above the overlay): the job's link",
     [F, OV, T, NBD, export("e", "f"), backup("ov", "t")], F_WRITER_VS_OV),
    ("overlay backup, overlay exported: the filter under the export",
     [F, OV, T, NBD, export("e", "f"), export("e2", "ov"), backup("ov", "t")],
     "Could not replace node: " + F_WRITER_VS_OV),
    ("drive-backup of the overlay",
     [F, OV, NBD, export("e", "f"),
      ("drive-backup", {"device": "ov", "target": "n.qcow2", "sync": "full", "job-id": "j", "format": "qcow2"})],
     F_WRITER_VS_OV),
    ("transaction of one backup",
     [F, OV, T, NBD, export("e", "f"),
      ("transaction", {"actions": [{"type": "blockdev-backup", "data": backup("ov", "t")[1]}]})], F_WRITER_VS_OV),
    ("max-chunk is checked before the job's link",
     [F, OV, T, NBD, export("e", "f"), backup("ov", "t", **{"x-perf": {"max-chunk": 512}})],
     "Required max-chunk (512) is less than backup cluster size (65536)"),
    ("the job id is checked before the job's link",
     [F, OV, T, NBD, export("e", "f"), backup("ov", "t", job="1bad")], "Invalid job ID '1bad'"),
    ("writable export of the backing of an overlay being backed up",
     [F, OV, T, NBD, backup("ov", "t", **SLOW, **{"filter-node-name": "cbw"}), export("e", "f")], F_WRITER_VS_OV),
    ("read-only export of it",
     [F, OV, T, NBD, backup("ov", "t", **SLOW, **{"filter-node-name": "cbw"}), export("e", "f", False)], "ok"),
    ("writable export of the backing of an overlay, no backup", [F, OV, NBD, export("e", "f")], "ok"),
    ("a second overlay over the written node", [F, NBD, export("e", "f"), qcow2("ov", "b.qcow2", backing="f")], "ok"),
    ("qcow2 over an exported file node",
     [("blockdev-add", {"driver": "file", "filename": "a.qcow2", "node-name": "fF"}), NBD, export("e", "fF"),
      ("blockdev-add", {"driver": "qcow2", "node-name": "f", "file": "fF"})],
     conflict("fF", "write", BLK, "node 'f' file")),
    ("writable export of blkdebug under qcow2",
     [("blockdev-add", {"driver": "qcow2", "node-name": "f", "file": {
         "driver": "blkdebug", "node-name": "dbg", "image": {"driver": "file", "filename": "a.qcow2",
                                                             "node-name": "fF"}}}), NBD, export("e", "dbg")],
     conflict("dbg", "write", BLK, "node 'f' file")),
    ("read-only export of the file under blkdebug under qcow2",
     [("blockdev-add", {"driver": "qcow2", "node-name": "f", "file": {
         "driver": "blkdebug", "node-name": "dbg", "image": {"driver": "file", "filename": "a.qcow2",
                                                             "node-name": "fF"}}}), NBD, export("e", "fF", False)],
     conflict("fF", "resize", "node 'dbg' image", BLK)),
    ("raw over null-co, both exported",
     [("blockdev-add", {"driver": "null-co", "node-name": "n", "size": 64 * M}),
      ("blockdev-add", {"driver": "raw", "node-name": "r", "file": "n"}), NBD, export("e", "n"), export("e2", "r")],
     "ok"),
    ("backup target is a qcow2's file",
     [("blockdev-add", {"driver": "file", "filename": "a.qcow2", "node-name": "sF"}), T,
      backup("sF", "tF", **{"filter-node-name": "cbw"})],
     "Could not create node: " + conflict("tF", "resize", "node 't' file", "node 'cbw' target")),
    ("a second qcow2 over a qcow2's file node",
     [qcow2("s", "a.qcow2"), ("blockdev-add", {"driver": "raw", "node-name": "sr", "file": "sF"}),
      ("blockdev-add", {"driver": "raw", "node-name": "sr2", "file": "sF", "read-only": True}),
      ("blockdev-add", {"driver": "qcow2", "node-name": "s2", "file": "sF"})],
     conflict("sF", "write, resize", "node 's' file", "node 's2' file")),
    ("a read-only qcow2 over it",
     [qcow2("s", "a.qcow2"), ("blockdev-add", {"driver": "qcow2", "node-name": "s3", "file": "sF", "read-only": True})],
     conflict("sF", "write, resize", "node 's' file", "node 's3' file")),
    ("backup target read-only",
     [F, qcow2("t", "c.qcow2", **{"read-only": True}), backup("f", "t", **{"filter-node-name": "cbw"})],
     "Could not create node: Block node is read-only"),
    ("backup target is the source of a running backup",
     [F, T, qcow2("u", "b.qcow2"), backup("t", "u", job="j1", **SLOW, **{"filter-node-name": "c1"}),
      backup("f", "t", job="j2", **{"filter-node-name": "c2"})],
     "Could not create node: " + conflict("t", "write", "node 'c2' target", "node 'c1' file")),
    ("two backups to one target",
     [F, T, qcow2("u", "b.qcow2"), backup("f", "t", job="j1", **SLOW, **{"filter-node-name": "c1"}),
      backup("u", "t", job="j2", **{"filter-node-name": "c2"})],
     "Node 't' is busy: block device is in use by block job: backup"),
    ("backup target is the backing of an exported overlay",
     [F, T, qcow2("ov", "b.qcow2", backing="t"), NBD, export("e", "ov"),
      backup("f", "t", **{"filter-node-name": "cbw"})], "ok"),
]


def play(vm, steps: list) -> list[str]:
    for image in ("a.qcow2", "b.qcow2", "c.qcow2"):
        vm.qemu_img("create", "-f", "qcow2", image, "64M")
    out = []
    for name, args in steps:
        reply = vm.execute({"execute": name, "arguments": args})
        out.append(reply["error"]["desc"] if "error" in reply else "ok")
    return out


@pytest.mark.parametrize("name, steps, last", CASES, ids=[case[0] for case in CASES])
def test_permissions_as_qemu(name, steps, last):
    replies = play(Machine(), steps)
    assert replies == ["ok"] * (len(steps) - 1) + [last]


def test_failed_backup_changes_nothing():
    vm = Machine()
    play(vm, [F, OV, T, NBD, export("e", "f"), export("e2", "ov")])
    before = node_edges(vm)
    with pytest.raises(QMPError, match="^GenericError: Could not replace node: Permission conflict"):
        vm.qmp(*backup("ov", "t", **{"filter-node-name": "cbw"}))
    assert node_edges(vm) == before
    assert [e["node-name"] for e in vm.qmp("query-block-exports")] == ["ov", "f"]
    vm.qmp("block-export-del", {"id": "e2"})
    before = node_edges(vm)
    with pytest.raises(QMPError, match="^GenericError: Permission conflict on node 'f'"):
        vm.qmp(*backup("ov", "t", **{"filter-node-name": "cbw"}))  # now the job's link fails
    assert node_edges(vm) == before
    assert "cbw" not in vm.graph.nodes and vm.qmp("query-block-jobs") == []
    assert vm.graph.nodes["ov"].child("backing") is vm.graph.nodes["f"]


def test_failed_blockdev_add_keeps_the_file_node():
    vm = Machine()
    steps = [("blockdev-add", {"driver": "file", "filename": "a.qcow2", "node-name": "fF"}), NBD, export("e", "fF"),
             ("blockdev-add", {"driver": "qcow2", "node-name": "f", "file": "fF"})]
    assert play(vm, steps)[-1].startswith("Permission conflict")
    assert "f" not in vm.graph.nodes and vm.graph.nodes["fF"].parents == 0
    vm.qmp("block-export-del", {"id": "e"})
    vm.qmp(*steps[-1])
    assert vm.graph.nodes["f"].child("file") is vm.graph.nodes["fF"]


# x-debug-query-block-graph on qemu-storage-daemon 7.2: an overlay ov (exported) over f, backed up to t
# by job j through filter cbw; (parent, role, child, perm, shared)
RUNNING_OVERLAY_BACKUP = [
    ("cbw", "file", "ov", ["write", "consistent-read"], ["write-unchanged", "consistent-read"]),
    ("cbw", "target", "t", ["write"], ["write-unchanged", "write", "consistent-read"]),
    ("t", "file", "tF", ["resize", "write", "consistent-read"], ["write-unchanged", "consistent-read"]),
    ("ov", "file", "ovF", ["resize", "write", "consistent-read"], ["write-unchanged", "consistent-read"]),
    ("ov", "backing", "f", ["consistent-read"], ["write-unchanged", "consistent-read"]),
    ("f", "file", "fF", ["resize", "write", "consistent-read"], ["write-unchanged", "consistent-read"]),
]


def test_edge_permissions_as_qemu_computes_them():
    vm = Machine()
    play(vm, [F, OV, T, NBD, export("e2", "ov"), backup("ov", "t", **SLOW, **{"filter-node-name": "cbw"})])
    assert sorted(node_edges(vm)) == sorted(RUNNING_OVERLAY_BACKUP)


def test_read_only_backing_edges():
    """A read-only qcow2 reads its file and shares reads and unchanged writes; a fresh overlay takes nothing."""
    vm = Machine()
    play(vm, [qcow2("f", "a.qcow2", **{"read-only": True}), OV])
    assert sorted(node_edges(vm)) == sorted([
        ("ov", "file", "ovF", ["resize", "write", "consistent-read"], ["write-unchanged", "consistent-read"]),
        ("ov", "backing", "f", [], ["resize", "write-unchanged", "write", "consistent-read"]),
        ("f", "file", "fF", ["consistent-read"], ["write-unchanged", "consistent-read"]),
    ])


# HMP qemu-io (system emulator): a node name gets a BlockBackend of its own, which takes write to write;
# a device's BlockBackend reads only until qemu-io first writes through it.
HMP_CASES = [
    ("write on a read-only node", [qcow2("f", "a.qcow2", **{"read-only": True})], 'qemu-io f "write 0 512"',
     "Block node is read-only\r\n"),
    ("read on a read-only node", [qcow2("f", "a.qcow2", **{"read-only": True})], 'qemu-io f "read 0 512"', ""),
    ("write on a qcow2's file", [F], 'qemu-io fF "write 0 512"',
     conflict("fF", "write", BLK, "node 'f' file") + "\r\n"),
    ("read on a qcow2's file", [F], 'qemu-io fF "read 0 512"', ""),
    ("write on the backing of an overlay being backed up",
     [F, OV, T, backup("ov", "t", **SLOW, **{"filter-node-name": "cbw"})], 'qemu-io f "write 0 512"',
     F_WRITER_VS_OV + "\r\n"),
    ("write on a source being backed up", [F, T, backup("f", "t", **SLOW, **{"filter-node-name": "cbw"})],
     'qemu-io f "write 0 512"', conflict("f", "write", BLK, "node 'cbw' file") + "\r\n"),
    ("read on a source being backed up", [F, T, backup("f", "t", **SLOW, **{"filter-node-name": "cbw"})],
     'qemu-io f "read 0 512"', ""),
]


def _hmp(vm, steps: list, line: str) -> str:
    play(vm, steps)
    return vm.hmp(line)


@pytest.mark.parametrize("name, steps, line, reply", HMP_CASES, ids=[case[0] for case in HMP_CASES])
def test_hmp_qemu_io_permissions(name, steps, line, reply):
    assert _hmp(Machine(), steps, line) == reply


def test_device_takes_write_after_qemu_io_writes():
    """-drive's BlockBackend reads only; after ``qemu-io drive0 write`` it writes too, and a backup of an
    exported overlay over the device's node then conflicts with it."""
    vm = Machine()
    steps = [("blockdev-add", {"driver": "qcow2", "node-name": "ov", "backing": "d0",
                               "file": {"driver": "file", "filename": "b.qcow2"}}), T, NBD, export("e", "ov"),
             backup("ov", "t", **{"filter-node-name": "cbw"})]
    _device_then(vm, steps[:-1])
    vm.qemu_io("drive0", "write 0 512")
    with pytest.raises(QMPError) as err:
        vm.qmp(*steps[-1])
    assert err.value.desc == ("Could not replace node: "
                              + conflict("d0", "write", "block device 'drive0' root", "node 'ov' backing"))


def _device_then(vm, steps: list) -> None:
    vm.add_drive("drive0", "64M", node_name="d0")
    play(vm, steps)


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
@pytest.mark.parametrize("name, steps, last", CASES, ids=[case[0] for case in CASES])
def test_permissions_on_both_backends(name, steps, last, daemon):
    """The last step's reply, and then the whole graph as x-debug-query-block-graph shows it."""
    settle = not any(args.get("speed") for _, args in steps)  # jobs that finish: let them (a slow one runs on)
    with Machine(backend="qemu", daemon=daemon) as real:
        replies = play(real, steps)
        if settle:
            real.run()
        graph = block_graph(real)
    sim = Machine()
    assert replies == play(sim, steps) == ["ok"] * (len(steps) - 1) + [last]
    if settle:
        sim.run()
    assert graph == block_graph(sim)


@pytest.mark.qemu
@pytest.mark.parametrize("name, steps, line, reply", HMP_CASES, ids=[case[0] for case in HMP_CASES])
def test_hmp_qemu_io_permissions_on_both_backends(name, steps, line, reply):
    with Machine(backend="qemu", daemon="system") as real:
        got = _hmp(real, steps, line)
    assert got == reply == _hmp(Machine(), steps, line)


@pytest.mark.qemu
def test_device_write_then_backup_on_both_backends():
    steps = [("blockdev-add", {"driver": "qcow2", "node-name": "ov", "backing": "d0",
                               "file": {"driver": "file", "filename": "b.qcow2"}}), T, NBD, export("e", "ov")]
    texts = []
    for vm in (Machine(backend="qemu", daemon="system"), Machine()):
        with vm if vm.backend == "qemu" else contextlib.nullcontext():
            _device_then(vm, steps)
            vm.qemu_io("drive0", "write 0 512")
            reply = vm.execute({"execute": "blockdev-backup", "arguments": backup("ov", "t")[1]})
            texts.append(reply["error"]["desc"])
    assert texts[0] == texts[1] == ("Could not replace node: "
                                    + conflict("d0", "write", "block device 'drive0' root", "node 'ov' backing"))


def test_job_link_failure_creates_and_ends_the_job():
    """block_job_create made the job before its link failed: created, then null (job_early_fail)."""
    vm = Machine()
    play(vm, [F, OV, T, NBD, export("e", "f")])
    since = len(vm.events)
    with pytest.raises(QMPError):
        vm.qmp(*backup("ov", "t"))
    assert [(e["event"], e["data"]) for e in vm.events[since:]] == [
        ("JOB_STATUS_CHANGE", {"status": "created", "id": "j"}), ("JOB_STATUS_CHANGE", {"status": "null", "id": "j"})]
    vm.qmp("block-export-del", {"id": "e"})
    vm.qmp(*backup("ov", "t"))  # nothing was left behind: the same backup now starts


def _guest_writes(vm) -> list[str]:
    """Guest writes to ``f`` (which the overlay holds) while ``f`` is backed up, then while ``ov`` is too."""
    play(vm, [F, OV, T, qcow2("t2", "d.qcow2"), backup("f", "t", job="j1", **SLOW, **{"filter-node-name": "c1"})])
    out = []
    for step in (None, backup("ov", "t2", job="j2", **SLOW, **{"filter-node-name": "c2"})):
        if step is not None:
            vm.qmp(*step)
        try:
            out.append(vm.write("f", 0, 512, 7).splitlines()[0])
        except QMPError as err:
            out.append(err.desc)
    return out


GUEST_WRITES = ["wrote 512/512 bytes at offset 0",
                conflict("c1", "write", "an unnamed block device root", "node 'ov' backing")]


def test_guest_writes_enter_above_the_filter():
    """The guest's request enters above the source's filter: allowed, until a backup of the overlay
    makes the overlay's backing link (now to the filter) share no writes."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "d.qcow2", "64M")
    assert _guest_writes(vm) == GUEST_WRITES


@pytest.mark.qemu
def test_guest_writes_enter_above_the_filter_on_qemu_storage_daemon():
    """On qemu-storage-daemon the backend's export of ``f`` went when the overlay took it: the
    request's own export is made above the filters over ``f``, where bitlab's guest enters."""
    with Machine(backend="qemu", daemon="qsd") as real:
        real.qemu_img("create", "-f", "qcow2", "d.qcow2", "64M")
        assert _guest_writes(real) == GUEST_WRITES


def _stacked_writes(vm) -> list[str]:
    """Two backups of ``f`` stack their filters (the second's between the first's and ``f``): a guest's
    writes to ``f`` enter above both; HMP ``qemu-io`` on the lower filter meets the upper one's 'file' link."""
    vm.qemu_img("create", "-f", "qcow2", "d.qcow2", "64M")
    play(vm, [F, T, qcow2("t2", "d.qcow2"), backup("f", "t", job="j1", **SLOW, **{"filter-node-name": "c1"}),
              backup("f", "t2", job="j2", **SLOW, **{"filter-node-name": "c2"})])
    return [vm.write("f", offset, 512, 7).splitlines()[0] for offset in (0, M)]


STACKED_WRITES = ["wrote 512/512 bytes at offset 0", "wrote 512/512 bytes at offset 1048576"]
STACKED_LOWER = conflict("c2", "write", "an unnamed block device root", "node 'c1' file")


def test_guest_writes_enter_above_stacked_filters():
    vm = Machine()
    assert _stacked_writes(vm) == STACKED_WRITES
    assert vm.execute({"execute": "human-monitor-command",
                       "arguments": {"command-line": 'qemu-io c2 "write 0 512"'}})["return"] == STACKED_LOWER + "\r\n"


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_guest_writes_enter_above_stacked_filters_on_qemu(daemon):
    """The system emulator's guest enters at the topmost filter too (not at the newest, lowest one)."""
    with Machine(backend="qemu", daemon=daemon) as real:
        assert _stacked_writes(real) == STACKED_WRITES
        if daemon == "system":
            assert real.hmp('qemu-io c2 "write 0 512"') == STACKED_LOWER + "\r\n"
