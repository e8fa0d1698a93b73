"""Relative backing file names resolve against the directory of the image that names them, as in QEMU
(block.c bdrv_get_full_backing_filename, util/cutils.c path_combine), never against the work directory.

Simulator tests assert QEMU 7.2's exact texts; ``qemu`` tests play the same steps on real QEMU and compare.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from bitlab import Machine, QemuImgError, QMPError, chain
from bitlab.block.paths import full_backing_filename, path_combine, path_has_protocol, strip_file_protocol


def mkdir(vm: Machine, path: str) -> None:
    """A directory in the work directory (the simulator's store has no directories to make)."""
    if vm.backend == "qemu":
        os.makedirs(os.path.join(vm.workdir, path), exist_ok=True)


def fails(vm: Machine, *args: str) -> QemuImgError:
    with pytest.raises(QemuImgError) as err:
        vm.qemu_img(*args)
    return err.value


def qmp_error(vm: Machine, command: str, args: dict) -> str:
    with pytest.raises(QMPError) as err:
        vm.qmp(command, args)
    return str(err.value)


def add(vm: Machine, name: str, filename: str, **extra) -> None:
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                            "file": {"driver": "file", "filename": filename}, **extra})


def fill(vm: Machine, filename: str, pattern: int) -> None:
    """Write ``pattern`` over the first 64 KiB of an image (through a node, closed again)."""
    add(vm, "fill", filename)
    vm.write("fill", 0, "64k", pattern=pattern)
    vm.qmp("blockdev-del", {"node-name": "fill"})


def two_bases(vm: Machine) -> None:
    """``base.qcow2`` (0x11) and ``sub/base.qcow2`` (0x22): a name resolved against the wrong directory
    reads the wrong bytes."""
    mkdir(vm, "sub")
    for name, pattern in (("base.qcow2", 0x11), ("sub/base.qcow2", 0x22)):
        vm.qemu_img("create", "-q", "-f", "qcow2", name, "1M")
        fill(vm, name, pattern)


def backing_node(vm: Machine, name: str) -> dict:
    """The query-named-block-nodes entry of the backing node under node ``name``."""
    nodes = vm.qmp("query-named-block-nodes", {"flat": True})
    top = next(n for n in nodes if n["node-name"] == name)
    below = [n for n in nodes if n["node-name"].startswith("#") and n["drv"] == "qcow2"]
    assert len(below) == 1, (top, below)
    return below[0]


def first_line(vm: Machine, node: str, command: str) -> str:
    return vm.qemu_io(node, command).splitlines()[0]


# -- QEMU's name rules ------------------------------------------------------------------------------
def test_path_combine_is_textual_as_qemu_s():
    assert path_combine("sub/top.qcow2", "base.qcow2") == "sub/base.qcow2"
    assert path_combine("sub/top.qcow2", "../base.qcow2") == "sub/../base.qcow2"
    assert path_combine("top.qcow2", "base.qcow2") == "base.qcow2"
    assert path_combine("a//top.qcow2", "b") == "a//b"
    assert path_combine("/w/sub/top.qcow2", "base.qcow2") == "/w/sub/base.qcow2"
    assert path_combine("sub/top.qcow2", "/abs/base.qcow2") == "/abs/base.qcow2"
    assert path_combine("file:top.qcow2", "base.qcow2") == "file:base.qcow2"
    assert path_has_protocol("file:x") and path_has_protocol("nbd:unix:/s") and not path_has_protocol("a/b:c")
    assert full_backing_filename("sub/top.qcow2", "file:base.qcow2") == "file:base.qcow2"
    assert full_backing_filename("sub/top.qcow2", "") is None
    with pytest.raises(ValueError, match=r"^Cannot use relative backing file names for 'json:\{\}'$"):
        full_backing_filename("json:{}", "base.qcow2")
    assert strip_file_protocol("file:base.qcow2") == "base.qcow2"
    assert strip_file_protocol("nbd:localhost:10809") is None
    assert strip_file_protocol("sub/x") == "sub/x"


# -- the block graph (simulator, QEMU's texts) -----------------------------------------------------------
def test_blockdev_add_opens_the_backing_file_beside_the_image():
    vm = Machine()
    two_bases(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2")
    add(vm, "top", "sub/top.qcow2")
    below = backing_node(vm, "top")
    assert below["file"] == "sub/base.qcow2"
    assert below["image"]["filename"] == "sub/base.qcow2"
    assert first_line(vm, "top", "read -P 0x22 0 64k") == "read 65536/65536 bytes at offset 0"


def test_dot_dot_is_kept_in_the_name_and_leads_up():
    vm = Machine()
    two_bases(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "../base.qcow2", "-F", "qcow2", "sub/up.qcow2")
    add(vm, "up", "sub/up.qcow2")
    assert backing_node(vm, "up")["file"] == "sub/../base.qcow2"
    assert first_line(vm, "up", "read -P 0x11 0 64k") == "read 65536/65536 bytes at offset 0"


def test_absolute_overlay_and_blkdebug_resolve_against_the_file_s_directory():
    vm = Machine()
    two_bases(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2")
    add(vm, "abs", f"{vm.workdir}/sub/top.qcow2")
    assert backing_node(vm, "abs")["file"] == f"{vm.workdir}/sub/base.qcow2"
    vm.qmp("blockdev-del", {"node-name": "abs"})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "dbg", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "sub/top.qcow2"}}})
    assert backing_node(vm, "dbg")["file"] == "sub/base.qcow2"
    assert first_line(vm, "dbg", "read -P 0x22 0 64k") == "read 65536/65536 bytes at offset 0"


def test_missing_and_escaping_backing_files_give_qemu_s_text():
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "missing.qcow2", "-F", "qcow2", "sub/miss.qcow2", "1M")
    assert qmp_error(vm, "blockdev-add", {"driver": "qcow2", "node-name": "m", "file": {
        "driver": "file", "filename": "sub/miss.qcow2"}}) == (
        "GenericError: Could not open backing file: Could not open 'sub/missing.qcow2': No such file or directory")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "../../etc/x.qcow2", "-F", "qcow2", "sub/esc.qcow2", "1M")
    assert qmp_error(vm, "blockdev-add", {"driver": "qcow2", "node-name": "e", "file": {
        "driver": "file", "filename": "sub/esc.qcow2"}}) == (
        "GenericError: Could not open backing file: Could not open 'sub/../../etc/x.qcow2': No such file or directory")
    for outside in ("../x.qcow2", "sub/../../x.qcow2", "/etc/passwd"):
        assert qmp_error(vm, "blockdev-add", {"driver": "file", "node-name": "o", "filename": outside}) == (
            f"GenericError: Could not open '{outside}': No such file or directory")
    assert list(vm.graph.nodes) == []


def test_a_file_protocol_prefix_is_taken_as_it_is():
    vm = Machine()
    two_bases(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "file:base.qcow2", "-F", "qcow2", "sub/proto.qcow2")
    info = json.loads(vm.qemu_img("info", "--output=json", "sub/proto.qcow2"))
    assert (info["backing-filename"], info["full-backing-filename"]) == ("file:base.qcow2", "file:base.qcow2")
    add(vm, "proto", "sub/proto.qcow2")
    assert backing_node(vm, "proto")["file"] == "base.qcow2"  # file-posix strips its prefix
    assert first_line(vm, "proto", "read -P 0x11 0 64k") == "read 65536/65536 bytes at offset 0"


def test_drive_backup_existing_target_opens_its_backing_file_beside_it():
    vm = Machine()
    two_bases(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/t.qcow2")
    vm.qemu_img("create", "-q", "-f", "qcow2", "src.qcow2", "1M")
    add(vm, "src", "src.qcow2")
    vm.qmp("drive-backup", {"job-id": "j", "device": "src", "target": "sub/t.qcow2", "mode": "existing",
                            "format": "qcow2", "sync": "full", "auto-finalize": False})
    target = next(n for n in vm.qmp("query-named-block-nodes", {"flat": True})
                  if n["drv"] == "qcow2" and n["file"] == "sub/base.qcow2")
    assert target["ro"] is True
    assert qmp_error(vm, "drive-backup", {"device": "src", "target": "../t.qcow2", "mode": "existing",
                                          "format": "qcow2", "sync": "full"}) == (
        "GenericError: Could not open '../t.qcow2': No such file or directory")


def test_chain_analysis_follows_relative_names():
    vm = Machine()
    two_bases(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2")
    assert chain._backing(vm, "sub/top.qcow2") == "sub/base.qcow2"
    assert chain.restore(vm, "sub/top.qcow2") == chain.restore(vm, "sub/base.qcow2")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "file:base.qcow2", "-F", "qcow2", "sub/proto.qcow2")
    assert chain._backing(vm, "sub/proto.qcow2") == "base.qcow2"


# -- qemu-img (simulator, QEMU's texts) ----------------------------------------------------------------
def test_create_checks_the_backing_file_beside_the_new_image_unless_unsafe():
    vm = Machine()
    assert fails(vm, "create", "-f", "qcow2", "-b", "nothere.qcow2", "-F", "qcow2", "sub/t.qcow2").stderr == (
        "qemu-img: sub/t.qcow2: Could not open 'sub/nothere.qcow2': No such file or directory\n"
        "Could not open backing image.\n")
    assert fails(vm, "create", "-f", "qcow2", "-b", "../../x.qcow2", "-F", "qcow2", "sub/t.qcow2").stderr == (
        "qemu-img: sub/t.qcow2: Could not open 'sub/../../x.qcow2': No such file or directory\n"
        "Could not open backing image.\n")
    assert fails(vm, "create", "-f", "qcow2", "-u", "-b", "nothere.qcow2", "sub/t.qcow2", "1M").stderr == (
        "qemu-img: sub/t.qcow2: Backing file specified without backing format\n")
    assert fails(vm, "create", "-f", "qcow2", "-u", "-b", "nothere.qcow2", "-F", "qcow2", "sub/t.qcow2").stderr == (
        "qemu-img: sub/t.qcow2: Image creation needs a size parameter\n")
    assert vm.qemu_img("create", "-f", "qcow2", "-u", "-b", "nothere.qcow2", "-F", "qcow2", "sub/t.qcow2",
                       "1M").startswith("Formatting 'sub/t.qcow2', fmt=qcow2 ")
    vm.qemu_img("create", "-q", "-f", "raw", "sub/r.raw", "1M")
    assert fails(vm, "create", "-f", "qcow2", "-b", "r.raw", "sub/t2.qcow2").stderr == (
        "qemu-img: sub/t2.qcow2: Backing file specified without backing format\nDetected format of raw.")


def test_files_outside_the_work_directory_do_not_exist():
    vm = Machine()
    vm.qemu_img("create", "-q", "-f", "qcow2", "d.qcow2", "1M")
    err = fails(vm, "create", "-f", "raw", "../x.raw", "1M")
    assert (err.stdout, err.stderr) == ("Formatting '../x.raw', fmt=raw size=1048576\n",
                                        "qemu-img: ../x.raw: Could not create '../x.raw': No such file or directory\n")
    assert fails(vm, "create", "-q", "-f", "qcow2", "/tmp/x.qcow2", "1M").stderr == (
        "qemu-img: /tmp/x.qcow2: Could not create '/tmp/x.qcow2': No such file or directory\n")
    assert fails(vm, "convert", "-O", "qcow2", "d.qcow2", "sub/../../y.qcow2").stderr == (
        "qemu-img: sub/../../y.qcow2: error while converting qcow2: Could not create 'sub/../../y.qcow2': "
        "No such file or directory\n")
    for sub in ("info", "map", "check"):
        assert fails(vm, sub, "../d.qcow2").stderr == (
            "qemu-img: Could not open '../d.qcow2': Could not open '../d.qcow2': No such file or directory\n")


def test_info_rebase_and_commit_name_files_relative_to_each_image():
    vm = Machine()
    two_bases(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/mid.qcow2")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "sub/top.qcow2")
    text = vm.qemu_img("info", "--backing-chain", "sub/top.qcow2")
    assert [line for line in text.splitlines() if line.startswith(("image:", "backing file:"))] == [
        "image: sub/top.qcow2", "backing file: mid.qcow2 (actual path: sub/mid.qcow2)",
        "image: sub/mid.qcow2", "backing file: base.qcow2 (actual path: sub/base.qcow2)", "image: sub/base.qcow2"]
    # commit -b is looked for relative to each overlay's directory, not the working directory
    assert fails(vm, "commit", "-b", "sub/base.qcow2", "sub/top.qcow2").stderr == (
        "qemu-img: Did not find 'sub/base.qcow2' in the backing chain of 'sub/top.qcow2'\n")
    assert vm.qemu_img("commit", "-d", "-b", "../sub/mid.qcow2", "sub/top.qcow2") == "Image committed.\n"
    assert vm.qemu_img("commit", "-d", "-b", "./base.qcow2", "sub/top.qcow2") == "Image committed.\n"
    assert fails(vm, "rebase", "-b", "nodir/q", "-F", "qcow2", "sub/top.qcow2").stderr == (
        "qemu-img: Could not open new backing file 'nodir/q': Could not open 'sub/nodir/q': "
        "No such file or directory\n")
    vm.qemu_img("rebase", "-b", "../base.qcow2", "-F", "qcow2", "sub/top.qcow2")
    assert json.loads(vm.qemu_img("info", "--output=json", "sub/top.qcow2"))["full-backing-filename"] == (
        "sub/../base.qcow2")
    assert vm.qemu_img("compare", "sub/top.qcow2", "sub/mid.qcow2") == "Images are identical.\n"


# -- the same steps on real QEMU -----------------------------------------------------------------------------
def _mask(value):
    """Host-file layout is not simulated: drop ``actual-size``; auto-generated node names differ."""
    if isinstance(value, dict):
        return {k: ("#auto" if k == "node-name" and str(v).startswith("#") else _mask(v))
                for k, v in value.items() if k != "actual-size"}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def _play(backend: str, steps: Callable[[Machine, Callable], None]) -> list:
    """Run ``steps(vm, record)`` on a fresh machine; what was recorded, with the work directory as ``WD``."""
    out: list = []

    def record(kind: str, fn: Callable, *args):
        shown = [a for a in args if isinstance(a, (str, dict))]
        try:
            out.append((kind, shown, _mask(fn(*args))))
        except QemuImgError as err:
            out.append((kind, shown, "error", err.returncode, err.stdout, err.stderr))
        except QMPError as err:
            out.append((kind, shown, "error", str(err)))

    vm = Machine(backend=backend)
    try:
        steps(vm, record)
    finally:
        if backend == "qemu":
            vm.close()
    workdir = vm.workdir
    return json.loads(json.dumps(out).replace(workdir, "WD"))


def _json_img(vm: Machine) -> Callable:
    return lambda *args: json.loads(vm.qemu_img(*args))


def _images_steps(vm: Machine, record: Callable) -> None:
    two_bases(vm)
    img = _json_img(vm)
    record("img", vm.qemu_img, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/mid.qcow2")
    record("img", vm.qemu_img, "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "sub/top.qcow2")
    record("img", vm.qemu_img, "create", "-q", "-f", "qcow2", "-b", "../base.qcow2", "-F", "qcow2", "sub/up.qcow2")
    record("img", vm.qemu_img, "create", "-q", "-f", "qcow2", "-b", "sub/base.qcow2", "-F", "qcow2", "sub/x.qcow2")
    record("img", vm.qemu_img, "create", "-q", "-f", "qcow2", "-b", "../../bitlab-nowhere.qcow2", "-F", "qcow2",
           "sub/x.qcow2")
    record("img", vm.qemu_img, "create", "-q", "-f", "qcow2", "-u", "-b", "gone", "-F", "qcow2", "sub/g.qcow2", "1M")
    record("info", img, "info", "--output=json", "--backing-chain", "sub/top.qcow2")
    record("info", img, "info", "--output=json", "--backing-chain", "sub/up.qcow2")
    record("info", img, "info", "--output=json", "sub/g.qcow2")
    record("map", img, "map", "--output=json", "sub/top.qcow2")
    record("map", img, "map", "--output=json", "sub/up.qcow2")
    record("img", vm.qemu_img, "map", "sub/g.qcow2")
    record("img", vm.qemu_img, "compare", "sub/top.qcow2", "sub/base.qcow2")
    record("img", vm.qemu_img, "compare", "sub/up.qcow2", "base.qcow2")
    record("img", vm.qemu_img, "commit", "-d", "-b", "sub/base.qcow2", "sub/top.qcow2")
    record("img", vm.qemu_img, "commit", "-d", "-b", "base.qcow2", "sub/top.qcow2")
    record("img", vm.qemu_img, "rebase", "-b", "nodir/q", "-F", "qcow2", "sub/top.qcow2")
    record("img", vm.qemu_img, "rebase", "-b", "../base.qcow2", "-F", "qcow2", "sub/top.qcow2")
    record("info", img, "info", "--output=json", "sub/top.qcow2")
    record("img", vm.qemu_img, "compare", "sub/top.qcow2", "sub/mid.qcow2")
    record("img", vm.qemu_img, "convert", "-O", "raw", "sub/up.qcow2", "sub/up.raw")
    record("img", vm.qemu_img, "compare", "-f", "raw", "sub/up.raw", "base.qcow2")
    record("chain", chain._backing, vm, "sub/up.qcow2")
    # a missing or escaping backing file: info shows the names without opening it; reading through it fails
    record("img", vm.qemu_img, "create", "-q", "-f", "qcow2", "-u", "-b", "../../bitlab-nowhere.qcow2", "-F", "qcow2",
           "sub/esc.qcow2", "1M")
    for name in ("sub/g.qcow2", "sub/esc.qcow2"):
        record("info", img, "info", "--output=json", name)
        record("img", vm.qemu_img, "info", "--backing-chain", name)
        record("img", vm.qemu_img, "map", name)
        record("img", vm.qemu_img, "compare", name, "base.qcow2")
        record("img", vm.qemu_img, "convert", "-O", "raw", name, "out.raw")
        record("img", vm.qemu_img, "commit", name)
        record("img", vm.qemu_img, "rebase", "-b", "base.qcow2", "-F", "qcow2", name)
        record("img", vm.qemu_img, "rebase", "-u", "-b", "../base.qcow2", "-F", "qcow2", name)
        record("info", img, "info", "--output=json", name)
    # an absolute name for the new image: its backing file is looked for beside it
    record("img", vm.qemu_img, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", f"{vm.workdir}/sub/a.qcow2")
    record("info", img, "info", "--output=json", f"{vm.workdir}/sub/a.qcow2")
    record("img", vm.qemu_img, "compare", f"{vm.workdir}/sub/a.qcow2", "sub/base.qcow2")


def _qmp_steps(vm: Machine, record: Callable) -> None:
    two_bases(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "../base.qcow2", "-F", "qcow2", "sub/up.qcow2")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2", "sub/miss.qcow2", "1M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "../../etc/x", "-F", "qcow2", "sub/esc.qcow2", "1M")
    opens = [("top", "sub/top.qcow2", "read -P 0x22 0 64k"), ("up", "sub/up.qcow2", "read -P 0x11 0 64k"),
             ("abs", f"{vm.workdir}/sub/top.qcow2", "read -P 0x22 0 64k")]
    for name, filename, read in opens:
        record("add", add, vm, name, filename)
        record("read", first_line, vm, name, read)
        nodes = vm.qmp("query-named-block-nodes", {"flat": True})
        record("implicit", lambda n=nodes: [x for x in n if x["node-name"].startswith("#")])
        vm.qmp("blockdev-del", {"node-name": name})
    for name, filename in (("miss", "sub/miss.qcow2"), ("esc", "sub/esc.qcow2")):
        record("add", add, vm, name, filename)


@pytest.mark.qemu
def test_qemu_img_on_sub_directories_matches_real_qemu():
    assert _play("sim", _images_steps) == _play("qemu", _images_steps)


@pytest.mark.qemu
def test_backing_chains_opened_by_blockdev_add_match_real_qemu():
    """Which files are opened, under which names, what reads through them and the errors."""
    assert _play("sim", _qmp_steps) == _play("qemu", _qmp_steps)


def _top_entries(vm: Machine, record: Callable) -> None:
    two_bases(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "../base.qcow2", "-F", "qcow2", "sub/up.qcow2")
    add(vm, "up", "sub/up.qcow2")
    record("nodes", vm.qmp, "query-named-block-nodes", {"flat": True})


@pytest.mark.qemu
def test_the_overlay_s_own_entry_matches_real_qemu():
    """The overlay keeps its plain filename and shows ``full-backing-filename`` / ``backing_file`` resolved."""
    assert _play("sim", _top_entries) == _play("qemu", _top_entries)


def _backup_steps(vm: Machine, record: Callable) -> None:
    two_bases(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2")
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/t.qcow2")
    add(vm, "src", "sub/top.qcow2")
    vm.write("src", "64k", "64k", pattern=0x33)
    img = _json_img(vm)
    for job, target, mode in (("j0", "t2.qcow2", "absolute-paths"), ("j1", "sub/t.qcow2", "existing"),
                              ("j2", "../t.qcow2", "existing")):
        record("backup", vm.qmp, "drive-backup", {"job-id": job, "device": "src", "target": target, "mode": mode,
                                                  "format": "qcow2", "sync": "top"})
        vm.run()
        record("events", lambda j=job: [(e["event"], e["data"]["len"], e["data"]["offset"])
                                        for e in vm.events if e["event"] == "BLOCK_JOB_COMPLETED"
                                        and e["data"]["device"] == j])
    vm.qmp("blockdev-del", {"node-name": "src"})  # QEMU writes its cached qcow2 metadata on close
    for target in ("t2.qcow2", "sub/t.qcow2"):
        record("info", img, "info", "--output=json", "--backing-chain", target)
        record("img", vm.qemu_img, "compare", target, "sub/top.qcow2")


@pytest.mark.qemu
def test_drive_backup_targets_match_real_qemu():
    """A new target is created with the source's backing node's name, relative to the target; an
    existing target opens its own backing file beside it."""
    assert _play("sim", _backup_steps) == _play("qemu", _backup_steps)


def _new_target_steps(vm: Machine, record: Callable) -> None:
    two_bases(vm)
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2")
    add(vm, "src", "sub/top.qcow2")
    vm.write("src", 0, "64k", pattern=0x44)
    img = _json_img(vm)
    # sync=none names the source in the new image without opening it (BDRV_O_NO_BACKING): the name,
    # relative to sub/, does not resolve, and QEMU still creates the target.
    record("backup", vm.qmp, "drive-backup", {"job-id": "n", "device": "src", "target": "sub/n.qcow2",
                                              "format": "qcow2", "sync": "none"})
    vm.qmp("block-job-cancel", {"device": "n"})
    vm.run()
    record("info", img, "info", "--output=json", "sub/n.qcow2")
    # sync=top opens the backing file to create the target: sub/ + sub/base.qcow2 is missing.
    record("backup", vm.qmp, "drive-backup", {"job-id": "t", "device": "src", "target": "sub/t3.qcow2",
                                              "format": "qcow2", "sync": "top"})


@pytest.mark.qemu
def test_new_drive_backup_targets_in_sub_directories_match_real_qemu():
    """sync=none does not open the backing file it names; sync=top does, and fails with QEMU's bare text."""
    assert _play("sim", _new_target_steps) == _play("qemu", _new_target_steps)
