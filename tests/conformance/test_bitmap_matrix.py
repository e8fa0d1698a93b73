"""Every bitmap command on every kind of node and bitmap, alone and as a transaction's action, against
qemu-storage-daemon: a qcow2 node with enabled, disabled and persistent bitmaps (the persistent one busy in a
running backup), a read-only qcow2 node whose stored bitmap is read-only, a raw node, a null-co node with a bitmap,
a file node, the backup's target, names that name nothing. Each command runs after the ones before it, so a
difference carries on; the bitmaps of every node and the job's events are compared at the end.
"""

from __future__ import annotations

import pytest

from bitlab import Machine

from ..both import on_both

NODES = ["q", "ro", "rw", "nul", "qf", "t", "nosuch", ""]
BITMAPS = ["en", "dis", "per", "pb", "nb", ""]
PER_BITMAP = ("block-dirty-bitmap-clear", "block-dirty-bitmap-enable", "block-dirty-bitmap-disable",
              "x-debug-block-dirty-bitmap-sha256")


def _setup(vm: Machine) -> None:
    for line in ("-f qcow2 q.qcow2 64M", "-f qcow2 r.qcow2 4M", "-f raw w.img 4M", "-f qcow2 t.qcow2 64M"):
        vm.qemu_img("create", "-q", *line.split())
    vm.qemu_img("bitmap", "--add", "r.qcow2", "pb")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "q",
                            "file": {"driver": "file", "filename": "q.qcow2", "node-name": "qf"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "ro", "read-only": True,
                            "file": {"driver": "file", "filename": "r.qcow2"}})
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "rw", "file": {"driver": "file", "filename": "w.img"}})
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "nul", "size": 4 << 20})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "t.qcow2"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "q", "name": "en"})
    vm.qmp("block-dirty-bitmap-add", {"node": "q", "name": "dis", "disabled": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "q", "name": "per", "persistent": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "nul", "name": "nb"})
    vm.qemu_io("q", "write -P 1 0 16M")  # (more than the backup's first chunk: at 1 byte/s it stays running)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "q", "target": "t", "sync": "incremental", "bitmap": "per",
                               "speed": 1})


def _commands() -> list[tuple[str, dict]]:
    cmds: list[tuple[str, dict]] = []
    for node in NODES:
        cmds += [("block-dirty-bitmap-add", {"node": node, "name": "new"}),
                 ("block-dirty-bitmap-add", {"node": node, "name": "newp", "persistent": True}),
                 ("block-dirty-bitmap-add", {"node": node, "name": "g", "granularity": 1000}),
                 ("block-dirty-bitmap-add", {"node": node, "name": "en"})]
        for name in BITMAPS:
            cmds += [(command, {"node": node, "name": name}) for command in PER_BITMAP]
            cmds += [("block-dirty-bitmap-merge", {"node": node, "target": name, "bitmaps": ["en"]}),
                     ("block-dirty-bitmap-merge", {"node": node, "target": "en",
                                                   "bitmaps": [name, {"node": "nul", "name": "nb"}]}),
                     ("block-dirty-bitmap-merge", {"node": node, "target": "new",
                                                   "bitmaps": [{"node": "q", "name": name}]})]
    return cmds + [("block-dirty-bitmap-remove", {"node": node, "name": name}) for node in NODES for name in BITMAPS]


def _crashes(command: str, args: dict) -> bool:
    """A transaction's enable that does not find its bitmap crashes QEMU 7.2 (tests/test_qmp_bitmaps.py)."""
    return command == "block-dirty-bitmap-enable" and not (args["node"] == "q" and args["name"] in ("en", "dis",
                                                                                                     "per"))


def _story(vm: Machine, in_transactions: bool) -> list:
    _setup(vm)
    out: list = []
    for i, (command, args) in enumerate(_commands()):
        if not in_transactions or command == "x-debug-block-dirty-bitmap-sha256":
            out.append(vm.execute({"execute": command, "arguments": args}))
            continue
        if _crashes(command, args):
            continue
        actions = [{"type": command, "data": args}]
        if i % 3 == 1:  # (then an action that fails: this one rolled back)
            actions.append({"type": "abort", "data": {}})
        elif i % 3 == 2:  # (after one that succeeds: rolled back if this one fails)
            actions.insert(0, {"type": "block-dirty-bitmap-add", "data": {"node": "q", "name": f"tx{i}"}})
        out.append(vm.execute({"execute": "transaction", "arguments": {"actions": actions}}))
    out.append([(n["node-name"], n.get("dirty-bitmaps")) for n in vm.qmp("query-named-block-nodes", {"flat": True})
                if not n["node-name"].startswith("#")])
    out.append(vm.execute({"execute": "block-job-cancel", "arguments": {"device": "j", "force": True}}))
    vm.run(until=vm.now + 1)
    out.append([(e["event"], e["data"].get("status")) for e in vm.events
                if e["event"] in ("JOB_STATUS_CHANGE", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")])
    return out


@pytest.mark.qemu
@pytest.mark.parametrize("in_transactions", [False, True], ids=["commands", "transactions"])
def test_bitmap_commands_on_every_kind_of_node(in_transactions: bool) -> None:
    real, sim = on_both(lambda vm: _story(vm, in_transactions))
    assert len(real) == len(sim)
    assert [(i, want, got) for i, (want, got) in enumerate(zip(real, sim)) if want != got] == []


def test_the_busy_and_read_only_bitmaps_refuse() -> None:
    """A few of the answers (recorded from qemu-storage-daemon 7.2), checked without QEMU."""
    out = _story(Machine(), False)
    replies = dict(((command, tuple(sorted((k, str(v)) for k, v in args.items()))), reply)
                   for (command, args), reply in zip(_commands(), out))

    def reply(command: str, **args: object) -> dict:
        return replies[(command, tuple(sorted((k, str(v)) for k, v in args.items())))]

    busy = "Bitmap 'per' is currently in use by another operation and cannot be used"
    assert reply("block-dirty-bitmap-clear", node="q", name="per")["error"]["desc"] == busy
    assert reply("block-dirty-bitmap-clear", node="ro", name="pb")["error"]["desc"] == \
        "Bitmap 'pb' is readonly and cannot be modified"
    assert reply("block-dirty-bitmap-add", node="rw", name="newp", persistent=True)["error"]["desc"] == \
        "Can't store persistent bitmaps to rw: Operation not supported"
    assert out[-1][-2:] == [("JOB_STATUS_CHANGE", "concluded"), ("JOB_STATUS_CHANGE", "null")]
