"""Restores into a running disk, differentially: seeded random backup images (qcow2 of four cluster sizes, or raw;
data, zero writes, qcow2 clusters of written zeroes) written with ``qemu-img convert -n`` (``-S`` now and then) into a
writable NBD export of a random disk (qcow2 or raw, with data, a bitmap, often a write threshold), on the simulator
and on real QEMU 7.2: bitmaps, threshold events, the maps over NBD and of the file, compare; also into the disk's
qcow2 file while nothing has it open, and of sizes of no whole number of 4 KiB blocks with any ``-S``."""

from __future__ import annotations

import random

import pytest

from bitlab.conformance.runner import compare, play
from tests.conformance.test_nbd_client import SERVER, SOCK, _img, _q, _write

K, M = 1 << 10, 1 << 20


def restore_scenario(seed: int, big: bool = False, odd: bool = False, into_file: bool = False) -> dict:
    """A restore; ``big``: of 64 MiB (many L2 tables of a small-cluster target) with more writes on both sides;
    ``odd``: of a size that is no whole number of 4 KiB blocks, with an ``-S`` of any number of sectors;
    ``into_file``: into the disk's qcow2 file while no QEMU has it open (``convert -n -O qcow2``), its bitmap a
    persistent one, looked at when the disk is opened again."""
    rng = random.Random(seed)
    size = rng.choice([2 * M, 4 * M, 3 * M + 4 * K]) * (16 if big else 1) + (512 * rng.randrange(1, 8) if odd else 0)
    src_raw = rng.random() < 0.25
    fmt = "raw" if src_raw else "qcow2"
    opts = [] if src_raw else ["-o", f"cluster_size={rng.choice([512, 4 * K, 64 * K, M])}"]
    steps = [_img("create", "-f", fmt, *opts, "src.img", str(size)),
             _q("blockdev-add", {"driver": fmt, "node-name": "src", "file": {"driver": "file", "filename": "src.img"}})]
    for _ in range(rng.randint(0, 8) * (6 if big else 1)):
        off = rng.randrange(0, size // 512) * 512
        length = min(rng.choice([512, K, 3584, 4 * K, 8 * K, 60 * K, 64 * K, 200 * K, M]), size - off)
        kind = rng.random()
        if kind < 0.2:
            steps.append({"zero": {"node": "src", "offset": off, "length": length}})
        else:
            steps.append(_write("src", off, length, 0 if kind < 0.3 else rng.randrange(1, 256)))
    steps.append(_q("blockdev-del", {"node-name": "src"}))
    target = rng.choice(["qcow2", "qcow2", "raw"])
    if into_file:
        target = "qcow2"
    tsize = size + rng.choice([0, 0, 512 * K])
    topts = ["-o", f"cluster_size={rng.choice([4 * K, 64 * K, M])}"] if target == "qcow2" else []
    steps += [_img("create", "-f", target, *topts, "d.img", str(tsize)),
              _q("blockdev-add", {"driver": target, "node-name": "d", "file": {"driver": "file", "filename": "d.img"}})]
    for _ in range(rng.randint(0, 3) * (10 if big else 1)):
        off = rng.randrange(0, tsize // 512) * 512
        steps.append(_write("d", off, min(rng.choice([4 * K, 64 * K, 300 * K]), tsize - off), rng.randrange(1, 256)))
    granularity = rng.choice([512, 4 * K, 64 * K])
    steps.append(_q("block-dirty-bitmap-add", {"node": "d", "name": "b", "granularity": granularity,
                                               **({"persistent": True} if into_file else {})}))
    if rng.random() < 0.7 and not into_file:
        steps.append(_q("block-set-write-threshold", {"node-name": "d", "write-threshold": rng.randrange(1, tsize)}))
    sparse = ["-S", str(rng.choice([512, 4 * K, 8 * K, 64 * K]))] if rng.random() < 0.3 else []
    if odd:
        sparse = ["-S", str(512 * rng.choice([1, 3, 5, 6, 8, 96, 128]))]
    if into_file:
        return {"name": f"restore-file-{seed}", "steps": steps + [
            _q("blockdev-del", {"node-name": "d"}), _img("convert", "-n", "-O", "qcow2", *sparse, "src.img", "d.img"),
            _img("map", "--output=json", "d.img"), _img("info", "d.img"), _img("check", "d.img"),
            _img("compare", "src.img", "d.img"),
            _q("blockdev-add", {"driver": "qcow2", "node-name": "d", "file": {"driver": "file", "filename": "d.img"}}),
            _q("query-named-block-nodes", {"flat": True}),
            _q("x-debug-block-dirty-bitmap-sha256", {"node": "d", "name": "b"})]}
    steps += [SERVER, _q("block-export-add", {"type": "nbd", "id": "d", "node-name": "d", "writable": True}),
              _img("convert", "-n", "-O", "raw", *sparse, "src.img", SOCK.format("d")),
              _q("query-named-block-nodes", {"flat": True}), _img("map", "--output=json", SOCK.format("d")),
              _q("block-export-del", {"id": "d"}), _q("blockdev-del", {"node-name": "d"}),
              _img("map", "--output=json", "d.img"), _img("compare", "src.img", "d.img")]
    return {"name": f"restore-{seed}", "steps": steps}


def test_the_restores_write_what_they_convert():
    outs = [play(restore_scenario(seed), "sim") for seed in range(2410, 2420)]
    assert all(out.error is None for out in outs)
    compares = [r["stdout"] for out, sc in zip(outs, (restore_scenario(s) for s in range(2410, 2420)))
                for step, r in zip(sc["steps"], out.replies) if step.get("qemu-img", [""])[0] == "compare"]
    assert compares and all(text.startswith("Images are identical.") or "Image size mismatch" in text
                            for text in compares)


CASES = ([(seed, {}) for seed in range(2410, 2430)] + [(seed, {"into_file": True}) for seed in range(2450, 2465)]
         + [(seed, {"odd": True}) for seed in range(2470, 2480)])


@pytest.mark.qemu
@pytest.mark.parametrize("seed,kind", CASES, ids=lambda case: str(case) if isinstance(case, int) else
                         "-".join(case) or "export")
def test_restores_as_in_qemu(seed, kind):
    """Into an export, into a qcow2 file, of odd sizes."""
    scenario = restore_scenario(seed, **kind)
    real, sim = play(scenario, "qemu", "qsd"), play(scenario, "sim")
    assert [d.render() for d in compare(scenario, real, sim)] == []
