"""A machine nobody holds any more is freed by reference counting alone: no reference cycle runs
through its parts (event sink, image store, jobs, block-copy calls, timers, I/O errors), so the
garbage collector has nothing of it to find: not even the image files, whose content maps and host
layouts hold them weakly."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bitlab import Machine
from bitlab.clock import SimClock
from bitlab.jobs.job import weak_method
from bitlab.sim import Scheduler, Timer

from . import trace_replay


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _refs(vm: Machine) -> list[weakref.ref]:
    images = list(vm.images)  # (its ImageFile objects, each with its host layout)
    parts = (vm, vm.graph, vm.jobs, vm.exports, vm.scheduler, vm.images, *images, *(i._layout for i in images))
    return [weakref.ref(part) for part in parts if part is not None]


@pytest.mark.parametrize("mode", ["individual", "grouped"])
def test_the_seed_replay_frees_its_machine_without_the_collector(no_collector: None, mode: str) -> None:
    vm, _ = trace_replay.replay(mode)
    refs = _refs(vm)
    del vm
    assert [ref() for ref in refs] == [None] * len(refs)


def test_a_backup_that_failed_on_a_read_error_frees_everything(no_collector: None) -> None:
    """A backup whose source read fails (blkdebug): its job, block-copy state, filter and the error are
    freed with the machine (an I/O error is kept without the traceback whose frames would hold them)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "4M")
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "s.qcow2"},
        "inject-error": [{"event": "read_aio", "errno": 5}]}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "t.qcow2"}})
    vm.write("s", 0, 65536, 0x5A)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "s", "target": "t", "sync": "full", "auto-dismiss": False})
    job = vm.jobs.jobs[0]
    refs = _refs(vm) + [weakref.ref(job), weakref.ref(job.bcs), weakref.ref(job.cbw)]
    del job
    vm.run()
    assert any(ev["event"] == "BLOCK_JOB_COMPLETED" and "error" in ev["data"] for ev in vm.events)
    failed = vm.jobs.jobs[0].bcs.call
    assert failed is None or failed.error is None or failed.error.__traceback__ is None
    del failed
    vm.qmp("job-dismiss", {"id": "j"})
    del vm
    assert [ref() for ref in refs] == [None] * len(refs)


def test_a_rate_limited_backup_with_a_guest_write_is_freed_with_its_machine(no_collector: None) -> None:
    """(Left to the collector: a machine dropped while a job still has timers scheduled (its scheduler
    holds the timers, their callbacks the job's block-copy state, which holds the scheduler) or with a
    job not yet dismissed (the job holds its manager, which lists it).)"""
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "s", "size": 64 << 20, "latency-ns": 1000000})
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "t", "size": 64 << 20, "latency-ns": 1000000})
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "s", "target": "t", "sync": "full", "speed": 16 << 20,
                               "auto-dismiss": False})
    vm.step()
    vm.write("s", 0, 65536, 0x5A)  # copied before it lands
    vm.run()
    assert vm.qmp("query-jobs")[0]["status"] == "concluded"
    refs = _refs(vm) + [weakref.ref(vm.jobs.jobs[0])]
    vm.qmp("job-dismiss", {"id": "j"})
    del vm
    assert [ref() for ref in refs] == [None] * len(refs)


def test_a_timer_lets_go_of_its_callback_once_run_or_cancelled() -> None:
    sched = Scheduler(SimClock(0))
    ran: list[int] = []
    first: Timer = sched.after(10, lambda: ran.append(1))
    second = sched.after(20, lambda: ran.append(2))
    second.cancel()
    sched.run()
    assert ran == [1]
    assert first.fn is second.fn  # both let go of their own lambdas
    first.fn()  # (what they hold does nothing)
    assert ran == [1]


def test_weak_method_calls_while_the_object_lives_and_does_nothing_after() -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def add(self, k: int) -> None:
            self.n += k

    counter = Counter()
    call = weak_method(counter.add)
    call(2)
    call(3)
    assert counter.n == 5
    ref = weakref.ref(counter)
    del counter
    assert ref() is None
    call(1)  # nothing to call any more


def test_a_content_map_that_outlived_its_image_merges_alone() -> None:
    """The map holds its image weakly: once the image is gone, its merges tell nobody (and do not fail)."""
    from bitlab.block.store import ImageStore

    image = ImageStore().create("a.qcow2", "qcow2", 1 << 20)
    data, ref = image.data, weakref.ref(image)
    del image
    assert ref() is None
    data.write(0, 65536, 7)
    data.resize(2 << 20)
    assert data.value_at(0) == 7 and data.size == 2 << 20


def test_a_fleecing_machine_frees_everything(no_collector: None) -> None:
    """A copy-before-write node of the user's (its block-copy state) and a snapshot-access node over it are
    freed with the machine."""
    vm = Machine()
    for name in ("s", "t"):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "4M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2"}})
    vm.write("s", 0, 65536, 0x5A)
    vm.qmp("blockdev-add", {"driver": "copy-before-write", "node-name": "c", "file": "s", "target": "t"})
    vm.qmp("blockdev-add", {"driver": "snapshot-access", "node-name": "sa", "file": "c"})
    vm.write("s", 0, 4096, 0x5B)
    assert vm.read("sa", 0, 4096, 0x5A).startswith("read 4096/4096")
    refs = _refs(vm) + [weakref.ref(vm.graph.nodes["c"]), weakref.ref(vm.graph.nodes["sa"])]
    del vm
    assert [ref() for ref in refs] == [None] * len(refs)


@pytest.mark.parametrize("speed", [0, 1 << 20])
def test_a_mirror_that_ended_frees_everything(no_collector: None, speed: int) -> None:
    """A mirror (ready and completed, or throttled with requests in flight and a sleep scheduled, then
    cancelled): its job, filter, bitmap and timers are freed with the machine (the filter holds its job
    weakly, the timers call back through weak references, the graph keeps the job's links by its id)."""
    vm = Machine()
    for name in ("s", "t"):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "32M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2"}})
    vm.write("s", 0, 1 << 20, 0x5A)
    vm.qmp("blockdev-mirror", {"job-id": "m", "device": "s", "target": "t", "sync": "full", "speed": speed})
    vm.run(until=vm.now + 0.5)
    job = vm.jobs.jobs[0]
    assert job.status == ("ready" if speed == 0 else "running")
    refs = [*_refs(vm), weakref.ref(job), weakref.ref(job.top), weakref.ref(job.dirty)]
    del job
    vm.qmp("job-complete" if speed == 0 else "job-cancel", {"id": "m"})
    vm.run()
    assert vm.qmp("query-jobs") == []
    del vm
    assert [ref() for ref in refs] == [None] * len(refs)
