"""Backing chains built on real files (qemu-img, qemu-io) and in bitlab, compared command by command.

Every step runs on both: real ``qemu-img create`` / ``qemu-io -c "write -P ..."`` in a temporary
directory, and ``vm.qemu_img`` / HMP ``qemu-io`` on a node opened over the simulated file. Then
``qemu-img`` ``map`` (JSON and human), ``compare`` (plain and ``-s``), ``info --backing-chain``,
``rebase`` (safe and ``-u``), ``commit`` (``-d``, ``-b``) and ``convert`` (flat, or the top alone over a file
below it: ``-B``) must print the same text and exit with
the same status, host offsets of ``map`` and fragmentation and end offset of ``check`` included. Two
things are masked: ``disk size`` / ``actual-size`` (what the host file system allocates), and the host
layout of a ``commit`` base (``offset``, ``check``'s figures, ``compare -s``): qemu-img commit's mirror
job copies in parallel and its clusters land in an order that varies from run to run in QEMU itself.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import tempfile

import pytest

from bitlab import Machine, QemuImgError

pytestmark = pytest.mark.qemu
MiB = 1 << 20
DISK_SIZE = re.compile(r"disk size: .*|\"actual-size\": \d+")
FRAGMENTED = re.compile(r"\d+\.\d\d% fragmented|Image end offset: \d+")


class RealFiles:
    """Real qemu-img and qemu-io on files in a temporary directory."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bitlab-qemuimg-")
        self.cwd = self._dir.name

    def close(self) -> None:
        self._dir.cleanup()

    def qemu_img(self, *args: str) -> tuple[int, str, str]:
        out = subprocess.run(["qemu-img", *args], cwd=self.cwd, capture_output=True, text=True, timeout=60)
        return out.returncode, out.stdout, out.stderr

    def qemu_io(self, filename: str, commands: list[str]) -> None:
        argv = ["qemu-io", "-f", "qcow2"]
        for command in commands:
            argv += ["-c", command]
        subprocess.run([*argv, filename], cwd=self.cwd, capture_output=True, text=True, timeout=60, check=True)


class SimFiles:
    """The same on bitlab: qemu-io through HMP on a node opened over the file, then closed."""

    def __init__(self) -> None:
        self.vm = Machine()
        self._nodes = 0

    def close(self) -> None:
        pass

    def qemu_img(self, *args: str) -> tuple[int, str, str]:
        try:
            return 0, self.vm.qemu_img(*args), ""
        except QemuImgError as err:
            return err.returncode, err.stdout, err.stderr

    def qemu_io(self, filename: str, commands: list[str]) -> None:
        self._nodes += 1
        node = f"io{self._nodes}"
        self.vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": node, "discard": "unmap",  # as qemu-io opens
                                     "file": {"driver": "file", "filename": filename}})
        for command in commands:
            self.vm.qmp("human-monitor-command", {"command-line": f'qemu-io {node} "{command}"'})
        self.vm.qmp("blockdev-del", {"node-name": node})


def _merge_json(entries: list[dict]) -> list[dict]:
    out: list[dict] = []
    for e in entries:
        prev = out[-1] if out else None
        if (prev is not None and all(prev[k] == e[k] for k in ("depth", "present", "zero", "data"))
                and "offset" not in prev and "offset" not in e and prev["start"] + prev["length"] == e["start"]):
            prev["length"] += e["length"]
        else:
            out.append(dict(e))
    return out


def mask_map(text: str, args: tuple[str, ...], chain_files: list[str], unordered: set[str]) -> str:
    """Drop the host ``offset`` of layers whose clusters were allocated in no fixed order (and merge
    what that makes mergeable), in either output format."""
    hidden = {i for i, name in enumerate(chain_files) if name in unordered}
    if not hidden or not text:
        return text
    if "--output=json" in args:
        entries = json.loads(text)
        for e in entries:
            if e["depth"] in hidden:
                e.pop("offset", None)
        return json.dumps(_merge_json(entries))
    lines = text.splitlines()
    rows: list[list] = []
    for line in lines[1:]:
        start, length, mapped, name = line.split(None, 3)
        if name in unordered:
            mapped = "HOST"
        if rows and rows[-1][3] == name and mapped == "HOST" == rows[-1][2] and \
                int(rows[-1][0], 16) + int(rows[-1][1], 16) == int(start, 16):
            rows[-1][1] = hex(int(rows[-1][1], 16) + int(length, 16))
            continue
        rows.append([start, length, mapped, name])
    return "\n".join([lines[0]] + [" ".join(map(str, r)) for r in rows])


class Scenario:
    """Drives both sides step by step and records every qemu-img exchange that differs."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.real, self.sim = RealFiles(), SimFiles()
        self.files: list[str] = []  # the chain, bottom first
        self.sizes: dict[str, int] = {}
        self.units: dict[str, int] = {}
        self.clusters: dict[str, int] = {}
        self.v2: dict[str, bool] = {}
        self.backing: dict[str, str | None] = {}
        self.unordered: set[str] = set()  # images laid out in an order QEMU does not fix (commit bases)
        self.log: list[str] = []
        self.diffs: list[str] = []
        self.masked = 0

    def close(self) -> None:
        self.real.close()
        self.sim.close()

    # -- steps --------------------------------------------------------------------
    def io(self, filename: str, commands: list[str]) -> None:
        self.log.append(f"qemu-io {filename} " + " ".join(f"-c '{c}'" for c in commands))
        self.real.qemu_io(filename, commands)
        self.sim.qemu_io(filename, commands)

    def img(self, *args: str) -> tuple[int, str, str]:
        self.log.append("qemu-img " + " ".join(args))
        real = self.real.qemu_img(*args)
        sim = self.sim.qemu_img(*args)
        if args[0] == "map":
            chain = self.chain_of(args[-1])
            real = (real[0], mask_map(real[1], args, chain, self.unordered), real[2])
            sim = (sim[0], mask_map(sim[1], args, chain, self.unordered), sim[2])
        if args[0] == "compare" and "-s" in args and \
                self.unordered.intersection(self.chain_of(args[-1]) + self.chain_of(args[-2])):
            # strict mode compares block status runs, which end where host offsets stop being
            # contiguous: its verdict depends on the host layout
            self.masked += 1
            return real
        if args[0] == "check" and args[-1] in self.unordered:  # host layout
            real = (real[0], FRAGMENTED.sub("HOST", real[1]), real[2])
            sim = (sim[0], FRAGMENTED.sub("HOST", sim[1]), sim[2])
        real = tuple(DISK_SIZE.sub("DISK", x) if isinstance(x, str) else x for x in real)
        sim = tuple(DISK_SIZE.sub("DISK", x) if isinstance(x, str) else x for x in sim)
        if real != sim:
            self.diffs.append(f"seed {self.seed}: after\n  " + "\n  ".join(self.log)
                              + f"\nreal: {real!r}\nsim:  {sim!r}")
        return real

    def chain_of(self, name: str) -> list[str]:
        chain = [name]
        while self.backing.get(chain[-1]):
            chain.append(self.backing[chain[-1]])
        return chain

    # -- random building blocks ---------------------------------------------------------
    def create(self, size: int, cluster: int = 65536, v2: bool = False) -> str:
        name = f"img{len(self.files)}.qcow2"
        below = self.files[-1] if self.files else None
        opts = ([] if cluster == 65536 else [f"cluster_size={cluster}"]) + (["compat=0.10"] if v2 else [])
        args = ["create", "-q", "-f", "qcow2"] + (["-o", ",".join(opts)] if opts else [])
        self.clusters[name] = cluster
        self.v2[name] = v2
        if below:
            args += ["-b", below, "-F", "qcow2"]
        self.img(*args, name, str(size))
        self.files.append(name)
        self.sizes[name] = size
        self.backing[name] = below
        return name

    def random_ops(self, filename: str, size: int, count: int) -> None:
        rng, commands = self.rng, []
        cluster = self.clusters[filename]
        unit = rng.choice((512, 4096, cluster, cluster))
        self.units[filename] = min(unit, self.units.get(filename, unit))
        for _ in range(count):
            off = rng.randrange(0, size // unit) * unit
            length = min(size - off, unit * rng.choice((1, 1, 2, 3, 16)))
            kind = rng.random()
            if kind < 0.65:
                commands.append(f"write -P {rng.choice((0, 0x11, 0x22, 0x33, 0x44))} {off} {length}")
            elif kind < 0.9:
                commands.append(f"write -z {off} {length}")
            else:
                commands.append(f"discard {off} {length}")
        self.io(filename, commands)

    def queries(self) -> None:
        rng = self.rng
        for name in self.files:
            self.img("map", "--output=json", name)
            self.img("map", name)
        for _ in range(3):
            a, b = rng.choice(self.files), rng.choice(self.files)
            self.img("compare", *(["-s"] if rng.random() < 0.3 else []), a, b)
        self.img("info", "--backing-chain", self.files[-1])
        self.img("info", "--output=json", rng.choice(self.files))
        self.img("check", rng.choice(self.files))


def play(seed: int) -> list[str]:
    """One random chain scenario; returns the differences found."""
    sc = Scenario(seed)
    rng = sc.rng
    try:
        size = rng.choice((1, 2, 4)) * MiB
        cluster = rng.choice((65536, 65536, 4096))  # 4 KiB clusters: an L2 table maps 2 MiB
        v2 = rng.random() < 0.15  # qcow2 v2 (compat=0.10): no zero clusters
        for level in range(rng.randint(1, 4)):
            layer_size = size if level == 0 or rng.random() < 0.7 else rng.choice((1, 2, 4, 6)) * MiB
            name = sc.create(layer_size, cluster if rng.random() < 0.8 else rng.choice((4096, 32768, 65536)),
                             v2 and rng.random() < 0.8)
            sc.random_ops(name, layer_size, rng.randint(0, 6))
        top = sc.files[-1]
        if len(sc.files) > 1 and sc.units.get(top, sc.clusters[top]) >= sc.clusters[top] and rng.random() < 0.3:
            # the backing file changes under its overlay: only under whole-cluster writes, as bitlab keeps
            # just the written bytes of a cluster where qcow2 copies the rest from the backing file
            sc.random_ops(sc.files[-2], sc.sizes[sc.files[-2]], 2)
        sc.queries()
        top = sc.files[-1]
        action = rng.choice(("commit", "commit", "rebase", "rebase-u", "none"))
        if action == "commit" and len(sc.files) > 1:
            args = ["commit"]
            base_i = rng.randrange(len(sc.files) - 1)
            if base_i != len(sc.files) - 2 or rng.random() < 0.3:
                args += ["-b", sc.files[base_i]]
            elif rng.random() < 0.3:
                args.append("-d")
            sc.unordered.add(sc.files[base_i])  # the mirror job's parallel copies allocate out of order
            sc.img(*args, top)
        elif action == "rebase":
            below = rng.choice([*sc.files[:-1], ""])
            sc.img("rebase", "-b", below, *(["-F", "qcow2"] if below else []), top)
            if sc.img("info", top)[0] == 0:
                sc.backing[top] = below or None
        elif action == "rebase-u" and len(sc.files) > 2:
            below = sc.files[0]
            sc.img("rebase", "-u", "-b", below, "-F", "qcow2", top)
            sc.backing[top] = below
        sc.queries()
        flat = rng.choice(("flat.qcow2", "flat.raw"))  # flatten what is left, as an operator would
        sc.img("convert", *(["-O", "qcow2"] if flat.endswith("qcow2") else []), top, flat)
        sc.img("compare", top, flat)
        sc.img("map", "--output=json", flat)
        if rng.random() < 0.7:  # the top alone over a file below it (convert -B), as an incremental copy
            below = rng.choice(sc.chain_of(top)[1:] or sc.files)
            opts = rng.choice(([], [], ["-o", "cluster_size=4096"], ["-o", "cluster_size=512"], ["-o", "compat=0.10"],
                               ["-S", "0"], ["-S", "64k"]))
            if sc.img("convert", "-B", below, "-F", "qcow2", *opts, "-O", "qcow2", top, "inc.qcow2")[0] == 0:
                sc.backing["inc.qcow2"] = below
                sc.img("compare", top, "inc.qcow2")
                sc.img("map", "--output=json", "inc.qcow2")
                sc.img("check", "inc.qcow2")
    finally:
        sc.close()
    return sc.diffs


def _fixed(steps) -> list[str]:
    sc = Scenario(0)
    try:
        steps(sc)
    finally:
        sc.close()
    return sc.diffs


def test_commit_rebase_chain_matches_real_qemu_img():
    def steps(sc: Scenario) -> None:
        sc.create(4 * MiB)
        sc.io("img0.qcow2", ["write -P 1 0 1M"])
        sc.create(4 * MiB)
        sc.io("img1.qcow2", ["write -P 2 512k 1M"])
        sc.create(4 * MiB)
        sc.io("img2.qcow2", ["write -P 3 1M 1M", "write -z 3M 64k", "write -P 4 3276800 4096"])
        sc.queries()
        sc.img("rebase", "-b", "img0.qcow2", "-F", "qcow2", "img2.qcow2")
        sc.backing["img2.qcow2"] = "img0.qcow2"
        sc.queries()
        sc.img("commit", "img2.qcow2")  # into img0, its backing file now
        sc.unordered.add("img0.qcow2")  # the mirror job's parallel copies allocate in no fixed order
        sc.queries()
        sc.img("commit", "img1.qcow2")
        sc.img("commit", "-b", "nope.qcow2", "img2.qcow2")
        sc.img("rebase", "img2.qcow2")
        sc.img("rebase", "-b", "img1.qcow2", "img2.qcow2")
        sc.img("rebase", "-b", "nope.qcow2", "-F", "qcow2", "img2.qcow2")
        sc.img("map", "--output=xml", "img2.qcow2")
        sc.img("compare", "img2.qcow2")
        sc.queries()
    assert _fixed(steps) == []


def test_random_chains_match_real_qemu_img():
    seed = int(os.environ.get("BITLAB_CHAIN_SEED", random.SystemRandom().randrange(1 << 30)))
    count = int(os.environ.get("BITLAB_CHAIN_SCENARIOS", "30"))
    print(f"qemu-img chain scenarios: seed {seed}, {count} scenarios (BITLAB_CHAIN_SEED={seed} replays them)")
    diffs: list[str] = []
    for i in range(count):
        diffs += play(seed + i)
    assert not diffs, f"{len(diffs)} differences; first:\n" + "\n\n".join(diffs[:3])


def _bitmap_sessions(vm: Machine) -> list[str]:
    """Persistent bitmaps over two sessions, with qemu-img info between (in use, then stored)."""
    node = {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "b.qcow2"}}
    vm.qemu_img("create", "-q", "-f", "qcow2", "b.qcow2", "4M")
    vm.qmp("blockdev-add", node)
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "bm0", "persistent": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "bm1", "persistent": True, "granularity": 131072,
                                      "disabled": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "bm2", "persistent": True})
    vm.qmp("blockdev-del", {"node-name": "n"})
    out = [vm.qemu_img("info", "b.qcow2")]
    vm.qmp("blockdev-add", node)
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "bm3", "persistent": True})
    vm.qmp("block-dirty-bitmap-remove", {"node": "n", "name": "bm1"})
    out.append(vm.qemu_img("info", "-U", "--output=json", "b.qcow2"))
    vm.qmp("blockdev-del", {"node-name": "n"})
    out.append(vm.qemu_img("info", "b.qcow2"))
    return [DISK_SIZE.sub("DISK", text) for text in out]


def test_info_bitmaps_match_real_qemu():
    with Machine(backend="qemu") as real:
        want = _bitmap_sessions(real)
    assert _bitmap_sessions(Machine()) == want


OFFSET = re.compile(r', "offset": \d+')


def _merged_map(text: str) -> str:
    """``map --output=json`` without host offsets, neighbours with the same status merged: block-copy's
    parallel tasks allocate the target's clusters in a different order from run to run on real QEMU,
    so whether two data clusters are host-contiguous (one entry or two) varies too."""
    merged: list[dict] = []
    for entry in json.loads(text):
        entry.pop("offset", None)
        last = merged[-1] if merged else None
        if last is not None and {k: v for k, v in last.items() if k not in ("start", "length")} == \
                {k: v for k, v in entry.items() if k not in ("start", "length")}:
            last["length"] += entry["length"]
        else:
            merged.append(entry)
    return json.dumps(merged)


def _restore(vm: Machine) -> list[tuple[int, str, str]]:
    """The operator's restore after a full and an incremental backup: compare the chain with the
    drive's content (a closed full backup of it now), commit the incremental into the full one,
    compare again. Backup targets' host offsets are left out (block-copy allocates in no fixed order)."""
    def img(*args: str) -> tuple[int, str, str]:
        try:
            out = (0, vm.qemu_img(*args), "")
        except QemuImgError as err:
            out = (err.returncode, err.stdout, err.stderr)
        if args[0] == "map" and out[0] == 0:
            return (out[0], _merged_map(out[1]), out[2])
        return (out[0], OFFSET.sub("", out[1]), out[2])

    vm.add_drive("drive0", "4M")
    vm.write("drive0", 0, "64k", 0x41)
    vm.write("drive0", "1M", "128k", 0x42)
    vm.qmp("transaction", {"actions": [
        {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "bitmap0"}},
        {"type": "drive-backup", "data": {"device": "drive0", "target": "d0-full.qcow2", "sync": "full",
                                          "format": "qcow2"}}]})
    vm.run()
    vm.write("drive0", "64k", "64k", 0x43)
    vm.write("drive0", "2M", "4k", 0x44)
    vm.write("drive0", "1M", "64k", 0x45)
    out = [img("create", "-q", "-f", "qcow2", "-b", "d0-full.qcow2", "-F", "qcow2", "d0-incr-1.qcow2")]
    vm.qmp("drive-backup", {"device": "drive0", "target": "d0-incr-1.qcow2", "sync": "incremental",
                            "bitmap": "bitmap0", "mode": "existing", "format": "qcow2"})
    vm.run()
    vm.qmp("drive-backup", {"device": "drive0", "target": "d0-now.qcow2", "sync": "full", "format": "qcow2"})
    vm.run()
    for args in (["compare", "d0-incr-1.qcow2", "d0-now.qcow2"], ["compare", "d0-full.qcow2", "d0-now.qcow2"],
                 ["map", "--output=json", "d0-incr-1.qcow2"], ["info", "--backing-chain", "d0-incr-1.qcow2"],
                 ["commit", "d0-incr-1.qcow2"], ["compare", "d0-full.qcow2", "d0-now.qcow2"],
                 ["map", "--output=json", "d0-full.qcow2"], ["map", "--output=json", "d0-incr-1.qcow2"]):
        out.append(img(*args))
    return [(rc, DISK_SIZE.sub("DISK", stdout), stderr) for rc, stdout, stderr in out]


def test_restore_after_backups_matches_real_qemu():
    with Machine(backend="qemu") as real:
        want = _restore(real)
    got = _restore(Machine())
    assert got == want
    assert got[1] == (0, "Images are identical.\n", "")  # the chain restores the drive
    assert got[2] == (1, "Content mismatch at offset 65536!\n", "")
    assert got[6] == (0, "Images are identical.\n", "")  # after the commit, the full backup alone does


def _commit_dirties_base_bitmaps(vm: Machine) -> list:
    node = {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "base.qcow2"}}
    vm.qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "4M")
    vm.qmp("blockdev-add", node)
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "b0", "persistent": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "b1", "persistent": True, "disabled": True})
    vm.qmp("blockdev-del", {"node-name": "n"})
    vm.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "top.qcow2"}})
    vm.write("t", "64k", "128k", 0x11)
    vm.write_zeroes("t", "1M", "64k")
    vm.write("t", "2M", "512", 0x22)
    vm.qmp("blockdev-del", {"node-name": "t"})
    out: list = [vm.qemu_img("commit", "top.qcow2")]
    vm.qmp("blockdev-add", node)
    info = next(i for i in vm.qmp("query-named-block-nodes", {"flat": True}) if i["node-name"] == "n")
    out.append([(b["name"], b["count"], b["recording"]) for b in info["dirty-bitmaps"]])
    out.append(vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "n", "name": "b0"}))
    return out


def test_commit_dirties_the_base_bitmaps_as_real_qemu():
    with Machine(backend="qemu") as real:
        want = _commit_dirties_base_bitmaps(real)
    got = _commit_dirties_base_bitmaps(Machine())
    assert got == want
    assert got[1][0] == ("b0", 262144, True)
