"""A small QAPI: the types of command arguments, QEMU's input visitor, wire order.

Types are described once here (as QEMU's ``qapi/*.json`` does) and serve three
purposes: checking arguments with QEMU's exact error texts
(qapi/qobject-input-visitor.c, qapi/qapi-visit-core.c), building
``query-qmp-schema`` later, and ordering output members as QEMU's QDict does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Union

from ..errors import QMPError
from ..qmp_order import tdb_hash, wire_member_order, wire_order  # noqa: F401  (re-exported)
from .ghash import first_left

# ----------------------------------------------------------------------------- types


@dataclass(frozen=True)
class Builtin:
    """A QAPI builtin: str, int, int64, uint32, uint64, size, bool, number, any, null."""

    name: str


@dataclass(frozen=True)
class Enum:
    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Array:
    element: QType

    @property
    def name(self) -> str:
        return f"[{self.element.name}]"


@dataclass(frozen=True)
class Member:
    name: str
    type: QType
    optional: bool = False


@dataclass(frozen=True)
class Struct:
    name: str
    members: tuple[Member, ...]
    base: Struct | None = None

    def all_members(self) -> tuple[Member, ...]:
        return self._all_members

    @cached_property
    def _all_members(self) -> tuple[Member, ...]:  # types never change: computed once
        return (self.base.all_members() if self.base else ()) + self.members

    @cached_property
    def member_names(self) -> frozenset[str]:
        return frozenset(mem.name for mem in self._all_members)


@dataclass(frozen=True)
class Union_:
    """A flat union: base members, then the variant chosen by ``discriminator``."""

    name: str
    base: Struct
    discriminator: str
    variants: dict[str, Struct] = field(hash=False)


@dataclass(frozen=True)
class Alternate:
    """One of several types, chosen by the JSON type of the value."""

    name: str
    choices: tuple[QType, ...]


QType = Union[Builtin, Enum, Array, Struct, Union_, Alternate]  # noqa: UP007 (recursive alias)

STR, INT, INT64, BOOL = Builtin("str"), Builtin("int"), Builtin("int64"), Builtin("bool")
INT32 = Builtin("int32")
UINT32, UINT64, SIZE = Builtin("uint32"), Builtin("uint64"), Builtin("size")
NUMBER, ANY, NULL = Builtin("number"), Builtin("any"), Builtin("null")


def struct(name: str, *members: Member, base: Struct | None = None) -> Struct:
    return Struct(name, tuple(members), base)


def m(name: str, qtype: QType) -> Member:
    """A required member; prefix the name with '*' for an optional one (QAPI style)."""
    if name.startswith("*"):
        return Member(name[1:], qtype, True)
    return Member(name, qtype)


# ----------------------------------------------------------------------------- visitor

_INT_RANGES = {
    "int8": (-(1 << 7), (1 << 7) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint8": (0, (1 << 8) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint32": (0, (1 << 32) - 1),
}
_I64_MIN, _I64_MAX, _U64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1


def _type_error(path: str, expected: str) -> QMPError:
    return QMPError(f"Invalid parameter type for '{path}', expected: {expected}")


_EXACT_KINDS = {type(None): "null", bool: "bool", float: "number", str: "str", list: "list", dict: "dict"}


def _json_kind(value: Any) -> str:
    """The QObject type QEMU's JSON parser would produce."""
    kind = _EXACT_KINDS.get(type(value))  # the usual JSON types, in one look-up
    if kind is not None:
        return kind
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _I64_MIN <= value <= _U64_MAX else "number"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    raise QMPError(f"Unsupported value of Python type {type(value).__name__}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class Visitor:
    """Checks JSON-like input against a QAPI type, raising QEMU's errors."""

    def visit(self, qtype: QType, value: Any, name: str | None, path: str) -> Any:
        if isinstance(qtype, Builtin):
            return self._builtin(qtype.name, value, name, path)
        if isinstance(qtype, Enum):
            if _json_kind(value) != "str":
                raise _type_error(path, "string")
            if value not in qtype.values:
                raise QMPError(f"Parameter '{name or 'null'}' does not accept value '{value}'")
            return value
        if isinstance(qtype, Array):
            if _json_kind(value) != "list":
                raise _type_error(path, "array")
            return [self.visit(qtype.element, v, None, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(qtype, Struct):
            return self.visit_struct(qtype.all_members(), value, path, qtype.member_names)
        if isinstance(qtype, Union_):
            return self._union(qtype, value, path)
        if isinstance(qtype, Alternate):
            return self._alternate(qtype, value, name, path)
        raise TypeError(qtype)

    def visit_struct(self, members: tuple[Member, ...], value: Any, path: str,
                     known: frozenset[str] | None = None, frame: dict | None = None,
                     consumed: tuple[str, ...] = ()) -> dict:
        """Visit ``members``; any other key is unexpected unless in ``known`` (default: the members' names).
        ``frame`` is the whole object when ``value`` is part of it (a union's variant members) and
        ``consumed`` its members visited before: which unexpected key QEMU names depends on both."""
        if type(value) is not dict and _json_kind(value) != "dict":
            raise _type_error(path or "null", "object")
        out: dict = {}
        for mem in members:
            if mem.name in value:
                out[mem.name] = self.visit(mem.type, value[mem.name], mem.name, _join(path, mem.name))
            elif not mem.optional:
                raise QMPError(f"Parameter '{_join(path, mem.name)}' is missing")
        if known is None:
            known = frozenset(mem.name for mem in members)
        for key in value:
            if key not in known:
                whole = value if frame is None else frame
                taken = (*consumed, *(mem.name for mem in members if mem.name in value))
                first = first_left(wire_member_order(tuple(whole)), taken)  # GLib's order, not the input's
                raise QMPError(f"Parameter '{_join(path, first or key)}' is unexpected")
        return out

    def _union(self, qtype: Union_, value: Any, path: str) -> dict:
        if _json_kind(value) != "dict":
            raise _type_error(path or "null", "object")
        base, base_names = qtype.base.all_members(), qtype.base.member_names
        # Base members first (the discriminator among them), without the unexpected check.
        out = self.visit_struct(base, {k: v for k, v in value.items() if k in base_names}, path, base_names)
        variant = qtype.variants.get(out[qtype.discriminator])
        variant_members = variant.all_members() if variant else ()
        rest = {k: v for k, v in value.items() if k not in out}
        known = base_names | variant.member_names if variant else base_names
        base_taken = tuple(mem.name for mem in base if mem.name in value)
        out.update(self.visit_struct(variant_members, rest, path, known, value, base_taken))
        return out

    def _alternate(self, qtype: Alternate, value: Any, name: str | None, path: str) -> Any:
        kind = _json_kind(value)
        for choice in qtype.choices:
            if _accepts_kind(choice, kind):
                return self.visit(choice, value, name, path)
        raise QMPError(f"Invalid parameter type for '{name or 'null'}', expected: {qtype.name}")

    def _builtin(self, tname: str, value: Any, name: str | None, path: str) -> Any:
        kind = _json_kind(value)
        if tname == "any":
            return value
        if tname == "str":
            if kind != "str":
                raise _type_error(path, "string")
            return value
        if tname == "bool":
            if kind != "bool":
                raise _type_error(path, "boolean")
            return value
        if tname == "null":
            if kind != "null":
                raise _type_error(path, "null")
            return None
        if tname == "number":
            if kind not in ("int", "number"):
                raise _type_error(path, "number")
            return float(value)
        if tname.startswith("uint") or tname == "size":
            # qobject_input_type_uint64 names the C type when the value is no integer (a size is visited as one:
            # only the keyval visitor of the command line has a type_size of its own)
            if kind != "int":
                raise QMPError(f"Parameter '{path}' expects uint64")
        elif kind != "int":
            raise _type_error(path, "integer")
        if tname in ("int", "int64"):
            if value > _I64_MAX:
                raise _type_error(path, "integer")
            return value
        if tname in ("uint64", "size"):
            return value & _U64_MAX
        if tname.startswith("uint"):
            value &= _U64_MAX
        elif value > _I64_MAX:
            raise _type_error(path, "integer")
        lo, hi = _INT_RANGES[tname]
        if not lo <= value <= hi:
            raise QMPError(f"Parameter '{name or 'null'}' expects {tname}_t")
        return value


def _accepts_kind(qtype: QType, kind: str) -> bool:
    if isinstance(qtype, (Struct, Union_)):
        return kind == "dict"
    if isinstance(qtype, Enum):
        return kind == "str"
    if isinstance(qtype, Array):
        return kind == "list"
    if isinstance(qtype, Builtin):
        if qtype.name == "str":
            return kind == "str"
        if qtype.name == "bool":
            return kind == "bool"
        if qtype.name == "null":
            return kind == "null"
        if qtype.name == "number":
            return kind in ("int", "number")
        return kind == "int"
    return False


# ----------------------------------------------------------------------------- fast checkers


class NotFast(Exception):
    """A fast checker met something it leaves to :class:`Visitor` (any error, any unusual value)."""


Checker = Callable[[Any], Any]
NO_ARGS = Struct("q_empty", ())  # a command without arguments takes an empty object
_CHECKERS: dict[int, tuple[QType, Checker]] = {}  # id(type) -> (type, checker); types live forever


def fast_checker(qtype: QType) -> Checker:
    """A checker for well-formed input of ``qtype``: returns exactly what :meth:`Visitor.visit`
    returns, or raises :class:`NotFast` wherever the visitor might raise or convert, so that the
    visitor (and its error texts) decides those cases. Built once per type."""
    got = _CHECKERS.get(id(qtype))
    if got is None:
        built: list[Checker] = []  # a recursive type (BlockdevRef in BlockdevOptions) meets itself while
        _CHECKERS[id(qtype)] = (qtype, lambda v: built[0](v))  # being built: it calls the finished one
        built.append(_compile(qtype))
        got = _CHECKERS[id(qtype)] = (qtype, built[0])
    return got[1]


def _slow() -> Any:
    raise NotFast


def _compile(qtype: QType) -> Checker:
    if isinstance(qtype, Builtin):
        return _compile_builtin(qtype.name)
    if isinstance(qtype, Enum):
        values = frozenset(qtype.values)
        return lambda v: v if type(v) is str and v in values else _slow()
    if isinstance(qtype, Array):
        element = fast_checker(qtype.element)
        return lambda v: [element(x) for x in v] if type(v) is list else _slow()
    if isinstance(qtype, Struct):
        return _compile_members(qtype.all_members(), qtype.member_names)
    if isinstance(qtype, Union_):
        return _compile_union(qtype)
    if isinstance(qtype, Alternate):
        by_kind: dict[str, Checker] = {}
        for kind in ("null", "bool", "int", "number", "str", "list", "dict"):
            choice = next((c for c in qtype.choices if _accepts_kind(c, kind)), None)
            if choice is not None:
                by_kind[kind] = fast_checker(choice)

        def alternate(v: Any) -> Any:
            kind = _EXACT_KINDS.get(type(v)) or ("int" if type(v) is int and _I64_MIN <= v <= _U64_MAX else None)
            check = by_kind.get(kind) if kind is not None else None
            return check(v) if check is not None else _slow()
        return alternate
    raise TypeError(qtype)


def _compile_builtin(name: str) -> Checker:
    if name == "any":
        return lambda v: v
    if name == "str":
        return lambda v: v if type(v) is str else _slow()
    if name == "bool":
        return lambda v: v if type(v) is bool else _slow()
    if name == "null":
        return lambda v: None if v is None else _slow()
    if name == "number":
        return lambda v: float(v) if type(v) is float or (type(v) is int and _I64_MIN <= v <= _U64_MAX) else _slow()
    if name in ("uint64", "size"):
        return lambda v: v if type(v) is int and 0 <= v <= _U64_MAX else _slow()
    lo, hi = (_I64_MIN, _I64_MAX) if name in ("int", "int64") else _INT_RANGES[name]
    return lambda v: v if type(v) is int and lo <= v <= hi else _slow()


def _compile_members(members: tuple[Member, ...], known: frozenset[str]) -> Checker:
    table = tuple((mem.name, fast_checker(mem.type), mem.optional) for mem in members)

    def struct(v: Any) -> dict:
        if type(v) is not dict:
            _slow()
        out = {}
        for name, check, optional in table:
            if name in v:
                out[name] = check(v[name])
            elif not optional:
                _slow()
        if len(out) != len(v):  # a member the type does not have
            _slow()
        return out
    return struct


def _compile_union(qtype: Union_) -> Checker:
    base = tuple((mem.name, fast_checker(mem.type), mem.optional) for mem in qtype.base.all_members())
    variants = {tag: tuple((mem.name, fast_checker(mem.type), mem.optional) for mem in variant.all_members())
                for tag, variant in qtype.variants.items()}
    discriminator = qtype.discriminator

    def union(v: Any) -> dict:
        if type(v) is not dict:
            _slow()
        out = {}
        for name, check, optional in base:
            if name in v:
                out[name] = check(v[name])
            elif not optional:
                _slow()
        members = variants.get(out.get(discriminator))
        if members is None:
            _slow()
        for name, check, optional in members:
            if name in v:
                out[name] = check(v[name])
            elif not optional:
                _slow()
        if len(out) != len(v):  # a member neither the base nor the variant has
            _slow()
        return out
    return union
