"""qemu-img as an NBD client of the machine's NBD server (block/nbd.c, nbd/server.c): ``info``, ``map`` (with
``x-dirty-bitmap``: a bitmap's or ``qemu:allocation-depth``'s extents), ``convert`` and ``compare`` of an export,
the names and options that reach one, and the errors of those that do not.

The plain tests assert QEMU 7.2's output, measured with qemu-img against qemu-storage-daemon; the ``qemu`` tests
play the same steps on both backends (real qemu-img against the real daemon).
"""

from __future__ import annotations

import pytest

from bitlab import Machine, QemuImgError
from bitlab.conformance.runner import compare, play
from bitlab.conformance.steps import run_step
from bitlab.errors import QMPError
from bitlab.qemu_img import nbd
from tests.nbdmap import map_json

K, M = 1 << 10, 1 << 20
SOCK = "nbd+unix:///{}?socket=nbd.sock"
OPTS = "driver=nbd,server.type=unix,server.path=nbd.sock,export={}"
INC0 = ",x-dirty-bitmap=qemu:dirty-bitmap:inc0"


def _q(execute: str, arguments: dict | None = None) -> dict:
    return {"qmp": {"execute": execute, **({"arguments": arguments} if arguments is not None else {})}}


def _img(*args: str) -> dict:
    return {"qemu-img": list(args)}


def _write(node: str, offset: int, length: int, pattern: int) -> dict:
    return {"write": {"node": node, "offset": offset, "length": length, "pattern": pattern}}


def _image(name: str, size: str = "16M", *opts: str) -> list[dict]:
    return [_img("create", "-f", "qcow2", *opts, f"{name}.qcow2", size),
            _q("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2"}})]


SERVER = _q("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})


def pull_steps() -> list[dict]:
    """A pull-mode incremental backup: a bitmap frozen in a transaction, a fleecing snapshot exported with it; the
    client maps the export, then its bitmap, copies the whole snapshot with convert and compares. convert reads
    extent by extent, so the clusters the guest overwrote after the snapshot come from the fleece image whole
    (QEMU 7.2's wide-read trap of snapshot-access does not bite)."""
    return [*_image("disk"), *_image("fleece"), _write("disk", 0, 3 * M, 0x11), _write("disk", 8 * M, 100 * K, 0x12),
            _q("block-dirty-bitmap-add", {"node": "disk", "name": "inc0", "granularity": 64 * K}),
            _write("disk", M, 64 * K, 0x21), _write("disk", 10 * M, 4 * K, 0x22), _write("disk", 12 * M, M, 0),
            _q("transaction", {"actions": [
                {"type": "block-dirty-bitmap-add", "data": {"node": "disk", "name": "inc1", "granularity": 64 * K}},
                {"type": "block-dirty-bitmap-disable", "data": {"node": "disk", "name": "inc0"}}]}),
            _q("blockdev-add", {"driver": "copy-before-write", "node-name": "cbw", "file": "disk",
                                "target": "fleece"}),
            _q("blockdev-add", {"driver": "snapshot-access", "node-name": "snap", "file": "cbw"}),
            SERVER,
            _q("block-export-add", {"type": "nbd", "id": "pull", "node-name": "snap", "name": "pull",
                                    "bitmaps": [{"node": "disk", "name": "inc0"}]}),
            _write("disk", M, 128 * K, 0x33),  # after the snapshot: not in what is pulled
            _img("map", "--output=json", SOCK.format("pull")),
            _img("map", "--output=json", "--image-opts", OPTS.format("pull") + INC0),
            _img("map", "--image-opts", OPTS.format("pull") + INC0),
            _img("convert", "-f", "raw", "-O", "qcow2", SOCK.format("pull"), "full.qcow2"),
            _img("map", "--output=json", "full.qcow2"),
            _img("compare", "-f", "raw", SOCK.format("pull"), "full.qcow2"),
            _q("blockdev-add", {"driver": "qcow2", "node-name": "full",
                                "file": {"driver": "file", "filename": "full.qcow2"}}),
            {"read": {"node": "full", "offset": M, "length": 64 * K, "pattern": 0x21}},
            {"read": {"node": "full", "offset": M + 64 * K, "length": 64 * K, "pattern": 0x11}},
            _img("info", SOCK.format("pull")), _img("info", "--output=json", SOCK.format("pull")),
            _img("measure", "-O", "qcow2", SOCK.format("pull")),
            _img("measure", "--output=json", "-O", "qcow2", "-o", "cluster_size=4k", "--image-opts",
                 OPTS.format("pull") + INC0),
            _q("block-export-del", {"id": "pull"}), _q("blockdev-del", {"node-name": "snap"}),
            _q("blockdev-del", {"node-name": "cbw"}),
            _img("info", SOCK.format("pull"))]


def names_steps() -> list[dict]:
    """The names and options that reach an export, and the errors of those that do not."""
    return [*_image("n", "4M", "-o", "cluster_size=4k"), _write("n", M, 2 * M, 0x11),
            _img("info", SOCK.format("n")),
            SERVER,
            _img("info", SOCK.format("n")),
            _q("block-export-add", {"type": "nbd", "id": "e", "node-name": "n", "name": "n"}),
            _img("info", SOCK.format("n")), _img("info", "-f", "raw", SOCK.format("n")),
            _img("info", "nbd:unix:nbd.sock:exportname=n"), _img("map", "nbd:unix:nbd.sock:exportname=n"),
            _img("info", SOCK.format("nosuch")), _img("info", "nbd+unix:///n?socket=nosuch.sock"),
            _img("info", "nbd+unix://?socket=nbd.sock"), _img("map", "--output=json", "-f", "qcow2", SOCK.format("n")),
            _img("map", "--output=json", "nbd+unix:///n"), _img("map", "--output=json", "nbd+unix:///n?sock=x"),
            _img("map", "--output=json", "nbd:/x"),
            _img("map", "--output=json", "--image-opts", "driver=nbd,export=n"),
            _img("map", "--output=json", "--image-opts", "driver=nbd,export=n,path=nbd.sock"),
            _img("map", "--output=json", "--image-opts",
                 "driver=raw,file.driver=nbd,file.export=n,file.server.type=unix,file.server.path=nbd.sock"),
            _img("map", "--output=json", "--image-opts", OPTS.format("n") + ",x-dirty-bitmap=qemu:dirty-bitmap:x"),
            _img("map", "--output=json", "--image-opts", OPTS.format("n") + ",x-dirty-bitmap=base:allocation"),
            _img("map", "--output=json", "-s", "1M", "-l", "1536k", SOCK.format("n")),
            _img("check", SOCK.format("n")),
            _q("nbd-server-stop"), _img("info", SOCK.format("n"))]


def depth_steps() -> list[dict]:
    """An export of an overlay with ``allocation-depth``: its qemu:allocation-depth context read as a bitmap
    (depth 1 a hole, 2 data and zeroes); null-co nodes with and without read-zeroes."""
    return [_img("create", "-f", "qcow2", "base.qcow2", "8M"),
            _img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", "8M"),
            _q("blockdev-add", {"driver": "qcow2", "node-name": "base",
                                "file": {"driver": "file", "filename": "base.qcow2"}}),
            _write("base", 0, M, 0x11), {"zero": {"node": "base", "offset": 4 * M, "length": 64 * K}},
            _q("blockdev-add", {"driver": "qcow2", "node-name": "top", "backing": "base",
                                "file": {"driver": "file", "filename": "top.qcow2"}}),
            _write("top", 512 * K, M, 0x22),
            _q("blockdev-add", {"driver": "null-co", "node-name": "null", "size": 4 * M}),
            _q("blockdev-add", {"driver": "null-co", "node-name": "nullz", "size": 4 * M, "read-zeroes": True}),
            SERVER,
            _q("block-export-add", {"type": "nbd", "id": "top", "node-name": "top", "allocation-depth": True}),
            _q("block-export-add", {"type": "nbd", "id": "null", "node-name": "null"}),
            _q("block-export-add", {"type": "nbd", "id": "nullz", "node-name": "nullz"}),
            _img("map", "--output=json", SOCK.format("top")),
            _img("map", "--output=json", "--image-opts", OPTS.format("top") + ",x-dirty-bitmap=qemu:allocation-depth"),
            _img("map", "--output=json", "--image-opts", OPTS.format("null") + ",x-dirty-bitmap=qemu:allocation-depth"),
            _img("map", "--output=json", SOCK.format("null")), _img("map", "--output=json", SOCK.format("nullz")),
            _img("convert", "-O", "raw", SOCK.format("top"), "copy.raw"),
            _img("compare", SOCK.format("top"), "copy.raw"), _img("compare", "copy.raw", SOCK.format("top")),
            _img("info", "--output=json", "copy.raw")]


def live_steps() -> list[dict]:
    """A writable export of a disk with a persistent bitmap stored (the image looks as if its metadata were
    preallocated, so block status asks the file: data clusters partly written read as data and zeroes), then a
    backup of that disk: the export follows the node under the backup's filter. (A backup that copies reads the
    source's file, and QEMU's host then has those blocks in its page cache, which SEEK_DATA reports as data: the
    README's known differences; ``sync: none`` reads nothing.)"""
    node = {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}}
    return [_img("create", "-f", "qcow2", "a.qcow2", "8M"), _q("blockdev-add", node),
            _q("block-dirty-bitmap-add", {"node": "a", "name": "p", "persistent": True}),
            _q("blockdev-del", {"node-name": "a"}), _q("blockdev-add", node),
            _write("a", 4 * K, 4 * K, 0x11), _write("a", M, 100 * K, 0x12), SERVER,
            _q("block-export-add", {"type": "nbd", "id": "a", "node-name": "a", "bitmaps": ["p"], "writable": True}),
            _img("map", "--output=json", SOCK.format("a")), _img("map", SOCK.format("a")),
            _img("map", "--output=json", "--image-opts", OPTS.format("a") + ",x-dirty-bitmap=qemu:dirty-bitmap:p"),
            _img("convert", "-O", "qcow2", SOCK.format("a"), "c.qcow2"), _img("map", "--output=json", "c.qcow2"),
            _img("measure", "-O", "qcow2", SOCK.format("a")), _img("measure", "-O", "raw", SOCK.format("a")),
            _q("blockdev-add", {"driver": "null-co", "node-name": "tgt", "size": 8 * M}),
            _q("blockdev-backup", {"job-id": "j", "device": "a", "target": "tgt", "sync": "none"}),
            _img("map", "--output=json", SOCK.format("a")), _q("query-block-exports"),
            _q("block-job-cancel", {"device": "j"}), {"wait-job": {"id": "j", "status": "null"}}]


def raw_steps() -> list[dict]:
    """Exports of a raw image's format and file nodes and of a qcow2 overlay over it: file-posix answers in the
    host file system's 4 KiB blocks (the first one written when QEMU created the file)."""
    return [_img("create", "-f", "raw", "r.raw", "5000k"),
            _q("blockdev-add", {"driver": "raw", "node-name": "r",
                                "file": {"driver": "file", "node-name": "rf", "filename": "r.raw"}}),
            _write("r", 100 * K, 300 * K, 0x11), _write("r", 2 * M, 3, 0x12),
            _img("create", "-f", "qcow2", "-b", "r.raw", "-F", "raw", "o.qcow2", "6M"),
            _q("blockdev-add", {"driver": "qcow2", "node-name": "o", "backing": "r",
                                "file": {"driver": "file", "filename": "o.qcow2"}}),
            _write("o", 5 * M, 100 * K, 0x13), {"zero": {"node": "o", "offset": 200 * K, "length": 64 * K}},
            SERVER,
            _q("block-export-add", {"type": "nbd", "id": "r", "node-name": "r", "name": "r"}),
            _q("block-export-add", {"type": "nbd", "id": "rf", "node-name": "rf", "name": "rf"}),
            _q("block-export-add", {"type": "nbd", "id": "o", "node-name": "o", "name": "o", "allocation-depth": True}),
            _img("map", "--output=json", SOCK.format("r")), _img("map", "--output=json", SOCK.format("rf")),
            _img("map", "--output=json", SOCK.format("o")), _img("info", SOCK.format("o")),
            _img("map", "--output=json", "--image-opts", OPTS.format("o") + ",x-dirty-bitmap=qemu:allocation-depth"),
            _img("map", SOCK.format("o")), _img("convert", "-O", "qcow2", SOCK.format("o"), "c.qcow2"),
            _img("map", "--output=json", "c.qcow2"), _img("compare", SOCK.format("o"), "c.qcow2")]


def edge_steps() -> list[dict]:
    """An export every byte of whose bitmap is dirty (the human map lists nothing), -U and --backing-chain
    (no effect), maps past the end or of nothing, and more names and options QEMU refuses."""
    url = SOCK.format("a")
    return [*_image("a", "3000k"),
            _q("block-dirty-bitmap-add", {"node": "a", "name": "all", "granularity": 64 * K}),
            _write("a", 0, 3000 * K, 0x42), SERVER,
            _q("block-export-add", {"type": "nbd", "id": "a", "node-name": "a", "description": "disk a",
                                    "writable": True, "bitmaps": [{"node": "a", "name": "all"}]}),
            _img("map", "-U", "--output=json", url), _img("info", "--backing-chain", url),
            _img("info", "-U", "--output=json", url),
            _img("map", "--image-opts", OPTS.format("a") + ",x-dirty-bitmap=qemu:dirty-bitmap:all"),
            _img("map", "--output=json", "--image-opts", OPTS.format("a") + ",x-dirty-bitmap=qemu:dirty-bitmap:all"),
            _img("compare", "-U", url, url), _img("convert", "-U", "-O", "raw", url, "x.raw"),
            _img("compare", "-f", "raw", "-F", "raw", url, "x.raw"), _img("compare", "-q", url, "x.raw"),
            _img("map", "--output=json", "-s", "5M", url), _img("map", "--output=json", "-l", "0", url),
            _img("info", "nbd://127.0.0.1:99999/a"), _img("info", "nbd://[::1]/a"),
            _img("info", "nbd+unix:///a%2Fb?socket=nbd.sock"), _img("info", "nbd+tcp://127.0.0.1/a"),
            _img("map", "--image-opts", OPTS.format("a") + ",port=4"),
            _img("map", "--image-opts", "driver=nbd,path=nbd.sock,host=x,export=a"),
            _img("map", "--image-opts", "driver=nbd,path=nbd.sock,port=4,export=a"),
            _img("map", "--image-opts", "-f", "raw", "driver=nbd,path=nbd.sock,export=a"),
            *[_img("info", name) for name in ("nbd:unix:nbd.sock:exportname=", "nbd:", "nbd:[::1]:10809:exportname=a",
                                              "nbd:unix:", "nbd+unix:///a?socket=", "nbd:localhost",
                                              "nbd://:10809/a", "nbd://h/?=x", "nbd+tcp://localhost/%61?=x",
                                              "nbd:h:port", "nbd::1", "nbd:127.0.0.1:10809:x:exportname=a",
                                              "nbd+unix:///a?&socket=nbd.sock", "nbd+unix:///a?socket=nbd.sock;",
                                              "nbd+unix:///a?socket=nbd.sock&x", "nbd://x y/a",
                                              "nbd://127.0.0.1/a%4", "nbd://user@127.0.0.1:1/a",
                                              "nbd://127.0.0.1:99999/a", "nbd:127.0.0.1:1,2", "Nbd://x/a",
                                              "xyz:abc", "nbd::", "nbd:[::1", "nbd:[]:1", "nbd:[::1]", "nbd:h:1,foo",
                                              "nbd:" + "a" * 70 + ":1")]]


def restore_steps(cluster: str = "65536", target: str = "qcow2", backing: bool = False, src_raw: bool = False
                  ) -> list[dict]:
    """A restore into a running disk: ``qemu-img convert -n`` of a backup image into a writable export of a disk
    (qcow2 with 64 KiB, 4 KiB or 1 MiB clusters, raw, or an overlay) that has two bitmaps and a write threshold.
    The source holds data runs, a partly written cluster, a zero cluster and a cluster of written zeroes."""
    fmt = "raw" if src_raw else "qcow2"
    steps = [_img("create", "-f", fmt, *([] if src_raw else ["-o", f"cluster_size={cluster}"]), "src.img", "4M"),
             _q("blockdev-add", {"driver": fmt, "node-name": "src", "file": {"driver": "file", "filename": "src.img"}}),
             _write("src", M, 256 * K, 0x21), _write("src", 2 * M + 512, 4 * K, 0x22),
             _write("src", 2 * M + 40 * K, K, 0x23), {"zero": {"node": "src", "offset": 3 * M, "length": 64 * K}},
             _write("src", 3 * M + 128 * K, 64 * K, 0),
             _write("src", 4 * M - 8 * K, 8 * K, 0x24), _q("blockdev-del", {"node-name": "src"})]
    if backing:
        steps += [*_image("base", "4M"), _write("base", 0, 4 * M, 0x55), _q("blockdev-del", {"node-name": "base"}),
                  _img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "d.qcow2", "4M")]
    else:
        steps.append(_img("create", "-f", target, "d.qcow2", "4M"))
    steps += [_q("blockdev-add", {"driver": target, "node-name": "d",
                                  "file": {"driver": "file", "filename": "d.qcow2"}}),
              _write("d", 0, 512 * K, 0x11),
              _q("block-dirty-bitmap-add", {"node": "d", "name": "b", "granularity": 64 * K}),
              _q("block-dirty-bitmap-add", {"node": "d", "name": "b2", "granularity": 512}),
              _q("block-set-write-threshold", {"node-name": "d", "write-threshold": 3 * M + 100 * K}),
              SERVER, _q("block-export-add", {"type": "nbd", "id": "d", "node-name": "d", "writable": True}),
              _q("block-export-add", {"type": "nbd", "id": "ro", "node-name": "d", "name": "ro"}),
              _img("convert", "-n", "-O", "raw", "src.img", SOCK.format("ro")),
              _img("convert", "-n", "-O", "raw", "src.img", SOCK.format("d")),
              _q("query-named-block-nodes", {"flat": True}), _img("map", "--output=json", SOCK.format("d")),
              _q("block-export-del", {"id": "ro"}), _q("block-export-del", {"id": "d"}),
              _q("blockdev-del", {"node-name": "d"}), _img("map", "--output=json", "d.qcow2"),
              _img("compare", "src.img", "d.qcow2")]
    return steps + ([_img("check", "d.qcow2")] if target == "qcow2" else [])


RESTORES = [{}, {"cluster": "4096"}, {"cluster": "1M"}, {"target": "raw"}, {"backing": True}, {"src_raw": True}]
STORIES = [pull_steps, names_steps, depth_steps, live_steps, raw_steps, edge_steps]


def _outputs(steps: list[dict]) -> dict[str, object]:
    """Each qemu-img step's result by its command line (the last of repeated ones)."""
    vm, got = Machine(), {}
    for step in steps:
        try:
            reply = run_step(vm, step)
        except QMPError:
            continue
        if "qemu-img" in step:
            got[" ".join(step["qemu-img"])] = reply
    return got


def _fail(text: str, code: int = 1) -> dict:
    return {"stdout": "", "stderr": f"qemu-img: {text}\n", "returncode": code}


def test_a_pull_reads_the_snapshot_and_its_bitmap():
    got = _outputs(pull_steps())
    assert got[f"map --output=json {SOCK.format('pull')}"]["stdout"] == map_json(
        (0, 3 * M, True, False, True), (3 * M, 5 * M, True, True, False), (8 * M, 128 * K, True, False, True),
        (8 * M + 128 * K, 2 * M - 128 * K, True, True, False), (10 * M, 64 * K, True, False, True),
        (10 * M + 64 * K, 2 * M - 64 * K, True, True, False), (12 * M, M, True, False, True),
        (13 * M, 3 * M, True, True, False))
    # dirty (written since the bitmap came): "data": false; the write after the snapshot is not in it
    dirty = f"map --output=json --image-opts {OPTS.format('pull')},x-dirty-bitmap=qemu:dirty-bitmap:inc0"
    assert got[dirty]["stdout"] == map_json(
        (0, M, True, False, True), (M, 64 * K, False, False, False), (M + 64 * K, 9 * M - 64 * K, True, False, True),
        (10 * M, 64 * K, False, False, False), (10 * M + 64 * K, 2 * M - 64 * K, True, False, True),
        (12 * M, M, False, False, False), (13 * M, 3 * M, True, False, True))
    human = got[dirty.replace("--output=json ", "")]["stdout"]
    assert human.splitlines() == ["Offset          Length          Mapped to       File",
                                  f"0               0x100000        0               {SOCK.format('pull')}",
                                  f"0x110000        0x8f0000        0x110000        {SOCK.format('pull')}",
                                  f"0xa10000        0x1f0000        0xa10000        {SOCK.format('pull')}",
                                  f"0xd00000        0x300000        0xd00000        {SOCK.format('pull')}"]
    assert got[f"compare -f raw {SOCK.format('pull')} full.qcow2"]["stdout"] == "Images are identical.\n"
    # what a qcow2 copy of the export would need: its data clusters (the snapshot's 3 MiB + 128 KiB + 64 KiB + 1 MiB)
    assert got[f"measure -O qcow2 {SOCK.format('pull')}"]["stdout"] == (
        f"required size: {(3 * M + 128 * K + 64 * K + M) + 327680}\nfully allocated size: 17104896\n")
    reads = play({"name": "pull", "steps": pull_steps()}, "sim").replies
    assert [r["stdout"].splitlines()[0] for s, r in zip(pull_steps(), reads) if "read" in s] == [
        "read 65536/65536 bytes at offset 1048576", "read 65536/65536 bytes at offset 1114112"]
    assert got[f"info {SOCK.format('pull')}"] == _fail(
        f"Could not open '{SOCK.format('pull')}': Requested export not available\n"
        "server reported: export 'pull' not present")


def test_the_names_that_reach_an_export_and_the_errors_of_others():
    got = _outputs(names_steps())
    info = got["info -f raw " + SOCK.format("n")]["stdout"]
    assert info == (f"image: {SOCK.format('n')}\nfile format: raw\nvirtual size: 4 MiB (4194304 bytes)\n"
                    "disk size: unavailable\n")
    assert got["info nbd:unix:nbd.sock:exportname=n"]["stdout"] == info  # (the canonical name)
    assert got[f"info {SOCK.format('nosuch')}"] == _fail(
        f"Could not open '{SOCK.format('nosuch')}': Requested export not available\n"
        "server reported: export 'nosuch' not present")
    assert got["info nbd+unix:///n?socket=nosuch.sock"] == _fail(
        "Could not open 'nbd+unix:///n?socket=nosuch.sock': Failed to connect to 'nosuch.sock': "
        "No such file or directory")
    assert got["info nbd+unix://?socket=nbd.sock"]["stderr"].endswith("server reported: export '' not present\n")
    assert got[f"map --output=json -f qcow2 {SOCK.format('n')}"] == _fail(
        f"Could not open '{SOCK.format('n')}': Image is not in qcow2 format")
    for bad in ("nbd+unix:///n", "nbd+unix:///n?sock=x"):
        assert got[f"map --output=json {bad}"] == _fail(f"Could not open '{bad}': No valid URL specified")
    assert got["map --output=json nbd:/x"] == _fail("Could not open 'nbd:/x': error parsing address '/x'")
    assert got["map --output=json --image-opts driver=nbd,export=n"] == _fail(
        "Could not open 'driver=nbd,export=n': NBD server address missing")
    missing = f"{OPTS.format('n')},x-dirty-bitmap=qemu:dirty-bitmap:x"
    assert got[f"map --output=json --image-opts {missing}"] == _fail(
        f"Could not open '{missing}': Could not open image: Invalid argument")
    assert got[f"map --output=json -s 1M -l 1536k {SOCK.format('n')}"]["stdout"] == map_json(
        (M, 1536 * K, True, False, True))
    assert got[f"check {SOCK.format('n')}"] == _fail("This image format does not support checks", 63)


def test_allocation_depth_and_null_co():
    got = _outputs(depth_steps())
    assert got["map --output=json --image-opts " + OPTS.format("top") + ",x-dirty-bitmap=qemu:allocation-depth"][
        "stdout"] == map_json((0, 512 * K, True, True, True), (512 * K, M, False, False, False),
                          (1536 * K, 2560 * K, True, False, True), (4 * M, 64 * K, True, True, True),
                          (4 * M + 64 * K, 4 * M - 64 * K, True, False, True))
    assert got["map --output=json --image-opts " + OPTS.format("null") + ",x-dirty-bitmap=qemu:allocation-depth"] == \
        _fail(f"Could not open '{OPTS.format('null')},x-dirty-bitmap=qemu:allocation-depth': "
              "Could not open image: Invalid argument")
    assert got[f"map --output=json {SOCK.format('null')}"]["stdout"] == map_json((0, 4 * M, False, False, False))
    assert got[f"map --output=json {SOCK.format('nullz')}"]["stdout"] == map_json((0, 4 * M, True, True, False))
    assert got[f"compare {SOCK.format('top')} copy.raw"]["stdout"] == "Images are identical.\n"


def test_a_data_cluster_the_file_has_holes_under_is_data_and_zeroes():
    got = _outputs(live_steps())
    assert got[f"map --output=json {SOCK.format('a')}"]["stdout"] == map_json(
        (0, 4 * K, True, True, True), (4 * K, 4 * K, True, False, True), (8 * K, 56 * K, True, True, True),
        (64 * K, 960 * K, True, True, False), (M, 100 * K, True, False, True),
        (M + 100 * K, 28 * K, True, True, True), (M + 128 * K, 7 * M - 128 * K, True, True, False))


def test_edges():
    got = _outputs(edge_steps())
    assert got["map --image-opts " + OPTS.format("a") + ",x-dirty-bitmap=qemu:dirty-bitmap:all"]["stdout"] == \
        "Offset          Length          Mapped to       File\n"
    assert got[f"map --output=json -s 5M {SOCK.format('a')}"]["stdout"] == map_json((5 * M, 0, False, False, False))
    assert got["info nbd://[::1]/a"] == _fail(
        "Could not open 'nbd://[::1]/a': Failed to connect to '::1:10809': Connection refused")
    assert got["info nbd+unix:///a%2Fb?socket=nbd.sock"]["stderr"].endswith("export 'a/b' not present\n")
    assert got["map --image-opts driver=nbd,path=nbd.sock,port=4,export=a"] == _fail(
        "Could not open 'driver=nbd,path=nbd.sock,port=4,export=a': port may not be used without host")
    assert got[f"compare -f raw -F raw {SOCK.format('a')} x.raw"]["stdout"] == "Images are identical.\n"
    assert got["info nbd:unix:nbd.sock:exportname="] == _fail(
        "Could not open 'nbd:unix:nbd.sock:exportname=': NBD server address missing")
    assert got["info nbd:unix:"] == _fail("Could not open 'nbd:unix:': Failed to connect to '': Connection refused")
    assert got["info nbd:h:port"] == _fail(
        "Could not open 'nbd:h:port': address resolution failed for h:port: Servname not supported for ai_socktype")
    assert got["info nbd::1"] == _fail("Could not open 'nbd::1': address resolution failed for :1: Name or service "
                                       "not known")
    assert got["info nbd+unix:///a?&socket=nbd.sock"]["returncode"] == 0
    assert got["info nbd://x y/a"] == _fail("Could not open 'nbd://x y/a': No valid URL specified")
    assert got["info Nbd://x/a"] == _fail("Could not open 'Nbd://x/a': Unknown protocol 'Nbd'")
    with pytest.raises(QemuImgError, match="QEMU 7.2's qemu-img crashes on a socket parameter without a value"):
        Machine().qemu_img("info", "nbd+unix:///a?socket")


def test_a_raw_file_answers_in_its_blocks():
    got = _outputs(raw_steps())
    raw = map_json((0, 4 * K, True, False, True), (4 * K, 96 * K, True, True, False),
                   (100 * K, 300 * K, True, False, True), (400 * K, 1648 * K, True, True, False),
                   (2 * M, 4 * K, True, False, True), (2 * M + 4 * K, 5000 * K - 2 * M - 4 * K, True, True, False))
    assert got[f"map --output=json {SOCK.format('r')}"]["stdout"] == raw
    assert got[f"map --output=json {SOCK.format('rf')}"]["stdout"] == raw


def test_what_qemu_img_cannot_do_with_an_export_here_says_so():
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "n.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "n.qcow2"}})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "n", "node-name": "n"})
    vm.qemu_img("create", "-f", "raw", "r.raw", "4M")
    for args, text in [(("compare", "-s", SOCK.format("n"), "r.raw"), "'qemu-img compare -s' of an NBD export"),
                       (("convert", "--bitmaps", "-O", "qcow2", SOCK.format("n"), "x.qcow2"), "--bitmaps"),
                       (("resize", SOCK.format("n"), "8M"), "simulates qemu-img reading an NBD export"),
                       (("convert", "-O", "raw", "r.raw", SOCK.format("n")), "creating an image on an NBD"),
                       (("map", "--image-opts", OPTS.format("n") + ",tls-creds=t"), "'tls-creds'")]:
        with pytest.raises(QemuImgError, match="bitlab (does not simulate|simulates qemu-img reading)") as err:
            vm.qemu_img(*args)
        assert text in err.value.stderr
    vm.qmp("block-export-add", {"type": "nbd", "id": "w", "node-name": "n", "name": "w", "writable": True})
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "tgt", "size": 4 * M})
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "n", "target": "tgt", "sync": "none"})
    with pytest.raises(QemuImgError, match="writing through the copy-before-write node"):
        vm.qemu_img("convert", "-n", "-O", "raw", "r.raw", SOCK.format("w"))
    vm.qmp("block-job-cancel", {"device": "j"})
    vm.run()
    vm.qemu_img("create", "-f", "qcow2", "d.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d", "file": {
        "driver": "blkdebug", "node-name": "dbg", "image": {"driver": "file", "filename": "d.qcow2"},
        "inject-error": [{"event": "read_aio"}]}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "d", "node-name": "d"})
    with pytest.raises(QemuImgError, match="bitlab does not simulate an NBD client's requests through the "
                                           "blkdebug node 'dbg'"):
        vm.qemu_img("map", SOCK.format("d"))


@pytest.mark.parametrize("name, filename", [
    ("nbd+unix:///e?socket=s.sock", "nbd+unix:///e?socket=s.sock"),
    ("nbd+unix://?socket=s.sock", "nbd+unix://?socket=s.sock"),
    ("nbd:unix:s.sock:exportname=e", "nbd+unix:///e?socket=s.sock"),
    ("nbd:unix:s.sock", "nbd+unix://?socket=s.sock"),
    ("nbd://127.0.0.1/e", "nbd://127.0.0.1:10809/e"),
    ("nbd+tcp://localhost:10810/e", "nbd://localhost:10810/e"),
    ("nbd:localhost:10810:exportname=e", "nbd://localhost:10810/e"),
])
def test_nbd_refresh_filename(name, filename):
    assert nbd.from_filename(name).filename == filename


def test_a_restore_through_an_export_writes_the_whole_source():
    vm = Machine()
    replies = [run_step(vm, step) for step in restore_steps()]
    steps = restore_steps()
    got = {" ".join(step["qemu-img"]): r for step, r in zip(steps, replies) if "qemu-img" in step}
    assert got[f"convert -n -O raw src.img {SOCK.format('ro')}"] == _fail(
        f"Could not open '{SOCK.format('ro')}': Could not open image: Permission denied")
    assert got[f"convert -n -O raw src.img {SOCK.format('d')}"]["returncode"] == 0
    nodes = next(r["return"] for step, r in zip(steps, replies)
                 if step.get("qmp", {}).get("execute") == "query-named-block-nodes")
    # every byte of the source's 4 MiB was written, zero stretches as zeroes: both bitmaps count all of it
    assert [(b["name"], b["count"]) for b in next(n for n in nodes if n["node-name"] == "d")["dirty-bitmaps"]] == [
        ("b2", 4 * M), ("b", 4 * M)]
    crossed = [e["data"] for e in vm.events if e["event"] == "BLOCK_WRITE_THRESHOLD"]
    # the request that crossed it: the zero stretch from the partly written cluster up to the cluster of written
    # zeroes (a data cluster to the source's block status, so a request of its own)
    assert crossed == [{"node-name": "d", "amount-exceeded": 3 * M + 128 * K - (3 * M + 100 * K),
                        "write-threshold": 3 * M + 100 * K}]
    assert got["compare src.img d.qcow2"]["stdout"] == "Images are identical.\n"


@pytest.mark.qemu
@pytest.mark.parametrize("kw", RESTORES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_a_restore_through_an_export_as_in_qemu(kw):
    scenario = {"name": "restore", "steps": restore_steps(**kw)}
    real, sim = play(scenario, "qemu", "qsd"), play(scenario, "sim")
    assert [d.render() for d in compare(scenario, real, sim)] == []


@pytest.mark.qemu
@pytest.mark.parametrize("make", STORIES)
def test_nbd_client_as_in_qemu(make):
    scenario = {"name": make.__name__, "steps": make()}
    real, sim = play(scenario, "qemu", "qsd"), play(scenario, "sim")
    assert [d.render() for d in compare(scenario, real, sim)] == []
