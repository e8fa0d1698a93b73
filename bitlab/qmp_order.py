"""How QEMU orders the members of a JSON object it sends (qobject/qdict.c).

A QDict keeps 512 hash buckets; serialising walks them in ascending order and,
within a bucket, from the newest key to the oldest. Objects are built in QAPI
schema member order, so output order is a pure function of the member names.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=4096)
def tdb_hash(name: str) -> int:
    """QEMU's qdict hash."""
    raw = name.encode()
    value = (0x238F13AF * len(raw)) & 0xFFFFFFFF
    for i, c in enumerate(raw):
        value = (value + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def wire_order(obj: Any) -> Any:
    """Reorder every dict (recursively) as QEMU serialises a QDict built in insertion order.
    Always returns new containers; scalars are shared."""
    kind = type(obj)
    if kind is dict:
        out = {}
        for key in _member_order(tuple(obj)):
            value = obj[key]
            out[key] = value if type(value) in _SCALARS else wire_order(value)
        return out
    if kind is list:
        return [v if type(v) in _SCALARS else wire_order(v) for v in obj]
    if isinstance(obj, (dict, list)):  # subclasses come out as plain containers
        return wire_order(dict(obj) if isinstance(obj, dict) else list(obj))
    return obj


# JSON's scalar types, exactly: a value of one of them is shared as it is, with no call (anything
# else goes through wire_order, which returns what is not a container unchanged)
_SCALARS = frozenset({str, int, float, bool, type(None)})


def wire_member_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The order QEMU sends an object's members in, given the order they were added in."""
    return _member_order(keys)


@lru_cache(maxsize=4096)
def _member_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The serialisation order of a QDict's keys, given their insertion order (a pure function)."""
    order = sorted(range(len(keys)), key=lambda i: (tdb_hash(keys[i]) % 512, -i))
    return tuple(keys[i] for i in order)


def to_json_pretty(obj: Any, level: int = 0) -> str:
    """qobject_to_json_pretty: four-space indents; empty containers still break a line."""
    pad, inner = "    " * level, "    " * (level + 1)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {to_json_pretty(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + ("\n" if items else "") + pad + "}"
    if isinstance(obj, list):
        items = [f"{inner}{to_json_pretty(v, level + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + ("\n" if items else "") + pad + "]"
    return json.dumps(obj)
