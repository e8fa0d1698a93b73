"""Random interleavings of guest writes, mirror jobs (every sync and copy mode, throttled or not), pauses,
completes and cancels.

Invariants checked after every step:
- jobs only take legal transitions (the engine asserts QEMU's table on every change);
- ``offset <= len`` for a mirror, and a full one that is ready and sleeps with nothing dirty holds the source's
  content;
- a full mirror that completed (switching over after job-complete, or not after a plain cancel once ready) left a
  target that reads as the source did when it completed;
- named bitmaps on the source keep every write (a mirror does not touch them), count == popcount x granularity.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bitlab import Machine, QMPError

from .test_stateful_jobs import _runs

SIZE = 4 << 20
G = 65536


class MirrorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.vm = Machine()
        self.vm.qemu_img("create", "-f", "qcow2", "s.qcow2", str(SIZE))
        self.vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s",
                                     "file": {"driver": "file", "filename": "s.qcow2"}})
        self.vm.qmp("block-dirty-bitmap-add", {"node": "s", "name": "b0", "granularity": G})
        self.source = self.vm.graph.nodes["s"]
        self.written: set[int] = set()
        self.job: str | None = None
        self.target: str | None = None
        self.since = 0
        self.sync = "full"
        self.n = 0
        self.pattern = 1

    def _content(self, name: str) -> list:
        return _runs(self.vm.graph.nodes[name].read_extents(0, SIZE))

    def settle(self) -> None:
        """The end of the job, from its events: check the target."""
        if self.job is None:
            return
        ends = [e for e in self.vm.events[self.since:]
                if e["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED") and e["data"]["device"] == self.job]
        if not ends:
            return
        ev = ends[0]
        if ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"] and self.sync == "full":
            assert ev["data"]["offset"] == ev["data"]["len"]
            if self.target in self.vm.graph.nodes:
                assert self._content(self.target) == self._content("s"), f"{self.job}: target differs"
            else:  # a drive-mirror image nothing holds after the switch-over is closed: compare the files
                self.vm.guest_io("s", "flush")  # (the source's file holds its writes' L2 entries after a flush only)
                out = self.vm.qemu_img("compare", "-U", "s.qcow2", f"{self.target}.qcow2")
                assert out == "Images are identical.\n", f"{self.job}: {out}"
        self.job = None

    # -- rules ------------------------------------------------------------------------------
    @rule(offset=st.integers(0, SIZE - 1), length=st.integers(1, 300_000), zero=st.booleans())
    def write(self, offset, length, zero):
        length = min(length, SIZE - offset)
        if zero:
            self.vm.write_zeroes("s", offset, length)
        else:
            self.pattern = self.pattern % 250 + 1
            self.vm.write("s", offset, length, self.pattern)
        self.written |= set(range(offset // G, (offset + length - 1) // G + 1))
        self.settle()

    @precondition(lambda self: self.job is None)
    @rule(sync=st.sampled_from(["full", "none", "top"]), mode=st.sampled_from(["background", "write-blocking"]),
          speed=st.sampled_from([0, 0, 1 << 20]), granularity=st.sampled_from([0, 4096, 65536, 1 << 20]),
          drive=st.booleans())
    def mirror(self, sync, mode, speed, granularity, drive):
        self.n += 1
        self.job, self.since, self.sync = f"m{self.n}", len(self.vm.events), sync
        args = {"job-id": self.job, "device": "s", "sync": sync, "copy-mode": mode, "speed": speed}
        if granularity:
            args["granularity"] = granularity
        if drive:
            self.target = f"t{self.n}"
            self.vm.qmp("drive-mirror", {**args, "target": f"t{self.n}.qcow2", "format": "qcow2",
                                         "node-name": self.target})
        else:
            self.target = f"t{self.n}"
            self.vm.qemu_img("create", "-f", "qcow2", f"{self.target}.qcow2", str(SIZE))
            self.vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": self.target,
                                         "file": {"driver": "file", "filename": f"{self.target}.qcow2"}})
            self.vm.qmp("blockdev-mirror", {**args, "target": self.target})

    @rule(steps=st.integers(1, 30))
    def step(self, steps):
        for _ in range(steps):
            if not self.vm.step():
                break
        self.settle()

    @rule(seconds=st.sampled_from([0.05, 0.3, 2.0]))
    def wait(self, seconds):
        self.vm.run(until=self.vm.now + seconds)
        self.settle()

    @precondition(lambda self: self.job is not None)
    @rule(verb=st.sampled_from(["job-complete", "job-pause", "job-resume", "job-cancel", "block-job-cancel",
                                "block-job-set-speed"]))
    def verb(self, verb):
        try:
            if verb == "block-job-cancel":
                self.vm.qmp(verb, {"device": self.job})
            elif verb == "block-job-set-speed":
                self.vm.qmp(verb, {"device": self.job, "speed": 0})
            else:
                self.vm.qmp(verb, {"id": self.job})
        except QMPError as err:
            assert err.error_class == "GenericError"
        self.settle()

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def progress(self):
        self.settle()
        for info in self.vm.qmp("query-block-jobs"):
            assert 0 <= info["offset"] <= info["len"]
            job = self.vm.jobs.find(info["device"])
            if info["status"] == "ready" and job.idle and not job.ops and job.dirty.count == 0 and job.sync == "full":
                assert self._content(job.target.node_name) == self._content("s"), "ready, clean, yet different"

    @invariant()
    def bitmaps_keep_every_write(self):
        b0 = self.source.find_bitmap("b0")
        assert self.written <= set(b0.bits.search(1))
        for bm in self.source.bitmaps:
            assert bm.count == bm.bits.count() * bm.granularity


TestMirrorMachine = MirrorMachine.TestCase
TestMirrorMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
