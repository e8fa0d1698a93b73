"""Random interleavings of guest writes, bitmap commands, backups, faults, pauses and cancels.

Invariants checked after every step:
- no dirty bit is lost: every cluster written since a bitmap's last sync point is set in the
  bitmap, or in its successor while a backup holds it;
- count == popcount x granularity for every bitmap;
- jobs only take legal transitions (the engine asserts QEMU's table on every change);
- a backup that completes without error holds the source's content at the job's start.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bitlab import Machine, QMPError

SIZE = 4 << 20
G = 65536
FAULT = {"inject-error": [{"event": "read_aio", "state": 2, "errno": 5, "once": True}],
         "set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2}]}


def _clusters(offset: int, length: int, gran: int) -> set[int]:
    return set(range(offset // gran, (offset + length - 1) // gran + 1)) if length else set()


class BackupMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.vm = Machine()
        self.vm.add_drive("drive0", SIZE, node_name="node0", blkdebug=FAULT)
        self.node = self.vm.graph.nodes["node0"]
        for name, gran in (("b64k", G), ("b4k", 4096)):
            self.vm.qmp("block-dirty-bitmap-add", {"node": "node0", "name": name, "granularity": gran})
        self.must: dict[str, set[int]] = {"b64k": set(), "b4k": set()}  # clusters that must be dirty
        self.since_start: dict[str, set[int]] = {}
        self.jobs: dict[str, dict] = {}
        self.targets = 0
        self.pattern = 1

    # -- helpers -----------------------------------------------------------------------
    def bitmap(self, name):
        return next(b for b in self.node.bitmaps if b.name == name)

    def settle_finished(self) -> None:
        """Apply the bitmap rules for jobs that ended, from their end events."""
        for job_id, info in list(self.jobs.items()):
            ends = [e for e in self.vm.events[info["since"]:]
                    if e["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
                    and e["data"]["device"] == job_id]
            if not ends:
                continue
            ev = ends[0]
            ok = ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"]
            name, mode = info["bitmap"], info["mode"]
            if name is not None:
                since = self.since_start.pop(name)
                if mode == "never" or (not ok and mode == "on-success"):
                    self.must[name] |= since
                else:
                    self.must[name] = since  # abdicated: writes since the job started
            if ok and info["sync"] == "full":
                target = self.vm.graph.nodes[info["target"]]
                got = target.read_extents(0, SIZE)
                assert _runs(got) == info["snapshot"], f"{job_id}: target differs from the source at start"
            del self.jobs[job_id]

    # -- rules -------------------------------------------------------------------------
    @rule(offset=st.integers(0, SIZE - 1), length=st.integers(1, 300_000))
    def write(self, offset, length):
        length = min(length, SIZE - offset)
        self.pattern = self.pattern % 250 + 1
        out = self.vm.write("drive0", offset, length, self.pattern)
        if "failed" in out:
            return
        for name, gran in (("b64k", G), ("b4k", 4096)):
            bm = self.bitmap(name)
            if bm.successor is not None:
                if not bm.successor.disabled:
                    self.since_start[name] |= _clusters(offset, length, gran)
            elif not bm.disabled:
                self.must[name] |= _clusters(offset, length, gran)

    @rule(name=st.sampled_from(["b64k", "b4k"]), enable=st.booleans())
    def toggle(self, name, enable):
        try:
            self.vm.qmp("block-dirty-bitmap-enable" if enable else "block-dirty-bitmap-disable",
                        {"node": "node0", "name": name})
        except QMPError as err:
            assert "currently in use" in err.desc

    @rule(name=st.sampled_from(["b64k", "b4k"]))
    def clear(self, name):
        try:
            self.vm.qmp("block-dirty-bitmap-clear", {"node": "node0", "name": name})
            self.must[name] = set()
        except QMPError as err:
            assert "currently in use" in err.desc

    @rule()
    def arm_fault(self):
        self.vm.qemu_io("drive0", "flush")

    @precondition(lambda self: len(self.jobs) < 2)
    @rule(sync=st.sampled_from(["full", "top", "bitmap", "incremental"]),
          name=st.sampled_from([None, "b64k", "b4k"]), mode=st.sampled_from(["on-success", "always", "never"]),
          speed=st.sampled_from([0, 1 << 20]), policy=st.sampled_from(["report", "stop", "ignore"]))
    def backup(self, sync, name, mode, speed, policy):
        self.targets += 1
        target = f"t{self.targets}"
        self.vm.qmp("blockdev-add", {"driver": "null-co", "node-name": target, "size": SIZE,
                                     "read-zeroes": True}) if sync != "full" else self._qcow2_target(target)
        args = {"job-id": f"job{self.targets}", "device": "node0", "target": target, "sync": sync,
                "speed": speed, "on-source-error": policy}
        if name is not None:
            args["bitmap"] = name
            if sync != "incremental":
                args["bitmap-mode"] = mode
        self.settle_finished()
        snapshot = _runs(self.node.read_extents(0, SIZE))
        since = len(self.vm.events)
        try:
            self.vm.qmp("blockdev-backup", args)
        except QMPError:
            self.settle_finished()
            return
        # (the command's drain may have ended a job that had nothing left to copy, before this one took its
        # bitmap: that job's end is settled first)
        self.settle_finished()
        used = name if sync in ("bitmap", "incremental") or (name is not None) else None
        if used is not None:
            self.since_start[used] = set()
        self.jobs[args["job-id"]] = {"since": since, "bitmap": used, "target": target, "snapshot": snapshot,
                                     "mode": "on-success" if sync == "incremental" else mode, "sync": sync}

    def _qcow2_target(self, name):
        self.vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", str(SIZE))
        self.vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                     "file": {"driver": "file", "filename": f"{name}.qcow2"}})

    @rule(steps=st.integers(1, 20))
    def step(self, steps):
        for _ in range(steps):
            if not self.vm.step():
                break
        self.settle_finished()

    @rule()
    def run_all(self):
        for job in self.vm.qmp("query-jobs"):
            if job["status"] == "paused":
                self.vm.qmp("job-resume", {"id": job["id"]})
        self.vm.run()
        self.settle_finished()

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), verb=st.sampled_from(["job-cancel", "job-pause", "job-resume"]))
    def job_verb(self, data, verb):
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        try:
            self.vm.qmp(verb, {"id": job_id})
        except QMPError as err:
            assert err.error_class == "GenericError"
        self.settle_finished()  # a cancel may end the job within the command

    # -- invariants ----------------------------------------------------------------------
    @invariant()
    def no_dirty_bit_lost(self):
        self.settle_finished()
        for name, must in self.must.items():
            bm = self.bitmap(name)
            have = set(bm.bits.search(1))
            if bm.successor is not None:
                have |= set(bm.successor.bits.search(1))
                assert self.since_start[name] <= set(bm.successor.bits.search(1)) | have
            assert must <= have, f"{name} lost {sorted(must - have)[:5]}"

    @invariant()
    def counts(self):
        for bm in self.node.bitmaps:
            assert bm.count == bm.bits.count() * bm.granularity


def _runs(extents):
    starts, ends, vals = extents
    out = []
    for s, e, v in zip(starts.tolist(), ends.tolist(), vals.tolist()):
        v = 0 if v < 0 else v
        if out and out[-1][2] == v and out[-1][1] == s:
            out[-1] = (out[-1][0], e, v)
        else:
            out.append((s, e, v))
    return out


TestBackupMachine = BackupMachine.TestCase
TestBackupMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
