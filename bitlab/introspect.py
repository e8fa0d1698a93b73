"""Ask a ``query-qmp-schema`` reply robust questions (works on real QEMU's schema too).

QEMU promises wire compatibility, not introspection stability: between versions an
optional member may move into a variant of a flat union, a ``str`` may become an
enum, a type may become an alternate, and the masked type names (``"123"``) change
whenever anything else does. So these helpers never look at type names, entry order
or member order. A question names a command (or event) and a *path* through its
arguments, and every place the path could lead is searched:

* ``"properties.completion-mode"`` — members, separated by dots;
* arrays are stepped through (``"actions.type"``; ``"actions[].type"`` also works);
* an alternate is searched in all of its branches;
* a flat union's members are its base members plus those of every variant;
  ``"actions[type=drive-backup].data.sync"`` keeps only the objects in which
  ``type`` accepts ``"drive-backup"`` (the right variant of a union, or any
  object with such a member).

All functions are pure: they take the schema (the list of SchemaInfo dicts, or the
mapping :func:`index` makes of it, to reuse) and never change it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

SchemaLike = Union[Sequence[Mapping[str, Any]], Mapping[str, Mapping[str, Any]]]  # noqa: UP007
Shape = tuple[dict[str, Mapping[str, Any]], dict[str, str]]
"""One way an object can look: its members by name, and the tag values that choose it."""

_MISSING: Any = object()
_COMPONENT = re.compile(r"([^.\[\]]*)((?:\[[^\]]*\])*)")


def index(schema: SchemaLike) -> Mapping[str, Mapping[str, Any]]:
    """The schema's entries by name (commands, events and types share one namespace)."""
    if isinstance(schema, Mapping):
        return schema
    return {entry["name"]: entry for entry in schema}


def has_command(schema: SchemaLike, name: str) -> bool:
    entry = index(schema).get(name)
    return entry is not None and entry.get("meta-type") == "command"


def has_event(schema: SchemaLike, name: str) -> bool:
    entry = index(schema).get(name)
    return entry is not None and entry.get("meta-type") == "event"


# ----------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class _Select:
    tag: str
    value: str


def parse_path(path: str) -> list[str | _Select]:
    """``"a[t=v].b[]"`` -> ``["a", _Select("t", "v"), "b"]``; ``[]`` is dropped."""
    steps: list[str | _Select] = []
    for part in path.split(".") if path else []:
        match = _COMPONENT.fullmatch(part)
        if match is None:
            raise ValueError(f"bad path component {part!r} in {path!r}")
        name, selectors = match.groups()
        if name:
            steps.append(name)
        for sel in re.findall(r"\[([^\]]*)\]", selectors):
            if sel:
                tag, eq, value = sel.partition("=")
                if not eq or not tag:
                    raise ValueError(f"bad selector [{sel}] in {path!r}: use [tag=value]")
                steps.append(_Select(tag, value))
    return steps


def _root(idx: Mapping[str, Mapping[str, Any]], entity: str, returns: bool) -> str | None:
    entry = idx.get(entity)
    if entry is None or entry.get("meta-type") not in ("command", "event"):
        return None
    if returns:
        return entry.get("ret-type")
    return entry.get("arg-type")


def _expand(idx: Mapping[str, Mapping[str, Any]], tname: str, seen: frozenset[str] = frozenset()) -> Iterator[str]:
    """The concrete types a value of ``tname`` can have: arrays and alternates are looked through."""
    if tname in seen:
        return
    entry = idx.get(tname)
    meta = entry.get("meta-type") if entry else None
    if meta == "array":
        yield from _expand(idx, entry["element-type"], seen | {tname})
    elif meta == "alternate":
        for mem in entry["members"]:
            yield from _expand(idx, mem["type"], seen | {tname})
    else:
        yield tname


def _enum_names(entry: Mapping[str, Any]) -> list[str]:
    """An enum's values: ``members`` (7.2+) or ``values`` (older, deprecated in 7.2)."""
    if "members" in entry:
        return [mem["name"] for mem in entry["members"]]
    return list(entry.get("values", ()))


def _shapes(idx: Mapping[str, Mapping[str, Any]], tname: str) -> list[Shape]:
    """Every way an object can look: base members plus each variant's (recursively)."""
    entry = idx.get(tname)
    if entry is None or entry.get("meta-type") != "object":
        return []
    base = {mem["name"]: mem for mem in entry.get("members", ())}
    if "variants" not in entry:
        return [(base, {})]
    tag = entry["tag"]
    out: list[Shape] = []
    cases = set()
    for variant in entry["variants"]:
        cases.add(variant["case"])
        for members, fixed in _shapes(idx, variant["type"]) or [({}, {})]:
            out.append(({**base, **members}, {**fixed, tag: variant["case"]}))
    tag_type = idx.get(base[tag]["type"], {}) if tag in base else {}
    for value in _enum_names(tag_type) if tag_type.get("meta-type") == "enum" else ():
        if value not in cases:  # schemas before QEMU 4.x left such branches out
            out.append((dict(base), {tag: value}))
    return out


def accepts(schema: SchemaLike, tname: str, value: Any) -> bool:
    """Whether a JSON value is valid for the type named ``tname`` (as QEMU's input visitor checks)."""
    return _accepts(index(schema), tname, value)


def _accepts(idx: Mapping[str, Mapping[str, Any]], tname: str, value: Any) -> bool:
    entry = idx.get(tname)
    if entry is None:
        return False
    meta = entry.get("meta-type")
    if meta == "builtin":
        kind = entry.get("json-type")
        return {
            "string": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
            "null": value is None,
            "value": True,
        }.get(kind, False)
    if meta == "enum":
        return isinstance(value, str) and value in _enum_names(entry)
    if meta == "array":
        return isinstance(value, list) and all(_accepts(idx, entry["element-type"], v) for v in value)
    if meta == "alternate":
        return any(_accepts(idx, mem["type"], value) for mem in entry["members"])
    if meta == "object":
        if not isinstance(value, dict):
            return False
        for members, fixed in _shapes(idx, tname):
            if any(value.get(tag) != case for tag, case in fixed.items()):
                continue
            if set(value) - set(members):
                continue
            if any(name not in value for name, mem in members.items() if "default" not in mem):
                continue
            if all(_accepts(idx, members[k]["type"], v) for k, v in value.items()):
                return True
        return False
    return False


def _walk(idx: Mapping[str, Mapping[str, Any]], root: str, path: str
          ) -> tuple[list[Mapping[str, Any]], list[Shape]]:
    """Follow ``path`` from the type ``root``.

    Returns the members the last name step reached (several, if the path leads to
    several places) and the object shapes still possible after the last step.
    """
    types = [root]
    found: list[Mapping[str, Any]] = []
    shapes: list[Shape] | None = None  # narrowed by a selector, else computed from ``types``
    for step in parse_path(path):
        if shapes is None:
            shapes = [s for t in dict.fromkeys(x for r in types for x in _expand(idx, r)) for s in _shapes(idx, t)]
        if isinstance(step, _Select):
            shapes = [
                (members, fixed) for members, fixed in shapes
                if step.tag in members and fixed.get(step.tag, step.value) == step.value
                and _accepts(idx, members[step.tag]["type"], step.value)
            ]
            found = [members[step.tag] for members, _ in shapes]
            continue
        found = list({id(m): m for members, _ in shapes if (m := members.get(step)) is not None}.values())
        types = [mem["type"] for mem in found]
        shapes = None
        if not found:
            return [], []
    if shapes is None:
        shapes = [s for t in dict.fromkeys(x for r in types for x in _expand(idx, r)) for s in _shapes(idx, t)]
    return found, shapes


# ----------------------------------------------------------------------------- questions


def supports(schema: SchemaLike, command: str, path: str = "", *, value: Any = _MISSING,
             returns: bool = False) -> bool:
    """Whether ``command`` (or an event) accepts something at ``path`` in its arguments.

    With ``value``: whether that JSON value is valid there (so ``"grouped"`` is
    accepted by an open ``str`` as well as by an enum listing it). With
    ``returns``: whether the reply may contain ``path`` instead. An empty path
    asks whether the command exists.
    """
    idx = index(schema)
    root = _root(idx, command, returns)
    if root is None:
        return False
    if not path:
        return value is _MISSING or _accepts(idx, root, value)
    found, shapes = _walk(idx, root, path)
    if not found and not shapes:
        return False
    if value is _MISSING:
        return bool(found) or bool(shapes)
    return any(_accepts(idx, mem["type"], value) for mem in found)


def enum_values(schema: SchemaLike, command: str, path: str, *, returns: bool = False) -> list[str] | None:
    """The enum values listed for ``path`` (every enum it can be, in schema order).

    ``None`` when the path does not exist or names no enum (an open ``str``, say):
    use :func:`supports` with ``value=`` to ask whether one value is accepted.
    """
    idx = index(schema)
    root = _root(idx, command, returns)
    if root is None:
        return None
    found, _ = _walk(idx, root, path)
    values: dict[str, None] = {}
    enums = 0
    for mem in found:
        for tname in _expand(idx, mem["type"]):
            entry = idx.get(tname, {})
            if entry.get("meta-type") == "enum":
                enums += 1
                values.update(dict.fromkeys(_enum_names(entry)))
    return list(values) if enums else None


def features(schema: SchemaLike, command: str, path: str = "", *, returns: bool = False) -> frozenset[str]:
    """Features (``deprecated``, ``unstable``, …) of a command or event, or of the member at ``path``."""
    idx = index(schema)
    entry = idx.get(command)
    if entry is None:
        return frozenset()
    if not path:
        return frozenset(entry.get("features", ()))
    root = _root(idx, command, returns)
    found, _ = _walk(idx, root, path) if root else ([], [])
    return frozenset(f for mem in found for f in mem.get("features", ()))


@dataclass(frozen=True)
class Param:
    """One top-level argument of a command, whichever variant it comes from."""

    name: str
    required: bool
    """Required wherever the argument exists, and it exists in every variant."""
    when: tuple[str, ...]
    """``"tag=value"`` for each variant that has it; empty if every variant has it."""
    kinds: tuple[str, ...]
    """The JSON types it accepts, sorted: ``string``, ``int``, ``number``, ``boolean``, ``null``,
    ``object``, ``array``, or ``value`` (anything)."""


def _kinds(idx: Mapping[str, Mapping[str, Any]], tname: str) -> list[str]:
    entry = idx.get(tname, {})
    meta = entry.get("meta-type")
    if meta == "builtin":
        return [entry.get("json-type", "value")]
    if meta == "enum":
        return ["string"]
    if meta == "alternate":
        return [k for mem in entry["members"] for k in _kinds(idx, mem["type"])]
    return [meta] if meta in ("array", "object") else ["value"]


def command_arguments(schema: SchemaLike, command: str) -> dict[str, Param]:
    """The command's top-level arguments (base and variant members alike), by name."""
    idx = index(schema)
    root = _root(idx, command, False)
    if root is None:
        raise KeyError(f"no command {command!r} in the schema")
    shapes = _shapes(idx, root)
    names: dict[str, None] = {}
    for members, _ in shapes:
        names.update(dict.fromkeys(members))
    out: dict[str, Param] = {}
    for name in names:
        having = [(members[name], fixed) for members, fixed in shapes if name in members]
        everywhere = len(having) == len(shapes)
        when = () if everywhere else tuple(sorted(dict.fromkeys(
            f"{tag}={case}" for _, fixed in having for tag, case in fixed.items())))
        required = everywhere and all("default" not in mem for mem, _ in having)
        kinds = tuple(sorted({k for mem, _ in having for k in _kinds(idx, mem["type"])}))
        out[name] = Param(name, required, when, kinds)
    return out


# ----------------------------------------------------------------------------- comparison


def differences(a: SchemaLike, b: SchemaLike, entity: str, *, entity_b: str | None = None,
                ordered: bool = True) -> list[str]:
    """How ``entity`` (a command or event) differs between two schemas, one line per difference.

    Types are compared by structure, never by their (masked) names: member names,
    optionality, features, builtin names, enum values, array elements, alternate
    branches, union tags and variants. Lines read ``"PATH: what"``, with PATH in
    :func:`supports`'s syntax after ``args``/``returns`` (``args.actions[type=abort]``).
    With ``ordered`` (the default) the order of members, enum values and alternate
    branches counts too: it shows on the wire, though it means nothing to a client.
    """
    ia, ib = index(a), index(b)
    ea, eb = ia.get(entity), ib.get(entity_b or entity)
    if ea is None or eb is None:
        return [] if ea is eb else [f"{entity}: only in {'b' if ea is None else 'a'}"]
    out: list[str] = []
    if ea.get("meta-type") != eb.get("meta-type"):
        return [f"{entity}: {ea.get('meta-type')} vs {eb.get('meta-type')}"]
    _diff_features(out, entity, ea, eb)
    if bool(ea.get("allow-oob")) != bool(eb.get("allow-oob")):
        out.append(f"{entity}: allow-oob {bool(ea.get('allow-oob'))} vs {bool(eb.get('allow-oob'))}")
    _diff_type(out, ia, ib, ea["arg-type"], eb["arg-type"], "args", frozenset(), ordered)
    if "ret-type" in ea or "ret-type" in eb:
        _diff_type(out, ia, ib, ea.get("ret-type", ""), eb.get("ret-type", ""), "returns", frozenset(), ordered)
    return out


def _diff_features(out: list[str], path: str, ea: Mapping[str, Any], eb: Mapping[str, Any]) -> None:
    fa, fb = list(ea.get("features", ())), list(eb.get("features", ()))
    if sorted(fa) != sorted(fb):
        out.append(f"{path}: features {fa} vs {fb}")


def _describe(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "nothing"
    meta = entry.get("meta-type")
    return f"builtin {entry['name']}" if meta == "builtin" else str(meta)


def _diff_type(out: list[str], ia: Mapping[str, Mapping[str, Any]], ib: Mapping[str, Mapping[str, Any]],
               ta: str, tb: str, path: str, seen: frozenset[tuple[str, str]], ordered: bool) -> None:
    """Compare two types; ``seen`` holds the pairs being compared further up (recursive types)."""
    if (ta, tb) in seen:
        return
    seen = seen | {(ta, tb)}
    ea, eb = ia.get(ta), ib.get(tb)
    if ea is None or eb is None or ea.get("meta-type") != eb.get("meta-type"):
        out.append(f"{path}: {_describe(ea)} vs {_describe(eb)}")
        return
    meta = ea["meta-type"]
    _diff_features(out, path, ea, eb)
    if meta == "builtin":
        if ea["name"] != eb["name"]:
            out.append(f"{path}: builtin {ea['name']} vs {eb['name']}")
    elif meta == "enum":
        va, vb = _enum_names(ea), _enum_names(eb)
        if (va if ordered else sorted(va)) != (vb if ordered else sorted(vb)):
            only_a, only_b = [v for v in va if v not in vb], [v for v in vb if v not in va]
            detail = f"only in a {only_a}, only in b {only_b}" if only_a or only_b else f"order {va} vs {vb}"
            out.append(f"{path}: enum values differ: {detail}")
        fa = {mem["name"]: mem for mem in ea.get("members", ())}
        fb = {mem["name"]: mem for mem in eb.get("members", ())}
        for value in fa.keys() & fb.keys():
            _diff_features(out, f"{path}={value}", fa[value], fb[value])
    elif meta == "array":
        _diff_type(out, ia, ib, ea["element-type"], eb["element-type"], path + "[]", seen, ordered)
    elif meta == "alternate":
        ma, mb = ea["members"], eb["members"]
        if not ordered:  # pair the branches by what they are
            ma = sorted(ma, key=lambda x: _describe(ia.get(x["type"])))
            mb = sorted(mb, key=lambda x: _describe(ib.get(x["type"])))
        if len(ma) != len(mb):
            out.append(f"{path}: alternate of {[_describe(ia.get(x['type'])) for x in ma]} "
                       f"vs {[_describe(ib.get(x['type'])) for x in mb]}")
        for i, (xa, xb) in enumerate(zip(ma, mb)):
            _diff_type(out, ia, ib, xa["type"], xb["type"], f"{path}|{i}", seen, ordered)
    elif meta == "object":
        _diff_object(out, ia, ib, ea, eb, path, seen, ordered)


def _diff_object(out: list[str], ia: Mapping[str, Mapping[str, Any]], ib: Mapping[str, Mapping[str, Any]],
                 ea: Mapping[str, Any], eb: Mapping[str, Any], path: str, seen: frozenset[tuple[str, str]],
                 ordered: bool) -> None:
    ma = {mem["name"]: mem for mem in ea.get("members", ())}
    mb = {mem["name"]: mem for mem in eb.get("members", ())}
    out.extend(f"{path}.{name}: only in a" for name in ma if name not in mb)
    out.extend(f"{path}.{name}: only in b" for name in mb if name not in ma)
    common = [n for n in ma if n in mb]
    if ordered and common != [n for n in mb if n in ma]:
        out.append(f"{path}: member order {common} vs {[n for n in mb if n in ma]}")
    for name in common:
        sub = f"{path}.{name}"
        if ("default" in ma[name]) != ("default" in mb[name]):
            out.append(f"{sub}: {'optional' if 'default' in ma[name] else 'required'} vs "
                       f"{'optional' if 'default' in mb[name] else 'required'}")
        _diff_features(out, sub, ma[name], mb[name])
        _diff_type(out, ia, ib, ma[name]["type"], mb[name]["type"], sub, seen, ordered)
    if ea.get("tag") != eb.get("tag"):
        out.append(f"{path}: tag {ea.get('tag')} vs {eb.get('tag')}")
        return
    va = {v["case"]: v["type"] for v in ea.get("variants", ())}
    vb = {v["case"]: v["type"] for v in eb.get("variants", ())}
    out.extend(f"{path}[{ea['tag']}={case}]: only in a" for case in va if case not in vb)
    out.extend(f"{path}[{ea['tag']}={case}]: only in b" for case in vb if case not in va)
    for case in [c for c in va if c in vb]:
        _diff_type(out, ia, ib, va[case], vb[case], f"{path}[{ea['tag']}={case}]", seen, ordered)
