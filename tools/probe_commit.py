#!/usr/bin/env python3
"""Record real QEMU 7.2's block-commit (active commit = mirror-based, intermediate commit = commit job).

    .venv/bin/python tools/probe_commit.py --daemon qsd|system --out DIR [--only NAME[,NAME]] [--repeat N]

The recording machinery (raw-JSON QMP ``Daemon``, ``Ctx`` phases, steps, output layout) is the one of
tools/probe_mirror.py, re-used as is; see its docstring for the JSON format of DIR/<daemon>/<scenario>.json.
Chains are built offline (qemu-img create -b ... -F qcow2, data written by qemu-io) and opened with one
blockdev-add of the top that nests the backing chain by node names (base/mid/top, protocol nodes <name>-file),
unless a phase opens them with -drive (system emulator).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import probe_mirror
from probe_mirror import Ctx, Daemon, MiB, img, kill_job, qcow, shell

# -- data written offline, per layer (offsets chosen so that every layer has clusters of its own) -----------------
BASE_W = ["write -P 0x41 0 2M", "write -P 0x42 8M 64k", "write -P 0x43 30M 512"]
MID_W = ["write -P 0x51 1M 512k", "write -P 0x52 12M 1M"]
TOP_W = ["write -P 0x61 1536k 64k", "write -P 0x62 20M 1M"]
BASE = ("base", "64M", BASE_W)
MID = ("mid", "64M", MID_W)
TOP = ("top", "64M", TOP_W)
LONE = ("lone", "64M", ["write -P 0x11 0 64k"])
OTHER = [("ob", "64M", ["write -P 0x21 0 64k"]), ("ot", "64M", ["write -P 0x22 64k 64k"])]
DRIVE = "if=none,id=drive0,file=top.qcow2,format=qcow2"


def chain_files(*chains: list[tuple[str, str, list[str]]]) -> Callable[[Path, list], None]:
    """Each chain is a list of (name, size, qemu-io writes), bottom first; name.qcow2 backs the next one."""
    def files(wd: Path, steps: list) -> None:
        for chain in chains:
            prev = None
            for name, size, writes in chain:
                opts = ("-b", f"{prev}.qcow2", "-F", "qcow2") if prev else ()
                img(wd, f"{name}.qcow2", size, *opts, writes=writes, steps=steps)
                prev = name
    return files


def chain_def(names: list[str], extras: dict[str, dict] | None = None) -> dict:
    """blockdev-add options of names[-1] with the backing chain nested by node names (bottom first)."""
    extras = extras or {}
    d: dict | None = None
    for n in names:
        nd = qcow(n, f"{n}.qcow2", **extras.get(n, {}))
        if d is not None:
            nd["backing"] = d
        d = nd
    assert d is not None
    return d


def commit(d: Daemon, note: str | None = None, **kw) -> dict:
    args = {"job-id": "c", "device": "top"}
    args.update({k.replace("_", "-"): v for k, v in kw.items()})
    args = {k: v for k, v in args.items() if v is not None}
    if note:
        d.note(note)
    return d.qmp("block-commit", args)


def kill_all(d: Daemon) -> None:
    for j in d.ok("query-jobs", record=False) or []:
        if j["status"] in ("concluded",):
            d.qmp("job-dismiss", {"id": j["id"]})
        elif j["status"] in ("pending", "waiting"):
            d.qmp("job-cancel", {"id": j["id"]})
            d.wait_status(j["id"], {"gone", "concluded"})
            if any(x["id"] == j["id"] for x in d.ok("query-jobs", record=False) or []):
                d.qmp("job-dismiss", {"id": j["id"]})
        else:
            kill_job(d, j["id"])


def try_commit(d: Daemon, note: str, **kw) -> dict:
    """A block-commit expected to fail; if it starts a job (slowed down with speed 64k unless speed is given),
    record one poll and the graph, then cancel (force) every job."""
    kw.setdefault("speed", 65536)
    r = commit(d, note, **kw)
    if "return" in r:
        d.poll(lambda *a: True)
        d.qmp("x-debug-query-block-graph", note=f"job started by: {note}")
        kill_all(d)
    return r


def bitmaps(d: Daemon, tag: str, pairs: list[tuple[str, str]]) -> None:
    d.qmp("query-named-block-nodes", {"flat": True}, note=f"{tag}: bitmaps")
    for node, name in pairs:
        d.qmp("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": name}, note=tag)


def node_by_file(d: Daemon, fname: str, drv: str = "qcow2") -> str | None:
    for n in d.ok("query-named-block-nodes", {"flat": True}, record=False) or []:
        if n["drv"] == drv and Path(n["file"]).name == fname:
            return n["node-name"]
    return None


def try_del(d: Daemon, *nodes: str) -> None:
    for n in nodes:
        d.qmp("blockdev-del", {"node-name": n})
        d.qmp("query-named-block-nodes", {"flat": True}, note=f"after blockdev-del {n}")


def offline(d: Daemon, top: str = "top.qcow2", maps: tuple[str, ...] = ("base.qcow2", "top.qcow2"),
            reads: tuple[tuple[str, str], ...] = ()) -> None:
    d.close()
    shell(d, ["qemu-img", "info", "-U", "--backing-chain", top])
    for f in maps:
        shell(d, ["qemu-img", "map", "--output=json", "-U", f])
    for f, cmd in reads:
        shell(d, ["qemu-io", "-r", "-U", "-f", "qcow2", f, "-c", cmd])


# reads that tell which layer's data ended up in base.qcow2
BASE_READS = (("base.qcow2", "read -P 0x41 0 1M"), ("base.qcow2", "read -P 0x51 1M 512k"),
              ("base.qcow2", "read -P 0x61 1536k 64k"), ("base.qcow2", "read -P 0x41 1600k 448k"),
              ("base.qcow2", "read -P 0x52 12M 1M"), ("base.qcow2", "read -P 0x62 20M 1M"),
              ("base.qcow2", "read -P 0x71 3M 64k"), ("base.qcow2", "read -P 0x72 6M 64k"),
              ("base.qcow2", "read -P 0x73 7M 64k"))


def running(d: Daemon, job: str) -> None:
    """Poll until the job made progress (or is gone/ready)."""
    d.poll(lambda j, b, ev: not any(x["id"] == job for x in j)
           or any(x["id"] == job and (x["current-progress"] > 0 or x["status"] not in ("created", "running"))
                  for x in j), interval=0.002)


# =====================================================================================================================
def sc_active_basic(c: Ctx) -> None:
    files = chain_files([BASE, TOP])
    phases: list[tuple[str, list[str] | None]] = [("node", None)]
    if c.kind == "qsd":
        phases.append(("node-no-export", None))
    else:
        phases.append(("drive", [DRIVE]))
    for name, drives in phases:
        d = c.phase(name, files, drives=drives)
        if drives:
            d.qmp("query-block", note="before")
            top, base, jid = "drive0", node_by_file(d, "base.qcow2") or "?", "drive0"
            top_node = node_by_file(d, "top.qcow2") or "?"
            d.note(f"base node is {base}; top node is {top_node}")
        else:
            d.qmp("blockdev-add", chain_def(["base", "top"]))
            top, base, jid, top_node = "top", "base", "c", "top"
        guest = c.kind == "system" or name == "node"
        if c.kind == "qsd" and guest:
            d.export("top")
        d.qmp("block-dirty-bitmap-add", {"node": top, "name": "bt"})
        d.qmp("block-dirty-bitmap-add", {"node": base, "name": "bb"})
        if guest:
            d.gw(top, "write -P 0x71 3M 64k")
        d.graph("before")
        pairs = [(top, "bt"), (base, "bb")] + ([(top_node, "bt")] if drives else [])
        bitmaps(d, "before", pairs)
        if drives:
            d.qmp("block-commit", {"device": "drive0"})
        else:
            commit(d)
        d.wait_status(jid, {"ready", "concluded", "gone"}, interval=0.002)
        d.qmp("query-block-jobs", note="ready")
        d.qmp("query-jobs", note="ready")
        d.graph("ready")
        bitmaps(d, "ready", pairs)
        if guest:
            d.gw(top, "write -P 0x72 6M 64k")
            d.poll(lambda *a: True)
            bitmaps(d, "ready, after guest write", pairs)
        d.qmp("job-complete", {"id": jid})
        d.wait_gone(jid)
        d.graph("after completion")
        bitmaps(d, "after completion", pairs + ([("base", "bt")] if not drives else []))
        if guest:
            d.gw(top, "write -P 0x73 7M 64k")
            bitmaps(d, "after completion and a guest write", pairs)
        if drives:
            try_del(d, base, top_node, "drive0")
        else:
            try_del(d, "base", "top")
            if c.kind == "qsd" and guest:
                d.qmp("block-export-del", {"id": "exp-top"})
                d.wait(0.1)
                d.qmp("query-named-block-nodes", {"flat": True}, note="after block-export-del")
            try_del(d, "base")
        offline(d, reads=BASE_READS)


def sc_active_cancel(c: Ctx) -> None:
    files = chain_files([BASE, ("top", "64M", [*TOP_W, "write -P 0x63 40M 6M"])])
    for name in ("cancel-running", "cancel-ready", "cancel-force-ready", "job-cancel-ready"):
        d = c.phase(name, files)
        d.qmp("blockdev-add", chain_def(["base", "top"]))
        d.qmp("block-dirty-bitmap-add", {"node": "base", "name": "bb"})
        d.qmp("query-named-block-nodes", {"flat": True}, note="before")
        if name == "cancel-running":
            commit(d, speed=MiB)
            running(d, "c")
            d.qmp("query-named-block-nodes", {"flat": True}, note="running")
            d.qmp("x-debug-query-block-graph", note="running")
            d.qmp("block-job-cancel", {"device": "c"})
        else:
            commit(d)
            d.wait_status("c", {"ready", "concluded", "gone"}, interval=0.002)
            d.qmp("query-named-block-nodes", {"flat": True}, note="ready")
            if name == "cancel-ready":
                d.qmp("block-job-cancel", {"device": "c"})
            elif name == "cancel-force-ready":
                d.qmp("block-job-cancel", {"device": "c", "force": True})
            else:
                d.qmp("job-cancel", {"id": "c"})
        d.wait_gone("c")
        d.graph("after cancel")
        bitmaps(d, "after cancel", [("base", "bb")])
        try_del(d, "top")
        offline(d, reads=BASE_READS[:6] + (("base.qcow2", "read -P 0x63 40M 6M"),))


def sc_active_three(c: Ctx) -> None:
    files = chain_files([BASE, MID, TOP])
    cases = [("top-into-base", {}), ("top-into-base-node", {"base_node": "base"}),
             ("top-into-mid", {"base_node": "mid"}), ("top-node-top-into-base", {"top_node": "top"})]
    for name, kw in cases:
        d = c.phase(name, files)
        d.qmp("blockdev-add", chain_def(["base", "mid", "top"]))
        d.graph("before")
        commit(d, **kw)
        d.wait_status("c", {"ready", "concluded", "gone"}, interval=0.002)
        d.graph("ready")
        d.qmp("job-complete", {"id": "c"})
        d.wait_gone("c")
        d.graph("after completion")
        try_del(d, "base", "mid", "top")
        offline(d, maps=("base.qcow2", "mid.qcow2"),
                reads=BASE_READS[:6] + (("mid.qcow2", "read -P 0x62 20M 1M"),))
    if c.kind == "system":
        d = c.phase("drive", files, drives=[DRIVE])
        d.graph("before")
        d.qmp("block-commit", {"device": "drive0"})
        d.wait_status("drive0", {"ready", "concluded", "gone"}, interval=0.002)
        d.graph("ready")
        d.qmp("job-complete", {"id": "drive0"})
        d.wait_gone("drive0")
        d.graph("after completion")
        offline(d, maps=("base.qcow2",), reads=BASE_READS[:6])


def blkdebug_base(event: str = "write_aio") -> dict:
    return {"file": {"driver": "blkdebug", "node-name": "base-dbg",
                     "inject-error": [{"event": event, "errno": 5, "once": True}],
                     "image": {"driver": "file", "node-name": "base-file", "filename": "base.qcow2"}}}


def sc_intermediate(c: Ctx) -> None:
    files = chain_files([BASE, MID, TOP])
    cases: list[tuple[str, dict, list[str] | None]] = [
        ("node-names", {"top_node": "mid", "base_node": "base"}, None),
        ("top-node-only", {"top_node": "mid"}, None),
        ("backing-file-custom", {"top_node": "mid", "base_node": "base", "backing_file": "custom-name.qcow2"}, None),
        ("file-names-relative", {"top": "mid.qcow2", "base": "base.qcow2"}, None),
        ("file-names-absolute", {"top": "ABS/mid.qcow2", "base": "ABS/base.qcow2"}, None),
        ("cancel-running", {"top_node": "mid", "base_node": "base"}, None),
        ("filter-node-name", {"top_node": "mid", "base_node": "base", "filter_node_name": "cf"}, None),
    ]
    if c.kind == "system":
        cases.append(("drive-file-names", {"job_id": None, "device": "drive0", "top": "mid.qcow2",
                                           "base": "base.qcow2"}, [DRIVE]))
    for name, kw, drives in cases:
        d = c.phase(name, files, drives=drives)
        if not drives:
            d.qmp("blockdev-add", chain_def(["base", "mid", "top"]))
        kw = {k: (v.replace("ABS", str(d.dir)) if isinstance(v, str) else v) for k, v in kw.items()}
        d.graph("before")
        r = commit(d, speed=MiB, **kw)
        if "error" in r:
            offline(d, maps=())
            continue
        jid = kw.get("job_id", "c") or "drive0"
        running(d, jid)
        d.qmp("query-block-jobs", note="running")
        d.graph("running")
        if name == "cancel-running":
            d.qmp("block-job-cancel", {"device": jid})
        else:
            d.qmp("block-job-set-speed", {"device": jid, "speed": 0})
        d.wait_gone(jid)
        d.graph("after")
        if not drives:
            try_del(d, "mid", "top")
        offline(d, maps=("base.qcow2",), reads=BASE_READS[:6])
    for action in ("report", "stop", "ignore"):
        for kind in ("intermediate", "active"):
            d = c.phase(f"on-error-{action}-{kind}", files)
            if action == "report" and kind == "intermediate":
                d.qmp("blockdev-add", chain_def(["base", "mid", "top"], {"base": blkdebug_base()}),
                      note="blkdebug nested in the backing chain (fails on 7.2, recorded once)")
            d.qmp("blockdev-add", {"driver": "qcow2", "node-name": "base", **blkdebug_base()})
            d.qmp("blockdev-add", chain_def(["mid", "top"], {"mid": {"backing": "base"}}))
            kw = {"top_node": "mid", "base_node": "base"} if kind == "intermediate" else {}
            commit(d, on_error=action, **kw)
            d.wait_status("c", {"paused", "ready", "concluded", "gone"})
            if action == "stop":
                d.wait(0.05)
                d.qmp("query-block-jobs", note="after error")
                d.qmp("query-jobs", note="after error")
                d.qmp("block-job-resume", {"device": "c"})
                d.wait_status("c", {"ready", "concluded", "gone"})
            d.wait(0.05)
            jobs = d.ok("query-jobs") or []
            if any(x["id"] == "c" and x["status"] == "ready" for x in jobs):
                d.qmp("query-block-jobs")
                d.qmp("job-complete", {"id": "c"})
                d.wait_gone("c")
            elif any(x["id"] == "c" for x in jobs):
                d.wait_gone("c")
            d.graph("after")
            offline(d, maps=("base.qcow2",), reads=BASE_READS[:6])


def sc_errors(c: Ctx) -> None:
    files = chain_files([BASE, MID, TOP], [LONE], OTHER)

    d = c.phase("static", files)
    d.qmp("blockdev-add", chain_def(["base", "mid", "top"]))
    d.qmp("blockdev-add", qcow("lone", "lone.qcow2"))
    d.qmp("blockdev-add", chain_def(["ob", "ot"]))
    t = try_commit
    t(d, "device missing", device="nope")
    t(d, "device missing, no job-id", device="nope", job_id=None)
    t(d, "device '' ", device="")
    t(d, "device is a non-root node (mid)", device="mid")
    t(d, "device is a protocol node (top-file)", device="top-file")
    t(d, "device is a non-root node (base)", device="base")
    t(d, "'top-node' and 'top' together", top_node="mid", top="mid.qcow2")
    t(d, "top-node missing", top_node="nope")
    t(d, "top-node in another chain (ob)", top_node="ob")
    t(d, "top-node is a protocol node (mid-file)", top_node="mid-file")
    t(d, "top file name not found", top="nope.qcow2")
    t(d, "top '' (empty string)", top="")
    t(d, "'base-node' and 'base' together", base_node="base", base="base.qcow2")
    t(d, "base-node missing", base_node="nope")
    t(d, "base-node in another chain (ob)", base_node="ob")
    t(d, "base-node is a protocol node (base-file)", base_node="base-file")
    t(d, "base-node above top-node (top-node mid, base-node top)", top_node="mid", base_node="top")
    t(d, "base file name not found", base="nope.qcow2")
    t(d, "base '' (empty string)", base="")
    t(d, "device without backing (lone)", device="lone")
    t(d, "top-node is the bottom (base)", top_node="base")
    t(d, "top == base (top-node mid, base-node mid)", top_node="mid", base_node="mid")
    t(d, "top == base (base-node top)", base_node="top")
    t(d, "top file name = base.qcow2 (no base given)", top="base.qcow2")
    t(d, "backing-file with an active top", backing_file="x.qcow2")
    t(d, "backing-file with top-node top", top_node="top", backing_file="x.qcow2")
    t(d, "job-id omitted, active", job_id=None)
    t(d, "job-id omitted, intermediate", job_id=None, top_node="mid")
    t(d, "job-id '#x', active", job_id="#x")
    t(d, "job-id '#x', intermediate", job_id="#x", top_node="mid")
    t(d, "job-id '', active", job_id="")
    t(d, "speed -1, active", speed=-1)
    t(d, "speed -1, intermediate", speed=-1, top_node="mid")
    for kind, extra in (("active", {}), ("intermediate", {"top_node": "mid"})):
        t(d, f"filter-node-name of an existing node (lone), {kind}", filter_node_name="lone", **extra)
        t(d, f"filter-node-name of the device (top), {kind}", filter_node_name="top", **extra)
        t(d, f"filter-node-name '#f', {kind}", filter_node_name="#f", **extra)
        t(d, f"filter-node-name '' , {kind}", filter_node_name="", **extra)
        t(d, f"filter-node-name 'myf' (valid), {kind}", filter_node_name="myf", **extra)
        for action in ("stop", "enospc", "ignore", "auto"):
            t(d, f"on-error {action}, {kind}", on_error=action, **extra)
    d.graph("end of static errors")

    # --- a writer on mid: commit of mid is active ---------------------------------------------------------------
    d = c.phase("writer-on-mid", files)
    d.qmp("blockdev-add", chain_def(["base", "mid", "top"], {"mid": {"read-only": False}}))
    d.export("mid")
    d.graph("export of mid")
    t(d, "backing-file, top-node mid that has a writer", top_node="mid", base_node="base", backing_file="x.qcow2")
    commit(d, "top-node mid with a writer: active commit of mid?", top_node="mid", base_node="base")
    d.wait_status("c", {"ready", "concluded", "gone"})
    d.graph("ready")
    if any(x["id"] == "c" for x in d.ok("query-jobs") or []):
        d.qmp("job-complete", {"id": "c"})
        d.wait_gone("c")
    d.graph("after")
    d.qmp("block-export-del", {"id": "exp-mid"})
    d.wait(0.1)
    offline(d, maps=("base.qcow2",))

    # --- op blockers: jobs on the nodes -------------------------------------------------------------------------
    def busy_files(wd, steps):
        files(wd, steps)
        img(wd, "tgt.qcow2", "64M", steps=steps)

    d = c.phase("busy", busy_files)
    d.qmp("blockdev-add", chain_def(["base", "mid", "top"]))
    d.qmp("blockdev-add", chain_def(["ob", "ot"]))
    d.qmp("blockdev-add", qcow("tgt", "tgt.qcow2"))
    commit(d, "slow intermediate commit c1", job_id="c1", top_node="mid", speed=4096)
    d.wait_status("c1", "running")
    d.graph("c1 running")
    t(d, "active commit of top while c1 runs", job_id="c2")
    t(d, "intermediate commit mid->base while c1 runs", job_id="c2", top_node="mid")
    t(d, "commit of the other chain with job-id c1 (duplicate)", job_id="c1", device="ot")
    t(d, "commit device = commit filter of c1? (top-node top, base-node mid)", job_id="c2", base_node="mid")
    d.qmp("blockdev-mirror", {"job-id": "m", "device": "ot", "target": "tgt", "sync": "full", "speed": 4096},
          note="slow mirror of ot")
    d.wait_status("m", "running")
    t(d, "commit of ot while mirrored (device ot)", job_id="c3", device="ot")
    t(d, "commit of ot while mirrored, device = the mirror filter", job_id="c3",
      device=next((n["node-name"] for n in d.ok("query-named-block-nodes", {"flat": True}, record=False)
                   if n["drv"] == "mirror_top"), "?"))
    kill_job(d, "m")
    d.qmp("block-stream", {"job-id": "s", "device": "ot", "speed": 4096}, note="slow stream into ot")
    d.wait_status("s", {"running", "concluded", "gone"})
    t(d, "commit of ot while streamed", job_id="c3", device="ot")
    kill_all(d)
    d.graph("end")

    # op blockers on a root device: a stream into the intermediate node mid (mid is not the stream's root)
    d = c.phase("busy-stream-mid", busy_files)
    d.qmp("blockdev-add", chain_def(["base", "mid", "top"], {"mid": {"read-only": False}}))
    d.qmp("block-stream", {"job-id": "s", "device": "mid", "speed": 4096}, note="slow stream into mid")
    d.wait_status("s", {"running", "concluded", "gone"})
    d.graph("stream into mid running")
    t(d, "active commit of top while mid is streamed", job_id="c2")
    t(d, "intermediate commit mid->base while mid is streamed", job_id="c2", top_node="mid")
    t(d, "active commit top->mid while mid is streamed", job_id="c2", base_node="mid")
    kill_all(d)
    d.graph("end")
    d = c.phase("busy-stream-top", busy_files)
    d.qmp("blockdev-add", chain_def(["base", "mid", "top"]))
    d.qmp("block-stream", {"job-id": "s", "device": "top", "base-node": "base", "speed": 4096},
          note="slow stream of mid into top (base-node base)")
    d.wait_status("s", {"running", "concluded", "gone"})
    d.graph("stream running")
    t(d, "commit device top while top is streamed", job_id="c2")
    kill_all(d)

    # --- base smaller than top ----------------------------------------------------------------------------------
    small = chain_files([("base", "32M", ["write -P 0x41 0 2M"]), ("mid", "64M", ["write -P 0x51 1M 512k"]),
                         ("top", "64M", ["write -P 0x61 40M 1M"])])
    for kind, extra in (("active", {}), ("intermediate", {"top_node": "mid"}), ("active-top-into-mid-base",
                                                                               {"base_node": "base"})):
        d = c.phase(f"resize-{kind}", small)
        d.qmp("blockdev-add", chain_def(["base", "mid", "top"]))
        d.qmp("query-named-block-nodes", {"flat": True}, note="before")
        r = commit(d, **extra)
        if "return" in r:
            d.wait_status("c", {"ready", "concluded", "gone"})
            d.graph("ready/done")
            if any(x["id"] == "c" for x in d.ok("query-jobs") or []):
                d.qmp("job-complete", {"id": "c"})
                d.wait_gone("c")
            d.graph("after")
        offline(d, maps=("base.qcow2",), reads=(("base.qcow2", "read -P 0x61 40M 1M"),
                                                 ("base.qcow2", "read -P 0x51 1M 512k")))

    # --- base added read-only explicitly ------------------------------------------------------------------------
    for kind, extra in (("active", {}), ("intermediate", {"top_node": "mid"})):
        d = c.phase(f"base-read-only-{kind}", files)
        d.qmp("blockdev-add", chain_def(["base", "mid", "top"], {"base": {"read-only": True}}))
        d.qmp("query-named-block-nodes", {"flat": True}, note="before")
        r = commit(d, speed=MiB, **extra)
        if "return" in r:
            running(d, "c")
            d.qmp("query-named-block-nodes", {"flat": True}, note="running")
            d.qmp("block-job-set-speed", {"device": "c", "speed": 0})
            d.wait_status("c", {"ready", "concluded", "gone"})
            if any(x["id"] == "c" for x in d.ok("query-jobs") or []):
                d.qmp("job-complete", {"id": "c"})
                d.wait_gone("c")
            d.graph("after")
        offline(d, maps=())

    # --- auto-finalize / auto-dismiss false ---------------------------------------------------------------------
    for kind, extra in (("active", {}), ("intermediate", {"top_node": "mid"})):
        for fin, dis in ((False, False), (False, True), (True, False)):
            d = c.phase(f"manual-{kind}-finalize-{str(fin).lower()}-dismiss-{str(dis).lower()}", files)
            d.qmp("blockdev-add", chain_def(["base", "mid", "top"]))
            commit(d, auto_finalize=fin, auto_dismiss=dis, **extra)
            d.wait_status("c", {"ready", "pending", "concluded", "gone"})
            if kind == "active":
                d.qmp("job-finalize", {"id": "c"}, note="finalize while ready")
                d.qmp("job-complete", {"id": "c"})
                d.wait_status("c", {"pending", "concluded", "gone"})
            if not fin:
                d.wait(0.05)
                d.qmp("query-jobs", note="pending")
                d.graph("pending")
                d.qmp("job-dismiss", {"id": "c"}, note="dismiss while pending")
                d.qmp("job-finalize", {"id": "c"})
                d.wait_status("c", {"concluded", "gone"})
            if not dis:
                d.wait(0.05)
                d.qmp("query-jobs", note="concluded")
                d.qmp("query-block-jobs", note="concluded")
                d.graph("concluded")
                d.qmp("job-dismiss", {"id": "c"})
            d.wait(0.05)
            d.graph("after")
            d.close()

    # --- the system emulator's -drive: device names -------------------------------------------------------------
    if c.kind == "system":
        d = c.phase("drive", files, drives=[DRIVE])
        d.graph("before")
        top = node_by_file(d, "top.qcow2") or "?"
        t(d, "device is the drive's root node name", device=top, job_id=None)
        t(d, "job-id omitted, intermediate, device drive0", device="drive0", job_id=None, top="mid.qcow2")
        t(d, "top-node of an auto node name (mid)", device="drive0", top_node=node_by_file(d, "mid.qcow2"))
        t(d, "on-error stop on drive0 (active)", device="drive0", on_error="stop")
        t(d, "on-error enospc on drive0 (intermediate)", device="drive0", on_error="enospc", top="mid.qcow2")
        commit(d, "slow active commit of drive0", device="drive0", job_id=None, speed=4096)
        d.wait_status("drive0", "running")
        t(d, "second commit of drive0 while its active commit runs", device="drive0", job_id="c2",
          top="mid.qcow2")
        t(d, "second commit of drive0, job-id omitted", device="drive0", job_id=None)
        kill_all(d)
        d.graph("end")


def sc_bitmaps_drive(c: Ctx) -> None:
    if c.kind != "system":
        c.phase("skipped").note("system emulator only")
        return
    d = c.phase("drive0", chain_files([BASE, TOP]), drives=[DRIVE])
    base = node_by_file(d, "base.qcow2") or "?"
    d.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "p0", "persistent": True})
    d.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "t0"})
    d.qmp("block-dirty-bitmap-add", {"node": base, "name": "bp", "persistent": True}, note="persistent on base (ro)")
    d.qmp("block-dirty-bitmap-add", {"node": base, "name": "bb"})
    d.hmp('qemu-io drive0 "write -P 0x71 3M 64k"')
    d.hmp('qemu-io drive0 "write -P 0x72 6M 100"')
    d.qmp("query-block", note="before")
    bitmaps(d, "before", [("drive0", "p0"), ("drive0", "t0"), (base, "bb")])
    d.qmp("block-commit", {"device": "drive0"})
    d.wait_status("drive0", {"ready", "concluded", "gone"})
    d.qmp("query-block", note="ready")
    bitmaps(d, "ready", [("drive0", "p0"), (base, "bb")])
    d.hmp('qemu-io drive0 "write -P 0x73 7M 64k"')
    d.qmp("query-block", note="ready, after write")
    d.qmp("job-complete", {"id": "drive0"})
    d.wait_gone("drive0")
    d.qmp("query-block", note="after completion")
    d.graph("after completion")
    bitmaps(d, "after", [("drive0", "p0"), ("drive0", "bb"), (base, "bb")])
    d.hmp('qemu-io drive0 "write -P 0x74 9M 64k"')
    d.qmp("query-block", note="after completion + write")
    d.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "p1", "persistent": True},
          note="persistent bitmap on the new root (base)")
    d.qmp("query-block", note="after bitmap-add")
    d.close()
    for f in ("top.qcow2", "base.qcow2"):
        shell(d, ["qemu-img", "info", "-U", f])


SCENARIOS: dict[str, Callable[[Ctx], None]] = {
    "active-basic": sc_active_basic,
    "active-cancel": sc_active_cancel,
    "active-three": sc_active_three,
    "intermediate": sc_intermediate,
    "errors": sc_errors,
    "bitmaps-drive": sc_bitmaps_drive,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--daemon", choices=["qsd", "system"], default="qsd")
    ap.add_argument("--out", default="/tmp/commit-rec")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    probe_mirror.SCENARIOS = SCENARIOS  # probe_mirror.run_one runs the scenarios of this module
    for n in a.only.split(",") if a.only else list(SCENARIOS):
        t = time.monotonic()
        probe_mirror.run_one(a.daemon, n, Path(a.out), a.repeat)
        print(f"{a.daemon} {n}: {time.monotonic() - t:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
