"""Throttling (bitlab.block.throttle, bitlab.qmp.qom): ``throttle-group`` objects and ``throttle`` filter nodes.

The plain tests assert QEMU 7.2's texts and values (measured on qemu-storage-daemon and the system emulator);
the ``qemu`` tests play the same steps on both daemons and compare every reply.
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.conformance.runner import check
from bitlab.errors import QMPError

K, M = 1 << 10, 1 << 20


def _q(execute: str, arguments: dict | None = None) -> dict:
    return {"qmp": {"execute": execute, **({"arguments": arguments} if arguments is not None else {})}}


def _group(gid: str, **props: object) -> dict:
    return _q("object-add", {"qom-type": "throttle-group", "id": gid, **props})


def _limits(path: str = "/objects/tg0") -> dict:
    return _q("qom-get", {"path": path, "property": "limits"})


# object-add's checks in QEMU's order (the id, the properties in QDict order, the child, completion), the
# legacy properties, qom-get/qom-set/qom-list, object-del; the container's listing after adds that failed.
OBJECTS = [
    _q("qom-list", {"path": "/objects"}),  # the container comes with the first object added (or deleted)
    _group("tg0", limits={"bps-total": -1}),
    _q("qom-list", {"path": "objects"}),
    _q("qom-get", {"path": "nope", "property": "limits"}),
    _q("qom-list", {"path": ""}),  # (a partial path every object matches: qom-list alone says so)
    _q("qom-get", {"path": "", "property": "type"}),
    _group("tg0", limits={"bps-total": M}),
    _group("tg0", limits={"bps-total": M}),
    _group("tg0", limits={"bps-total": -1}),
    _group("tg0", limits={"bps-total": 1000, "bps-read": 5}),
    _group("tgx", **{"x-bps-total": 1024}),
    _group("tgb", limits={"bps-total": M}, **{"x-bps-total": 1024}),
    _group("tgb2", limits={"bps-read": M}, **{"x-iops-total": 100}),
    _group("tgc", limits={"bps-read": M}, **{"x-bps-total": 100}),
    _group("0bad"), _group("a b"), _group(""),
    _q("object-add", {"qom-type": "foo", "id": "f0"}),
    _q("object-add", {"id": "f1"}),
    _group("tgu", limits={"bogus": 1}),
    _group("tgu2", bogus=1),
    _group("tgn", **{"x-bps-total": -1}),
    _group("tgl", limits={"bps-total": 10 ** 15}),
    _group("tgl2", limits={"bps-total": 10 ** 15 + 1}),
    _group("tgl3", **{"x-bps-total": 10 ** 16}),
    _group("tgf", limits={"bps-total": 1.5}),
    _group("tg2", limits={"iops-total": 1000, "iops-write": 1000}),
    _group("tg3", limits={"bps-total-max": 1000}),
    _group("tg4", limits={"bps-total": 1000, "bps-total-max": 999}),
    _group("tg5", limits={"bps-total": 1000, "bps-total-max": 2000, "bps-total-max-length": 0}),
    _group("tg6", limits={"bps-total": 1000, "bps-total-max-length": 2}),
    _group("tg7", limits={"bps-total": 1000, "bps-total-max": 2000, "bps-total-max-length": 86400}),
    _group("tg7c", limits={"bps-total": 1000, "bps-total-max": 2000, "bps-total-max-length": 1 << 32}),
    _group("tg7e", limits={"bps-total": 1000, "bps-total-max": 2000, "bps-total-max-length": -1}),
    _group("tg7f", **{"x-bps-total": 1000, "x-bps-total-max": 2000, "x-bps-total-max-length": 1 << 33}),
    _group("tg8", limits={"iops-size": 4096}),
    _group("tg8c", limits={"iops-total": 10, "iops-size": 10 ** 16}),
    _group("tge", limits={}),
    _group("tgm", limits={"bps-total": 1000, "bps-total-max": 5, "iops-total": 10 ** 16}),
    _group("tgxi", **{"x-bps-total": 1000, "x-bps-read": 5}),
    _group("tgxi2", **{"x-iops-size": 4096}),
    _q("qom-list", {"path": "/objects"}),
    _q("qom-list", {"path": "/objects/tg0"}),
    _limits(), _limits("tg0"), _limits("/objects/tgb"), _limits("/objects/tgb2"), _limits("/objects/tg7"),
    _q("qom-get", {"path": "/objects/tg0", "property": "x-bps-total"}),
    _q("qom-get", {"path": "/objects/tg0", "property": "x-bps-total-max-length"}),
    _q("qom-get", {"path": "/objects/tg0", "property": "type"}),
    _q("qom-get", {"path": "/objects/tg0", "property": "bogus"}),
    _q("qom-get", {"path": "/objects/nope", "property": "limits"}),
    _q("qom-get", {"path": "/objects", "property": "tg0"}),
    _q("qom-get", {"path": "/objects", "property": "type"}),
    _q("qom-set", {"path": "/objects/tg0", "property": "limits", "value": {"iops-total": 100}}),
    _limits(),
    _q("qom-set", {"path": "/objects/tg0", "property": "limits",
                   "value": {"bps-total": 0, "bps-write": 2 * M, "bps-write-max": 4 * M, "bps-write-max-length": 3}}),
    _limits(),
    _q("qom-set", {"path": "/objects/tg0", "property": "limits", "value": {"bps-total": 1000}}),
    _q("qom-set", {"path": "/objects/tg0", "property": "limits", "value": {"bps-write-max": 1}}),
    _q("qom-set", {"path": "/objects/tg0", "property": "limits", "value": {"bps-write": -1}}),
    _q("qom-set", {"path": "/objects/tg0", "property": "limits", "value": {"bogus": 1}}),
    _q("qom-set", {"path": "/objects/tg0", "property": "limits", "value": 5}),
    _q("qom-set", {"path": "/objects/tg0", "property": "x-bps-total", "value": 5}),
    _q("qom-set", {"path": "/objects/tg0", "property": "type", "value": "x"}),
    _q("qom-set", {"path": "/objects/tg0", "property": "bogus", "value": 1}),
    _q("qom-set", {"path": "/objects", "property": "tg0", "value": 1}),
    _limits(),
    _q("object-del", {"id": "tgx"}),
    _q("object-del", {"id": "tgx"}),
    _q("object-del", {"id": "0bad"}),
    _q("object-del", {}),
    _q("qom-list", {"path": "/objects"}),
    _group("tgx", limits={"iops-read": 5}),
    _q("qom-list", {"path": "/objects"}),
]

# throttle nodes: blockdev-add's checks, their entries and graph, the group in use, blockdev-del.
NODES = [
    _group("tg0", limits={"bps-total": M}),
    _q("blockdev-add", {"driver": "throttle", "node-name": "t0", "throttle-group": "tg0",
                        "file": {"driver": "null-co", "node-name": "n0", "size": 64 * M}}),
    _q("object-del", {"id": "tg0"}),
    _q("query-named-block-nodes"),
    _q("query-named-block-nodes", {"flat": True}),
    _q("x-debug-query-block-graph"),
    _q("blockdev-add", {"driver": "throttle", "node-name": "t1", "file": "n0"}),
    _q("blockdev-add", {"driver": "throttle", "node-name": "t1", "throttle-group": "nosuch",
                        "file": {"driver": "null-co", "node-name": "n1"}}),
    _q("query-named-block-nodes", {"flat": True}),
    _q("blockdev-add", {"driver": "throttle", "node-name": "t1", "throttle-group": "tg0",
                        "limits": {"bps-total": 5}, "file": "n0"}),
    _q("blockdev-add", {"driver": "throttle", "node-name": "t1", "throttle-group": "tg0"}),
    _q("blockdev-add", {"driver": "throttle", "node-name": "t1", "throttle-group": "tg0", "file": "n0"}),
    _q("x-debug-query-block-graph"),
    _q("blockdev-del", {"node-name": "t1"}),
    {"qemu-img": ["create", "-f", "qcow2", "d.qcow2", "4M"]},
    _q("blockdev-add", {"driver": "throttle", "node-name": "t3", "throttle-group": "tg0",
                        "file": {"driver": "qcow2", "node-name": "q3",
                                 "file": {"driver": "file", "node-name": "f3", "filename": "d.qcow2"}}}),
    _q("query-named-block-nodes"),
    _q("query-named-block-nodes", {"flat": True}),
    _q("x-debug-query-block-graph"),
    _q("blockdev-snapshot", {"node": "q3", "overlay": "t0"}),
    _q("blockdev-del", {"node-name": "n0"}),
    _q("blockdev-del", {"node-name": "t0"}),
    _q("object-del", {"id": "tg0"}),
    _q("blockdev-del", {"node-name": "t3"}),
    _q("object-del", {"id": "tg0"}),
    _q("query-named-block-nodes", {"flat": True}),
    _q("qom-list", {"path": "/objects"}),
]


def _sim() -> Machine:
    vm = Machine()
    vm.qmp("object-add", {"qom-type": "throttle-group", "id": "tg0", "limits": {"bps-total": M}})
    return vm


def test_object_add_checks_in_qemus_order():
    vm = _sim()
    with pytest.raises(QMPError, match="attempt to add duplicate property 'tg0' to object \\(type 'container'\\)$"):
        vm.qmp("object-add", {"qom-type": "throttle-group", "id": "tg0"})
    # a property's own check comes before the duplicate id; completion's checks after it
    with pytest.raises(QMPError, match="bps/iops/max values must be within \\[0, 1000000000000000\\]$"):
        vm.qmp("object-add", {"qom-type": "throttle-group", "id": "tg0", "limits": {"bps-total": -1}})
    with pytest.raises(QMPError, match="attempt to add duplicate"):
        vm.qmp("object-add", {"qom-type": "throttle-group", "id": "tg0", "x-bps-total": 5, "x-bps-read": 5})
    with pytest.raises(QMPError, match="Property values cannot be negative$"):
        vm.qmp("object-add", {"qom-type": "throttle-group", "id": "t1", "x-bps-total": -1})
    with pytest.raises(QMPError, match="x-bps-total-max-length value must be in therange \\[0, 4294967295\\]$"):
        vm.qmp("object-add", {"qom-type": "throttle-group", "id": "t1", "x-bps-total-max-length": 1 << 32})
    with pytest.raises(QMPError, match="burst length too high for this burst rate$"):  # -1 passes the int64 check
        vm.qmp("object-add", {"qom-type": "throttle-group", "id": "t1",
                              "limits": {"bps-total": 1, "bps-total-max": 2, "bps-total-max-length": -1}})
    with pytest.raises(QMPError, match="Parameter 'id' expects an identifier$"):
        vm.qmp("object-add", {"qom-type": "throttle-group", "id": "0bad"})
    with pytest.raises(QMPError, match="bitlab does not simulate the 'iothread' object type"):
        vm.qmp("object-add", {"qom-type": "iothread", "id": "io0"})


def test_qom_get_set_and_list():
    vm = _sim()
    limits = vm.qmp("qom-get", {"path": "tg0", "property": "limits"})
    assert limits["bps-total"] == M and limits["bps-total-max-length"] == 1 and sum(limits.values()) == M + 6
    vm.qmp("qom-set", {"path": "/objects/tg0", "property": "limits", "value": {"iops-total": 100}})
    limits = vm.qmp("qom-get", {"path": "/objects/tg0", "property": "limits"})
    assert (limits["bps-total"], limits["iops-total"]) == (M, 100)  # members left out keep their value
    with pytest.raises(QMPError, match="Property cannot be set after initialization$"):
        vm.qmp("qom-set", {"path": "/objects/tg0", "property": "x-bps-total", "value": 5})
    with pytest.raises(QMPError, match="Device '/objects/nope' not found$") as err:
        vm.qmp("qom-get", {"path": "/objects/nope", "property": "limits"})
    assert err.value.error_class == "DeviceNotFound"
    names = [p["name"] for p in vm.qmp("qom-list", {"path": "/objects/tg0"})]
    assert names[:5] == ["type", "x-bps-write-max-length", "x-iops-total-max-length", "x-iops-size", "limits"]
    assert len(names) == 21


def test_a_throttle_node_is_a_filter_member_of_its_group():
    vm = _sim()
    vm.qmp("blockdev-add", {"driver": "throttle", "node-name": "t0", "throttle-group": "tg0",
                            "file": {"driver": "null-co", "node-name": "n0", "size": 64 * M}})
    with pytest.raises(QMPError, match="object 'tg0' is in use, can not be deleted$"):
        vm.qmp("object-del", {"id": "tg0"})
    entry = vm.qmp("query-named-block-nodes")[0]
    assert entry["drv"] == "throttle" and entry["backing_file_depth"] == 1
    assert entry["file"] == 'json:{"throttle-group": "tg0", "driver": "throttle", "file": {"driver": "null-co", ' \
                            '"size": 67108864}}'
    with pytest.raises(QMPError, match="Throttle group 'tg9' does not exist$"):
        vm.qmp("blockdev-add", {"driver": "throttle", "node-name": "t1", "throttle-group": "tg9",
                                "file": {"driver": "null-co", "node-name": "n1"}})
    assert "n1" not in vm.graph.nodes  # the child opened first goes again
    vm.qmp("blockdev-del", {"node-name": "t0"})
    vm.qmp("object-del", {"id": "tg0"})
    assert vm.qmp("qom-list", {"path": "/objects"}) == [{"name": "type", "type": "string"}]


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["system", "qsd"])
@pytest.mark.parametrize("steps", [OBJECTS, NODES], ids=["objects", "nodes"])
def test_throttle_objects_and_nodes_as_in_qemu(steps, daemon):
    diffs = check({"name": "throttle", "steps": steps}, daemon)
    assert not diffs, "\n".join(str(d) for d in diffs)


# -- requests through throttle nodes, on the simulated clock -------------------------------------------------

def _img(name: str, size: str = "8M") -> dict:
    return {"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", size]}


def _qcow2(name: str) -> dict:
    return {"driver": "qcow2", "node-name": name, "file": {"driver": "file", "filename": f"{name}.qcow2"}}


def _throttle(name: str, below: dict, group: str = "tg0") -> dict:
    return _q("blockdev-add", {"driver": "throttle", "node-name": name, "throttle-group": group, "file": below})


def _write(node: str, offset: int, length: int) -> dict:
    return {"write": {"node": node, "offset": offset, "length": length}}


JOBS = _q("query-block-jobs")

# A backup into a throttled target (1 MiB/s of writes): its tasks wait their turn; a transaction's drain lets
# the queued ones go at once; a guest write through a throttled source waits while the job runs on.
BACKUP = [
    _img("s"), _img("t"), _img("u"),
    _group("tg0", limits={"bps-write": M}),
    _q("blockdev-add", _qcow2("s")),
    _write("s", 0, 4 * M),
    _throttle("t", {"driver": "qcow2", "node-name": "tq", "file": {"driver": "file", "filename": "t.qcow2"}}),
    _q("blockdev-add", _qcow2("u")),
    _q("blockdev-backup", {"device": "s", "target": "t", "sync": "full", "job-id": "j"}),
    {"sleep": 1.4}, JOBS,
    {"wait-job": {"id": "j", "status": "null"}},
    _q("blockdev-del", {"node-name": "t"}),
    _throttle("t", "tq"),
    _q("blockdev-backup", {"device": "s", "target": "t", "sync": "full", "job-id": "k"}),
    {"sleep": 1.4}, JOBS,
    _q("transaction", {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "u", "name": "b"}}]}),
    JOBS,
    {"wait-job": {"id": "k", "status": "null"}},
]

# Guest writes through a throttle node above the format node: 0 s, 0.9 s, 1.0 s (the bucket holds a tenth of a
# second). A backup of it reads unthrottled: the job's first requests start as the transaction's drained section
# ends, before the throttle node's own end of it runs. A backup into a throttled target, paused by the user while
# its writes wait: the pause waits for them.
GUEST = [
    _img("s"), _img("t"), _img("v"),
    _group("tg0", limits={"bps-total": M}),
    _throttle("d", _qcow2("s")),
    _q("blockdev-add", _qcow2("t")),
    _write("d", 0, M), _write("d", M, M), _write("d", 2 * M, M),
    _q("qom-set", {"path": "/objects/tg0", "property": "limits", "value": {"bps-total": 4 * M}}),
    _q("blockdev-backup", {"device": "d", "target": "t", "sync": "full", "job-id": "j"}),
    {"sleep": 0.1}, JOBS,
    _q("blockdev-del", {"node-name": "t"}),
    _throttle("w", _qcow2("v")),
    _q("qom-set", {"path": "/objects/tg0", "property": "limits", "value": {"bps-total": 0, "bps-write": M}}),
    _q("blockdev-backup", {"device": "d", "target": "w", "sync": "full", "job-id": "k"}),
    {"sleep": 1.4},
    _q("block-job-pause", {"device": "k"}), JOBS,
    {"sleep": 2.0}, JOBS,
    {"sleep": 4.0}, JOBS,
    _q("block-job-resume", {"device": "k"}),
    {"wait-job": {"id": "k", "status": "null"}},
]


# A compressed backup through a throttle node (bdrv_supports_compressed_writes asks what the filter filters),
# and qemu-io's compressed write through it.
COMPRESSED = [
    _img("s", "2M"), _img("t", "2M"),
    _group("tg0", limits={"bps-write": M}),
    _q("blockdev-add", _qcow2("s")),
    _write("s", 0, 1536 * 1024),
    _throttle("t", {"driver": "qcow2", "node-name": "tq", "file": {"driver": "file", "filename": "t.qcow2"}}),
    _q("blockdev-backup", {"device": "s", "target": "t", "sync": "full", "job-id": "j", "compress": True}),
    {"wait-job": {"id": "j", "status": "null"}},
    _q("blockdev-del", {"node-name": "t"}),
    {"qemu-img": ["map", "--output=json", "t.qcow2"]},
    {"qemu-img": ["check", "--output=json", "t.qcow2"]},
]


# Two throttle nodes in one group (2 MiB/s of writes), each the target of a backup started in one transaction:
# the group lets their queued requests go one at a time, at the group's rate. Whose request goes next varies in
# QEMU itself (measured: the two jobs' offsets at 0.7 s were 1+1, 2+0 or 0+2 MiB from run to run), so the story
# compares the jobs' events; the plain test below checks the total.
GROUP = [
    _img("a", "4M"), _img("b", "4M"), _img("x", "4M"), _img("y", "4M"),
    _group("tg0", limits={"bps-write": 2 * M}),
    _q("blockdev-add", _qcow2("a")), _q("blockdev-add", _qcow2("b")),
    _write("a", 0, 4 * M), _write("b", 0, 4 * M),
    _throttle("tx", _qcow2("x")), _throttle("ty", _qcow2("y")),
    _q("transaction", {"actions": [
        {"type": "blockdev-backup", "data": {"device": "a", "target": "tx", "sync": "full", "job-id": "ja"}},
        {"type": "blockdev-backup", "data": {"device": "b", "target": "ty", "sync": "full", "job-id": "jb"}}]}),
    {"wait-job": {"id": "ja", "status": "null"}},
    {"wait-job": {"id": "jb", "status": "null"}},
]


# An overlay whose backing node is a throttle node (1 MiB/s of reads): a backup's reads of what the overlay does not
# hold go to the backing node and wait there (4 MiB in the base: 0 s, 0.9 s, 1.9 s, 2.9 s); a guest's read too.
BACKING = [
    _img("b"), _img("o"), _img("t"),
    _group("tg0", limits={"bps-read": M}),
    _q("blockdev-add", _qcow2("b")),
    _write("b", 0, 4 * M),
    _throttle("tb", "b"),
    _q("blockdev-add", _qcow2("o") | {"backing": "tb"}),
    _write("o", 6 * M, M),
    _q("blockdev-add", _qcow2("t")),
    _q("blockdev-backup", {"device": "o", "target": "t", "sync": "full", "job-id": "j"}),
    {"sleep": 0.1}, JOBS, {"sleep": 1.3}, JOBS,
    {"wait-job": {"id": "j", "status": "null"}},
    {"read": {"node": "o", "offset": 0, "length": 2 * M}},
]


def _timed(vm: Machine, steps: list) -> list[int]:
    """Play ``steps`` on ``vm``; the simulated time each took (ns)."""
    from bitlab.conformance.steps import run_step

    took = []
    for step in steps:
        before = vm.clock.now_ns
        run_step(vm, step)
        took.append(vm.clock.now_ns - before)
    return took


def _qemu_wait_ns(level: float, avg: int) -> float:
    """throttle_compute_wait with no burst rate: what the bucket holds past a tenth of a second's worth."""
    return (level - avg / 10) * 1e9 / avg


def test_guest_writes_wait_as_the_leaky_bucket_says():
    vm = Machine()
    took = _timed(vm, GUEST[:9])
    first, second, third = took[6:9]
    assert first == 0  # the bucket was empty
    assert abs(second - _qemu_wait_ns(M, M)) <= 1  # 0.9 s (measured: 0.90)
    assert abs(third - _qemu_wait_ns(M + M / 10, M)) <= 1  # what leaked meanwhile: 1.0 s (measured: 1.00)


def test_a_backup_into_a_throttled_target_takes_the_throttles_time():
    vm = Machine()
    _timed(vm, BACKUP[:8])
    start = vm.clock.now_ns
    vm.qmp("blockdev-backup", {"device": "s", "target": "t", "sync": "full", "job-id": "j"})
    vm.run(until=vm.now + 1.4)
    # eight 1 MiB tasks (the unallocated half written as zeroes, which count as much): 0 s, 0.9 s, 1.9 s ...
    assert vm.qmp("query-block-jobs")[0]["offset"] == 2 * M
    vm.run()
    done = [e for e in vm.events if e["event"] == "BLOCK_JOB_COMPLETED"][-1]
    at = done["timestamp"]["seconds"] * 10 ** 9 + done["timestamp"]["microseconds"] * 1000
    expect = sum(_qemu_wait_ns(level, M) for level in (M, *[M + M / 10] * 6))  # 6.9 s (4 MiB measured: 2.905 s)
    assert abs(at - start - expect) < 1_000_000  # (the model's 50 µs + 2 GiB/s per request on top)
    assert vm.contents("tq") == vm.contents("s")


def test_a_drain_lets_the_queued_requests_go():
    vm = Machine()
    _timed(vm, BACKUP[:8])
    vm.qmp("blockdev-backup", {"device": "s", "target": "t", "sync": "full", "job-id": "j"})
    vm.run(until=vm.now + 1.4)
    at = vm.clock.now_ns
    vm.qmp("transaction", {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "u", "name": "b"}}]})
    vm.run()
    done = [e for e in vm.events if e["event"] == "BLOCK_JOB_COMPLETED"][-1]
    assert done["timestamp"]["seconds"] * 10 ** 9 + done["timestamp"]["microseconds"] * 1000 - at < 1_000_000


def test_a_group_shares_its_rate_among_its_members():
    vm = Machine()
    _timed(vm, GROUP[:12])
    start = vm.now
    for seconds, total in ((0.7, 2), (1.2, 3), (1.7, 4), (2.2, 5)):  # 1 MiB at 0 s, 0.4 s, 0.9 s, 1.4 s, 1.9 s ...
        vm.run(until=start + seconds)
        assert sum(job["offset"] for job in vm.qmp("query-block-jobs")) == total * M


def test_reads_through_a_throttled_backing_node_wait_there():
    vm = Machine()
    _timed(vm, BACKING[:11])
    start = vm.clock.now_ns
    vm.run()
    done = [e for e in vm.events if e["event"] == "BLOCK_JOB_COMPLETED"][-1]
    at = done["timestamp"]["seconds"] * 10 ** 9 + done["timestamp"]["microseconds"] * 1000
    # (plus the model's 50 µs + 2 GiB/s per request: a few ms)
    assert abs(at - start - _qemu_wait_ns(M, M) - 2 * _qemu_wait_ns(M + M / 10, M)) < 5_000_000  # measured: 2.904 s


def test_a_guest_write_right_after_the_backup_meets_its_requests_at_the_throttle():
    """The job's first requests start with the command (its eight 1 MiB tasks; the zero ones write at once, and
    the first passes): a guest write to the last cluster waits for that cluster's task, queued fourth (measured:
    2.89 s). The transaction's drain_all had let every request go until its end ran: the source's drained
    section, polling, ran it before the job started."""
    vm = Machine()
    _timed(vm, BACKUP[:8])
    vm.qmp("blockdev-backup", {"device": "s", "target": "t", "sync": "full", "job-id": "j"})
    took = _timed(vm, [_write("s", 7 * M, 64 * K)])[0]
    assert abs(took - _qemu_wait_ns(M, M) - 2 * _qemu_wait_ns(M + M / 10, M)) < 5_000_000


def test_a_backup_of_a_throttled_source_starts_unthrottled():
    vm = Machine()
    _timed(vm, GUEST[:11])
    vm.run(until=vm.now + 0.1)
    assert vm.qmp("query-block-jobs") == []  # 3 MiB read at once (4 MiB/s would take 0.4 s)


def test_a_user_pause_waits_for_the_throttled_requests():
    vm = Machine()
    _timed(vm, GUEST[:18])
    vm.qmp("block-job-pause", {"device": "k"})  # at 1.4 s: 2 of its 8 tasks done, 6 waiting at the throttle
    job = vm.qmp("query-block-jobs")[0]
    assert (job["status"], job["paused"], job["busy"]) == ("running", True, True)  # backup_pause waits for them
    vm.run(until=vm.now + 2.0)
    job = vm.qmp("query-block-jobs")[0]
    assert (job["status"], job["offset"]) == ("running", 4 * M)
    vm.run(until=vm.now + 4.0)
    job = vm.qmp("query-block-jobs")[0]
    assert (job["status"], job["busy"], job["offset"]) == ("paused", False, 8 * M)


@pytest.mark.qemu
@pytest.mark.parametrize("steps", [BACKUP, GUEST, COMPRESSED, GROUP, BACKING],
                         ids=["backup", "guest", "compressed", "group", "backing"])
def test_throttled_requests_as_in_qemu(steps):
    diffs = check({"name": "throttle-io", "steps": steps}, "qsd")
    assert not diffs, "\n".join(str(d) for d in diffs)


def test_random_throttle_episodes():
    """``--focus throttle``: reproducible, and the episodes hold what they are there for."""
    from bitlab.conformance.gen_throttle import throttle_scenario
    from bitlab.conformance.runner import play

    assert throttle_scenario(3, 4) == throttle_scenario(3, 4) != throttle_scenario(3, 5)
    steps = [s for i in range(40) for s in throttle_scenario(3, i)["steps"]]
    executes = {s["qmp"]["execute"] for s in steps if "qmp" in s}
    assert {"object-add", "object-del", "qom-get", "qom-set", "qom-list", "blockdev-reopen", "blockdev-backup"} \
        <= executes
    adds = [s["qmp"]["arguments"] for s in steps if s.get("qmp", {}).get("execute") == "object-add"]
    assert any("limits" in a for a in adds) and any(k.startswith("x-") for a in adds for k in a)
    assert any(s.get("write", {}).get("node") == "tp" for s in steps)
    assert all(play(throttle_scenario(3, i), "sim").error is None for i in range(10))


@pytest.mark.qemu
def test_conformance_report_focused_on_throttling():
    from bitlab.conformance.report import report

    text, bad = report(5, 20031, focus="throttle")
    assert bad == 0 and "scenarios run                5" in text
