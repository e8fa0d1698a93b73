"""blkdebug nodes' filenames and option checks, as QEMU 7.2 shows them (blkdebug_refresh_filename,
bdrv_open_inherit's check for options a driver does not take)."""

import json

import pytest

from bitlab import Machine, QMPError

# blkdebug options beside the image; the node's and its qcow2 parent's filenames follow them
CASES = [{}, {"align": 4096}, {"max-transfer": 65536, "align": 512},
         {"align": 4096, "inject-error": [{"event": "read_aio", "errno": 5}],
          "set-state": [{"event": "write_aio", "new_state": 2}]},
         {"opt-write-zero": 4096, "max-write-zero": 65536, "opt-discard": 4096, "max-discard": 65536},
         {"take-child-perms": ["resize"]}]
REFUSED = [{"inject-error": []}, {"set-state": []}, {"take-child-perms": []}, {"unshare-child-perms": []},
           {"inject-error": [], "set-state": []}, {"unshare-child-perms": [], "take-child-perms": []}, {"align": 3}]


def add(vm: Machine, i: int, extra: dict) -> None:
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": f"d{i}", "file": {
        "driver": "blkdebug", "node-name": f"g{i}", **extra,
        "image": {"driver": "file", "filename": f"t{i}.qcow2", "node-name": f"f{i}"}}})


def play(backend: str) -> list:
    vm = Machine(backend=backend)
    out: list = []
    try:
        for i, extra in enumerate(CASES + REFUSED):
            vm.qemu_img("create", "-f", "qcow2", f"t{i}.qcow2", "1M")
            try:
                add(vm, i, extra)
            except QMPError as err:
                out.append((i, str(err)))
        out += sorted((e["node-name"], e["file"], e["image"]["filename"])
                      for e in vm.qmp("query-named-block-nodes", {"flat": True}))
    finally:
        if backend == "qemu":
            vm.close()
    return json.loads(json.dumps(out).replace(vm.workdir, "WD"))


def test_without_options_the_name_is_blkdebug_colon_colon_file():
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "t0.qcow2", "1M")
    add(vm, 0, {})
    names = {e["node-name"]: e["file"] for e in vm.qmp("query-named-block-nodes", {"flat": True})}
    assert names == {"d0": "blkdebug::t0.qcow2", "g0": "blkdebug::t0.qcow2", "f0": "t0.qcow2"}


def test_an_option_makes_a_json_name_with_it():
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "t1.qcow2", "1M")
    add(vm, 1, {"max-transfer": 65536, "align": 512})
    names = {e["node-name"]: e["file"] for e in vm.qmp("query-named-block-nodes", {"flat": True})}
    assert names["g1"] == ('json:{"image": {"driver": "file", "filename": "t1.qcow2"}, "max-transfer": 65536, '
                           '"driver": "blkdebug", "align": 512}')


@pytest.mark.parametrize("extra, option", [({"inject-error": []}, "inject-error"),
                                           ({"inject-error": [], "set-state": []}, "set-state"),
                                           ({"unshare-child-perms": [], "take-child-perms": []}, "take-child-perms")])
def test_an_empty_list_is_an_option_blkdebug_does_not_take(extra, option):
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "t0.qcow2", "1M")
    with pytest.raises(QMPError) as err:
        add(vm, 0, extra)
    assert err.value.desc == f"Block protocol 'blkdebug' doesn't support the option '{option}'"
    assert vm.qmp("query-named-block-nodes", {"flat": True}) == []


@pytest.mark.qemu
def test_names_and_refusals_match_real_qemu():
    assert play("sim") == play("qemu")
