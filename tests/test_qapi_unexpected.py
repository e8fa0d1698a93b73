"""Which unexpected member QEMU 7.2 names (bitlab/qmp/ghash.py): the first left in GLib's GHashTable.

The texts below were answered by qemu-storage-daemon 7.2; in Python's (the input's) order bitlab named
another member in 71% of 500 random cases with several unexpected members.
"""

from __future__ import annotations

import random

import pytest

from bitlab import Machine
from bitlab.qmp.ghash import GHashSet, first_left, str_hash

from .both import on_both

CASES = [  # (command, arguments, the member QEMU names)
    ("block-dirty-bitmap-add", {"x1": 1, "node": "n", "node2": 1, "name": "b", "driverx": 1, "m49": 1, "bar": 1,
                                "m8": 1, "m12": 1}, "bar"),
    ("block-dirty-bitmap-add", {"name": "b", "m55": 1, "m12": 1, "disabled": False, "m4": 1, "persistent": False,
                                "m38": 1, "m29": 1, "node": "n", "m8": 1}, "m4"),
    ("query-version", {"m55": 1, "kkkkkkk": 1, "m3": 1, "m40": 1, "m23": 1}, "m3"),
    ("query-version", {"m49": 1, "m16": 1, "m44": 1, "m9": 1, "m38": 1, "m4": 1, "foo": 1}, "m38"),
    ("blockdev-add", {"driver": "null-co", "count": 1, "m34": 1, "m51": 1, "node-name": "x", "m21": 1, "m43": 1,
                      "m54": 1}, "m54"),  # a union: base and variant members leave the one table
    ("blockdev-add", {"driver": "raw", "node-name": "y",
                      "file": {"x2": 1, "filename": "a.img", "speed": 1, "driver": "file"}}, "file.speed"),
    ("blockdev-add", {"driver": "raw", "node-name": "y", "file": {"driver": "file", "filename": "a.img", "m20": 1,
                                                                  "bar": 1, "m17": 1, "kkkkkkk": 1, "m14": 1,
                                                                  "m7": 1}}, "file.bar"),
    ("query-version", {f"m{i}": 1 for i in range(30)}, "m3"),  # the table grew twice
    ("query-version", {"b": 1, "a": 1}, "b"),
    ("query-version", {"ä": 1, "Ω-1": 1, "a": 1}, "ä"),  # UTF-8 bytes hash as signed chars
]


def _play(vm: Machine, cases: list) -> list[str]:
    vm.qemu_img("create", "-f", "raw", "a.img", "1M")
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n"})
    return [vm.execute({"execute": c, "arguments": a})["error"]["desc"] for c, a, *_ in cases]


def test_the_member_qemu_names():
    assert _play(Machine(), CASES) == [f"Parameter '{name}' is unexpected" for *_, name in CASES]


def test_glib_hash_table():
    assert str_hash("") == 5381 and str_hash("a") == 177670
    table = GHashSet()
    for i in range(7):
        table.insert(f"k{i}")
    assert table.size == 8
    table.insert("k7")  # the eighth occupied bucket grows the table
    assert table.size == 16 and sorted(table) == [f"k{i}" for i in range(8)]
    for i in range(5):
        table.remove(f"k{i}")
    assert table.size == 8 and sorted(table) == ["k5", "k6", "k7"]  # fewer than a quarter full: it shrinks
    assert first_left(["a", "b"], ["b"]) == "a" and first_left(["a"], ["a"]) is None


def _random_cases(seed: int, count: int) -> list:
    rng = random.Random(seed)
    vocab = [f"m{i}" for i in range(60)] + ["a", "b", "foo", "bar", "size", "mode", "job-id", "ä", "Ω-1"]
    out = []
    for _ in range(count):
        extras = {k: 1 for k in rng.sample(vocab, rng.randint(2, 30))}
        kind = rng.choice(["bitmap", "union", "nested", "noargs"])
        if kind == "bitmap":
            known = {"node": "n", "name": "b", **({"granularity": 65536} if rng.random() < 0.5 else {})}
            cmd, args = "block-dirty-bitmap-add", known
        elif kind == "union":
            cmd, args = "blockdev-add", {"driver": "null-co", "node-name": "x", **({"size": 4096} if rng.random() < 0.5
                                                                                 else {})}
        elif kind == "nested":
            cmd, args = "blockdev-add", {"driver": "file", "filename": "a.img"}
        else:
            cmd, args = "query-version", {}
        items = list(args.items()) + list(extras.items())
        rng.shuffle(items)
        args = dict(items)
        if kind == "nested":
            args = {"driver": "raw", "node-name": "y", "file": args}
        out.append((cmd, args))
    return out


@pytest.mark.qemu
def test_random_members_as_qemu_names_them():
    cases = _random_cases(20261126, 300)
    real, sim = on_both(lambda vm: _play(vm, cases))
    assert sim == real
