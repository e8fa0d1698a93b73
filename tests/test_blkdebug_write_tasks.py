"""A guest write of several pieces over blkdebug: qcow2_co_pwritev_part runs each piece as a task of an
aio_task_pool, and a task runs only until it waits for its first I/O; qcow2 meanwhile allocates and starts the
next pieces, and the tasks go on afterwards. So an armed rule fails the first matching request in *that* order:
here the already allocated middle piece's data write, sent while the first piece's new cluster is still being
zeroed (a write-zeroes request, which an ``iotype: write`` rule does not match). The first and last pieces are
written and linked, the middle keeps what it held, and the write fails. With ``immediately`` the failed task ends
at once and qcow2 starts no further piece. Rules armed while the tasks go on (by a ``pwritev_done``, a later
``write_aio``) fail whichever task reaches them first: bitlab takes the waiting tasks in the order they started,
which is what QEMU did in these cases (measured). Images of 64 KiB clusters; the write covers clusters 19 (in
part, new), 20-21 (allocated before) and 22 (in part, new)."""

from __future__ import annotations

import json

import pytest

from bitlab import Machine
from tests.both import on_both

K = 1 << 10
OLD = (1359360, 64 * K)  # written first: clusters 20 and 21 allocated
WRITE = (1266688, 200 * K)  # clusters 19 (from 1266688), 20, 21 and 22 (to 1471488)
ARMED = {"event": "none", "errno": 28, "once": True, "iotype": "write"}  # the first write request fails
CASES = {
    "armed": {"inject-error": [ARMED]},
    "armed immediately": {"inject-error": [ARMED | {"immediately": True}]},
    # armed by the first piece's zeroing request (pwritev_zero): the next write_aio is the middle piece's
    "armed by a zeroing": {"inject-error": [{"event": "write_aio", "state": 2, "errno": 5, "once": True,
                                             "iotype": "write"}],
                           "set-state": [{"event": "pwritev_zero", "state": 1, "new_state": 2}]},
    # armed while the tasks go on (the first piece's zeroing done, or the middle piece's write_aio seen): the
    # first piece's data write fails, the middle and last pieces are written
    "armed by a write done": {"inject-error": [{"event": "write_aio", "state": 2, "errno": 5, "once": True,
                                                "iotype": "write"}],
                              "set-state": [{"event": "pwritev_done", "state": 1, "new_state": 2}]},
    "armed by a write_aio": {"inject-error": [{"event": "write_aio", "state": 2, "errno": 5, "once": True,
                                               "iotype": "write"}],
                             "set-state": [{"event": "write_aio", "state": 1, "new_state": 2}]},
    # the second zeroing request (the last piece's) fails
    "armed by a zeroing, failing one": {"inject-error": [{"event": "pwritev_zero", "state": 2, "errno": 5,
                                                          "once": True, "iotype": "write-zeroes"}],
                                        "set-state": [{"event": "pwritev_zero", "state": 1, "new_state": 2}]},
}
BOUNDS = [1245184, WRITE[0], 1310720, OLD[0], sum(OLD), 1441792, sum(WRITE), 1507328]  # cluster 19 to 22
REGIONS = list(zip(BOUNDS[:-1], BOUNDS[1:]))
PATTERNS = (0, 7, 0x4D)


def _first_line(out: str) -> str:
    return out.splitlines()[0] if out else out


def story(vm: Machine) -> dict:
    out = {}
    for i, (case, rules) in enumerate(CASES.items()):
        name = f"p{i}.qcow2"
        vm.qemu_img("create", "-f", "qcow2", name, "2M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "plain", "file": {"driver": "file", "filename": name}})
        vm.guest_io("plain", f"write -P 0x4d {OLD[0]} {OLD[1]}")
        vm.qmp("blockdev-del", {"node-name": "plain"})
        blk = {"driver": "blkdebug", "image": {"driver": "file", "filename": name}} | rules
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d", "file": blk})
        got = {"write": _first_line(vm.guest_io("d", f"write -P 0x07 {WRITE[0]} {WRITE[1]}"))}
        vm.qmp("blockdev-del", {"node-name": "d"})
        got["map"] = [(m["start"], m["length"], m["data"], m.get("offset"))
                      for m in json.loads(vm.qemu_img("map", "--output=json", name))]
        got["check"] = vm.qemu_img("check", name).splitlines()[1:]
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "plain", "file": {"driver": "file", "filename": name}})
        got["content"] = [(a, b, next((p for p in PATTERNS if not _first_line(
            vm.guest_io("plain", f"read -P {p:#x} {a} {b - a}")).startswith("Pattern")), None)) for a, b in REGIONS]
        vm.qmp("blockdev-del", {"node-name": "plain"})
        out[case] = got
    return out


def test_the_middle_piece_fails_and_the_others_are_written() -> None:
    out = story(Machine())
    got = out["armed"]
    assert got["write"] == "write failed: No space left on device"
    # clusters 19 and 22 new (in the order their pieces were allocated, after the header, the refcount table and
    # block, the L1 and L2 tables and the two clusters of the first write), 20-21 as they were
    assert got["map"] == [(0, 1245184, False, None), (1245184, 64 * K, True, 458752),
                          (1310720, 128 * K, True, 327680), (1441792, 64 * K, True, 524288),
                          (1507328, 589824, False, None)]
    assert got["check"] == ["4/32 = 12.50% allocated, 50.00% fragmented, 0.00% compressed clusters",
                            "Image end offset: 589824"]
    # the first and last pieces written, the middle one's clusters hold what the first write left there
    assert [p for _, _, p in got["content"]] == [0, 7, 0, 0x4D, 0, 7, 0]
    # immediately: the middle piece's task ends at once, the last piece is never started
    got = out["armed immediately"]
    assert got["write"] == "write failed: No space left on device"
    assert got["map"] == [(0, 1245184, False, None), (1245184, 64 * K, True, 458752),
                          (1310720, 128 * K, True, 327680), (1441792, 655360, False, None)]
    assert got["check"] == ["3/32 = 9.38% allocated, 33.33% fragmented, 0.00% compressed clusters",
                            "Image end offset: 524288"]
    assert [p for _, _, p in got["content"]] == [0, 7, 0, 0x4D, 0, 0, 0]
    assert out["armed by a zeroing"]["map"] == out["armed"]["map"]
    for case in ("armed by a write done", "armed by a write_aio"):
        assert out[case]["write"] == "write failed: Input/output error"
        assert [p for _, _, p in out[case]["content"]] == [0, 0, 7, 7, 7, 7, 0]
    assert [p for _, _, p in out["armed by a zeroing, failing one"]["content"]] == [0, 7, 7, 7, 7, 0, 0]


@pytest.mark.qemu
def test_same_on_qemu() -> None:
    real, sim = on_both(story)
    assert sim == real


def failed_zeroing(vm: Machine) -> list[str]:
    """Three ``once`` rules armed together by one ``write_aio``, then three 4 KiB writes into new clusters: each
    write fails at its first request (the first at its data write, the next two at handle_alloc_space's zeroing
    of the new cluster). A task whose zeroing failed links nothing, so it sends no dependency flush that would
    use up the rule left for the next write (bitlab sent one: ``--focus runstate --seed 19702``, scenario 83)."""
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "4M")
    rules = [{"event": "write_aio", "errno": errno, "once": True} for errno in (5, 28, 5)]
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {
        "driver": "blkdebug", "inject-error": rules, "image": {"driver": "file", "filename": "a.qcow2"}}})
    out = [vm.qemu_io("a", f"write -q -P 0x11 {i * 64 * K} 4k").strip() for i in range(1, 4)]
    vm.qmp("blockdev-del", {"node-name": "a"})
    out.append(vm.qemu_img("map", "--output=json", "a.qcow2"))
    return out


def test_a_task_whose_zeroing_failed_links_nothing() -> None:
    got = failed_zeroing(Machine())
    assert got[:3] == ["write failed: Input/output error", "write failed: No space left on device",
                       "write failed: Input/output error"]
    assert json.loads(got[3]) == [{"start": 0, "length": 4 * 1024 * K, "depth": 0, "present": False, "zero": True,
                                   "data": False}]


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_a_task_whose_zeroing_failed_links_nothing_on_qemu(daemon: str) -> None:
    real, sim = on_both(failed_zeroing, daemon=daemon)
    assert sim == real
