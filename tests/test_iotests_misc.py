"""QEMU iotests 236 (bitmap transactions), 124 (busy/recording, grouped failure, a drive grown before its
backup) and 219 (verbs)."""

import pytest

from bitlab import Machine, QMPError
from tests.both import on_both

G = 65536


def dirty(vm, device="drive0"):
    """query-block's view, as iotest 236 prints it: name -> (count, recording)."""
    info = next(b for b in vm.qmp("query-block") if b["device"] == device)
    return {b["name"]: (b["count"], b["recording"]) for b in info["inserted"].get("dirty-bitmaps", [])}


def act(kind, **data):
    return {"type": kind, "data": data}


def test_236_bitmap_transactions():
    vm = Machine()
    vm.add_drive("drive0", "64M")
    for name in ("bitmapA", "bitmapB"):
        vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": name, "granularity": G})
    for off in (0, 0x100000, 0x2000000, 0x3FF0000):
        vm.write("drive0", off, "64k")
    assert list(dirty(vm)) == ["bitmapB", "bitmapA"]
    assert dirty(vm) == {"bitmapB": (262144, True), "bitmapA": (262144, True)}
    with pytest.raises(QMPError) as err:
        vm.qmp("transaction", {"actions": [
            act("block-dirty-bitmap-disable", node="drive0", name="bitmapB"),
            act("block-dirty-bitmap-add", node="drive0", name="bitmapC", granularity=G),
            act("block-dirty-bitmap-clear", node="drive0", name="bitmapA"),
            act("abort")]})
    assert err.value.desc == "Transaction aborted using Abort action"
    assert dirty(vm) == {"bitmapB": (262144, True), "bitmapA": (262144, True)}
    vm.qmp("transaction", {"actions": [
        act("block-dirty-bitmap-disable", node="drive0", name="bitmapB"),
        act("block-dirty-bitmap-add", node="drive0", name="bitmapC", granularity=G),
        act("block-dirty-bitmap-disable", node="drive0", name="bitmapC"),
        act("block-dirty-bitmap-enable", node="drive0", name="bitmapC")]})
    for off in (0, 0x00F8000, 0x2008000, 0x3FE0000):
        vm.write("drive0", off, "64k")
    vm.qmp("transaction", {"actions": [
        act("block-dirty-bitmap-disable", node="drive0", name="bitmapA"),
        act("block-dirty-bitmap-disable", node="drive0", name="bitmapC")]})
    expected = {"bitmapC": (393216, False), "bitmapB": (262144, False), "bitmapA": (458752, False)}
    assert dirty(vm) == expected
    merge = [act("block-dirty-bitmap-add", node="drive0", name="bitmapD", disabled=True, granularity=G),
             act("block-dirty-bitmap-merge", node="drive0", target="bitmapD", bitmaps=["bitmapB", "bitmapC"])]
    with pytest.raises(QMPError):
        vm.qmp("transaction", {"actions": [*merge, act("abort")]})
    assert dirty(vm) == expected
    vm.qmp("transaction", {"actions": merge})
    assert dirty(vm) == {"bitmapD": (458752, False), **expected}
    sha = {n: vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "drive0", "name": n})["sha256"]
           for n in ("bitmapA", "bitmapD")}
    assert sha["bitmapA"] == sha["bitmapD"]
    for name in ("bitmapA", "bitmapB", "bitmapC", "bitmapD"):
        assert vm.qmp("block-dirty-bitmap-remove", {"node": "drive0", "name": name}) == {}
    assert dirty(vm) == {}


W1 = [(0xAB, 0, 512), (0xFE, 16 << 20, 256 << 10), (0x64, 32736 << 10, 64 << 10)]
W1B = [(0xBA, 0, 512), (0xEF, 16 << 20, 256 << 10), (0x46, 32736 << 10, 64 << 10)]
ARM_ON_FLUSH = {"set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2}],
                "inject-error": [{"event": "read_aio", "errno": 5, "state": 2, "once": True}]}


def status(vm, device="drive0", name="bitmap0"):
    """iotest 124's check_bitmap_status: the bitmap on node 'node<N>' of device 'drive<N>'."""
    node = "node" + device.removeprefix("drive")
    entry = next(n for n in vm.qmp("query-named-block-nodes", {"flat": True}) if n["node-name"] == node)
    bm = next(b for b in entry["dirty-bitmaps"] if b.get("name") == name)
    return {k: bm[k] for k in ("count", "granularity", "busy", "recording")}


def machine_124(drives=("drive0",), blkdebug=("drive0",), vm=None):
    vm = Machine() if vm is None else vm
    for d in drives:
        vm.add_drive(d, "64M", blkdebug=ARM_ON_FLUSH if d in blkdebug else None,
                     node_name="node" + d.removeprefix("drive"))
        vm.qmp("drive-backup", {"device": d, "sync": "full", "target": f"{d}-full.qcow2", "format": "qcow2"})
        vm.run()
        vm.qmp("block-dirty-bitmap-add", {"node": d, "name": "bitmap0"})
    return vm


def incremental_target(vm, device, n):
    vm.qemu_img("create", "-f", "qcow2", "-b", f"{device}-full.qcow2", "-F", "qcow2", f"{device}-inc{n}.qcow2")
    return {"device": device, "sync": "incremental", "bitmap": "bitmap0", "target": f"{device}-inc{n}.qcow2",
            "format": "qcow2", "mode": "existing"}


def test_124_incremental_pause():
    vm = machine_124()
    for pattern, off, length in W1:
        vm.write("drive0", off, length, pattern)
    vm.qemu_io("drive0", "flush")
    assert status(vm) == {"count": 458752, "granularity": G, "busy": False, "recording": True}
    since = len(vm.events)
    vm.qmp("drive-backup", {**incremental_target(vm, "drive0", 1), "on-source-error": "stop"})
    vm.run()
    errors = [e["data"] for e in vm.events[since:] if e["event"] == "BLOCK_JOB_ERROR"]
    assert errors == [{"device": "drive0", "operation": "read", "action": "stop"}]
    job = vm.qmp("query-block-jobs")[0]
    assert (job["status"], job["io-status"], job["paused"]) == ("paused", "failed", True)
    assert status(vm) == {"count": 458752, "granularity": G, "busy": True, "recording": True}
    vm.qmp("block-job-resume", {"device": "drive0"})
    vm.run()
    assert status(vm) == {"count": 0, "granularity": G, "busy": False, "recording": True}
    assert vm.qmp("query-block-jobs") == []


def test_124_transaction_failure_grouped_then_retry():
    vm = machine_124(("drive0", "drive1"), blkdebug=("drive1",))
    for (p0, off, ln), (p1, _, _) in zip(W1, W1B):
        vm.write("drive0", off, ln, p0)
        vm.write("drive1", off, ln, p1)
    vm.qemu_io("drive1", "flush")
    actions = [act("drive-backup", **incremental_target(vm, d, 1)) for d in ("drive0", "drive1")]
    since = len(vm.events)
    vm.qmp("transaction", {"actions": actions, "properties": {"completion-mode": "grouped"}})
    vm.run()
    ends = {e["data"]["device"]: (e["event"], e["data"].get("error"))
            for e in vm.events[since:] if e["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")}
    assert ends == {"drive0": ("BLOCK_JOB_CANCELLED", None), "drive1": ("BLOCK_JOB_COMPLETED", "Input/output error")}
    errors = [e["data"] for e in vm.events[since:] if e["event"] == "BLOCK_JOB_ERROR"]
    assert errors == [{"device": "drive1", "operation": "read", "action": "report"}]
    assert vm.qmp("query-block-jobs") == []
    assert status(vm, "drive0")["count"] == status(vm, "drive1")["count"] == 458752
    actions = [act("drive-backup", **incremental_target(vm, d, 2)) for d in ("drive0", "drive1")]
    since = len(vm.events)
    vm.qmp("transaction", {"actions": actions, "properties": {"completion-mode": "grouped"}})
    vm.run()
    ends = [e for e in vm.events[since:] if e["event"] == "BLOCK_JOB_COMPLETED"]
    assert len(ends) == 2 and all("error" not in e["data"] and e["data"]["len"] == e["data"]["offset"]
                                  for e in ends)
    assert status(vm, "drive0")["count"] == status(vm, "drive1")["count"] == 0


def growing_before_backup(vm) -> dict:
    """iotest 124's test_growing_before_backup: anchor, bitmap0, block_resize to 65 MiB, a write past the
    old end, then an incremental into a 65 MiB image over the full backup; the outcome."""
    machine_124(blkdebug=(), vm=vm)
    assert vm.qmp("block_resize", {"device": "drive0", "size": 65 << 20}) == {}
    grown = status(vm)
    vm.qemu_io("drive0", "write 64M 64k")
    dirty_after = status(vm)
    vm.qemu_img("create", "-f", "qcow2", "-b", "drive0-full.qcow2", "-F", "qcow2", "drive0-inc1.qcow2", "65M")
    since = len(vm.events)
    vm.qmp("drive-backup", {"device": "drive0", "sync": "incremental", "bitmap": "bitmap0",
                            "target": "drive0-inc1.qcow2", "format": "qcow2", "mode": "existing"})
    vm.run()
    end = next(e["data"] for e in vm.events[since:] if e["event"].startswith("BLOCK_JOB_") and
               e["event"] != "BLOCK_JOB_PENDING")
    sha = vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "node0", "name": "bitmap0"})["sha256"]
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "restored", "read-only": True,
                            "file": {"driver": "file", "filename": "drive0-inc1.qcow2"}})
    reads = [vm.qemu_io("restored", cmd).splitlines()[0]
             for cmd in ("read -P 0xcd 64M 64k", "read -P 0 68091904 64k", "read -P 0 0 64k")]
    return {"grown": grown, "dirty": dirty_after, "end": {k: end.get(k) for k in ("len", "offset", "error")},
            "after": status(vm), "sha": sha, "reads": reads, "map": vm.qemu_io("restored", "map")}


def test_124_growing_before_backup():
    """The bitmap grew with the node (clean), the write past the old end dirtied bit 1024, and the
    incremental copied exactly it."""
    got = growing_before_backup(Machine())
    assert got["grown"] == {"count": 0, "granularity": G, "busy": False, "recording": True}
    assert got["dirty"]["count"] == 65536
    assert got["end"] == {"len": 65536, "offset": 65536, "error": None}
    assert got["after"]["count"] == 0
    assert got["reads"] == ["read 65536/65536 bytes at offset 67108864", "read 65536/65536 bytes at offset 68091904",
                            "read 65536/65536 bytes at offset 0"]
    assert got["map"] == ("64 MiB (0x4000000) bytes not allocated at offset 0 bytes (0x0)\n"
                          "64 KiB (0x10000) bytes     allocated at offset 64 MiB (0x4000000)\n"
                          "960 KiB (0xf0000) bytes not allocated at offset 64.062 MiB (0x4010000)\n")


@pytest.mark.qemu
def test_124_growing_before_backup_matches_the_system_emulator():
    want, got = on_both(growing_before_backup, "system")
    assert got == want


def test_124_bad_granularity_and_missing_bitmap():
    vm = machine_124()
    with pytest.raises(QMPError, match="Granularity must be power of 2 and at least 512"):
        vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b", "granularity": 64000})
    with pytest.raises(QMPError, match="must provide a valid bitmap name for 'incremental' sync mode"):
        vm.qmp("drive-backup", {"device": "drive0", "sync": "incremental", "target": "x.qcow2", "format": "qcow2"})
    with pytest.raises(QMPError, match="Bitmap 'unknown' could not be found"):
        vm.qmp("drive-backup", {"device": "drive0", "sync": "incremental", "bitmap": "unknown",
                                "target": "y.qcow2", "format": "qcow2"})


@pytest.mark.parametrize("auto_finalize", [True, False])
@pytest.mark.parametrize("auto_dismiss", [True, False])
def test_219_job_verbs(auto_finalize, auto_dismiss):
    vm = Machine()
    vm.add_drive("drive0", "4M")
    since = len(vm.events)
    vm.qmp("drive-backup", {"device": "drive0", "job-id": "job0", "sync": "full", "target": "t.qcow2",
                            "format": "qcow2", "speed": 1 << 20, "auto-finalize": auto_finalize,
                            "auto-dismiss": auto_dismiss})

    def refused(verb, state):
        with pytest.raises(QMPError) as err:
            vm.qmp(f"job-{verb}", {"id": "job0"})
        assert err.value.desc == f"Job 'job0' in state '{state}' cannot accept command verb '{verb}'"

    vm.run(until=vm.now + 0.5)
    assert vm.qmp("query-jobs")[0]["status"] == "running"
    vm.qmp("job-pause", {"id": "job0"})
    vm.run(until=vm.now + 0.1)
    assert vm.qmp("query-jobs")[0]["status"] == "paused"
    vm.qmp("job-resume", {"id": "job0"})
    for verb in ("complete", "finalize", "dismiss"):
        refused(verb, "running")
    vm.run()
    statuses = [e["data"]["status"] for e in vm.events[since:] if e["event"] == "JOB_STATUS_CHANGE"]
    if not auto_finalize:
        assert statuses[-2:] == ["waiting", "pending"]
        for verb in ("pause", "complete", "dismiss"):
            refused(verb, "pending")
        info = vm.qmp("query-jobs")[0]
        assert info["current-progress"] == info["total-progress"] == 4194304
        vm.qmp("job-finalize", {"id": "job0"})
    if not auto_dismiss:
        assert vm.qmp("query-jobs")[0]["status"] == "concluded"
        for verb in ("pause", "complete", "finalize"):
            refused(verb, "concluded")
        vm.qmp("job-dismiss", {"id": "job0"})
    statuses = [e["data"]["status"] for e in vm.events[since:] if e["event"] == "JOB_STATUS_CHANGE"]
    assert statuses == ["created", "running", "paused", "running", "paused", "running", "waiting", "pending",
                        "concluded", "null"]
    assert vm.qmp("query-jobs") == []
