"""The commands' fast argument checkers (bitlab/qmp/qapi.py ``fast_checker``) must return exactly
what QEMU's input visitor (bitlab's ``Visitor``) returns, and leave every other case to it."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitlab import QMPError
from bitlab.qmp import TABLE
from bitlab.qmp.qapi import Alternate, Array, Builtin, Enum, NotFast, Struct, Union_, Visitor, fast_checker

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=False),
                    st.text(max_size=4), st.sampled_from([0, -1, 255, 256, 65536, (1 << 31), (1 << 63), (1 << 64)]))
NAMES = ["node", "name", "driver", "x", "file", "granularity"]


def junk() -> st.SearchStrategy:
    return st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)),
                        max_leaves=6)


def values(qtype, depth: int = 0) -> st.SearchStrategy:
    """Mostly well-formed values of ``qtype``, now and then something else (a wrong type, a member
    missing or unexpected), so both the fast path and its hand-over are exercised."""
    return st.one_of(_valid(qtype, depth), junk()) if depth < 4 else junk()


def _valid(qtype, depth: int) -> st.SearchStrategy:
    if isinstance(qtype, Builtin):
        return {"str": st.text(max_size=6), "bool": st.booleans(), "null": st.none(),
                "number": st.one_of(st.floats(allow_nan=False), st.integers(-(1 << 65), 1 << 65)),
                "any": junk()}.get(qtype.name, st.integers(-(1 << 65), (1 << 65)))
    if isinstance(qtype, Enum):
        return st.one_of(st.sampled_from(qtype.values), st.text(max_size=3))
    if isinstance(qtype, Array):
        return st.lists(values(qtype.element, depth + 1), max_size=3)
    if isinstance(qtype, Alternate):
        return st.one_of(*[values(c, depth + 1) for c in qtype.choices])
    if isinstance(qtype, Struct):
        return _members(qtype.all_members(), depth)
    if isinstance(qtype, Union_):
        return st.sampled_from(sorted(qtype.variants)).flatmap(
            lambda tag: _members(qtype.base.all_members() + qtype.variants[tag].all_members(), depth,
                                 {qtype.discriminator: st.just(tag)}))
    raise TypeError(qtype)


def _members(members, depth: int, fixed: dict | None = None) -> st.SearchStrategy:
    fixed = fixed or {}
    parts = {m.name: fixed[m.name] if m.name in fixed else values(m.type, depth + 1) for m in members}
    optional = [m.name for m in members if m.optional]
    return st.tuples(st.fixed_dictionaries(parts), st.sets(st.sampled_from(optional or [""])),
                     st.dictionaries(st.sampled_from(NAMES), SCALARS, max_size=1), st.integers(0, 9)).map(
        lambda t: _shape(*t, members))


def _shape(full: dict, drop: set, extra: dict, roll: int, members) -> dict:
    out = {k: v for k, v in full.items() if k not in drop}
    if roll == 0 and extra:  # an unexpected member now and then
        out.update(extra)
    if roll == 1 and members:  # a required member missing now and then
        out.pop(members[0].name, None)
    return out


def generic(cmd, args):
    return TABLE.visit_args(cmd, args)


def same(a, b) -> bool:
    """Equal, with the same member order and the same JSON types (1 and 1.0 differ)."""
    return json.dumps(a) == json.dumps(b) and repr(a) == repr(b)


COMMANDS = sorted(TABLE.commands)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(COMMANDS).flatmap(
    lambda name: st.tuples(st.just(name), values(TABLE.commands[name].args) if TABLE.commands[name].args
                           else st.one_of(st.just({}), junk()))))
def test_fast_checker_agrees_with_the_visitor(case):
    name, args = case
    cmd = TABLE.commands[name]
    try:
        want = generic(cmd, args)
    except QMPError as err:
        want = err
    try:
        got = cmd.checker(args)
    except NotFast:
        return  # the visitor decides, as check_args does
    assert not isinstance(want, QMPError), f"{name}: fast path accepted what QEMU refuses: {want}"
    assert same(got, want), name


def test_the_seed_arguments_take_the_fast_path():
    """blockdev-add with blkdebug rules and a backup transaction: well-formed, so no hand-over."""
    from tests.trace_replay import commands

    for mode in ("individual", "grouped"):
        for kind, item in commands(mode):
            if kind == "cmd":
                execute, args_json = item
                args = json.loads(args_json) or {}
                cmd = TABLE.commands[execute]
                assert same(cmd.checker(args), generic(cmd, args)), execute


def test_errors_keep_qemu_texts():
    """Refusals come from the visitor, word for word."""
    cmd = TABLE.commands["block-dirty-bitmap-add"]
    for args, text in (({"node": "d", "name": "b", "granularity": 1.5}, "Parameter 'granularity' expects uint64"),
                       ({"node": "d"}, "Parameter 'name' is missing"),
                       ({"node": "d", "name": "b", "x": 1}, "Parameter 'x' is unexpected")):
        try:
            TABLE.check_args(cmd, args)
        except QMPError as err:
            assert err.desc == text
        else:
            raise AssertionError(args)


BOUNDARIES = [None, True, False, 0, 1, -1, 0.0, 1.5, -2.5, "", "x", [], {}, 127, 128, -128, -129, 255, 256, 65535,
              65536, -32769, (1 << 31) - 1, 1 << 31, -(1 << 31) - 1, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63,
              -(1 << 63), -(1 << 63) - 1, (1 << 64) - 1, 1 << 64, -(1 << 64)]


def test_builtins_agree_at_every_boundary():
    """Every builtin and enum the commands use, at the edges of every integer range and with every JSON type."""
    seen, todo = {}, [cmd.args for cmd in TABLE.commands.values() if cmd.args is not None]
    while todo:
        qtype = todo.pop()
        if id(qtype) in seen:
            continue
        seen[id(qtype)] = qtype
        if isinstance(qtype, (Struct,)):
            todo += [m.type for m in qtype.all_members()]
        elif isinstance(qtype, Union_):
            todo += [m.type for m in qtype.base.all_members()]
            todo += [m.type for v in qtype.variants.values() for m in v.all_members()]
        elif isinstance(qtype, Array):
            todo.append(qtype.element)
        elif isinstance(qtype, Alternate):
            todo += list(qtype.choices)
    leaves = [t for t in seen.values() if isinstance(t, (Builtin, Enum))]
    assert {t.name for t in leaves if isinstance(t, Builtin)} >= {"str", "bool", "int", "int64", "uint32", "null"}
    fast_hits = 0
    for qtype in leaves:
        values_ = BOUNDARIES + (list(qtype.values) if isinstance(qtype, Enum) else [])
        for value in values_:
            try:
                want = Visitor().visit(qtype, value, "m", "m")
            except QMPError as err:
                want = err
            try:
                got = fast_checker(qtype)(value)
            except NotFast:
                continue
            fast_hits += 1
            assert not isinstance(want, QMPError), (qtype, value)
            assert same(got, want), (qtype, value)
    assert fast_hits > len(leaves)  # the fast path is taken, not only handed over
