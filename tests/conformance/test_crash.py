"""QEMU killed (``vm.restart(clean=False)``: SIGKILL, then the same daemon again over the same files).

The host keeps what QEMU wrote into its files (the kernel's page cache outlives QEMU), but not what qcow2's caches held:
an image is then what its file describes (what ``qemu-img -U`` read of it while QEMU ran) — the L2 tables as last
written back, so the data written since into new clusters is lost (``qemu-img map``: unallocated), a zero write or
discard since is undone; the refcount blocks as last written back, so clusters counted but not linked are leaked
(``qemu-img check``: ``Leaked cluster N refcount=1 reference=0``, exit status 3) until ``qemu-img check -r leaks``
frees them (their discard punches holes: ``disk size`` drops). A flush before the kill loses nothing. Persistent
bitmaps stay in use (inconsistent): notebook 09.

Compared step by step with qemu-storage-daemon and the system emulator.
"""

from __future__ import annotations

import re

import pytest

from bitlab import Machine, QemuImgError
from bitlab.conformance.generator import random_scenario
from bitlab.conformance.steps import wait_job
from tests.both import on_both

K, M = 1 << 10, 1 << 20


def _img(vm, *args: str):
    try:
        return vm.qemu_img(*args)
    except QemuImgError as err:
        return ("exit", err.returncode, err.stdout, err.stderr)


def _open(vm, name: str, **options) -> None:
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name, **options,
                            "file": {"driver": "file", "filename": f"{name}.qcow2"}})


def _looks(vm, names: tuple[str, ...]) -> list:
    return [_img(vm, *args, f"{name}.qcow2") for name in names
            for args in (("check",), ("map", "--output=json"), ("info",))]


def crash(vm) -> list:
    """Writes across L2 tables (a request whose first table's clusters are counted but not linked), zero writes
    and a discard over linked data, a flushed image, a backup running at the kill, a persistent bitmap; after the
    kill each image looked at, written to again, repaired."""
    out: list = []
    for name, size in (("a", "2G"), ("z", "8M"), ("f", "8M"), ("src", "8M"), ("t", "8M")):
        vm.qemu_img("create", "-q", "-f", "qcow2", f"{name}.qcow2", size)
    _open(vm, "a")
    vm.write("a", 0, M, pattern=5)
    vm.write("a", 510 * M, 4 * M, pattern=6)
    vm.write("a", 1023 * M, 2 * M, pattern=7)
    _open(vm, "z", discard="unmap")
    vm.write("z", 0, 4 * M, pattern=8)
    vm.guest_io("z", "flush")
    vm.guest_io("z", "write -z 0 1M")  # (undone by the kill: the data comes back)
    vm.guest_io("z", "discard 2M 1M")  # (freed clusters whose holes the file keeps punched)
    vm.write("z", 6 * M, 64 * K, pattern=9)
    _open(vm, "f")
    vm.write("f", 0, 3 * M, pattern=10)
    vm.guest_io("f", "flush")  # (nothing lost)
    _open(vm, "src")
    vm.write("src", 0, 8 * M, pattern=11)
    vm.guest_io("src", "flush")
    vm.qmp("block-dirty-bitmap-add", {"node": "src", "name": "b0", "persistent": True})
    vm.write("src", M, 64 * K, pattern=12)
    _open(vm, "t")
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "src", "target": "t", "sync": "full", "speed": 2 * M,
                               "x-perf": {"max-workers": 1}})
    vm.run(until=vm.now + 1.25)  # (chunks of 1 MiB at 0, 0.5 and 1 s, in QEMU's time and bitlab's)
    vm.qmp("job-pause", {"id": "j"})
    wait_job(vm, {"id": "j", "status": "paused"})  # (no copy in flight at the kill: QEMU's own timing aside)
    out.append(vm.qmp("query-jobs")[0]["current-progress"])
    out.append([_img(vm, "check", "-U", f"{name}.qcow2") for name in ("a", "z", "f", "t")])
    vm = vm.restart(clean=False)
    out += _looks(vm, ("a", "z", "f", "src", "t"))
    out.append(_img(vm, "info", "--output=json", "src.qcow2"))
    _open(vm, "a")
    vm.write("a", 4 * M, M, pattern=13)
    out.append(vm.qmp("query-named-block-nodes")[0]["image"]["actual-size"])
    vm.qmp("blockdev-del", {"node-name": "a"})
    out += [_img(vm, "check", "-r", "leaks", "--output=json", "a.qcow2"), _img(vm, "check", "-r", "all", "t.qcow2"),
            _img(vm, "check", "-q", "-r", "leaks", "z.qcow2"), *_looks(vm, ("a", "z", "t"))]
    return out


def test_the_file_keeps_what_the_caches_wrote_back():
    out = crash(Machine())
    before, after = out[1], out[2:]
    assert after[0] == before[0]  # a.qcow2 as qemu-img -U saw it before the kill: 16 clusters leaked
    assert after[0][0:2] == ("exit", 3) and after[0][3].count("Leaked cluster") == 16
    assert '"offset": 3538944' in after[1] and "1073741824" not in after[1]  # (the last write's table: lost)
    assert after[6] == "No errors were found on the image.\n48/128 = 37.50% allocated, 0.00% fragmented, " \
                       "0.00% compressed clusters\nImage end offset: 3473408\n"  # f: flushed, nothing lost
    repaired = out[-12]
    assert '"leaks-fixed": 16' in repaired and '"leaks"' not in repaired
    assert "disk size: 6.38 MiB" in out[-7]  # (the repair's discards punched the leaked clusters' 1 MiB)
    assert out[-2] == ('[{ "start": 0, "length": 8388608, "depth": 0, "present": false, "zero": true, "data": false}]'
                       "\n")  # the backup's target: none of its tables written back before the kill


def test_crash_episodes_from_seed_29000():
    def kills(seed: int) -> int:
        return sum(any("kill" in step for step in random_scenario(seed, index)["steps"]) for index in range(60))
    assert kills(28001) == 0  # (older seeds keep their scenarios)
    assert 3 <= kills(29201) <= 20
    scenarios = (random_scenario(29201, index)["steps"] for index in range(60))
    steps = next(steps for steps in scenarios if any("kill" in step for step in steps))
    after = steps[[i for i, step in enumerate(steps) if "kill" in step][0] + 1:]
    assert after[0] == {"qemu-img": ["check", "d0.qcow2"]} and after[-1]["qemu-img"][0] == "check"


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_matches_qemu(daemon):
    want, got = on_both(crash, daemon)
    # an actual-size: QEMU's may have an extent-tree block more (the host placed the file in more pieces, run to run),
    # in info's text too (``disk size``, rounded to 0.01 MiB: two blocks may show)
    want = [g if isinstance(w, int) and isinstance(g, int) and w == g + 4096 or _one_tree_block_more(w, g) else w
            for w, g in zip(want, got)]
    assert got == want


def _one_tree_block_more(real: object, sim: object) -> bool:
    """``qemu-img info`` texts equal but for a ``disk size`` at most 8 KiB larger on QEMU (see test_matches_qemu)."""
    if not isinstance(real, str) or not isinstance(sim, str):
        return False
    sizes = [re.search(r"disk size: ([0-9.]+) MiB\n", text) for text in (real, sim)]
    if None in sizes:
        return False
    extra = (float(sizes[0].group(1)) - float(sizes[1].group(1))) * M
    return 0 < extra <= 8 * K + M / 200 and real.replace(sizes[0].group(0), "") == sim.replace(sizes[1].group(0), "")
