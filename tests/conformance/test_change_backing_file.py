"""``change-backing-file``: the backing file name written into an image of a device's chain (blockdev.c
qmp_change_backing_file), QEMU 7.2's checks in order, the image reopened read-write for it and read-only again.

The node keeps its backing node; only the image's header (and the name the node compares its backing node with)
changes: a name that is not the backing node's makes the node's filename a ``json:`` one (its backing overridden),
and the backing format written is the image's own format, whatever the backing file's is. Also here: a raw node
over a qcow2 node has no plain filename (its file child is no protocol node) and shows the qcow2 node's cluster
size (raw_get_info asks its child). Every step is compared with real QEMU 7.2 on both daemons.
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.conformance.test_nbd_client import _img, _q, _write
from tests.conformance.test_raw_allocation import story


def _nodes() -> dict:
    return _q("query-named-block-nodes", {"flat": True})


def _change(device: str, image: str, name: str) -> dict:
    return _q("change-backing-file", {"device": device, "image-node-name": image, "backing-file": name})


STEPS = [
    _img("create", "-f", "qcow2", "base.qcow2", "1M"),
    _img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2"),
    _img("create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2"),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": {"driver": "file", "filename": "top.qcow2"}}),
    _q("block-dirty-bitmap-add", {"node": "top", "name": "pb", "persistent": True}),
    _change("top", "top", "other.qcow2"), _nodes(), _img("info", "-U", "top.qcow2"), _q("query-block"),
    _change("top", "nonexist", "x"), _change("nonexist", "top", "x"),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "mid2", "read-only": True,
                        "file": {"driver": "file", "filename": "mid.qcow2"}}),
    _change("top", "mid2", "x"), _change("mid2", "mid2", "base.qcow2"), _nodes(), _img("info", "-U", "mid.qcow2"),
    _change("top", "top", "x" * 1024), _change("top", "top", "mid.qcow2"), _nodes(),
    _img("create", "-f", "qcow2", "solo.qcow2", "1M"),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "b",
                        "file": {"driver": "file", "node-name": "bf", "filename": "solo.qcow2"}}),
    _change("b", "b", "x"), _change("b", "bf", "x"),
    _q("blockdev-add", {"driver": "raw", "node-name": "r", "file": "top"}),
    _change("r", "r", "x"), _change("r", "top", "y.qcow2"), _nodes(),
    _change("top", "top", ""), _img("info", "-U", "top.qcow2"),
    _img("create", "-f", "qcow2", "-b", "solo.qcow2", "-F", "qcow2", "c.qcow2", "16M"),
    _q("blockdev-del", {"node-name": "b"}),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "c", "file": {"driver": "file", "filename": "c.qcow2"}}),
    _write("c", 0, 1 << 20, 0x11), _write("c", 8 << 20, 1 << 20, 0x12),  # (a second task waits for the speed)
    _q("blockdev-add", {"driver": "null-co", "node-name": "n", "size": 16 << 20}),
    _q("blockdev-backup", {"job-id": "j", "device": "c", "target": "n", "sync": "full", "speed": 1}),
    _change("c", "c", "z"), _q("block-job-cancel", {"device": "j"}), {"wait-job": {"id": "j", "status": "null"}},
    _change("c", "c", "z"), _img("info", "-U", "c.qcow2"),
    _q("blockdev-del", {"node-name": "r"}), _q("blockdev-del", {"node-name": "top"}),
    _img("info", "top.qcow2"), _img("info", "mid.qcow2"),
]


def _top(nodes: dict, name: str = "top") -> dict:
    return next(n for n in nodes["return"] if n["node-name"] == name)


@pytest.fixture(scope="module")
def sim() -> list:
    return story(STEPS)(Machine())


def test_the_header_changes_not_the_chain(sim):
    top = _top(sim[6])
    assert top["image"]["backing-filename"] == "other.qcow2" and top["backing_file"] == "mid.qcow2"
    assert top["image"]["filename"] == ('json:{"backing": {"driver": "qcow2", "file": {"driver": "file", "filename": '
                                        '"mid.qcow2"}}, "driver": "qcow2", "file": {"driver": "file", "filename": '
                                        '"top.qcow2"}}')
    assert "backing file: other.qcow2\nbacking file format: qcow2\n" in sim[7]["stdout"]
    assert _top(sim[18])["image"]["filename"] == "top.qcow2"  # (the name its backing node has: plain again)


def test_errors(sim):
    assert sim[9]["error"]["desc"] == "Cannot find device='' nor node-name='nonexist'"
    assert sim[10]["error"]["desc"] == "Cannot find device='nonexist' nor node-name='nonexist'"
    assert sim[12]["error"]["desc"] == "'top' and image file are not in the same chain"
    assert sim[13]["error"]["desc"] == 'Failed to get "write" lock'  # (reopened read-write: top's chain has mid)
    assert sim[21]["error"]["desc"] == "not allowing backing file change on an image without a backing file"
    assert sim[22]["error"]["desc"] == sim[21]["error"]["desc"]  # (a file node)
    assert sim[24]["error"]["desc"] == sim[21]["error"]["desc"]  # (a raw node is no filter)
    assert sim[25]["error"]["desc"] == "'r' and image file are not in the same chain"
    assert sim[27]["error"]["desc"] == "Need a root block node"
    assert sim[36]["error"]["desc"] == "Need a root block node"  # (the backup's filter is above it)
    assert "backing file: z\nbacking file format: qcow2\n" in sim[40]["stdout"]

def test_a_raw_node_over_a_qcow2_node(sim):
    raw = _top(sim[26], "r")
    assert raw["image"]["filename"].startswith('json:{"driver": "raw", "file": {"driver": "qcow2"')
    assert raw["image"]["cluster-size"] == 65536


def _qcow2(name: str, backing: dict | None = None) -> dict:
    return {"driver": "qcow2", "node-name": name, "file": {"driver": "file", "filename": f"{name}.qcow2"},
            **({"backing": backing} if backing is not None else {})}


AFTER_COMMIT = [  # an active commit leaves its base read-write; the middle image's reopens for the change keep it so
    _img("create", "-f", "qcow2", "kb.qcow2", "4M"),
    _img("create", "-f", "qcow2", "-b", "kb.qcow2", "-F", "qcow2", "km.qcow2"),
    _img("create", "-f", "qcow2", "-b", "km.qcow2", "-F", "qcow2", "kt.qcow2"),
    _q("blockdev-add", _qcow2("kt", _qcow2("km", _qcow2("kb")))), _write("kt", 0, 64 << 10, 0x21),
    _q("block-commit", {"job-id": "kj", "device": "kt"}), {"wait-job": {"id": "kj", "status": "ready"}},
    _q("job-complete", {"id": "kj"}), {"wait-job": {"id": "kj", "status": "null"}}, _nodes(),
    _change("kt", "km", "kb.qcow2"), _nodes(), _change("kt", "kt", "km.qcow2"), _nodes(),
]


def _chain(p: str) -> list[dict]:
    """Three images, the top's file node watched: a write threshold and a dirty bitmap on it."""
    def add(name: str, backing: str | None = None) -> dict:
        return _q("blockdev-add", {"driver": "qcow2", "node-name": name, **({"backing": backing} if backing else {}),
                                   "file": {"driver": "file", "filename": f"{name}.qcow2", "node-name": f"{name}f"}})
    return [_img("create", "-f", "qcow2", f"{p}b.qcow2", "8M"), add(f"{p}b"),
            _img("create", "-f", "qcow2", "-b", f"{p}b.qcow2", "-F", "qcow2", f"{p}m.qcow2"), add(f"{p}m", f"{p}b"),
            _img("create", "-f", "qcow2", "-b", f"{p}m.qcow2", "-F", "qcow2", f"{p}t.qcow2"), add(f"{p}t", f"{p}m"),
            _q("block-set-write-threshold", {"node-name": f"{p}tf", "write-threshold": 100}),
            _q("block-dirty-bitmap-add", {"node": f"{p}tf", "name": "fb", "granularity": 512})]


def _seen(p: str) -> list[dict]:
    return [_q("query-blockstats", {"query-nodes": True}), _nodes(),
            _q("x-debug-block-dirty-bitmap-sha256", {"node": f"{p}tf", "name": "fb"})]


HEADERS = [  # qcow2_change_backing_file writes the header (qcow2_update_header: the whole first cluster) to the file
    *_chain("h"), _change("ht", "ht", "elsewhere.qcow2"), *_seen("h"),
    *_chain("s"), _q("block-stream", {"job-id": "sj", "device": "st", "base-node": "sb"}),
    {"wait-job": {"id": "sj", "status": "null"}}, *_seen("s"),  # (the mid image empty: nothing copied)
    *_chain("c"), _q("block-commit", {"job-id": "cj", "device": "ct", "top-node": "cm", "base-node": "cb"}),
    {"wait-job": {"id": "cj", "status": "null"}}, *_seen("c"),  # (the top's backing file renamed)
]


def test_the_header_write_reaches_the_file_node():
    """Its highest write offset, its write threshold (passed: gone) and its dirty bitmaps see the header written."""
    out = story(HEADERS)(Machine())
    stats_at = [i for i, step in enumerate(HEADERS) if step.get("qmp", {}).get("execute") == "query-blockstats"]
    for at, p in zip(stats_at, "hsc", strict=True):
        stats = next(s for s in out[at]["return"] if s.get("node-name") == f"{p}tf")
        assert stats["stats"]["wr_highest_offset"] == 65536
        entry = _top(out[at + 1], f"{p}tf")
        assert entry["write_threshold"] == 0 and entry["dirty-bitmaps"][0]["count"] == 65536


def test_reopens_keep_what_was_set_explicitly():
    """bdrv_reopen_queue_child: a read-only reopen of the middle image queues its backing node with what was set
    explicitly on it before (read-write, by the commit) over the read-only a backing file inherits."""
    out = story(AFTER_COMMIT)(Machine())
    for step in (9, 11, 13):
        assert _top(out[step], "kb")["ro"] is False


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_matches_qemu(daemon):
    want, got = on_both(story(STEPS + AFTER_COMMIT + HEADERS), daemon)
    assert got == want


def test_commit_episodes_rename_from_their_seed_on():
    """The random commit and stream episodes end with a change-backing-file now and then from RENAME_SINCE on (a
    stream of its own: older seeds keep their scenarios)."""
    from bitlab.conformance.gen_commit import RENAME_SINCE, commit_scenario

    def renames(seed: int) -> int:
        return sum("change-backing-file" in str(step) for i in range(20) for step in commit_scenario(seed, i)["steps"])

    assert renames(RENAME_SINCE - 1) == 0 and renames(RENAME_SINCE) > 0
