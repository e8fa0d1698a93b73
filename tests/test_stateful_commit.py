"""Random interleavings of guest writes, commit jobs (active and below the active layer, throttled or not),
stream jobs, pauses, completes and cancels, over a chain base <- mid <- top.

Invariants checked after every step:
- jobs only take legal transitions (the engine asserts QEMU's table on every change);
- ``offset <= len``;
- a commit or a stream never changes what the top reads: the guest's view is its own writes over the images'
  data, whatever the jobs did, before, during and after them;
- an active commit that completed (job-complete) or was cancelled once ready left a base that reads as the top;
- no change to the base goes unrecorded: every cluster where the base reads other than it did at the start is
  dirty in its bitmap, and counts equal popcount x granularity on every node.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bitlab import Machine, QMPError

from .test_stateful_jobs import _runs

SIZE = 4 << 20
G = 65536


def _file(name: str) -> dict:
    return {"driver": "file", "filename": f"{name}.qcow2"}


class CommitMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        vm = self.vm = Machine()
        below = None
        for name, data in (("base", [(0, 1 << 20, 0x11)]), ("mid", [(512 << 10, 1 << 20, 0x22), (3 << 20, G, 0x23)]),
                           ("top", [(2 << 20, 128 << 10, 0x33)])):
            backing = ["-b", f"{below}.qcow2", "-F", "qcow2"] if below else []
            vm.qemu_img("create", "-f", "qcow2", *backing, f"{name}.qcow2", str(SIZE))
            vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "w", "file": _file(name), "backing": None})
            for offset, length, pattern in data:
                vm.write("w", offset, length, pattern)
            vm.qmp("blockdev-del", {"node-name": "w"})
            below = name
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": _file("top"), "backing": {
            "driver": "qcow2", "node-name": "mid", "file": _file("mid"), "backing": {
                "driver": "qcow2", "node-name": "base", "file": _file("base")}}})
        vm.qmp("block-dirty-bitmap-add", {"node": "base", "name": "bb", "granularity": G})
        vm.qmp("block-dirty-bitmap-add", {"node": "top", "name": "bt", "granularity": G})
        self.base = vm.graph.nodes["base"]
        self.top = vm.graph.nodes["top"]
        self.view = self._content(self.top)
        self.base_start = self._bytes(self.base)
        self.job: str | None = None
        self.active = False
        self.since = 0
        self.n = 0
        self.pattern = 1

    @staticmethod
    def _content(node) -> list:
        return _runs(node.read_extents(0, SIZE))

    @staticmethod
    def _bytes(node) -> list:
        """The node's content per cluster (a run's value for each cluster it covers)."""
        out = [0] * (SIZE // G)
        for start, end, value in _runs(node.read_extents(0, SIZE)):
            for c in range(start // G, -(-end // G)):
                out[c] = (out[c], value) if out[c] and start % G else value
        return out

    def settle(self) -> None:
        """The end of the job, from its events: an active commit that ended without error leaves the base as
        the top reads (completed: switched over; a soft cancel once ready: not)."""
        if self.job is None:
            return
        ends = [e for e in self.vm.events[self.since:]
                if e["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED") and e["data"]["device"] == self.job]
        if not ends:
            return
        ev = ends[0]
        if ev["event"] == "BLOCK_JOB_COMPLETED" and "error" not in ev["data"] and self.active:
            assert self._content(self.base) == self.view, f"{self.job}: the base differs from the top"
        self.job = None

    # -- rules ------------------------------------------------------------------------------
    @rule(offset=st.integers(0, SIZE - 1), length=st.integers(1, 300_000))
    def write(self, offset, length):
        length = min(length, SIZE - offset)
        self.pattern = self.pattern % 250 + 1
        try:
            self.vm.write("top", offset, length, self.pattern)
        except QMPError as err:  # (a finished active commit keeps the top drained until it is finalized)
            assert "drained: QEMU holds the request" in err.desc
            return
        self.view = self._content(self.top)
        self.settle()

    @precondition(lambda self: self.job is None)
    @rule(active=st.booleans(), speed=st.sampled_from([0, 0, 1 << 20]), name=st.booleans(),
          manual=st.booleans())
    def commit(self, active, speed, name, manual):
        self.n += 1
        job = f"c{self.n}"
        args: dict = {"job-id": job, "device": "top", "speed": speed, "auto-finalize": not manual}
        if name:
            args["filter-node-name"] = f"f{self.n}"
        if not active:
            if "mid" not in self.vm.graph.nodes:
                return
            args["top-node"] = "mid"
        try:
            self.vm.qmp("block-commit", args)
        except QMPError as err:
            assert err.error_class == "GenericError"
            return
        self.job, self.active, self.since = job, active, len(self.vm.events)
        self.settle()

    @precondition(lambda self: self.job is None)
    @rule(base=st.sampled_from([None, "mid", "base"]), speed=st.sampled_from([0, 0, 1 << 20]), manual=st.booleans())
    def stream(self, base, speed, manual):
        self.n += 1
        job = f"s{self.n}"
        args: dict = {"job-id": job, "device": "top", "speed": speed, "auto-finalize": not manual}
        if base is not None:
            args["base-node"] = base
        try:
            self.vm.qmp("block-stream", args)
        except QMPError as err:
            assert err.error_class == "GenericError"
            return
        self.job, self.active, self.since = job, False, len(self.vm.events)
        self.settle()

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
                                "block-job-set-speed", "job-finalize"]))
    def verb(self, verb):
        try:
            if verb == "block-job-cancel":
                self.vm.qmp(verb, {"device": self.job})
            elif verb == "block-job-set-speed":
                self.vm.qmp(verb, {"device": self.job, "speed": 0})
            else:
                self.vm.qmp(verb, {"id": self.job})
        except QMPError as err:
            assert err.error_class in ("GenericError", "DeviceNotActive")
        self.settle()

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def progress(self):
        self.settle()
        for info in self.vm.qmp("query-block-jobs"):
            assert 0 <= info["offset"] <= info["len"]

    @invariant()
    def the_top_reads_the_same(self):
        assert self._content(self.top) == self.view

    @invariant()
    def every_change_to_the_base_is_recorded(self):
        bb = self.base.find_bitmap("bb")
        now = self._bytes(self.base)
        changed = {c for c, (a, b) in enumerate(zip(self.base_start, now)) if a != b}
        assert changed <= set(bb.bits.search(1))
        for node in (self.base, self.top):
            for bm in node.bitmaps:
                assert bm.count == bm.bits.count() * bm.granularity


TestCommitMachine = CommitMachine.TestCase
TestCommitMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
