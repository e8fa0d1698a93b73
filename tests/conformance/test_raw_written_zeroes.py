"""Written zeroes in raw files, on both backends: zeroes a request writes as data keep their 4 KiB blocks written
(file-posix's SEEK_DATA sees them: ``qemu-img map``, ``actual-size``), a zero write or discard makes the blocks it
covers whole holes to SEEK_DATA (unwritten or punched: ``test_raw_allocation.py`` compares which), and a block it
covers in part stays written if it was (the file's partial last block too)."""

from __future__ import annotations

import pytest

from bitlab.conformance.runner import compare, play
from tests.conformance.test_nbd_client import SERVER, SOCK, _img, _q, _write

K, M = 1 << 10, 1 << 20
NODES = _q("query-named-block-nodes", {"flat": True})


def _raw(name: str, size: str, discard: bool = False) -> list[dict]:
    return [_img("create", "-f", "raw", f"{name}.img", size),
            _q("blockdev-add", {"driver": "raw", "node-name": name, **({"discard": "unmap"} if discard else {}),
                                "file": {"driver": "file", "filename": f"{name}.img"}})]


def _look(name: str) -> list[dict]:
    return [NODES, _img("map", "--output=json", "-U", f"{name}.img")]


GUEST = [  # a guest's writes of zeroes, partial zero writes and discards, on a file of no whole number of blocks
    *_raw("g", str(2 * M + 1536), discard=True),
    _write("g", 64 * K, 64 * K, 0), _write("g", 256 * K, 8 * K, 0x11), *_look("g"),
    {"zero": {"node": "g", "offset": 256 * K + 1024, "length": 4 * K}},  # a written block in part, one whole
    {"zero": {"node": "g", "offset": 512 * K + 512, "length": 1024}},  # a hole in part
    _write("g", 2 * M - 4 * K, 5632, 0x22), *_look("g"),
    {"zero": {"node": "g", "offset": 2 * M, "length": 1536}},  # the partial last block, whole to the end
    {"hmp": 'qemu-io g "discard 66k 10k"'}, *_look("g"),
]  # (not the first block: the host's page cache keeps what QEMU read or wrote there, which SEEK_DATA then sees)

CONVERTS = [  # data requests holding zero blocks (a source's written zeroes, -S 16k, 64k, 32k): into a new raw
    # image, into one that exists and through a writable export
    *_raw("s", "1M"), _write("s", 0, 4 * K, 0x31), _write("s", 4 * K, 8 * K, 0), _write("s", 12 * K, 4 * K, 0x32),
    _write("s", 64 * K, 64 * K, 0), _write("s", 200 * K, 512, 0x33), _q("blockdev-del", {"node-name": "s"}),
    _img("convert", "-O", "raw", "-S", "16k", "s.img", "n1.img"), _img("map", "--output=json", "n1.img"),
    _img("convert", "-O", "raw", "-S", "64k", "s.img", "n2.img"), _img("map", "--output=json", "n2.img"),
    _img("convert", "-O", "raw", "s.img", "n3.img"), _img("map", "--output=json", "n3.img"),
    *_raw("t", "1M"), _write("t", 0, M, 0x44), _q("blockdev-del", {"node-name": "t"}),
    _img("convert", "-n", "-O", "raw", "-S", "64k", "s.img", "t.img"), _img("map", "--output=json", "t.img"),
    *_raw("e", "1M"), _write("e", 4 * K, 512 * K, 0x55), SERVER,
    _q("block-export-add", {"type": "nbd", "id": "e", "node-name": "e", "writable": True}),
    _img("convert", "-n", "-O", "raw", "-S", "32k", "s.img", SOCK.format("e")), *_look("e"),
]

BACKUP = [  # a backup of a qcow2 disk whose clusters hold data in part into a raw target: the rest written as zeroes
    _img("create", "-f", "qcow2", "q.qcow2", "1M"),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": {"driver": "file", "filename": "q.qcow2"}}),
    _write("q", 4 * K, 4 * K, 0x66), _write("q", 300 * K, 512, 0x67), *_raw("r", "1M"),
    _q("blockdev-backup", {"job-id": "j", "device": "q", "target": "r", "sync": "full"}), {"settle-jobs": True},
    *_look("r"),
]

COMMIT = [  # qemu-img commit of an overlay's data clusters, one of written zeroes, into its raw backing file
    _img("create", "-f", "raw", "b.img", "1M"), _img("create", "-f", "qcow2", "-b", "b.img", "-F", "raw", "o.qcow2"),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "o", "file": {"driver": "file", "filename": "o.qcow2"}}),
    _write("o", 0, 4 * K, 0x11), _write("o", 4 * K, 8 * K, 0), _write("o", 100 * K, 512, 0x22),
    _write("o", 256 * K, 64 * K, 0), _q("blockdev-del", {"node-name": "o"}),
    _img("commit", "o.qcow2"), _img("map", "--output=json", "b.img"),
]

BACKING = [  # a qcow2 overlay's partial zero writes over a raw backing file's written zeroes: not zero there
    *_raw("w", "1M"), _write("w", 64 * K, 64 * K, 0),
    _write("w", 200 * K, 512, 0x33), _q("blockdev-del", {"node-name": "w"}),
    _img("create", "-f", "qcow2", "-b", "w.img", "-F", "raw", "v.qcow2"),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "v", "file": {"driver": "file", "filename": "v.qcow2"}}),
    *[{"zero": {"node": "v", "offset": at * K, "length": 4 * K}} for at in (64, 196, 300)],
    _q("blockdev-del", {"node-name": "v"}),
    _img("map", "--output=json", "v.qcow2"),
]


@pytest.mark.qemu
@pytest.mark.parametrize("name,steps,daemon", [("guest", GUEST, "system"), ("converts", CONVERTS, "qsd"),
                                               ("backup", BACKUP, "qsd"), ("commit", COMMIT, "qsd"),
                                               ("backing", BACKING, "qsd")])
def test_raw_files_keep_written_zeroes_as_in_qemu(name, steps, daemon):
    """(The guest's discard is HMP qemu-io's: on the system emulator.)"""
    scenario = {"name": name, "steps": steps}
    real, sim = play(scenario, "qemu", daemon), play(scenario, "sim", daemon)
    assert real.error is None
    assert [d.render() for d in compare(scenario, real, sim)] == []
