"""bitlab.introspect: answers that survive the schema changes QEMU warns about.

Each change the seed names (docs/qapi-code-gen.txt, "introspection stability") is made
programmatically to qemu-storage-daemon 7.2's recorded schema, and the same
questions must keep the right answers.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from bitlab.introspect import (
    Param,
    command_arguments,
    differences,
    enum_values,
    features,
    has_command,
    has_event,
    index,
    parse_path,
    supports,
)
from bitlab.qmp.schema import schema_info

DATA = Path(__file__).parent / "data" / "schema"
SEED_TRANSACTION = {
    "actions": [
        {"type": "drive-backup", "data": {"device": "drive0", "bitmap": "bitmap0", "format": "qcow2",
                                          "mode": "existing", "sync": "incremental", "target": "d0-incr-1.qcow2"}},
        {"type": "drive-backup", "data": {"device": "drive1", "bitmap": "bitmap1", "format": "qcow2",
                                          "mode": "existing", "sync": "incremental", "target": "d1-incr-1.qcow2"}},
    ],
    "properties": {"completion-mode": "grouped"},
}


@cache
def _recorded(kind: str) -> tuple[dict, ...]:
    with gzip.open(DATA / f"{kind}-7.2.json.gz", "rt") as fh:
        return tuple(json.load(fh)["query-qmp-schema"])


def real(kind: str = "qsd") -> list[dict]:
    """A fresh copy of a recorded schema (safe to transform)."""
    return copy.deepcopy(list(_recorded(kind)))


SCHEMAS = {"qsd": lambda: real("qsd"), "system": lambda: real("system"), "bitlab": schema_info}


# -- transformations: each one a change QEMU may make between versions ----------------------------


class _Fresh:
    """New type names that cannot clash with masked numbers."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, hint: str) -> str:
        self.n += 1
        return f"new-{hint}-{self.n}"


fresh = _Fresh()


def _object_at(schema: list[dict], command: str, path: str) -> dict:
    """The object entry reached by following member names (arrays looked through, first object branch)."""
    idx = index(schema)
    tname = idx[command]["arg-type"]
    for name in [p for p in path.split(".") if p]:
        entry = _concrete_object(idx, tname)
        tname = next(m for m in entry["members"] if m["name"] == name)["type"]
    return _concrete_object(idx, tname)


def _concrete_object(idx: Any, tname: str) -> dict:
    entry = idx[tname]
    while entry["meta-type"] in ("array", "alternate"):
        if entry["meta-type"] == "array":
            entry = idx[entry["element-type"]]
        else:
            entry = next(idx[m["type"]] for m in entry["members"] if idx[m["type"]]["meta-type"] != "builtin")
    return entry


def _member(schema: list[dict], command: str, path: str) -> dict:
    *parents, name = path.split(".")
    obj = _object_at(schema, command, ".".join(parents))
    return next(m for m in obj["members"] if m["name"] == name)


def move_into_variant(schema: list[dict], command: str, path: str, tag: str, cases: list[str]) -> list[dict]:
    """An optional member becomes required, and present only in some variants of a flat union on ``tag``.

    If the object has no member ``tag`` yet, a new required enum member is added (values
    ``cases`` plus ``"other"``), so the wire format changes as the seed describes.
    """
    *parents, name = path.split(".")
    obj = _object_at(schema, command, ".".join(parents))
    moved = next(m for m in obj["members"] if m["name"] == name)
    obj["members"].remove(moved)
    moved = {k: v for k, v in moved.items() if k != "default"}  # now required
    idx = index(schema)
    tag_member = next((m for m in obj["members"] if m["name"] == tag), None)
    if tag_member is None:
        enum = fresh("enum")
        schema.append({"name": enum, "meta-type": "enum", "members": [{"name": c} for c in [*cases, "other"]],
                       "values": [*cases, "other"]})
        obj["members"].append({"name": tag, "type": enum})
        values = [*cases, "other"]
    else:
        values = [m["name"] for m in idx[tag_member["type"]]["members"]]
    branch, empty = fresh("branch"), fresh("empty")
    schema.append({"name": branch, "meta-type": "object", "members": [moved]})
    schema.append({"name": empty, "meta-type": "object", "members": []})
    obj["tag"] = tag
    obj["variants"] = [{"case": v, "type": branch if v in cases else empty} for v in values]
    return schema


def retype(schema: list[dict], command: str, path: str, new_type: str, entry: dict | None = None) -> list[dict]:
    """A member changes type (``entry``, if given, defines the new type)."""
    _member(schema, command, path)["type"] = new_type
    if entry is not None:
        schema.append(entry)
    return schema


def str_to_enum(schema: list[dict], command: str, path: str, values: list[str]) -> list[dict]:
    """An open ``str`` becomes a finite enum."""
    assert _member(schema, command, path)["type"] == "str"
    name = fresh("enum")
    return retype(schema, command, path, name, {"name": name, "meta-type": "enum",
                                               "members": [{"name": v} for v in values], "values": values})


def to_alternate(schema: list[dict], command: str, path: str, other: str = "str") -> list[dict]:
    """A member's type becomes an alternate of the old type and ``other``."""
    old = _member(schema, command, path)["type"]
    name = fresh("alt")
    return retype(schema, command, path, name, {"name": name, "meta-type": "alternate",
                                               "members": [{"type": old}, {"type": other}]})


def remask(schema: list[dict], seed: int) -> list[dict]:
    """Another numbering of the masked names, another entry order, another member order."""
    rng = random.Random(seed)
    names = [e["name"] for e in schema if e["meta-type"] not in ("command", "event", "builtin", "array")]
    shuffled = [str(1000 + i) for i in range(len(names))]
    rng.shuffle(shuffled)
    mapping = dict(zip(names, shuffled))

    def ren(name: str) -> str:
        return f"[{ren(name[1:-1])}]" if name.startswith("[") else mapping.get(name, name)

    out = []
    for entry in schema:
        new = dict(entry)
        for key in ("arg-type", "ret-type", "element-type"):
            if key in new:
                new[key] = ren(new[key])
        if new["meta-type"] not in ("command", "event"):
            new["name"] = ren(new["name"])
        if new["meta-type"] in ("object", "alternate"):
            new["members"] = [dict(m, type=ren(m["type"])) for m in new["members"]]
            rng.shuffle(new["members"])
        if "variants" in new:
            new["variants"] = [dict(v, type=ren(v["type"])) for v in new["variants"]]
            rng.shuffle(new["variants"])
        out.append(new)
    rng.shuffle(out)
    return out


# -- the questions, against real schemas -----------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_seed_question_on_real_schemas(kind: str) -> None:
    schema = SCHEMAS[kind]()
    assert has_command(schema, "transaction")
    assert supports(schema, "transaction", "properties.completion-mode")
    assert supports(schema, "transaction", "properties.completion-mode", value="grouped")
    assert not supports(schema, "transaction", "properties.completion-mode", value="together")
    assert not supports(schema, "transaction", "properties.no-such-thing")
    assert enum_values(schema, "transaction", "properties.completion-mode") == ["individual", "grouped"]
    assert supports(schema, "transaction", value=SEED_TRANSACTION)
    assert not supports(schema, "transaction", value={**SEED_TRANSACTION, "extra": 1})
    assert supports(schema, "transaction", "actions[type=drive-backup].data.bitmap-mode")
    assert supports(schema, "transaction", "actions[].type", value="block-dirty-bitmap-merge")
    assert not supports(schema, "transaction", "actions[type=abort].data.bitmap")
    assert enum_values(schema, "drive-backup", "sync") == ["top", "full", "none", "incremental", "bitmap"]
    assert supports(schema, "drive-backup", "x-perf.max-workers")
    assert features(schema, "drive-backup") == {"deprecated"}
    assert features(schema, "drive-backup", "x-perf") == {"unstable"}
    assert supports(schema, "block-dirty-bitmap-merge", "bitmaps.node")  # the alternate's object branch
    assert supports(schema, "blockdev-add", "[driver=qcow2].data-file")
    assert supports(schema, "blockdev-add", "[driver=null-co].size")
    assert not supports(schema, "blockdev-add", "[driver=null-co].filename")
    assert not supports(schema, "blockdev-add", "[driver=no-such-driver]")
    assert supports(schema, "query-named-block-nodes", "dirty-bitmaps.inconsistent", returns=True)
    assert supports(schema, "query-block", "inserted.image.backing-image.format-specific[type=qcow2].data.bitmaps",
                    returns=True)
    assert has_event(schema, "BLOCK_JOB_COMPLETED") and supports(schema, "BLOCK_JOB_COMPLETED", "error")
    assert not has_command(schema, "query-events")
    args = command_arguments(schema, "transaction")
    assert args == {"actions": Param("actions", True, (), ("array",)),
                    "properties": Param("properties", False, (), ("object",))}
    assert command_arguments(schema, "blockdev-add")["filename"].when[0] == "driver=file"


def test_what_differs_between_qemu_and_bitlab() -> None:
    qsd, mine, system = real("qsd"), schema_info(), real("system")
    assert supports(qsd, "blockdev-add", "[driver=nbd].server")
    assert supports(mine, "blockdev-add", "[driver=nbd].server")  # every driver's options, simulated or not
    assert supports(qsd, "object-add", "[qom-type=secret].file")
    assert not supports(mine, "object-add", "[qom-type=secret].file")  # bitlab does not simulate secret objects
    assert not has_command(qsd, "human-monitor-command")
    assert has_command(system, "human-monitor-command") and has_command(mine, "human-monitor-command")
    assert has_command(qsd, "x-blockdev-change") and not has_command(mine, "x-blockdev-change")
    assert has_command(mine, "change-backing-file") and differences(mine, qsd, "change-backing-file") == []
    assert has_command(qsd, "block-stream") and has_command(mine, "block-stream")
    assert has_command(qsd, "block-commit") and has_command(mine, "block-commit")
    assert has_command(qsd, "blockdev-mirror") and has_command(mine, "blockdev-mirror")
    assert differences(mine, qsd, "transaction") == []


def test_command_arguments_of_a_union() -> None:
    args = command_arguments(real("qsd"), "blockdev-add")
    assert args["driver"] == Param("driver", True, (), ("string",))
    assert args["node-name"].required is False and args["node-name"].when == ()
    assert args["filename"].when == ("driver=file", "driver=host_cdrom", "driver=host_device")
    assert args["file"].kinds == ("object", "string")  # BlockdevRef: options or a node name
    assert not args["file"].required


def test_paths() -> None:
    assert parse_path("actions[type=drive-backup].data.sync") == ["actions", parse_path("[type=drive-backup]")[0],
                                                                  "data", "sync"]
    assert parse_path("actions[].type") == ["actions", "type"]
    with pytest.raises(ValueError):
        parse_path("actions[type].data")


def test_unknown_command() -> None:
    schema = real("qsd")
    assert not supports(schema, "no-such-command")
    assert enum_values(schema, "no-such-command", "x") is None
    assert features(schema, "no-such-command") == frozenset()
    with pytest.raises(KeyError):
        command_arguments(schema, "no-such-command")


# -- the changes the seed warns about ---------------------------------------------------------------


def test_optional_member_moved_into_a_variant() -> None:
    """drive-backup's optional ``bitmap`` becomes required, only for sync=incremental|bitmap."""
    before = real()
    after = move_into_variant(real(), "drive-backup", "bitmap", "sync", ["incremental", "bitmap"])
    for schema in (before, after):
        assert supports(schema, "drive-backup", "bitmap")
        assert supports(schema, "drive-backup", "[sync=incremental].bitmap")
        assert supports(schema, "transaction", "actions[type=drive-backup].data[sync=bitmap].bitmap")
        assert supports(schema, "transaction", value=SEED_TRANSACTION)
    assert supports(before, "drive-backup", "[sync=full].bitmap")
    assert not supports(after, "drive-backup", "[sync=full].bitmap")
    assert command_arguments(before, "drive-backup")["bitmap"] == Param("bitmap", False, (), ("string",))
    assert command_arguments(after, "drive-backup")["bitmap"] == Param(
        "bitmap", False, ("sync=bitmap", "sync=incremental"), ("string",))
    assert not supports(after, "drive-backup", value={"device": "d", "target": "t", "sync": "incremental"})


def test_completion_mode_moved_into_a_variant() -> None:
    """The seed's own member, reworked into a variant behind a new tag: still found."""
    after = move_into_variant(real(), "transaction", "properties.completion-mode", "kind", ["configurable"])
    assert supports(after, "transaction", "properties.completion-mode", value="grouped")
    assert supports(after, "transaction", "properties[kind=configurable].completion-mode")
    assert not supports(after, "transaction", "properties[kind=other].completion-mode")
    assert enum_values(after, "transaction", "properties.completion-mode") == ["individual", "grouped"]
    assert not supports(after, "transaction", value=SEED_TRANSACTION)  # the wire changed: "kind" is required
    assert supports(after, "transaction", value={**SEED_TRANSACTION, "properties": {
        "kind": "configurable", "completion-mode": "grouped"}})


def test_str_became_an_enum() -> None:
    """drive-backup's ``format`` (open str in 7.2) turned into an enum."""
    before = real()
    after = str_to_enum(real(), "drive-backup", "format", ["qcow2", "raw"])
    for schema in (before, after):
        assert supports(schema, "drive-backup", "format", value="qcow2")
        assert supports(schema, "transaction", value=SEED_TRANSACTION)
    assert enum_values(before, "drive-backup", "format") is None
    assert enum_values(after, "drive-backup", "format") == ["qcow2", "raw"]
    assert supports(before, "drive-backup", "format", value="vmdk")
    assert not supports(after, "drive-backup", "format", value="vmdk")


def test_enum_was_a_str() -> None:
    """Seen from a client of an older QEMU: completion-mode as an open str."""
    older = retype(real(), "transaction", "properties.completion-mode", "str")
    assert supports(older, "transaction", "properties.completion-mode", value="grouped")
    assert enum_values(older, "transaction", "properties.completion-mode") is None


def test_type_became_an_alternate() -> None:
    """``properties`` becomes an alternate of the object and null; ``completion-mode`` an alternate too."""
    after = to_alternate(real(), "transaction", "properties", other="null")
    after = to_alternate(after, "transaction", "properties.completion-mode", other="bool")
    assert supports(after, "transaction", "properties.completion-mode", value="grouped")
    assert supports(after, "transaction", "properties.completion-mode", value=True)
    assert enum_values(after, "transaction", "properties.completion-mode") == ["individual", "grouped"]
    assert supports(after, "transaction", value=SEED_TRANSACTION)
    assert supports(after, "transaction", value={"actions": [], "properties": None})
    assert command_arguments(after, "transaction")["properties"].kinds == ("null", "object")


def test_alternate_was_a_plain_type() -> None:
    """block-dirty-bitmap-merge's ``bitmaps`` was ['str'] before QEMU 4.1 (no node/name objects)."""
    older = retype(real(), "block-dirty-bitmap-merge", "bitmaps", "[str]")
    assert supports(older, "block-dirty-bitmap-merge", "bitmaps")
    assert not supports(older, "block-dirty-bitmap-merge", "bitmaps.node")
    assert supports(real(), "block-dirty-bitmap-merge", "bitmaps", value=["b0", {"node": "n", "name": "b1"}])
    assert not supports(older, "block-dirty-bitmap-merge", "bitmaps", value=["b0", {"node": "n", "name": "b1"}])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_masked_names_and_order_change(seed: int) -> None:
    """Renumbered types, shuffled entries, members and variants: the same answers."""
    before, after = real(), remask(real(), seed)
    assert {e["name"] for e in after if e["meta-type"] == "object"} != {e["name"] for e in before
                                                                        if e["meta-type"] == "object"}
    for schema in (before, after):
        assert supports(schema, "transaction", "properties.completion-mode", value="grouped")
        assert enum_values(schema, "transaction", "properties.completion-mode") == ["individual", "grouped"]
        assert supports(schema, "transaction", value=SEED_TRANSACTION)
        assert supports(schema, "blockdev-add", "[driver=qcow2].data-file")
    assert command_arguments(after, "blockdev-add") == command_arguments(before, "blockdev-add")
    for name in ("transaction", "blockdev-add", "query-named-block-nodes", "BLOCK_JOB_COMPLETED"):
        assert differences(before, after, name, ordered=False) == []


def test_enum_without_values_or_members() -> None:
    """7.2 sends both ``members`` and the deprecated ``values``; older QEMU only ``values``,
    a later one may drop ``values``. Either is read."""
    only_values = [{k: v for k, v in e.items() if not (e["meta-type"] == "enum" and k == "members")} for e in real()]
    only_members = [{k: v for k, v in e.items() if not (e["meta-type"] == "enum" and k == "values")} for e in real()]
    for schema in (only_values, only_members):
        assert enum_values(schema, "transaction", "properties.completion-mode") == ["individual", "grouped"]
        assert supports(schema, "transaction", value=SEED_TRANSACTION)


def test_union_without_empty_branches() -> None:
    """Before QEMU 4.x a union listed only the branches with members; missing cases still count."""
    schema = real()
    for entry in schema:
        if "variants" in entry:
            entry["variants"] = [v for v in entry["variants"] if index(schema)[v["type"]]["members"]]
    assert supports(schema, "blockdev-add", "[driver=null-co].size")
    # ImageInfoSpecificQCow2Encryption: only its luks branch is left
    assert [e for e in schema if e.get("tag") == "format" and [v["case"] for v in e["variants"]] == ["luks"]]
    assert supports(schema, "query-named-block-nodes",
                    "image.format-specific[type=qcow2].data.encrypt[format=aes]", returns=True)


def test_differences_name_what_changed() -> None:
    before = real()
    after = str_to_enum(real(), "drive-backup", "format", ["qcow2", "raw"])
    after = move_into_variant(after, "drive-backup", "bitmap", "sync", ["incremental", "bitmap"])
    lines = differences(before, after, "drive-backup")
    assert "args.format: builtin str vs enum" in lines
    assert "args.bitmap: only in a" in lines
    assert "args: tag None vs sync" in lines
