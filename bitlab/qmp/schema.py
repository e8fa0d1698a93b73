"""``query-qmp-schema``: QAPI introspection generated from the command table.

A port of QEMU 7.2's ``scripts/qapi/introspect.py`` to bitlab's QAPI objects.
Commands (in table order) and then events are visited first; every type they
use is queued and visited in order of first use, so the output only holds what
bitlab actually implements. As in QEMU:

* non-builtin type names are masked as ``"0"``, ``"1"``, … in order of first
  use (``q_empty``, the empty object, is whatever number it gets first). QEMU
  numbers before ``#if`` removes what its build lacks, so its numbers have gaps
  (Debian's qsd skips the CONFIG_BLKIO drivers' types) and may even follow a
  command that is compiled out; bitlab's have no gaps;
* every integer type (``int64``, ``uint32``, ``size``, …) is shown as ``int``
  and builtins keep their names (``str``, ``bool``, ``any``, ``null``, ``number``);
* an array is named ``"[" + element + "]"``;
* an object's members are flattened (base members first); an optional member
  carries ``"default": null``; a flat union adds ``tag`` and ``variants``, and
  every discriminator value without a branch gets the empty object ``q_empty``;
* enums list both ``members`` (with features) and the deprecated ``values``.

Features are declared out of line in :data:`COMMAND_FEATURES` and
:data:`TYPE_FEATURES` (bitlab's type objects have no feature field).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..block.throttle import LIMIT_KEYS
from .commands import TABLE, Command
from .events import EVENTS
from .qapi import ANY, BOOL, INT, STR, Alternate, Array, Builtin, Enum, Member, QType, Struct, Union_, m, struct

# ----------------------------------------------------------------------------- features

COMMAND_FEATURES: dict[str, tuple[str, ...]] = {
    "blockdev-snapshot": ("allow-write-only-overlay",),
    "drive-backup": ("deprecated",),
    "nbd-server-add": ("deprecated",),
    "nbd-server-remove": ("deprecated",),
    "x-debug-block-dirty-bitmap-sha256": ("unstable",),
    "x-debug-query-block-graph": ("unstable",),
}
"""Features of commands and events, as declared in QEMU 7.2's qapi/*.json."""

TYPE_FEATURES: dict[str, tuple[str, ...]] = {
    "BackupCommon.x-perf": ("unstable",),
    "q_obj_block-commit-arg.base": ("deprecated",),
    "q_obj_block-commit-arg.top": ("deprecated",),
    "BlockdevOptionsFile": ("dynamic-auto-read-only",),
    "BlockdevOptionsFile.x-check-cache-dropped": ("unstable",),
    "BlockdevOptionsNbd.x-dirty-bitmap": ("unstable",),
    "TransactionActionKind.drive-backup": ("deprecated",),
    "SchemaInfoEnum.values": ("deprecated",),
    "ObjectType.x-remote-object": ("unstable",),
    "ObjectType.x-vfio-user-server": ("unstable",),
    **{f"ThrottleGroupProperties.x-{key}": ("unstable",) for key in LIMIT_KEYS},
}
"""Features of types (``"Type"``), of members (``"Type.member"``, keyed by the struct that
declares the member, not one inheriting it) and of enum values (``"Enum.value"``)."""

# ----------------------------------------------------------------------------- SchemaInfo

Q_EMPTY = struct("q_empty")
"""QAPI's empty object: the arguments or reply of a command that has none."""

SchemaMetaType = Enum("SchemaMetaType", ("builtin", "enum", "array", "object", "alternate", "command", "event"))
JSONType = Enum("JSONType", ("string", "number", "int", "boolean", "null", "object", "array", "value"))
_FEATURE_LIST = Array(STR)
SchemaInfoEnumMember = struct("SchemaInfoEnumMember", m("name", STR), m("*features", _FEATURE_LIST))
SchemaInfoObjectMember = struct(
    "SchemaInfoObjectMember", m("name", STR), m("type", STR), m("*default", ANY), m("*features", _FEATURE_LIST),
)
SchemaInfoObjectVariant = struct("SchemaInfoObjectVariant", m("case", STR), m("type", STR))
SchemaInfoAlternateMember = struct("SchemaInfoAlternateMember", m("type", STR))
SchemaInfo = Union_(
    "SchemaInfo",
    struct("q_obj_SchemaInfo-base", m("name", STR), m("meta-type", SchemaMetaType), m("*features", _FEATURE_LIST)),
    "meta-type",
    {
        "builtin": struct("SchemaInfoBuiltin", m("json-type", JSONType)),
        "enum": struct("SchemaInfoEnum", m("members", Array(SchemaInfoEnumMember)), m("values", Array(STR))),
        "array": struct("SchemaInfoArray", m("element-type", STR)),
        "object": struct(
            "SchemaInfoObject",
            m("members", Array(SchemaInfoObjectMember)), m("*tag", STR), m("*variants", Array(SchemaInfoObjectVariant)),
        ),
        "alternate": struct("SchemaInfoAlternate", m("members", Array(SchemaInfoAlternateMember))),
        "command": struct("SchemaInfoCommand", m("arg-type", STR), m("ret-type", STR), m("*allow-oob", BOOL)),
        "event": struct("SchemaInfoEvent", m("arg-type", STR)),
    },
)

# ----------------------------------------------------------------------------- generator

_INT_TYPES = frozenset({"int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "size"})
_JSON_TYPES = {"str": "string", "int": "int", "number": "number", "bool": "boolean", "null": "null", "any": "value"}


def _canonical(qtype: QType) -> QType:
    """QEMU maps every integer type to ``int`` (and arrays of them to ``[int]``)."""
    if isinstance(qtype, Builtin) and qtype.name in _INT_TYPES:
        return INT
    if isinstance(qtype, Array) and isinstance(qtype.element, Builtin) and qtype.element.name in _INT_TYPES:
        return Array(INT)
    return qtype


def _key(qtype: QType) -> str:
    if isinstance(qtype, Array):
        return "[" + _key(qtype.element) + "]"
    return qtype.name


def own_members(qtype: Struct) -> list[tuple[str, Member]]:
    """All members of a struct, base first, each with the name of the struct declaring it."""
    inherited = own_members(qtype.base) if qtype.base is not None else []
    return inherited + [(qtype.name, mem) for mem in qtype.members]


@dataclass(frozen=True)
class Event:
    """An event for the generator: its name and the type of its ``data`` (None: no data)."""

    name: str
    data: Struct | Union_ | None = None


class _Introspector:
    """One run of QEMU's QAPISchemaGenIntrospectVisitor."""

    def __init__(self, unmask: bool, command_features: Mapping[str, tuple[str, ...]],
                 type_features: Mapping[str, tuple[str, ...]]) -> None:
        self.unmask = unmask
        self.command_features = command_features
        self.type_features = type_features
        self.names: dict[str, str] = {}
        self.used: list[QType] = []
        self.used_keys: set[str] = set()
        self.entries: list[dict] = []

    def name(self, name: str) -> str:
        if self.unmask:
            return name
        return self.names.setdefault(name, str(len(self.names)))

    def use(self, qtype: QType) -> str:
        """_use_type: queue the type if new, return its (masked) name."""
        qtype = _canonical(qtype)
        key = _key(qtype)
        if key not in self.used_keys:
            self.used_keys.add(key)
            self.used.append(qtype)
        if isinstance(qtype, Builtin):
            return qtype.name
        if isinstance(qtype, Array):
            return "[" + self.use(qtype.element) + "]"
        return self.name(qtype.name)

    def tree(self, name: str, meta: str, obj: dict, features: tuple[str, ...] = ()) -> None:
        if meta not in ("command", "event", "builtin", "array"):
            name = self.name(name)
        obj["name"] = name
        obj["meta-type"] = meta
        if features:
            obj["features"] = list(features)
        self.entries.append(obj)

    def member(self, owner: str, mem: Member) -> dict:
        obj: dict[str, Any] = {"name": mem.name, "type": self.use(mem.type)}
        if mem.optional:
            obj["default"] = None
        features = self.type_features.get(f"{owner}.{mem.name}")
        if features:
            obj["features"] = list(features)
        return obj

    def command(self, cmd: Command) -> None:
        obj: dict[str, Any] = {"arg-type": self.use(cmd.args or Q_EMPTY), "ret-type": self.use(cmd.returns or Q_EMPTY)}
        if getattr(cmd, "allow_oob", False):
            obj["allow-oob"] = True
        self.tree(cmd.name, "command", obj, self.command_features.get(cmd.name, ()))

    def event(self, event: Event) -> None:
        self.tree(event.name, "event", {"arg-type": self.use(event.data or Q_EMPTY)},
                  self.command_features.get(event.name, ()))

    def visit(self, qtype: QType) -> None:
        features = self.type_features.get(getattr(qtype, "name", ""), ())
        if isinstance(qtype, Builtin):
            self.tree(qtype.name, "builtin", {"json-type": _JSON_TYPES[qtype.name]})
        elif isinstance(qtype, Enum):
            members = []
            for value in qtype.values:
                entry: dict[str, Any] = {"name": value}
                value_features = self.type_features.get(f"{qtype.name}.{value}")
                if value_features:
                    entry["features"] = list(value_features)
                members.append(entry)
            self.tree(qtype.name, "enum", {"members": members, "values": list(qtype.values)}, features)
        elif isinstance(qtype, Array):
            element = self.use(qtype.element)
            self.tree("[" + element + "]", "array", {"element-type": element})
        elif isinstance(qtype, Struct):
            self.tree(qtype.name, "object", {"members": [self.member(o, mem) for o, mem in own_members(qtype)]},
                      features)
        elif isinstance(qtype, Union_):
            obj: dict[str, Any] = {"members": [self.member(o, mem) for o, mem in own_members(qtype.base)]}
            obj["tag"] = qtype.discriminator
            obj["variants"] = [{"case": case, "type": self.use(branch)} for case, branch in union_branches(qtype)]
            self.tree(qtype.name, "object", obj, features)
        elif isinstance(qtype, Alternate):
            self.tree(qtype.name, "alternate", {"members": [{"type": self.use(c)} for c in qtype.choices]}, features)
        else:
            raise TypeError(f"not a QAPI type: {qtype!r}")

    def run(self, entities: Iterable[Command | Event]) -> list[dict]:
        for entity in entities:
            if isinstance(entity, Event):
                self.event(entity)
            else:
                self.command(entity)
        i = 0
        while i < len(self.used):  # the queue grows while it is walked
            self.visit(self.used[i])
            i += 1
        return self.entries


def union_branches(union: Union_) -> list[tuple[str, Struct]]:
    """The union's branches in declaration order, then ``q_empty`` for each tag value without one."""
    tag = next(mem for mem in union.base.all_members() if mem.name == union.discriminator)
    branches = list(union.variants.items())
    if isinstance(tag.type, Enum):
        branches += [(value, Q_EMPTY) for value in tag.type.values if value not in union.variants]
    return branches


def generate(entities: Iterable[Command | Event], *, unmask: bool = False,
               command_features: Mapping[str, tuple[str, ...]] = COMMAND_FEATURES,
               type_features: Mapping[str, tuple[str, ...]] = TYPE_FEATURES) -> list[dict]:
    """SchemaInfo for commands and events visited in the given order (QEMU: schema order)."""
    return _Introspector(unmask, command_features, type_features).run(entities)


def schema_info(commands: Iterable[Command] | None = None, events: Mapping[str, Struct | None] | None = None,
                *, unmask: bool = False) -> list[dict]:
    """The ``query-qmp-schema`` reply (a list of SchemaInfo) for ``commands`` and ``events``.

    Defaults to every command in the table, then every event bitlab emits. With
    ``unmask`` type names are shown as declared (QEMU's ``qapi-gen -u``).
    """
    cmds = list(TABLE.commands.values() if commands is None else commands)
    evts = [Event(name, data) for name, data in (EVENTS if events is None else events).items()]
    return generate([*cmds, *evts], unmask=unmask)
