"""A backup's copy-before-write filter takes the source's place under *every* parent (block.c
``bdrv_replace_node``), and gives it back however the job ends (``bdrv_cbw_drop``).

Parents beyond devices and exports: an overlay whose ``backing`` is the source, an earlier
``sync=none`` drive-backup target (its backing link), an earlier backup's filter. Not a parent
inside the filter's own subtree (this job's own sync=none target). The plain tests assert
qemu-storage-daemon 7.2's values; the ``qemu`` test plays the same steps on both backends.
"""

from __future__ import annotations

import pytest

from bitlab.conformance.gen_parents import parents_scenario
from bitlab.conformance.generator import random_scenario
from bitlab.conformance.report import report
from bitlab.conformance.runner import compare, play

M = 1 << 20
D0 = '{"driver": "qcow2", "file": {"driver": "file", "filename": "d0.qcow2"}}'
CBW_D0_T = ('{"driver": "copy-before-write", "file": ' + D0 + ', "target": {"driver": "qcow2", "file": '
            '{"driver": "file", "filename": "t.qcow2"}}}')


def _overlay_name(backing: str, image: str = "ov.qcow2") -> str:
    """A qcow2 node's json: filename when its backing is not what its image names."""
    return f'json:{{"backing": {backing}, "driver": "qcow2", "file": {{"driver": "file", "filename": "{image}"}}}}'


def _q(execute: str, arguments: dict | None = None) -> dict:
    return {"qmp": {"execute": execute, **({"arguments": arguments} if arguments is not None else {})}}


def _image(name: str) -> list[dict]:
    return [{"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", "4M"]},
            _q("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2"}})]


def _setup() -> list[dict]:
    """d0 (data in its first 2 MiB), target t, and overlay ov whose backing is d0."""
    return [*_image("d0"), {"write": {"node": "d0", "offset": 0, "length": 2 * M, "pattern": 2}}, *_image("t"),
            {"qemu-img": ["create", "-f", "qcow2", "ov.qcow2", "4M"]},
            _q("blockdev-add", {"driver": "qcow2", "node-name": "ov", "backing": "d0",
                                "file": {"driver": "file", "filename": "ov.qcow2"}}),
            {"write": {"node": "ov", "offset": 0, "length": 512, "pattern": 5}}]


def _throttled(job: str, device: str, target: str, filt: str) -> list[dict]:
    """A backup that copies its first request and then sleeps on the rate limit."""
    return [_q("blockdev-backup", {"job-id": job, "device": device, "target": target, "sync": "full", "speed": 1,
                                   "filter-node-name": filt}), {"sleep": 0.05}]


def overlay_steps() -> list[dict]:
    """Reads through the overlay while d0 is backed up; a second backup, of the overlay; blockdev-del."""
    return [*_setup(), *_image("t2"), *_throttled("j", "d0", "t", "f"),
            _q("query-named-block-nodes"), _q("query-block"),
            {"read": {"node": "ov", "offset": 0, "length": 512, "pattern": 5}},
            {"read": {"node": "ov", "offset": 65536, "length": 65536, "pattern": 2}},
            _q("blockdev-del", {"node-name": "d0"}),
            _q("blockdev-backup", {"job-id": "k", "device": "ov", "target": "t2", "sync": "full",
                                   "filter-node-name": "g"}),
            {"wait-job": {"id": "k", "status": "null"}},
            {"read": {"node": "t2", "offset": 0, "length": 512, "pattern": 5}},
            {"read": {"node": "t2", "offset": M, "length": M, "pattern": 2}},
            *_throttled("k2", "ov", "t2", "g"),
            _q("query-named-block-nodes", {"flat": True}),
            _q("blockdev-del", {"node-name": "ov"}),
            _q("job-cancel", {"id": "j"}), {"wait-job": {"id": "j", "status": "null"}},
            _q("query-named-block-nodes", {"flat": True}),
            _q("job-cancel", {"id": "k2"}), {"settle-jobs": True},
            _q("query-named-block-nodes"), _q("blockdev-del", {"node-name": "ov"}),
            _q("blockdev-del", {"node-name": "ov"})]


def sync_none_steps() -> list[dict]:
    """An earlier sync=none drive-backup target (mode existing: its backing link is set by the job)."""
    return [*_setup()[:6], {"qemu-img": ["create", "-f", "qcow2", "n.qcow2", "4M"]},
            _q("drive-backup", {"job-id": "n", "device": "d0", "target": "n.qcow2", "sync": "none",
                                "format": "qcow2", "mode": "existing"}),
            *_throttled("j", "d0", "t", "f"),
            _q("query-named-block-nodes"),
            {"write": {"node": "d0", "offset": 0, "length": 65536, "pattern": 6}},
            {"read": {"node": "d0", "offset": 0, "length": 65536, "pattern": 6}},
            _q("job-cancel", {"id": "j"}), {"wait-job": {"id": "j", "status": "null"}},
            _q("query-named-block-nodes"),
            _q("job-cancel", {"id": "n"}), {"settle-jobs": True},
            _q("query-named-block-nodes", {"flat": True})]


def endings_steps() -> list[dict]:
    """The overlay's backing goes back to d0 when a backup fails, completes, or a grouped transaction aborts."""
    bad = {"driver": "qcow2", "node-name": "bad", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "bad.qcow2"},
        "inject-error": [{"event": "write_aio", "errno": 5}]}}
    one = {"max-workers": 1}
    return [*_setup(), {"qemu-img": ["create", "-f", "qcow2", "bad.qcow2", "4M"]}, _q("blockdev-add", bad),
            _q("blockdev-backup", {"job-id": "j", "device": "d0", "target": "bad", "sync": "full",
                                   "filter-node-name": "f", "x-perf": one}),
            {"wait-job": {"id": "j", "status": "null"}}, _q("query-named-block-nodes"),
            _q("blockdev-backup", {"job-id": "c", "device": "d0", "target": "t", "sync": "full",
                                   "filter-node-name": "f"}),
            {"wait-job": {"id": "c", "status": "null"}}, _q("query-named-block-nodes"),
            *_image("d1"), {"write": {"node": "d1", "offset": 0, "length": 65536, "pattern": 9}},
            _q("transaction", {"actions": [
                {"type": "blockdev-backup", "data": {"job-id": "g1", "device": "d0", "target": "t", "sync": "full",
                                                     "speed": 1, "filter-node-name": "f"}},
                {"type": "blockdev-backup", "data": {"job-id": "g2", "device": "d1", "target": "bad",
                                                     "sync": "full", "x-perf": one}}],
                "properties": {"completion-mode": "grouped"}}),
            {"wait-job": {"id": "g1", "status": "null"}}, {"wait-job": {"id": "g2", "status": "null"}},
            _q("query-named-block-nodes"), _q("blockdev-del", {"node-name": "ov"}),
            _q("query-named-block-nodes", {"flat": True})]


def _replies(steps: list[dict]) -> list:
    out = play({"name": "t", "steps": steps}, "sim")
    assert out.error is None
    return out.replies


def _reply(steps: list[dict], replies: list, step: dict, nth: int = 0) -> object:
    return replies[[i for i, s in enumerate(steps) if s == step][nth]]


def _node(nodes: list[dict], name: str) -> dict:
    return next(n for n in nodes if n["node-name"] == name)


def _chain(image: dict) -> list[str]:
    out = []
    while image is not None:
        out.append(image["format"])
        image = image.get("backing-image")
    return out


def test_an_overlay_of_the_source_reads_through_the_filter():
    steps = overlay_steps()
    replies = _replies(steps)
    nodes = _reply(steps, replies, _q("query-named-block-nodes"))["return"]
    ov = _node(nodes, "ov")
    name = _overlay_name(CBW_D0_T)
    assert (ov["file"], ov["image"]["filename"], ov["backing_file"], ov["backing_file_depth"]) == (
        name, name, "d0.qcow2", 2)
    assert _chain(ov["image"]) == ["qcow2", "copy-before-write", "qcow2"]
    assert _node(nodes, "f")["backing_file_depth"] == 1
    reads = [r["stdout"].splitlines()[0] for s, r in zip(steps, replies) if "read" in s]
    assert reads == ["read 512/512 bytes at offset 0", "read 65536/65536 bytes at offset 65536",
                     "read 512/512 bytes at offset 0", "read 1048576/1048576 bytes at offset 1048576"]
    assert _reply(steps, replies, _q("blockdev-del", {"node-name": "d0"})) == {
        "error": {"class": "GenericError", "desc": "Block device d0 is in use"}}


def test_a_backup_of_the_overlay_while_the_first_runs():
    steps = overlay_steps()
    replies = _replies(steps)
    during, after_j = (r["return"] for s, r in zip(steps, replies)
                       if s == _q("query-named-block-nodes", {"flat": True}))
    name = _overlay_name(CBW_D0_T)
    assert [_node(during, n)["file"] for n in ("g", "ov", "f")] == [name, name, "d0.qcow2"]
    assert [_node(after_j, n)["file"] for n in ("g", "ov")] == [_overlay_name(D0)] * 2
    assert "f" not in {n["node-name"] for n in after_j}
    dels = [r for s, r in zip(steps, replies) if s == _q("blockdev-del", {"node-name": "ov"})]
    assert dels == [{"error": {"class": "GenericError", "desc": "Block device ov is in use"}}, {"return": {}},
                    {"error": {"class": "GenericError", "desc": "Failed to find node with node-name='ov'"}}]
    last = _reply(steps, replies, _q("query-named-block-nodes"), 1)["return"]
    assert _node(last, "ov")["backing_file_depth"] == 1
    assert _chain(_node(last, "ov")["image"]) == ["qcow2", "qcow2"]


def test_an_earlier_sync_none_target_points_at_the_later_filter():
    steps = sync_none_steps()
    replies = _replies(steps)
    during, after = (r["return"] for s, r in zip(steps, replies) if s == _q("query-named-block-nodes"))
    target = next(n for n in during if n["drv"] == "qcow2" and n["node-name"].startswith("#"))
    assert (target["file"], target["backing_file"], target["backing_file_depth"]) == (
        _overlay_name(CBW_D0_T, "n.qcow2"), "d0.qcow2", 2)
    assert [n["backing_file_depth"] for n in during if n["drv"] == "copy-before-write"] == [1, 2]
    target = next(n for n in after if n["drv"] == "qcow2" and n["node-name"].startswith("#"))
    assert (target["file"], target["backing_file_depth"]) == (_overlay_name(D0, "n.qcow2"), 1)
    assert replies[steps.index({"read": {"node": "d0", "offset": 0, "length": 65536, "pattern": 6}})]["stdout"] \
        .startswith("read 65536/65536 bytes at offset 0\n")


def test_every_ending_gives_the_overlay_its_source_back():
    steps = endings_steps()
    replies = _replies(steps)
    queries = [r["return"] for s, r in zip(steps, replies) if s == _q("query-named-block-nodes")]
    assert len(queries) == 3  # after a failed, a completed and a grouped-aborted backup
    for nodes in queries:
        ov = _node(nodes, "ov")
        assert (ov["file"], ov["backing_file_depth"]) == (_overlay_name(D0), 1)
        assert not any(n["drv"] == "copy-before-write" for n in nodes)
    # blkdebug is a filter: its image is its backing-image, one level down
    bad_file = next(n for n in queries[0] if n["drv"] == "blkdebug")
    assert (bad_file["backing_file_depth"], _chain(bad_file["image"])) == (1, ["blkdebug", "file"])
    assert _reply(steps, replies, _q("blockdev-del", {"node-name": "ov"})) == {"return": {}}


def _without_throttled_files(reply: object) -> object:
    """Drop the file nodes of the targets a throttled job writes: their length when the query comes
    depends on QEMU's timing."""
    if isinstance(reply, dict) and isinstance(reply.get("return"), list):
        return {"return": [n for n in reply["return"] if not (isinstance(n, dict) and n.get("drv") == "file"
                                                            and n.get("file") in ("t.qcow2", "t2.qcow2"))]}
    return reply


@pytest.mark.qemu
@pytest.mark.parametrize("make", [overlay_steps, sync_none_steps, endings_steps])
def test_parents_follow_the_filter_as_in_qemu(make):
    scenario = {"name": make.__name__, "steps": make()}
    real, sim = play(scenario, "qemu"), play(scenario, "sim")
    for out in (real, sim):
        out.replies = [_without_throttled_files(r) for r in out.replies]
    assert [d.render() for d in compare(scenario, real, sim)] == []


def _overlays(steps: list[dict]) -> list[str]:
    return [s["qmp"]["arguments"]["backing"] for s in steps
            if s.get("qmp", {}).get("execute") == "blockdev-add" and "backing" in s["qmp"]["arguments"]]


def test_random_episodes_build_overlays_and_earlier_sync_none_targets():
    scenarios = [parents_scenario(3, i)["steps"] for i in range(10)]
    assert parents_scenario(3, 4) == parents_scenario(3, 4) != parents_scenario(3, 5)
    assert all(_overlays(steps) for steps in scenarios)
    starts = [s["qmp"] for steps in scenarios for s in steps
              if s.get("qmp", {}).get("execute") in ("blockdev-backup", "drive-backup")]
    assert any(m["arguments"]["sync"] == "none" and m["execute"] == "drive-backup" for m in starts)
    assert any(m["arguments"]["device"].startswith("po") for m in starts)  # a backup of an overlay
    # guest writes on a source an overlay holds, only in episodes whose filters are all named
    written = set()
    for steps in scenarios:
        held: set[str] = set()
        for step in steps:
            held.update(_overlays([step]))
            if step.get("write", {}).get("node") in held:
                written.add(step["write"]["node"])
                episode = step["write"]["node"][2:]
                backups = [s["qmp"]["arguments"] for s in steps if s.get("qmp", {}).get("execute") in
                           ("blockdev-backup", "drive-backup") and s["qmp"]["arguments"]["device"][2:] == episode]
                assert all("filter-node-name" in args for args in backups)
    assert written
    # the random mix has them too (in a random stream of their own)
    mixed = [random_scenario(5, i)["steps"] for i in range(40)]
    assert sum(1 for steps in mixed if _overlays(steps)) >= 5


@pytest.mark.qemu
def test_conformance_report_focused_on_parents():
    text, bad = report(3, 11, focus="parents")
    assert bad == 0 and "scenarios run                3" in text


@pytest.mark.qemu
def test_conformance_report_on_the_system_emulator():
    """Scenario 0 of seed 9006 stacks two backups' filters over ``ps1`` and writes to it; on the system
    emulator the backend once sent that write to the lower filter (QEMU: a permission conflict)."""
    text, bad = report(1, 9006, focus="parents", daemon="system")
    assert text.startswith("bitlab conformance against real QEMU 7.2 (seed 9006, daemon system)\n")
    assert bad == 0, text
