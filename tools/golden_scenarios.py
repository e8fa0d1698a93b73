"""Scenarios replayed against real QEMU 7.2 by ``tools/capture_golden.py``.

``SCENARIOS`` is a list of ``{"group", "name", "steps"}`` dicts; each group is
written to ``tests/golden/<group>.json``.  Every scenario starts a fresh
qemu-storage-daemon whose cwd is a fresh, empty work directory; the literal
string ``WORKDIR`` in a step is replaced by that directory's absolute path.

Step kinds (one key per step, plus an optional ``"settle": seconds`` to wait
for asynchronous events before the next step):

* ``{"qemu-img": [args...]}`` -- run qemu-img in the work directory.
* ``{"qmp": {"execute": ..., "arguments": ...}}`` -- sent verbatim (no ``id``).
* ``{"write" | "zero" | "discard": {"node", "offset", "length"[, "pattern"]}}``
  -- guest I/O through a lazily created writable NBD export of ``node``
  (qemu-io ``write -P``, ``write -z``, ``discard``).
* ``{"restart": True}`` -- quit the daemon cleanly and start a new one
  (same work directory, no nodes); ``{"kill": True}`` -- SIGKILL instead.
* ``{"write": {..., "flush": False}}`` -- the write goes through a minimal NBD
  client that sends no flush (qemu-io flushes on close, which fires blkdebug's
  ``flush_to_disk`` event); ``{"flush": {"node"}}`` -- qemu-io ``flush`` over NBD.
* ``{"hmp": "command line"}`` -- human-monitor-command (system emulator; the
  qemu-io text it prints to stdout is recorded as the step's ``stdout``).
* ``{"wait-job": {"id", "status"[, "timeout"]}}`` -- wait until a
  JOB_STATUS_CHANGE with that id and status has arrived since the job's latest
  ``created`` (each such event satisfies one wait-job step; the transaction
  drain's ``paused`` counts too); ``{"settle-jobs": True}`` -- poll query-jobs
  (unrecorded, every 5 ms, up to 20 s) until it is ``[]`` or every job is
  concluded, pending or paused on two polls in a row.  Both record only
  ``{"ok": true}`` or ``{"timeout": true}``; events go to the step they arrive in.

Scenario keys besides ``group``, ``name``, ``steps``: ``"machine": "system"``
with ``"drives": [{"id", "file", "format", "size"[, "blkdebug": {...}]}]`` runs
``qemu-system-x86_64 -M none`` with those ``-drive if=none`` devices instead of
qemu-storage-daemon; ``"mark-reply": True`` records ``events-before-reply``.

Never add ``block-dirty-bitmap-merge`` with ``"bitmaps": []``: it crashes
QEMU 7.2 (SIGSEGV), see /work/shared/reference/real-qemu.md.  The same goes for
a ``block-dirty-bitmap-enable`` transaction action naming a missing bitmap, a
transaction that touches bitmap X and then rolls back a backup of X with
``bitmap-mode: always`` (use after free), and a grouped transaction in which an
action fails after two backup jobs were created (never replies).
"""

from __future__ import annotations

from typing import Any

Step = dict[str, Any]

K = 1 << 10
M = 1 << 20
G = 1 << 30
SIZE = 64 * M

GROUPS = (
    "bitmap_add",
    "bitmap_manage",
    "bitmap_merge",
    "bitmap_sha256",
    "blockdev",
    "guest_io",
    "qapi_errors",
    "qemu_img",
    "jobs",
    "backup_errors",
    "backup_sync",
    "backup_sync_full_top",
    "transaction",
    "blkdebug",
    "system",
    "nbd_export",
)


# --- step builders ------------------------------------------------------------


def qmp(execute: str, arguments: Any = None, settle: float | None = None) -> Step:
    """Build a QMP command step; ``settle`` waits for asynchronous events afterwards."""
    msg: dict[str, Any] = {"execute": execute}
    if arguments is not None:
        msg["arguments"] = arguments
    step: Step = {"qmp": msg}
    if settle is not None:
        step["settle"] = settle
    return step


def raw(msg: dict[str, Any]) -> Step:
    """Send a QMP message exactly as given (may be malformed on purpose)."""
    return {"qmp": msg}


def img(*args: str) -> Step:
    """Run qemu-img."""
    return {"qemu-img": list(args)}


def add(node: str, name: str, **kw: Any) -> Step:
    """block-dirty-bitmap-add (``kw``: granularity, persistent, disabled)."""
    return qmp("block-dirty-bitmap-add", {"node": node, "name": name, **kw})


def bm(cmd: str, node: str, name: str) -> Step:
    """block-dirty-bitmap-{remove,clear,enable,disable}."""
    return qmp(f"block-dirty-bitmap-{cmd}", {"node": node, "name": name})


def merge(node: str, target: str, bitmaps: Any) -> Step:
    """block-dirty-bitmap-merge."""
    return qmp("block-dirty-bitmap-merge", {"node": node, "target": target, "bitmaps": bitmaps})


def sha(node: str, name: str) -> Step:
    """x-debug-block-dirty-bitmap-sha256."""
    return qmp("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": name})


def nodes(flat: bool = True) -> Step:
    """query-named-block-nodes."""
    return qmp("query-named-block-nodes", {"flat": flat})


def null(name: str, size: int = SIZE, **kw: Any) -> Step:
    """blockdev-add of a null-co node."""
    return qmp("blockdev-add", {"driver": "null-co", "node-name": name, "size": size, **kw})


def qcow2(name: str, filename: str, **kw: Any) -> Step:
    """blockdev-add of a qcow2 node over a file node named ``f-<name>``."""
    file = {"driver": "file", "node-name": f"f-{name}", "filename": filename}
    return qmp("blockdev-add", {"driver": "qcow2", "node-name": name, "file": file, **kw})


def raw_node(name: str, filename: str, **kw: Any) -> Step:
    """blockdev-add of a raw node over a file node named ``f-<name>``."""
    file = {"driver": "file", "node-name": f"f-{name}", "filename": filename}
    return qmp("blockdev-add", {"driver": "raw", "node-name": name, "file": file, **kw})


def create(filename: str, size: str = "64M", fmt: str = "qcow2", *opts: str) -> Step:
    """qemu-img create."""
    return img("create", "-f", fmt, *opts, filename, size)


def write(node: str, offset: int, length: int, pattern: int = 0x41) -> Step:
    """Write ``pattern`` bytes as the guest (NBD)."""
    return {"write": {"node": node, "offset": offset, "length": length, "pattern": pattern}}


def zero(node: str, offset: int, length: int) -> Step:
    """Write zeroes as the guest (NBD ``write -z``)."""
    return {"zero": {"node": node, "offset": offset, "length": length}}


def discard(node: str, offset: int, length: int) -> Step:
    """Discard as the guest (NBD)."""
    return {"discard": {"node": node, "offset": offset, "length": length}}


def scenario(group: str, name: str, *steps: Step) -> dict[str, Any]:
    """Build one scenario."""
    return {"group": group, "name": name, "steps": list(steps)}


# --- 1. block-dirty-bitmap-add ------------------------------------------------

ADD = [
    scenario(
        "bitmap_add",
        "granularity-values",
        null("n0"),
        add("n0", "def"),
        add("n0", "g512", granularity=512),
        add("n0", "g1024", granularity=1024),
        add("n0", "g65536", granularity=65536),
        add("n0", "g2p31", granularity=2**31),
        add("n0", "g2p32", granularity=2**32),
        add("n0", "g2p32m1", granularity=2**32 - 1),
        add("n0", "g3x2p30", granularity=3 * 2**30),
        add("n0", "g2p31p1", granularity=2**31 + 1),
        add("n0", "g2p40", granularity=2**40),
        add("n0", "g2p64", granularity=2**64),
        add("n0", "gm1", granularity=-1),
        add("n0", "gm512", granularity=-512),
        add("n0", "g0", granularity=0),
        add("n0", "g1", granularity=1),
        add("n0", "g256", granularity=256),
        add("n0", "g64000", granularity=64000),
        add("n0", "gfloat", granularity=65536.0),
        add("n0", "gfloat5", granularity=65536.5),
        add("n0", "gstr", granularity="65536"),
        add("n0", "gtrue", granularity=True),
        add("n0", "gnull", granularity=None),
        add("n0", "glist", granularity=[65536]),
        add("n0", "gobj", granularity={"v": 65536}),
        nodes(),
    ),
    scenario(
        "bitmap_add",
        "default-granularity-by-driver",
        create("c64k.qcow2"),
        create("c512.qcow2", "64M", "qcow2", "-o", "cluster_size=512"),
        create("c4k.qcow2", "64M", "qcow2", "-o", "cluster_size=4096"),
        create("c8k.qcow2", "64M", "qcow2", "-o", "cluster_size=8192"),
        create("c2m.qcow2", "64M", "qcow2", "-o", "cluster_size=2M"),
        create("r.raw", "64M", "raw"),
        qcow2("q64k", "c64k.qcow2"),
        qcow2("q512", "c512.qcow2"),
        qcow2("q4k", "c4k.qcow2"),
        qcow2("q8k", "c8k.qcow2"),
        qcow2("q2m", "c2m.qcow2"),
        raw_node("r", "r.raw"),
        null("n0"),
        add("q64k", "b"),
        add("q512", "b"),
        add("q4k", "b"),
        add("q8k", "b"),
        add("q2m", "b"),
        add("r", "b"),
        add("f-r", "b"),
        add("f-q4k", "b"),
        add("n0", "b"),
        nodes(),
    ),
    scenario(
        "bitmap_add",
        "names-and-arguments",
        null("n0"),
        null("n1"),
        add("n0", ""),
        qmp("block-dirty-bitmap-add", {"node": "n0"}),
        qmp("block-dirty-bitmap-add", {"name": "b0"}),
        qmp("block-dirty-bitmap-add", {}),
        qmp("block-dirty-bitmap-add"),
        add("nope", "b0"),
        add("", "b0"),
        add("nope", ""),
        add("nope", "b0", granularity=100),
        add("n0", "", granularity=100),
        add("n0", "b0", granularity=100, persistent=True),
        add("n0", "b0", bogus=1),
        add("n0", "b0", granularity=65536, bogus=1),
        add("n0", "b0"),
        add("n0", "b0"),
        add("n0", "b0", granularity=100),
        add("n0", "b0", granularity=512),
        add("n0", "b0", persistent=True),
        add("n1", "b0"),
        add("n0", "a" * 1023),
        add("n0", "a" * 1024),
        add("n0", "\u00e9" * 400),
        add("n0", "\u00e9" * 511 + "a"),
        add("n0", "\u00e9" * 512),
        add("n0", "\u00e9" * 600),
        add("n0", "with space/and:colon"),
        add("n0", "\u2603"),
        qmp("block-dirty-bitmap-add", {"node": True, "name": "b1"}),
        qmp("block-dirty-bitmap-add", {"node": "n0", "name": 5}),
        qmp("block-dirty-bitmap-add", {"node": "n0", "name": None}),
        add("n0", "p1", persistent="yes"),
        add("n0", "p1", persistent=1),
        add("n0", "p1", disabled="true"),
        add("n0", "dis", disabled=True),
        add("n0", "ena", disabled=False),
        add("n0", "per0", persistent=False),
        nodes(),
    ),
    scenario(
        "bitmap_add",
        "persistent",
        create("d0.qcow2"),
        create("v2.qcow2", "64M", "qcow2", "-o", "compat=0.10"),
        create("r.raw", "64M", "raw"),
        qcow2("q0", "d0.qcow2"),
        qcow2("v2", "v2.qcow2"),
        raw_node("r", "r.raw"),
        null("n0"),
        add("q0", "p", persistent=True),
        add("q0", "p", persistent=True),
        add("q0", "p"),
        add("q0", "t"),
        add("q0", "t", persistent=True),
        add("q0", "g512", persistent=True, granularity=512),
        add("q0", "g2p31", persistent=True, granularity=2**31),
        add("q0", "g256", persistent=True, granularity=256),
        add("q0", "g2p32", persistent=True, granularity=2**32),
        add("q0", "pdis", persistent=True, disabled=True),
        add("q0", "a" * 1023, persistent=True),
        add("q0", "b" * 1024, persistent=True),
        add("r", "p", persistent=True),
        add("f-r", "p", persistent=True),
        add("f-q0", "p", persistent=True),
        add("n0", "p", persistent=True),
        add("v2", "p", persistent=True),
        add("v2", "t", persistent=False),
        create("big.qcow2", "4T"),
        qcow2("big", "big.qcow2"),
        add("big", "p512", persistent=True, granularity=512),
        add("big", "p64k", persistent=True),
        nodes(),
        img("info", "-U", "d0.qcow2"),
        {"restart": True},
        qcow2("q0", "d0.qcow2"),
        nodes(),
        img("info", "-U", "d0.qcow2"),
        img("info", "-U", "--output=json", "d0.qcow2"),
    ),
    scenario(
        "bitmap_add",
        "persistent-read-only-node",
        create("d0.qcow2"),
        qcow2("q0", "d0.qcow2"),
        add("q0", "p", persistent=True),
        {"restart": True},
        qcow2("q0", "d0.qcow2", **{"read-only": True}),
        add("q0", "p2", persistent=True),
        add("q0", "t"),
        bm("clear", "q0", "p"),
        bm("disable", "q0", "p"),
        bm("enable", "q0", "p"),
        add("q0", "t2", persistent=True, granularity=512),
        merge("q0", "p", ["t"]),
        merge("q0", "t", ["p"]),
        sha("q0", "p"),
        bm("remove", "q0", "p"),
        bm("remove", "q0", "t"),
        nodes(),
    ),
    scenario(
        "bitmap_add",
        "persistent-inconsistent-after-kill",
        create("d0.qcow2"),
        qcow2("q0", "d0.qcow2"),
        add("q0", "p", persistent=True),
        add("q0", "p2", persistent=True, disabled=True),
        {"restart": True},
        qcow2("q0", "d0.qcow2"),
        write("q0", 0, 65536),
        nodes(),
        {"kill": True},
        img("info", "-U", "d0.qcow2"),
        qcow2("q0", "d0.qcow2"),
        nodes(),
        bm("clear", "q0", "p"),
        bm("enable", "q0", "p"),
        bm("disable", "q0", "p"),
        add("q0", "t"),
        merge("q0", "t", ["p"]),
        merge("q0", "p", ["t"]),
        sha("q0", "p"),
        add("q0", "p"),
        bm("remove", "q0", "p"),
        bm("remove", "q0", "p2"),
        nodes(),
    ),
    scenario(
        "bitmap_add",
        "disabled-and-order",
        null("n0"),
        add("n0", "a"),
        add("n0", "b", disabled=True),
        add("n0", "c", granularity=512),
        write("n0", 0, 512),
        nodes(),
    ),
]

# --- 2. remove / clear / enable / disable -------------------------------------

MANAGE = [
    scenario(
        "bitmap_manage",
        "lookup-errors",
        null("n0"),
        add("n0", "b0"),
        *[
            step
            for cmd in ("remove", "clear", "enable", "disable")
            for step in (
                bm(cmd, "nope", "b0"),
                bm(cmd, "n0", "nope"),
                bm(cmd, "nope", "nope"),
                bm(cmd, "", "b0"),
                bm(cmd, "n0", ""),
                qmp(f"block-dirty-bitmap-{cmd}", {"node": "n0"}),
                qmp(f"block-dirty-bitmap-{cmd}", {"name": "b0"}),
                qmp(f"block-dirty-bitmap-{cmd}"),
                qmp(f"block-dirty-bitmap-{cmd}", {"node": "n0", "name": "b0", "x": 1}),
                qmp(f"block-dirty-bitmap-{cmd}", {"node": "n0", "name": 1}),
            )
        ],
        nodes(),
    ),
    scenario(
        "bitmap_manage",
        "enable-disable-idempotent",
        null("n0"),
        add("n0", "b0"),
        bm("enable", "n0", "b0"),
        nodes(),
        bm("disable", "n0", "b0"),
        nodes(),
        bm("disable", "n0", "b0"),
        write("n0", 0, 65536),
        nodes(),
        bm("enable", "n0", "b0"),
        bm("enable", "n0", "b0"),
        write("n0", 65536, 65536),
        nodes(),
        bm("clear", "n0", "b0"),
        nodes(),
        bm("clear", "n0", "b0"),
        bm("disable", "n0", "b0"),
        write("n0", 0, 65536),
        bm("clear", "n0", "b0"),
        nodes(),
    ),
    scenario(
        "bitmap_manage",
        "clear-keeps-state",
        null("n0"),
        add("n0", "b0", granularity=4096),
        write("n0", 0, 65536),
        write("n0", 10 * M, 3),
        nodes(),
        sha("n0", "b0"),
        bm("disable", "n0", "b0"),
        bm("clear", "n0", "b0"),
        nodes(),
        sha("n0", "b0"),
    ),
    scenario(
        "bitmap_manage",
        "list-order",
        null("n0"),
        add("n0", "a"),
        add("n0", "b"),
        add("n0", "c"),
        add("n0", "d"),
        nodes(),
        bm("remove", "n0", "b"),
        add("n0", "e"),
        nodes(),
        add("n0", "b"),
        bm("remove", "n0", "d"),
        bm("remove", "n0", "d"),
        nodes(),
        bm("disable", "n0", "a"),
        bm("clear", "n0", "c"),
        nodes(),
        bm("remove", "n0", "a"),
        bm("remove", "n0", "b"),
        bm("remove", "n0", "c"),
        bm("remove", "n0", "e"),
        nodes(),
    ),
    scenario(
        "bitmap_manage",
        "remove-persistent",
        create("d0.qcow2"),
        qcow2("q0", "d0.qcow2"),
        add("q0", "p", persistent=True),
        add("q0", "p2", persistent=True),
        {"restart": True},
        img("info", "-U", "d0.qcow2"),
        qcow2("q0", "d0.qcow2"),
        bm("remove", "q0", "p"),
        img("info", "-U", "d0.qcow2"),
        nodes(),
        {"restart": True},
        img("info", "d0.qcow2"),
    ),
    scenario(
        "bitmap_manage",
        "busy-via-nbd-export",
        null("n0"),
        add("n0", "b0"),
        add("n0", "b1"),
        write("n0", 0, 65536),
        qmp("block-export-add", {"type": "nbd", "id": "e1", "node-name": "n0", "name": "bm", "bitmaps": ["b0"]}),
        qmp(
            "block-export-add",
            {"type": "nbd", "id": "e1", "node-name": "n0", "name": "bm", "writable": True, "bitmaps": ["b0"]},
        ),
        bm("disable", "n0", "b0"),
        qmp(
            "block-export-add",
            {"type": "nbd", "id": "e1", "node-name": "n0", "name": "bm", "writable": True, "bitmaps": ["b0"]},
        ),
        qmp("block-export-add", {"type": "nbd", "id": "e2", "node-name": "n0", "name": "bm2", "bitmaps": ["nope"]}),
        qmp("block-export-add", {"type": "nbd", "id": "e1", "node-name": "n0", "name": "bm", "bitmaps": ["b0"]}),
        nodes(),
        bm("clear", "n0", "b0"),
        bm("enable", "n0", "b0"),
        bm("disable", "n0", "b0"),
        bm("remove", "n0", "b0"),
        merge("n0", "b0", ["b1"]),
        merge("n0", "b1", ["b0"]),
        sha("n0", "b0"),
        nodes(),
        qmp("block-export-del", {"id": "e1"}, settle=0.1),
        qmp("query-block-exports"),
        nodes(),
        bm("remove", "n0", "b0"),
        nodes(),
    ),
]

# --- 3. block-dirty-bitmap-merge ----------------------------------------------
# NB: "bitmaps": [] is deliberately absent -- it crashes QEMU 7.2 with SIGSEGV.

MERGE = [
    scenario(
        "bitmap_merge",
        "same-node",
        null("n0"),
        add("n0", "a"),
        add("n0", "b"),
        add("n0", "t"),
        bm("disable", "n0", "b"),
        write("n0", 0, 65536),
        bm("enable", "n0", "b"),
        bm("disable", "n0", "a"),
        write("n0", 1 * M, 65536),
        merge("n0", "t", ["a", "b"]),
        nodes(),
        sha("n0", "t"),
        merge("n0", "t", [{"node": "n0", "name": "a"}]),
        merge("n0", "t", ["t"]),
        merge("n0", "a", ["a", "a"]),
        nodes(),
        sha("n0", "t"),
    ),
    scenario(
        "bitmap_merge",
        "across-nodes-and-sizes",
        null("n0"),
        null("n1"),
        null("n2", 32 * M),
        add("n0", "a"),
        add("n1", "a"),
        add("n2", "a"),
        write("n1", 0, 65536),
        write("n2", 2 * M, 65536),
        merge("n0", "a", [{"node": "n1", "name": "a"}]),
        nodes(),
        merge("n0", "a", [{"node": "n2", "name": "a"}]),
        merge("n2", "a", [{"node": "n0", "name": "a"}]),
        merge("n0", "a", ["a", {"node": "n2", "name": "a"}]),
        nodes(),
    ),
    scenario(
        "bitmap_merge",
        "granularities",
        null("n0"),
        add("n0", "g64k"),
        add("n0", "g4k", granularity=4096),
        add("n0", "t64k", disabled=True),
        add("n0", "t4k", granularity=4096, disabled=True),
        add("n0", "t512", granularity=512, disabled=True),
        add("n0", "t2m", granularity=2 * M, disabled=True),
        write("n0", 0, 512),
        write("n0", 126976, 8192),
        write("n0", 10 * M + 4096, 4096),
        nodes(),
        sha("n0", "g64k"),
        sha("n0", "g4k"),
        merge("n0", "t64k", ["g4k"]),
        merge("n0", "t4k", ["g64k"]),
        merge("n0", "t512", ["g64k"]),
        merge("n0", "t2m", ["g4k"]),
        nodes(),
        sha("n0", "t64k"),
        sha("n0", "t4k"),
        sha("n0", "t512"),
        sha("n0", "t2m"),
    ),
    scenario(
        "bitmap_merge",
        "disabled-target",
        null("n0"),
        add("n0", "src"),
        add("n0", "dst", disabled=True),
        write("n0", 0, 65536),
        merge("n0", "dst", ["src"]),
        write("n0", 2 * M, 65536),
        nodes(),
    ),
    scenario(
        "bitmap_merge",
        "errors",
        null("n0"),
        null("n1"),
        add("n0", "t"),
        add("n0", "s"),
        add("n1", "x"),
        write("n0", 0, 65536),
        merge("n0", "t", ["nope"]),
        merge("n0", "nope", ["s"]),
        merge("nope", "t", ["s"]),
        merge("n0", "t", [{"node": "nope", "name": "s"}]),
        merge("n0", "t", [{"node": "n1", "name": "nope"}]),
        merge("n0", "t", [{"node": "n1", "name": "s"}]),
        merge("n0", "t", ["s", "nope"]),
        sha("n0", "t"),
        add("n0", "u", disabled=True),
        merge("n0", "u", ["s", "nope"]),
        merge("n0", "u", ["s", {"node": "n1", "name": "x"}, "nope"]),
        sha("n0", "u"),
        merge("n0", "t", "s"),
        merge("n0", "t", {"node": "n0", "name": "s"}),
        merge("n0", "t", 5),
        merge("n0", "t", None),
        merge("n0", "t", [5]),
        merge("n0", "t", [True]),
        merge("n0", "t", [None]),
        merge("n0", "t", [["s"]]),
        merge("n0", "t", [{"node": "n0"}]),
        merge("n0", "t", [{"name": "s"}]),
        merge("n0", "t", [{}]),
        merge("n0", "t", [{"node": "n0", "name": "s", "extra": 1}]),
        merge("n0", "t", [{"node": 5, "name": "s"}]),
        merge("n0", "t", ["s", 5]),
        merge("n0", "t", ["s", {"node": "n0"}]),
        qmp("block-dirty-bitmap-merge", {"node": "n0", "target": "t"}),
        qmp("block-dirty-bitmap-merge", {"node": "n0", "bitmaps": ["s"]}),
        qmp("block-dirty-bitmap-merge", {"target": "t", "bitmaps": ["s"]}),
        qmp("block-dirty-bitmap-merge", {"node": "n0", "target": "t", "bitmaps": ["s"], "x": 1}),
        qmp("block-dirty-bitmap-merge", {"node": "n0", "target": "", "bitmaps": ["s"]}),
        qmp("block-dirty-bitmap-merge", {"node": "n0", "target": "t", "bitmaps": [""]}),
        nodes(),
    ),
]

# --- 4. x-debug-block-dirty-bitmap-sha256 -------------------------------------

SHA_GRANULARITIES = (512, 4096, 65536, 131072, 2**31)
SHA_WRITES = ((0, 65536), (126976, 8192), (1048576, 131072))


def sha_scenario(
    name: str, node_step: Step, node: str, writes: tuple[tuple[int, int], ...], *pre: Step
) -> dict[str, Any]:
    """Bitmaps of every granularity on one node, hashed before and after writes."""
    steps: list[Step] = [*pre, node_step]
    steps += [add(node, f"g{g}", granularity=g) for g in SHA_GRANULARITIES]
    steps += [sha(node, f"g{g}") for g in SHA_GRANULARITIES]
    for offset, length in writes:
        steps.append(write(node, offset, length))
        steps += [sha(node, f"g{g}") for g in SHA_GRANULARITIES]
    steps.append(nodes())
    return scenario("bitmap_sha256", name, *steps)


SHA = [
    sha_scenario("null-64M", null("n0"), "n0", SHA_WRITES),
    sha_scenario("qcow2-64M", qcow2("q0", "d0.qcow2"), "q0", SHA_WRITES[:1], create("d0.qcow2")),
    sha_scenario("null-1000000", null("n0", 1000000), "n0", ((0, 65536), (999000, 1000), (999936, 512))),
    sha_scenario("null-64M+512", null("n0", SIZE + 512), "n0", ((0, 65536), (SIZE, 512))),
    sha_scenario("null-64M+1", null("n0", SIZE + 1), "n0", ((SIZE, 512),)),
    sha_scenario("null-1", null("n0", 1), "n0", ((0, 512),)),
    sha_scenario("null-size-0", null("n0", 0), "n0", ()),
    sha_scenario("raw-1000000", raw_node("r0", "r.raw"), "r0", ((999936, 512),), create("r.raw", "1000000", "raw")),
    sha_scenario("qcow2-1000000", qcow2("q0", "d0.qcow2"), "q0", ((999936, 512),), create("d0.qcow2", "1000000")),
    scenario(
        "bitmap_sha256",
        "errors",
        null("n0"),
        add("n0", "b"),
        sha("nope", "b"),
        sha("n0", "nope"),
        qmp("x-debug-block-dirty-bitmap-sha256", {"node": "n0"}),
        qmp("x-debug-block-dirty-bitmap-sha256", {"node": "n0", "name": "b", "x": 1}),
    ),
]

# --- 5. blockdev-add / blockdev-del and query shapes -------------------------

BLOCKDEV = [
    scenario(
        "blockdev",
        "null-co",
        qmp("blockdev-add", {"driver": "null-co", "node-name": "n0"}),
        null("n1"),
        null("n2", 1000000, **{"read-zeroes": True}),
        qmp("blockdev-add", {"driver": "null-aio", "node-name": "n3", "size": 4096}),
        null("n5", "64M"),
        null("n6", 2**63),
        null("n7", 2**63 - 1),
        null("n8", 2**62),
        null("n9", 0),
        null("n10", 1),
        qmp("blockdev-del", {"node-name": "n8"}),
        qmp("blockdev-del", {"node-name": "n9"}),
        qmp("blockdev-del", {"node-name": "n10"}),
        nodes(),
        nodes(False),
        qmp("query-block"),
        add("n1", "b0"),
        add("n1", "b1", granularity=512, disabled=True),
        nodes(),
        nodes(False),
        qmp("query-block"),
        qmp("query-named-block-nodes"),
    ),
    scenario(
        # A negative size aborts qemu-storage-daemon 7.2 (error_abort in
        # parse_option_size): recorded as a crash.
        "blockdev",
        "null-co-negative-size-crashes",
        null("n0", -1),
    ),
    scenario(
        "blockdev",
        "file-raw-qcow2",
        create("d0.qcow2"),
        create("r.raw", "64M", "raw"),
        qcow2("q0", "d0.qcow2"),
        raw_node("r0", "r.raw"),
        qmp("blockdev-add", {"driver": "file", "node-name": "f0", "filename": "r.raw"}),
        qmp(
            "blockdev-add",
            {"driver": "qcow2", "node-name": "q1", "file": {"driver": "file", "filename": "WORKDIR/d0.qcow2"}},
        ),
        create("d1.qcow2"),
        qmp(
            "blockdev-add",
            {
                "driver": "qcow2",
                "node-name": "q1",
                "file": {"driver": "file", "node-name": "f-q1", "filename": "WORKDIR/d1.qcow2"},
            },
        ),
        nodes(),
        nodes(False),
        qmp("query-block"),
        add("q0", "b0"),
        add("r0", "b0"),
        add("f0", "b0"),
        nodes(),
        nodes(False),
        qmp("query-block"),
        write("q0", 0, 512),
        qmp("query-block"),
        qmp("query-block-exports"),
    ),
    scenario(
        "blockdev",
        "qcow2-backing",
        create("base.qcow2"),
        img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"),
        qmp(
            "blockdev-add", {"driver": "qcow2", "node-name": "top", "file": {"driver": "file", "filename": "top.qcow2"}}
        ),
        nodes(),
        nodes(False),
        qmp("query-block"),
        add("top", "b0"),
        nodes(),
        nodes(False),
    ),
    scenario(
        "blockdev",
        "qcow2-backing-explicit",
        create("base.qcow2"),
        img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"),
        qcow2("base", "base.qcow2"),
        qcow2("top", "top.qcow2", backing="base"),
        qcow2("top2", "top.qcow2", backing=None),
        img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top2.qcow2"),
        qcow2("top2", "top2.qcow2", backing=None),
        add("base", "bb"),
        add("top", "bt"),
        nodes(),
        nodes(False),
        qmp("blockdev-del", {"node-name": "base"}),
        qmp("blockdev-del", {"node-name": "top"}),
        qmp("blockdev-del", {"node-name": "base"}),
        nodes(),
    ),
    scenario(
        "blockdev",
        "add-errors",
        create("d0.qcow2"),
        create("r.raw", "64M", "raw"),
        null("n0"),
        null("n0"),
        qmp("blockdev-add", {"driver": "null-co"}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": ""}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "1abc"}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "a b"}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "#block1"}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "a" * 31}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "b" * 32}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "ok-name_1.x"}),
        qmp("blockdev-add", {"driver": "foo", "node-name": "x"}),
        qmp("blockdev-add", {"node-name": "x"}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "x", "bogus": 1}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "x", "size": "1"}),
        qmp("blockdev-add", {"driver": "file", "node-name": "x", "filename": "missing.raw"}),
        qmp("blockdev-add", {"driver": "file", "node-name": "x", "filename": "WORKDIR/missing.raw"}),
        qmp("blockdev-add", {"driver": "file", "node-name": "x"}),
        qcow2("x", "missing.qcow2"),
        raw_node("x", "missing.raw"),
        qcow2("x", "r.raw"),
        qmp("blockdev-add", {"driver": "qcow2", "node-name": "x", "file": "n0"}),
        qmp("blockdev-add", {"driver": "qcow2", "node-name": "x", "file": "nope"}),
        qmp("blockdev-add", {"driver": "qcow2", "node-name": "x"}),
        qmp("blockdev-add", {"driver": "raw", "node-name": "x", "file": "n0"}),
        qmp("blockdev-add", {"driver": "raw", "node-name": "x2", "file": "n0"}),
        qcow2("y", "d0.qcow2"),
        qcow2("y2", "d0.qcow2"),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "dz", "detect-zeroes": "unmap"}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "dz", "discard": "unmap", "detect-zeroes": "unmap"}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "dd", "discard": "bogus"}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "ro", "read-only": True}),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "ro2", "read-only": "yes"}),
        qmp("blockdev-add", "x"),
        qmp("blockdev-del", {"node-name": "n0"}),
        nodes(),
    ),
    scenario(
        "blockdev",
        "discard-unmap-option",
        create("d0.qcow2"),
        qcow2("q0", "d0.qcow2", discard="unmap"),
        qcow2("q1", "d0.qcow2", discard="ignore"),
        create("d1.qcow2"),
        qcow2("q1", "d1.qcow2", discard="ignore"),
        null("n0", discard="unmap"),
        null("n1", discard="on"),
        null("n2", discard="off"),
        nodes(),
    ),
    scenario(
        "blockdev",
        "del",
        create("d0.qcow2"),
        qcow2("q0", "d0.qcow2"),
        null("n0"),
        null("n1"),
        null("n2"),
        add("n1", "b0"),
        qmp("blockdev-del", {"node-name": "f-q0"}),
        qmp("blockdev-del", {"node-name": "nope"}),
        qmp("blockdev-del", {"node-name": ""}),
        qmp("blockdev-del", {}),
        qmp("blockdev-del", {"node-name": "n0", "x": 1}),
        qmp("blockdev-del", {"node-name": "n1"}),
        qmp("blockdev-del", {"node-name": "n1"}),
        qmp("blockdev-del", {"node-name": "q0"}),
        qmp("blockdev-del", {"node-name": "f-q0"}),
        write("n2", 0, 512),
        qmp("blockdev-del", {"node-name": "n2"}),
        qmp("block-export-del", {"id": "exp-n2"}, settle=0.1),
        qmp("blockdev-del", {"node-name": "n2"}),
        nodes(),
        qmp("blockdev-del", {"node-name": "n0"}),
        nodes(),
        add("n1", "b0"),
    ),
    scenario(
        "blockdev",
        "del-explicit-child",
        create("d0.qcow2"),
        qmp("blockdev-add", {"driver": "file", "node-name": "f0", "filename": "d0.qcow2"}),
        qmp("blockdev-add", {"driver": "qcow2", "node-name": "q0", "file": "f0"}),
        add("f0", "b0"),
        qmp("blockdev-del", {"node-name": "f0"}),
        qmp("blockdev-del", {"node-name": "q0"}),
        nodes(),
        qmp("blockdev-del", {"node-name": "f0"}),
        nodes(),
    ),
    scenario(
        "blockdev",
        "del-auto-child",
        create("d0.qcow2"),
        qmp("blockdev-add", {"driver": "qcow2", "node-name": "q0", "file": {"driver": "file", "filename": "d0.qcow2"}}),
        qmp("blockdev-del", {"node-name": "q0"}),
        nodes(),
    ),
]

# --- 6. guest writes, zeroes and discards -------------------------------------

GUEST = [
    scenario(
        "guest_io",
        "counts-by-granularity",
        null("n0"),
        add("n0", "g64k"),
        add("n0", "g4k", granularity=4096),
        add("n0", "g512", granularity=512),
        write("n0", 0, 512),
        nodes(),
        write("n0", 100, 1000),
        nodes(),
        write("n0", 65535, 2),
        nodes(),
        write("n0", 5 * M + 1, 1),
        nodes(),
        write("n0", 0, 0),
        nodes(),
        write("n0", SIZE - 1, 1),
        nodes(),
        write("n0", 20 * M + 4095, 4098),
        nodes(),
        *[sha("n0", n) for n in ("g64k", "g4k", "g512")],
    ),
    scenario(
        "guest_io",
        "reference-worked-example",
        create("d0.qcow2"),
        qcow2("drive0", "d0.qcow2"),
        add("drive0", "bitmap0"),
        add("drive0", "g32k", granularity=32768),
        add("drive0", "g128k", granularity=131072),
        write("drive0", 0, 512),
        write("drive0", 16 * M, 256 * K),
        write("drive0", 32736 * K, 64 * K),
        nodes(),
        sha("drive0", "bitmap0"),
        sha("drive0", "g32k"),
        sha("drive0", "g128k"),
    ),
    scenario(
        "guest_io",
        "seed-trace-setup",
        create("d0.qcow2"),
        create("d1.qcow2"),
        qcow2("drive0", "d0.qcow2"),
        qcow2("drive1", "d1.qcow2"),
        add("drive0", "bitmap0", granularity=65536),
        add("drive1", "bitmap1", granularity=65536),
        sha("drive0", "bitmap0"),
        write("drive0", 0, 65536, 0x41),
        write("drive0", 126976, 8192, 0x42),
        write("drive0", 1048576, 131072, 0x43),
        write("drive1", 0, 65536, 0x44),
        write("drive1", 33554432, 65536, 0x45),
        nodes(),
        sha("drive0", "bitmap0"),
        sha("drive1", "bitmap1"),
    ),
    scenario(
        "guest_io",
        "zero-and-discard-default",
        create("d0.qcow2"),
        qcow2("q0", "d0.qcow2"),
        null("n0"),
        add("q0", "b"),
        add("n0", "b"),
        zero("q0", 0, 65536),
        zero("n0", 0, 65536),
        nodes(),
        discard("q0", 1 * M, 65536),
        discard("n0", 1 * M, 65536),
        nodes(),
        write("q0", 2 * M, 65536),
        discard("q0", 2 * M, 65536),
        discard("q0", 4 * M + 512, 512),
        nodes(),
    ),
    scenario(
        "guest_io",
        "zero-and-discard-unmap",
        create("d0.qcow2"),
        qcow2("q0", "d0.qcow2", discard="unmap"),
        null("n0", discard="unmap"),
        add("q0", "b"),
        add("q0", "b512", granularity=512),
        add("n0", "b"),
        zero("q0", 0, 65536),
        zero("n0", 0, 65536),
        nodes(),
        discard("q0", 1 * M, 65536),
        discard("n0", 1 * M, 65536),
        nodes(),
        write("q0", 2 * M, 65536),
        discard("q0", 2 * M, 65536),
        nodes(),
        discard("q0", 4 * M + 512, 512),
        discard("q0", 6 * M + 1000, 200000),
        nodes(),
        sha("q0", "b512"),
    ),
    scenario(
        "guest_io",
        "disabled-ignores-writes",
        null("n0"),
        add("n0", "on"),
        add("n0", "off", disabled=True),
        write("n0", 0, 65536),
        zero("n0", M, 65536),
        nodes(),
        bm("enable", "n0", "off"),
        bm("disable", "n0", "on"),
        write("n0", 2 * M, 65536),
        nodes(),
    ),
    scenario(
        "guest_io",
        "bitmap-added-after-writes",
        null("n0"),
        write("n0", 0, 65536),
        add("n0", "b"),
        nodes(),
        write("n0", 3 * M, 1),
        nodes(),
    ),
    scenario(
        "guest_io",
        "write-beyond-end",
        null("n0", 1 * M),
        add("n0", "b"),
        write("n0", 1 * M - 512, 1024),
        write("n0", 1 * M, 512),
        nodes(),
    ),
]

# --- 7. general QAPI / protocol errors and qemu-img ---------------------------

QAPI = [
    scenario(
        "qapi_errors",
        "protocol",
        qmp("no-such-command"),
        qmp("no-such-command", {"a": 1}),
        qmp("query-block", {"x": 1}),
        qmp("query-block", {}),
        raw({"execute": "query-block", "arguments": None}),
        raw({"execute": "query-block", "arguments": 5}),
        raw({"execute": "query-block", "arguments": []}),
        raw({"execute": "query-block", "arguments": "x"}),
        raw({"execute": 5}),
        raw({"execute": None}),
        raw({"execute": "query-block", "extra": 1}),
        raw({"arguments": {}}),
        raw({}),
        raw({"exec-oob": "query-version"}),
        raw({"execute": "query-version", "exec-oob": "query-version"}),
        raw({"execute": "query-version", "id": "abc"}),
        raw({"execute": "no-such-command", "id": "abc"}),
        raw({"execute": "query-block", "arguments": {"x": 1}, "id": "abc"}),
        qmp("qmp_capabilities"),
        qmp("qmp_capabilities", {"enable": ["oob"]}),
        qmp("query-version"),
        qmp("query-status"),
        qmp("human-monitor-command", {"command-line": "info block"}),
        qmp("query-jobs"),
        qmp("query-block-jobs"),
        qmp("query-block-exports"),
        qmp("query-commands"),
    ),
    scenario(
        "qapi_errors",
        "argument-types",
        null("n0"),
        add("n0", "b0"),
        qmp("block-dirty-bitmap-add", {"node": True, "name": "b"}),
        qmp("block-dirty-bitmap-add", {"node": "n0", "name": False}),
        qmp("block-dirty-bitmap-add", {"node": 1.5, "name": "b"}),
        qmp("block-dirty-bitmap-add", {"node": ["n0"], "name": "b"}),
        qmp("block-dirty-bitmap-add", {"node": {"a": 1}, "name": "b"}),
        qmp("block-dirty-bitmap-add", {"node": None, "name": "b"}),
        qmp("block-dirty-bitmap-clear", {"node": 0, "name": "b0"}),
        qmp("x-debug-block-dirty-bitmap-sha256", {"node": "n0", "name": True}),
        qmp("query-named-block-nodes", {"flat": "yes"}),
        qmp("query-named-block-nodes", {"flat": 1}),
        qmp("query-named-block-nodes", {"flat": None}),
        qmp("blockdev-del", {"node-name": 5}),
        qmp("block-dirty-bitmap-add", {"node": "n0", "name": "b", "granularity": "x", "persistent": "y"}),
        qmp("block-dirty-bitmap-add", {"name": 5, "granularity": "x"}),
    ),
]

QEMU_IMG_SCENARIOS = [
    scenario(
        "qemu_img",
        "create-sizes",
        create("s64m.qcow2", "64M"),
        create("s1g.qcow2", "1G"),
        create("s15m.qcow2", "1.5M"),
        create("s100000.qcow2", "100000"),
        create("s1000000.qcow2", "1000000"),
        create("s64k.qcow2", "64k"),
        create("s64K.qcow2", "64K"),
        create("s1T.qcow2", "1T"),
        create("s0.qcow2", "0"),
        create("sb.qcow2", "512b"),
        create("sneg.qcow2", "-1"),
        img("create", "-f", "qcow2", "sneg2.qcow2", "--", "-1"),
        create("s2e.qcow2", "2E"),
        create("s8e.qcow2", "8E"),
        create("sfrac.qcow2", "0.5k"),
        create("sbad.qcow2", "abc"),
        create("s1.qcow2", "1"),
        create("r1000000.raw", "1000000", "raw"),
        create("r15m.raw", "1.5M", "raw"),
        img("create", "-f", "qcow2", "nosize.qcow2"),
        img("info", "s1000000.qcow2"),
        img("info", "s100000.qcow2"),
        img("info", "r1000000.raw"),
        img("info", "--output=json", "s15m.qcow2"),
    ),
    scenario(
        "qemu_img",
        "create-backing",
        create("base.qcow2"),
        img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"),
        img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top32.qcow2", "32M"),
        img("create", "-f", "qcow2", "-b", "base.qcow2", "nofmt.qcow2"),
        img("create", "-f", "qcow2", "-b", "missing.qcow2", "-F", "qcow2", "bad.qcow2"),
        img("create", "-f", "qcow2", "-b", "missing.qcow2", "-F", "qcow2", "bad2.qcow2", "64M"),
        img("create", "-f", "qcow2", "-b", "WORKDIR/base.qcow2", "-F", "qcow2", "abs.qcow2"),
        img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "raw", "wrongfmt.qcow2"),
        create("base.qcow2", "32M"),
        img("info", "base.qcow2"),
        create("r.raw", "64M", "raw"),
        create("r.raw", "32M", "raw"),
        img("info", "r.raw"),
        img("info", "top.qcow2"),
        img("info", "--output=json", "top.qcow2"),
        img("info", "--backing-chain", "top.qcow2"),
        img("info", "abs.qcow2"),
        img("info", "top32.qcow2"),
    ),
    scenario(
        "qemu_img",
        "info",
        create("d0.qcow2"),
        create("r.raw", "64M", "raw"),
        create("v2.qcow2", "64M", "qcow2", "-o", "compat=0.10"),
        create("c4k.qcow2", "64M", "qcow2", "-o", "cluster_size=4096"),
        img("info", "d0.qcow2"),
        img("info", "--output=json", "d0.qcow2"),
        img("info", "r.raw"),
        img("info", "--output=json", "r.raw"),
        img("info", "v2.qcow2"),
        img("info", "c4k.qcow2"),
        img("info", "-f", "qcow2", "r.raw"),
        img("info", "missing.qcow2"),
        img("check", "d0.qcow2"),
    ),
    scenario(
        "qemu_img",
        "info-with-bitmaps",
        create("d0.qcow2"),
        qcow2("q0", "d0.qcow2"),
        add("q0", "p", persistent=True),
        add("q0", "d", persistent=True, disabled=True, granularity=4096),
        add("q0", "t"),
        write("q0", 0, 65536),
        {"restart": True},
        img("info", "d0.qcow2"),
        img("info", "--output=json", "d0.qcow2"),
    ),
]

# --- 8. jobs, backups, transactions (recorded with "mark-reply") --------------

SPEED = 1 * M  # a 64 MiB backup at this speed runs ~60 s: always cancelled in the scenario
THROTTLE_SETTLE = 0.1


def jscenario(group: str, name: str, *steps: Step, **extra: Any) -> dict[str, Any]:
    """A scenario that records where each command's reply came among its events."""
    return {"group": group, "name": name, "mark-reply": True, **extra, "steps": list(steps)}


def dashed(kw: dict[str, Any]) -> dict[str, Any]:
    """Python keyword names to QAPI member names (``auto_finalize`` -> ``auto-finalize``)."""
    return {k.replace("_", "-"): v for k, v in kw.items()}


def backup(device: str, target: str, sync: str, job_id: str | None = None, **kw: Any) -> Step:
    """blockdev-backup (``kw``: speed, bitmap, bitmap_mode, auto_finalize, x_perf, ...)."""
    args: dict[str, Any] = {} if job_id is None else {"job-id": job_id}
    return qmp("blockdev-backup", {**args, "device": device, "target": target, "sync": sync, **dashed(kw)})


def throttled(device: str, target: str, sync: str, job_id: str | None = None, **kw: Any) -> Step:
    """A blockdev-backup at ``SPEED``; waits 0.1 s so the first chunk (1 MiB + 64 KiB) is copied.

    The job then sleeps on its rate limit for about a second, so queries, pauses
    and cancels made right after see a fixed offset (1114112).
    """
    step = backup(device, target, sync, job_id, speed=SPEED, **kw)
    step["settle"] = THROTTLE_SETTLE
    return step


def backup_action(device: str, target: str, sync: str, job_id: str | None = None, **kw: Any) -> dict[str, Any]:
    """A blockdev-backup transaction action."""
    args: dict[str, Any] = {} if job_id is None else {"job-id": job_id}
    return action("blockdev-backup", **args, device=device, target=target, sync=sync, **kw)


def action(kind: str, **data: Any) -> dict[str, Any]:
    """A transaction action ``{"type": kind, "data": data}``."""
    return {"type": kind, "data": dashed(data)}


def transaction(*actions: dict[str, Any], mode: str | None = None, settle: float | None = None) -> Step:
    """transaction (``mode``: completion-mode property)."""
    args: dict[str, Any] = {"actions": list(actions)}
    if mode is not None:
        args["properties"] = {"completion-mode": mode}
    return qmp("transaction", args, settle)


def settle() -> Step:
    """Wait until no job is running (unrecorded query-jobs polling)."""
    return {"settle-jobs": True}


def wait(job_id: str, status: str, timeout: float = 10) -> Step:
    """Wait for JOB_STATUS_CHANGE {id: job_id, status}."""
    return {"wait-job": {"id": job_id, "status": status, "timeout": timeout}}


def jobs() -> Step:
    """query-jobs."""
    return qmp("query-jobs")


def bjobs() -> Step:
    """query-block-jobs."""
    return qmp("query-block-jobs")


def job(verb: str, job_id: str) -> Step:
    """job-<verb> {id}."""
    return qmp(f"job-{verb}", {"id": job_id})


def bjob(verb: str, job_id: str, **kw: Any) -> Step:
    """block-job-<verb> ({id} for finalize/dismiss, else {device})."""
    key = "id" if verb in ("finalize", "dismiss") else "device"
    return qmp(f"block-job-{verb}", {key: job_id, **kw})


def hmp(command_line: str) -> Step:
    """human-monitor-command (system emulator only)."""
    return {"hmp": command_line}


def nf_write(node: str, offset: int, length: int, pattern: int = 0x41) -> Step:
    """A guest write over NBD that sends no flush (keeps blkdebug flush rules unarmed)."""
    return {"write": {"node": node, "offset": offset, "length": length, "pattern": pattern, "flush": False}}


def flush(node: str) -> Step:
    """A guest flush over NBD (fires blkdebug's flush_to_disk if anything was written)."""
    return {"flush": {"node": node}}


def image(name: str, size: str = "64M", **kw: Any) -> list[Step]:
    """qemu-img create ``<name>.qcow2`` and blockdev-add it as qcow2 node ``name``."""
    return [create(f"{name}.qcow2", size), qcow2(name, f"{name}.qcow2", **kw)]


def blkdebug_qcow2(name: str, filename: str, **rules: Any) -> Step:
    """blockdev-add qcow2 ``name`` over blkdebug ``dbg-<name>`` over file ``f-<name>``."""
    file = {"driver": "file", "node-name": f"f-{name}", "filename": filename}
    dbg = {"driver": "blkdebug", "node-name": f"dbg-{name}", "image": file, **dashed(rules)}
    return qmp("blockdev-add", {"driver": "qcow2", "node-name": name, "file": dbg})


def drive0_t0(*writes: tuple[int, int]) -> list[Step]:
    """qcow2 source ``drive0`` and target ``t0`` (64 MiB each), plus guest writes to drive0."""
    return [*image("drive0"), *image("t0"), *(write("drive0", o, n) for o, n in writes)]


JOBS = [
    jscenario(
        "jobs",
        "full-auto",
        *drive0_t0((0, 65536)),
        jobs(),
        bjobs(),
        backup("drive0", "t0", "full", "j0"),
        settle(),
        jobs(),
        bjobs(),
    ),
    jscenario(
        "jobs",
        "full-auto-finalize-false",
        *drive0_t0((0, 65536)),
        backup("drive0", "t0", "full", "j0", auto_finalize=False),
        wait("j0", "pending"),
        jobs(),
        bjobs(),
        job("pause", "j0"),
        job("resume", "j0"),
        job("complete", "j0"),
        job("dismiss", "j0"),
        bjob("pause", "j0"),
        bjob("resume", "j0"),
        bjob("complete", "j0"),
        bjob("dismiss", "j0"),
        bjob("set-speed", "j0", speed=1024),
        job("finalize", "nope"),
        job("finalize", "j0"),
        settle(),
        jobs(),
        job("finalize", "j0"),
    ),
    jscenario(
        "jobs",
        "full-block-job-finalize",
        *drive0_t0((0, 65536)),
        backup("drive0", "t0", "full", "j0", auto_finalize=False, auto_dismiss=False),
        wait("j0", "pending"),
        bjob("finalize", "j0"),
        settle(),
        bjobs(),
        jobs(),
        bjob("dismiss", "j0"),
        jobs(),
    ),
    jscenario(
        "jobs",
        "full-auto-dismiss-false",
        *drive0_t0((0, 65536)),
        backup("drive0", "t0", "full", "j0", auto_dismiss=False),
        settle(),
        jobs(),
        bjobs(),
        job("pause", "j0"),
        job("resume", "j0"),
        job("complete", "j0"),
        job("finalize", "j0"),
        bjob("set-speed", "j0", speed=1024),
        bjob("cancel", "j0"),
        backup("drive0", "t0", "full", "j0"),
        job("cancel", "j0"),
        jobs(),
        job("dismiss", "j0"),
        jobs(),
        job("dismiss", "j0"),
        backup("drive0", "t0", "full", "j0", auto_dismiss=False, auto_finalize=False),
        wait("j0", "pending"),
        job("finalize", "j0"),
        settle(),
        jobs(),
        bjob("dismiss", "j0"),
        jobs(),
    ),
    jscenario(
        "jobs",
        "throttled-queries-and-verbs",
        *drive0_t0((0, 65536), (8 * M, 65536)),
        throttled("drive0", "t0", "full", "j0"),
        jobs(),
        bjobs(),
        job("complete", "j0"),
        bjob("complete", "j0"),
        job("finalize", "j0"),
        job("dismiss", "j0"),
        bjob("set-speed", "j0", speed=2 * SPEED),
        bjobs(),
        bjob("set-speed", "j0", speed=-1),
        bjob("set-speed", "j0", speed=SPEED),
        job("resume", "j0"),
        job("pause", "j0"),
        job("pause", "j0"),
        bjob("pause", "j0"),
        jobs(),
        bjobs(),
        job("resume", "j0"),
        job("resume", "j0"),
        jobs(),
        bjob("pause", "j0"),
        bjobs(),
        bjob("resume", "j0"),
        bjob("resume", "j0"),
        bjobs(),
        job("cancel", "j0"),
        settle(),
        jobs(),
        bjobs(),
    ),
    jscenario(
        "jobs",
        "block-job-cancel-user-paused",
        *drive0_t0((0, 65536)),
        throttled("drive0", "t0", "full", "j0"),
        job("pause", "j0"),
        bjob("cancel", "j0"),
        bjob("cancel", "j0", force=False),
        jobs(),
        bjob("cancel", "j0", force=True),
        settle(),
        jobs(),
    ),
    jscenario(
        "jobs",
        "job-cancel-user-paused",
        *drive0_t0((0, 65536)),
        throttled("drive0", "t0", "full", "j0"),
        bjob("pause", "j0"),
        bjobs(),
        job("cancel", "j0"),
        settle(),
        jobs(),
    ),
    jscenario(
        "jobs",
        "cancel-running-throttled",
        *drive0_t0((0, 65536), (8 * M, 65536), (9 * M, 65536)),
        throttled("drive0", "t0", "full", "j0", auto_dismiss=False),
        jobs(),
        job("cancel", "j0"),
        settle(),
        jobs(),
        bjobs(),
        job("dismiss", "j0"),
        throttled("drive0", "t0", "full", "j1"),
        bjob("cancel", "j1"),
        settle(),
    ),
    jscenario(
        "jobs",
        "cancel-pending",
        *drive0_t0((0, 65536)),
        backup("drive0", "t0", "full", "j0", auto_finalize=False),
        wait("j0", "pending"),
        job("cancel", "j0"),
        settle(),
        jobs(),
        backup("drive0", "t0", "full", "j1", auto_finalize=False, auto_dismiss=False),
        wait("j1", "pending"),
        bjob("cancel", "j1"),
        settle(),
        jobs(),
        job("dismiss", "j1"),
    ),
    jscenario(
        "jobs",
        "unknown-ids",
        *drive0_t0(),
        *(job(v, "nope") for v in ("pause", "resume", "cancel", "complete", "finalize", "dismiss")),
        *(bjob(v, "nope") for v in ("pause", "resume", "cancel", "complete", "finalize", "dismiss")),
        bjob("set-speed", "nope", speed=0),
        qmp("job-pause", {}),
        qmp("job-pause", {"id": "j0", "x": 1}),
        qmp("block-job-cancel", {"device": "nope", "force": "yes"}),
        qmp("block-job-set-speed", {"device": "nope"}),
        throttled("drive0", "t0", "full", "j0"),
        job("pause", "J0"),
        bjob("pause", "drive0"),
        bjob("pause", "t0"),
        job("cancel", "j0"),
        settle(),
    ),
    jscenario(
        "jobs",
        "job-ids",
        *drive0_t0(),
        *image("t1"),
        backup("drive0", "t0", "full", "1bad"),
        backup("drive0", "t0", "full", ""),
        backup("drive0", "t0", "full", "a b"),
        backup("drive0", "t0", "full", "#j"),
        backup("drive0", "t0", "full", "-j"),
        backup("drive0", "t0", "full"),
        qmp("blockdev-backup", {"job-id": 5, "device": "drive0", "target": "t0", "sync": "full"}),
        throttled("drive0", "t0", "full", "drive0"),
        backup("drive0", "t1", "full", "drive0"),
        jobs(),
        job("cancel", "drive0"),
        settle(),
        throttled("drive0", "t0", "full", "ok-id_1.x"),
        jobs(),
        job("cancel", "ok-id_1.x"),
        settle(),
        throttled("drive0", "t0", "full", "j" * 300),
        jobs(),
        job("cancel", "j" * 300),
        settle(),
    ),
    jscenario(
        "jobs",
        "sync-none",
        *drive0_t0((0, 65536), (4 * M, 65536)),
        qmp("blockdev-backup", {"job-id": "j0", "device": "drive0", "target": "t0", "sync": "none"}, settle=0.1),
        jobs(),
        bjobs(),
        write("drive0", 0, 65536, 0x42),
        write("drive0", 0, 512, 0x43),
        write("drive0", 32 * M, 131072, 0x44),
        jobs(),
        bjobs(),
        job("complete", "j0"),
        job("cancel", "j0"),
        settle(),
        jobs(),
    ),
]


# --- 9. backup argument errors ------------------------------------------------

API_ERROR_CASES: dict[str, dict[str | None, list[str | None]]] = {  # tests/qemu-iotests/257 test_backup_api
    "incremental": {
        None: ["on-success", "always", "never", None],
        "bitmap404": ["on-success", "always", "never", None],
        "bitmap0": ["always", "never"],
    },
    "bitmap": {
        None: ["on-success", "always", "never", None],
        "bitmap404": ["on-success", "always", "never", None],
        "bitmap0": [None],
    },
    "full": {
        None: ["on-success", "always", "never"],
        "bitmap404": ["on-success", "always", "never", None],
        "bitmap0": ["never", None],
    },
    "top": {
        None: ["on-success", "always", "never"],
        "bitmap404": ["on-success", "always", "never", None],
        "bitmap0": ["never", None],
    },
    "none": {
        None: ["on-success", "always", "never"],
        "bitmap404": ["on-success", "always", "never", None],
        "bitmap0": ["on-success", "always", "never", None],
    },
}
API_ACCEPTED = [  # every other (sync, bitmap, bitmap-mode) combination of the 257 matrix
    (sync, bitmap, mode)
    for sync in API_ERROR_CASES
    for bitmap in (None, "bitmap404", "bitmap0")
    for mode in ("on-success", "always", "never", None)
    if mode not in API_ERROR_CASES[sync][bitmap]
]


def api_backup(sync: str, bitmap: str | None, mode: str | None, **kw: Any) -> Step:
    """257's blockdev_backup(drive0, "backup_target", sync, job_id="api_job", bitmap, bitmap_mode)."""
    args: dict[str, Any] = {"filter-node-name": "backup-top", "job-id": "api_job"}
    if bitmap is not None:
        args["bitmap"] = bitmap
    if mode is not None:
        args["bitmap-mode"] = mode
    return backup("drive0", "backup_target", sync, **args, **kw)


API_SETUP = [*image("drive0"), *image("backup_target"), add("drive0", "bitmap0", granularity=65536)]

BACKUP_ERRORS = [
    jscenario(
        "backup_errors",
        "iotest-257-api-failures",
        *API_SETUP,
        *(
            api_backup(sync, bitmap, mode)
            for sync, cases in API_ERROR_CASES.items()
            for bitmap in (None, "bitmap404", "bitmap0")
            for mode in cases[bitmap]
        ),
        jobs(),
        nodes(),
    ),
    jscenario(
        "backup_errors",
        "iotest-257-api-accepted",
        *API_SETUP,
        write("drive0", 0, 65536),
        write("drive0", 32 * M, 65536),
        *(
            step
            for sync, bitmap, mode in API_ACCEPTED
            for step in (
                *(
                    (api_backup(sync, bitmap, mode, auto_finalize=False), wait("api_job", "pending"))
                    if sync != "none"
                    else (throttled("drive0", "backup_target", "none", "api_job", filter_node_name="backup-top"),)
                ),
                jobs(),
                job("cancel", "api_job"),
                settle(),
                sha("drive0", "bitmap0"),
            )
        ),
        nodes(),
    ),
    jscenario(
        "backup_errors",
        "nodes-and-arguments",
        *image("drive0"),
        *image("drive1"),
        *image("t0"),
        *image("t1"),
        *image("t32", "32M"),
        null("n0"),
        null("nro", **{"read-only": True}),
        add("drive0", "b0"),
        add("t0", "bt"),
        write("drive0", 0, 65536),
        backup("drive0", "drive0", "full", "j0"),
        backup("drive0", "t32", "full", "j0"),
        backup("nope", "t0", "full", "j0"),
        backup("drive0", "nope", "full", "j0"),
        backup("nope", "nope2", "full", "j0"),
        backup("drive0", "f-drive0", "full", "j0"),
        backup("f-drive0", "t0", "full", "j0"),
        backup("drive0", "nro", "full", "j0"),
        backup("drive0", "t0", "incremental", "j0", bitmap="bt"),
        backup("drive0", "t0", "full", "j0", speed=-1),
        backup("drive0", "t0", "full", "j0", x_perf={"max-workers": 0}),
        backup("drive0", "t0", "full", "j0", x_perf={"max-workers": -1}),
        backup("drive0", "t0", "full", "j0", x_perf={"max-chunk": -1}),
        backup("drive0", "t0", "full", "j0", x_perf={"max-chunk": 4096}),
        backup("drive0", "t0", "full", "j0", x_perf={"bogus": 1}),
        backup("drive0", "n0", "full", "j0", compress=True),
        backup("drive0", "t0", "full", "j0", filter_node_name="t1"),
        backup("drive0", "t0", "full", "j0", filter_node_name="1bad"),
        backup("drive0", "t0", "full", "j0", on_source_error="bogus"),
        backup("drive0", "t0", "bogus", "j0"),
        qmp("blockdev-backup", {"job-id": "j0", "device": "drive0", "target": "t0"}),
        qmp("blockdev-backup", {"job-id": "j0", "device": "drive0", "sync": "full"}),
        qmp("blockdev-backup", {"job-id": "j0", "target": "t0", "sync": "full"}),
        qmp("blockdev-backup", {"job-id": "j0", "device": "drive0", "target": "t0", "sync": "full", "x": 1}),
        jobs(),
        backup("drive0", "t0", "full", "jc", compress=True),
        settle(),
        backup("drive0", "n0", "full", "jn"),
        settle(),
        nodes(),
    ),
    jscenario(
        "backup_errors",
        "busy-nodes-and-bitmaps",
        *image("drive0"),
        *image("drive1"),
        *image("t0"),
        *image("t1"),
        add("drive0", "b0"),
        add("drive0", "b1"),
        add("drive1", "b1"),
        write("drive0", 0, 4 * M),
        write("drive1", 0, 4 * M),
        throttled("drive0", "t0", "incremental", "j0", bitmap="b0"),
        jobs(),
        backup("drive1", "t0", "full", "j1"),
        backup("drive0", "t1", "incremental", "j1", bitmap="b0"),
        backup("drive0", "t1", "bitmap", "j1", bitmap="b0", bitmap_mode="never"),
        backup("t0", "t1", "full", "j1"),
        backup("drive1", "drive0", "full", "j1"),
        bm("remove", "drive0", "b0"),
        bm("clear", "drive0", "b0"),
        bm("enable", "drive0", "b0"),
        bm("disable", "drive0", "b0"),
        merge("drive0", "b0", ["b1"]),
        merge("drive0", "b1", ["b0"]),
        sha("drive0", "b0"),
        sha("drive0", "b1"),
        add("drive0", "b2"),
        qmp("blockdev-del", {"node-name": "drive0"}),
        qmp("blockdev-del", {"node-name": "t0"}),
        qmp("blockdev-del", {"node-name": "backup-top"}),
        jobs(),
        nodes(),
        throttled("drive0", "t1", "full", "j1"),
        jobs(),
        job("cancel", "j0"),
        job("cancel", "j1"),
        settle(),
        nodes(),
    ),
    jscenario(
        "backup_errors",
        "bitmap-inconsistent",
        *image("drive0"),
        *image("t0"),
        add("drive0", "p", persistent=True),
        {"restart": True},
        qcow2("drive0", "drive0.qcow2"),
        write("drive0", 0, 65536),
        {"kill": True},
        qcow2("drive0", "drive0.qcow2"),
        qcow2("t0", "t0.qcow2"),
        backup("drive0", "t0", "incremental", "j0", bitmap="p"),
        backup("drive0", "t0", "full", "j0", bitmap="p", bitmap_mode="always"),
        jobs(),
    ),
]

# --- 10. bitmap sync modes: tests/qemu-iotests/257 -----------------------------

G257 = [  # tests/qemu-iotests/257 GROUPS: (pattern, offset, size)
    [(0x49, 0x0000000, 65536), (0x6C, 0x0100000, 65536), (0x6F, 0x2000000, 65536), (0x76, 0x3FF0000, 65536)],
    [(0x65, 0x0000000, 65536), (0x77, 0x00F8000, 65536), (0x72, 0x2008000, 65536), (0x69, 0x3FE0000, 65536)],
    [(0x74, 0x0010000, 65536), (0x69, 0x00E8000, 65536), (0x6E, 0x2018000, 65536), (0x67, 0x3FE0000, 131072)],
    [(0xAA, 0x0010000, 196608), (0xBB, 0x00D8000, 65536), (0xCC, 0x2028000, 65536), (0xDD, 0x3FC0000, 65536)],
]
BLKDEBUG_257 = {  # armed by a flush, then the backup's second read fails once with EIO
    "set-state": [
        {"event": "flush_to_disk", "state": 1, "new_state": 2},
        {"event": "read_aio", "state": 2, "new_state": 3},
    ],
    "inject-error": [{"event": "read_aio", "errno": 5, "state": 3, "immediately": False, "once": True}],
}
X_PERF = {"max-workers": 1}
NO_DISMISS_1 = {"auto_dismiss": False, "x_perf": X_PERF}


def writes_257(group: int) -> list[Step]:
    """Write group ``group`` of iotest 257 over NBD, without flushes (blkdebug stays unarmed)."""
    return [nf_write("drive0", off, size, pattern) for pattern, off, size in G257[group]]


def backup_257(n: int, sync: str, job_id: str, target: str, **kw: Any) -> list[Step]:
    """Create a target image, blockdev-add it and start 257's backup into it."""
    return [
        *image(target),
        backup("drive0", target, sync, job_id, filter_node_name="backup-top", x_perf=X_PERF, **kw),
    ]


def reference_257(n: int) -> list[Step]:
    """257's full reference backup #n (auto-finalize) into a null-co target, then drop the target."""
    target = f"ref_target_{n}"
    return [
        null(target),
        backup("drive0", target, "full", f"ref_backup_{n}", filter_node_name="backup-top", x_perf=X_PERF),
        settle(),
        qmp("blockdev-del", {"node-name": target}),
    ]


def sync_257(msync: str, bsync: str, failure: str) -> dict[str, Any]:
    """One test_bitmap_sync() of iotest 257 (failure: ok, sim = cancel at pending, int = EIO)."""
    if failure == "int":
        drive = blkdebug_qcow2("drive0", "drive0.qcow2", **BLKDEBUG_257)
    else:
        drive = qcow2("drive0", "drive0.qcow2")
    steps: list[Step] = [create("drive0.qcow2"), drive]
    steps += writes_257(0)
    steps += reference_257(0)
    steps += [add("drive0", "bitmap0", granularity=65536)]
    steps += writes_257(1)
    steps += [sha("drive0", "bitmap0")]
    steps += reference_257(1)
    if failure == "int":
        steps += [flush("drive0")]
    test = {"bitmap": "bitmap0", "bitmap_mode": bsync, "auto_finalize": False}
    steps += backup_257(1, msync, "backup_1", "backup_target_1", **test)
    if failure == "int":
        steps += [settle()]
    else:
        steps += [wait("backup_1", "pending"), jobs()]
        steps += writes_257(2)
        steps += [nodes(), sha("drive0", "bitmap0")]
        steps += [job("cancel" if failure == "sim" else "finalize", "backup_1"), settle()]
    steps += [sha("drive0", "bitmap0"), qmp("blockdev-del", {"node-name": "backup_target_1"}), nodes()]
    steps += writes_257(3)
    steps += [sha("drive0", "bitmap0")]
    steps += reference_257(2)
    steps += backup_257(2, "bitmap", "backup_2", "backup_target_2", **test)
    steps += [wait("backup_2", "pending"), job("finalize", "backup_2"), settle(), sha("drive0", "bitmap0")]
    steps += [qmp("blockdev-del", {"node-name": "backup_target_2"})]
    steps += [bm("remove", "drive0", "bitmap0")]
    group = "backup_sync" if msync == "bitmap" else "backup_sync_full_top"  # one file would exceed 400 KB
    return jscenario(group, f"{msync}-{bsync}-{failure}", *steps)


SYNC_MATRIX = [
    *(("bitmap", b, f) for b in ("never", "on-success", "always") for f in ("sim", "int", "ok")),
    *((s, b, f) for s in ("full", "top") for b in ("on-success", "always") for f in ("sim", "int", "ok")),
]

SEED_WRITES = [("drive0", 0, 65536, 0x41), ("drive0", 126976, 8192, 0x42), ("drive0", 1048576, 131072, 0x43)]

BACKUP_SYNC = [
    *(sync_257(*combo) for combo in SYNC_MATRIX),
    jscenario(
        "backup_sync",
        "seed-incremental-chain",
        *image("drive0"),
        *image("full0"),
        write("drive0", 5 * M, 65536, 0x40),
        transaction(
            action("block-dirty-bitmap-add", node="drive0", name="bitmap0", granularity=65536),
            backup_action("drive0", "full0", "full", "drive0"),
        ),
        settle(),
        nodes(),
        sha("drive0", "bitmap0"),
        qmp("blockdev-del", {"node-name": "full0"}),
        *(write(n, o, ln, p) for n, o, ln, p in SEED_WRITES),
        sha("drive0", "bitmap0"),
        img("create", "-f", "qcow2", "-b", "full0.qcow2", "-F", "qcow2", "inc0.qcow2"),
        qcow2("inc0", "inc0.qcow2"),
        backup("drive0", "inc0", "incremental", "drive0", bitmap="bitmap0"),
        settle(),
        sha("drive0", "bitmap0"),
        qmp("blockdev-del", {"node-name": "inc0"}),
        write("drive0", 4 * M, 4096, 0x44),
        write("drive0", 0, 512, 0x45),
        img("create", "-f", "qcow2", "-b", "inc0.qcow2", "-F", "qcow2", "inc1.qcow2"),
        qcow2("inc1", "inc1.qcow2"),
        backup("drive0", "inc1", "incremental", "drive0", bitmap="bitmap0", bitmap_mode="on-success"),
        settle(),
        nodes(),
        sha("drive0", "bitmap0"),
        backup("drive0", "inc1", "incremental", "drive0", bitmap="bitmap0"),
        settle(),
        sha("drive0", "bitmap0"),
    ),
]


# --- 11. transactions ------------------------------------------------------------

A236 = [(0x5D, 0, 65536), (0xD5, 1 * M, 65536), (0xDC, 32 * M, 65536), (0xCD, 0x3FF0000, 65536)]
B236 = [(0xAB, 0, 65536), (0xAD, 0x00F8000, 65536), (0x1D, 0x2008000, 65536), (0xEA, 0x3FE0000, 65536)]


def bitmap_action(kind: str, node: str, name: str, **kw: Any) -> dict[str, Any]:
    """A block-dirty-bitmap-* transaction action."""
    return action(f"block-dirty-bitmap-{kind}", node=node, name=name, **kw)


def abort() -> dict[str, Any]:
    """The abort transaction action."""
    return {"type": "abort", "data": {}}


def steps_236(node: str, writes: Any, query: Step) -> list[Step]:
    """tests/qemu-iotests/236: bitmap transactions, with ``writes(patterns)`` and ``query`` given."""
    g = {"granularity": 65536}
    return [
        add(node, "bitmapA", **g),
        add(node, "bitmapB", **g),
        *writes(A236),
        query,
        transaction(
            bitmap_action("disable", node, "bitmapB"),
            bitmap_action("add", node, "bitmapC", **g),
            bitmap_action("clear", node, "bitmapA"),
            abort(),
        ),
        query,
        transaction(
            bitmap_action("disable", node, "bitmapB"),
            bitmap_action("add", node, "bitmapC", **g),
            bitmap_action("disable", node, "bitmapC"),
            bitmap_action("enable", node, "bitmapC"),
        ),
        *writes(B236),
        query,
        transaction(bitmap_action("disable", node, "bitmapA"), bitmap_action("disable", node, "bitmapC")),
        query,
        transaction(
            bitmap_action("add", node, "bitmapD", disabled=True, **g),
            action("block-dirty-bitmap-merge", node=node, target="bitmapD", bitmaps=["bitmapB", "bitmapC"]),
            abort(),
        ),
        query,
        transaction(
            bitmap_action("add", node, "bitmapD", disabled=True, **g),
            action("block-dirty-bitmap-merge", node=node, target="bitmapD", bitmaps=["bitmapB", "bitmapC"]),
        ),
        query,
        sha(node, "bitmapA"),
        sha(node, "bitmapD"),
        *(bm("remove", node, name) for name in ("bitmapA", "bitmapB", "bitmapC", "bitmapD")),
        query,
    ]


SEED_BLKDEBUG = {  # real-qemu.md: the first guest write arms it, the backup's next read fails once
    "set-state": [{"event": "write_aio", "state": 1, "new_state": 2}],
    "inject-error": [{"event": "read_aio", "state": 2, "iotype": "read", "errno": 5, "once": True}],
}
SEED_WRITES1 = [("drive1", 0, 65536, 0x44), ("drive1", 33554432, 65536, 0x45)]


def seed_qsd(mode: str | None) -> dict[str, Any]:
    """The seed's two-drive incremental transaction (blockdev-backup), drive1's read fails once."""
    name = f"seed-{mode or 'individual'}"
    retry_base0 = "inc0.qcow2" if mode is None else "full0.qcow2"
    return jscenario(
        "transaction",
        name,
        *(create(f) for f in ("drive0.qcow2", "drive1.qcow2", "full0.qcow2", "full1.qcow2")),
        qcow2("drive0", "drive0.qcow2"),
        blkdebug_qcow2("drive1", "drive1.qcow2", **SEED_BLKDEBUG),
        qcow2("full0", "full0.qcow2"),
        qcow2("full1", "full1.qcow2"),
        transaction(
            bitmap_action("add", "drive0", "bitmap0", granularity=65536),
            bitmap_action("add", "drive1", "bitmap1", granularity=65536),
            backup_action("drive0", "full0", "full", "drive0"),
            backup_action("drive1", "full1", "full", "drive1"),
        ),
        settle(),
        qmp("blockdev-del", {"node-name": "full0"}),
        qmp("blockdev-del", {"node-name": "full1"}),
        *(write(n, o, ln, p) for n, o, ln, p in SEED_WRITES + SEED_WRITES1),
        nodes(),
        sha("drive0", "bitmap0"),
        sha("drive1", "bitmap1"),
        img("create", "-f", "qcow2", "-b", "full0.qcow2", "-F", "qcow2", "inc0.qcow2"),
        img("create", "-f", "qcow2", "-b", "full1.qcow2", "-F", "qcow2", "inc1.qcow2"),
        qcow2("inc0", "inc0.qcow2"),
        qcow2("inc1", "inc1.qcow2"),
        transaction(
            backup_action("drive0", "inc0", "incremental", "drive0", bitmap="bitmap0"),
            backup_action("drive1", "inc1", "incremental", "drive1", bitmap="bitmap1"),
            mode=mode,
        ),
        settle(),
        jobs(),
        nodes(),
        sha("drive0", "bitmap0"),
        sha("drive1", "bitmap1"),
        qmp("blockdev-del", {"node-name": "inc0"}),
        qmp("blockdev-del", {"node-name": "inc1"}),
        img("create", "-f", "qcow2", "-b", retry_base0, "-F", "qcow2", "retry0.qcow2"),
        img("create", "-f", "qcow2", "-b", "full1.qcow2", "-F", "qcow2", "retry1.qcow2"),
        qcow2("retry0", "retry0.qcow2"),
        qcow2("retry1", "retry1.qcow2"),
        transaction(
            backup_action("drive0", "retry0", "incremental", "drive0", bitmap="bitmap0"),
            backup_action("drive1", "retry1", "incremental", "drive1", bitmap="bitmap1"),
            mode=mode,
        ),
        settle(),
        sha("drive0", "bitmap0"),
        sha("drive1", "bitmap1"),
    )


TXN_SETUP = [
    *image("drive0"),
    *image("drive1"),
    *image("t0"),
    *image("t1"),
    add("drive0", "b0"),
    add("drive1", "b1"),
    write("drive0", 0, 65536),
    write("drive0", 8 * M, 65536),
    write("drive1", 0, 65536),
]

TRANSACTION = [
    jscenario(
        "transaction",
        "iotest-236",
        *image("drive0"),
        *steps_236("drive0", lambda ws: [write("drive0", o, n, p) for p, o, n in ws], nodes()),
    ),
    jscenario(
        "transaction",
        "malformed",
        *TXN_SETUP,
        qmp("transaction", {"actions": []}),
        qmp("transaction", {"actions": [], "properties": {}}),
        qmp("transaction", {"actions": [], "properties": {"completion-mode": "grouped"}}),
        qmp("transaction", {"actions": [], "properties": {"completion-mode": "bogus"}}),
        qmp("transaction", {"actions": [], "properties": {"x": 1}}),
        qmp("transaction", {}),
        qmp("transaction", {"actions": {}}),
        qmp("transaction", {"actions": [{"type": "nope", "data": {}}]}),
        qmp("transaction", {"actions": [{"type": "abort"}]}),
        qmp("transaction", {"actions": [{"data": {}}]}),
        qmp("transaction", {"actions": [{"type": "abort", "data": {"x": 1}}]}),
        qmp("transaction", {"actions": [{"type": "abort", "data": {}, "x": 1}]}),
        qmp("transaction", {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "drive0"}}]}),
        qmp("transaction", {"actions": [abort(), {"type": "block-dirty-bitmap-add", "data": {"name": "x"}}]}),
        qmp("transaction", {"actions": [{"type": "blockdev-backup", "data": {"device": "drive0", "sync": "full"}}]}),
        qmp("transaction", {"actions": [{"type": "blockdev-backup", "data": {"device": "drive0", "target": "t0"}}]}),
        qmp(
            "transaction",
            {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "x"}}, 5]},
        ),
        transaction(
            action("blockev-backup", device="drive0", target="t0", sync="incremental", bitmap="b0"),
            backup_action("drive1", "t1", "incremental", bitmap="b1"),
        ),
        transaction(abort()),
        transaction(abort(), mode="grouped"),
        transaction(bitmap_action("add", "drive0", "x")),
        nodes(),
    ),
    jscenario(
        "transaction",
        "grouped-rejects-bitmap-actions",
        *TXN_SETUP,
        transaction(bitmap_action("add", "drive0", "x"), mode="grouped"),
        transaction(bitmap_action("clear", "drive0", "b0"), mode="grouped"),
        transaction(backup_action("drive0", "t0", "full", "j0"), bitmap_action("add", "drive0", "x"), mode="grouped"),
        transaction(bitmap_action("add", "drive0", "x"), backup_action("drive0", "t0", "full", "j0"), mode="grouped"),
        transaction(backup_action("drive0", "t0", "full", "j0"), abort(), mode="grouped"),
        transaction(
            action("block-dirty-bitmap-merge", node="drive0", target="b0", bitmaps=["b0"]),
            mode="individual",
        ),
        jobs(),
        nodes(),
    ),
    jscenario(
        "transaction",
        "rollback-of-created-backups",
        *TXN_SETUP,
        sha("drive0", "b0"),
        transaction(backup_action("drive0", "t0", "full", "j0"), abort()),
        transaction(backup_action("drive0", "t0", "incremental", "j0", bitmap="b0"), abort()),
        sha("drive0", "b0"),
        transaction(backup_action("drive0", "t0", "bitmap", "j0", bitmap="b0", bitmap_mode="always"), abort()),
        sha("drive0", "b0"),
        nodes(),
        transaction(
            backup_action("drive0", "t0", "incremental", "j0", bitmap="b0"), backup_action("drive1", "t0", "full", "j1")
        ),
        transaction(
            bitmap_action("remove", "drive0", "b0"), backup_action("drive0", "t0", "incremental", "j0", bitmap="b0")
        ),
        transaction(bitmap_action("remove", "drive1", "b1"), bitmap_action("clear", "drive1", "b1")),
        transaction(bitmap_action("add", "drive0", "b0"), abort()),
        jobs(),
        nodes(),
    ),
    jscenario(
        "transaction",
        "anchors",
        *TXN_SETUP,
        transaction(bitmap_action("add", "drive0", "a0"), backup_action("drive0", "t0", "full", "j0")),
        settle(),
        nodes(),
        sha("drive0", "a0"),
        transaction(
            bitmap_action("add", "drive0", "a1"),
            backup_action("drive0", "t1", "incremental", "j1", bitmap="a1"),
        ),
        settle(),
        write("drive0", 2 * M, 65536),
        transaction(bitmap_action("clear", "drive0", "b0"), backup_action("drive0", "t0", "full", "j0")),
        settle(),
        nodes(),
    ),
    jscenario(
        "transaction",
        "same-source-twice",
        *TXN_SETUP,
        transaction(backup_action("drive0", "t0", "full", "j0"), backup_action("drive0", "t1", "full", "j1")),
        settle(),
        transaction(
            backup_action("drive0", "t0", "incremental", "j0", bitmap="b0"),
            backup_action("drive0", "t1", "full", "j1"),
            mode="grouped",
        ),
        settle(),
        sha("drive0", "b0"),
    ),
    jscenario(
        "transaction",
        "grouped-both-succeed",
        *TXN_SETUP,
        transaction(
            backup_action("drive0", "t0", "incremental", "j0", bitmap="b0"),
            backup_action("drive1", "t1", "incremental", "j1", bitmap="b1"),
            mode="grouped",
        ),
        settle(),
        sha("drive0", "b0"),
        sha("drive1", "b1"),
        write("drive0", 0, 65536),
        transaction(
            backup_action("drive0", "t0", "incremental", "j0", bitmap="b0", auto_finalize=False),
            backup_action("drive1", "t1", "incremental", "j1", bitmap="b1"),
            mode="grouped",
        ),
        wait("j0", "pending"),
        wait("j1", "pending"),
        jobs(),
        job("finalize", "j1"),
        settle(),
        sha("drive0", "b0"),
    ),
    jscenario(
        "transaction",
        "grouped-cancel-while-other-waits",
        *TXN_SETUP,
        transaction(
            backup_action("drive0", "t0", "full", "j0", speed=SPEED),
            backup_action("drive1", "t1", "incremental", "j1", bitmap="b1"),
            mode="grouped",
            settle=THROTTLE_SETTLE,
        ),
        jobs(),
        bjobs(),
        job("cancel", "j1"),
        job("cancel", "j0"),
        settle(),
        jobs(),
        sha("drive1", "b1"),
    ),
    jscenario(
        "transaction",
        "individual-cancel-one",
        *TXN_SETUP,
        transaction(
            backup_action("drive0", "t0", "full", "j0", speed=SPEED),
            backup_action("drive1", "t1", "incremental", "j1", bitmap="b1"),
            settle=THROTTLE_SETTLE,
        ),
        jobs(),
        job("cancel", "j0"),
        settle(),
        sha("drive1", "b1"),
    ),
    seed_qsd(None),
    seed_qsd("grouped"),
]


# --- 12. blkdebug error injection ------------------------------------------------

W124 = [(0xAB, 0, 512), (0xFE, 16 * M, 256 * K), (0x64, 32736 * K, 64 * K)]  # iotest 124 write set W1


def blkdebug_add(name: str, **rules: Any) -> Step:
    """blockdev-add of a bare blkdebug node over a file node (for argument errors)."""
    image_node = {"driver": "file", "filename": "drive0.qcow2"}
    return qmp("blockdev-add", {"driver": "blkdebug", "node-name": name, "image": image_node, **dashed(rules)})


def read_error(**kw: Any) -> dict[str, Any]:
    """An inject-error rule failing reads with EIO (``kw`` overrides)."""
    return {"event": "read_aio", "errno": 5, **kw}


def blkdebug_source(*rules: dict[str, Any], writes: Any = W124) -> list[Step]:
    """drive0 (qcow2 over blkdebug with inject-error ``rules``), target t0, guest writes ``writes``."""
    return [
        create("drive0.qcow2"),
        blkdebug_qcow2("drive0", "drive0.qcow2", inject_error=list(rules)),
        *image("t0"),
        *(write("drive0", o, n, p) for p, o, n in writes),
    ]


def blkdebug_target(*rules: dict[str, Any]) -> list[Step]:
    """drive0 (qcow2, W124 written) and target t0 (qcow2 over blkdebug with inject-error ``rules``)."""
    return [
        *image("drive0"),
        create("t0.qcow2"),
        blkdebug_qcow2("t0", "t0.qcow2", inject_error=list(rules)),
        *(write("drive0", o, n, p) for p, o, n in W124),
    ]


BLKDEBUG = [
    jscenario(
        "blkdebug",
        "blockdev-add-errors",
        create("drive0.qcow2"),
        blkdebug_add("e1", inject_error=[{"event": "nope"}]),
        blkdebug_add("e2", set_state=[{"event": "nope", "new_state": 2}]),
        blkdebug_add("e3", inject_error=[read_error(iotype="bogus")]),
        blkdebug_add("e4", inject_error=[{"errno": 5}]),
        blkdebug_add("e5", inject_error=[read_error(errno="x")]),
        blkdebug_add("e6", inject_error=[read_error(once="yes")]),
        blkdebug_add("e7", inject_error=[read_error(immediately=1)]),
        blkdebug_add("e8", inject_error=[read_error(state=-1)]),
        blkdebug_add("e9", inject_error=[read_error(sector=-1)]),
        blkdebug_add("e10", inject_error=[read_error(x=1)]),
        blkdebug_add("e11", set_state=[{"event": "read_aio", "state": 1}]),
        blkdebug_add("e12", set_state=[{"event": "read_aio", "new_state": 0}]),
        blkdebug_add("e13", set_state=[{"event": "read_aio", "new_state": -1}]),
        blkdebug_add("e14", align=3),
        blkdebug_add("e15", config="missing.cfg"),
        qmp("blockdev-add", {"driver": "blkdebug", "node-name": "e90"}),
        qmp("blockdev-add", {"driver": "blkdebug", "node-name": "e91", "image": "nope"}),
        blkdebug_add(
            "e16",
            inject_error=[read_error(iotype="read", state=2, once=True, immediately=True, sector=0)],
            set_state=[{"event": "write_aio", "state": 1, "new_state": 2}],
        ),
        blkdebug_add("b2", inject_error=[read_error(iotype="write-zeroes"), read_error(iotype="flush")]),
        nodes(),
    ),
    jscenario(
        "blkdebug",
        "read-error-not-once",
        *blkdebug_source(read_error(once=False)),
        backup("drive0", "t0", "full", "j0", x_perf=X_PERF),
        settle(),
        backup("drive0", "t0", "full", "j1", auto_dismiss=False, x_perf=X_PERF),
        settle(),
        jobs(),
        bjobs(),
        job("dismiss", "j1"),
    ),
    jscenario(
        "blkdebug",
        "read-error-sector-is-host-offset",
        *blkdebug_source(read_error(sector=32768), writes=[*W124, (0x11, 8 * M, 64 * K)]),
        backup("drive0", "t0", "full", "j0", x_perf=X_PERF),
        settle(),
    ),
    jscenario(
        "blkdebug",
        "read-error-stop-then-resume",
        *blkdebug_source(read_error(once=True)),
        add("drive0", "bitmap0"),
        write("drive0", 0, 512, 0x9A),
        write("drive0", 8 * M, 352 * K, 0x55),
        backup("drive0", "t0", "incremental", "j0", bitmap="bitmap0", on_source_error="stop", x_perf=X_PERF),
        settle(),
        jobs(),
        bjobs(),
        nodes(),
        job("pause", "j0"),
        bjob("cancel", "j0"),
        job("resume", "j0"),
        settle(),
        jobs(),
        sha("drive0", "bitmap0"),
        nodes(),
    ),
    jscenario(
        "blkdebug",
        "read-error-stop-then-cancel",
        *blkdebug_source(read_error(once=True)),
        add("drive0", "bitmap0"),
        write("drive0", 0, 512, 0x9A),
        backup(
            "drive0",
            "t0",
            "incremental",
            "j0",
            bitmap="bitmap0",
            on_source_error="stop",
            auto_dismiss=False,
            x_perf=X_PERF,
        ),
        settle(),
        bjobs(),
        job("cancel", "j0"),
        settle(),
        jobs(),
        bjobs(),
        sha("drive0", "bitmap0"),
    ),
    jscenario(
        "blkdebug",
        "read-error-ignore",
        *blkdebug_source(read_error(once=True)),
        backup("drive0", "t0", "full", "j0", on_source_error="ignore", x_perf=X_PERF),
        settle(),
        jobs(),
    ),
    jscenario(
        "blkdebug",
        "read-error-enospc-and-auto-policies",
        *blkdebug_source(read_error(once=False)),
        backup("drive0", "t0", "full", "j0", on_source_error="enospc", x_perf=X_PERF),
        settle(),
        backup("drive0", "t0", "full", "j1", on_source_error="auto", x_perf=X_PERF),
        settle(),
    ),
    jscenario(
        "blkdebug",
        "read-error-immediately",
        *blkdebug_source(read_error(once=True, immediately=True)),
        backup("drive0", "t0", "full", "j0", x_perf=X_PERF),
        settle(),
    ),
    jscenario(
        "blkdebug",
        "target-enospc-stop",
        *blkdebug_target({"event": "write_aio", "errno": 28, "once": True}),
        backup("drive0", "t0", "full", "j0", on_target_error="enospc", x_perf=X_PERF),
        settle(),
        jobs(),
        bjobs(),
        bjob("resume", "j0"),
        settle(),
        jobs(),
    ),
    jscenario(
        "blkdebug",
        "target-enospc-report",
        *blkdebug_target({"event": "write_aio", "errno": 28, "once": True}),
        backup("drive0", "t0", "full", "j0", auto_dismiss=False, x_perf=X_PERF),
        settle(),
        jobs(),
        bjobs(),
        job("dismiss", "j0"),
    ),
    jscenario(
        "blkdebug",
        "target-eio-with-enospc-policy",
        *blkdebug_target({"event": "write_aio", "errno": 5, "once": True}),
        backup("drive0", "t0", "full", "j0", on_target_error="enospc", x_perf=X_PERF),
        settle(),
    ),
    jscenario(
        "blkdebug",
        "target-error-stop-twice",
        *blkdebug_target({"event": "write_aio", "errno": 5, "once": False}),
        backup("drive0", "t0", "full", "j0", on_target_error="stop", x_perf=X_PERF),
        settle(),
        bjobs(),
        job("resume", "j0"),
        settle(),
        bjobs(),
        job("cancel", "j0"),
        settle(),
    ),
]

# --- 13. the system emulator: -drive devices, HMP qemu-io, drive-backup ----------------------------

SEED_DRIVES = [
    {"id": "drive0", "file": "d0.qcow2", "format": "qcow2", "size": "64M"},
    {"id": "drive1", "file": "d1.qcow2", "format": "qcow2", "size": "64M", "blkdebug": SEED_BLKDEBUG},
]


def qemu_io(device: str, command: str) -> Step:
    """HMP ``qemu-io DEVICE "COMMAND"``."""
    return hmp(f'qemu-io {device} "{command}"')


def seed_drive_backup(device: str, n: int) -> dict[str, Any]:
    """The seed's drive-backup action (verbatim), for drive ``n``."""
    return {
        "type": "drive-backup",
        "data": {
            "device": device,
            "bitmap": f"bitmap{n}",
            "format": "qcow2",
            "mode": "existing",
            "sync": "incremental",
            "target": f"d{n}-incr-1.qcow2",
        },
    }


def seed_system(mode: str | None) -> dict[str, Any]:
    """The seed (docs/bitmaps.md "Partial Transactional Failures" / "Grouped Completion Mode")."""
    properties = {} if mode is None else {"properties": {"completion-mode": mode}}
    retry0_base = "d0-incr-1.qcow2" if mode is None else "d0-full.qcow2"
    return jscenario(
        "system",
        f"seed-{mode or 'individual'}",
        qmp("query-block"),
        nodes(),
        transaction(
            bitmap_action("add", "drive0", "bitmap0", granularity=65536),
            bitmap_action("add", "drive1", "bitmap1", granularity=65536),
            action("drive-backup", device="drive0", target="d0-full.qcow2", sync="full", format="qcow2"),
            action("drive-backup", device="drive1", target="d1-full.qcow2", sync="full", format="qcow2"),
        ),
        settle(),
        qmp("query-block"),
        qemu_io("drive0", "write -P 0x41 0 65536"),
        qemu_io("drive0", "write -P 0x42 126976 8192"),
        qemu_io("drive0", "write -P 0x43 1048576 131072"),
        qemu_io("drive1", "write -P 0x44 0 65536"),
        qemu_io("drive1", "write -P 0x45 33554432 65536"),
        qmp("query-block"),
        img("create", "-f", "qcow2", "-b", "d0-full.qcow2", "-F", "qcow2", "d0-incr-1.qcow2"),
        img("create", "-f", "qcow2", "-b", "d1-full.qcow2", "-F", "qcow2", "d1-incr-1.qcow2"),
        qmp("transaction", {"actions": [seed_drive_backup("drive0", 0), seed_drive_backup("drive1", 1)], **properties}),
        settle(),
        jobs(),
        qmp("query-block"),
        sha("drive0", "bitmap0"),
        sha("drive1", "bitmap1"),
        img("create", "-f", "qcow2", "-b", retry0_base, "-F", "qcow2", "d0-retry.qcow2"),
        img("create", "-f", "qcow2", "-b", "d1-full.qcow2", "-F", "qcow2", "d1-retry.qcow2"),
        transaction(
            action(
                "drive-backup",
                device="drive0",
                bitmap="bitmap0",
                format="qcow2",
                mode="existing",
                sync="incremental",
                target="d0-retry.qcow2",
            ),
            action(
                "drive-backup",
                device="drive1",
                bitmap="bitmap1",
                format="qcow2",
                mode="existing",
                sync="incremental",
                target="d1-retry.qcow2",
            ),
            mode=mode,
        ),
        settle(),
        qmp("query-block"),
        img("info", "-U", "--backing-chain", "d0-retry.qcow2"),
        machine="system",
        drives=SEED_DRIVES,
    )


SYSTEM = [
    seed_system(None),
    seed_system("grouped"),
    jscenario(
        "system",
        "default-job-id-and-queries",
        add("drive0", "bitmap0"),
        qemu_io("drive0", "write -P 0x41 0 64k"),
        qemu_io("drive0", "write -P 0x42 4M 2M"),
        qemu_io("drive0", "read 0 512"),
        qemu_io("drive0", "write -P 0x43 1G 512"),
        qemu_io("nope", "write 0 512"),
        hmp("qemu-io drive0 bogus"),
        hmp("info block"),
        qmp("query-block"),
        create("t0.qcow2"),
        qcow2("t0", "t0.qcow2"),
        qmp("blockdev-backup", {"device": "drive0", "target": "t0", "sync": "full", "speed": SPEED}, THROTTLE_SETTLE),
        qmp("query-block"),
        bjobs(),
        jobs(),
        nodes(),
        qemu_io("drive0", "write -P 0x44 8M 64k"),
        hmp("info block-jobs"),
        bjob("cancel", "drive0"),
        settle(),
        qmp(
            "drive-backup",
            {"device": "drive0", "target": "d0-b.qcow2", "sync": "full", "format": "qcow2", "speed": SPEED},
            THROTTLE_SETTLE,
        ),
        jobs(),
        job("cancel", "drive0"),
        settle(),
        qmp("drive-backup", {"device": "drive0", "target": "missing.qcow2", "sync": "full", "mode": "existing"}),
        qmp("drive-backup", {"device": "drive0", "target": "d0-c.qcow2", "sync": "incremental", "format": "qcow2"}),
        img("info", "-U", "d0-c.qcow2"),
        qmp("drive-backup", {"device": "nope", "target": "d0-d.qcow2", "sync": "full"}),
        qmp("drive-backup", {"device": "drive0", "target": "d0-e.qcow2", "sync": "top", "format": "qcow2"}, 0.2),
        settle(),
        qmp(
            "drive-backup",
            {"device": "drive0", "target": "d0-f.qcow2", "sync": "none", "format": "qcow2", "job-id": "none0"},
            THROTTLE_SETTLE,
        ),
        qmp("query-block"),
        job("cancel", "none0"),
        settle(),
        img("info", "-U", "d0-f.qcow2"),
        qmp("query-block"),
        machine="system",
        drives=[{"id": "drive0", "file": "d0.qcow2", "format": "qcow2", "size": "64M"}],
    ),
    jscenario(
        "system",
        "iotest-236",
        *steps_236(
            "drive0",
            lambda ws: [qemu_io("drive0", f"write -P{p:#x} {o} {n}") for p, o, n in ws],
            qmp("query-block"),
        ),
        machine="system",
        drives=[{"id": "drive0", "file": "d0.qcow2", "format": "qcow2", "size": "64M"}],
    ),
]


# --- 16. NBD exports at the QMP level (blockdev-nbd.c, block/export/export.c, nbd/server.c) --------
# Sockets stay inside the work directory; only 127.0.0.1 is used for inet (port 0: any free port).
# No guest writes after the scenario's own nbd-server-start (the recorder would start its own).

NBD_UNIX = {"type": "unix", "data": {"path": "nbd.sock"}}


def nbd_start(addr: dict[str, Any] | None = None, **kw: Any) -> Step:
    """nbd-server-start on ``addr`` (default: the unix socket nbd.sock in the work directory)."""
    return qmp("nbd-server-start", {"addr": addr or NBD_UNIX, **kw})


def export(export_id: str, node: str, settle: float | None = None, **kw: Any) -> Step:
    """block-export-add of type nbd (``kw``: name, writable, bitmaps, ... with dashes for underscores)."""
    return qmp("block-export-add", {"type": "nbd", "id": export_id, "node-name": node, **dashed(kw)}, settle)


def unexport(export_id: str, **kw: Any) -> Step:
    """block-export-del, waiting for BLOCK_EXPORT_DELETED."""
    return qmp("block-export-del", {"id": export_id, **kw}, settle=0.1)


def exports() -> Step:
    """query-block-exports."""
    return qmp("query-block-exports")


NBD_EXPORT = [
    jscenario(
        "nbd_export",
        "server",
        exports(),
        qmp("nbd-server-stop"),
        nbd_start({"type": "unix", "data": {"path": "s" * 109}}),
        nbd_start({"type": "unix", "data": {"path": "s" * 108}}),
        qmp("nbd-server-stop"),
        null("n0"),
        export("e0", "n0"),
        nbd_start(),
        nbd_start(),
        nbd_start({"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}}),
        qmp("nbd-server-stop"),
        qmp("nbd-server-stop"),
        nbd_start({"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}}),
        qmp("nbd-server-stop"),
        nbd_start({"type": "unix", "data": {"path": "WORKDIR/abs.sock"}}, **{"max-connections": 2}),
        qmp("nbd-server-stop"),
        nbd_start(**{"tls-creds": "nope"}),
        nbd_start({"type": "fd", "data": {"str": "nope"}}),
        qmp("nbd-server-start", {}),
        qmp("nbd-server-start", {"addr": {"type": "unix"}}),
        qmp("nbd-server-start", {"addr": {"type": "unix", "data": {}}}),
        qmp("nbd-server-start", {"addr": {"type": "tcp", "data": {}}}),
        qmp("nbd-server-start", {"addr": NBD_UNIX, "max-connections": -1}),
        qmp("nbd-server-stop", {"x": 1}),
        nbd_start(),
        export("e0", "n0"),
        exports(),
        qmp("nbd-server-stop"),
        exports(),
        qmp("nbd-server-stop"),
    ),
    jscenario(
        "nbd_export",
        "export-add-errors",
        null("n0"),
        null("n1"),
        nbd_start(),
        export("1bad", "n0"),
        export("", "n0"),
        export("e0", "nope"),
        export("e0", ""),
        export("e0", "n0", iothread="nope"),
        export("e0", "n0", iothread="nope", fixed_iothread=True),
        export("e0", "n0", name="x" * 4097),
        export("e0", "n0", description="d" * 4097),
        export("e0", "n0", fixed_iothread=True, writethrough=True, description="first", allocation_depth=True),
        export("e0", "n1"),
        export("e1", "n0"),
        export("e1", "n1", name="n0"),
        export("e1", "n1", name="x" * 4096),
        export("e2", "n1", writable=True),
        export("e3", "n0", name="again"),
        exports(),
        qmp("block-export-add", {"type": "nbd", "id": "e4", "node-name": "n0", "bitmap": "b"}),
        qmp("block-export-add", {"type": "nbd", "id": "e4"}),
        qmp("block-export-add", {"type": "nope", "id": "e4", "node-name": "n0"}),
        qmp("block-export-add", {"id": "e4", "node-name": "n0"}),
        qmp("block-export-del", {"id": "nope"}),
        qmp("block-export-del", {"id": "e0", "mode": "soft"}),
        qmp("block-export-del", {}),
        qmp("blockdev-del", {"node-name": "n0"}),
        qmp("blockdev-del", {"node-name": "n1"}),
        unexport("e0"),
        exports(),
        unexport("e1", mode="hard"),
        unexport("e2", mode="safe"),
        exports(),
        qmp("blockdev-del", {"node-name": "n1"}),
        qmp("blockdev-del", {"node-name": "n0"}),
        unexport("e3"),
        unexport("e3"),
        qmp("blockdev-del", {"node-name": "n0"}),
        exports(),
    ),
    jscenario(
        "nbd_export",
        "export-bitmaps",
        null("n0"),
        add("n0", "on"),
        add("n0", "off", disabled=True),
        add("n0", "other"),
        null("n1"),
        add("n1", "b1"),
        nbd_start(),
        export("e0", "n0", bitmaps=["nope"]),
        export("e0", "n0", bitmaps=["on"]),
        export("e0", "n0", bitmaps=["off", "on"]),
        export("e0", "n0", bitmaps=["off", "nope"]),
        export("e0", "n0", bitmaps=[{"node": "n1", "name": "nope"}]),
        export("e0", "n0", bitmaps=[{"node": "nope", "name": "b1"}]),
        export("e0", "n0", bitmaps=[1]),
        export("e0", "n0", bitmaps=[{"node": "n1", "name": "b1"}], name="ext"),
        nodes(),
        export("e1", "n0", bitmaps=[{"node": "n1", "name": "b1"}], name="ext2", writable=True),
        export("e1", "n0", bitmaps=["on"], name="ext2", writable=True),
        nodes(),
        export("e2", "n0", bitmaps=["on"], name="ext3", writable=True),
        export("e2", "n0", bitmaps=["off", "off"], name="ext3"),
        export("e3", "n0", bitmaps=[], name="ext4"),
        export("e5", "n0", bitmaps=["on"], name="ext5"),
        exports(),
        nodes(),
        bm("clear", "n0", "off"),
        bm("enable", "n0", "off"),
        bm("disable", "n0", "on"),
        bm("remove", "n0", "off"),
        merge("n0", "off", ["other"]),
        merge("n0", "other", ["off"]),
        merge("n0", "other", [{"node": "n1", "name": "b1"}]),
        sha("n0", "off"),
        qmp("transaction", {"actions": [{"type": "block-dirty-bitmap-clear", "data": {"node": "n0", "name": "on"}}]}),
        qmp("transaction", {"actions": [{"type": "block-dirty-bitmap-disable", "data": {"node": "n1", "name": "b1"}}]}),
        null("t0"),
        backup("n0", "t0", "incremental", "j0", bitmap="on"),
        backup("n0", "t0", "bitmap", "j0", bitmap="off", bitmap_mode="never"),
        backup("n1", "t0", "full", "j0", bitmap="b1", bitmap_mode="always"),
        transaction(backup_action("n0", "t0", "incremental", "j0", bitmap="off")),
        export("e6", "n0", bitmaps=[{"node": "n0", "name": "other"}], name="ext6"),
        unexport("e1"),
        nodes(),
        qmp("nbd-server-stop"),
        nodes(),
        exports(),
        bm("remove", "n0", "off"),
    ),
    jscenario(
        "nbd_export",
        "check-order",
        null("n0"),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "ro", "size": SIZE, "read-only": True}),
        export("1bad", "nope"),
        export("e0", "nope"),
        export("e0", "nope", iothread="nope"),
        export("e0", "n0", iothread="nope"),
        export("e0", "ro", writable=True, iothread="nope"),
        export("e0", "ro", writable=True),
        export("e0", "n0", bitmaps=["nope"], name="x" * 4097),
        nbd_start(),
        export("e0", "ro", writable=True, name="x" * 4097),
        export("e0", "n0", name="x" * 4097, description="d" * 4097),
        export("e0", "n0", description="d" * 4097, bitmaps=["nope"]),
        export("e0", "n0"),
        export("e0", "nope"),
        export("e1", "n0", bitmaps=["nope"]),
        qmp("blockdev-add", {"driver": "blkdebug", "node-name": "dbg",
                             "image": {"driver": "null-co", "node-name": "under", "size": SIZE}}),
        add("under", "u", disabled=True),
        export("e1", "dbg", bitmaps=["u"], name="dbg"),
        add("ro", "robm"),
        export("e2", "ro", bitmaps=["robm"], name="ro"),
        bm("enable", "under", "u"),
        bm("remove", "ro", "robm"),
        exports(),
    ),
    jscenario(
        "nbd_export",
        "export-graph",
        create("base.qcow2"),
        create("top.qcow2", "64M", "qcow2", "-b", "base.qcow2", "-F", "qcow2"),
        qcow2("base", "base.qcow2"),
        qcow2("top", "top.qcow2", backing="base"),
        add("base", "bb"),
        add("top", "tb", disabled=True),
        nbd_start(),
        export("t", "top", bitmaps=["bb"]),
        bm("disable", "base", "bb"),
        export("t", "top", bitmaps=["bb", "tb"]),
        export("b", "base", name="base-w", writable=True),
        exports(),
        qmp("blockdev-del", {"node-name": "base"}),
        unexport("t"),
        nodes(),
        create("ro.qcow2"),
        qmp("blockdev-add", {"driver": "qcow2", "node-name": "q1", "file": {"driver": "file", "node-name": "f1",
                                                                           "filename": "ro.qcow2"},
                             "read-only": True}),
        add("q1", "ro-bm"),
        add("f1", "file-bm"),
        export("w", "q1", writable=True),
        export("r", "q1", bitmaps=["file-bm"]),
        export("r2", "f1", name="file", writable=True),
        exports(),
        qmp("blockdev-del", {"node-name": "f1"}),
        qmp("blockdev-del", {"node-name": "q1"}),
        unexport("r"),
        unexport("r2"),
        qmp("blockdev-del", {"node-name": "q1"}),
        create("raw.img", "64M", "raw"),
        qmp("blockdev-add", {"driver": "raw", "node-name": "r0", "file": {"driver": "file", "node-name": "rf",
                                                                          "filename": "raw.img"}}),
        add("rf", "under-raw"),
        export("x", "r0", bitmaps=["under-raw"]),
        bm("disable", "rf", "under-raw"),
        export("x", "r0", bitmaps=["under-raw"]),
        exports(),
    ),
    jscenario(
        "nbd_export",
        "export-child-nodes",
        create("d.qcow2"),
        create("r.raw", "64M", "raw"),
        qcow2("q0", "d.qcow2"),
        qmp("blockdev-add", {"driver": "raw", "node-name": "r0", "file": {"driver": "file", "node-name": "rf",
                                                                          "filename": "r.raw"}}),
        qmp("blockdev-add", {"driver": "blkdebug", "node-name": "dbg",
                             "image": {"driver": "null-co", "node-name": "under", "size": SIZE}}),
        nbd_start(),
        export("e0", "f-q0", writable=True),
        export("e0", "f-q0"),
        export("e1", "rf", writable=True),
        export("e2", "under", writable=True),
        export("e3", "q0", writable=True),
        exports(),
        qmp("blockdev-del", {"node-name": "q0"}),
        exports(),
        export("e4", "f-q0", name="f2", writable=True),
        unexport("e0"),
        create("ro.qcow2"),
        qmp("blockdev-add", {"driver": "file", "node-name": "rof", "filename": "ro.qcow2"}),
        qmp("blockdev-add", {"driver": "qcow2", "node-name": "roq", "file": "rof", "read-only": True}),
        export("e5", "rof", name="rof-w", writable=True),
        export("e5", "rof", name="rof-r"),
        unexport("e5"),
        qmp("blockdev-del", {"node-name": "dbg"}),
        qmp("blockdev-del", {"node-name": "under"}),
        exports(),
        nodes(),
        unexport("e2"),
        nodes(),
        qmp("blockdev-del", {"node-name": "r0"}),
        unexport("e1"),
        nodes(),
    ),
    jscenario(
        "nbd_export",
        "deprecated-nbd-server-add",
        null("n0"),
        add("n0", "off", disabled=True),
        add("n0", "on"),
        qmp("blockdev-add", {"driver": "null-co", "node-name": "ro", "size": SIZE, "read-only": True}),
        qmp("nbd-server-add", {"device": "n0"}),
        qmp("nbd-server-remove", {"name": "n0"}),
        nbd_start(),
        qmp("nbd-server-add", {"device": "nope"}),
        qmp("nbd-server-add", {"device": "n0"}),
        qmp("nbd-server-add", {"device": "n0"}),
        qmp("nbd-server-add", {"device": "n0", "name": "x", "description": "d", "writable": True, "bitmap": "off"}),
        qmp("nbd-server-add", {"device": "n0", "name": "y", "bitmap": "on"}),
        qmp("nbd-server-add", {"device": "n0", "name": "1bad"}),
        qmp("nbd-server-add", {"device": "ro", "writable": True}),
        export("e0", "n0", name="z"),
        exports(),
        nodes(),
        qmp("nbd-server-remove", {"name": "nope"}),
        qmp("nbd-server-remove", {"name": "x", "mode": "hard"}, settle=0.1),
        qmp("nbd-server-remove", {"name": "n0"}, settle=0.1),
        qmp("nbd-server-remove", {"name": "e0", "mode": "safe"}, settle=0.1),
        qmp("block-export-del", {"id": "ro"}, settle=0.1),
        exports(),
    ),
    jscenario(
        "nbd_export",
        "device-exports",
        nbd_start(),
        qmp("nbd-server-add", {"device": "drive0"}),
        export("e0", "drive0"),
        add("drive0", "b0", disabled=True),
        qmp("nbd-server-add", {"device": "drive0", "name": "with-bitmap", "bitmap": "b0"}),
        exports(),
        qmp("query-block"),
        qmp("nbd-server-remove", {"name": "drive0"}, settle=0.1),
        qmp("nbd-server-stop"),
        exports(),
        machine="system",
        drives=[{"id": "drive0", "file": "d0.qcow2", "format": "qcow2", "size": "64M"}],
    ),
    jscenario(
        "nbd_export",
        "export-during-backup",
        null("n0"),
        add("n0", "b0"),
        null("t0"),
        null("t1"),
        nbd_start(),
        export("e0", "n0", writable=True),
        export("e1", "n0"),
        throttled("n0", "t0", "full", "j0", filter_node_name="cbw0", bitmap="b0", bitmap_mode="on-success"),
        exports(),
        export("e6", "n0", name="frozen", bitmaps=["b0"]),
        export("e6", "cbw0", name="frozen", bitmaps=["b0"]),
        export("e2", "n0", name="during", writable=True),
        export("e3", "n0", name="during-ro"),
        export("e4", "cbw0", name="filter"),
        export("e5", "t0", name="target", writable=True),
        exports(),
        qmp("blockdev-del", {"node-name": "n0"}),
        qmp("blockdev-del", {"node-name": "t0"}),
        bjob("cancel", "j0"),
        settle(),
        exports(),
        unexport("e4"),
        exports(),
        qmp("nbd-server-stop"),
        exports(),
    ),
]


SCENARIOS: list[dict[str, Any]] = [
    *ADD,
    *MANAGE,
    *MERGE,
    *SHA,
    *BLOCKDEV,
    *GUEST,
    *QAPI,
    *QEMU_IMG_SCENARIOS,
    *JOBS,
    *BACKUP_ERRORS,
    *BACKUP_SYNC,
    *TRANSACTION,
    *BLKDEBUG,
    *SYSTEM,
    *NBD_EXPORT,
]
