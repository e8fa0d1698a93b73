"""copy-before-write of one guest write: every task of its range starts before the first one ends. A zero
task writes as it starts; a data task writes once its read is back (after the others have started). So
behind a target whose blkdebug rule fires on the first *data* write (write_aio), the zero tasks of the
range succeed wherever they lie — QEMU 7.2's numbers (conformance seed 707757621, scenario 120)."""

import pytest

from bitlab.conformance.runner import compare, play

M, C = 1 << 20, 65536


def _q(execute: str, arguments: dict | None = None) -> dict:
    return {"qmp": {"execute": execute, **({"arguments": arguments} if arguments is not None else {})}}


def scenario(data: list[int], zero: bool = True) -> dict:
    """An 8 MiB drive holding 4 KiB of data in each cluster of ``data``; a paused sync=none backup into
    a target that fails every write once a write_aio event armed it; then a 1 MiB guest write (zeroes
    or data) over clusters 75-91, and the copy bitmap's count."""
    steps = [{"qemu-img": ["create", "-f", "qcow2", "d0.qcow2", str(8 * M)]},
             _q("blockdev-add", {"driver": "qcow2", "node-name": "d0",
                                 "file": {"driver": "file", "filename": "d0.qcow2"}}),
             *[{"write": {"node": "d0", "offset": c * C, "length": 4096, "pattern": 5}} for c in data],
             _q("blockdev-add", {"driver": "raw", "node-name": "t", "file": {
                 "driver": "blkdebug", "image": {"driver": "null-co", "size": 8 * M},
                 "inject-error": [{"event": "write_aio", "errno": 28}]}}),
             _q("blockdev-backup", {"job-id": "j", "on-target-error": "report", "device": "d0", "sync": "none",
                                    "target": "t", "x-perf": {"max-workers": 1}, "auto-finalize": False}),
             _q("job-pause", {"id": "j"}), {"settle-jobs": True},
             {"zero" if zero else "write": {"node": "d0", "offset": 4942336, "length": M}},
             _q("query-named-block-nodes", {"flat": True})]
    return {"name": "cbw-order", "steps": steps}


def copy_bitmap_clusters(outcome) -> int:
    """The job's copy bitmap (d0's anonymous one) in clusters still to copy."""
    node = next(n for n in outcome.replies[-1]["return"] if n["node-name"] == "d0")
    return [b["count"] for b in node["dirty-bitmaps"] if "name" not in b][-1] // C


CASES = [([80], True, 112), ([76, 88], True, 113), ([75], True, 112), ([90], True, 112), ([80], False, 112)]


@pytest.mark.parametrize("data,zero,left", CASES)
def test_zero_tasks_of_the_range_succeed_around_a_failing_data_task(data, zero, left):
    sim = play(scenario(data, zero), "sim")
    assert sim.replies[-2]["stdout"] == "write failed: No space left on device\n"
    assert copy_bitmap_clusters(sim) == left


@pytest.mark.qemu
def test_matches_real_qemu():
    for data, zero, _ in CASES:
        sc = scenario(data, zero)
        assert compare(sc, play(sc, "qemu"), play(sc, "sim")) == []
