"""What qemu-img 7.2 opens, seen from outside: every qcow2 image it opens (each time, backing files too) warns if it
is a v2 image whose bitmaps a downgrade kept (qcow2_read_extensions), and a backing file missing anywhere below the
images it opens with their chain fails the command, named after one "Could not open backing file: " per level.

Each case builds its images, runs one qemu-img command, then ``info --backing-chain -U`` of the top (what the
command left: a read-write open drops a v2 image's bitmaps), on real qemu-img in a temporary directory and on
bitlab; exit status, stdout (disk size masked) and stderr (QEMU's automatic node numbers masked) must be equal.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile

import pytest

from bitlab import Machine, QemuImgError
from bitlab.block.store import V2_BITMAPS_WARNING
from bitlab.errors import QMPError

DISK = re.compile(r"disk size: .*|\"actual-size\": \d+")
AUTO = re.compile(r"#block\d+")
WARNED = f"qemu-img: {V2_BITMAPS_WARNING}"

SETUPS = {  # "rm NAME" removes a file
    "v2": ["create -q -f qcow2 base.qcow2 4M", "bitmap --add base.qcow2 b0",
           "create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M", "bitmap --add top.qcow2 t0",
           "create -q -f qcow2 plain.qcow2 4M", "amend -o compat=0.10 base.qcow2", "amend -o compat=0.10 top.qcow2"],
    "gone": ["create -q -f qcow2 base.qcow2 4M", "create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M",
             "create -q -f qcow2 plain.qcow2 4M", "create -q -f qcow2 -b top.qcow2 -F qcow2 high.qcow2 4M",
             "rm base.qcow2"],
    "loop": ["create -q -f qcow2 base.qcow2 4M", "create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M",
             "create -q -f qcow2 plain.qcow2 4M", "create -q -f qcow2 -b top.qcow2 -F qcow2 high.qcow2 4M",
             "rebase -u -b high.qcow2 -F qcow2 base.qcow2"],  # top -> base -> high -> top
    "self": ["create -q -f qcow2 base.qcow2 4M", "create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M",
             "create -q -f qcow2 plain.qcow2 4M", "create -q -f qcow2 -b top.qcow2 -F qcow2 high.qcow2 4M",
             "rebase -u -b top.qcow2 -F qcow2 top.qcow2"],  # high -> top -> top
    "not-qcow2": ["create -q -f qcow2 base.qcow2 4M", "create -q -f raw t.img 512",
                  "create -q -f qcow2 -u -b t.img -F qcow2 top.qcow2 4M", "create -q -f qcow2 plain.qcow2 4M",
                  "create -q -f qcow2 -b top.qcow2 -F qcow2 high.qcow2 4M"],  # (fails: top's base is no qcow2)
    "sub": ["mkdir sub/deep", "create -q -f qcow2 base.qcow2 4M",
            "create -q -f qcow2 -b ../base.qcow2 -F qcow2 sub/top.qcow2 4M",
            "create -q -f qcow2 -b ../top.qcow2 -F qcow2 sub/deep/high.qcow2 4M", "create -q -f qcow2 plain.qcow2 4M",
            "rm base.qcow2"],
    "sub-loop": ["mkdir sub", "create -q -f qcow2 base.qcow2 4M",
                 "create -q -f qcow2 -b ../base.qcow2 -F qcow2 sub/top.qcow2 4M", "create -q -f qcow2 plain.qcow2 4M",
                 "rebase -u -b sub/top.qcow2 -F qcow2 base.qcow2"],  # its names grow: sub/../sub/../base.qcow2, ...
    "raw": ["create -q -f qcow2 base.qcow2 4M", "create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M",
            "create -q -f qcow2 plain.qcow2 4M", "create -q -f qcow2 -b top.qcow2 -F qcow2 high.qcow2 4M",
            "rebase -u -b base.qcow2 -F raw top.qcow2"],  # a qcow2 base named as raw: its bytes are the disk
}
SUB_COMMANDS = [  # (for the set-ups in a directory)
    "info --backing-chain sub/top.qcow2", "info --backing-chain sub/deep/high.qcow2", "check sub/top.qcow2",
    "check sub/deep/high.qcow2", "map sub/deep/high.qcow2", "compare sub/top.qcow2 plain.qcow2",
    "convert -O qcow2 sub/deep/high.qcow2 o.qcow2", "commit sub/deep/high.qcow2", "commit sub/top.qcow2",
    "rebase -b plain.qcow2 -F qcow2 sub/top.qcow2", "rebase -b ../plain.qcow2 -F qcow2 sub/top.qcow2",
    "rebase -u -b ../plain.qcow2 -F qcow2 sub/top.qcow2", "resize sub/top.qcow2 8M",
    "amend -o compat=0.10 sub/deep/high.qcow2", "create -q -f qcow2 -b sub/top.qcow2 -F qcow2 n.qcow2",
    "create -q -f qcow2 -b sub/deep/high.qcow2 -F qcow2 n.qcow2",
    "create -q -f qcow2 -b top.qcow2 -F qcow2 sub/n.qcow2",
    "info --backing-chain base.qcow2", "map base.qcow2", "check base.qcow2", "measure base.qcow2",
    "create -q -f qcow2 -b base.qcow2 -F qcow2 n.qcow2",
]
HANGS = {  # what qemu-img 7.2 never returns from (measured: it opens the loop again and again, its memory growing)
    "loop": {"check base.qcow2", "check top.qcow2", "check -U top.qcow2", "check --output=json base.qcow2",
             "check high.qcow2",
             "compare base.qcow2 base.qcow2", "compare top.qcow2 base.qcow2", "compare -U top.qcow2 top.qcow2",
             "compare -s top.qcow2 plain.qcow2", "compare -f qcow2 -F qcow2 plain.qcow2 top.qcow2", "map top.qcow2",
             "map --output=json base.qcow2", "map high.qcow2", "measure top.qcow2", "measure -O qcow2 base.qcow2",
             "convert -O qcow2 top.qcow2 out.qcow2", "convert -O raw base.qcow2 out.raw",
             "convert -O qcow2 -B base.qcow2 -F qcow2 top.qcow2 out2.qcow2",
             "convert --bitmaps -O qcow2 base.qcow2 out3.qcow2",
             "convert --bitmaps --skip-broken-bitmaps -O qcow2 base.qcow2 out3.qcow2",
             "rebase -b base.qcow2 -F qcow2 plain.qcow2", "rebase -b top.qcow2 -F qcow2 plain.qcow2",
             "create -q -f qcow2 -b top.qcow2 -F qcow2 new.qcow2",
             "create -q -f qcow2 -b top.qcow2 -F qcow2 new.qcow2 4M",
             "create -f qcow2 -b base.qcow2 -F qcow2 new2.qcow2",
             "create -q -f qcow2 -b high.qcow2 -F qcow2 new.qcow2"},
    "self": {"check top.qcow2", "check -U top.qcow2", "check high.qcow2", "compare top.qcow2 base.qcow2",
             "compare -U top.qcow2 top.qcow2", "compare -s top.qcow2 plain.qcow2",
             "compare -f qcow2 -F qcow2 plain.qcow2 top.qcow2", "map top.qcow2", "map high.qcow2",
             "measure top.qcow2", "convert -O qcow2 top.qcow2 out.qcow2",
             "convert -O qcow2 -B base.qcow2 -F qcow2 top.qcow2 out2.qcow2", "commit high.qcow2",
             "rebase -b top.qcow2 -F qcow2 plain.qcow2", "rebase -b plain.qcow2 -F qcow2 high.qcow2",
             "resize -f qcow2 high.qcow2 8M", "amend -o compat=0.10 high.qcow2",
             "create -q -f qcow2 -b top.qcow2 -F qcow2 new.qcow2",
             "create -q -f qcow2 -b top.qcow2 -F qcow2 new.qcow2 4M",
             "create -q -f qcow2 -b high.qcow2 -F qcow2 new.qcow2"},
}
LOOPS = "bitlab does not simulate a backing chain that loops"
REFUSED = {"raw": "bitlab does not simulate reading the qcow2 file 'base.qcow2' as raw"}
"""What bitlab refuses in a set-up (it keeps no bytes of a qcow2 file to read it as raw; QEMU reads them)."""
COMMANDS = [
    "create -q -f qcow2 -b t.img -F qcow2 new.qcow2 4M",
    "info base.qcow2", "info -U top.qcow2", "info --output=json top.qcow2", "info --backing-chain top.qcow2",
    "info --backing-chain -f qcow2 top.qcow2", "info --backing-chain high.qcow2", "info -f raw top.qcow2",
    "check base.qcow2", "check top.qcow2", "check -U top.qcow2", "check -r leaks top.qcow2", "check -r all base.qcow2",
    "check --output=json base.qcow2", "check -f raw top.qcow2", "check high.qcow2",
    "compare base.qcow2 base.qcow2", "compare top.qcow2 base.qcow2", "compare -U top.qcow2 top.qcow2",
    "compare -s top.qcow2 plain.qcow2", "compare -f qcow2 -F qcow2 plain.qcow2 top.qcow2",
    "map top.qcow2", "map --output=json base.qcow2", "map high.qcow2", "measure top.qcow2",
    "measure -O qcow2 base.qcow2",
    "convert -O qcow2 top.qcow2 out.qcow2", "convert -O raw base.qcow2 out.raw",
    "convert -O qcow2 -B base.qcow2 -F qcow2 top.qcow2 out2.qcow2", "convert --bitmaps -O qcow2 base.qcow2 out3.qcow2",
    "convert --bitmaps --skip-broken-bitmaps -O qcow2 base.qcow2 out3.qcow2",
    "commit top.qcow2", "commit -d top.qcow2", "commit -b base.qcow2 top.qcow2", "commit high.qcow2",
    "rebase -b base.qcow2 -F qcow2 top.qcow2", "rebase -u -b base.qcow2 -F qcow2 top.qcow2",
    "rebase -b plain.qcow2 -F qcow2 top.qcow2", "rebase -b '' top.qcow2", "rebase -u -b '' top.qcow2",
    "rebase -b base.qcow2 -F qcow2 plain.qcow2", "rebase -b top.qcow2 -F qcow2 plain.qcow2",
    "rebase -b plain.qcow2 -F qcow2 high.qcow2", "rebase -u -b plain.qcow2 -F qcow2 high.qcow2",
    "resize top.qcow2 8M", "resize base.qcow2 8M", "resize --shrink top.qcow2 2M", "resize -f qcow2 high.qcow2 8M",
    "amend -o compat=1.1 base.qcow2", "amend -o compat=1.1 top.qcow2", "amend -o compat=0.10 top.qcow2",
    "amend -o compat=0.10 high.qcow2",
    "bitmap --add base.qcow2 x", "bitmap --add top.qcow2 x", "bitmap --remove top.qcow2 t0",
    "bitmap --merge b0 -b base.qcow2 -F qcow2 plain.qcow2 x",
    "bitmap --add plain.qcow2 p --merge b0 -b base.qcow2 -F qcow2",
    "bitmap --add plain.qcow2 p --merge b0 -b top.qcow2 -F qcow2",
    "create -q -f qcow2 -b top.qcow2 -F qcow2 new.qcow2", "create -q -f qcow2 -b top.qcow2 -F qcow2 new.qcow2 4M",
    "create -f qcow2 -b base.qcow2 -F qcow2 new2.qcow2", "create -q -f qcow2 -u -b top.qcow2 -F qcow2 new.qcow2 4M",
    "create -q -f qcow2 -b high.qcow2 -F qcow2 new.qcow2",
]
AFTER = "info --backing-chain -U top.qcow2"


def _masked(out: tuple[int, str, str]) -> tuple[int, str, str]:
    return out[0], DISK.sub("DISK", out[1]), AUTO.sub("#block", out[2])


def _sim(vm: Machine, line: str) -> tuple[int, str, str]:
    try:
        out = vm.qemu_img(*shlex.split(line))
        return 0, str(out), out.stderr
    except QemuImgError as err:
        return err.returncode, err.stdout, err.stderr


def _real(cwd: str, line: str, timeout: float = 60) -> tuple[int, str, str]:
    out = subprocess.run(["qemu-img", *shlex.split(line)], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout, out.stderr


def sim_case(setup: str, command: str) -> list[tuple[int, str, str]]:
    """Every step's outcome on bitlab (the setup's, the command's, then :data:`AFTER`'s)."""
    vm, out = Machine(), []
    for line in SETUPS[setup]:
        if line.startswith("rm "):
            vm.images.remove(line[3:])
        elif not line.startswith("mkdir "):  # (bitlab's work directory has every directory)
            out.append(_masked(_sim(vm, line)))
    return out + [_masked(_sim(vm, line)) for line in (command, AFTER)]


class RealCases:
    """:func:`sim_case` on real qemu-img: each set-up made once, copied for every command."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bitlab-opens-")
        self._made: dict[str, list[tuple[int, str, str]]] = {}

    def close(self) -> None:
        self._dir.cleanup()

    def setup(self, setup: str) -> tuple[str, list[tuple[int, str, str]]]:
        """The set-up's directory and its steps' outcomes."""
        where = os.path.join(self._dir.name, setup)
        if setup not in self._made:
            os.mkdir(where)
            out = []
            for line in SETUPS[setup]:
                if line.startswith("rm "):
                    os.remove(os.path.join(where, line[3:]))
                elif line.startswith("mkdir "):
                    os.makedirs(os.path.join(where, line[6:]))
                else:
                    out.append(_masked(_real(where, line)))
            self._made[setup] = out
        return where, self._made[setup]

    def case(self, setup: str, command: str, timeout: float = 60) -> list[tuple[int, str, str]]:
        where, out = self.setup(setup)
        cwd = os.path.join(self._dir.name, "case")
        shutil.rmtree(cwd, ignore_errors=True)
        shutil.copytree(where, cwd)
        return out + [_masked(_real(cwd, line, timeout)) for line in (command, AFTER)]


@pytest.fixture(scope="module")
def real_cases():
    cases = RealCases()
    yield cases
    cases.close()


def _stderr(setup: str, command: str) -> str:
    return sim_case(setup, command)[-2][2]


def test_each_open_of_a_v2_image_with_bitmaps_warns():
    """Both opens of ``compare a a``, each image ``info --backing-chain`` opens, the backing files ``create -b``
    opens with their chain; ``rebase -u`` opens the image alone, a safe rebase onto a file of its chain reuses it
    (bdrv_find_backing_image), a read-write open drops the extension (the later opens do not warn)."""
    assert _stderr("v2", "compare base.qcow2 base.qcow2") == 2 * WARNED
    assert _stderr("v2", "compare top.qcow2 base.qcow2") == 3 * WARNED  # (top, its backing file, base)
    assert _stderr("v2", "info --backing-chain top.qcow2") == 2 * WARNED
    assert _stderr("v2", "info -U top.qcow2") == WARNED
    assert _stderr("v2", "info -f raw top.qcow2") == ""
    assert _stderr("v2", "check -U top.qcow2").startswith(2 * WARNED)
    assert _stderr("v2", "create -q -f qcow2 -b top.qcow2 -F qcow2 new.qcow2") == 2 * WARNED
    assert _stderr("v2", "create -q -f qcow2 -u -b top.qcow2 -F qcow2 new.qcow2 4M") == ""
    assert _stderr("v2", "rebase -u -b base.qcow2 -F qcow2 top.qcow2") == WARNED
    assert _stderr("v2", "rebase -b base.qcow2 -F qcow2 top.qcow2") == 2 * WARNED
    assert _stderr("v2", "amend -o compat=1.1 top.qcow2") == 2 * WARNED
    assert sim_case("v2", "amend -o compat=1.1 top.qcow2")[-1][2] == WARNED  # (base's, which stayed v2)


def test_a_missing_backing_file_fails_what_opens_the_chain():
    """``check`` opens the backing chain (img_check: no BDRV_O_NO_BACKING), so a lost base fails it; a file lost
    two levels down is named after two "Could not open backing file: "."""
    gone = "Could not open 'base.qcow2': No such file or directory\n"
    assert sim_case("gone", "check top.qcow2")[-2] == (
        1, "", "qemu-img: Could not open 'top.qcow2': Could not open backing file: " + gone)
    for command in ("map high.qcow2", "check high.qcow2", "commit high.qcow2", "amend -o compat=0.10 high.qcow2"):
        assert sim_case("gone", command)[-2] == (
            1, "", "qemu-img: Could not open 'high.qcow2': " + 2 * "Could not open backing file: " + gone), command
    assert sim_case("gone", "check -f raw top.qcow2")[-2][2] == "qemu-img: This image format does not support checks\n"
    assert sim_case("gone", "info high.qcow2")[-2][0] == 0


def test_a_backing_file_of_another_format_than_named():
    """qcow2_open's magic check: the backing file (or one further down) is named qcow2 but is not."""
    assert sim_case("not-qcow2", "check top.qcow2")[-2] == (
        1, "", "qemu-img: Could not open 'top.qcow2': Could not open backing file: Image is not in qcow2 format\n")
    assert sim_case("not-qcow2", "info top.qcow2")[-2][0] == 0
    assert sim_case("not-qcow2", "create -q -f qcow2 -b t.img -F qcow2 new.qcow2 4M")[-2] == (
        1, "", "qemu-img: new.qcow2: Image is not in qcow2 format\nCould not open backing image.\n")
    assert sim_case("not-qcow2", "create -q -f qcow2 -b top.qcow2 -F qcow2 new.qcow2")[-2] == (
        1, "", "qemu-img: new.qcow2: Could not open backing file: Image is not in qcow2 format\n"
               "Could not open backing image.\n")


def test_a_loop_through_a_directory_ends_with_a_name_too_long():
    """Joined to the directory of the image that names it, each backing file name grows (``sub/../sub/../…``):
    QEMU opens the chain until the name is too long for the kernel (4096 bytes), 1168 levels down here."""
    status, _, stderr = sim_case("sub-loop", "map base.qcow2")[-2]
    deepest = "sub/../" * 584 + "base.qcow2"
    assert len(deepest.encode()) == 4098
    assert (status, stderr) == (1, "qemu-img: Could not open 'base.qcow2': " + 1168 * "Could not open backing file: "
                                + f"Could not open '{deepest}': File name too long\n")
    assert sim_case("sub-loop", "info --backing-chain base.qcow2")[-2] == (
        1, "", f"qemu-img: Could not open '{deepest}': Could not open '{deepest}': File name too long\n")
    assert sim_case("sub-loop", "commit sub/top.qcow2")[-2] == (  # (opened to write: its lock stops it at once)
        1, "", "qemu-img: Could not open 'sub/top.qcow2': " + 2 * "Could not open backing file: "
               + 'Failed to get shared "write" lock\nIs another process using the image [sub/../sub/top.qcow2]?\n')


def test_a_backing_chain_that_loops():
    """QEMU 7.2 opens such a chain again and again and never returns (below); bitlab refuses it with a clear error,
    except where QEMU finds it: ``info --backing-chain`` (its own check), and an image opened to write met again
    below itself (the file lock: ``check -r``, ``commit``, ``rebase``, ``resize``, ``amend``)."""
    for setup, commands in HANGS.items():
        for command in commands:
            status, _, stderr = sim_case(setup, command)[-2]
            assert status in (1, 2) and LOOPS in stderr, (setup, command, stderr)
    assert sim_case("loop", "info --backing-chain top.qcow2")[-2] == (
        1, "", "qemu-img: Backing file 'top.qcow2' creates an infinite loop.\n")
    assert sim_case("loop", "commit top.qcow2")[-2] == (
        1, "", "qemu-img: Could not open 'top.qcow2': " + 3 * "Could not open backing file: "
        + 'Failed to get shared "write" lock\nIs another process using the image [top.qcow2]?\n')
    vm = Machine()
    for line in SETUPS["self"]:
        _sim(vm, line)
    with pytest.raises(QMPError, match=LOOPS):  # (read-only: no lock stops it)
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "read-only": True,
                                "file": {"driver": "file", "filename": "high.qcow2"}})


@pytest.mark.qemu
def test_qemu_img_does_not_return_from_a_loop(real_cases):
    where, _ = real_cases.setup("self")
    with pytest.raises(subprocess.TimeoutExpired):
        _real(where, "map high.qcow2", timeout=2)


@pytest.mark.qemu
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_matches_qemu_img(setup, real_cases):
    differences = []
    commands = [command for command in (SUB_COMMANDS if setup.startswith("sub") else COMMANDS)
                if command not in HANGS.get(setup, ())]
    if setup == "sub-loop":  # (each opens the 1168 levels on QEMU: a few of them)
        commands = [c for c in commands if c.endswith(" base.qcow2") or c.startswith(("commit", "compare"))]
    for command in commands:
        real, sim = real_cases.case(setup, command), sim_case(setup, command)
        refused = REFUSED.get(setup)
        if refused and real[:-2] == sim[:-2] and any(refused in out[2] for out in sim[-2:]):
            continue  # (what bitlab does not simulate, said so)
        if real != sim:
            differences.append(f"{setup}: {command}\n  real: {real[-2:]!r}\n  sim:  {sim[-2:]!r}")
    assert not differences, f"{len(differences)} of {len(commands)} differ; first:\n" + "\n".join(differences[:3])
