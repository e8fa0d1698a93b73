"""bitlab.qmp_order.wire_order: every container new, members in QEMU's order, anything else shared."""

from collections import OrderedDict
from enum import IntEnum

from bitlab.qmp_order import wire_member_order, wire_order


class Level(IntEnum):
    HIGH = 2


class Listish(list):
    pass


def test_containers_are_new_and_ordered_scalars_and_other_values_shared():
    inner = {"read-only": False, "node-name": "n", "driver": "qcow2"}
    marker = object()
    value = ("tuple", 1)
    src = {"file": inner, "a": [inner, 1.5, None, "s"], "level": Level.HIGH, "flag": True, "other": marker,
           "pair": value, "od": OrderedDict([("z", 1), ("a", [2])]), "sub": Listish([{"y": 1, "x": 2}])}
    out = wire_order(src)
    assert out == src
    assert list(out) == list(wire_member_order(tuple(src)))
    assert list(out["file"]) == list(wire_member_order(tuple(inner)))
    assert out["file"] is not inner and out["a"] is not src["a"] and out["a"][0] is not inner
    assert out["other"] is marker and out["pair"] is value and out["level"] is Level.HIGH
    assert type(out["od"]) is dict and list(out["od"]) == list(wire_member_order(("z", "a")))
    assert out["od"]["a"] is not src["od"]["a"]
    assert type(out["sub"]) is list and out["sub"][0] is not src["sub"][0]
    out["file"]["driver"] = "changed"
    out["a"].append("x")
    assert inner["driver"] == "qcow2" and len(src["a"]) == 4
