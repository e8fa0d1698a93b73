"""qemu-img measure: img_measure's options and texts, qcow2_measure and raw_measure, against qemu-img 7.2.

The exact values below were printed by real qemu-img 7.2.22 for the same steps (qemu-io writes on the files);
test_matches_qemu_img replays every case on real QEMU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from bitlab import Machine, QemuImgError
from bitlab.block.qcow2_host import refcount_metadata
from bitlab.qemu_img import qemu_opts
from bitlab.qemu_img.getopt import GetoptError, getopt_long
from bitlab.qemu_img.measure import prealloc_size
from bitlab.qemu_img.qemu_opts import items, valid_option_list
from bitlab.units import parse_size
from tests.both import on_both
from tests.conformance.test_qemu_img_chains import MiB, Scenario

GiB, TiB = 1 << 30, 1 << 40

SIZES = [["--size", "1G"], ["--size", "1G", "-O", "qcow2"], ["--size", "1G", "-O", "qcow2", "--output=json"],
         ["--size", "1G", "--output", "json"], ["--size", "0", "-O", "qcow2"], ["--size", "1", "-O", "qcow2"],
         ["--size", "1023"], ["--size", "9223372036854775807"], ["--size=1.5k"], ["--size", "1.0"],
         ["--size", "0x1k"], ["--si", "2G", "--out=json", "-O", "raw"], ["--size", "1G", "--size", "2G"],
         ["-U", "--size", "1G"]]
for _cs in ("512", "4k", "64k", "2M"):
    SIZES += [["--size", "1G", "-O", "qcow2", "-o", f"cluster_size={_cs}"],
              ["--size", "100G", "-O", "qcow2", "-o", f"cluster_size={_cs},extended_l2=on"]]
for _o in ("compat=0.10", "compat=1.1", "preallocation=off", "preallocation=metadata", "preallocation=falloc",
           "preallocation=full", "extended_l2=on", "extended_l2", "noextended_l2", "extended_l2=yes",
           "compat=0.10,extended_l2=on", "refcount_bits=1", "refcount_bits=64", "refcount_bits=0x10",
           "backing_file=x", "encryption=on", "encrypt.format=aes", "lazy_refcounts=on,compression_type=zstd",
           "nocow=on,extent_size_hint=1M", "backing_file=a,,b", "size=5G", "cluster_size=65536.0"):
    SIZES.append(["--size", "10G", "-O", "qcow2", "-o", _o])
SIZES += [["--size", "100T", "-O", "qcow2", "-o", f"refcount_bits={b}"] for b in ("040", "8", " 16", "+4", "1")]
SIZES += [["--size", "1G", "-O", "qcow2", "-o", "cluster_size=64k", "-o", "cluster_size=128k"],
          ["--size", "1G", "-O", "raw", "-o", "preallocation=bad"], ["--size", "1G", "-O", "qcow2", "-o", "help"]]

QCOW2_BAD = ["encrypt.format=luks", "encrypt.format=luks,encrypt.key-secret=sec0", "foo=bar", "nocow", "=x",
             "foo=1,cluster_size=3", "cluster_size=1000", "cluster_size=abc", "cluster_size=64k=2",
             "cluster_size=64k,,compat=1.1", "cluster_size=16E", "cluster_size=4M", "cluster_size=3,compat=9",
             "compat=9,refcount_bits=3,preallocation=x", "compat=0.9", "compat=v2", "compat", "compat=",
             "compat=0.10,refcount_bits=8", "refcount_bits=3", "refcount_bits=-1", "refcount_bits=0",
             "refcount_bits=abc", "refcount_bits=16k", "refcount_bits=08", "refcount_bits=0x",
             "refcount_bits=18446744073709551616", "preallocation=bad",
             "preallocation", "extended_l2=maybe", "extended_l2=on,cluster_size=8k",
             "extended_l2=on,cluster_size=8k,compat=9", "lazy_refcounts=maybe", "size=abc"]
ERRORS = [[], ["--size", "1G", "d.qcow2"], ["a", "b"], ["--size", "-1"], ["--size", "1X"], ["--size", "8E"],
          ["--size", "16E"], ["--size", "20E"], ["--size", ""], ["--size", "1 k"], ["--size", "1.5"],
          ["--size", "9223372036854775807", "-O", "qcow2"], ["--size", "1T", "-O", "qcow2", "-o", "cluster_size=512"],
          ["--size", "1G", "-O", "vmdk"], ["--size", "1G", "-O", "nope"], ["--size", "1G", "-O", "null-co"],
          ["--size", "1G", "-O", "file"], ["--size", "1G", "-O", "blkreplay"], ["--size", "1G", "-O", "luks"],
          ["--size", "1G", "-O", "luks", "-o", "key-secret=s"], ["--size", "1G", "-O", "file", "-o", "nocow=on"],
          ["--size", "1G", "-O", "file", "-o", "cluster_size=1"], ["--size", "1G", "-O", "vmdk", "-o", "size=abc"],
          ["--size", "1G", "-O", "host_device", "-o", "preallocation=full"],
          *(["--size", "1G", "-O", "qcow2", "-o", o] for o in QCOW2_BAD),
          ["--size", "1G", "-O", "raw", "-o", "foo=1"], ["--size", "1G", "-O", "nope", "-o", "foo=1"],
          ["--size", "1G", "-O", "raw", "-o", "size="],
          ["--size", "1G", "-O", "qcow2", "-o", ""], ["--size", "1G", "-o", ",,"], ["--size", "1G", "-o", "a,"],
          ["--size", "1G", "-o", ",a"], ["-O", "qcow2", "-o", "size=1G"], ["--output=xml", "--size", "1G"],
          ["--size", "1G", "--output=xml", "-O", "nope"], ["a", "b", "--output=xml"], ["a", "b", "-f", "raw"],
          ["-f", "raw"], ["-l", "snap"], ["-l", "snap", "--size", "1G"], ["--image-opts", "--size", "1G"],
          ["nothere.img"], ["-O", "nope", "nothere.img"], ["-f", "nope", "d.qcow2"], ["-f", "qcow2", "r.raw"],
          ["-l", "snap", "d.qcow2"], ["-l", "snapshot.id=1", "d.qcow2"], ["-l", "snapshot.foo=1", "d.qcow2"],
          ["-l", "snapshot.name=x,snapshot.id=1", "d.qcow2"], ["-l", "snap", "r.raw"],
          ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=8k", "d.qcow2"],
          ["-O", "qcow2", "-o", "cluster_size=512,size=1T", "big.qcow2"], ["used.qcow2"]]

FILES = ["d.qcow2", "b.qcow2", "v2.qcow2", "r.raw", "o.qcow2", "o2.qcow2", "o3.qcow2", "z.qcow2", "big.qcow2",
         "pre.qcow2", "bigb.qcow2"]
OUTPUTS = [[], ["-O", "qcow2"], ["-O", "qcow2", "--output=json"], ["-O", "qcow2", "-o", "cluster_size=4k"],
           ["-O", "qcow2", "-o", "cluster_size=512"], ["-O", "qcow2", "-o", "cluster_size=2M"],
           ["-O", "qcow2", "-o", "compat=0.10"], ["-O", "qcow2", "-o", "backing_file=x"],
           ["-O", "qcow2", "-o", "preallocation=full"], ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=16k"],
           ["-O", "raw", "--output=json"]]
IMAGES = [[*out, name] for name in FILES for out in OUTPUTS] + [
    ["-O", "qcow2", "-f", "raw", "r.raw"], ["-O", "qcow2", "-f", "qcow2", "o.qcow2"],
    ["-U", "-O", "qcow2", "used.qcow2"],
    ["-O", "qcow2", "-o", "cluster_size=512", "-o", "size=1G", "big.qcow2"]]


def qemu_io(vm: Machine, filename: str, *commands: str, driver: str = "qcow2") -> None:
    """``qemu-io -c ... filename``: the file opened as a node, then closed."""
    vm.qmp("blockdev-add", {"driver": driver, "node-name": "io", "file": {"driver": "file", "filename": filename}})
    for command in commands:
        vm.qmp("human-monitor-command", {"command-line": f'qemu-io io "{command}"'})
    vm.qmp("blockdev-del", {"node-name": "io"})


def images(vm: Machine) -> None:
    """The files measured: data, zeroes, a partial and a compressed cluster; bitmaps; chains; raw; v2."""
    img = vm.qemu_img
    img("create", "-q", "-f", "qcow2", "d.qcow2", "64M")
    qemu_io(vm, "d.qcow2", "write -P 1 0 1M", "write -P 2 10M 100k", "write -z 20M 1M", "write -P 3 30M 512",
            "write -c -P 4 40M 128k", "write -P 5 52429800 3000")
    img("create", "-q", "-f", "qcow2", "b.qcow2", "64M")
    qemu_io(vm, "b.qcow2", "write -P 1 0 1M", "write -P 2 33M 4M")
    img("bitmap", "--add", "b.qcow2", "b0")
    img("bitmap", "--add", "-g", "512", "b.qcow2", "a-much-longer-bitmap-name-here")
    img("bitmap", "--add", "-g", "2M", "b.qcow2", "b2")
    img("bitmap", "--add", "--disable", "-g", "4k", "b.qcow2", "b\u00e9")
    img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "64M")
    qemu_io(vm, "v2.qcow2", "write -P 9 1M 64k")
    img("create", "-q", "-f", "raw", "r.raw", "64M")
    qemu_io(vm, "r.raw", "write -P 1 1M 8k", "write -z 4M 1M", "write -P 2 9M 100", driver="raw")
    img("create", "-q", "-f", "qcow2", "-b", "d.qcow2", "-F", "qcow2", "o.qcow2")
    qemu_io(vm, "o.qcow2", "write -P 7 1M 64k", "write -z 0 64k", "write -P 8 512k 4k", "write -z 10M 64k")
    img("create", "-q", "-f", "qcow2", "-b", "d.qcow2", "-F", "qcow2", "o2.qcow2", "128M")
    qemu_io(vm, "o2.qcow2", "write -P 7 100M 64k")
    img("create", "-q", "-f", "qcow2", "-b", "r.raw", "-F", "raw", "o3.qcow2")
    img("create", "-q", "-f", "qcow2", "z.qcow2", "100000")
    img("create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", "big.qcow2", "1T")
    qemu_io(vm, "big.qcow2", "write -P 1 0 4M", "write -P 2 512G 2M", "write -P 3 1023G 1M")
    img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "pre.qcow2", "8M")
    qemu_io(vm, "pre.qcow2", "write -P 1 0 4k", "write -P 2 1M 64k")
    img("bitmap", "--add", "pre.qcow2", "p")
    img("create", "-q", "-f", "qcow2", "bigb.qcow2", "1T")
    img("bitmap", "--add", "bigb.qcow2", "one")
    img("bitmap", "--add", "-g", "1M", "bigb.qcow2", "two")
    img("create", "-q", "-f", "qcow2", "used.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "u", "file": {"driver": "file", "filename": "used.qcow2"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "u", "name": "live", "persistent": True})


def _img(vm: Machine, *args: str) -> tuple:
    try:
        return ("ok", vm.qemu_img("measure", *args))
    except QemuImgError as err:
        return ("err", err.stderr, err.returncode)


OPEN = [["-U", "-O", "qcow2", "b.qcow2"], ["-U", "-O", "qcow2", "-o", "cluster_size=512", "b.qcow2"],
        ["-O", "qcow2", "b.qcow2"], ["-U", "o.qcow2", "-O", "qcow2"]]


def _story(vm: Machine) -> list:
    images(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2", "nobase.qcow2", "1M")
    out = [(case, _img(vm, *case)) for case in [*SIZES, *ERRORS, *IMAGES, ["nobase.qcow2"]]]
    # b.qcow2 open in QEMU: its stored bitmaps are in use (the file's flags), and the file is locked
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "bb", "file": {"driver": "file", "filename": "b.qcow2"}})
    return out + [(case, _img(vm, *case)) for case in OPEN]


@pytest.fixture(scope="module")
def measured() -> dict:
    return {tuple(case): result for case, result in _story(Machine())}


@pytest.mark.qemu
def test_matches_qemu_img():
    want, got = on_both(_story, daemon="system")
    assert [c for c, w in want] == [c for c, g in got]
    diffs = [(case, w, g) for (case, w), (_, g) in zip(want, got) if w != g]
    assert diffs == []


# -- exact values (printed by qemu-img 7.2.22) ----------------------------------------------------------------
def test_new_image_sizes(measured):
    assert measured[("--size", "1G")] == ("ok", "required size: 1073741824\nfully allocated size: 1073741824\n")
    assert measured[("--size", "1G", "-O", "qcow2")] == ("ok", "required size: 393216\n"
                                                               "fully allocated size: 1074135040\n")
    assert measured[("--size", "1G", "-O", "qcow2", "--output=json")] == (
        "ok", '{\n    "required": 393216,\n    "fully-allocated": 1074135040\n}\n')
    assert measured[("--size", "0", "-O", "qcow2")] == ("ok", "required size: 196608\nfully allocated size: 196608\n")
    assert measured[("--size", "1023")] == ("ok", "required size: 1024\nfully allocated size: 1024\n")
    assert measured[("--size", "9223372036854775807")] == (
        "ok", "required size: 9223372036854775808\nfully allocated size: 9223372036854775808\n")  # (uint64)
    assert measured[("--size", "1G", "-O", "qcow2", "-o", "cluster_size=512")] == (
        "ok", "required size: 21385216\nfully allocated size: 1095127040\n")
    assert measured[("--size", "1G", "-O", "qcow2", "-o", "cluster_size=2M")] == (
        "ok", "required size: 10485760\nfully allocated size: 1084227584\n")
    ten_g = ("ok", "required size: 1900544\nfully allocated size: 10739318784\n")
    for opt in ("compat=0.10", "preallocation=metadata", "backing_file=x", "encryption=on", "size=5G"):
        assert measured[("--size", "10G", "-O", "qcow2", "-o", opt)] == ten_g
    full = ("ok", "required size: 10739318784\nfully allocated size: 10739318784\n")
    assert measured[("--size", "10G", "-O", "qcow2", "-o", "preallocation=falloc")] == full
    assert measured[("--size", "10G", "-O", "qcow2", "-o", "preallocation=full")] == full
    assert measured[("--size", "100G", "-O", "qcow2", "-o", "cluster_size=64k,extended_l2=on")] == (
        "ok", "required size: 29753344\nfully allocated size: 107403935744\n")


def test_image_sizes(measured):
    """d.qcow2: 1 MiB, 100 KiB, 512 B, 3000 B of data and a compressed 128 KiB; a zero cluster."""
    assert measured[("-O", "qcow2", "d.qcow2")] == (
        "ok", "required size: 1769472\nfully allocated size: 67436544\nbitmaps size: 0\n")
    assert measured[("d.qcow2",)] == ("ok", "required size: 67108864\nfully allocated size: 67108864\n")
    # 4 KiB clusters: only the blocks the data runs touch (the rest of a partly written cluster reads as zero)
    assert measured[("-O", "qcow2", "-o", "cluster_size=4k", "d.qcow2")] == (
        "ok", "required size: 1470464\nfully allocated size: 67289088\nbitmaps size: 0\n")
    assert measured[("-O", "qcow2", "-o", "compat=0.10", "d.qcow2")] == (
        "ok", "required size: 1769472\nfully allocated size: 67436544\n")  # no bitmaps in a v2 image
    assert measured[("-O", "qcow2", "--output=json", "b.qcow2")] == (
        "ok", '{\n    "bitmaps": 589824,\n    "required": 5570560,\n    "fully-allocated": 67436544\n}\n')
    assert measured[("-O", "qcow2", "-o", "cluster_size=512", "b.qcow2")][1].endswith("bitmaps size: 22016\n")
    assert measured[("-O", "qcow2", "v2.qcow2")] == ("ok", "required size: 393216\nfully allocated size: 67436544\n")
    assert measured[("-O", "qcow2", "r.raw")] == ("ok", "required size: 524288\nfully allocated size: 67436544\n")
    assert measured[("-O", "qcow2", "o3.qcow2")][1].startswith("required size: 524288\n")  # (its raw backing file)
    assert measured[("-O", "qcow2", "-o", "cluster_size=512", "big.qcow2")] == (
        "ok", "required size: 21905643008\nfully allocated size: 1121408882176\nbitmaps size: 0\n")
    assert measured[("-O", "qcow2", "bigb.qcow2")] == (
        "ok", "required size: 168034304\nfully allocated size: 1099679662080\nbitmaps size: 2424832\n")


def test_errors(measured):
    assert measured[()] == ("err", "qemu-img: Either --size N or one filename must be specified.\n", 1)
    assert measured[("--size", "1G", "d.qcow2")] == (
        "err", "qemu-img: --size N cannot be used together with a filename.\n", 1)
    assert measured[("--size", "-1")] == ("err", "qemu-img: Invalid image size specified. You may use k, M, G, T, P "
                                                 "or E suffixes for\nqemu-img: kilobytes, megabytes, gigabytes, "
                                                 "terabytes, petabytes and exabytes.\n", 1)
    assert measured[("--size", "8E")] == (
        "err", "qemu-img: Invalid image size specified. Must be between 0 and 9223372036854775807.\n", 1)
    assert measured[("--size", "1G", "-O", "vmdk")] == (
        "err", "qemu-img: Block driver 'vmdk' does not support size measurement\n", 1)
    assert measured[("--size", "1G", "-O", "null-co")] == (
        "err", "qemu-img: Format driver 'null-co' does not support image creation\n", 1)
    assert measured[("--size", "1G", "-O", "qcow2", "-o", "foo=bar")] == (
        "err", "qemu-img: Invalid parameter 'foo'\nqemu-img: Invalid options for file format 'qcow2'\n", 1)
    assert measured[("--size", "1G", "-O", "qcow2", "-o", "cluster_size=1000")] == (
        "err", "qemu-img: Cluster size must be a power of two between 512 and 2048k\n", 1)
    assert measured[("--size", "1G", "-O", "qcow2", "-o", "compat=v2")] == (
        "err", "qemu-img: Invalid compatibility level: 'v2'\n", 1)
    assert measured[("--size", "1G", "-O", "qcow2", "-o", "preallocation=bad")] == (
        "err", "qemu-img: invalid parameter value: bad\n", 1)
    assert measured[("--size", "1G", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=8k")] == (
        "err", "qemu-img: Extended L2 entries are only supported with cluster sizes of at least 16384 bytes\n", 1)
    assert measured[("--size", "9223372036854775807", "-O", "qcow2")] == (
        "err", "qemu-img: The image size is too large (try using a larger cluster size)\n", 1)
    assert measured[("nothere.img",)] == (
        "err", "qemu-img: Could not open 'nothere.img': Could not open 'nothere.img': No such file or directory\n", 1)
    assert measured[("-l", "snap", "d.qcow2")] == ("err", "qemu-img: Failed to load snapshot: Can't find snapshot\n", 1)


@pytest.mark.parametrize("args,message", [
    (["-x"], "measure: invalid option -- 'x'"), (["--bogus"], "measure: unrecognized option '--bogus'"),
    (["--size"], "measure: option '--size' requires an argument"),
    (["-O"], "measure: option requires an argument -- 'O'"),
    (["--o=json"], "measure: option '--o=json' is ambiguous; possibilities: '--object' '--output'"),
    (["--force-share=1"], "measure: option '--force-share' doesn't allow an argument"),
])
def test_getopt_errors_lead_to_the_help(args, message):
    """glibc's line (on stderr), then qemu-img's help on stdout with status 0, which bitlab does not print."""
    with pytest.raises(QemuImgError) as err:
        Machine().qemu_img("measure", *args)
    assert err.value.stderr.startswith(message + "\nqemu-img: bitlab does not simulate qemu-img's help")


def test_help_is_not_simulated():
    with pytest.raises(QemuImgError) as err:
        Machine().qemu_img("measure", "--size", "1G", "-h")
    assert err.value.stderr == ("qemu-img: bitlab does not simulate qemu-img's help "
                                "(qemu-img prints it and exits with 0)\n")


def test_getopt_long():
    positional: list[str] = []
    got = list(getopt_long(["a", "-Uf", "raw", "--si=1G", "-Oqcow2", "b", "--out", "json", "--", "-c"],
                           "hf:O:o:l:U", {"size": True, "output": True, "object": True}, "m", positional))
    assert got == [("-U", None), ("-f", "raw"), ("--size", "1G"), ("-O", "qcow2"), ("--output", "json")]
    assert positional == ["a", "b", "-c"]
    with pytest.raises(GetoptError, match="m: invalid option -- ':'"):
        list(getopt_long(["-:"], "f:", {}, "m", []))


def test_option_lists():
    assert [valid_option_list(t) for t in ("a=1", "a=1,b", "a=x,,y", "", ",", "a,", ",a", "a,,")] == [
        True, True, True, False, False, False, False, True]
    assert items("a=x,,y,nob,c,=z,d=e=f") == [("a", "x,y"), ("b", "off"), ("c", "on"), ("", "z"), ("d", "e=f")]


def test_refcount_and_prealloc_formulas():
    assert refcount_metadata(16388, 65536, 4) == (1, 1)
    assert refcount_metadata(1 << 24, 65536, 4) == (513, 1)  # 512 blocks count themselves
    assert refcount_metadata(16640, 512, 4, generous=True) == (66, 2)  # (a table grown past 64 blocks: see
    # tests/conformance/test_reftable_growth.py; room for half as many again: 99 entries, 2 clusters)
    assert prealloc_size(GiB, 65536, 4, False) == GiB + 393216
    assert prealloc_size(0, 65536, 4, False) == 196608  # header, L1 cluster, refcount table and block


def test_a_terabyte_with_a_million_clusters():
    """1 TiB, every 16th cluster of 64 KiB written (2^20 runs): counted over runs, not cluster by cluster."""
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "huge.qcow2", "1T")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "h", "file": {"driver": "file", "filename": "huge.qcow2"}})
    offsets = np.arange(1 << 20, dtype=np.int64) * (16 * 65536)
    vm.write_batch("h", offsets, np.full(offsets.size, 65536), 7)
    vm.qmp("blockdev-del", {"node-name": "h"})
    meta = prealloc_size(TiB, 65536, 4, False) - TiB
    assert vm.qemu_img("measure", "-O", "qcow2", "huge.qcow2") == (
        f"required size: {meta + (1 << 36)}\nfully allocated size: {meta + TiB}\nbitmaps size: 0\n")
    meta4k = prealloc_size(TiB, 4096, 4, False) - TiB
    assert vm.qemu_img("measure", "-O", "qcow2", "-o", "cluster_size=4k", "huge.qcow2").startswith(
        f"required size: {meta4k + (1 << 36)}\n")
    assert vm.qemu_img("measure", "-O", "qcow2", "-o", "cluster_size=2M", "huge.qcow2").startswith(
        f"required size: {prealloc_size(TiB, 2 * MiB, 4, False)}\n")  # every 2 MiB cluster holds data


# -- random chains: the same steps on real files and in bitlab ---------------------------------------------------
MEASURE_OPTS = ["", "cluster_size=512", "cluster_size=4k", "cluster_size=16k", "cluster_size=2M", "compat=0.10",
                "extended_l2=on", "extended_l2=on,cluster_size=32k", "preallocation=metadata", "backing_file=x"]


def _measure_chain(seed: int) -> list[str]:
    """1-3 layers of random writes, zero writes and discards (or compressed clusters alone), persistent bitmaps
    on some, then ``measure`` of every layer with random options; returns the differences."""
    sc = Scenario(seed)
    rng = sc.rng
    try:
        size = rng.choice((1, 2, 4)) * MiB
        for level in range(rng.randint(1, 3)):
            layer_size = size if level == 0 or rng.random() < 0.7 else rng.choice((1, 2, 4, 6)) * MiB
            v2 = rng.random() < 0.15
            name = sc.create(layer_size, rng.choice((4096, 32768, 65536, 65536)), v2)
            if rng.random() < 0.25:  # compressed clusters alone (bitlab refuses other requests over them)
                cs = sc.clusters[name]
                picks = rng.sample(range(layer_size // cs), min(4, layer_size // cs))
                sc.io(name, [f"write -c -P {rng.choice((1, 0x22, 0x33))} {c * cs} {cs}" for c in picks])
            else:
                sc.random_ops(name, layer_size, rng.randint(0, 6))
            if not v2 and rng.random() < 0.3:
                sc.img("bitmap", "--add", "-g", str(rng.choice((512, 4096, 65536, MiB))), name, f"bm{level}")
        for name in sc.files:
            # (a copy on write read never-written blocks of a backing file into the host's page cache, where
            # SEEK_DATA then finds data: see README's known differences; counting in clusters no smaller than
            # each layer's keeps a measure clear of it)
            largest = max(cs for f, cs in sc.clusters.items() if f in sc.chain_of(name) and cs > 4096) \
                if any(sc.clusters[f] > 4096 for f in sc.chain_of(name)) else 0
            for opts in rng.sample(MEASURE_OPTS, 3):
                cs = parse_size(dict(qemu_opts.items(opts)).get("cluster_size", "64k")) if opts else 65536
                if cs < largest:
                    continue
                sc.img("measure", *(["-O", "qcow2"] if rng.random() < 0.9 else []), *(["-o", opts] if opts else []),
                       *(["--output=json"] if rng.random() < 0.3 else []), name)
    finally:
        sc.close()
    return sc.diffs


@pytest.mark.qemu
def test_random_chains_measure_as_real_qemu_img():
    seed = int(os.environ.get("BITLAB_MEASURE_SEED", "7000"))
    count = int(os.environ.get("BITLAB_MEASURE_SCENARIOS", "40"))
    diffs = [d for i in range(count) for d in _measure_chain(seed + i)]
    assert not diffs, f"{len(diffs)} differences; first:\n" + "\n\n".join(diffs[:3])
