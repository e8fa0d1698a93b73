"""qemu-img compare, map, rebase, commit, check and info on bitlab's image store.

The expected texts were printed by real qemu-img 7.2.22 for the same steps (qemu-io writes on the
files); tests/conformance/test_qemu_img_chains.py replays such chains on real QEMU.
"""

from __future__ import annotations

import json

import pytest

from bitlab import Machine, QemuImgError
from tests.both import on_both


def qemu_io(vm: Machine, filename: str, *commands: str) -> None:
    """``qemu-io -c ... filename``: the file opened as a node (discard unmaps, as qemu-io), then closed."""
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "io", "discard": "unmap",
                            "file": {"driver": "file", "filename": filename}})
    for command in commands:
        vm.qmp("human-monitor-command", {"command-line": f'qemu-io io "{command}"'})
    vm.qmp("blockdev-del", {"node-name": "io"})


def fails(vm: Machine, *args: str) -> QemuImgError:
    with pytest.raises(QemuImgError) as err:
        vm.qemu_img(*args)
    return err.value


@pytest.fixture
def two() -> Machine:
    """base.qcow2 (4 MiB) under top.qcow2, both written in ascending order."""
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "4M")
    qemu_io(vm, "base.qcow2", "write -P 0x11 0 128k", "write -P 0x22 1M 64k", "write -z 2M 64k")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    qemu_io(vm, "top.qcow2", "write -P 0x33 64k 64k", "write -z 1M 32k", "write -P 0x44 3M 4k")
    return vm


@pytest.fixture
def three() -> Machine:
    """base <- mid <- top, 4 MiB each."""
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "4M")
    qemu_io(vm, "base.qcow2", "write -P 1 0 1M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2")
    qemu_io(vm, "mid.qcow2", "write -P 2 512k 1M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2")
    qemu_io(vm, "top.qcow2", "write -P 3 1M 1M", "write -z 3M 64k")
    return vm


# -- map ----------------------------------------------------------------------------------
def test_map_json_through_the_chain(two):
    assert two.qemu_img("map", "--output=json", "top.qcow2") == (
        '[{ "start": 0, "length": 65536, "depth": 1, "present": true, "zero": false, "data": true, "offset": 327680},\n'
        '{ "start": 65536, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 327680},\n'
        '{ "start": 131072, "length": 917504, "depth": 1, "present": false, "zero": true, "data": false},\n'
        '{ "start": 1048576, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 393216},\n'
        '{ "start": 1114112, "length": 983040, "depth": 1, "present": false, "zero": true, "data": false},\n'
        '{ "start": 2097152, "length": 65536, "depth": 1, "present": true, "zero": true, "data": false},\n'
        '{ "start": 2162688, "length": 983040, "depth": 1, "present": false, "zero": true, "data": false},\n'
        '{ "start": 3145728, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 458752},\n'
        '{ "start": 3211264, "length": 983040, "depth": 1, "present": false, "zero": true, "data": false}]\n')


def test_map_human(two):
    assert two.qemu_img("map", "top.qcow2") == (
        "Offset          Length          Mapped to       File\n"
        "0               0x10000         0x50000         base.qcow2\n"
        "0x10000         0x10000         0x50000         top.qcow2\n"
        "0x100000        0x10000         0x60000         top.qcow2\n"
        "0x300000        0x10000         0x70000         top.qcow2\n")
    assert two.qemu_img("map", "base.qcow2") == (
        "Offset          Length          Mapped to       File\n"
        "0               0x20000         0x50000         base.qcow2\n"
        "0x100000        0x10000         0x70000         base.qcow2\n")


def test_map_window_and_errors(two):
    assert two.qemu_img("map", "--output=json", "--start-offset=96k", "--max-length=1000k", "top.qcow2") == (
        '[{ "start": 98304, "length": 32768, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 360448},\n'
        '{ "start": 131072, "length": 917504, "depth": 1, "present": false, "zero": true, "data": false},\n'
        '{ "start": 1048576, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 393216},\n'
        '{ "start": 1114112, "length": 8192, "depth": 1, "present": false, "zero": true, "data": false}]\n')
    assert fails(two, "map", "--output=xml", "top.qcow2").stderr == (
        "qemu-img: --output must be used with human or json as argument.\n")
    assert fails(two, "map", "--start-offset=x", "top.qcow2").stderr == (
        "qemu-img: Invalid start offset specified. You may use k, M, G, T, P or E suffixes for\n"
        "qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n")
    assert fails(two, "map").stderr == ("qemu-img: Expecting one image file name\n"
                                        "Try 'qemu-img --help' for more information\n")
    err = fails(two, "map", "nope")
    assert (err.returncode, err.stderr) == (1, "qemu-img: Could not open 'nope': Could not open 'nope': "
                                               "No such file or directory\n")


def test_map_with_nothing_to_map_prints_its_first_entry():
    """qemu-img 7.2's img_map dumps its first (empty) entry even when the loop never ran (measured)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "z.qcow2", "0")
    vm.qemu_img("create", "-f", "qcow2", "m.qcow2", "1M")
    empty = '[{{ "start": {}, "length": 0, "depth": 0, "present": false, "zero": false, "data": false}}]\n'
    assert vm.qemu_img("map", "--output=json", "z.qcow2") == empty.format(0)
    assert vm.qemu_img("map", "--output=json", "--start-offset=2M", "m.qcow2") == empty.format(2097152)
    assert vm.qemu_img("map", "--output=json", "--start-offset=4k", "--max-length=0", "m.qcow2") == empty.format(4096)
    assert vm.qemu_img("map", "z.qcow2") == "Offset          Length          Mapped to       File\n"


def test_map_past_the_end_of_a_shorter_backing_file():
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "4M")
    qemu_io(vm, "base.qcow2", "write -P 1 0 64k", "write -P 2 3M 1M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", "8M")
    qemu_io(vm, "top.qcow2", "write -P 9 7M 64k")
    assert vm.qemu_img("map", "--output=json", "top.qcow2").splitlines()[2:] == [
        '{ "start": 3145728, "length": 1048576, "depth": 1, "present": true, "zero": false, "data": true, '
        '"offset": 393216},',
        '{ "start": 4194304, "length": 3145728, "depth": 0, "present": false, "zero": true, "data": false},',
        '{ "start": 7340032, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 327680},',
        '{ "start": 7405568, "length": 983040, "depth": 0, "present": false, "zero": true, "data": false}]']


# -- compare ------------------------------------------------------------------------------
def test_compare_reports_the_first_differing_sector():
    vm = Machine()
    for name in ("a.qcow2", "b.qcow2"):
        vm.qemu_img("create", "-q", "-f", "qcow2", name, "4M")
    assert vm.qemu_img("compare", "a.qcow2", "b.qcow2") == "Images are identical.\n"
    qemu_io(vm, "a.qcow2", "write -P 1 1000 1")
    for args in (("a.qcow2", "b.qcow2"), ("b.qcow2", "a.qcow2")):
        err = fails(vm, "compare", *args)
        assert (err.returncode, err.stdout, err.stderr) == (1, "Content mismatch at offset 512!\n", "")
    err = fails(vm, "compare", "-s", "b.qcow2", "a.qcow2")
    assert (err.returncode, err.stdout) == (1, "Strict mode: Offset 0 block status mismatch!\n")
    err = fails(vm, "compare", "-q", "a.qcow2", "b.qcow2")
    assert (err.returncode, err.stdout, err.stderr) == (1, "", "")
    qemu_io(vm, "b.qcow2", "write -P 1 1000 1")
    assert vm.qemu_img("compare", "a.qcow2", "b.qcow2") == "Images are identical.\n"
    assert vm.qemu_img("compare", "-q", "a.qcow2", "b.qcow2") == ""


def test_compare_zero_equals_unallocated_and_reads_through_chains(two):
    vm = two
    vm.qemu_img("create", "-q", "-f", "qcow2", "z.qcow2", "4M")
    qemu_io(vm, "z.qcow2", "write -z 0 4M", "write -P 0 1M 64k")
    vm.qemu_img("create", "-q", "-f", "qcow2", "e.qcow2", "4M")
    assert vm.qemu_img("compare", "z.qcow2", "e.qcow2") == "Images are identical.\n"
    err = fails(vm, "compare", "top.qcow2", "base.qcow2")
    assert err.stdout == "Content mismatch at offset 65536!\n"
    vm.qemu_img("create", "-q", "-f", "qcow2", "copy.qcow2", "4M")
    qemu_io(vm, "copy.qcow2", "write -P 0x11 0 64k", "write -P 0x33 64k 64k", "write -P 0x22 1081344 32k",
            "write -P 0x44 3M 4k")
    assert vm.qemu_img("compare", "top.qcow2", "copy.qcow2") == "Images are identical.\n"


def test_compare_sizes():
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "c.qcow2", "4M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "d.qcow2", "6M")
    qemu_io(vm, "d.qcow2", "write -P 0 0 64k", "write -z 64k 64k", "write -P 3 5M 1")
    err = fails(vm, "compare", "c.qcow2", "d.qcow2")
    assert (err.returncode, err.stdout) == (1, "Warning: Image size mismatch!\nContent mismatch at offset 5242880!\n")
    err = fails(vm, "compare", "-s", "c.qcow2", "d.qcow2")
    assert (err.returncode, err.stdout) == (1, "Strict mode: Image size mismatch!\n")
    qemu_io(vm, "d.qcow2", "write -P 0 5M 1")
    assert vm.qemu_img("compare", "c.qcow2", "d.qcow2") == "Warning: Image size mismatch!\nImages are identical.\n"


def test_compare_errors():
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "a.qcow2", "1M")
    err = fails(vm, "compare", "nope.qcow2", "a.qcow2")
    assert (err.returncode, err.stderr) == (2, "qemu-img: Could not open 'nope.qcow2': Could not open "
                                               "'nope.qcow2': No such file or directory\n")
    err = fails(vm, "compare", "a.qcow2")
    assert (err.returncode, err.stderr) == (1, "qemu-img: Expecting two image file names\n"
                                               "Try 'qemu-img --help' for more information\n")


# -- commit -------------------------------------------------------------------------------
def test_commit_into_the_backing_file_empties_the_top(three):
    vm = three
    assert vm.qemu_img("commit", "top.qcow2") == "Image committed.\n"
    assert vm.qemu_img("map", "--output=json", "mid.qcow2") == (
        '[{ "start": 0, "length": 524288, "depth": 1, "present": true, "zero": false, "data": true, '
        '"offset": 327680},\n'
        '{ "start": 524288, "length": 1572864, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 327680},\n'
        '{ "start": 2097152, "length": 1048576, "depth": 1, "present": false, "zero": true, "data": false},\n'
        '{ "start": 3145728, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false},\n'
        '{ "start": 3211264, "length": 983040, "depth": 1, "present": false, "zero": true, "data": false}]\n')
    assert vm.qemu_img("map", "--output=json", "top.qcow2").splitlines()[1] == (
        '{ "start": 524288, "length": 1572864, "depth": 1, "present": true, "zero": false, "data": true, '
        '"offset": 327680},')
    assert vm.images["top.qcow2"].file_length() == 262144  # rewritten empty, as qcow2_make_empty does
    assert vm.qemu_img("check", "top.qcow2") == "No errors were found on the image.\nImage end offset: 262144\n"


def test_commit_to_a_deeper_base_keeps_the_top(three):
    vm = three
    assert vm.qemu_img("commit", "-b", "base.qcow2", "top.qcow2") == "Image committed.\n"
    assert vm.qemu_img("map", "--output=json", "base.qcow2") == (
        '[{ "start": 0, "length": 2097152, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 327680},\n'
        '{ "start": 2097152, "length": 1048576, "depth": 0, "present": false, "zero": true, "data": false},\n'
        '{ "start": 3145728, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false},\n'
        '{ "start": 3211264, "length": 983040, "depth": 0, "present": false, "zero": true, "data": false}]\n')
    assert vm.images["top.qcow2"].file_length() == 1376256
    assert vm.images["base.qcow2"].file_length() == 2424832
    vm.qemu_img("create", "-q", "-f", "qcow2", "want.qcow2", "4M")
    qemu_io(vm, "want.qcow2", "write -P 1 0 512k", "write -P 2 512k 512k", "write -P 3 1M 1M")
    assert vm.qemu_img("compare", "base.qcow2", "want.qcow2") == "Images are identical.\n"
    assert vm.qemu_img("compare", "top.qcow2", "want.qcow2") == "Images are identical.\n"


def test_commit_quiet_keep_and_errors(three):
    vm = three
    assert vm.qemu_img("commit", "-q", "-d", "top.qcow2") == ""
    assert vm.images["top.qcow2"].file_length() == 1376256
    assert fails(vm, "commit", "base.qcow2").stderr == "qemu-img: Image does not have a backing file\n"
    assert fails(vm, "commit", "-b", "nope.qcow2", "top.qcow2").stderr == (
        "qemu-img: Did not find 'nope.qcow2' in the backing chain of 'top.qcow2'\n")
    assert fails(vm, "commit", "-b", "top.qcow2", "top.qcow2").stderr == (
        "qemu-img: Did not find 'top.qcow2' in the backing chain of 'top.qcow2'\n")


# -- rebase -------------------------------------------------------------------------------
def _depths(vm: Machine, name: str) -> list[tuple]:
    """map's entries without host offsets (merged where only those kept them apart)."""
    out: list[list] = []
    for e in json.loads(vm.qemu_img("map", "--output=json", name)):
        key = [e["depth"], e["present"], e["zero"], e["data"]]
        if out and out[-1][2:] == key:
            out[-1][1] += e["length"]
        else:
            out.append([e["start"], e["length"], *key])
    return [tuple(x) for x in out]


def test_safe_rebase_copies_what_differs(three):
    vm = three
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "before.qcow2")
    qemu_io(vm, "before.qcow2", "write -P 3 1M 1M", "write -z 3M 64k")
    assert vm.qemu_img("rebase", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2") == ""
    assert "backing file: base.qcow2\nbacking file format: qcow2\n" in vm.qemu_img("info", "top.qcow2")
    assert vm.qemu_img("compare", "top.qcow2", "before.qcow2") == "Images are identical.\n"
    # real qemu-img: the same runs (the copied clusters' host offsets follow the file's others)
    assert _depths(vm, "top.qcow2") == [
        (0, 524288, 1, True, False, True), (524288, 1572864, 0, True, False, True),
        (2097152, 1048576, 1, False, True, False), (3145728, 65536, 0, True, True, False),
        (3211264, 983040, 1, False, True, False)]


def test_rebase_onto_nothing_flattens(three):
    vm = three
    assert vm.qemu_img("rebase", "-b", "", "top.qcow2") == ""
    assert "backing file" not in vm.qemu_img("info", "top.qcow2")
    assert _depths(vm, "top.qcow2") == [
        (0, 2097152, 0, True, False, True), (2097152, 1048576, 0, False, True, False),
        (3145728, 65536, 0, True, True, False), (3211264, 983040, 0, False, True, False)]


def test_unsafe_rebase_only_changes_the_header(three):
    vm = three
    assert vm.qemu_img("rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2") == ""
    assert _depths(vm, "top.qcow2")[0] == (0, 1048576, 1, True, False, True)
    assert vm.qemu_img("rebase", "-u", "-b", "nope.qcow2", "-F", "qcow2", "top.qcow2") == ""
    assert "backing file: nope.qcow2\n" in vm.qemu_img("info", "top.qcow2")
    assert fails(vm, "map", "top.qcow2").stderr == (
        "qemu-img: Could not open 'top.qcow2': Could not open backing file: Could not open 'nope.qcow2': "
        "No such file or directory\n")
    assert vm.qemu_img("rebase", "-u", "top.qcow2") == ""
    assert "backing file" not in vm.qemu_img("info", "top.qcow2")


def test_rebase_keeps_what_qcow2_copied_on_write():
    """A partial write into a cluster: qcow2 copied the rest from the backing file; a rebase keeps it."""
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "1M")
    qemu_io(vm, "base.qcow2", "write -P 0x11 0 64k")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    qemu_io(vm, "top.qcow2", "write -P 0x22 0 512")
    vm.qemu_img("rebase", "-u", "-b", "", "top.qcow2")
    vm.qemu_img("create", "-q", "-f", "qcow2", "want.qcow2", "1M")
    qemu_io(vm, "want.qcow2", "write -P 0x11 0 64k", "write -P 0x22 0 512")
    assert vm.qemu_img("compare", "top.qcow2", "want.qcow2") == "Images are identical.\n"


def test_rebase_errors(three):
    vm = three
    usage = "Try 'qemu-img --help' for more information\n"
    assert fails(vm, "rebase", "top.qcow2").stderr == (
        "qemu-img: Must specify backing file (-b) or use unsafe mode (-u)\n" + usage)
    assert fails(vm, "rebase", "-b", "nope.qcow2", "-F", "qcow2", "top.qcow2").stderr == (
        "qemu-img: Could not open new backing file 'nope.qcow2': Could not open 'nope.qcow2': "
        "No such file or directory\n")
    assert fails(vm, "rebase", "-b", "base.qcow2", "top.qcow2").stderr == (
        "qemu-img: Could not change the backing file to 'base.qcow2': backing format must be specified\n")
    assert fails(vm, "rebase", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", "x").stderr == (
        "qemu-img: Expecting one image file name\n" + usage)


# -- locks, check, info -------------------------------------------------------------------
def test_images_in_use_are_locked(three):
    vm = three
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "top.qcow2"}})
    shared = ("qemu-img: Could not open 'top.qcow2': Failed to get shared \"write\" lock\n"
              "Is another process using the image [top.qcow2]?\n")
    write = shared.replace('shared "write"', '"write"')
    assert fails(vm, "map", "top.qcow2").stderr == shared
    assert fails(vm, "info", "top.qcow2").stderr == shared
    err = fails(vm, "compare", "top.qcow2", "base.qcow2")
    assert (err.returncode, err.stderr) == (2, shared)
    assert fails(vm, "commit", "top.qcow2").stderr == write
    assert fails(vm, "rebase", "-u", "-b", "", "top.qcow2").stderr == write
    assert vm.qemu_img("map", "-U", "top.qcow2").startswith("Offset")
    assert vm.qemu_img("map", "base.qcow2").startswith("Offset")  # a backing file is opened read-only


def test_check_counts_allocated_clusters(two):
    assert two.qemu_img("check", "top.qcow2") == (
        "No errors were found on the image.\n"
        "3/64 = 4.69% allocated, 0.00% fragmented, 0.00% compressed clusters\n"
        "Image end offset: 524288\n")


def test_info_lists_persistent_bitmaps():
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "b.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "b.qcow2"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "bm0", "persistent": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "bm1", "persistent": True, "granularity": 131072,
                                      "disabled": True})
    vm.qmp("blockdev-del", {"node-name": "n"})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "b.qcow2"}})
    in_use = vm.qemu_img("info", "-U", "b.qcow2")  # loaded by an open node: marked in use in the file
    assert ("    bitmaps:\n        [0]:\n            flags:\n                [0]: in-use\n            name: bm1\n"
            "            granularity: 131072\n        [1]:\n            flags:\n                [0]: in-use\n"
            "                [1]: auto\n            name: bm0\n            granularity: 65536\n") in in_use
    vm.qmp("blockdev-del", {"node-name": "n"})
    assert vm.qemu_img("info", "b.qcow2").split("Format specific information:\n")[1] == (
        "    compat: 1.1\n    compression type: zlib\n    lazy refcounts: false\n    bitmaps:\n"
        "        [0]:\n            flags:\n            name: bm1\n            granularity: 131072\n"
        "        [1]:\n            flags:\n                [0]: auto\n            name: bm0\n"
        "            granularity: 65536\n"
        "    refcount bits: 16\n    corrupt: false\n    extended l2: false\n")


# -- convert ------------------------------------------------------------------------------
def test_convert_flattens_a_chain():
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "4M")
    qemu_io(vm, "base.qcow2", "write -P 1 0 64k", "write -P 0 1M 64k", "write -P 2 2M 512", "write -z 3M 64k")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    qemu_io(vm, "top.qcow2", "write -P 3 32k 4k")
    assert vm.qemu_img("convert", "-O", "qcow2", "top.qcow2", "flat.qcow2") == ""
    assert vm.qemu_img("map", "--output=json", "flat.qcow2") == (  # zero bytes are not written
        '[{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 327680},\n'
        '{ "start": 65536, "length": 2031616, "depth": 0, "present": false, "zero": true, "data": false},\n'
        '{ "start": 2097152, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 393216},\n'
        '{ "start": 2162688, "length": 2031616, "depth": 0, "present": false, "zero": true, "data": false}]\n')
    assert vm.qemu_img("convert", "top.qcow2", "flat.raw") == ""
    assert vm.qemu_img("map", "--output=json", "flat.raw") == (
        '[{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 0},\n'
        '{ "start": 65536, "length": 2031616, "depth": 0, "present": true, "zero": true, "data": false, '
        '"offset": 65536},\n'
        '{ "start": 2097152, "length": 4096, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 2097152},\n'
        '{ "start": 2101248, "length": 2093056, "depth": 0, "present": true, "zero": true, "data": false, '
        '"offset": 2101248}]\n')
    vm.qemu_img("convert", "-O", "qcow2", "-o", "cluster_size=4096", "top.qcow2", "f4.qcow2")
    assert vm.qemu_img("map", "f4.qcow2") == (
        "Offset          Length          Mapped to       File\n"
        "0               0x10000         0x5000          f4.qcow2\n"
        "0x200000        0x1000          0x16000         f4.qcow2\n")
    assert vm.qemu_img("compare", "flat.raw", "f4.qcow2") == "Images are identical.\n"
    assert fails(vm, "convert", "top.qcow2").stderr == "qemu-img: Must specify image file name\n"
    assert fails(vm, "convert", "nope.qcow2", "x.raw").stderr == (
        "qemu-img: Could not open 'nope.qcow2': Could not open 'nope.qcow2': No such file or directory\n")


def test_raw_files_have_their_first_block_allocated():
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "raw", "r.img", "1M")
    assert vm.qemu_img("map", "--output=json", "r.img") == (
        '[{ "start": 0, "length": 4096, "depth": 0, "present": true, "zero": false, "data": true, "offset": 0},\n'
        '{ "start": 4096, "length": 1044480, "depth": 0, "present": true, "zero": true, "data": false, '
        '"offset": 4096}]\n')


def test_strict_compare_sees_block_status_one_l2_table_at_a_time():
    """With 4 KiB clusters an L2 table maps 2 MiB: the empty image's first answer stops there."""
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "a.qcow2", "4M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "b.qcow2", "4M")
    qemu_io(vm, "b.qcow2", "write -z 389120 8192")
    assert fails(vm, "compare", "-s", "b.qcow2", "a.qcow2").stdout == (
        "Strict mode: Offset 389120 block status mismatch!\n")
    vm.qemu_img("create", "-q", "-f", "qcow2", "c.qcow2", "4M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "d.qcow2", "4M")
    qemu_io(vm, "d.qcow2", "write -z 389120 8192")
    assert fails(vm, "compare", "-s", "d.qcow2", "c.qcow2").stdout == "Strict mode: Offset 0 block status mismatch!\n"


def test_relative_backing_files_are_relative_to_the_image():
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "sub/base.qcow2", "1M")
    qemu_io(vm, "sub/base.qcow2", "write -P 1 0 64k")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2")
    assert vm.qemu_img("map", "sub/top.qcow2").splitlines()[1] == (
        "0               0x10000         0x50000         sub/base.qcow2")
    assert "backing file: base.qcow2 (actual path: sub/base.qcow2)\n" in vm.qemu_img("info", "sub/top.qcow2")
    assert vm.qemu_img("compare", "sub/top.qcow2", "sub/base.qcow2") == "Images are identical.\n"
    assert fails(vm, "create", "-f", "qcow2", "-b", "sub/base.qcow2", "-F", "qcow2", "sub/x.qcow2").stderr == (
        "qemu-img: sub/x.qcow2: Could not open 'sub/sub/base.qcow2': No such file or directory\n"
        "Could not open backing image.\n")


def test_discard_as_qcow2_does_it():
    """v3: a discarded cluster that held data stays a zero cluster; v2 has none: with a backing file
    the discard does nothing, without one the cluster is unallocated."""
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "v3.qcow2", "1M")
    qemu_io(vm, "v3.qcow2", "write -P 1 0 128k", "discard 0 64k", "discard 512k 64k")
    assert _depths(vm, "v3.qcow2") == [(0, 65536, 0, True, True, False), (65536, 65536, 0, True, False, True),
                                       (131072, 917504, 0, False, True, False)]
    vm.qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "b.qcow2", "1M")
    qemu_io(vm, "b.qcow2", "write -P 1 0 128k")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2")
    qemu_io(vm, "t.qcow2", "write -P 2 0 128k", "discard 0 64k")
    assert _depths(vm, "t.qcow2") == [(0, 131072, 0, True, False, True), (131072, 917504, 1, False, True, False)]
    qemu_io(vm, "b.qcow2", "discard 0 64k")
    assert _depths(vm, "b.qcow2") == [(0, 65536, 0, False, True, False), (65536, 65536, 0, True, False, True),
                                      (131072, 917504, 0, False, True, False)]


def test_rebase_of_a_v2_image_without_backing_file_shows_the_new_one():
    """QEMU 7.2: zeroes written to a v2 image without backing file leave clusters unallocated."""
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "n.qcow2", "1M")
    qemu_io(vm, "n.qcow2", "write -P 1 0 128k")
    for name, compat in (("t.qcow2", "0.10"), ("t3.qcow2", "1.1")):
        vm.qemu_img("create", "-q", "-f", "qcow2", "-o", f"compat={compat}", name, "1M")
        qemu_io(vm, name, "write -P 2 64k 4k")
        vm.qemu_img("rebase", "-b", "n.qcow2", "-F", "qcow2", name)
    assert _depths(vm, "t.qcow2") == [(0, 65536, 1, True, False, True), (65536, 65536, 0, True, False, True),
                                      (131072, 917504, 1, False, True, False)]
    assert _depths(vm, "t3.qcow2") == [(0, 65536, 0, True, True, False), (65536, 65536, 0, True, False, True),
                                       (131072, 917504, 1, False, True, False)]


def test_commit_cannot_grow_a_v2_base_over_a_longer_backing_file():
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "a.qcow2", "2M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "1M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "c.qcow2", "4M")
    qemu_io(vm, "c.qcow2", "write -P 2 0 64k")
    err = fails(vm, "commit", "c.qcow2")
    assert (err.returncode, err.stdout, err.stderr) == (1, "", "qemu-img: Block job failed: Operation not supported\n")
    assert "virtual size: 1 MiB (1048576 bytes)" in vm.qemu_img("info", "b.qcow2")
    assert _depths(vm, "c.qcow2")[0] == (0, 65536, 0, True, False, True)


def test_partial_zero_write_keeps_a_zero_cluster_s_host_cluster():
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "z.qcow2", "1M")
    qemu_io(vm, "z.qcow2", "write -P 1 0 64k", "write -z 0 64k", "write -z 4096 8192")
    assert vm.qemu_img("map", "--output=json", "z.qcow2") == (
        '[{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false, '
        '"offset": 327680},\n'
        '{ "start": 65536, "length": 983040, "depth": 0, "present": false, "zero": true, "data": false}]\n')


def _commit_regrow_story(vm: Machine) -> list:
    """qemu-img commit grows a base shrunk into a cluster (to 100 KiB) to the top's length: without a longer
    backing file below it the base shows its old last cluster's bytes again; over one they are written as zeroes.
    What the base reads there, and its map (host offsets left out: the mirror job's order)."""
    out = []
    for n, below in enumerate(("64k", "2M")):
        a, b, c = f"a{n}.qcow2", f"b{n}.qcow2", f"c{n}.qcow2"
        vm.qemu_img("create", "-q", "-f", "qcow2", a, below)
        qemu_io(vm, a, f"write -P 0x11 0 {below}")
        vm.qemu_img("create", "-q", "-f", "qcow2", "-b", a, "-F", "qcow2", b, "1M")
        qemu_io(vm, b, "write -P 0x22 0 128k")
        vm.qemu_img("resize", "--shrink", b, "100K")
        vm.qemu_img("create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", c, "4M")
        qemu_io(vm, c, "write -P 0x33 1M 64k")
        vm.qemu_img("commit", c)
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": f"b{n}", "file": {"driver": "file", "filename": b}})
        out.append(["Pattern verification failed" not in vm.qemu_io(f"b{n}", f"read -P {p} 100k 28k")
                    for p in ("0x22", "0")])
        vm.qmp("blockdev-del", {"node-name": f"b{n}"})
        out.append([{k: v for k, v in e.items() if k != "offset"}
                    for e in json.loads(vm.qemu_img("map", "--output=json", b))])
    return out


def test_commit_grows_a_base_as_block_resize_does():
    reads = _commit_regrow_story(Machine())[0::2]
    assert reads == [[True, False], [False, True]]


@pytest.mark.qemu
def test_commit_grows_a_base_as_qemu_img_does():
    want, got = on_both(_commit_regrow_story, "system")  # (qemu_io here is HMP's)
    assert got == want


def test_create_prints_compat_as_given_before_the_backing_file():
    """As qemu-img 7.2.22 printed it (``compat=v2`` stays ``v2``)."""
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "b.qcow2", "1M")
    for compat in ("v2", "0.10", "1.1"):
        assert vm.qemu_img("create", "-f", "qcow2", "-o", f"compat={compat}", "-b", "b.qcow2", "-F", "qcow2",
                           f"t{compat}.qcow2") == (
            f"Formatting 't{compat}.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib "
            f"size=1048576 compat={compat} backing_file=b.qcow2 backing_fmt=qcow2 lazy_refcounts=off "
            "refcount_bits=16\n")
