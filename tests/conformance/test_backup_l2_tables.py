"""Full backups between qcow2 images with several L2 tables (small clusters: a table maps 2 MiB of 4 KiB
clusters, 32 KiB of 512-byte ones), one worker, as QEMU 7.2 lays out the target (``qemu-img map`` and ``check``).

- Zero tasks before a data task on a 4 KiB-cluster target: each zero write makes the L2 tables of its
  stretch (qcow2_subcluster_zeroize, zero_in_l2_slice), in task order, so they land before the data.
- The source's block status ends at each of its L2 slices (qcow2_get_host_offset): a stretch from a slice's
  start shorter than the job's cluster is copied as data (block_copy_block_status), every task of a
  512-byte-cluster source, and the last one of a 4 KiB source whose last slice holds less than a job cluster.
- A data task is one write request whose buffer holds the source's runs: the target allocates its clusters
  together (contiguous, first fit), not run by run into a smaller free stretch.
"""

from __future__ import annotations

import json

import pytest

from bitlab import Machine

K, M = 1 << 10, 1 << 20


def _backup(vm: Machine, scluster: int, ssize: int, tcluster: int, writes: tuple = (),
            hole: bool = False) -> tuple[list[tuple], str]:
    """A new source (``writes`` of data into it) backed up in full onto a new target of the same size (``hole``:
    one with 32 KiB written at 0 and 4 KiB at 1 MiB, the first discarded again): the target's map entries
    (start, length, data, host offset) and qemu-img check."""
    vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={scluster}", "s.qcow2", str(ssize))
    vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={tcluster}", "t.qcow2", str(ssize))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "s.qcow2"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "discard": "unmap",
                            "file": {"driver": "file", "filename": "t.qcow2"}})
    if hole:
        vm.write("t", 0, 32 * K, pattern=0x11)
        vm.write("t", M, 4 * K, pattern=0x12)
        vm.guest_io("t", f"discard 0 {32 * K}")
    for offset, length in writes:
        vm.write("s", offset, length, pattern=0x28)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "s", "target": "t", "sync": "full",
                               "x-perf": {"max-workers": 1}})
    vm.run()
    vm.qmp("blockdev-del", {"node-name": "t"})
    vm.qmp("blockdev-del", {"node-name": "s"})
    entries = json.loads(vm.qemu_img("map", "--output=json", "t.qcow2"))
    return [(e["start"], e["length"], e["data"], e.get("offset")) for e in entries], vm.qemu_img("check", "t.qcow2")


def _check(allocated: str, end: int) -> str:
    return (f"No errors were found on the image.\n{allocated} allocated, 0.00% fragmented, 0.00% compressed clusters\n"
            f"Image end offset: {end}\n")


# (source cluster, source size, target cluster, source writes, target with a hole) -> QEMU 7.2's map and check
CASES = {
    "zero-tasks-make-tables-first": ((65536, 8 * M, 4096, ((5 * M + 1536, 64 * K),)),
                                     ([(0, 5 * M, False, None), (5 * M, 128 * K, True, 28672),
                                       (5 * M + 128 * K, 3014656, False, None)],
                                      _check("32/2048 = 1.56%", 163840))),
    "short-last-slice-is-data": ((4096, 6 * M + 40 * K, 65536, ((0, 64 * K),)),
                                 ([(0, 64 * K, True, 327680), (64 * K, 6225920, False, None),
                                   (6 * M, 40 * K, True, 393216)],
                                  _check("2/97 = 2.06%", 458752))),
    "512-byte-source-is-all-data": ((512, M, 65536, ((100 * K, 4 * K),)),
                                    ([(0, M, True, 327680)], _check("16/16 = 100.00%", 1376256))),
    "a-buffer-is-one-request": ((65536, 4 * M, 4096, ((96 * K, 32 * K),), True),
                                ([(0, 64 * K, False, None), (64 * K, 64 * K, True, 57344),
                                  (128 * K, 917504, False, None), (M, 4 * K, False, 53248),
                                  (M + 4 * K, 3141632, False, None)],
                                 "No errors were found on the image.\n17/1024 = 1.66% allocated, 5.88% fragmented, "
                                 "0.00% compressed clusters\nImage end offset: 126976\n")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_target_laid_out_as_qemu(case):
    args, want = CASES[case]
    assert _backup(Machine(), *args) == want


@pytest.mark.qemu
@pytest.mark.parametrize("case", list(CASES))
def test_cases_are_qemus(case):
    args, want = CASES[case]
    with Machine(backend="qemu", daemon="qsd") as real:
        assert _backup(real, *args) == want
