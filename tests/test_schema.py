"""query-qmp-schema: bitlab's introspection against real QEMU 7.2's.

The recorded schemas (tests/data/schema/*.json.gz, made by record.py there) are
qemu-storage-daemon's and ``qemu-system-x86_64 -M none``'s replies to
query-version, query-qmp-schema and query-commands (query-events: QEMU 7.2 has
no such command any more).
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bitlab import Machine, introspect
from bitlab.qmp import TABLE
from bitlab.qmp.events import EVENTS
from bitlab.qmp.qapi import Alternate, Array, Builtin, Enum, Member, QType, Struct, Union_, Visitor, wire_order
from bitlab.qmp.schema import Event, SchemaInfo, generate, own_members, schema_info
from bitlab.qmp.types import ObjectOptions, ObjectType
from bitlab.scenarios import run_seed

DATA = Path(__file__).parent / "data" / "schema"


@cache
def recorded(kind: str) -> dict:
    with gzip.open(DATA / f"{kind}-7.2.json.gz", "rt") as fh:
        return json.load(fh)


def qemu_schema(kind: str) -> list[dict]:
    return recorded(kind)["query-qmp-schema"]


def reference_for(name: str) -> list[dict]:
    """qemu-storage-daemon's schema, or the system emulator's for what qsd lacks (HMP)."""
    qsd = qemu_schema("qsd")
    return qsd if introspect.has_command(qsd, name) or introspect.has_event(qsd, name) else qemu_schema("system")


# -- where bitlab deliberately (or knowingly) differs from QEMU 7.2 ---------------------------

# object types bitlab does not simulate, but those that have no members in QEMU 7.2 either
UNSIMULATED_OBJECTS = [t for t in ObjectType.values
                       if t not in ObjectOptions.variants and t not in ("can-bus", "pef-guest", "s390-pv-guest")]

EXPECTED_DIFFERENCES: dict[str, dict[str, str]] = {
    "object-add": {
        **{f"args[qom-type={t}]": "bitlab does not simulate this object type: it takes only the base members"
           for t in UNSIMULATED_OBJECTS},
    },
    "human-monitor-command": {
        "human-monitor-command: features [] vs ['savevm-monitor-nodes']":
            "bitlab's HMP has no savevm/loadvm, so it does not claim how they pick nodes",
    },
}
"""Command -> {difference line (or a prefix of it, ending at a path) -> why}. One place for all."""


def _explained(command: str, line: str) -> bool:
    return any(line == key or line.startswith(key + ".") or line.startswith(key + ":")
               or line.startswith(key + "[") for key in EXPECTED_DIFFERENCES.get(command, {}))


# -- the comparison -------------------------------------------------------------------------


def _entities() -> list[str]:
    return [*TABLE.commands, *EVENTS]


@pytest.mark.parametrize("name", _entities())
def test_structure_matches_qemu(name: str) -> None:
    """Arguments, reply and event data resolve to QEMU 7.2's trees, but for the listed exceptions."""
    lines = introspect.differences(schema_info(), reference_for(name), name)
    unexplained = [line for line in lines if not _explained(name, line)]
    assert unexplained == [], f"{name} differs from QEMU 7.2 (a = bitlab, b = QEMU)"


@pytest.mark.parametrize("command", sorted(EXPECTED_DIFFERENCES))
def test_expected_differences_are_still_real(command: str) -> None:
    """An exception that no longer matches a difference must be deleted."""
    lines = introspect.differences(schema_info(), reference_for(command), command)
    for key in EXPECTED_DIFFERENCES[command]:
        assert any(line == key or line.startswith((key + ".", key + ":", key + "[")) for line in lines), key


def test_comparison_summary() -> None:
    """Every command and event but the two listed is identical to QEMU's (modulo masked names)."""
    differing = [n for n in _entities() if introspect.differences(schema_info(), reference_for(n), n)]
    assert sorted(differing) == ["human-monitor-command", "object-add"]


def test_every_command_and_event_appears() -> None:
    schema = schema_info()
    assert [e["name"] for e in schema if e["meta-type"] == "command"] == list(TABLE.commands)
    assert [e["name"] for e in schema if e["meta-type"] == "event"] == list(EVENTS)
    assert {"query-qmp-schema", "query-commands", "query-version"} <= set(TABLE.commands)
    listed = Machine().qmp("query-commands")
    assert sorted(c["name"] for c in listed) == sorted(e["name"] for e in schema if e["meta-type"] == "command")


def test_no_query_events() -> None:
    """QEMU 7.2 removed query-events (clients read the schema); bitlab has none either."""
    for kind in ("qsd", "system"):
        assert "has not been found" in recorded(kind)["query-events"]["error"]
    assert "query-events" not in TABLE.commands


def test_features_as_qemu() -> None:
    schema = schema_info()
    assert introspect.features(schema, "drive-backup") == {"deprecated"}
    assert introspect.features(schema, "x-debug-block-dirty-bitmap-sha256") == {"unstable"}
    assert introspect.features(schema, "blockdev-backup", "x-perf") == {"unstable"}
    actions = [e for e in schema if e["meta-type"] == "enum" and "drive-backup" in e["values"]]
    assert [mem for mem in actions[0]["members"] if mem["name"] == "drive-backup"] == [
        {"name": "drive-backup", "features": ["deprecated"]}]


# -- the generator is QEMU's introspect.py ------------------------------------------------------


def _rebuild(schema: list[dict]) -> tuple[list[Any], dict, dict]:
    """Turn a SchemaInfo list back into bitlab QAPI objects (named by their masked numbers)."""
    idx = {e["name"]: e for e in schema}
    made: dict[str, QType] = {}
    type_features: dict[str, tuple[str, ...]] = {}

    def get(name: str) -> QType:
        if name in made:
            return made[name]
        entry = idx[name]
        meta = entry["meta-type"]
        if meta == "builtin":
            made[name] = Builtin(name)
        elif meta == "array":
            made[name] = Array(get(entry["element-type"]))
        elif meta == "enum":
            made[name] = Enum(name, tuple(entry["values"]))
            for mem in entry["members"]:
                if "features" in mem:
                    type_features[f"{name}.{mem['name']}"] = tuple(mem["features"])
        elif meta == "alternate":
            alt = made[name] = Alternate(name, ())
            object.__setattr__(alt, "choices", tuple(get(mem["type"]) for mem in entry["members"]))
        else:
            owner = name + "-base" if "variants" in entry else name
            struct = Struct(owner, ())
            made[name] = Union_(name, struct, entry["tag"], {}) if "variants" in entry else struct
            members = []
            for mem in entry["members"]:
                members.append(Member(mem["name"], get(mem["type"]), "default" in mem))
                if "features" in mem:
                    type_features[f"{owner}.{mem['name']}"] = tuple(mem["features"])
            object.__setattr__(struct, "members", tuple(members))
            for variant in entry.get("variants", ()):
                made[name].variants[variant["case"]] = get(variant["type"])  # type: ignore[union-attr]
        if "features" in entry:
            type_features[name] = tuple(entry["features"])
        return made[name]

    entities: list[Any] = []
    command_features: dict[str, tuple[str, ...]] = {}
    for entry in schema:
        if entry["meta-type"] == "command":
            entities.append(SimpleNamespace(name=entry["name"], args=get(entry["arg-type"]),
                                            returns=get(entry["ret-type"]), allow_oob=entry.get("allow-oob", False)))
        elif entry["meta-type"] == "event":
            entities.append(Event(entry["name"], get(entry["arg-type"])))  # type: ignore[arg-type]
        else:
            continue
        if "features" in entry:
            command_features[entry["name"]] = tuple(entry["features"])
    return entities, command_features, type_features


def _renumber(schema: list[dict]) -> list[dict]:
    """Drop unreferenced types and close the gaps in the masked numbers, keeping their order.

    QEMU numbers types when it generates C, before ``#if`` drops what the build lacks: a
    build without CONFIG_BLKIO skips the numbers of the io_uring/virtio-blk-* branches, and
    a type used only by a compiled-out command (the system emulator's s390x-only
    query-cpu-model-comparison) is still listed, used by nothing.
    """
    used = {r for e in schema for r in _references(e)}
    kept = [e for e in schema if e["meta-type"] in ("command", "event") or e["name"] in used]
    masked = sorted((e["name"] for e in kept if e["name"].isdigit()), key=int)
    rank = {name: str(i) for i, name in enumerate(masked)}

    def ren(name: str) -> str:
        return f"[{ren(name[1:-1])}]" if name.startswith("[") else rank.get(name, name)

    out = []
    for entry in kept:
        new: dict = {}
        for key, value in entry.items():
            if key in ("arg-type", "ret-type", "element-type") or (key == "name" and entry["meta-type"] not in (
                    "command", "event")):
                value = ren(value)
            elif key in ("members", "variants") and entry["meta-type"] != "enum":
                value = [{k: ren(v) if k == "type" else v for k, v in mem.items()} for mem in value]
            new[key] = value
        out.append(new)
    return out


def test_generator_reproduces_qemu_exactly() -> None:
    """Fed qemu-storage-daemon's own commands and types, the generator writes its reply: the same
    masked numbers (up to the build's gaps), entry order, member order, and after QDict ordering
    the same bytes."""
    real = _renumber(qemu_schema("qsd"))
    entities, command_features, type_features = _rebuild(real)
    made = generate(entities, command_features=command_features, type_features=type_features)
    assert made == real
    assert json.dumps(wire_order(made)) == json.dumps(real)


def test_generator_reproduces_system_emulator() -> None:
    """The system emulator's schema comes back with the same entries and structure. Its numbers
    can differ: QEMU numbered CpuModelInfo when the s390x-only query-cpu-model-comparison (not
    built for x86) first used it, which the runtime schema cannot show."""
    real = _renumber(qemu_schema("system"))
    entities, command_features, type_features = _rebuild(real)
    made = generate(entities, command_features=command_features, type_features=type_features)
    assert len(made) == len(real)
    assert [e["name"] for e in made if e["meta-type"] in ("command", "event")] == [
        e["name"] for e in real if e["meta-type"] in ("command", "event")]
    for entity in entities:
        assert introspect.differences(made, real, entity.name) == [], entity.name


def test_qemu_numbering_has_gaps() -> None:
    """Why bitlab's numbers are contiguous but QEMU's are not (see _renumber)."""
    qsd = qemu_schema("qsd")
    numbers = sorted(int(e["name"]) for e in qsd if e["name"].isdigit())
    assert sorted(set(range(numbers[-1] + 1)) - set(numbers)) == [122, 129, 140, 141, 142]
    system = qemu_schema("system")
    used = {r for e in system for r in _references(e)}
    assert [e["name"] for e in system if e["meta-type"] not in ("command", "event") and e["name"] not in used] == [
        "393", "484"]


def test_wire_key_order_as_qemu() -> None:
    """Every kind of entry bitlab sends has its keys in the order QEMU sends them."""
    reply = TABLE.dispatch(Machine(), {"execute": "query-qmp-schema"})["return"]
    qemu_orders = {tuple(sorted(e)): list(e) for e in qemu_schema("system")}
    for entry in reply:
        assert list(entry) == qemu_orders[tuple(sorted(entry))], entry
        for mem in entry.get("members", ()):
            same = [m for e in qemu_schema("system") for m in e.get("members", ()) if sorted(m) == sorted(mem)]
            assert list(mem) == list(same[0]), mem


# -- masking, stability ----------------------------------------------------------------------


def _references(entry: dict) -> list[str]:
    """Type names an entry refers to, in the order the generator used them."""
    refs = [entry[k] for k in ("arg-type", "ret-type", "element-type") if k in entry]
    if entry["meta-type"] in ("object", "alternate"):
        refs += [mem["type"] for mem in entry["members"]]
    refs += [v["type"] for v in entry.get("variants", ())]
    return refs


def test_masked_names_consistent() -> None:
    schema = schema_info()
    defined = [e["name"] for e in schema if e["meta-type"] not in ("command", "event")]
    assert len(defined) == len(set(defined)), "a type is defined twice"
    refs = [r for e in schema for r in _references(e)]
    assert set(refs) == set(defined), "a type is used but not defined, or defined but never used"
    builtins = {e["name"] for e in schema if e["meta-type"] == "builtin"}
    assert builtins <= {"str", "int", "number", "bool", "null", "any"}
    masked = [n for n in defined if n not in builtins and not n.startswith("[")]
    assert sorted(masked, key=int) == [str(i) for i in range(len(masked))]
    # numbers are handed out in order of first use
    order = list(dict.fromkeys(r.strip("[]") for r in refs if r.strip("[]") not in builtins))
    assert order == [str(i) for i in range(len(order))]
    for e in schema:
        if e["meta-type"] == "array":
            assert e["name"] == f"[{e['element-type']}]"


def test_unmasked_names_are_qemus() -> None:
    names = {e["name"] for e in schema_info(unmask=True)}
    assert {"q_empty", "BlockDeviceInfo", "ImageInfo", "[BlockDirtyInfo]", "TransactionAction", "JobStatus",
            "q_obj_transaction-arg", "SchemaInfo", "[str]"} <= names


def test_stable_between_calls() -> None:
    first = json.dumps(TABLE.dispatch(Machine(), {"execute": "query-qmp-schema", "id": 1}))
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": 1 << 20})
    assert json.dumps(TABLE.dispatch(vm, {"execute": "query-qmp-schema", "id": 1})) == first
    assert schema_info() == schema_info()


def test_same_name_same_type() -> None:
    """Two bitlab type objects with one QAPI name must describe the same type (the schema shows one)."""
    seen: dict[str, tuple] = {}

    def shallow(q: QType) -> tuple:
        if isinstance(q, Struct):
            return tuple((o, m.name, m.optional, m.type.name) for o, m in own_members(q))
        if isinstance(q, Union_):
            return (shallow(q.base), q.discriminator, tuple((c, s.name) for c, s in q.variants.items()))
        if isinstance(q, Enum):
            return q.values
        if isinstance(q, Alternate):
            return tuple(c.name for c in q.choices)
        return (q.name,)

    def walk(q: QType, done: set[int]) -> None:
        if id(q) in done:
            return
        done.add(id(q))
        assert seen.setdefault(q.name, shallow(q)) == shallow(q), q.name
        if isinstance(q, Array):
            walk(q.element, done)
        elif isinstance(q, Struct):
            for _, mem in own_members(q):
                walk(mem.type, done)
        elif isinstance(q, Union_):
            walk(q.base, done)
            for branch in q.variants.values():
                walk(branch, done)
        elif isinstance(q, Alternate):
            for c in q.choices:
                walk(c, done)

    done: set[int] = set()
    for cmd in TABLE.commands.values():
        for q in (cmd.args, cmd.returns):
            if q is not None:
                walk(q, done)
    for data in EVENTS.values():
        if data is not None:  # (STOP, RESUME: no data)
            walk(data, done)


# -- what bitlab sends matches what its schema (and QEMU's) says ---------------------------------


def _ret_type(schema: list[dict], command: str) -> str:
    return introspect.index(schema)[command]["ret-type"]


def test_schema_reply_is_valid_schemainfo() -> None:
    reply = TABLE.dispatch(Machine(), {"execute": "query-qmp-schema"})["return"]
    Visitor().visit(Array(SchemaInfo), reply, None, "")
    assert introspect.accepts(qemu_schema("qsd"), _ret_type(qemu_schema("qsd"), "query-qmp-schema"), reply)


@pytest.fixture(scope="module")
def played() -> list[Machine]:
    """Machines that went through the seed scenario (both modes), with queries while jobs ran."""
    out = []
    for mode in ("individual", "grouped"):
        vm = run_seed(mode).machine
        vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "extra", "granularity": 65536})
        vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "drive0", "name": "extra"})
        vm.qmp("drive-backup", {"device": "drive0", "target": "x.qcow2", "sync": "full", "format": "qcow2",
                                "speed": 1 << 20, "auto-dismiss": False})
        vm.run(until=vm.now + 0.5)
        for name in ("query-jobs", "query-block-jobs", "query-block", "query-version", "query-commands"):
            vm.qmp(name)
        vm.qmp("query-named-block-nodes", {"flat": True})
        vm.qmp("query-named-block-nodes")
        root = next(b["inserted"]["node-name"] for b in vm.qmp("query-block") if b["device"] == "drive0")
        vm.qmp("block-set-write-threshold", {"node-name": root, "write-threshold": 4096})
        vm.qmp("human-monitor-command", {"command-line": 'qemu-io drive0 "write 0 64k"'})
        vm.qmp("stop")
        vm.qmp("query-status")
        vm.qmp("cont")
        vm.qmp("job-cancel", {"id": "drive0"})
        vm.run()
        vm.qmp("query-jobs")
        vm.qmp("job-dismiss", {"id": "drive0"})
        vm.qmp("drive-backup", {"device": "drive1", "target": "y.qcow2", "sync": "full", "format": "qcow2",
                                "auto-finalize": False})
        vm.run()
        vm.qmp("query-block-jobs")
        vm.qmp("job-finalize", {"id": "drive1"})
        vm.run()
        vm.qmp("drive-mirror", {"device": "drive1", "target": "z.qcow2", "sync": "full", "format": "qcow2"})
        vm.run()
        vm.qmp("query-block-jobs")
        vm.qmp("job-complete", {"id": "drive1"})
        vm.run()
        vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "exported", "size": 1 << 20})
        vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
        vm.qmp("block-export-add", {"type": "nbd", "id": "e0", "node-name": "exported"})
        vm.qmp("query-block-exports")
        vm.qmp("nbd-server-stop")
        out.append(vm)
    vm = Machine(daemon="system")  # the system emulator's quit: SHUTDOWN
    vm.qmp("quit")
    out.append(vm)
    return out


def _replies(vm: Machine) -> list[tuple[str, Any]]:
    pairs, pending = [], None
    for item in vm.transcript:
        if item["kind"] == "cmd":
            pending = item["message"].get("execute")
        elif item["kind"] == "reply" and "return" in item["message"]:
            pairs.append((pending, item["message"]["return"]))
    return pairs


def test_replies_match_declared_types(played: list[Machine]) -> None:
    """Every reply bitlab sent fits its command's declared type, in bitlab's schema and in QEMU's."""
    mine = schema_info()
    checked = set()
    for vm in played:
        for command, value in _replies(vm):
            declared = TABLE.commands[command].returns
            if declared is None:
                assert value == {}, command
            else:
                Visitor().visit(declared, value, None, "")
            assert introspect.accepts(mine, _ret_type(mine, command), value), command
            ref = reference_for(command)
            assert introspect.accepts(ref, _ret_type(ref, command), value), command
            checked.add(command)
    assert {"query-jobs", "query-block-jobs", "query-block", "query-named-block-nodes", "query-version",
            "human-monitor-command", "x-debug-block-dirty-bitmap-sha256", "transaction", "query-status"} <= checked


def test_events_match_declared_types(played: list[Machine]) -> None:
    """Every event bitlab sent is declared, and its data fits the declared type (and QEMU's)."""
    mine = schema_info()
    sent = set()
    for vm in played:
        for ev in vm.events:
            name = ev["event"]
            assert name in EVENTS, name
            data = EVENTS[name]
            if data is None:
                assert "data" not in ev, name
            else:
                Visitor().visit(data, ev["data"], None, "")
            for schema in (mine, reference_for(name)):
                assert introspect.accepts(schema, introspect.index(schema)[name]["arg-type"], ev.get("data", {}))
            sent.add(name)
    assert sent == set(EVENTS), "an event is declared but never seen in the scenario"


# -- the recording is today's QEMU ----------------------------------------------------------------


@pytest.mark.qemu
def test_recording_matches_live_qemu_storage_daemon() -> None:
    """The recorded qsd schema is what the installed qemu-storage-daemon says now (else re-record)."""
    import asyncio
    import importlib.util

    spec = importlib.util.spec_from_file_location("record_schema", DATA / "record.py")
    assert spec is not None and spec.loader is not None
    record = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(record)
    live = asyncio.run(record._record("qsd"))
    assert live["query-qmp-schema"] == qemu_schema("qsd"), "run tests/data/schema/record.py"
    assert live["query-version"]["qemu"]["major"] == 7 and live["query-version"]["qemu"]["minor"] == 2
