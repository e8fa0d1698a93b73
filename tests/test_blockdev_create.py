"""blockdev-create as QEMU 7.2 has it: the create job (manual dismiss, its events and when they come), the
file and qcow2 drivers with every check and text QEMU gives, the image left behind, and what bitlab
refuses to simulate. The stories run on the simulator against texts recorded on qemu-storage-daemon 7.2,
and (tier ``qemu``) on both, compared whole."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

from bitlab import Machine, QMPError
from bitlab.block.create import qcow2_file_length
from bitlab.block.store import ImageStore, format_image
from tests.both import on_both

M = 1 << 20
QCOW2_64M = 196616  # header, refcount table, refcount block (3 x 64 KiB) and the L1 table's 8 bytes


def create(vm: Machine, job_id: str, **options: Any) -> None:
    vm.qmp("blockdev-create", {"job-id": job_id, "options": options})


def outcome(vm: Machine, job_id: str, options: dict) -> dict:
    """The command's error, or the job as query-jobs shows it once settled and its statuses (dismissed)."""
    try:
        vm.qmp("blockdev-create", {"job-id": job_id, "options": options})
    except QMPError as err:
        return {"class": err.error_class, "desc": err.desc}
    vm.run()
    job = next(j for j in vm.qmp("query-jobs") if j["id"] == job_id)
    vm.qmp("job-dismiss", {"id": job_id})
    statuses = [e["data"]["status"] for e in vm.events
                if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == job_id]
    return {"job": job, "statuses": statuses}


def file_length(vm: Machine, filename: str) -> int:
    """The host file's length in bytes (in the image store, or on real QEMU's disk)."""
    if vm.backend == "sim":
        return vm.images[filename].file_length()
    return os.path.getsize(os.path.join(vm.workdir, filename))


# -- the flow QEMU documents ---------------------------------------------------------------------


def flow_story(vm: Machine) -> dict:
    """file create, blockdev-add of the file, qcow2 create on it (a bitmap on the file node watching),
    blockdev-add of the qcow2; then what every query shows."""
    out: dict = {}
    create(vm, "c1", driver="file", filename="t.qcow2", size=0)
    vm.run()
    out["jobs-file"] = vm.qmp("query-jobs")
    vm.qmp("job-dismiss", {"id": "c1"})
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "f", "filename": "t.qcow2"})
    vm.qmp("block-dirty-bitmap-add", {"node": "f", "name": "b0", "granularity": 65536})
    vm.qmp("block-dirty-bitmap-add", {"node": "f", "name": "b1", "granularity": 512})
    out["file-node"] = [(n["image"]["virtual-size"], n["image"]["format"])
                        for n in vm.qmp("query-named-block-nodes", {"flat": True})]
    create(vm, "c2", driver="qcow2", file="f", size=64 * M)
    vm.run()
    out["jobs-qcow2"] = vm.qmp("query-jobs")
    out["block-jobs"] = vm.qmp("query-block-jobs")
    vm.qmp("job-dismiss", {"id": "c2"})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": "f"})
    nodes = vm.qmp("query-named-block-nodes", {"flat": True})
    for node in nodes:
        node["image"].pop("actual-size")  # the file system's blocks
    out["nodes"] = nodes
    vm.qmp("block-dirty-bitmap-add", {"node": "q", "name": "p", "persistent": True})
    vm.write("q", "0", "64k", pattern=0x41)
    out["counts"] = [(b["name"], b["count"]) for n in vm.qmp("query-named-block-nodes", {"flat": True})
                     for b in n.get("dirty-bitmaps", [])]
    out["length"] = file_length(vm, "t.qcow2")
    out["info"] = [line for line in vm.qemu_img("info", "-U", "t.qcow2").splitlines()
                   if not line.startswith("disk size")]
    out["events"] = [(e["event"], e.get("data")) for e in vm.events]
    return out


def test_the_documented_flow():
    got = flow_story(Machine())
    assert got["jobs-file"] == [{"id": "c1", "type": "create", "status": "concluded", "current-progress": 1,
                                 "total-progress": 1}]
    assert got["jobs-qcow2"][0]["status"] == "concluded" and got["block-jobs"] == []
    assert got["file-node"] == [(0, "file")]
    q, f = got["nodes"]
    assert (q["node-name"], q["drv"], q["image"]["virtual-size"], q["image"]["cluster-size"]) == ("q", "qcow2",
                                                                                                  64 * M, 65536)
    assert q["image"]["format-specific"]["data"] == {"compat": "1.1", "compression-type": "zlib",
                                                     "lazy-refcounts": False, "refcount-bits": 16, "corrupt": False,
                                                     "extended-l2": False}
    # the file node grew with the image written into it, and its bitmaps saw all of it written
    assert (f["node-name"], f["image"]["virtual-size"]) == ("f", 197120)
    assert [(b["name"], b["count"]) for b in f["dirty-bitmaps"]] == [("b1", 197120), ("b0", 262144)]
    assert got["length"] == 6 * 65536  # the guest's first write: an L2 table and a data cluster after the L1 table
    assert got["info"][:4] == ["image: t.qcow2", "file format: qcow2", "virtual size: 64 MiB (67108864 bytes)",
                               "cluster_size: 65536"]
    assert ("p", 65536) in got["counts"]
    statuses = [d["status"] for e, d in got["events"] if e == "JOB_STATUS_CHANGE"]
    assert statuses == ["created", "running", "waiting", "pending", "concluded", "null"] * 2


@pytest.mark.qemu
def test_the_documented_flow_matches_qemu():
    real, sim = on_both(flow_story)
    assert sim == real


def test_the_reply_comes_before_the_end_and_run_brings_it():
    """As on qemu-storage-daemon: created and running before the reply; waiting, pending and concluded
    after it, once the clock runs. The job stays concluded until job-dismiss (JOB_MANUAL_DISMISS)."""
    vm = Machine()
    create(vm, "c1", driver="file", filename="x.img", size=M)
    kinds = [(t["kind"], t["message"].get("data", {}).get("status")) for t in vm.transcript]
    assert kinds == [("cmd", None), ("event", "created"), ("event", "running"), ("reply", None)]
    assert vm.qmp("query-jobs") == [{"id": "c1", "type": "create", "status": "running", "current-progress": 0,
                                     "total-progress": 1}]
    assert vm.images["x.img"].size == 0  # made before the job's first wait (qemu_create), resized after it
    start = vm.now
    vm.run()
    assert vm.now == start  # the create takes no simulated time
    assert [e["data"]["status"] for e in vm.events[2:]] == ["waiting", "pending", "concluded"]
    with pytest.raises(QMPError, match="^GenericError: Job 'c1' in state 'concluded' cannot accept command "
                                       "verb 'cancel'$"):
        vm.qmp("job-cancel", {"id": "c1"})
    vm.qmp("job-dismiss", {"id": "c1"})
    assert vm.events[-1]["data"] == {"status": "null", "id": "c1"} and vm.qmp("query-jobs") == []
    assert vm.qemu_img("info", "x.img").splitlines()[:3] == ["image: x.img", "file format: raw",
                                                             "virtual size: 1 MiB (1048576 bytes)"]


def test_an_early_failure_ends_before_the_reply():
    """A create that fails before its first I/O: the whole job, aborting and concluded, before the reply."""
    vm = Machine()
    create(vm, "q1", driver="qcow2", file="nonode", size=M)
    kinds = [(t["kind"], t["message"].get("data", {}).get("status")) for t in vm.transcript]
    assert kinds == [("cmd", None), ("event", "created"), ("event", "running"), ("event", "aborting"),
                     ("event", "concluded"), ("reply", None)]
    assert vm.qmp("query-jobs") == [{"id": "q1", "type": "create", "status": "concluded", "current-progress": 1,
                                     "total-progress": 1,
                                     "error": "Cannot find device='nonode' nor node-name='nonode'"}]


def test_verbs_on_a_create_job():
    """Not a block job; a pause is counted but the create has no pause point; a cancel while it runs lets
    the create finish, then the job fails with ECANCELED (job_update_rc). As measured on qemu-storage-daemon
    with the create slowed down by a throttle node (iops-total 5): ``job-pause`` leaves it ``running`` and
    it ends normally; ``job-cancel`` gives ``aborting``, ``concluded``, error ``Operation canceled``."""
    vm = Machine()
    create(vm, "c1", driver="file", filename="x.img", size=M)
    with pytest.raises(QMPError, match="^DeviceNotActive: Block job 'c1' not found$"):
        vm.qmp("block-job-cancel", {"device": "c1"})
    with pytest.raises(QMPError, match="cannot accept command verb 'complete'"):
        vm.qmp("job-complete", {"id": "c1"})
    vm.qmp("job-pause", {"id": "c1"})
    assert vm.qmp("query-jobs")[0]["status"] == "running"
    vm.qmp("job-cancel", {"id": "c1"})
    vm.run()
    assert vm.qmp("query-jobs")[0] == {"id": "c1", "type": "create", "status": "concluded", "current-progress": 1,
                                       "total-progress": 1, "error": "Operation canceled"}
    assert [e["data"]["status"] for e in vm.events] == ["created", "running", "aborting", "concluded"]
    assert "x.img" in vm.images  # the file was made all the same


# -- every error QEMU gives -------------------------------------------------------------------------

CASES: list[tuple[str, dict]] = [
    # before the job exists
    ("e-unknown", {"driver": "foo"}),
    ("e-nocreate", {"driver": "null-co"}),
    ("e-raw", {"driver": "raw"}),
    ("e-notbuilt", {"driver": "iscsi"}),
    ("1bad", {"driver": "file", "filename": "x.img", "size": 0}),
    ("e-nosize", {"driver": "file", "filename": "x.img"}),
    ("e-unexpected", {"driver": "file", "filename": "x.img", "size": 0, "bogus": 1}),
    ("e-qcow2-unexpected", {"driver": "raw", "size": 0}),
    # file: inside the job
    ("f-hint", {"driver": "file", "filename": "x.img", "size": 0, "extent-size-hint": 1 << 32}),
    ("f-hint-neg", {"driver": "file", "filename": "x.img", "size": 0, "extent-size-hint": -1}),
    ("f-locked", {"driver": "file", "filename": "used.qcow2", "size": 0}),
    ("f-locked-ro", {"driver": "file", "filename": "ro.qcow2", "size": 0}),
    ("f-neg", {"driver": "file", "filename": "neg.img", "size": -1}),
    ("f-meta", {"driver": "file", "filename": "meta.img", "size": M, "preallocation": "metadata"}),
    ("f-ok", {"driver": "file", "filename": "ok.img", "size": 1000, "nocow": True, "extent-size-hint": M}),
    ("f-again", {"driver": "file", "filename": "data.img", "size": 4096}),
    # qcow2: inside the job, before its first I/O
    ("q-nonode", {"driver": "qcow2", "file": "nonode", "size": M}),
    ("q-size", {"driver": "qcow2", "file": "f", "size": 1000}),
    ("q-cluster", {"driver": "qcow2", "file": "f", "size": M, "cluster-size": 1000}),
    ("q-cluster-big", {"driver": "qcow2", "file": "f", "size": M, "cluster-size": 4 * M}),
    ("q-cluster-small", {"driver": "qcow2", "file": "f", "size": M, "cluster-size": 256}),
    ("q-v2-lazy", {"driver": "qcow2", "file": "f", "size": M, "version": "v2", "lazy-refcounts": True}),
    ("q-refbits", {"driver": "qcow2", "file": "f", "size": M, "refcount-bits": 3}),
    ("q-refbits-big", {"driver": "qcow2", "file": "f", "size": M, "refcount-bits": 128}),
    ("q-v2-refbits", {"driver": "qcow2", "file": "f", "size": M, "version": "v2", "refcount-bits": 8}),
    ("q-backing-fmt", {"driver": "qcow2", "file": "f", "size": M, "backing-fmt": "qcow2"}),
    ("q-raw-nodata", {"driver": "qcow2", "file": "f", "size": M, "data-file-raw": True}),
    ("q-raw-backing", {"driver": "qcow2", "file": "f", "size": M, "data-file-raw": True, "data-file": "nonode",
                       "backing-file": "b.qcow2"}),
    ("q-v2-datafile", {"driver": "qcow2", "file": "f", "size": M, "version": "v2", "data-file": "nonode"}),
    ("q-datafile", {"driver": "qcow2", "file": "f", "size": M, "data-file": "nonode"}),
    ("q-v2-zstd", {"driver": "qcow2", "file": "f", "size": M, "version": "v2", "compression-type": "zstd"}),
    ("q-v2-extl2", {"driver": "qcow2", "file": "f", "size": M, "version": "v2", "extended-l2": True}),
    ("q-extl2-small", {"driver": "qcow2", "file": "f", "size": M, "cluster-size": 1024, "extended-l2": True}),
    ("q-backing-prealloc", {"driver": "qcow2", "file": "f", "size": M, "backing-file": "b.qcow2",
                            "preallocation": "metadata"}),
    ("q-in-use", {"driver": "qcow2", "file": "uf", "size": M}),
    ("q-read-only", {"driver": "qcow2", "file": "rof", "size": M}),
    # qcow2: after its first I/O
    ("q-neg", {"driver": "qcow2", "file": "f", "size": -512}),
    ("q-huge", {"driver": "qcow2", "file": "f", "size": 1 << 60}),
    ("q-too-long", {"driver": "qcow2", "file": "f", "size": (1 << 63) - 512}),
    ("q-inline-missing", {"driver": "qcow2", "file": {"driver": "file", "filename": "nofile"}, "size": M}),
    ("q-inline-size", {"driver": "qcow2", "file": {"driver": "file", "filename": "e.img"}, "size": 1000}),
    # qcow2: the image is written, then its encryption fails (bitlab, like this daemon, has no secrets)
    ("q-encrypt", {"driver": "qcow2", "file": "f", "size": M, "encrypt": {"format": "luks"}}),
    ("q-encrypt-secret", {"driver": "qcow2", "file": "f", "size": 2 * M, "backing-file": "nowhere.qcow2",
                          "encrypt": {"format": "qcow", "key-secret": "s0"}}),
    # qcow2: made
    ("q-ok", {"driver": "qcow2", "file": "f", "size": 64 * M, "backing-file": "base.qcow2", "backing-fmt": "qcow2"}),
    ("q-inline-v2", {"driver": "qcow2", "file": {"driver": "file", "filename": "e.img"}, "size": M,
                     "cluster-size": 512, "version": "v2"}),
]


def errors_story(vm: Machine) -> dict:
    """Every case on one machine, in order; then the files they made."""
    for name, fmt, size in (("used.qcow2", "qcow2", "1M"), ("ro.qcow2", "qcow2", "1M"), ("base.qcow2", "qcow2", "64M"),
                            ("t.img", "raw", "0"), ("e.img", "raw", "0"), ("rof.img", "raw", "0"),
                            ("data.img", "raw", "1M")):
        vm.qemu_img("create", "-f", fmt, name, size)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "u",
                            "file": {"driver": "file", "filename": "used.qcow2", "node-name": "uf"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "ro", "read-only": True,
                            "file": {"driver": "file", "filename": "ro.qcow2"}})
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "f", "filename": "t.img"})
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "rof", "filename": "rof.img", "read-only": True})
    vm.write("u", "0", "4k")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "old", "file": {"driver": "file", "filename": "data.img"}})
    vm.write("old", "0", "64k", pattern=0x41)
    vm.qmp("blockdev-del", {"node-name": "old"})
    out = {}
    create(vm, "e-taken", driver="file", filename="taken.img", size=0)  # left concluded: its id stays in use
    vm.run()
    out["e-taken"] = outcome(vm, "e-taken", {"driver": "file", "filename": "y.img", "size": 0})
    for job_id, options in CASES:
        if job_id == "q-neg":
            out["f-after-size"] = file_length(vm, "t.img")
        out[job_id] = outcome(vm, job_id, options)
        if job_id in ("q-neg", "q-huge"):
            out[f"{job_id}-length"] = file_length(vm, "t.img")
        if job_id == "q-encrypt-secret":
            out["unencrypted"] = [line for line in vm.qemu_img("info", "-U", "t.img").splitlines()[2:]
                                  if not line.startswith("disk size")]
    vm.qemu_img("create", "-f", "raw", "zero.img", "4096")
    out["data-map"] = vm.qemu_img("compare", "-f", "raw", "-F", "raw", "data.img", "zero.img")
    out["lengths"] = {name: file_length(vm, name) for name in ("neg.img", "meta.img", "ok.img", "data.img", "e.img",
                                                               "t.img")}
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "new", "file": "f"})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "v2", "file": {"driver": "file", "filename": "e.img"}})
    out["images"] = {n["node-name"]: {k: v for k, v in n["image"].items() if k != "actual-size"}
                     for n in vm.qmp("query-named-block-nodes", {"flat": True}) if n["node-name"] in ("new", "v2")}
    out["data"] = vm.qemu_io("f", "map") if vm.backend == "sim" else None
    return out


def _job(error: str | None = None, statuses: tuple[str, ...] | None = None) -> dict:
    job = {"id": "", "type": "create", "status": "concluded", "current-progress": 1, "total-progress": 1}
    if error is not None:
        job["error"] = error
    return {"job": job, "statuses": list(statuses or (("created", "running", "aborting", "concluded", "null") if error
                                                      else ("created", "running", "waiting", "pending",
                                                            "concluded", "null")))}


V3 = "(use version=v3 or greater)"
EXPECTED = {  # recorded on qemu-storage-daemon 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)
    "e-taken": {"class": "GenericError", "desc": "Job ID 'e-taken' already in use"},
    "e-unknown": {"class": "GenericError", "desc": "Parameter 'driver' does not accept value 'foo'"},
    "e-nocreate": {"class": "GenericError", "desc": "Driver does not support blockdev-create"},
    "e-raw": {"class": "GenericError", "desc": "Driver does not support blockdev-create"},
    "e-notbuilt": {"class": "GenericError", "desc": "Block driver 'iscsi' not found or not supported"},
    "1bad": {"class": "GenericError", "desc": "Invalid job ID '1bad'"},
    "e-nosize": {"class": "GenericError", "desc": "Parameter 'options.size' is missing"},
    "e-unexpected": {"class": "GenericError", "desc": "Parameter 'options.bogus' is unexpected"},
    "e-qcow2-unexpected": {"class": "GenericError", "desc": "Parameter 'options.size' is unexpected"},
    "f-hint": _job("Extent size hint is too large"),
    "f-hint-neg": _job("Extent size hint is too large"),
    "f-locked": _job('Failed to get "write" lock'),
    "f-locked-ro": _job('Failed to get "write" lock'),
    "f-neg": _job("Could not resize file: Invalid argument"),
    "f-meta": _job("Unsupported preallocation mode: metadata"),
    "f-ok": _job(),
    "f-again": _job(),
    "q-nonode": _job("Cannot find device='nonode' nor node-name='nonode'"),
    "q-size": _job("Image size must be a multiple of 512 bytes"),
    "q-cluster": _job("Cluster size must be a power of two between 512 and 2048k"),
    "q-cluster-big": _job("Cluster size must be a power of two between 512 and 2048k"),
    "q-cluster-small": _job("Cluster size must be a power of two between 512 and 2048k"),
    "q-v2-lazy": _job(f"Lazy refcounts only supported with compatibility level 1.1 and above {V3}"),
    "q-refbits": _job("Refcount width must be a power of two and may not exceed 64 bits"),
    "q-refbits-big": _job("Refcount width must be a power of two and may not exceed 64 bits"),
    "q-v2-refbits": _job(f"Different refcount widths than 16 bits require compatibility level 1.1 or above {V3}"),
    "q-backing-fmt": _job("Backing format cannot be used without backing file"),
    "q-raw-nodata": _job("data-file-raw requires data-file"),
    "q-raw-backing": _job("Backing file and data-file-raw cannot be used at the same time"),
    "q-v2-datafile": _job(f"External data files are only supported with compatibility level 1.1 and above {V3}"),
    "q-datafile": _job("Cannot find device='nonode' nor node-name='nonode'"),
    "q-v2-zstd": _job(f"Non-zlib compression type is only supported with compatibility level 1.1 and above {V3}"),
    "q-v2-extl2": _job(f"Extended L2 entries are only supported with compatibility level 1.1 and above {V3}"),
    "q-extl2-small": _job("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"),
    "q-backing-prealloc": _job("Backing file and preallocation can only be used at the same time if extended_l2 "
                               "is on"),
    "q-in-use": _job("Permission conflict on node 'uf': permissions 'write, resize' are both required by an "
                     "unnamed block device (uses node 'uf' as 'root' child) and unshared by node 'u' (uses node "
                     "'uf' as 'file' child)."),
    "q-read-only": _job("Block node is read-only"),
    "q-neg": _job("Could not resize image: Image size cannot be negative"),
    "q-huge": _job("Could not resize image: Failed to grow the L1 table: File too large"),
    "q-too-long": _job("Could not resize image: offset(9223372036854775296) exceeds maximum(9223372035781033984)"),
    "q-inline-missing": _job("Could not open 'nofile': No such file or directory"),
    "q-inline-size": _job("Image size must be a multiple of 512 bytes"),
    "q-encrypt": _job("Parameter 'encrypt.key-secret' is required for cipher"),
    "q-encrypt-secret": _job("No secret with id 's0'"),
    "q-ok": _job(),
    "q-inline-v2": _job(),
}


def test_every_error_has_qemus_text():
    got = errors_story(Machine())
    for job_id, want in EXPECTED.items():
        if "job" in want:
            want = {**want, "job": {**want["job"], "id": job_id}}
        assert got[job_id] == want, job_id
    # what the failed and the successful creates left behind
    assert got["lengths"] == {"neg.img": 0, "meta.img": 0, "ok.img": 1000, "data.img": 4096, "e.img": 1792,
                              "t.img": QCOW2_64M}
    assert got["data-map"] == "Images are identical.\n"  # the old data is gone: emptied, then resized
    assert got["f-after-size"] == 0 and got["q-neg-length"] == got["q-huge-length"] == 3 * 65536
    assert got["unencrypted"][:3] == ["virtual size: 2 MiB (2097152 bytes)", "cluster_size: 65536",
                                      "backing file: nowhere.qcow2"]
    assert not any("encrypt" in line for line in got["unencrypted"])
    assert got["images"]["new"]["backing-filename"] == "base.qcow2"
    assert got["images"]["new"]["backing-filename-format"] == "qcow2"
    assert got["images"]["v2"]["format-specific"]["data"] == {"compat": "0.10", "compression-type": "zlib",
                                                              "refcount-bits": 16}
    assert got["images"]["v2"]["cluster-size"] == 512


def test_early_and_late_failures_come_where_qemu_sends_them():
    """Before the first I/O (a node by name, the option checks, the permissions): all events before the
    reply. After it (a file emptied, a qcow2 header written, a file opened by the job): after the reply."""
    def before_reply(job_id: str, options: dict) -> int:
        vm = Machine()
        vm.qemu_img("create", "-f", "raw", "t.img", "0")
        vm.qmp("blockdev-add", {"driver": "file", "node-name": "f", "filename": "t.img"})
        vm.transcript.clear()
        vm.qmp("blockdev-create", {"job-id": job_id, "options": options})
        return [t["kind"] for t in vm.transcript].index("reply") - 1
    assert before_reply("a", {"driver": "qcow2", "file": "f", "size": 1000}) == 4
    assert before_reply("a", {"driver": "file", "filename": "x", "size": 0, "extent-size-hint": -1}) == 4
    assert before_reply("a", {"driver": "file", "filename": "x", "size": -1}) == 2
    assert before_reply("a", {"driver": "qcow2", "file": "f", "size": -512}) == 2
    assert before_reply("a", {"driver": "qcow2", "file": {"driver": "file", "filename": "t.img"}, "size": 1000}) == 2


@pytest.mark.qemu
def test_every_error_matches_qemu():
    real, sim = on_both(errors_story)
    real["data"] = sim["data"]  # (qemu-io map goes over NBD on the daemon, which cannot carry it)
    assert sim == real


# -- what bitlab does not simulate ------------------------------------------------------------------

REFUSED = [
    ({"driver": "vmdk", "file": "f", "size": M}, "blockdev-create of 'vmdk' images (only file and qcow2)"),
    ({"driver": "luks", "file": "f", "size": M}, "blockdev-create of 'luks' images (only file and qcow2)"),
    ({"driver": "qcow2", "file": "f", "size": M, "lazy-refcounts": True}, "lazy refcounts ('lazy-refcounts')"),
    ({"driver": "qcow2", "file": "f", "size": M, "refcount-bits": 8}, "refcount widths other than 16 bits"),
    ({"driver": "qcow2", "file": "f", "size": M, "extended-l2": True}, "extended L2 entries ('extended-l2')"),
    ({"driver": "qcow2", "file": "f", "size": M, "compression-type": "zstd"}, "the zstd compression type"),
    ({"driver": "qcow2", "file": "f", "size": M, "data-file": "d"}, "an external data file"),
    ({"driver": "qcow2", "file": "n", "size": M}, "a qcow2 image written into a 'null-co' node"),
    ({"driver": "qcow2", "file": {"driver": "null-co"}, "size": M}, "an inline 'file' other than"),
    ({"driver": "qcow2", "file": "big", "size": M}, "a qcow2 image written over a longer file"),
    ({"driver": "file", "filename": "t.img", "size": 0}, "writing the file 't.img' while node 'f' has it open"),
]


@pytest.mark.parametrize("options,text", REFUSED, ids=[text[:30] for _, text in REFUSED])
def test_what_bitlab_does_not_simulate_is_a_clear_error_and_no_job(options: dict, text: str):
    """Where QEMU would go on, but the image store cannot hold the result: the command fails, no job."""
    vm = Machine()
    vm.qemu_img("create", "-f", "raw", "t.img", "0")
    vm.qemu_img("create", "-f", "raw", "big.img", "1M")
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "f", "filename": "t.img"})
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "d", "filename": "big.img"})
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "big", "filename": "big.img"})
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n"})
    with pytest.raises(QMPError, match="^GenericError: bitlab does not simulate ") as err:
        create(vm, "c", **options)
    assert text in err.value.desc
    assert vm.qmp("query-jobs") == [] and vm.events == []


def test_paths_stay_in_the_work_directory():
    vm = Machine()
    assert outcome(vm, "c", {"driver": "file", "filename": "/etc/x.img", "size": 0})["job"]["error"] == \
        "Could not create '/etc/x.img': No such file or directory"
    assert outcome(vm, "d", {"driver": "file", "filename": "../x.img", "size": 0})["job"]["error"] == \
        "Could not create '../x.img': No such file or directory"
    outcome(vm, "e", {"driver": "file", "filename": f"{vm.workdir}/in.img", "size": 512})
    assert vm.images["in.img"].size == 512
    # (as for qemu-img create, every sub-directory exists: on QEMU this one would have to be made first)
    assert "error" not in outcome(vm, "f", {"driver": "file", "filename": "sub/x.img", "size": 0})["job"]


def test_a_new_image_is_the_one_qemu_img_makes():
    """qcow2_co_create and qemu-img create write the same image: the file's length and layout agree."""
    for size, cluster, compat in ((64 * M, 65536, "1.1"), (0, 65536, "1.1"), (M, 512, "0.10"), (5 << 40, 2 * M, "1.1"),
                                  (3 * M + 512, 4096, "1.1")):
        vm = Machine()
        vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cluster},compat={compat}", "a.qcow2", str(size))
        outcome(vm, "c", {"driver": "file", "filename": "b.qcow2", "size": 0})
        vm.qmp("blockdev-add", {"driver": "file", "node-name": "f", "filename": "b.qcow2"})
        outcome(vm, "d", {"driver": "qcow2", "file": "f", "size": size, "cluster-size": cluster,
                          "version": "v2" if compat == "0.10" else "v3"})
        a, b = vm.images["a.qcow2"], vm.images["b.qcow2"]
        assert (b.fmt, b.size, b.cluster_size, b.compat) == (a.fmt, a.size, a.cluster_size, a.compat)
        assert b.file_length() == a.file_length() == qcow2_file_length(size, cluster)
        assert vm.qemu_img("map", "--output=json", "b.qcow2") == vm.qemu_img("map", "--output=json", "a.qcow2")


def test_format_image_writes_in_place():
    store = ImageStore()
    image = store.create("x", "raw", 4096)
    image.data.write(0, 512, 7)
    version = image.data.version
    assert format_image(image, "qcow2", M, cluster_size=65536) is store["x"]
    assert (image.fmt, image.size, image.file_length()) == ("qcow2", M, QCOW2_64M)
    assert image.data.version > version


def test_on_the_wire_the_reply_comes_first(tmp_path):
    """``bitlab serve``: created and running, the reply, then waiting, pending and concluded — the order
    qemu-storage-daemon sends them in."""
    from bitlab.qmp.server import QMPServer, realtime_machine

    async def session() -> list[dict]:
        server = QMPServer(realtime_machine())
        reader, writer = await asyncio.open_unix_connection(await server.start_unix(str(tmp_path / "qmp.sock")))
        lines = []
        try:
            await reader.readline()
            for message in ({"execute": "qmp_capabilities"},
                            {"execute": "blockdev-create", "arguments": {"job-id": "c", "options": {
                                "driver": "file", "filename": "x.img", "size": 0}}}):
                writer.write(json.dumps(message).encode() + b"\n")
                await writer.drain()
            for _ in range(7):
                lines.append(json.loads(await asyncio.wait_for(reader.readline(), 10)))
        finally:
            writer.close()
            server.close()
        return lines

    got = [m.get("data", {}).get("status", "reply") for m in asyncio.run(session())]
    assert got == ["reply", "created", "running", "reply", "waiting", "pending", "concluded"]


SHAPES = [(0, 65536, "v3"), (M, 512, "v2"), (3 * M + 512, 4096, "v3"), (5 << 40, 2 * M, "v3"), (1 << 40, 65536, "v2")]


def shapes_story(vm: Machine) -> list:
    """New images of several sizes, cluster sizes and versions: the file's length, qemu-img check and map."""
    out = []
    for i, (size, cluster, version) in enumerate(SHAPES):
        name = f"s{i}.qcow2"
        outcome(vm, f"f{i}", {"driver": "file", "filename": name, "size": 0})
        vm.qmp("blockdev-add", {"driver": "file", "node-name": f"n{i}", "filename": name})
        out.append(outcome(vm, f"q{i}", {"driver": "qcow2", "file": f"n{i}", "size": size, "cluster-size": cluster,
                                         "version": version})["statuses"])
        out.append((file_length(vm, name), vm.qemu_img("check", "-U", name),
                    vm.qemu_img("map", "-U", "--output=json", name)))
    return out


@pytest.mark.qemu
def test_new_images_match_qemu():
    real, sim = on_both(shapes_story)
    assert sim == real
