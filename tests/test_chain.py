"""bitlab.chain: the seed's keep/delete advice, retries, and proofs by restoring."""

from __future__ import annotations

import pytest

from bitlab import Machine, chain
from bitlab.scenarios import FAIL_ON_READ, _play_seed


def seed(mode: str, failing: str | None = "drive1", backend: str | None = None) -> Machine:
    vm = Machine(backend=backend)
    _play_seed(vm, mode, failing, ("drive0", "drive1"), None)
    return vm


def test_partial_failure_outcome_of_the_seed():
    vm = seed("individual")
    report = chain.analyse(vm)
    assert report.keep == ["d0-full.qcow2", "d1-full.qcow2", "d0-incr-1.qcow2"]
    assert report.delete == ["d1-incr-1.qcow2"]
    assert report.images["d1-incr-1.qcow2"].reason == \
        "job 'drive1' failed (Input/output error): the image is incomplete"
    advice = chain.advise(vm)
    assert (advice["drive0"].next_sync, advice["drive0"].next_base) == ("incremental", "d0-incr-1.qcow2")
    assert (advice["drive1"].next_sync, advice["drive1"].next_base) == ("incremental", "d1-full.qcow2")
    assert advice["drive0"].keep == ["d0-full.qcow2", "d0-incr-1.qcow2"] and advice["drive0"].delete == []
    assert advice["drive1"].keep == ["d1-full.qcow2"] and advice["drive1"].delete == ["d1-incr-1.qcow2"]
    assert report.chains() == {"drive0": [["d0-full.qcow2", "d0-incr-1.qcow2"]],
                               "drive1": [["d1-full.qcow2", "d1-incr-1.qcow2"]]}
    for image in report.keep:
        assert chain.verify(vm, image).ok, image
    bad = chain.verify(vm, "d1-incr-1.qcow2")
    assert not bad.ok and bad.first_difference == 0  # the write at offset 0 never reached the image


def test_grouped_outcome_of_the_seed():
    vm = seed("grouped")
    report = chain.analyse(vm)
    assert report.delete == ["d0-incr-1.qcow2", "d1-incr-1.qcow2"]
    assert report.images["d0-incr-1.qcow2"].reason == ("job 'drive0' was cancelled because another job of its "
                                                       "grouped transaction failed: the image is incomplete")
    advice = chain.advise(vm)
    assert advice["drive0"].next_base == "d0-full.qcow2" and advice["drive1"].next_base == "d1-full.qcow2"
    # the bitmaps are as if no backup had been issued: retry both on the fulls
    counts = {b["name"]: b["count"] for blk in vm.qmp("query-block") for b in blk["inserted"]["dirty-bitmaps"]}
    assert counts == {"bitmap0": 3 * 65536 + 131072 - 65536 + 65536, "bitmap1": 2 * 65536}


def retry(vm: Machine, n: int, mode: str | None = None) -> None:
    """Follow the advice for every drive in one transaction, then run it."""
    actions = []
    for drive, advice in chain.advise(vm).items():
        actions += advice.actions(vm, f"d{drive[-1]}-incr-{n}.qcow2")
    args: dict = {"actions": actions}
    if mode:
        args["properties"] = {"completion-mode": mode}
    vm.qmp("transaction", args)
    vm.run()


@pytest.mark.parametrize("mode", ["individual", "grouped"])
def test_following_the_advice_after_a_failure_restores_every_drive(mode):
    vm = seed(mode)
    vm.write("drive0", "2M", "64k", 0x51)
    vm.write("drive1", "3M", "64k", 0x52)
    retry(vm, 2)
    report = chain.analyse(vm)
    assert report.images["d0-incr-2.qcow2"].valid and report.images["d1-incr-2.qcow2"].valid
    expected_base = "d0-incr-1.qcow2" if mode == "individual" else "d0-full.qcow2"
    assert report.images["d0-incr-2.qcow2"].backing == expected_base
    assert report.images["d1-incr-2.qcow2"].backing == "d1-full.qcow2"
    for image in report.keep:
        assert chain.verify(vm, image).ok, image


def test_an_incremental_on_the_wrong_base_is_invalid_and_loses_writes():
    vm = seed("individual")
    vm.qemu_img("create", "-f", "qcow2", "-b", "d0-full.qcow2", "-F", "qcow2", "d0-wrong.qcow2")
    vm.qmp("drive-backup", {"device": "drive0", "bitmap": "bitmap0", "sync": "incremental",
                            "target": "d0-wrong.qcow2", "mode": "existing", "format": "qcow2"})
    vm.run()
    verdict = chain.analyse(vm).images["d0-wrong.qcow2"]
    assert not verdict.valid and not verdict.keep
    assert verdict.reason == ("bitmap0 held the changes since d0-incr-1.qcow2, but the image's backing file is "
                              "d0-full.qcow2: restoring it would lose writes")
    assert not chain.verify(vm, "d0-wrong.qcow2").ok  # the proof: the seed's writes to drive0 are missing


def test_bitmap_mode_always_keeps_the_partial_image_as_the_next_base():
    vm = Machine()
    vm.add_drive("drive0", "64M", blkdebug=FAIL_ON_READ)
    vm.qmp("transaction", {"actions": [
        {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "bitmap0"}},
        {"type": "drive-backup", "data": {"device": "drive0", "target": "full.qcow2", "sync": "full",
                                          "format": "qcow2"}}]})
    vm.run()
    for i in range(8):
        vm.write("drive0", f"{i}M", "64k", 0x60 + i)
    vm.qemu_img("create", "-f", "qcow2", "-b", "full.qcow2", "-F", "qcow2", "incr-1.qcow2")
    vm.qmp("drive-backup", {"device": "drive0", "bitmap": "bitmap0", "sync": "bitmap", "bitmap-mode": "always",
                            "target": "incr-1.qcow2", "mode": "existing", "format": "qcow2"})
    vm.run()
    report = chain.analyse(vm)
    partial = report.images["incr-1.qcow2"]
    assert (partial.status, partial.valid, partial.keep) == ("failed", False, True)
    assert "the next incremental must build on it" in partial.reason
    advice = report.advice["drive0"]
    assert (advice.next_sync, advice.next_base) == ("incremental", "incr-1.qcow2")
    vm.write("drive0", "9M", "4k", 0x70)
    vm.qmp("transaction", {"actions": advice.actions(vm, "incr-2.qcow2")})
    vm.run()
    assert chain.analyse(vm).images["incr-2.qcow2"].valid
    assert chain.verify(vm, "incr-2.qcow2").ok


def test_writes_while_the_bitmap_was_disabled_force_a_full_backup():
    vm = seed("individual", failing=None)
    vm.qmp("block-dirty-bitmap-disable", {"node": "drive0", "name": "bitmap0"})
    vm.write("drive0", "5M", "64k", 0x77)
    vm.qmp("block-dirty-bitmap-enable", {"node": "drive0", "name": "bitmap0"})
    advice = chain.advise(vm)["drive0"]
    assert advice.next_sync == "full" and advice.next_base is None
    assert advice.reason == "bitmap0 was disabled while the guest wrote, so it missed writes"
    vm.qmp("transaction", {"actions": advice.actions(vm, "d0-full-2.qcow2")})
    vm.run()
    assert chain.advise(vm)["drive0"].next_base == "d0-full-2.qcow2"
    assert chain.verify(vm, "d0-full-2.qcow2").ok


def test_sync_none_and_a_cancelled_job_are_not_backups():
    vm = Machine()
    vm.add_drive("drive0", "16M")
    vm.write("drive0", 0, "64k", 0x11)
    vm.qmp("drive-backup", {"device": "drive0", "target": "none.qcow2", "sync": "none", "format": "qcow2"})
    vm.write("drive0", 0, "4k", 0x12)
    vm.qmp("block-job-cancel", {"device": "drive0"})  # sync=none runs until stopped
    vm.run()
    vm.qmp("drive-backup", {"device": "drive0", "target": "c.qcow2", "sync": "full", "format": "qcow2",
                            "speed": 65536})
    vm.qmp("block-job-cancel", {"device": "drive0"})
    vm.run()
    report = chain.analyse(vm)
    assert report.images["none.qcow2"].reason == "sync=none copies only what the guest overwrote while the job ran"
    assert report.images["c.qcow2"].reason == "job 'drive0' was cancelled: the image is incomplete"
    assert report.images["c.qcow2"].status == "cancelled"
    assert report.delete == ["none.qcow2", "c.qcow2"]
    assert report.advice["drive0"].next_sync == "full"


def test_restore_reads_through_the_backing_chain():
    vm = seed("individual", failing=None)
    content = chain.restore(vm, "d0-incr-1.qcow2")
    assert content.runs()[:4] == [(0, 65536, 0x41), (65536, 126976, 0), (126976, 135168, 0x42),
                                  (135168, 1048576, 0)]
    assert content == chain.point_in_time(vm, "d0-incr-1.qcow2")
    with pytest.raises(KeyError, match="no backup job wrote 'nothing.qcow2'"):
        chain.point_in_time(vm, "nothing.qcow2")


def test_the_point_in_time_is_what_the_node_reads_not_what_its_image_names():
    """A node opened with ``backing: null`` (or another node as its backing) reads what its open chain holds: a
    backup's point in time is that, even where the image's header names a base that is gone."""
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "1M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "other.qcow2", "1M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", "1M")
    for name, value in (("base.qcow2", 0x11), ("other.qcow2", 0x22)):
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "w", "file": {"driver": "file", "filename": name}})
        vm.write("w", 0, "64k", value)
        vm.qmp("blockdev-del", {"node-name": "w"})
    vm.images.remove("base.qcow2")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "o", "file": {"driver": "file", "filename": "other.qcow2"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "backing": "o",
                            "file": {"driver": "file", "filename": "top.qcow2"}})
    vm.write("n", "64k", "64k", 0x33)
    vm.qmp("drive-backup", {"device": "n", "job-id": "j", "target": "full.qcow2", "format": "qcow2", "sync": "full"})
    vm.run()
    assert chain.point_in_time(vm, "full.qcow2").runs() == [(0, 65536, 0x22), (65536, 131072, 0x33),
                                                            (131072, 1048576, 0)]
    assert chain.restore(vm, "full.qcow2") == chain.point_in_time(vm, "full.qcow2")


@pytest.mark.qemu
@pytest.mark.parametrize("mode", ["individual", "grouped"])
def test_same_verdicts_and_proofs_on_real_qemu(mode):
    """Verdicts and advice agree with the simulator; the proof restores the real files with qemu-img."""
    sim = seed(mode)
    real = seed(mode, backend="qemu")
    try:
        for vm in (sim, real):
            vm.write("drive0", "2M", "64k", 0x51)
            retry(vm, 2)
        a, b = chain.analyse(sim), chain.analyse(real)
        assert [(v.image, v.valid, v.keep, v.reason) for v in a.images.values()] == \
            [(v.image, v.valid, v.keep, v.reason) for v in b.images.values()]
        assert [str(x) for x in a.advice.values()] == [str(x) for x in b.advice.values()]
        for image in b.images:
            assert chain.verify(real, image).ok == chain.verify(sim, image).ok, image
            if b.images[image].valid:
                assert chain.restore(real, image) == chain.restore(sim, image)
    finally:
        real.close()


def _restore_story(vm: Machine, *options: str) -> tuple:
    """A full backup, a guest write, the backup restored into the running disk over NBD, another full backup:
    the second backup's point in time is the restored content (the write undone)."""
    vm.add_drive("drive0", "4M")
    vm.write("drive0", 0, "1M", 0x11)
    vm.qmp("drive-backup", {"device": "drive0", "job-id": "b1", "sync": "full", "target": "f1.qcow2",
                            "format": "qcow2"})
    vm.run()
    vm.write("drive0", "512k", "1M", 0x22)
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    node = next(b["inserted"]["node-name"] for b in vm.qmp("query-block") if b["device"] == "drive0")
    vm.qmp("block-export-add", {"type": "nbd", "id": "e", "node-name": node, "name": "d", "writable": True})
    vm.qemu_img("convert", "-n", *options, "-O", "raw", "f1.qcow2", "nbd+unix:///d?socket=nbd.sock")
    vm.qmp("block-export-del", {"id": "e"})
    vm.qmp("drive-backup", {"device": "drive0", "job-id": "b2", "sync": "full", "target": "f2.qcow2",
                            "format": "qcow2"})
    vm.run()
    pit = chain.point_in_time(vm, "f2.qcow2")
    return chain.verify(vm, "f2.qcow2").ok, pit.first_difference(chain.restore(vm, "f1.qcow2"))


def test_a_restore_into_the_disk_is_in_the_next_backups_point_in_time():
    assert _restore_story(Machine()) == (True, None)


@pytest.mark.qemu
def test_a_restore_into_the_disk_is_in_the_next_backups_point_in_time_on_real_qemu():
    """The real backend notes what the restore wrote (the source's content) in the machine's history (``-p``:
    an option bitlab's qemu-img does not simulate, which the real one takes)."""
    with Machine(backend="qemu") as vm:
        assert _restore_story(vm, "-p") == (True, None)
